//! Handlers for `/v2/replicas…` and `/v2/faces…`: one resource, shown under two sets of names.
//!
//! The stock replicas come from the built-in registry and cannot change; an account's own are
//! stored resources whose training is simulated (see `parley_domain::training` and
//! `docs/API.md`, "Replicas and faces").

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, patch};
use axum::{Json, Router};
use parley_domain::registry::{self, Replica};
use parley_domain::training::Training;
use parley_domain::{ResourceKind, Timestamp, voice};
use parley_store::Account;
use serde_json::{Map, Value};

use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::http::resource::{Page, object_body, string_field};
use crate::resources::{self, NewResource, Opened};
use crate::state::AppState;

type ApiResult<T> = Result<T, ApiError>;

const KIND: ResourceKind = ResourceKind::Replica;
/// Rows per page when `limit` is absent: the hosted API answers 20 stock faces to a bare list.
const DEFAULT_LIMIT: u32 = 20;
/// Rows read per round when gathering an account's replicas to filter them.
const GATHER_BATCH: u32 = 500;
const DEFAULT_MODEL: &str = "phoenix-4";
/// The models a replica can be trained on.
const MODELS: [&str; 3] = ["phoenix-3", "phoenix-4", "phoenix-4.5"];
/// The stock replicas were trained before any account existed: one fixed time for all
/// (`2024-01-24T07:14:03.327000Z`, the time in the public docs' examples).
const STOCK_CREATED_AT: Timestamp = Timestamp::from_micros(1_706_080_443_327_000);

/// Which names a response uses: `replica_*` on `/v2/replicas`, `face_*` on `/v2/faces`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Replica,
    Face,
}

impl View {
    fn prefix(self) -> &'static str {
        match self {
            Self::Replica => "replica",
            Self::Face => "face",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Replica => Self::Face,
            Self::Face => Self::Replica,
        }
    }

    /// `replica_<suffix>` or `face_<suffix>`.
    fn field(self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix())
    }

    /// The answer for any id that is not a replica this account can see.
    fn invalid_id(self) -> ApiError {
        ApiError::BadRequest(format!("Invalid {}", self.field("id")))
    }

    fn stock_is_immutable(self) -> ApiError {
        ApiError::error(
            StatusCode::FORBIDDEN,
            format!("System {}s cannot be changed or deleted", self.prefix()),
        )
    }

    /// The query parameter `<view>_<suffix>` if present, else the other view's alias.
    fn param(self, q: &Query, suffix: &str) -> String {
        let own = self.field(suffix);
        if q.get(&own).is_some() {
            own
        } else {
            self.other().field(suffix)
        }
    }

    /// The body field `<view>_<suffix>` if present, else the other view's alias.
    fn body_field(self, fields: &Map<String, Value>, suffix: &str) -> String {
        let own = self.field(suffix);
        if fields.contains_key(&own) {
            own
        } else {
            self.other().field(suffix)
        }
    }
}

/// A replica as every route shows it, stock or the account's own.
struct Shown {
    id: String,
    name: Option<String>,
    system: bool,
    model_name: Option<String>,
    training: Training,
    created_at: Timestamp,
    updated_at: Timestamp,
    default_voice_id: Option<String>,
}

impl Shown {
    fn stock(r: &Replica) -> Self {
        Self {
            id: r.id.to_owned(),
            name: Some(r.name.to_owned()),
            system: true,
            model_name: Some(r.model_name.to_owned()),
            training: Training::DONE,
            created_at: STOCK_CREATED_AT,
            updated_at: STOCK_CREATED_AT,
            default_voice_id: None,
        }
    }

    /// The account's replica; with its content unavailable (its key gone), names read as null.
    fn own(state: &AppState, opened: &Opened, now: Timestamp) -> Self {
        let text = |name: &str| opened.text(name).map(str::to_owned);
        Self {
            id: opened.row.id.clone(),
            name: text("replica_name"),
            system: false,
            model_name: text("model_name"),
            training: Training::at(opened.row.created_at, now, state.settings.replica_training_time),
            created_at: opened.row.created_at,
            updated_at: opened.row.updated_at,
            default_voice_id: text("default_voice_id"),
        }
    }

