//! The stored tables as data, so `migrate-store` can copy rows between backends without SQL of its own.

/// How a column's values are typed on the wire between stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Bool,
}

/// A stored table, listed in an order where every table comes after the tables it references.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Account,
    ApiKey,
    Conversation,
    Participant,
    Event,
    Asset,
    Delivery,
    ErasureReceipt,
    Job,
    Resource,
    ResourcePurge,
}

use Kind::{Bool, Int, Text};

impl Table {
    /// Every table, referenced ones first.
    pub const ALL: [Table; 11] = [
        Table::Account,
        Table::ApiKey,
        Table::Conversation,
        Table::Participant,
        Table::Event,
        Table::Asset,
        Table::Delivery,
        Table::ErasureReceipt,
        Table::Job,
        Table::Resource,
        Table::ResourcePurge,
    ];

    /// The table's name, the same in every backend.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Account => "account",
            Table::ApiKey => "api_key",
            Table::Conversation => "conversation",
            Table::Participant => "participant",
            Table::Event => "event",
            Table::Asset => "asset",
            Table::Delivery => "delivery",
            Table::ErasureReceipt => "erasure_receipt",
            Table::Job => "job",
            Table::Resource => "resource",
            Table::ResourcePurge => "resource_purge",
        }
    }

    /// The primary key's columns: they order exports, and a page resumes after the last row's key.
    pub const fn key(self) -> &'static [&'static str] {
        match self {
            Table::Account => &["account_id"],
            Table::ApiKey => &["key_id"],
            Table::Conversation => &["conversation_id"],
            Table::Participant => &["participant_id"],
            Table::Event => &["event_id"],
            Table::Asset => &["conversation_id", "name"],
            Table::Delivery => &["delivery_seq"],
            Table::ErasureReceipt => &["conversation_id"],
            Table::Job => &["job_id"],
            Table::Resource => &["row_id"],
            Table::ResourcePurge => &["row_id"],
        }
    }

    /// The values of `row`'s key columns, in [`Table::key`] order.
    pub fn key_of(self, row: &Row) -> Vec<(&'static str, Kind, &Value)> {
        self.key()
            .iter()
            .map(|k| {
                let i = self
                    .columns()
                    .iter()
                    .position(|(c, _)| c == k)
                    .expect("every key column is a column of its table");
                (*k, self.columns()[i].1, &row[i])
            })
            .collect()
    }

    /// The serial column whose counter must follow copied rows, if any.
    pub const fn serial(self) -> Option<&'static str> {
        match self {
            Table::Event => Some("event_id"),
            Table::Delivery => Some("delivery_seq"),
            Table::Job => Some("job_id"),
            _ => None,
        }
    }

    /// Every column, with its kind.
    pub const fn columns(self) -> &'static [(&'static str, Kind)] {
        match self {
            Table::Account => &[
                ("account_id", Text),
                ("max_concurrent", Int),
                ("retention_days", Int),
                ("created_at", Int),
                ("webhook_secret", Text),
            ],
            Table::ApiKey => &[
                ("key_id", Text),
                ("account_id", Text),
                ("key_hash", Text),
                ("created_at", Int),
                ("revoked_at", Int),
            ],
            Table::Conversation => &[
                ("conversation_id", Text),
                ("account_id", Text),
                ("status", Text),
                ("conversation_name", Text),
                ("callback_url", Text),
                ("replica_id", Text),
                ("persona_id", Text),
                ("conversational_context", Text),
                ("custom_greeting", Text),
                ("test_mode", Bool),
                ("enable_recording", Bool),
                ("meeting_token", Text),
                ("request_json", Text),
                ("created_at", Int),
                ("updated_at", Int),
                ("joined_at", Int),
                ("ended_at", Int),
                ("shutdown_reason", Text),
                ("deleted_at", Int),
                ("max_call_duration", Int),
                ("participant_left_timeout", Int),
                ("participant_absent_timeout", Int),
                ("participants_present", Int),
                ("participant_joined_at", Int),
                ("participant_left_at", Int),
            ],
            Table::Participant => &[
                ("participant_id", Text),
                ("conversation_id", Text),
                ("joined_at", Int),
                ("left_at", Int),
            ],
            Table::Event => &[
                ("event_id", Int),
                ("conversation_id", Text),
                ("event_type", Text),
                ("message_type", Text),
                ("occurred_at", Int),
                ("properties", Text),
            ],
            Table::Asset => &[
                ("conversation_id", Text),
                ("name", Text),
                ("blob_key", Text),
                ("content_type", Text),
                ("size", Int),
                ("created_at", Int),
            ],
            Table::Delivery => &[
                ("delivery_seq", Int),
                ("delivery_id", Text),
                ("conversation_id", Text),
                ("account_id", Text),
                ("event_type", Text),
                ("carries_content", Bool),
                ("url", Text),
                ("payload", Text),
                ("status", Text),
                ("attempts", Int),
                ("next_attempt_at", Int),
                ("retry_from", Int),
                ("locked_until", Int),
                ("last_error", Text),
                ("created_at", Int),
                ("finished_at", Int),
            ],
            Table::ErasureReceipt => &[
                ("conversation_id", Text),
                ("account_id", Text),
                ("erased_at", Int),
                ("reason", Text),
                ("events", Int),
                ("assets", Int),
                ("asset_bytes", Int),
                ("key_id", Text),
                ("key_destroyed_at", Int),
            ],
            Table::Job => &[
                ("job_id", Int),
                ("kind", Text),
                ("conversation_id", Text),
                ("not_before", Int),
                ("run_at", Int),
                ("locked_until", Int),
                ("attempts", Int),
                ("last_error", Text),
                ("created_at", Int),
            ],
            Table::Resource => &[
                ("row_id", Text),
                ("account_id", Text),
                ("kind", Text),
                ("resource_id", Text),
                ("status", Text),
                ("body", Text),
                ("version", Int),
                ("blob_key", Text),
                ("created_at", Int),
                ("updated_at", Int),
                ("deleted_at", Int),
                ("work_at", Int),
                ("locked_until", Int),
                ("attempts", Int),
            ],
            Table::ResourcePurge => &[("row_id", Text), ("account_id", Text), ("created_at", Int)],
        }
    }

    /// The comma-separated column list.
    pub fn column_list(self) -> String {
        self.columns()
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One row: a value per column, in [`Table::columns`] order.
pub type Row = Vec<Value>;

/// A column value, typed the same way in every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Text(String),
    Int(i64),
    Bool(bool),
}
