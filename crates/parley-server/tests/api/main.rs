//! API tests: real HTTP against a real server on port 0, each with a fresh data directory.

mod auth;
mod bad_input;
mod crash;
mod delete;
mod erasure;
mod lifecycle;
mod list;
mod migrate;
mod multiprocess;
mod outage;
mod room;
mod support;
mod timers;
mod webhooks;
