//! parley: a self-hosted server for the Tavus v2 Conversations API.
//!
//! The binary is `parley` (see `main.rs`); this library lets tests start a server in-process.

pub mod app;
pub mod backoff;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod disk;
pub mod document;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod migrate;
pub mod persona;
pub mod progress;
pub mod resources;
pub mod sealed;
pub mod service;
pub mod state;
pub mod upgrade;
pub mod verify;
pub mod webhook;
pub mod work;

pub use app::{Server, start};
pub use config::ServeConfig;
