//! The simulated replica: what a call produces when it ends (transcript, perception, recording).

use serde_json::{Value, json};

use crate::create::{PERSONA_SNAPSHOT, REPLICA_SNAPSHOT, snapshot_of};
use crate::event::{Event, EventType};
use crate::profile::{PersonaProfile, ReplicaProfile};
use crate::registry;
use crate::{Conversation, Timestamp};

mod recording;

pub use recording::recording_wav;

/// Where a stored recording can be fetched, for the `recording_ready` event.
#[derive(Debug, Clone)]
pub struct RecordingLocation {
    pub bucket_name: String,
    pub key: String,
    pub uri: String,
    pub duration_secs: u32,
}

/// The persona a stored conversation was created with: the snapshot it keeps of one that is
/// not stock, else the stock persona of its id.
pub fn persona_of(conversation: &Conversation) -> PersonaProfile {
    snapshot_of(&conversation.request_json, PERSONA_SNAPSHOT)
        .or_else(|| registry::persona(&conversation.persona_id).map(PersonaProfile::from))
        .unwrap_or_else(|| {
            registry::persona(registry::DEFAULT_PERSONA_ID)
                .expect("the default persona is in the built-in registry")
                .into()
        })
}

/// The replica a stored conversation was created with, as far as it is known.
pub fn replica_of(conversation: &Conversation) -> ReplicaProfile {
    snapshot_of(&conversation.request_json, REPLICA_SNAPSHOT)
        .or_else(|| registry::replica(&conversation.replica_id).map(ReplicaProfile::from))
        .unwrap_or_else(|| ReplicaProfile {
            id: conversation.replica_id.clone(),
            name: "Replica".into(),
        })
}

/// The greeting the replica speaks first: the conversation's `custom_greeting`, else the persona's.
pub fn greeting(conversation: &Conversation) -> String {
    conversation
        .custom_greeting
        .clone()
        .unwrap_or_else(|| persona_of(conversation).greeting().to_owned())
}

/// The transcript: the full system prompt first (the persona's prompt and context, then the
/// conversation's `conversational_context`), then the greeting and a few turns.
pub fn transcript(conversation: &Conversation) -> Value {
    let persona = persona_of(conversation);
    let system = [
        Some(persona.system_prompt.as_str()),
        persona.context.as_deref(),
        conversation.conversational_context.as_deref(),
    ]
    .into_iter()
    .flatten()
    .filter(|part| !part.is_empty())
    .collect::<Vec<_>>()
    .join("\n\n");
    let topic = conversation
        .conversation_name
        .as_deref()
        .unwrap_or("this conversation");
    json!([
        { "role": "system", "content": system },
        { "role": "assistant", "content": greeting(conversation) },
        { "role": "user", "content": format!("Hi! I'd like to talk about {topic}.") },
        { "role": "assistant", "content": format!("Of course. Tell me what matters most to you about {topic}.") },
        { "role": "user", "content": "That covers it for now, thank you." },
        { "role": "assistant", "content": "Thanks for your time. Goodbye!" },
    ])
}

/// A perception summary, for personas with perception on.
pub fn perception_analysis(conversation: &Conversation) -> Option<String> {
    let model = persona_of(conversation).perception_model?;
    let secs = conversation.duration_secs();
    Some(format!(
        "## Perception analysis ({model})\n\n\
         - Call length: {secs} seconds.\n\
         - The participant stayed in frame, facing the camera, in a well-lit indoor space.\n\
         - Expression: attentive and calm; nodded while listening.\n\
         - No other people or screens were visible.\n"
    ))
}