    fn json(&self, view: View, with_type: bool) -> Value {
        let mut out = Map::new();
        out.insert(view.field("id"), Value::from(self.id.clone()));
        out.insert(view.field("name"), Value::from(self.name.clone()));
        out.insert("thumbnail_video_url".into(), Value::Null);
        out.insert("training_progress".into(), Value::from(self.training.progress()));
        out.insert("status".into(), Value::from(self.training.status()));
        out.insert("error_message".into(), Value::Null);
        out.insert("model_name".into(), Value::from(self.model_name.clone()));
        out.insert(
            "default_voice_id".into(),
            Value::from(self.default_voice_id.clone()),
        );
        // parley makes no voice from training footage, so no replica has an original one.
        out.insert("original_voice_id".into(), Value::Null);
        out.insert("created_at".into(), Value::from(self.created_at.to_string()));
        out.insert("updated_at".into(), Value::from(self.updated_at.to_string()));
        if with_type {
            let kind = if self.system { "system" } else { "user" };
            out.insert(view.field("type"), Value::from(kind));
        }
        Value::Object(out)
    }
}

/// The path's id: `r` and 6 to 32 lowercase hex digits, the form of every stock and drawn id.
/// Anything else (undecodable, a NUL byte, which PostgreSQL text cannot hold) is an invalid id
/// like any other and never reaches the store.
fn path_id(path: Result<Path<String>, PathRejection>, view: View) -> ApiResult<String> {
    let Path(id) = path.map_err(|_| view.invalid_id())?;
    let hex = id.strip_prefix('r').unwrap_or_default();
    let well_formed = (6..=32).contains(&hex.len())
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if well_formed {
        Ok(id)
    } else {
        Err(view.invalid_id())
    }
}

/// The body, with the size limit reported as 413 and other read failures as 400.
fn read_body(state: &AppState, body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(state.settings.max_body_bytes)
        } else {
            ApiError::BadRequest(format!("Could not read the request body: {e}"))
        }
    })
}

/// The account's own replica, or the view's invalid-id answer.
async fn own(state: &AppState, account: &Account, id: &str, view: View) -> ApiResult<Opened> {
    resources::get(state, &account.name, KIND, id)
        .await?
        .ok_or_else(|| view.invalid_id())
}

/// Every replica of the account's, newest first: lists filter on sealed fields, so they are
/// opened and filtered here rather than in the store.
async fn all_own(state: &AppState, account: &Account) -> ApiResult<Vec<Opened>> {
    let mut all = Vec::new();
    loop {
        let offset = u64::try_from(all.len()).unwrap_or(u64::MAX);
        let (rows, total) = resources::list(state, &account.name, KIND, GATHER_BATCH, offset).await?;
        let got = rows.len();
        all.extend(rows);
        if got == 0 || u64::try_from(all.len()).unwrap_or(u64::MAX) >= total {
            return Ok(all);
        }
    }
}

async fn list_any(state: &AppState, account: &Account, raw: Option<&str>, view: View) -> ApiResult<Value> {
    let q = Query::parse(raw);
    let page = Page::from_query(&q, DEFAULT_LIMIT)?;
    // Accepted for the clients that send it; list rows always carry the type.
    q.bool("verbose")?;
    let system = q.choice(&view.param(&q, "type"), "expected user or system", |v| match v {
        "user" => Some(false),
        "system" => Some(true),
        _ => None,
    })?;
    let ids: Option<Vec<String>> = q.get(&view.param(&q, "ids")).and_then(|raw| {
        let ids: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .collect();
        (!ids.is_empty()).then_some(ids)
    });
    let model = q.get("model_name").filter(|m| !m.is_empty());

    let now = Timestamp::now();
    let mut rows: Vec<Shown> = Vec::new();
    if system != Some(true) {
        rows.extend(
            all_own(state, account)
                .await?
                .iter()
                .map(|o| Shown::own(state, o, now)),
        );
    }
    if system != Some(false) {
        rows.extend(registry::REPLICAS.iter().map(Shown::stock));
    }
    rows.retain(|r| {
        ids.as_ref().is_none_or(|ids| ids.contains(&r.id))
            && model.is_none_or(|m| r.model_name.as_deref() == Some(m))
    });
    let total = rows.len();
    let data: Vec<Value> = page.of(rows).iter().map(|r| r.json(view, true)).collect();
    Ok(serde_json::json!({ "data": data, "total_count": total }))
}

