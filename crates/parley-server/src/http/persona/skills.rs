//! A PAL's skills, one at a time (`/v2/pals/{pal_id}/skills/{skill_id}`) or all at once: kept in
//! the PAL's `skills` field, an object keyed by skill id, each `{skill_id, config, attached_at,
//! updated_at}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use parley_domain::{ResourceKind, Timestamp};
use parley_store::Account;
use serde_json::{Map, Value, json};

use super::{ApiResult, invalid_id, pal, read_body, stock_is_read_only};
use crate::catalogue;
use crate::http::error::ApiError;
use crate::http::resource::object_body;
use crate::persona::Persona;
use crate::persona::fields::View;
use crate::resources;
use crate::state::AppState;

fn unknown_skill(id: &str) -> ApiError {
    ApiError::error(StatusCode::NOT_FOUND, format!("Unknown skill '{id}'"))
}

fn not_attached(id: &str) -> ApiError {
    ApiError::error(
        StatusCode::NOT_FOUND,
        format!("Skill '{id}' is not attached to this PAL"),
    )
}

/// The `config` of a skill body: an object, `{}` when absent.
fn config_of(body: &Map<String, Value>) -> ApiResult<Map<String, Value>> {
    match body.get("config") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(config)) => Ok(config.clone()),
        Some(_) => Err(ApiError::BadRequest("Invalid config: expected an object".into())),
    }
}

/// A known skill's config, checked as the hosted API checks it: `presentation` needs its documents.
fn checked(skill_id: &str, config: Map<String, Value>) -> ApiResult<Map<String, Value>> {
    if catalogue::skill(skill_id).is_none() {
        return Err(unknown_skill(skill_id));
    }
    if skill_id == "presentation" && !config.get("document_ids").is_some_and(Value::is_array) {
        return Err(ApiError::BadRequest(
            "Bad Request: {'document_ids': ['Missing data for required field.']}".into(),
        ));
    }
    Ok(config)
}

