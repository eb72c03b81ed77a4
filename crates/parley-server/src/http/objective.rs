//! Handlers for `/v2/objectives…`: objective sets (`name`, `data[]`, `allow_loops`), their checks
//! (fields, references, cycles) and `validate`, which checks without storing.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use parley_domain::ResourceKind;
use parley_store::Account;
use serde_json::{Map, Value, json};

use crate::http::error::ApiError;
use crate::http::listing;
use crate::http::query::Query;
use crate::http::resource::{Page, apply_patch, body_bytes, object_body};
use crate::resources::{self, NewResource, Opened};
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

const KIND: ResourceKind = ResourceKind::Objective;
/// Objectives in one set, at most (the official client's limit).
const MAX_OBJECTIVES: usize = 50;
const MAX_NAME: usize = 100;
const MAX_PROMPT: usize = 10_000;
const MAX_OUTPUT_VARIABLES: usize = 50;
const MAX_CALLBACK_URL: usize = 2048;

/// The objective routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/objectives", get(list_objectives).post(create_objectives))
        .route("/v2/objectives/validate", post(validate_objectives))
        .route(
            "/v2/objectives/{objectives_id}",
            get(get_objectives)
                .patch(patch_objectives)
                .delete(delete_objectives),
        )
}

fn not_found() -> ApiError {
    ApiError::error(StatusCode::NOT_FOUND, "Objective not found")
}

/// The path's id: `o` and hex digits, or the documented 400.
fn objectives_id(path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let Ok(Path(id)) = path else {
        return Err(ApiError::BadRequest("Invalid objectives_id".into()));
    };
    let hex = id.strip_prefix('o').unwrap_or_default();
    if (6..=32).contains(&hex.len())
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(id)
    } else {
        Err(ApiError::BadRequest("Invalid objectives_id".into()))
    }
}

// --- checks ---

fn text(item: &Map<String, Value>, name: &str, at: &str) -> Result<Option<String>, String> {
    match item.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{at}{name} must be a string")),
    }
}

fn one_of(item: &Map<String, Value>, name: &str, allowed: &[&str], at: &str) -> Result<String, String> {
    match item.get(name) {
        None | Some(Value::Null) => Ok(allowed[0].to_owned()),
        Some(Value::String(v)) if allowed.contains(&v.as_str()) => Ok(v.clone()),
        Some(_) => Err(format!("{at}{name} must be one of {}", allowed.join(", "))),
    }
}

/// One objective, with the documented defaults filled in; unknown fields are dropped.
fn objective(i: usize, item: &Value) -> Result<Map<String, Value>, String> {
    let at = format!("data[{i}].");
    let Value::Object(item) = item else {
        return Err(format!("data[{i}] must be an object"));
    };
    let name = text(item, "objective_name", &at)?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("{at}objective_name is required"))?;
    if name.len() > MAX_NAME || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "{at}objective_name must be 1 to {MAX_NAME} letters, digits or underscores"
        ));
    }
    let prompt = text(item, "objective_prompt", &at)?
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| format!("{at}objective_prompt is required"))?;
    if prompt.chars().count() > MAX_PROMPT {
        return Err(format!(
            "{at}objective_prompt must be at most {MAX_PROMPT} characters"
        ));
    }
    let output_variables = match item.get("output_variables") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(vars)) if vars.len() <= MAX_OUTPUT_VARIABLES => vars
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("{at}output_variables must be a list of strings"))?,
        Some(Value::Array(_)) => {
            return Err(format!(
                "{at}output_variables must have at most {MAX_OUTPUT_VARIABLES} entries"
            ));
        }
        Some(_) => return Err(format!("{at}output_variables must be a list of strings")),
    };
    let conditional = match item.get("next_conditional_objectives") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(next)) if next.values().all(Value::is_string) => Value::Object(next.clone()),
        Some(_) => {
            return Err(format!(
                "{at}next_conditional_objectives must map objective names to conditions"
            ));
        }
    };
    let callback_url = text(item, "callback_url", &at)?.unwrap_or_default();
    if callback_url.len() > MAX_CALLBACK_URL {
        return Err(format!(
            "{at}callback_url must be at most {MAX_CALLBACK_URL} characters"
        ));
    }
    if !callback_url.is_empty()
        && !url::Url::parse(&callback_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
    {
        return Err(format!("{at}callback_url must be an http or https URL"));
    }
    let mut out = Map::new();
    out.insert("objective_name".into(), json!(name));
    out.insert("objective_prompt".into(), json!(prompt));
    out.insert(
        "confirmation_mode".into(),
        json!(one_of(item, "confirmation_mode", &["auto", "manual"], &at)?),
    );
    out.insert("output_variables".into(), json!(output_variables));
    out.insert(
        "modality".into(),
        json!(one_of(item, "modality", &["verbal", "visual", "audio"], &at)?),
    );
    out.insert("next_conditional_objectives".into(), conditional);
    out.insert(
        "next_required_objective".into(),
        json!(text(item, "next_required_objective", &at)?),
    );
    out.insert("callback_url".into(), json!(callback_url));
    match item.get("tool_call") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => {
            out.insert("tool_call".into(), v.clone());
        }
        Some(_) => return Err(format!("{at}tool_call must be an object")),
    }
    Ok(out)
}

