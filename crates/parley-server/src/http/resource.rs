//! What every resource's routes share: list paging, JSON Patch bodies and field checks.

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::http::error::ApiError;
use crate::http::query::Query;

/// A list's page: how many rows, after how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u64,
    /// The page number as the client will read it back (documents and voices echo it).
    pub page: u32,
}

impl Page {
    /// `limit` (1 to 100, `default_limit` when absent) and `page`, where 0 and 1 both mean the
    /// first page: the official clients send `page=0` to lists documented as starting at 1.
    pub fn from_query(q: &Query, default_limit: u32) -> Result<Self, ApiError> {
        let limit = q.int("limit", 1..=100)?.unwrap_or(default_limit);
        let page = q.int("page", 0..=1_000_000)?.unwrap_or(1);
        let offset = u64::from(page.max(1) - 1) * u64::from(limit);
        Ok(Self { limit, offset, page })
    }

    /// The slice of `all` this page shows.
    pub fn of<T>(&self, all: Vec<T>) -> Vec<T> {
        all.into_iter()
            .skip(usize::try_from(self.offset).unwrap_or(usize::MAX))
            .take(self.limit as usize)
            .collect()
    }
}

/// A request body that must be a JSON object; anything else is a 400 naming what was wrong.
pub fn object_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::BadRequest(
            "Invalid request body: expected a JSON object".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!("Invalid request body: {e}"))),
    }
}

/// A request body's bytes, with the size limit reported as 413 and other read failures as 400.
pub fn body_bytes(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::BadRequest(format!("Could not read the request body: {e}"))
        }
    })
}

/// Applies an RFC 6902 JSON Patch body to `fields`, all or nothing.
///
/// A body that is not a patch, or a patch that does not apply (a `replace` of a missing field,
/// a failed `test`), is the hosted API's 422 `{"message": "Invalid JSON patch format"}`, with
/// the reason after it. `add` creates missing parents, as the hosted API's does: clients send
/// `add /layers/perception/perception_model` to personas without a perception layer.
pub fn apply_patch(fields: &mut Map<String, Value>, body: &[u8]) -> Result<(), ApiError> {
    let invalid = |why: String| {
        ApiError::message(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Invalid JSON patch format: {why}"),
        )
    };
    let patch: json_patch::Patch = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    // Patched on a copy, so a patch that fails half way leaves `fields` as they were.
    let mut doc = Value::Object(fields.clone());
    for op in &patch.0 {
        if let json_patch::PatchOperation::Add(add) = op {
            make_parents(&mut doc, add.path.as_str());
        }
        json_patch::patch(&mut doc, std::slice::from_ref(op)).map_err(|e| invalid(e.to_string()))?;
    }
    match doc {
        Value::Object(patched) => {
            *fields = patched;
            Ok(())
        }
        _ => Err(invalid("the patched document is not an object".into())),
    }
}

/// Creates the missing objects on the way to `pointer`'s parent.
fn make_parents(doc: &mut Value, pointer: &str) {
    let tokens: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((_, parents)) = tokens.split_last() else {
        return;
    };
    let mut at = doc;
    for token in parents {
        let Value::Object(map) = at else {
            return;
        };
        at = map
            .entry(token.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A list of strings, or absent: anything else is a 400 naming the field.
pub fn string_list(fields: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("Invalid {name}: expected a list of strings"))),
        Some(_) => Err(ApiError::BadRequest(format!(
            "Invalid {name}: expected a list of strings"
        ))),
    }
}

/// A string, or absent: anything else is a 400 naming the field.
pub fn string_field(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::BadRequest(format!("Invalid {name}: expected a string"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn page_zero_and_one_are_the_first_page() {
        for raw in ["page=0&limit=5", "page=1&limit=5", "limit=5"] {
            let p = Page::from_query(&Query::parse(Some(raw)), 10).unwrap();
            assert_eq!((p.limit, p.offset), (5, 0), "{raw}");
        }
        let p = Page::from_query(&Query::parse(Some("page=3")), 10).unwrap();
        assert_eq!((p.limit, p.offset, p.page), (10, 20, 3));
        assert!(Page::from_query(&Query::parse(Some("limit=0")), 10).is_err());
        assert!(Page::from_query(&Query::parse(Some("page=-1")), 10).is_err());
    }

    #[test]
    fn a_patch_adds_missing_parents_replaces_and_removes() {
        let mut fields = object(json!({"name": "a", "layers": {"stt": {"hotwords": "x"}}}));
        let ops = json!([
            {"op": "add", "path": "/layers/perception/perception_model", "value": "raven-1"},
            {"op": "replace", "path": "/name", "value": "b"},
            {"op": "remove", "path": "/layers/stt/hotwords"}
        ]);
        apply_patch(&mut fields, ops.to_string().as_bytes()).unwrap();
        assert_eq!(
            Value::Object(fields),
            json!({"name": "b", "layers": {"stt": {}, "perception": {"perception_model": "raven-1"}}})
        );
    }

    #[test]
    fn a_patch_that_does_not_apply_changes_nothing_and_is_a_422() {
        let before = json!({"name": "a"});
        for body in [
            json!([{"op": "replace", "path": "/name", "value": "b"}, {"op": "replace", "path": "/missing", "value": 1}]),
            json!({"op": "replace"}),
            json!([{"op": "frobnicate", "path": "/name"}]),
        ] {
            let mut fields = object(before.clone());
            let e = apply_patch(&mut fields, body.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert!(e.to_string().starts_with("Invalid JSON patch format"), "{e}");
            assert_eq!(Value::Object(fields), before, "{body}");
        }
    }
}
