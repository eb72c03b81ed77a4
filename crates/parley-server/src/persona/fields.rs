//! A persona's fields: one stored set, two wire views (`/v2/personas` and `/v2/pals`), and the checks.
//!
//! The stored body uses the persona names (`persona_name`, `persona_description`,
//! `default_replica_id`) and every other field as the client sent it, unknown ones included
//! (the SDK sends `layers.*` and more). The PAL view renames those three; both views add the id,
//! the type and the timestamps, which are never stored in the body.

use parley_domain::Timestamp;
use serde_json::{Map, Value, json};

/// Which of the two wire views a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `/v2/personas`: `persona_id`, `persona_name`, `default_replica_id`, `persona_type`.
    Persona,
    /// `/v2/pals`: `pal_id`, `pal_name`, `default_face_id`, `pal_type`.
    Pal,
}

/// Stored names that the PAL view renames, with their PAL names.
const PAL_NAMES: [(&str, &str); 3] = [
    ("persona_name", "pal_name"),
    ("persona_description", "pal_description"),
    ("default_replica_id", "default_face_id"),
];

/// Fields the server owns: rendered on every read, never stored in the body; a client's
/// value for them (a create body, a patch) is ignored.
const READ_ONLY: [&str; 6] = [
    "persona_id",
    "pal_id",
    "persona_type",
    "pal_type",
    "created_at",
    "updated_at",
];

/// A field whose value has the wrong type or shape; the text is the 400's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(pub String);

impl View {
    /// The id field: `persona_id` or `pal_id`.
    pub const fn id_key(self) -> &'static str {
        match self {
            Self::Persona => "persona_id",
            Self::Pal => "pal_id",
        }
    }

    /// The list filter and object field saying `user` or `system`.
    pub const fn type_key(self) -> &'static str {
        match self {
            Self::Persona => "persona_type",
            Self::Pal => "pal_type",
        }
    }

    /// The field naming the default replica (face).
    pub const fn replica_key(self) -> &'static str {
        match self {
            Self::Persona => "default_replica_id",
            Self::Pal => "default_face_id",
        }
    }

    /// What the view calls the resource in messages.
    pub const fn noun(self) -> &'static str {
        match self {
            Self::Persona => "persona",
            Self::Pal => "PAL",
        }
    }

    /// The view's name of a stored field.
    pub fn name_of(self, stored: &str) -> &str {
        match self {
            Self::Persona => stored,
            Self::Pal => PAL_NAMES
                .iter()
                .find(|(s, _)| *s == stored)
                .map_or(stored, |(_, pal)| pal),
        }
    }

    /// The other view's names of the renamed fields: a body of this view that sends them is
    /// ambiguous, so they are dropped and this view's names win.
    fn foreign_names(self) -> impl Iterator<Item = &'static str> {
        PAL_NAMES.iter().map(move |(persona, pal)| match self {
            Self::Persona => *pal,
            Self::Pal => *persona,
        })
    }
}

/// Fields as a client of `view` sent them (a create body, a patched object) → the stored set.
pub fn to_stored(view: View, mut sent: Map<String, Value>) -> Result<Map<String, Value>, FieldError> {
    for key in READ_ONLY.into_iter().chain(view.foreign_names()) {
        sent.remove(key);
    }
    if view == View::Pal {
        for (stored, pal) in PAL_NAMES {
            if let Some(value) = sent.remove(pal) {
                sent.insert(stored.to_owned(), value);
            }
        }
    }
    check(view, &sent)?;
    Ok(sent)
}

/// What the server adds to a stored set to show it.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    pub id: &'a str,
    /// `user` for the account's own, `system` for stock ones.
    pub kind: &'static str,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The flat object a read of `view` answers with: every stored field (renamed for the view),