/// The events that follow the end of a call, oldest first (the shutdown itself is not among them).
pub fn after_end_events(
    conversation: &Conversation,
    at: Timestamp,
    recording: Option<&RecordingLocation>,
) -> Vec<Event> {
    let replica_id = conversation.replica_id.as_str();
    let mut events = vec![Event {
        event_type: EventType::TranscriptionReady,
        timestamp: at,
        properties: json!({ "replica_id": replica_id, "transcript": transcript(conversation) }),
    }];
    if let Some(analysis) = perception_analysis(conversation) {
        events.push(Event {
            event_type: EventType::PerceptionAnalysis,
            timestamp: at,
            properties: json!({ "replica_id": replica_id, "analysis": analysis }),
        });
    }
    if let Some(rec) = recording {
        events.push(Event {
            event_type: EventType::RecordingReady,
            timestamp: at,
            properties: json!({
                "replica_id": replica_id,
                "bucket_name": rec.bucket_name,
                "s3_key": rec.key,
                "duration": rec.duration_secs,
                "storage_provider": "parley",
                "storage_uri": rec.uri,
            }),
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ConversationId, Status};

    pub(super) fn conversation(persona_id: &str) -> Conversation {
        Conversation {
            id: ConversationId::parse("c123456").unwrap(),
            account: "default".into(),
            status: Status::Ended,
            conversation_name: Some("pricing".into()),
            callback_url: None,
            replica_id: "rfe12d8b9597".into(),
            persona_id: persona_id.into(),
            conversational_context: Some("MARKER-42".into()),
            custom_greeting: None,
            test_mode: false,
            enable_recording: true,
            meeting_token: None,
            request_json: "{}".into(),
            created_at: Timestamp::from_micros(0),
            updated_at: Timestamp::from_micros(0),
            joined_at: Some(Timestamp::from_micros(1_000_000)),
            ended_at: Some(Timestamp::from_micros(13_000_000)),
            shutdown_reason: None,
            deleted_at: None,
            max_call_duration: 3600,
            participant_left_timeout: 0,
            participant_absent_timeout: 300,
            participants_present: 0,
            participant_joined_at: None,
            participant_left_at: None,
        }
    }

    #[test]
    fn the_transcript_opens_with_the_full_system_prompt() {
        let t = transcript(&conversation("pdced222244b"));
        assert_eq!(t[0]["role"], "system");
        assert!(t[0]["content"].as_str().unwrap().ends_with("MARKER-42"));
        assert_eq!(t[1]["role"], "assistant");
    }

    #[test]
    fn a_stored_persona_kept_with_the_request_drives_the_transcript() {
        let mut c = conversation("p0123456789abcdef");
        let persona = PersonaProfile {
            id: "p0123456789abcdef".into(),
            name: "Own".into(),
            system_prompt: "PROMPT-7".into(),
            context: Some("CONTEXT-7".into()),
            greeting: Some("GREETING-7".into()),
            default_replica_id: None,
            perception_model: Some("raven-0".into()),
        };
        c.request_json = json!({ crate::create::PERSONA_SNAPSHOT: persona }).to_string();
        let t = transcript(&c);
        assert_eq!(t[0]["content"], "PROMPT-7\n\nCONTEXT-7\n\nMARKER-42");
        assert_eq!(t[1]["content"], "GREETING-7");
        assert!(perception_analysis(&c).unwrap().contains("raven-0"));
        // The conversation's own greeting wins over the persona's.
        c.custom_greeting = Some("MINE".into());
        assert_eq!(transcript(&c)[1]["content"], "MINE");
        // A persona id that is neither stock nor kept falls back to the default persona.
        c.request_json = "{}".into();
        assert_eq!(persona_of(&c).id, registry::DEFAULT_PERSONA_ID);
    }

    #[test]
    fn perception_only_where_the_persona_has_it() {
        assert!(perception_analysis(&conversation("pdced222244b")).is_none());
        let a = perception_analysis(&conversation("pdac61133ac5")).unwrap();
        assert!(a.contains("12 seconds"));
    }

    #[test]
    fn events_after_end_follow_the_documented_order() {
        let loc = RecordingLocation {
            bucket_name: "parley".into(),
            key: "k".into(),
            uri: "http://x/rec".into(),
            duration_secs: 12,
        };
        let kinds: Vec<_> = after_end_events(
            &conversation("pdac61133ac5"),
            Timestamp::from_micros(0),
            Some(&loc),
        )
        .into_iter()
        .map(|e| e.event_type)
        .collect();
        assert_eq!(
            kinds,
            [
                EventType::TranscriptionReady,
                EventType::PerceptionAnalysis,
                EventType::RecordingReady
            ]
        );
    }
}