async fn show(
    state: &AppState,
    account: &Account,
    id: &str,
    raw: Option<&str>,
    view: View,
) -> ApiResult<Value> {
    let verbose = Query::parse(raw).bool("verbose")?.unwrap_or(false);
    if let Some(stock) = registry::replica(id) {
        return Ok(Shown::stock(stock).json(view, verbose));
    }
    let opened = own(state, account, id, view).await?;
    Ok(Shown::own(state, &opened, Timestamp::now()).json(view, verbose))
}

/// A URL field: absent, empty (the docs' own examples send `"callback_url": ""`), or http(s).
fn url_field(fields: &Map<String, Value>, name: &str) -> ApiResult<Option<String>> {
    let Some(raw) = string_field(fields, name)?.filter(|s| !s.trim().is_empty()) else {
        return Ok(None);
    };
    let ok =
        url::Url::parse(&raw).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "Invalid {name}: expected an http or https URL"
        )));
    }
    Ok(Some(raw))
}

fn bool_field(fields: &Map<String, Value>, name: &str) -> ApiResult<Option<bool>> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::BadRequest(format!(
            "Invalid {name}: expected true or false"
        ))),
    }
}

/// A create body, checked: the fields to store. Unknown fields are ignored.
fn new_replica(body: &[u8], view: View) -> ApiResult<Map<String, Value>> {
    let fields = object_body(body)?;
    let name = string_field(&fields, &view.body_field(&fields, "name"))?;
    let video = url_field(&fields, "train_video_url")?;
    let image = url_field(&fields, "train_image_url")?;
    let consent = url_field(&fields, "consent_video_url")?;
    let callback = url_field(&fields, "callback_url")?;
    let voice_name = string_field(&fields, "voice_name")?.filter(|v| !v.trim().is_empty());
    let default_voice_id = string_field(&fields, "default_voice_id")?.filter(|v| !v.trim().is_empty());
    let auto_fix = bool_field(&fields, "auto_fix_training_image")?;
    let model = string_field(&fields, "model_name")?.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let properties = match fields.get("properties") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => {
            bool_field(p, "background_green_screen").map_err(|_| {
                ApiError::BadRequest(
                    "Invalid properties.background_green_screen: expected true or false".into(),
                )
            })?;
            Some(Value::Object(p.clone()))
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "Invalid properties: expected an object".into(),
            ));
        }
    };

    match (&video, &image) {
        (None, None) => {
            return Err(ApiError::BadRequest(
                "Either train_video_url or train_image_url must be provided.".into(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "Provide train_video_url or train_image_url, not both.".into(),
            ));
        }
        (None, Some(_)) if voice_name.is_none() && default_voice_id.is_none() => {
            return Err(ApiError::BadRequest(
                "voice_name is required when train_image_url is provided.".into(),
            ));
        }
        _ => {}
    }
    if let Some(v) = &voice_name
        && voice::voice(v).is_none()
    {
        let shown: String = v.chars().take(64).collect();
        return Err(ApiError::BadRequest(format!(
            "Invalid voice_name: {shown:?} is not a stock voice (see GET /v2/voices)"
        )));
    }
    if !MODELS.contains(&model.as_str()) {
        let shown: String = model.chars().take(64).collect();
        return Err(ApiError::BadRequest(format!(
            "Invalid model_name: {shown:?} (expected one of {})",
            MODELS.join(", ")
        )));
    }

    let mut stored = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        stored.insert(key.to_owned(), value.unwrap_or(Value::Null));
    };
    put("replica_name", name.map(Value::from));
    put("train_video_url", video.map(Value::from));
    put("train_image_url", image.map(Value::from));
    put("consent_video_url", consent.map(Value::from));
    put("callback_url", callback.map(Value::from));
    put(
        "voice_name",
        voice_name.map(|v| Value::from(v.to_ascii_lowercase())),
    );
    put("default_voice_id", default_voice_id.map(Value::from));
    put("auto_fix_training_image", auto_fix.map(Value::from));
    put("model_name", Some(Value::from(model)));
    put("properties", properties);
    Ok(stored)
}

