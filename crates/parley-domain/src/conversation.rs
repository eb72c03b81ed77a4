//! The conversation record and the rules for its status.

use crate::{ConversationId, Timestamp};

/// Where a conversation is in its life. Only these two are documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Ended,
}

impl Status {
    /// The wire and storage form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Ended => "ended",
        }
    }

    /// Parses the wire form, as used in the list filter.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

/// Why a call ended; the strings are the documented `shutdown_reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    EndEndpointHit,
    Deleted,
    MaxCallDuration,
    ParticipantLeftTimeout,
    ParticipantAbsentTimeout,
    BotCouldNotJoin,
}

impl ShutdownReason {
    /// The documented wire string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::EndEndpointHit => "end_conversation_endpoint_hit",
            Self::Deleted => "conversation_deleted",
            Self::MaxCallDuration => "max_call_duration reached",
            Self::ParticipantLeftTimeout => "participant_left_timeout reached",
            Self::ParticipantAbsentTimeout => "participant_absent_timeout reached",
            Self::BotCouldNotJoin => "bot_could_not_join_meeting_it_was_probably_ended",
        }
    }
}

/// A stored conversation, as the API shows it and the simulated replica needs it.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: ConversationId,
    pub account: String,
    pub status: Status,
    pub conversation_name: Option<String>,
    pub callback_url: Option<String>,
    pub replica_id: String,
    pub persona_id: String,
    pub conversational_context: Option<String>,
    pub custom_greeting: Option<String>,
    pub test_mode: bool,
    pub enable_recording: bool,
    pub meeting_token: Option<String>,
    /// The known fields of the create request, as JSON.
    pub request_json: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub joined_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub shutdown_reason: Option<String>,
    pub deleted_at: Option<Timestamp>,
    /// Seconds from creation after which the call ends.
    pub max_call_duration: u32,
    /// Seconds after the room empties before the call ends.
    pub participant_left_timeout: u32,
    /// Seconds from creation before a call nobody joined ends; 0 turns the timer off.
    pub participant_absent_timeout: u32,
    /// People in the room now.
    pub participants_present: u32,
    pub participant_joined_at: Option<Timestamp>,
    /// When the room last became empty.
    pub participant_left_at: Option<Timestamp>,
}

impl Conversation {
    /// Seconds the call lasted, from the replica joining (or creation) to its end.
    pub fn duration_secs(&self) -> u64 {
        let start = self.joined_at.unwrap_or(self.created_at);
        self.ended_at.map_or(0, |end| end.secs_since(start))
    }
}
