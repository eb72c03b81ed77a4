//! parley's domain: conversations, ids, validation and the simulated replica, with no IO.
//!
//! Time and randomness are passed in, so everything here is testable with plain `#[test]`s.

pub mod conversation;
pub mod create;
pub mod event;
pub mod id;
pub mod profile;
pub mod registry;
pub mod replica;
pub mod resource;
pub mod time;
pub mod training;
pub mod voice;

pub use conversation::{Conversation, ShutdownReason, Status};
pub use create::{CreateConversation, Limits, NewConversation, Transport, ValidationError};
pub use event::{Event, EventType, NewDelivery};
pub use id::{ConversationId, InvalidId, KeyOwner, random_id};
pub use profile::{PersonaProfile, ReplicaProfile};
pub use resource::ResourceKind;
pub use time::Timestamp;
