//! Conversation events in the webhook envelope shape, as delivered and as shown by `verbose`.

use serde_json::{Value, json};

use crate::{ConversationId, Timestamp};

/// The documented event types that parley produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    ReplicaJoined,
    Shutdown,
    TranscriptionReady,
    PerceptionAnalysis,
    RecordingReady,
}

impl EventType {
    /// The wire `event_type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReplicaJoined => "system.replica_joined",
            Self::Shutdown => "system.shutdown",
            Self::TranscriptionReady => "application.transcription_ready",
            Self::PerceptionAnalysis => "application.perception_analysis",
            Self::RecordingReady => "application.recording_ready",
        }
    }

    /// The wire `message_type`: `system` or `application`.
    pub const fn message_type(self) -> &'static str {
        match self {
            Self::ReplicaJoined | Self::Shutdown => "system",
            _ => "application",
        }
    }

    /// Whether the event carries conversation content, which a hard delete must erase.
    pub const fn carries_content(self) -> bool {
        !matches!(self, Self::ReplicaJoined | Self::Shutdown)
    }
}

/// One event of a conversation, before it is wrapped in an envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event_type: EventType,
    pub timestamp: Timestamp,
    pub properties: Value,
}

impl Event {
    /// The replica is in the room.
    pub fn replica_joined(at: Timestamp, replica_id: &str) -> Self {
        Self {
            event_type: EventType::ReplicaJoined,
            timestamp: at,
            properties: json!({ "replica_id": replica_id }),
        }
    }

    /// The call is over.
    pub fn shutdown(at: Timestamp, replica_id: &str, reason: &str) -> Self {
        Self {
            event_type: EventType::Shutdown,
            timestamp: at,
            properties: json!({ "replica_id": replica_id, "shutdown_reason": reason }),
        }
    }

    /// The envelope as sent to `callback_url` and listed by `verbose=true`.
    pub fn envelope(
        event_type: &str,
        message_type: &str,
        timestamp: Timestamp,
        properties: Value,
        conversation_id: &ConversationId,
        webhook_url: Option<&str>,
    ) -> Value {
        json!({
            "properties": properties,
            "conversation_id": conversation_id,
            "webhook_url": webhook_url,
            "event_type": event_type,
            "message_type": message_type,
            "timestamp": timestamp,
        })
    }
}
