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

    /// A stored `shutdown_reason` in words, for people; unknown reasons get a plain sentence.
    ///
    /// Takes the raw string because stored reasons include documented ones parley never writes
    /// itself, and the documentation spells the timer reasons both with and without ` reached`.
    pub fn describe(raw: &str) -> &'static str {
        match raw.strip_suffix(" reached").unwrap_or(raw) {
            "end_conversation_endpoint_hit" => "The call was ended.",
            "conversation_deleted" | "deleted" => "The conversation was deleted.",
            "max_call_duration" => "The call reached its maximum duration.",
            "participant_left_timeout" => "Everyone left the call, and nobody came back in time.",
            "participant_absent_timeout" => "Nobody joined the call in time.",
            "bot_could_not_join_meeting_it_was_probably_ended" => "The replica could not join the call.",
            "daily_room_has_been_deleted" => "The call's room was deleted.",
            "exception_encountered_during_conversation_startup" => "The call could not start.",
            _ => "The call has ended.",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_parley_writes_has_its_own_words() {
        let reasons = [
            ShutdownReason::EndEndpointHit,
            ShutdownReason::Deleted,
            ShutdownReason::MaxCallDuration,
            ShutdownReason::ParticipantLeftTimeout,
            ShutdownReason::ParticipantAbsentTimeout,
            ShutdownReason::BotCouldNotJoin,
        ];
        let mut words: Vec<&str> = reasons
            .iter()
            .map(|r| ShutdownReason::describe(r.as_str()))
            .collect();
        assert!(!words.contains(&ShutdownReason::describe("something new")));
        words.sort_unstable();
        words.dedup();
        assert_eq!(words.len(), reasons.len());
    }

    #[test]
    fn timer_reasons_read_the_same_with_or_without_reached() {
        assert_eq!(
            ShutdownReason::describe("max_call_duration"),
            "The call reached its maximum duration."
        );
        assert_eq!(
            ShutdownReason::describe("max_call_duration reached"),
            "The call reached its maximum duration."
        );
        assert_eq!(
            ShutdownReason::describe("internal error occurred at step 3"),
            "The call has ended."
        );
    }
}
