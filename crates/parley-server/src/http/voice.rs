//! `GET /v2/voices`: the stock voice catalogue, read-only.

use axum::Json;
use axum::extract::RawQuery;
use parley_domain::voice::{VOICES, Voice};
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::http::resource::Page;

/// Rows per page when `limit` is absent, as documented.
const DEFAULT_LIMIT: u32 = 10;

fn voice_json(v: &Voice) -> Value {
    let tags: Vec<Value> = v.tags.iter().map(|t| json!({ "tag_name": t })).collect();
    json!({
        "voice_name": v.name,
        "replica_id": v.replica_id,
        // parley has no audio samples to link to.
        "audio_url": Value::Null,
        "tags": tags,
    })
}

/// `GET /v2/voices?limit&page&search&sort&tag|tags`
pub async fn list_voices(RawQuery(raw): RawQuery) -> Result<Json<Value>, ApiError> {
    let q = Query::parse(raw.as_deref());
    let page = Page::from_query(&q, DEFAULT_LIMIT)?;
    let descending = q
        .choice("sort", "expected asc or desc", |v| {
            match v.to_ascii_lowercase().as_str() {
                "asc" | "ascending" => Some(false),
                "desc" | "descending" => Some(true),
                _ => None,
            }
        })?
        .unwrap_or(false);
    let search = q.get("search").map(str::to_lowercase).filter(|s| !s.is_empty());
    // `tag` is the documented name, `tags` (comma-separated) what the MCP server sends: a voice
    // must carry every tag asked for.
    let wanted: Vec<String> = ["tag", "tags"]
        .iter()
        .filter_map(|name| q.get(name))
        .flat_map(|raw| raw.split(','))
        .map(|t| t.trim().to_lowercase())
        .filter(|t| !t.is_empty())
        .collect();

    let mut found: Vec<&Voice> = VOICES
        .iter()
        .filter(|v| search.as_ref().is_none_or(|s| v.name.contains(s.as_str())))
        .filter(|v| wanted.iter().all(|t| v.tags.contains(&t.as_str())))
        .collect();
    found.sort_by_key(|v| v.name);
    if descending {
        found.reverse();
    }
    let total = found.len();
    let data: Vec<Value> = page.of(found).into_iter().map(voice_json).collect();
    Ok(Json(json!({
        "data": data,
        "total_count": total,
        // Pages count from 1 here; `page=0` (sent by the MCP server) is the first page.
        "page": page.page.max(1),
        "limit": page.limit,
    })))
}
