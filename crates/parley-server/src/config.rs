//! Command-line and environment configuration: every flag is also a `PARLEY_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::http::cors::AllowedOrigins;

/// parley: a self-hosted server for the Tavus v2 Conversations API.
#[derive(Debug, Parser)]
#[command(name = "parley", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The `parley` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API server.
    Serve(Box<ServeConfig>),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage accounts and their limits.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Operator actions on conversations.
    #[command(subcommand)]
    Conversations(ConversationsCommand),
    /// Inspect and retry webhook deliveries; manage signing secrets.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Copy everything from one store to another (e.g. SQLite to PostgreSQL), then verify counts.
    MigrateStore(MigrateConfig),
    /// Rewrap every data key under a new master key; content is not rewritten. Resumable.
    RotateMasterKey(RotateConfig),
    /// Seal the content an older parley stored in plaintext (what `serve` does at start), then
    /// compact the database. Resumable.
    EncryptStore(EncryptConfig),
    /// List erasure receipts of hard-deleted conversations.
    Receipts {
        #[command(flatten)]
        store: StoreConfig,
        /// Only this account's receipts.
        #[arg(long)]
        account: Option<String>,
    },
    /// List pending background jobs (purges, finalisation, joins, timers, retention).
    Jobs {
        #[command(flatten)]
        store: StoreConfig,
    },
    /// Cross-check conversations, data keys, blobs, erasure receipts and purges; with `--repair`,
    /// finish what a crash left half done. Exit 0: clean; 1: findings remain; 2: could not check.
    Verify(VerifyConfig),
}

/// `parley verify` settings.
#[derive(Debug, Clone, Args)]
pub struct VerifyConfig {
    #[command(flatten)]
    pub store: StoreConfig,

    #[command(flatten)]
    pub blobs: BlobConfig,

    #[command(flatten)]
    pub keys: KeyConfig,

    /// Finish purges, destroy keys that belong to no conversation, delete orphan blobs, and erase
    /// conversations whose key is lost. The README lists what each finding gets.
    #[arg(long)]
    pub repair: bool,

    /// On a shared (PostgreSQL) key store, a key younger than this with no conversation may be a
    /// create in flight on a live server: it is reported as recent and left alone.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub grace: Duration,

    /// `text`: one finding per line and a summary line; `json`: one JSON object.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
}

/// `parley keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key for an account (created if missing); prints the key alone on stdout.
    Create {
        #[command(flatten)]
        store: StoreConfig,
        #[arg(long)]
        account: String,
    },
    /// List keys: ids, accounts, times. Never the secret.
    List {
        #[command(flatten)]
        store: StoreConfig,
    },
    /// Revoke a key by id; requests with it get 401 at once.
    Revoke {
        #[command(flatten)]
        store: StoreConfig,
        key_id: String,
    },
}

/// `parley accounts …`
#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// List accounts and their limits.
    List {
        #[command(flatten)]
        store: StoreConfig,
    },
    /// Set an account's limits; an omitted one returns to the server default.
    Set {
        #[command(flatten)]
        store: StoreConfig,
        name: String,
        /// Cap on active conversations.
        #[arg(long)]
        max_concurrent: Option<u32>,
        /// Days a soft-deleted conversation stays recoverable.
        #[arg(long)]
        retention_days: Option<u32>,
    },
}

