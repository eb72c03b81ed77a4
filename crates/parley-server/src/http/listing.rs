//! Lists that filter on sealed fields (a name, tags): every resource of the kind is opened, then
//! filtered, sorted and paged here, since the store sees only ciphertext.

use std::collections::HashSet;

use parley_domain::ResourceKind;
use serde_json::Value;

use crate::http::error::ApiError;
use crate::http::query::Query;
use crate::resources::{self, Opened};
use crate::state::AppState;

/// Rows read from the store per round.
const BATCH: u32 = 500;

/// Every resource of the kind the account has (not deleted), oldest first.
pub async fn all(state: &AppState, account: &str, kind: ResourceKind) -> Result<Vec<Opened>, ApiError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut offset = 0u64;
    loop {
        let (rows, total) = resources::list(state, account, kind, BATCH, offset).await?;
        let n = rows.len() as u64;
        // A create between two rounds shifts the pages by one; the row read twice counts once.
        out.extend(rows.into_iter().filter(|o| seen.insert(o.row.row_id.clone())));
        offset += n;
        if n < u64::from(BATCH) || offset >= total {
            break;
        }
    }
    out.sort_by(|a, b| (a.row.created_at, &a.row.row_id).cmp(&(b.row.created_at, &b.row.row_id)));
    Ok(out)
}

/// `sort`: `ascending`/`asc` (oldest first, the default) or `descending`/`desc`.
pub fn descending(q: &Query) -> Result<bool, ApiError> {
    Ok(
        q.choice("sort", "expected ascending, descending, asc or desc", |v| match v
            .to_ascii_lowercase()
            .as_str()
        {
            "ascending" | "asc" => Some(false),
            "descending" | "desc" => Some(true),
            _ => None,
        })?
        .unwrap_or(false),
    )
}

/// A comma-separated list parameter (`tags=a,b`), blanks dropped; empty when absent.
pub fn csv(q: &Query, name: &str) -> Vec<String> {
    q.get(name)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `name_or_uuid`: the id itself, or a case-insensitive part of the name. An absent or empty
/// query matches everything.
pub fn matches_name_or_id(query: Option<&str>, id: &str, name: Option<&str>) -> bool {
    let Some(query) = query.map(str::trim).filter(|q| !q.is_empty()) else {
        return true;
    };
    id.eq_ignore_ascii_case(query) || name.is_some_and(|n| n.to_lowercase().contains(&query.to_lowercase()))
}

/// Whether the resource's `field` (a list of strings) has any of `wanted`; true when nothing is wanted.
pub fn has_any_tag(o: &Opened, field: &str, wanted: &[String]) -> bool {
    wanted.is_empty()
        || o.field(field).as_array().is_some_and(|tags| {
            tags.iter()
                .any(|t| t.as_str().is_some_and(|t| wanted.iter().any(|w| w == t)))
        })
}

/// `{"tags": [...], "total_count": n}`: the distinct tags of `field` across `rows`, sorted, those
/// containing `search` (any case) if given, paged by `limit` and `page` (0 and 1 the first).
pub fn tags_page(rows: &[Opened], field: &str, q: &Query) -> Result<Value, ApiError> {
    let page = crate::http::resource::Page::from_query(q, 100)?;
    let search = q.get("search").map(str::to_lowercase).unwrap_or_default();
    let mut tags: Vec<String> = rows
        .iter()
        .filter_map(|o| o.field(field).as_array())
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| t.to_lowercase().contains(&search))
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let total = tags.len();
    tags = page.of(tags);
    Ok(serde_json::json!({ "tags": tags, "total_count": total }))
}
