//! API tests: real HTTP against a real server on port 0, each with a fresh data directory.
//!
//! The modules behind the `e2e` feature need more than a data directory: a browser, or the
//! PostgreSQL and S3 servers that `scripts/test` starts. They fail, never skip, without them.

mod auth;
mod bad_input;
mod catalogue;
mod cors;
mod crash;
mod delete;
#[cfg(feature = "e2e")]
mod disk;
mod documents;
mod erasure;
mod guardrails;
mod lifecycle;
mod list;
mod migrate;
mod multiprocess;
mod objectives;
mod old_copy;
#[cfg(feature = "e2e")]
mod outage;
mod personas;
mod replicas;
mod room;
mod rotation;
mod routing;
#[cfg(feature = "e2e")]
mod shared;
mod support;
mod timers;
mod upgrade;
mod verify;
mod webhooks;