/// `parley migrate-store` settings.
#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    /// The database to copy from: `sqlite://PATH` or `postgres://…`. Stop its servers first.
    #[arg(long)]
    pub from: String,
    /// The database to copy into: empty, or left half-filled by an earlier copy from the same source.
    #[arg(long)]
    pub to: String,
    /// The source's blobs: a folder or `s3://BUCKET[/PREFIX]` (default: `blobs/` beside a SQLite source).
    #[arg(long)]
    pub from_blob_url: Option<String>,
    /// The destination's blobs: a folder or `s3://BUCKET[/PREFIX]` (default: `blobs/` beside a SQLite destination).
    #[arg(long)]
    pub to_blob_url: Option<String>,
    /// S3 endpoint for either side's `s3://` URL.
    #[arg(long, env = "PARLEY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region for either side's `s3://` URL.
    #[arg(long, env = "PARLEY_S3_REGION")]
    pub s3_region: Option<String>,
    /// The source's key store, as `parley serve --key-store`: a slot file path or `postgres://…`.
    #[arg(long, env = "PARLEY_KEY_STORE", default_value = "./parley-keys/keys.slots")]
    pub from_key_store: String,
    /// The source's master key file; `PARLEY_MASTER_KEY`, when set, is the source's master key instead.
    #[arg(long, env = "PARLEY_MASTER_KEY_FILE", default_value = "./parley-master.key")]
    pub from_master_key_file: PathBuf,
    /// The destination's key store (default: the source's, which the destination then shares, so
    /// no key is copied).
    #[arg(long, env = "PARLEY_TO_KEY_STORE")]
    pub to_key_store: Option<String>,
    /// The destination's master key file (default: the source's master key). Made if missing when
    /// the destination's key store is a new slot file.
    #[arg(long, env = "PARLEY_TO_MASTER_KEY_FILE")]
    pub to_master_key_file: Option<PathBuf>,
    /// Rows (and keys) copied per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
}

impl MigrateConfig {
    /// The source's key store and master key file.
    pub fn from_keys(&self) -> KeyConfig {
        KeyConfig {
            key_store: self.from_key_store.clone(),
            master_key_file: self.from_master_key_file.clone(),
        }
    }

    /// The destination's key store and master key file, each the source's unless named.
    pub fn to_keys(&self) -> KeyConfig {
        KeyConfig {
            key_store: self
                .to_key_store
                .clone()
                .unwrap_or_else(|| self.from_key_store.clone()),
            master_key_file: self
                .to_master_key_file
                .clone()
                .unwrap_or_else(|| self.from_master_key_file.clone()),
        }
    }
}

/// `parley rotate-master-key` settings.
#[derive(Debug, Clone, Args)]
pub struct RotateConfig {
    /// The key store and its current master key (`--master-key-file` or `PARLEY_MASTER_KEY`).
    #[command(flatten)]
    pub keys: KeyConfig,
    /// File holding the master key to rotate to (32 bytes, base64 or hex). Keep it apart from
    /// the data and the key store, as the current one.
    #[arg(long)]
    pub new_master_key_file: PathBuf,
    /// Make the new master key file (mode 0600) if it does not exist, and print its path and id.
    #[arg(long)]
    pub generate: bool,
}

/// `parley encrypt-store` settings.
#[derive(Debug, Clone, Args)]
pub struct EncryptConfig {
    #[command(flatten)]
    pub store: StoreConfig,
    #[command(flatten)]
    pub blobs: BlobConfig,
    /// The key store (made, with a master key, if it does not exist yet) and its master key.
    #[command(flatten)]
    pub keys: KeyConfig,
    /// Conversations sealed per transaction (and per key store sync).
    #[arg(long, default_value_t = crate::upgrade::DEFAULT_BATCH, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
}

/// `parley webhooks …`
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List deliveries with their attempts and last error.
    List {
        #[command(flatten)]
        store: StoreConfig,
        /// Only this conversation's deliveries.
        #[arg(long)]
        conversation: Option<String>,
        /// Only deliveries in trouble: given up (`failed`), or waiting to retry after a failed attempt (`retrying`).
        #[arg(long)]
        failed: bool,
    },
    /// Queue a delivery again now, with a fresh retry window.
    Retry {
        #[command(flatten)]
        store: StoreConfig,
        delivery_id: String,
    },
    /// Make a signing secret for an account's webhooks and print it alone on stdout.
    Secret {
        #[command(flatten)]
        store: StoreConfig,
        #[arg(long)]
        account: String,
        /// Remove the secret instead: deliveries go unsigned.
        #[arg(long)]
        clear: bool,
    },
}

