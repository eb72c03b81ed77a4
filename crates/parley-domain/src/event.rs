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

    /// Every event type, so parsing cannot miss one.
    pub const ALL: [Self; 5] = [
        Self::ReplicaJoined,
        Self::Shutdown,
        Self::TranscriptionReady,
        Self::PerceptionAnalysis,
        Self::RecordingReady,
    ];

    /// Parses the wire `event_type`, as stored.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// A webhook delivery to queue: the envelope exactly as every attempt sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub url: String,
    pub payload: String,
    /// A hard delete erases an unsent delivery that carries content, and sends one that does not.
    pub carries_content: bool,
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

    /// The webhook delivery this event gets, queued with it in one transaction: one for every
    /// event of a conversation with a callback URL, none in test mode (see docs/API.md).
    pub fn delivery(
        &self,
        conversation_id: &ConversationId,
        callback_url: Option<&str>,
        test_mode: bool,
    ) -> Option<NewDelivery> {
        let url = callback_url.filter(|_| !test_mode)?;
        let payload = Self::envelope(
            self.event_type.as_str(),
            self.event_type.message_type(),
            self.timestamp,
            self.properties.clone(),
            conversation_id,
            Some(url),
        );
        Some(NewDelivery {
            url: url.to_owned(),
            payload: payload.to_string(),
            carries_content: self.event_type.carries_content(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ConversationId {
        ConversationId::parse("c0123456789abcdef").unwrap()
    }

    #[test]
    fn an_event_of_a_conversation_with_a_callback_gets_its_envelope_delivered_there() {
        let event = Event::shutdown(Timestamp::from_micros(1_750_000_000_000_000), "r1", "ended");
        let d = event
            .delivery(&id(), Some("https://hooks.example.com/x"), false)
            .unwrap();
        assert_eq!(d.url, "https://hooks.example.com/x");
        assert!(!d.carries_content);
        let payload: Value = serde_json::from_str(&d.payload).unwrap();
        assert_eq!(payload["event_type"], "system.shutdown");
        assert_eq!(payload["webhook_url"], "https://hooks.example.com/x");
        assert_eq!(payload["conversation_id"], "c0123456789abcdef");
        assert_eq!(payload["properties"]["shutdown_reason"], "ended");
    }

    #[test]
    fn no_callback_or_test_mode_means_no_delivery() {
        let event = Event::replica_joined(Timestamp::from_micros(0), "r1");
        assert_eq!(event.delivery(&id(), None, false), None);
        assert_eq!(
            event.delivery(&id(), Some("https://hooks.example.com/x"), true),
            None
        );
    }

    #[test]
    fn every_event_type_round_trips_through_its_wire_form() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("application.unknown"), None);
    }

    #[test]
    fn content_events_are_marked_as_carrying_content() {
        let event = Event {
            event_type: EventType::TranscriptionReady,
            timestamp: Timestamp::from_micros(0),
            properties: json!({ "transcript": [] }),
        };
        assert!(
            event
                .delivery(&id(), Some("https://h.example.com"), false)
                .unwrap()
                .carries_content
        );
    }
}