/// The objectives each objective leads to, in order.
fn next_of(item: &Map<String, Value>) -> Vec<String> {
    let mut next: Vec<String> = item
        .get("next_required_objective")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .into_iter()
        .collect();
    if let Some(Value::Object(conditional)) = item.get("next_conditional_objectives") {
        next.extend(conditional.keys().cloned());
    }
    next
}

/// A set's stored fields, checked: each objective's fields, then names unique, references
/// known, no self-reference, not both kinds of next, and (unless `allow_loops`) no cycle.
fn objective_set(body: &Map<String, Value>) -> Result<Map<String, Value>, String> {
    let name = text(body, "name", "")?.unwrap_or_default();
    if name.chars().count() > MAX_NAME {
        return Err(format!("name must be at most {MAX_NAME} characters"));
    }
    let allow_loops = match body.get("allow_loops") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("allow_loops must be a boolean".into()),
    };
    let items = match body.get("data") {
        None | Some(Value::Null) => return Err("data is required".into()),
        Some(Value::Array(items)) if (1..=MAX_OBJECTIVES).contains(&items.len()) => items,
        Some(_) => return Err(format!("data must be a list of 1 to {MAX_OBJECTIVES} objectives")),
    };
    let data = items
        .iter()
        .enumerate()
        .map(|(i, item)| objective(i, item))
        .collect::<Result<Vec<_>, _>>()?;
    let mut names = HashSet::new();
    for item in &data {
        let name = item["objective_name"].as_str().unwrap_or_default();
        if !names.insert(name) {
            return Err(format!("Duplicate objective_name: {name}"));
        }
    }
    for item in &data {
        let name = item["objective_name"].as_str().unwrap_or_default();
        if !item["next_required_objective"].is_null() && !item["next_conditional_objectives"].is_null() {
            return Err(format!(
                "Objective {name} has both next_required_objective and next_conditional_objectives"
            ));
        }
        for next in next_of(item) {
            if next == name {
                return Err(format!("Objective {name} refers to itself"));
            }
            if !names.contains(next.as_str()) {
                return Err(format!("Objective {name} refers to unknown objective {next}"));
            }
        }
    }
    if !allow_loops && let Some(cycle) = find_cycle(&data) {
        return Err(format!(
            "Objectives form a cycle: {} (set allow_loops to allow it)",
            cycle.join(" -> ")
        ));
    }
    let mut fields = Map::new();
    fields.insert("name".into(), json!(name));
    fields.insert("allow_loops".into(), json!(allow_loops));
    fields.insert(
        "data".into(),
        Value::Array(data.into_iter().map(Value::Object).collect()),
    );
    Ok(fields)
}