/// `parley conversations …`
#[derive(Debug, Subcommand)]
pub enum ConversationsCommand {
    /// Bring back a soft-deleted conversation before its retention window ends.
    Restore {
        #[command(flatten)]
        store: StoreConfig,
        conversation_id: String,
    },
}

/// Where parley keeps its records.
#[derive(Debug, Clone, Args)]
pub struct StoreConfig {
    /// Directory holding the embedded database (`parley.db`) and the local blob folder (`blobs/`).
    #[arg(long, env = "PARLEY_DATA_DIR", default_value = "./parley-data")]
    pub data_dir: PathBuf,

    /// `sqlite://PATH` or `postgres://…`; default: `parley.db` in the data directory.
    #[arg(long, env = "PARLEY_DATABASE_URL")]
    pub database_url: Option<String>,
}

/// Which database a [`StoreConfig`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreConfig {
    /// The database, from `--database-url` or the data directory.
    pub fn database(&self) -> anyhow::Result<Database> {
        match self.database_url.as_deref() {
            None => Ok(Database::Sqlite(self.data_dir.join("parley.db"))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Database::Postgres(url.to_owned()))
            }
            Some(url) => {
                let path = url
                    .strip_prefix("sqlite://")
                    .or_else(|| url.strip_prefix("sqlite:"))
                    .ok_or_else(|| {
                        anyhow::anyhow!("--database-url must start with sqlite:// or postgres://")
                    })?;
                let path = path.split('?').next().unwrap_or_default();
                anyhow::ensure!(!path.is_empty(), "--database-url sqlite:// needs a file path");
                Ok(Database::Sqlite(PathBuf::from(path)))
            }
        }
    }
}

/// Where conversations' data keys are kept, and the master key that wraps them.
///
/// The master key comes from `PARLEY_MASTER_KEY` (the key itself) or a file; the embedded key
/// store makes one on first start. See `docs/KEYS.md` for what to back up and what never to.
#[derive(Debug, Clone, Args)]
pub struct KeyConfig {
    /// The key store: a slot file path (embedded, one process) or `postgres://…` (a key database
    /// of its own, shared by every server; never the content database).
    #[arg(long, env = "PARLEY_KEY_STORE", default_value = "./parley-keys/keys.slots")]
    pub key_store: String,

    /// File holding the master key (32 bytes, base64 or hex). Made on the embedded key store's
    /// first start if missing. Keep it apart from the data and key store, and back it up apart.
    #[arg(long, env = "PARLEY_MASTER_KEY_FILE", default_value = "./parley-master.key")]
    pub master_key_file: PathBuf,
}

/// Which key store a [`KeyConfig`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStoreLocation {
    SlotFile(PathBuf),
    Postgres(String),
}

impl KeyConfig {
    /// Keys kept under `dir`: for tests and tools that make a fresh state.
    pub fn in_dir(dir: &std::path::Path) -> Self {
        Self {
            key_store: dir.join("keys.slots").display().to_string(),
            master_key_file: dir.join("master.key"),
        }
    }

    /// The key store, from `--key-store`.
    pub fn location(&self) -> KeyStoreLocation {
        let raw = self.key_store.as_str();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            KeyStoreLocation::Postgres(raw.to_owned())
        } else {
            KeyStoreLocation::SlotFile(PathBuf::from(raw.strip_prefix("file://").unwrap_or(raw)))
        }
    }
}

/// Where parley keeps blobs (recordings).
#[derive(Debug, Clone, Args)]
pub struct BlobConfig {
    /// A local folder (default: `blobs/` in the data directory) or `s3://BUCKET[/PREFIX]`.
    #[arg(long, env = "PARLEY_BLOB_URL")]
    pub blob_url: Option<String>,