/// the documented ones that are absent as their defaults, and the server's own fields.
pub fn render(view: View, stored: &Map<String, Value>, shown: Shown<'_>) -> Map<String, Value> {
    let mut out = Map::new();
    let mut defaults = vec![
        ("persona_name", Value::Null),
        ("persona_description", Value::Null),
        ("system_prompt", Value::Null),
        ("context", Value::Null),
        ("default_replica_id", Value::Null),
        ("pipeline_mode", json!("full")),
        // Always lists: clients patch them with `replace`, which needs the key to exist.
        ("document_ids", json!([])),
        ("document_tags", json!([])),
        ("layers", json!({})),
        ("objectives_id", Value::Null),
        ("guardrails_id", Value::Null),
    ];
    if view == View::Pal {
        defaults.extend([
            ("greeting", Value::Null),
            ("conferencing_email", Value::Null),
            ("guardrail_ids", json!([])),
            ("guardrail_tags", json!([])),
            ("tool_ids", json!([])),
            ("memories", json!([])),
            ("is_template", json!(false)),
        ]);
    }
    for (key, value) in defaults {
        out.insert(view.name_of(key).to_owned(), value);
    }
    for (key, value) in stored {
        out.insert(view.name_of(key).to_owned(), value.clone());
    }
    if view == View::Pal {
        // The official client's `build_and_verify` reads `persona_description` from a PAL.
        let description = out.get("pal_description").cloned().unwrap_or(Value::Null);
        out.insert("persona_description".into(), description);
    }
    out.insert(view.id_key().into(), json!(shown.id));
    out.insert(view.type_key().into(), json!(shown.kind));
    out.insert("created_at".into(), json!(shown.created_at));
    out.insert("updated_at".into(), json!(shown.updated_at));
    out
}

/// Fields whose value is a string (or null).
const STRINGS: [&str; 9] = [
    "persona_name",
    "persona_description",
    "system_prompt",
    "context",
    "greeting",
    "default_replica_id",
    "objectives_id",
    "guardrails_id",
    "conferencing_email",
];

/// Fields whose value is a list of strings (or null).
const STRING_LISTS: [&str; 6] = [
    "document_ids",
    "document_tags",
    "guardrail_ids",
    "guardrail_tags",
    "tool_ids",
    "memories",
];

/// Fields whose value is an object (or null).
const OBJECTS: [&str; 2] = ["layers", "skills"];

/// The pipeline modes: the documented `full` and `echo`, and the client's `speech-to-speech`.
pub const PIPELINE_MODES: [&str; 3] = ["full", "echo", "speech-to-speech"];

/// Most tools a persona may have, as the hosted API allows.
const MAX_TOOLS: usize = 50;

/// Checks the types of the known fields of a stored set and that a full-pipeline persona has a
/// system prompt; errors name the field as `view` calls it.
pub fn check(view: View, stored: &Map<String, Value>) -> Result<(), FieldError> {
    let invalid = |key: &str, why: &str| FieldError(format!("Invalid {}: {why}", view.name_of(key)));
    for key in STRINGS {
        if !matches!(stored.get(key), None | Some(Value::Null | Value::String(_))) {
            return Err(invalid(key, "expected a string"));
        }
    }
    for key in STRING_LISTS {
        match stored.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
            Some(_) => return Err(invalid(key, "expected a list of strings")),
        }
    }
    for key in OBJECTS {
        if !matches!(stored.get(key), None | Some(Value::Null | Value::Object(_))) {
            return Err(invalid(key, "expected an object"));
        }
    }
    if !matches!(
        stored.get("is_template"),
        None | Some(Value::Null | Value::Bool(_))
    ) {
        return Err(invalid("is_template", "expected a boolean"));
    }
    if let Some(Value::Array(tools)) = stored.get("tool_ids") {
        if tools.len() > MAX_TOOLS {
            return Err(invalid("tool_ids", "at most 50 tools"));
        }
        if tools.iter().any(|t| t.as_str() == Some("")) {
            return Err(invalid("tool_ids", "tool ids must not be empty"));
        }
    }
    let mode = match stored.get("pipeline_mode") {
        None | Some(Value::Null) => "full",
        Some(Value::String(mode)) if PIPELINE_MODES.contains(&mode.as_str()) => mode,
        Some(_) => {
            return Err(invalid(
                "pipeline_mode",
                "expected one of full, echo, speech-to-speech",
            ));
        }
    };
    let prompt = stored
        .get("system_prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if mode == "full" && prompt.trim().is_empty() {
        return Err(FieldError(format!(
            "Invalid system_prompt: a {} in full pipeline mode must have a system_prompt (echo mode need not)",
            view.noun()
        )));
    }
    Ok(())
}

