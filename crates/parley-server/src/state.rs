//! Shared server state: the store, the blobs and the settings every request and job reads.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use parley_blobs::Blobs;
use parley_domain::Limits;
use parley_store::Account;
use tokio::sync::Notify;

use crate::disk::Disk;
use crate::document::DocumentSettings;
use crate::http::cors::AllowedOrigins;
use crate::sealed::SealedStore;
use crate::webhook::WebhookSettings;

/// Settings that shape behaviour, resolved once at startup.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base of `conversation_url` and recording links, without a trailing slash.
    pub public_url: String,
    pub max_concurrent: u32,
    pub retention: Duration,
    pub limits: Limits,
    pub replica_join_delay: Duration,
    /// How long a created replica's simulated training takes.
    pub replica_training_time: Duration,
    pub max_recording_secs: u32,
    pub max_body_bytes: usize,
    /// Origins whose pages may read API responses.
    pub cors: AllowedOrigins,
    pub run_jobs: bool,
    /// How long a claimed job or delivery is ours.
    pub job_lease: Duration,
    pub job_poll_interval: Duration,
    pub webhooks: WebhookSettings,
    /// Replicas the simulated replica cannot join with.
    pub unjoinable_replicas: Vec<String>,
    pub documents: DocumentSettings,
    /// Seeded personas and replicas, and whether unknown well-formed ids are accepted.
    pub personas: crate::persona::PersonaSettings,
}

impl Settings {
    /// The lease end for a job or delivery claimed now.
    pub fn lease_from(&self, now: parley_domain::Timestamp) -> parley_domain::Timestamp {
        now.plus_millis(i64::try_from(self.job_lease.as_millis()).unwrap_or(i64::MAX))
    }

    /// The account's cap of active conversations.
    pub fn max_concurrent_for(&self, account: &Account) -> u32 {
        account.max_concurrent.unwrap_or(self.max_concurrent)
    }

    /// How long the account's soft-deleted conversations stay recoverable.
    pub fn retention_for(&self, account: &Account) -> Duration {
        account.retention_days.map_or(self.retention, |days| {
            Duration::from_secs(u64::from(days) * 86_400)
        })
    }
}

/// What handlers and jobs share; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

/// The contents of [`AppState`].
pub struct Inner {
    /// The store, sealing content under each conversation's key (which it also holds).
    pub store: Arc<SealedStore>,
    pub blobs: Blobs,
    pub settings: Settings,
    /// Whether writes fail for lack of space, and the reserve that lets the small ones go on.
    pub disk: Disk,
    /// Wakes the job runner when work is due now.
    pub wake_jobs: Notify,
    /// Wakes the webhook runner when a delivery may be due now.
    pub wake_deliveries: Notify,
    /// Serialises this process's read-modify-writes of one resource (see `resources::update`).
    pub resource_locks: crate::resources::Stripes,
}

impl AppState {
    /// Bundles the parts.
    pub fn new(store: Arc<SealedStore>, blobs: Blobs, settings: Settings, disk: Disk) -> Self {
        Self(Arc::new(Inner {
            store,
            blobs,
            settings,
            disk,
            wake_jobs: Notify::new(),
            wake_deliveries: Notify::new(),
            resource_locks: crate::resources::Stripes::default(),
        }))
    }
}

impl Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