    /// S3 endpoint, for S3-compatible servers (default: AWS; `AWS_ENDPOINT_URL` also works).
    #[arg(long, env = "PARLEY_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    #[arg(long, env = "PARLEY_S3_REGION")]
    pub s3_region: Option<String>,
}

/// `parley serve` settings.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub store: StoreConfig,

    #[command(flatten)]
    pub blobs: BlobConfig,

    #[command(flatten)]
    pub keys: KeyConfig,

    /// Address to listen on.
    #[arg(long, env = "PARLEY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Base of `conversation_url` links; defaults to `http://<listen address>`.
    #[arg(long, env = "PARLEY_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Default cap on an account's active conversations.
    #[arg(long, env = "PARLEY_MAX_CONCURRENT_CONVERSATIONS", default_value_t = 10)]
    pub max_concurrent_conversations: u32,

    /// Default time a soft-deleted conversation stays recoverable before it is purged.
    #[arg(long, env = "PARLEY_SOFT_DELETE_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub soft_delete_retention: Duration,

    /// Highest `max_call_duration` honoured, in seconds; larger requests are capped to it.
    #[arg(long, env = "PARLEY_MAX_CALL_DURATION_CAP", default_value_t = 3600)]
    pub max_call_duration_cap: u32,

    /// How long after create the simulated replica joins.
    #[arg(long, env = "PARLEY_REPLICA_JOIN_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub replica_join_delay: Duration,

    /// How long a created replica's simulated training takes: `started` until then, with
    /// `training_progress` growing linearly, then `completed`.
    #[arg(long, env = "PARLEY_REPLICA_TRAINING_TIME", default_value = "30s", value_parser = humantime::parse_duration)]
    pub replica_training_time: Duration,

    /// Longest simulated recording, in seconds (a call's recording is as long as the call, up to this).
    #[arg(long, env = "PARLEY_MAX_RECORDING_SECS", default_value_t = 300)]
    pub max_recording_secs: u32,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "PARLEY_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Origins whose browser pages may call the API: `*` for any, or a comma-separated list
    /// such as `https://app.example.com,http://localhost:5173`.
    #[arg(long, env = "PARLEY_CORS_ALLOWED_ORIGINS", default_value = "*", value_parser = AllowedOrigins::parse)]
    pub cors_allowed_origins: AllowedOrigins,

    /// Run background jobs (purges, call finalisation, joins, retention, document fetches) in this process.
    #[arg(long, env = "PARLEY_RUN_JOBS", default_value_t = true, action = ArgAction::Set)]
    pub run_jobs: bool,

    /// How long a claimed job or delivery is held before another process may take it over.
    #[arg(long, env = "PARLEY_JOB_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub job_lease: Duration,

    /// How often the job runner looks for due work when nothing wakes it.
    #[arg(long, env = "PARLEY_JOB_POLL_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub job_poll_interval: Duration,

    /// Per-attempt timeout of a webhook delivery.
    #[arg(long, env = "PARLEY_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,

    /// Delay before the first webhook retry; each later one doubles, with jitter, up to an hour.
    #[arg(long, env = "PARLEY_WEBHOOK_RETRY_BASE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub webhook_retry_base: Duration,

    /// How long a failing webhook keeps being retried before it is given up.
    #[arg(long, env = "PARLEY_WEBHOOK_RETRY_FOR", default_value = "24h", value_parser = humantime::parse_duration)]
    pub webhook_retry_for: Duration,

    /// Webhook attempts in flight at once, across all receivers.
    #[arg(long, env = "PARLEY_WEBHOOK_MAX_IN_FLIGHT", default_value_t = 32)]
    pub webhook_max_in_flight: usize,

    /// Refuse callback URLs on loopback, private and link-local addresses (at create and at each delivery).
    #[arg(long, env = "PARLEY_WEBHOOK_DENY_PRIVATE", default_value_t = false, action = ArgAction::Set)]
    pub webhook_deny_private: bool,

    /// Replica ids that fail to join, to exercise `bot_could_not_join_meeting_it_was_probably_ended`.
    #[arg(long, env = "PARLEY_UNJOINABLE_REPLICAS", value_delimiter = ',')]
    pub unjoinable_replicas: Vec<String>,

    /// Largest document parley fetches, in bytes; a larger one ends in `error` (`file_size_too_large`).
    #[arg(long, env = "PARLEY_DOCUMENT_MAX_BYTES", default_value_t = 50 << 20)]
    pub document_max_bytes: u64,

    /// How long one fetch of a document's URL may take; keep it below `--job-lease`.
    #[arg(long, env = "PARLEY_DOCUMENT_FETCH_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub document_fetch_timeout: Duration,

    /// Fetch documents from loopback, private and link-local addresses too. Off by default: a
    /// fetched document is readable back through the API, so a key holder could otherwise read
    /// the server's own network (a cloud metadata endpoint, say), which the hosted API never reaches.
    #[arg(long, env = "PARLEY_DOCUMENT_ALLOW_PRIVATE", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub document_allow_private: bool,

    /// Accept any well-formed persona or replica id (`p`/`r` + 6 to 32 lowercase letters and
    /// digits), as the account's own, made on first use: for apps that pin ids from the hosted service.
    #[arg(long, env = "PARLEY_ACCEPT_UNKNOWN_IDS", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub accept_unknown_ids: bool,

    /// A JSON file of personas and replicas, with their ids, that exist for every account (see
    /// docs/API.md, Personas and PALs).
    #[arg(long, env = "PARLEY_SEED_FILE")]
    pub seed_file: Option<PathBuf>,

    /// Bytes kept in reserve beside an embedded database, given up when the disk fills so deletes
    /// and ends still work; 0 turns the reserve off.
    #[arg(long, env = "PARLEY_DISK_RESERVE_BYTES", default_value_t = 64 << 20)]
    pub disk_reserve_bytes: u64,

    /// Log format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, env = "PARLEY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Log filter, in `tracing` env-filter syntax.
    #[arg(long, env = "PARLEY_LOG", default_value = "info")]
    pub log: String,
}