/// A stored set's text field, if it is a non-empty string.
pub fn text<'a>(stored: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    stored.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// The perception model a stored set turns on (`layers.perception.perception_model`, unless `off`).
pub fn perception_model(stored: &Map<String, Value>) -> Option<&str> {
    stored
        .get("layers")?
        .get("perception")?
        .get("perception_model")?
        .as_str()
        .filter(|m| !m.is_empty() && *m != "off")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn shown() -> Shown<'static> {
        Shown {
            id: "p1",
            kind: "user",
            created_at: Timestamp::from_micros(0),
            updated_at: Timestamp::from_micros(0),
        }
    }

    #[test]
    fn a_pal_body_is_stored_under_persona_names_and_shown_back_under_its_own() {
        let sent = object(json!({
            "pal_name": "N", "pal_description": "D", "default_face_id": "r1",
            "system_prompt": "P", "layers": {"llm": {"model": "m"}},
            "pal_id": "ignored", "created_at": "ignored", "persona_name": "ambiguous",
        }));
        let stored = to_stored(View::Pal, sent).unwrap();
        assert_eq!(
            Value::Object(stored.clone()),
            json!({"persona_name": "N", "persona_description": "D", "default_replica_id": "r1",
                   "system_prompt": "P", "layers": {"llm": {"model": "m"}}})
        );
        let pal = render(View::Pal, &stored, shown());
        assert_eq!(pal["pal_id"], "p1");
        assert_eq!(pal["pal_name"], "N");
        assert_eq!(pal["default_face_id"], "r1");
        assert_eq!(pal["persona_description"], "D");
        assert_eq!(pal["tool_ids"], json!([]));
        assert!(!pal.contains_key("persona_name"));
        let persona = render(View::Persona, &stored, shown());
        assert_eq!(persona["persona_id"], "p1");
        assert_eq!(persona["persona_name"], "N");
        assert_eq!(persona["default_replica_id"], "r1");
        assert_eq!(persona["document_ids"], json!([]));
        assert!(!persona.contains_key("pal_name"));
        // What a view shows goes back to the same stored set.
        assert_eq!(to_stored(View::Pal, pal).unwrap()["persona_name"], "N");
    }

    #[test]
    fn wrong_types_name_the_field_as_the_view_calls_it() {
        let cases = [
            (
                View::Pal,
                json!({"pal_name": 5}),
                "Invalid pal_name: expected a string",
            ),
            (
                View::Persona,
                json!({"persona_name": 5}),
                "Invalid persona_name: expected a string",
            ),
            (
                View::Pal,
                json!({"default_face_id": []}),
                "Invalid default_face_id: expected a string",
            ),
            (
                View::Persona,
                json!({"document_ids": "d1"}),
                "Invalid document_ids: expected a list of strings",
            ),
            (
                View::Persona,
                json!({"layers": []}),
                "Invalid layers: expected an object",
            ),
            (
                View::Pal,
                json!({"is_template": "yes"}),
                "Invalid is_template: expected a boolean",
            ),
            (
                View::Persona,
                json!({"pipeline_mode": "turbo"}),
                "Invalid pipeline_mode: expected one of full, echo, speech-to-speech",
            ),
        ];
        for (view, sent, error) in cases {
            let mut sent = object(sent);
            sent.insert("system_prompt".into(), json!("P"));
            assert_eq!(to_stored(view, sent).unwrap_err().0, error);
        }
    }

    #[test]
    fn full_mode_needs_a_system_prompt_and_echo_does_not() {
        let e = to_stored(View::Persona, object(json!({"persona_name": "x"}))).unwrap_err();
        assert!(e.0.starts_with("Invalid system_prompt:"), "{e}");
        let e = to_stored(
            View::Pal,
            object(json!({"system_prompt": " ", "pipeline_mode": "full"})),
        )
        .unwrap_err();
        assert!(e.0.contains("PAL"), "{e}");
        assert!(
            to_stored(
                View::Persona,
                object(json!({"pipeline_mode": "echo", "system_prompt": ""}))
            )
            .is_ok()
        );
        assert!(to_stored(View::Pal, object(json!({"pipeline_mode": "speech-to-speech"}))).is_ok());
    }

    #[test]
    fn perception_is_on_unless_absent_or_off() {
        let on = object(json!({"layers": {"perception": {"perception_model": "raven-1"}}}));
        assert_eq!(perception_model(&on), Some("raven-1"));
        let off = object(json!({"layers": {"perception": {"perception_model": "off"}}}));
        assert_eq!(perception_model(&off), None);
        assert_eq!(perception_model(&Map::new()), None);
    }
}