/// The PAL's own id, refusing stock PALs.
async fn own_pal(
    state: &AppState,
    account: &str,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<String> {
    match pal(state, account, id).await? {
        Persona::Stock(p) => Err(stock_is_read_only(View::Pal, p.id)),
        Persona::Own(opened) => Ok(opened.row.id),
    }
}

/// Changes the PAL's `skills` object with `change`; the changed object.
async fn change_skills(
    state: &AppState,
    account: &str,
    pal_id: &str,
    mut change: impl FnMut(&mut Map<String, Value>) -> ApiResult<()>,
) -> ApiResult<Map<String, Value>> {
    let mut after = Map::new();
    let updated = resources::update(state, account, ResourceKind::Persona, pal_id, |stored, _| {
        let mut skills = match stored.get("skills") {
            Some(Value::Object(skills)) => skills.clone(),
            _ => Map::new(),
        };
        change(&mut skills)?;
        after = skills.clone();
        stored.insert("skills".into(), Value::Object(skills));
        Ok::<(), ApiError>(())
    })
    .await?;
    match updated {
        None => Err(invalid_id(View::Pal)),
        Some(Err(e)) => Err(e),
        Some(Ok(_)) => Ok(after),
    }
}

/// One attached skill as stored, with its id.
fn entry(skill_id: &str, config: Map<String, Value>, attached_at: Option<&Value>) -> Value {
    let now = Timestamp::now().to_string();
    json!({
        "skill_id": skill_id,
        "config": config,
        "attached_at": attached_at.cloned().unwrap_or_else(|| json!(now)),
        "updated_at": now,
    })
}

/// `GET /v2/pals/{pal_id}/skills/{skill_id}`: one attached skill.
pub async fn get_pal_skill(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Ok(Path((id, skill_id))) = path else {
        return Err(invalid_id(View::Pal));
    };
    let skills = match pal(&state, &account.name, Ok(Path(id))).await? {
        Persona::Stock(_) => None,
        Persona::Own(opened) => opened.field("skills").get(&skill_id).cloned(),
    };
    skills.map(Json).ok_or_else(|| not_attached(&skill_id))
}

/// `PUT /v2/pals/{pal_id}/skills/{skill_id}` `{"config": {…}}`: attaches the skill, or replaces
/// its config.
pub async fn put_pal_skill(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<(String, String)>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let Ok(Path((id, skill_id))) = path else {
        return Err(invalid_id(View::Pal));
    };
    let config = checked(
        &skill_id,
        config_of(&object_body(&read_body(raw, state.settings.max_body_bytes)?)?)?,
    )?;
    let pal_id = own_pal(&state, &account.name, Ok(Path(id))).await?;
    let skills = change_skills(&state, &account.name, &pal_id, |skills| {
        let attached_at = skills.get(&skill_id).and_then(|s| s.get("attached_at")).cloned();
        skills.insert(
            skill_id.clone(),
            entry(&skill_id, config.clone(), attached_at.as_ref()),
        );
        Ok(())
    })
    .await?;
    Ok(Json(skills[&skill_id].clone()))
}

/// `PATCH /v2/pals/{pal_id}/skills/{skill_id}` `{"config": {…}}`: merges into an attached skill's config.
pub async fn patch_pal_skill(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<(String, String)>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let Ok(Path((id, skill_id))) = path else {
        return Err(invalid_id(View::Pal));
    };
    let merged_in = config_of(&object_body(&read_body(raw, state.settings.max_body_bytes)?)?)?;
    if catalogue::skill(&skill_id).is_none() {
        return Err(unknown_skill(&skill_id));
    }
    let pal_id = own_pal(&state, &account.name, Ok(Path(id))).await?;
    let skills = change_skills(&state, &account.name, &pal_id, |skills| {
        let current = skills.get(&skill_id).ok_or_else(|| not_attached(&skill_id))?;
        let mut config = match current.get("config") {
            Some(Value::Object(config)) => config.clone(),
            _ => Map::new(),
        };
        config.extend(merged_in.clone());
        let config = checked(&skill_id, config)?;
        let attached_at = current.get("attached_at").cloned();
        skills.insert(skill_id.clone(), entry(&skill_id, config, attached_at.as_ref()));
        Ok(())
    })
    .await?;
    Ok(Json(skills[&skill_id].clone()))
}

/// `DELETE /v2/pals/{pal_id}/skills/{skill_id}`: detaches the skill; 204.
pub async fn delete_pal_skill(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Ok(Path((id, skill_id))) = path else {
        return Err(invalid_id(View::Pal));
    };
    let pal_id = own_pal(&state, &account.name, Ok(Path(id))).await?;
    change_skills(&state, &account.name, &pal_id, |skills| {
        skills
            .remove(&skill_id)
            .map(|_| ())
            .ok_or_else(|| not_attached(&skill_id))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v2/pals/{pal_id}/skills/` `{"skills": {skill_id: {"config": {…}}, …}}`: replaces every
/// attached skill at once.
pub async fn replace_pal_skills(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = object_body(&read_body(raw, state.settings.max_body_bytes)?)?;
    let Some(Value::Object(wanted)) = body.get("skills") else {
        return Err(ApiError::BadRequest(
            "Invalid skills: expected an object keyed by skill id".into(),
        ));
    };
    let mut configs = Vec::new();
    for (skill_id, sent) in wanted {
        let Value::Object(sent) = sent else {
            return Err(ApiError::BadRequest(format!(
                "Invalid skills.{skill_id}: expected an object"
            )));
        };
        configs.push((skill_id.clone(), checked(skill_id, config_of(sent)?)?));
    }
    let pal_id = own_pal(&state, &account.name, path).await?;
    let skills = change_skills(&state, &account.name, &pal_id, |skills| {
        let before = std::mem::take(skills);
        for (skill_id, config) in &configs {
            let attached_at = before.get(skill_id).and_then(|s| s.get("attached_at"));
            skills.insert(skill_id.clone(), entry(skill_id, config.clone(), attached_at));
        }
        Ok(())
    })
    .await?;
    Ok(Json(json!({ "data": skills })))
}
