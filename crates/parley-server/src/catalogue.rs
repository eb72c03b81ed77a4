//! The stock catalogue every account sees: system tools and the built-in skills, read-only.

use parley_domain::Timestamp;
use serde_json::{Value, json};

/// When the stock entries were made, as they show it (fixed, so listings are stable).
const STOCK_TIME: Timestamp = Timestamp::from_micros(1_735_689_600_000_000);

/// The system tools, in the order lists show them.
pub fn system_tools() -> Vec<Value> {
    vec![json!({
        "tool_id": "end_call",
        "name": "end_call",
        "description": "End the conversation when the participant is done or asks to hang up.",
        "parameters": {"type": "object", "properties": {}, "required": []},
        "delivery": {"app_message": false},
        "trigger_type": "in_call",
        "origin": "llm",
        "on_call": "silent",
        "on_resolve": "fire_and_forget",
        "static_filler": null,
        "tags": [],
        "is_system_tool": true,
        "owner_id": null,
        "created_at": STOCK_TIME,
        "updated_at": STOCK_TIME,
    })]
}

/// A tool by id, as `GET /v2/tools/{id}` shows it; `None` for an id that names no tool.
///
/// Only system tools exist (their id is their name); parley stores no tools of an account's own.
pub fn tool(id: &str) -> Option<Value> {
    system_tools().into_iter().find(|t| t["tool_id"] == id)
}

/// The built-in skills a PAL can attach (`GET /v2/skills`).
pub fn skills() -> Vec<Value> {
    let skill = |id: &str, name: &str, description: &str, config_schema: Value| {
        json!({
            "skill_id": id,
            "display_name": name,
            "description": description,
            // The hosted service's tool names are not published; parley names none.
            "tool_names": [],
            "config_schema": config_schema,
            "created_at": STOCK_TIME,
            "updated_at": STOCK_TIME,
        })
    };
    let no_config = json!({"type": "object", "properties": {}, "additionalProperties": false});
    vec![
        skill(
            "internet_search",
            "Web Search",
            "Look up current information on the web during a call.",
            no_config.clone(),
        ),
        skill(
            "presentation",
            "Slide Presenter",
            "Walk participants through uploaded display-ready Knowledge documents.",
            json!({
                "type": "object",
                "properties": {
                    "document_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "slides_trigger": {"type": "string", "enum": ["on_demand", "walk_the_deck"]},
                    "prompt": {"type": "string"},
                },
                "required": ["document_ids"],
            }),
        ),
        skill(
            "magic_canvas",
            "Magic Canvas",
            "Show scorecards, running scores, quizzes, forms, charts, text and links during a call.",
            json!({
                "type": "object",
                "properties": {
                    "components": {"type": "object"},
                    "usage_guidance": {"type": "string"},
                },
            }),
        ),
        skill(
            "memory",
            "Memory",
            "Carry user-specific context across conversations.",
            no_config,
        ),
    ]
}

/// A skill by id; `None` for an unknown one.
pub fn skill(id: &str) -> Option<Value> {
    skills().into_iter().find(|s| s["skill_id"] == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_resolve_by_id_and_unknown_ids_do_not() {
        assert_eq!(tool("end_call").unwrap()["is_system_tool"], true);
        assert_eq!(
            tool("end_call").unwrap()["created_at"],
            "2025-01-01T00:00:00.000000Z"
        );
        assert!(tool("t0123456789ab").is_none());
        for id in ["internet_search", "presentation", "magic_canvas", "memory"] {
            assert_eq!(skill(id).unwrap()["skill_id"], id);
        }
        assert!(skill("my_skill").is_none());
    }
}
