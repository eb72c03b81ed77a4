//! Starting and stopping a server: open the store, bootstrap the first key, serve, run jobs.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use parley_blobs::Blobs;
use parley_domain::{Limits, Timestamp};
use parley_keys::{KeyError, KeyStore, MasterKey, PgKeyStore, SlotFileKeyStore};
use parley_store::ConversationStore;
use parley_store_postgres::PostgresStore;
use parley_store_sqlite::SqliteStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{BlobConfig, Database, KeyConfig, KeyStoreLocation, ServeConfig, StoreConfig};
use crate::disk::Disk;
use crate::document::DocumentSettings;
use crate::sealed::SealedStore;
use crate::state::{AppState, Settings};
use crate::upgrade::{self, SealInPlace};
use crate::webhook::{self, WebhookSettings};
use crate::{http, jobs, keys};

/// The account made on first start.
pub const DEFAULT_ACCOUNT: &str = "default";

/// A running server.
pub struct Server {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The key made on first start for the `default` account, if this start made one.
    pub initial_key: Option<String>,
    /// The master key file made on first start, if this start made one.
    pub new_master_key: Option<std::path::PathBuf>,
    state: AppState,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    workers: Vec<JoinHandle<()>>,
    /// Held while serving an embedded database: one server per database file.
    _lock: Option<std::fs::File>,
}

/// Opens (creating and migrating if needed) the database a store config names.
pub async fn open_store(config: &StoreConfig) -> anyhow::Result<Arc<dyn ConversationStore>> {
    match config.database()? {
        Database::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("opening database {}", path.display()))?;
            Ok(Arc::new(store))
        }
        Database::Postgres(url) => {
            let store = PostgresStore::connect(&url)
                .await
                .context("connecting to PostgreSQL")?;
            Ok(Arc::new(store))
        }
    }
}

/// The variable that may hold the master key itself, instead of `--master-key-file`.
pub const MASTER_KEY_VAR: &str = "PARLEY_MASTER_KEY";

/// The master key: `PARLEY_MASTER_KEY` if set, else the master key file; `None` when neither
/// exists.
pub fn load_master_key(config: &KeyConfig) -> anyhow::Result<Option<MasterKey>> {
    if let Ok(raw) = std::env::var(MASTER_KEY_VAR) {
        let key = MasterKey::parse(&raw).map_err(|e| anyhow::anyhow!("{MASTER_KEY_VAR}: {e}"))?;
        return Ok(Some(key));
    }
    if config.master_key_file.exists() {
        return Ok(Some(MasterKey::load_file(&config.master_key_file)?));
    }
    Ok(None)
}

/// An opened key store, and the master key file this start made, if it made one.
pub struct OpenedKeys {
    pub store: Arc<dyn KeyStore>,
    pub new_master_key: Option<std::path::PathBuf>,
}

/// Opens the key store a key config names, creating the embedded one (and its master key) on
/// first start.
pub async fn open_keys(config: &KeyConfig) -> anyhow::Result<OpenedKeys> {
    let master = load_master_key(config)?;
    match config.location() {
        KeyStoreLocation::SlotFile(path) if path.exists() => {
            let master = master.with_context(|| {
                format!(
                    "the key store {} needs its master key: set {MASTER_KEY_VAR} or --master-key-file \
                     (now {}, which does not exist)",
                    path.display(),
                    config.master_key_file.display()
                )
            })?;
            Ok(OpenedKeys {
                store: open_existing_keys(config, master).await?,
                new_master_key: None,
            })
        }
        KeyStoreLocation::SlotFile(path) => {
            let mut new_master_key = None;
            let master = match master {
                Some(master) => master,
                None => {
                    let master = generate_master_key(&config.master_key_file)?;
                    tracing::warn!(
                        path = %config.master_key_file.display(),
                        master_key.id = %master.id(),
                        "made a new master key: back it up apart from the data and the key store; \
                         losing it loses every conversation (docs/KEYS.md)"
                    );
                    new_master_key = Some(config.master_key_file.clone());
                    master
                }
            };
            let store = create_slot_file(&path, master).await?;
            tracing::info!(path = %path.display(), "created the key store");
            Ok(OpenedKeys {
                store: Arc::new(store),
                new_master_key,
            })
        }
        KeyStoreLocation::Postgres(_) => {
            let master = master.with_context(|| {
                format!(
                    "a shared key store needs the master key from the operator: set {MASTER_KEY_VAR} \
                     or --master-key-file (now {}, which does not exist)",
                    config.master_key_file.display()
                )
            })?;
            Ok(OpenedKeys {
                store: open_existing_keys(config, master).await?,
                new_master_key: None,
            })
        }
    }
}