async fn create_any(state: &AppState, account: &Account, body: &[u8], view: View) -> ApiResult<Value> {
    let fields = new_replica(body, view)?;
    let opened = resources::create(
        state,
        &account.name,
        NewResource {
            kind: KIND,
            id: None,
            // The stored status is the one at create; what clients read is derived from the time.
            status: "started".into(),
            fields,
            work_at: None,
        },
    )
    .await?;
    let mut out = Map::new();
    out.insert(view.field("id"), Value::from(opened.row.id));
    out.insert("status".into(), Value::from("started"));
    Ok(Value::Object(out))
}

/// A new name or voice: a string that is not blank.
fn non_blank(fields: &Map<String, Value>, name: &str) -> ApiResult<Option<String>> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::BadRequest(format!(
            "Invalid {name}: cannot be null or blank"
        ))),
    }
}

/// Applies a rename or a merge patch to the account's replica (never a stock one).
async fn change(
    state: &AppState,
    account: &Account,
    id: &str,
    view: View,
    name: Option<String>,
    default_voice_id: Option<String>,
) -> ApiResult<Opened> {
    if registry::replica(id).is_some() {
        return Err(view.stock_is_immutable());
    }
    let changed = resources::update(state, &account.name, KIND, id, |fields, _row| {
        if let Some(name) = &name {
            fields.insert("replica_name".into(), Value::from(name.clone()));
        }
        if let Some(voice) = &default_voice_id {
            fields.insert("default_voice_id".into(), Value::from(voice.clone()));
        }
        Ok::<(), ApiError>(())
    })
    .await?;
    match changed {
        Some(result) => result,
        None => Err(view.invalid_id()),
    }
}

async fn rename(state: &AppState, account: &Account, id: &str, body: &[u8], view: View) -> ApiResult<Value> {
    let fields = object_body(body)?;
    let key = view.body_field(&fields, "name");
    let name = match fields.get(&key) {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return Err(ApiError::BadRequest(format!(
                "{} is required",
                view.field("name")
            )));
        }
    };
    let opened = change(state, account, id, view, Some(name), None).await?;
    Ok(Shown::own(state, &opened, Timestamp::now()).json(view, false))
}

async fn delete_any(
    state: &AppState,
    account: &Account,
    id: &str,
    raw: Option<&str>,
    view: View,
) -> ApiResult<StatusCode> {
    let hard = Query::parse(raw).bool("hard")?.unwrap_or(false);
    if registry::replica(id).is_some() {
        return Err(view.stock_is_immutable());
    }
    if resources::delete(state, &account.name, KIND, id, hard).await? {
        Ok(StatusCode::OK)
    } else {
        Err(view.invalid_id())
    }
}

/// The `/v2/replicas` and `/v2/faces` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2/replicas", get(list_replicas).post(create_replica))
        .route(
            "/v2/replicas/{replica_id}",
            get(get_replica).delete(delete_replica),
        )
        .route("/v2/replicas/{replica_id}/name", patch(rename_replica))
        .route("/v2/faces", get(list_faces).post(create_face))
        .route(
            "/v2/faces/{face_id}",
            get(get_face).patch(update_face).delete(delete_face),
        )
        .route("/v2/faces/{face_id}/name", patch(rename_face))
}

/// `GET /v2/replicas`
pub async fn list_replicas(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    list_any(&state, &account, raw.as_deref(), View::Replica)
        .await
        .map(Json)
}

/// `GET /v2/faces`
pub async fn list_faces(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    list_any(&state, &account, raw.as_deref(), View::Face)
        .await
        .map(Json)
}

/// `GET /v2/replicas/{replica_id}`
pub async fn get_replica(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = path_id(path, View::Replica)?;
    show(&state, &account, &id, raw.as_deref(), View::Replica)
        .await
        .map(Json)
}

/// `GET /v2/faces/{face_id}`
pub async fn get_face(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = path_id(path, View::Face)?;
    show(&state, &account, &id, raw.as_deref(), View::Face)
        .await
        .map(Json)
}

/// `POST /v2/replicas`
pub async fn create_replica(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = read_body(&state, body)?;
    create_any(&state, &account, &body, View::Replica).await.map(Json)
}

/// `POST /v2/faces`
pub async fn create_face(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let body = read_body(&state, body)?;
    create_any(&state, &account, &body, View::Face).await.map(Json)
}