/// A cycle among the objectives, as the names along it with the first repeated at the end.
fn find_cycle(data: &[Map<String, Value>]) -> Option<Vec<String>> {
    let edges: BTreeMap<String, Vec<String>> = data
        .iter()
        .map(|item| {
            (
                item["objective_name"].as_str().unwrap_or_default().to_owned(),
                next_of(item),
            )
        })
        .collect();
    // Depth-first, in the set's order, keeping the path so the cycle can be named.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        OnPath,
        Done,
    }
    fn visit(
        node: &str,
        edges: &BTreeMap<String, Vec<String>>,
        marks: &mut HashMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_owned(), Mark::OnPath);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match marks.get(next) {
                Some(Mark::OnPath) => {
                    let start = path.iter().position(|p| p == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, marks, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    for item in data {
        let name = item["objective_name"].as_str().unwrap_or_default();
        if !marks.contains_key(name)
            && let Some(cycle) = visit(name, &edges, &mut marks, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

/// What `validate` adds to a create's checks: one starting objective, the one no other leads
/// to (with `allow_loops`, a loop back to the start may leave none).
fn single_start(fields: &Map<String, Value>) -> Result<(), String> {
    let data = fields["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    let led_to: HashSet<String> = data
        .iter()
        .filter_map(Value::as_object)
        .flat_map(next_of)
        .collect();
    let starts: Vec<&str> = data
        .iter()
        .filter_map(|item| item["objective_name"].as_str())
        .filter(|name| !led_to.contains(*name))
        .collect();
    let allow_loops = fields["allow_loops"].as_bool().unwrap_or(false);
    if starts.len() == 1 || (starts.is_empty() && allow_loops) {
        Ok(())
    } else if starts.is_empty() {
        Err("Objectives have no starting objective: every one is led to by another".into())
    } else {
        Err(format!(
            "Objectives must have one starting objective, one that no other leads to; found {}: {}",
            starts.len(),
            starts.join(", ")
        ))
    }
}

// --- what the client sees ---

fn set_json(o: &Opened) -> Value {
    json!({
        "objectives_id": o.row.id,
        "objectives_name": o.field("name"),
        "name": o.field("name"),
        "allow_loops": o.field("allow_loops"),
        "data": o.field("data"),
        "status": o.row.status,
        "created_at": o.row.created_at,
        "updated_at": o.row.updated_at,
    })
}

// --- routes ---

/// `POST /v2/objectives` (the client adds a trailing slash).
pub async fn create_objectives(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let raw = body_bytes(raw, state.settings.max_body_bytes)?;
    // The hosted API documents a create's 400 under `message`.
    let fields =
        objective_set(&object_body(&raw)?).map_err(|why| ApiError::message(StatusCode::BAD_REQUEST, why))?;
    let created = resources::create(
        &state,
        &account.name,
        NewResource {
            kind: KIND,
            id: None,
            status: "active".into(),
            fields,
            work_at: None,
        },
    )
    .await?;
    Ok(Json(set_json(&created)))
}

/// `POST /v2/objectives/validate`: a create's checks and a single start, nothing stored.
pub async fn validate_objectives(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let raw = body_bytes(raw, state.settings.max_body_bytes)?;
    objective_set(&object_body(&raw)?)
        .and_then(|fields| single_start(&fields))
        .map_err(ApiError::BadRequest)?;
    Ok(Json(json!({ "valid": true })))
}

/// `GET /v2/objectives`: one row per set.
pub async fn list_objectives(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = Query::parse(raw.as_deref());
    let page = Page::from_query(&q, 10)?;
    let descending = listing::descending(&q)?;
    let system = q.choice("type", "expected user, system or all", |v| match v {
        "user" | "all" => Some(false),
        "system" => Some(true),
        _ => None,
    })?;
    let mut rows = if system == Some(true) {
        // parley has no system objectives.
        Vec::new()
    } else {
        listing::all(&state, &account.name, KIND).await?
    };
    rows.retain(|o| listing::matches_name_or_id(q.get("name_or_uuid"), &o.row.id, o.text("name")));
    if descending {
        rows.reverse();
    }
    let total = rows.len();
    let data: Vec<Value> = page.of(rows).iter().map(set_json).collect();
    Ok(Json(json!({ "data": data, "total_count": total })))
}

/// `GET /v2/objectives/{objectives_id}`
pub async fn get_objectives(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = objectives_id(path)?;
    let found = resources::get(&state, &account.name, KIND, &id)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(set_json(&found)))
}

/// `PATCH /v2/objectives/{objectives_id}`: RFC 6902 JSON Patch over the set as GET shows it
/// (`/name`, `/allow_loops`, `/data/0/objective_prompt`, …); the result is checked as a create is.
pub async fn patch_objectives(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = objectives_id(path)?;
    let raw = body_bytes(raw, state.settings.max_body_bytes)?;
    resources::update(&state, &account.name, KIND, &id, |fields, row| {
        let opened = Opened {
            row: row.clone(),
            fields: Some(fields.clone()),
        };
        let Value::Object(mut view) = set_json(&opened) else {
            unreachable!("a set is shown as an object")
        };
        apply_patch(&mut view, &raw).map_err(|e| {
            let why = e.to_string();
            let why = why.strip_prefix("Invalid JSON patch format: ").unwrap_or(&why);
            ApiError::BadRequest(format!("Invalid patch operation: {why}"))
        })?;
        // Ids, status and times sent back are no-ops; `objectives_name` is `name` by its listed name.
        for persisted in ["objectives_id", "status", "created_at", "updated_at"] {
            view.remove(persisted);
        }
        if let Some(alias) = view.remove("objectives_name")
            && alias != *fields.get("name").unwrap_or(&Value::Null)
        {
            view.insert("name".into(), alias);
        }
        if let Some(unknown) = view
            .keys()
            .find(|k| !["name", "allow_loops", "data"].contains(&k.as_str()))
        {
            return Err(ApiError::BadRequest(format!(
                "Invalid patch operation: {unknown} is not a field that can be patched"
            )));
        }
        *fields = objective_set(&view).map_err(ApiError::BadRequest)?;
        Ok(())
    })
    .await?
    .ok_or_else(not_found)??;
    Ok(Json(json!({ "message": "Objective updated successfully" })))
}

/// `DELETE /v2/objectives/{objectives_id}`: erased, its key first.
pub async fn delete_objectives(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = objectives_id(path)?;
    if resources::delete(&state, &account.name, KIND, &id, true).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: Value) -> Result<Map<String, Value>, String> {
        match v {
            Value::Object(m) => objective_set(&m),
            _ => unreachable!(),
        }
    }

    fn item(name: &str, next: Value) -> Value {
        let mut item = json!({"objective_name": name, "objective_prompt": "p"});
        if let Value::Object(next) = next {
            item.as_object_mut().unwrap().extend(next);
        }
        item
    }

    #[test]
    fn defaults_are_filled_in() {
        let f = set(json!({"data": [{"objective_name": "a", "objective_prompt": "p"}]})).unwrap();
        assert_eq!(
            Value::Object(f),
            json!({"name": "", "allow_loops": false, "data": [{
                "objective_name": "a", "objective_prompt": "p", "confirmation_mode": "auto",
                "output_variables": [], "modality": "verbal", "next_conditional_objectives": null,
                "next_required_objective": null, "callback_url": ""}]})
        );
    }

    #[test]
    fn references_must_exist_and_not_loop_unless_allowed() {
        let cyclic = json!({"data": [
            item("a", json!({"next_required_objective": "b"})),
            item("b", json!({"next_conditional_objectives": {"c": "if yes", "a": "if no"}})),
            item("c", json!({})),
        ]});
        assert_eq!(
            set(cyclic.clone()).unwrap_err(),
            "Objectives form a cycle: a -> b -> a (set allow_loops to allow it)"
        );
        let mut allowed = cyclic;
        allowed["allow_loops"] = json!(true);
        let f = set(allowed).unwrap();
        // The loop goes back to the start, so nothing is left unreached: fine with loops allowed.
        assert_eq!(single_start(&f), Ok(()));
        assert_eq!(
            set(json!({"data": [item("a", json!({"next_required_objective": "z"}))]})).unwrap_err(),
            "Objective a refers to unknown objective z"
        );
        assert_eq!(
            set(json!({"data": [item("a", json!({"next_required_objective": "a"}))]})).unwrap_err(),
            "Objective a refers to itself"
        );
        assert_eq!(
            set(json!({"data": [item("a", json!({})), item("a", json!({}))]})).unwrap_err(),
            "Duplicate objective_name: a"
        );
    }

    #[test]
    fn validate_wants_one_start() {
        let chain = set(json!({"data": [
            item("a", json!({"next_required_objective": "b"})),
            item("b", json!({})),
        ]}))
        .unwrap();
        assert_eq!(single_start(&chain), Ok(()));
        let two = set(json!({"data": [item("a", json!({})), item("b", json!({}))]})).unwrap();
        assert_eq!(
            single_start(&two).unwrap_err(),
            "Objectives must have one starting objective, one that no other leads to; found 2: a, b"
        );
    }
}