/// A key store that could not be opened, with what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct OpenKeysError {
    context: String,
    /// The key store's own error, which names the master key case (rotated out, unfinished
    /// rotation) for a caller that can act on it.
    #[source]
    pub source: KeyError,
}

/// Opens the key store a key config names with `master`, never creating it.
pub async fn open_existing_keys(
    config: &KeyConfig,
    master: MasterKey,
) -> Result<Arc<dyn KeyStore>, OpenKeysError> {
    match config.location() {
        KeyStoreLocation::SlotFile(path) => match SlotFileKeyStore::open(&path, master).await {
            Ok(store) => Ok(Arc::new(store)),
            Err(source) => {
                let hint = if matches!(source, KeyError::Locked(_)) {
                    " (stop the server that uses it first)"
                } else {
                    ""
                };
                Err(OpenKeysError {
                    context: format!("opening the key store {}{hint}", path.display()),
                    source,
                })
            }
        },
        KeyStoreLocation::Postgres(url) => match PgKeyStore::connect(&url, master).await {
            Ok(store) => Ok(Arc::new(store)),
            Err(source) => Err(OpenKeysError {
                context: "connecting to the key database".into(),
                source,
            }),
        },
    }
}

/// Writes a fresh master key to a new file at `path` (and its folder, if missing).
pub(crate) fn generate_master_key(path: &std::path::Path) -> anyhow::Result<MasterKey> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(MasterKey::generate_file(path)?)
}

/// Creates a new, empty slot file at `path` (and its folder, if missing).
pub(crate) async fn create_slot_file(
    path: &std::path::Path,
    master: MasterKey,
) -> anyhow::Result<SlotFileKeyStore> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    SlotFileKeyStore::create(path, master)
        .await
        .with_context(|| format!("creating the key store {}", path.display()))
}

/// Opens the blob store a blob config names (by default `blobs/` in the store's data directory).
pub fn open_blobs(blobs: &BlobConfig, store: &StoreConfig) -> anyhow::Result<Blobs> {
    let default = store.data_dir.join("blobs");
    open_blob_url(
        blobs.blob_url.as_deref(),
        &default,
        blobs.s3_endpoint.as_deref(),
        blobs.s3_region.as_deref(),
    )
}

/// Opens blobs at a folder or `s3://` URL, or in `default` when none is given.
pub fn open_blob_url(
    url: Option<&str>,
    default: &std::path::Path,
    s3_endpoint: Option<&str>,
    s3_region: Option<&str>,
) -> anyhow::Result<Blobs> {
    match url {
        Some(url) if url.starts_with("s3://") => {
            Blobs::s3(url, s3_endpoint, s3_region).context("opening the S3 bucket")
        }
        Some(url) => {
            let path = url.strip_prefix("file://").unwrap_or(url);
            Blobs::local(std::path::Path::new(path)).context("opening the blob folder")
        }
        None => Blobs::local(default).context("opening the blob folder"),
    }
}

/// Creates a key for `account` (creating the account if missing); returns `(key_id, key)`.
pub async fn create_key(store: &dyn ConversationStore, account: &str) -> anyhow::Result<(String, String)> {
    let now = Timestamp::now();
    store.ensure_account(account, now).await?;
    let (key_id, key) = keys::generate();
    store.insert_key(&key_id, account, &keys::hash(&key), now).await?;
    Ok((key_id, key))
}