/// `PATCH /v2/replicas/{replica_id}/name`
pub async fn rename_replica(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = path_id(path, View::Replica)?;
    let body = read_body(&state, body)?;
    rename(&state, &account, &id, &body, View::Replica)
        .await
        .map(Json)
}

/// `PATCH /v2/faces/{face_id}/name`
pub async fn rename_face(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let id = path_id(path, View::Face)?;
    let body = read_body(&state, body)?;
    rename(&state, &account, &id, &body, View::Face).await.map(Json)
}

/// `PATCH /v2/faces/{face_id}`: a JSON Merge Patch of `face_name` and `default_voice_id`.
pub async fn update_face(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let view = View::Face;
    let id = path_id(path, view)?;
    let body = read_body(&state, body)?;
    let fields = object_body(&body)?;
    let name = non_blank(&fields, &view.body_field(&fields, "name"))?;
    let voice = non_blank(&fields, "default_voice_id")?;
    let opened = change(&state, &account, &id, view, name, voice).await?;
    let shown = Shown::own(&state, &opened, Timestamp::now());
    Ok(Json(serde_json::json!({
        "face_id": shown.id,
        "face_name": shown.name,
        "default_voice_id": shown.default_voice_id,
        "original_voice_id": Value::Null,
    })))
}

/// `DELETE /v2/replicas/{replica_id}?hard=true|false`
pub async fn delete_replica(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    let id = path_id(path, View::Replica)?;
    delete_any(&state, &account, &id, raw.as_deref(), View::Replica).await
}

/// `DELETE /v2/faces/{face_id}?hard=true|false`
pub async fn delete_face(
    State(state): State<AppState>,
    Extension(account): Extension<Account>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult<StatusCode> {
    let id = path_id(path, View::Face)?;
    delete_any(&state, &account, &id, raw.as_deref(), View::Face).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(body: Value) -> Result<Map<String, Value>, String> {
        new_replica(body.to_string().as_bytes(), View::Face).map_err(|e| e.to_string())
    }

    #[test]
    fn a_create_needs_exactly_one_training_source() {
        use serde_json::json;
        assert_eq!(
            checked(json!({"face_name": "x"})).unwrap_err(),
            "Either train_video_url or train_image_url must be provided."
        );
        assert_eq!(
            checked(json!({"train_video_url": "", "callback_url": ""})).unwrap_err(),
            "Either train_video_url or train_image_url must be provided."
        );
        assert!(
            checked(json!({"train_video_url": "https://a/v.mp4", "train_image_url": "https://a/i.png"}))
                .is_err()
        );
        assert_eq!(
            checked(json!({"train_image_url": "https://a/i.png"})).unwrap_err(),
            "voice_name is required when train_image_url is provided."
        );
        let stored = checked(
            json!({"train_image_url": "https://a/i.png", "voice_name": "ANNA", "face_name": "F", "extra": 1}),
        )
        .unwrap();
        assert_eq!(stored["voice_name"], "anna");
        assert_eq!(stored["replica_name"], "F");
        assert_eq!(stored["model_name"], DEFAULT_MODEL);
        assert!(!stored.contains_key("extra"));
    }

    #[test]
    fn urls_voices_and_models_are_checked() {
        use serde_json::json;
        for (body, starts) in [
            (
                json!({"train_video_url": "ftp://a/v.mp4"}),
                "Invalid train_video_url",
            ),
            (json!({"train_video_url": "not a url"}), "Invalid train_video_url"),
            (
                json!({"train_video_url": "https://a/v", "callback_url": "file:///etc"}),
                "Invalid callback_url",
            ),
            (
                json!({"train_video_url": "https://a/v", "consent_video_url": 3}),
                "Invalid consent_video_url",
            ),
            (
                json!({"train_video_url": "https://a/v", "voice_name": "nobody"}),
                "Invalid voice_name",
            ),
            (
                json!({"train_video_url": "https://a/v", "model_name": "phoenix-9"}),
                "Invalid model_name",
            ),
            (
                json!({"train_video_url": "https://a/v", "properties": []}),
                "Invalid properties",
            ),
            (
                json!({"train_video_url": "https://a/v", "face_name": 5}),
                "Invalid face_name",
            ),
        ] {
            let e = checked(body.clone()).unwrap_err();
            assert!(e.starts_with(starts), "{body}: {e}");
        }
    }
}