impl ServeConfig {
    /// Defaults for tests: port 0, the given data dir and key folder, an immediate replica join,
    /// replicas trained at once, fast polling.
    pub fn for_tests(data_dir: PathBuf, key_dir: &std::path::Path) -> Self {
        Self {
            keys: KeyConfig::in_dir(key_dir),
            store: StoreConfig {
                data_dir,
                database_url: None,
            },
            blobs: BlobConfig {
                blob_url: None,
                s3_endpoint: None,
                s3_region: None,
            },
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            max_concurrent_conversations: 10,
            soft_delete_retention: Duration::from_secs(30 * 24 * 3600),
            max_call_duration_cap: 3600,
            replica_join_delay: Duration::ZERO,
            replica_training_time: Duration::ZERO,
            max_recording_secs: 300,
            max_body_bytes: 1 << 20,
            cors_allowed_origins: AllowedOrigins::Any,
            run_jobs: true,
            job_lease: Duration::from_secs(60),
            job_poll_interval: Duration::from_millis(50),
            webhook_timeout: Duration::from_secs(2),
            webhook_retry_base: Duration::from_millis(50),
            webhook_retry_for: Duration::from_secs(24 * 3600),
            webhook_max_in_flight: 32,
            webhook_deny_private: false,
            unjoinable_replicas: Vec::new(),
            document_max_bytes: 50 << 20,
            document_fetch_timeout: Duration::from_secs(10),
            // Tests serve their documents on 127.0.0.1.
            document_allow_private: true,
            accept_unknown_ids: false,
            seed_file: None,
            // Small, so every test server keeps one without writing much.
            disk_reserve_bytes: 1 << 20,
            log_format: "text".into(),
            log: "warn".into(),
        }
    }
}