/// Opens everything, binds the listener and starts serving and running jobs.
pub async fn start(config: ServeConfig) -> anyhow::Result<Server> {
    anyhow::ensure!(
        config.job_lease > config.webhook_timeout,
        "--job-lease ({:?}) must be longer than --webhook-timeout ({:?})",
        config.job_lease,
        config.webhook_timeout
    );
    // A bad seed file stops the start with the reason, before anything is opened.
    let seed = match &config.seed_file {
        Some(path) => crate::persona::Seed::load(path, config.accept_unknown_ids)?,
        None => crate::persona::Seed::default(),
    };
    let (lock, disk, compaction_marker) = match config.store.database()? {
        Database::Sqlite(path) => {
            let lock = lock_database(&path)?;
            // Beside the database, so it frees space where SQLite needs it.
            let disk = Disk::with_reserve(path.with_extension("reserve"), config.disk_reserve_bytes).await?;
            (Some(lock), disk, Some(upgrade::compaction_marker(&path)))
        }
        // A shared database has many servers; their leases expire on their own. Its disk is the
        // database server's, where a file of ours would hold nothing back.
        Database::Postgres(_) => (None, Disk::without_reserve(), None),
    };
    let store = with_room(&disk, || open_store(&config.store)).await?;
    let keys = open_keys(&config.keys).await?;
    let blobs = open_blobs(&config.blobs, &config.store)?;
    // Before anything reads or writes content: what an older parley stored in plaintext is
    // sealed first (a store already sealed costs one look at an empty index).
    upgrade::seal_in_place(SealInPlace {
        store: store.as_ref(),
        keys: keys.store.as_ref(),
        blobs: &blobs,
        batch_size: upgrade::DEFAULT_BATCH,
        compaction_marker,
        always_compact: false,
    })
    .await
    .context("sealing the content an older parley stored in plaintext")?;
    let store = Arc::new(SealedStore::new(store, keys.store));
    if lock.is_some() {
        // We hold the database's lock, so any lease in the job table belongs to a dead process.
        let released = with_room(&disk, || async { Ok(store.release_all_leases().await?) }).await?;
        if released > 0 {
            tracing::info!(job.count = released, "resuming jobs left by a stopped process");
        }
    }
    // Only the process that creates the first account makes its key, even when several servers
    // start at once on an empty shared store.
    let initial_key =
        if !store.has_accounts().await? && store.ensure_account(DEFAULT_ACCOUNT, Timestamp::now()).await? {
            Some(create_key(store.as_ref(), DEFAULT_ACCOUNT).await?.1)
        } else {
            None
        };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let public_url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"))
        .trim_end_matches('/')
        .to_owned();
    let settings = Settings {
        public_url,
        max_concurrent: config.max_concurrent_conversations,
        retention: config.soft_delete_retention,
        limits: Limits {
            max_call_duration_cap: config.max_call_duration_cap,
        },
        replica_join_delay: config.replica_join_delay,
        replica_training_time: config.replica_training_time,
        max_recording_secs: config.max_recording_secs,
        max_body_bytes: config.max_body_bytes,
        cors: config.cors_allowed_origins.clone(),
        run_jobs: config.run_jobs,
        job_lease: config.job_lease,
        job_poll_interval: config.job_poll_interval,
        webhooks: WebhookSettings {
            timeout: config.webhook_timeout,
            retry_base: config.webhook_retry_base,
            retry_for: config.webhook_retry_for,
            max_in_flight: config.webhook_max_in_flight,
            deny_private: config.webhook_deny_private,
        },
        unjoinable_replicas: config.unjoinable_replicas.clone(),
        documents: DocumentSettings {
            max_bytes: config.document_max_bytes,
            fetch_timeout: config.document_fetch_timeout,
            allow_private: config.document_allow_private,
        },
        personas: crate::persona::PersonaSettings {
            accept_unknown_ids: config.accept_unknown_ids,
            seed: Arc::new(seed),
        },
    };
    let state = AppState::new(store, blobs, settings, disk);
    let (stop, stopped) = watch::channel(false);
    let mut workers = Vec::new();
    if config.run_jobs {
        workers.push(tokio::spawn(jobs::run(state.clone(), stopped.clone())));
        let client = webhook::client().context("building the webhook HTTP client")?;
        workers.push(tokio::spawn(webhook::run(state.clone(), client, stopped.clone())));
    }
    let app = http::router(state.clone());
    let mut stopped_http = stopped;
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped_http.wait_for(|s| *s).await;
            })
            .await
    });
    Ok(Server {
        addr,
        initial_key,
        new_master_key: keys.new_master_key,
        state,
        stop,
        http,
        workers,
        _lock: lock,
    })
}

/// Runs a startup step that writes; if it fails for lack of space, gives up the reserve and runs
/// it once more.
///
/// After a crash, opening SQLite checkpoints what the WAL still holds, which may need room on a
/// disk that filled up meanwhile. The server then starts with the disk marked full.
async fn with_room<T, F, Fut>(disk: &Disk, mut step: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    match step().await {
        Err(e) if crate::disk::is_disk_full(e.as_ref()) => {
            disk.mark_full();
            step().await
        }
        done => done,
    }
}

/// Takes an exclusive lock beside an embedded database, released when the process exits.
pub(crate) fn lock_database(db: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let path = db.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another `parley serve` is using {}; one server per embedded database",
            db.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

impl Server {
    /// Stops accepting requests, lets in-flight requests and jobs finish, then closes the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.http
            .await
            .context("joining the HTTP task")?
            .context("serving HTTP")?;
        for worker in self.workers {
            worker.await.context("joining a background runner")?;
        }
        self.state.store.close().await;
        Ok(())
    }
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM: how an operator or a service manager asks parley to stop.
pub async fn stop_signal() {
    match stop_requested() {
        Ok(stop) => stop.await,
        // Without signal handlers the default actions still stop the process.
        Err(_) => std::future::pending().await,
    }
}

/// Takes over Ctrl-C (SIGINT) and SIGTERM at once, and resolves at the first of them.
///
/// The handlers are in place when this returns, so a signal that comes before the future is
/// first polled is not lost (nor does it kill the process half way through a step).
pub fn stop_requested() -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
