//! Test harness: in-process servers, `parley` subprocesses, and readers of the on-disk state.

pub mod content_copy;
pub mod keys;
pub mod plaintext;
pub mod verify;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::sync::Arc;

use parley_blobs::Blobs;
use parley_server::{ServeConfig, Server};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use tempfile::TempDir;

/// Where a test's servers keep their state: SQLite and a blob folder in a fresh directory, or
/// (with `PARLEY_TEST_BACKEND=postgres`) a fresh PostgreSQL database and a fresh S3 prefix.
#[derive(Clone)]
pub struct Backing {
    dir: Arc<TempDir>,
    /// The master key file and, unless `key_store` is set, the slot file: apart from the data
    /// directory, as the README asks.
    keys: Arc<TempDir>,
    /// A key database of its own (`postgres://…`), shared by every server on this state.
    key_store: Option<String>,
    /// The master key file, when not `master.key` in the key folder (after a rotation).
    master_key_file: Option<PathBuf>,
    database_url: Option<String>,
    blob_url: Option<String>,
    s3_endpoint: Option<String>,
}

/// A variable that `scripts/test` sets; a clear failure, never a silent skip, without it.
fn need(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/test, which starts PostgreSQL and an S3 server (see README)")
    })
}

fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A fresh folder for a state's keys.
fn key_dir() -> Arc<TempDir> {
    Arc::new(tempfile::tempdir().expect("temp dir"))
}

/// A fresh database `PREFIX_<random>` on the test PostgreSQL server; its URL.
async fn create_database(admin_url: &str, prefix: &str) -> String {
    let name = format!("{prefix}_{}", random_suffix());
    let admin = sqlx::PgPool::connect(admin_url)
        .await
        .expect("the test PostgreSQL answers");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let mut url = url::Url::parse(admin_url).unwrap();
    url.set_path(&format!("/{name}"));
    url.to_string()
}

impl Backing {
    /// Fresh state for one test, on the run's backend.
    pub async fn fresh() -> Self {
        match std::env::var("PARLEY_TEST_BACKEND").as_deref() {
            Ok("postgres") => Self::postgres().await,
            Ok("sqlite") | Err(_) => Self::sqlite(),
            Ok(other) => panic!("unknown PARLEY_TEST_BACKEND {other:?}"),
        }
    }

    /// A fresh PostgreSQL database and a fresh S3 prefix on the servers `scripts/test` starts.
    pub async fn postgres() -> Self {
        let admin_url = need("PARLEY_TEST_POSTGRES_URL");
        let bucket = need("PARLEY_TEST_S3_BUCKET");
        let endpoint = need("PARLEY_TEST_S3_ENDPOINT");
        let keys = key_dir();
        parley_keys::MasterKey::generate_file(&keys.path().join("master.key")).unwrap();
        Self {
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            keys,
            key_store: Some(create_database(&admin_url, "parley_keys").await),
            master_key_file: None,
            database_url: Some(create_database(&admin_url, "parley_test").await),
            blob_url: Some(format!("s3://{bucket}/test-{}", random_suffix())),
            s3_endpoint: Some(endpoint),
        }
    }

    /// Embedded state, whatever the run's backend.
    pub fn sqlite() -> Self {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self {
            dir,
            keys: key_dir(),
            key_store: None,
            master_key_file: None,
            database_url: None,
            blob_url: None,
            s3_endpoint: None,
        }
    }

    /// Embedded state in a fresh directory under `parent` (a small filesystem of the test's own).
    #[cfg_attr(
        not(feature = "e2e"),
        expect(dead_code, reason = "only the e2e tests choose the filesystem")
    )]
    pub fn sqlite_in(parent: &Path) -> Self {
        let dir = Arc::new(tempfile::tempdir_in(parent).expect("temp dir"));
        Self {
            dir,
            keys: key_dir(),
            key_store: None,
            master_key_file: None,
            database_url: None,
            blob_url: None,
            s3_endpoint: None,
        }
    }

    /// A given PostgreSQL database, with blobs in a local folder.
    #[cfg_attr(
        not(feature = "e2e"),
        expect(dead_code, reason = "only the e2e tests bring a database")
    )]
    pub fn postgres_with_local_blobs(database_url: String) -> Self {
        Self {
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            keys: key_dir(),
            key_store: None,
            master_key_file: None,
            database_url: Some(database_url),
            blob_url: None,
            s3_endpoint: None,
        }
    }

    /// The flags that name this state (its key store and master key file too) to `parley
    /// migrate-store` on one side (`from` or `to`).
    pub fn migrate_args(&self, side: &str) -> Vec<String> {
        let db = match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir().join("parley.db").display()),
        };
        let keys = self.config().keys;
        let mut args = vec![
            format!("--{side}"),
            db,
            format!("--{side}-key-store"),
            keys.key_store,
            format!("--{side}-master-key-file"),
            keys.master_key_file.display().to_string(),
        ];
        if let Some(url) = &self.blob_url {
            args.extend([format!("--{side}-blob-url"), url.clone()]);
        }
        if let Some(endpoint) = &self.s3_endpoint {
            args.extend(["--s3-endpoint".to_owned(), endpoint.clone()]);
        }
        args
    }

    /// State on given servers: a PostgreSQL URL and an S3 bucket URL with its endpoint.
    #[cfg_attr(
        not(feature = "e2e"),
        expect(dead_code, reason = "only the outage test starts servers")
    )]
    pub fn shared(database_url: String, blob_url: String, s3_endpoint: String) -> Self {
        Self {
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            keys: key_dir(),
            key_store: None,
            master_key_file: None,
            database_url: Some(database_url),
            blob_url: Some(blob_url),
            s3_endpoint: Some(s3_endpoint),
        }
    }

    /// True for the embedded default, whose files the tests can read byte by byte.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.is_none()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A server config on this state.
    pub fn config(&self) -> ServeConfig {
        let mut config = ServeConfig::for_tests(self.data_dir().to_owned(), self.keys.path());
        if let Some(url) = &self.key_store {
            config.keys.key_store = url.clone();
        }
        if let Some(path) = &self.master_key_file {
            config.keys.master_key_file = path.clone();
        }
        config.store.database_url = self.database_url.clone();
        config.blobs.blob_url = self.blob_url.clone();
        config.blobs.s3_endpoint = self.s3_endpoint.clone();
        config
    }

    /// The flags that point a `parley` command at this state.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["--data-dir".to_owned(), self.data_dir().display().to_string()];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".to_owned(), url.clone()]);
        }
        args
    }

    /// The folder of this state's master key (and slot file, for the embedded key store).
    pub fn key_dir(&self) -> &Path {
        self.keys.path()
    }

    /// Points this state's servers and commands at another master key file (after a rotation).
    pub fn use_master_key_file(&mut self, path: PathBuf) {
        self.master_key_file = Some(path);
    }

    /// The flags that name this state's key store and master key.
    pub fn key_args(&self) -> Vec<String> {
        let config = self.config();
        vec![
            "--key-store".to_owned(),
            config.keys.key_store,
            "--master-key-file".to_owned(),
            config.keys.master_key_file.display().to_string(),
        ]
    }

    /// The flags that point `parley serve` at this state.
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = self.args();
        args.extend(self.key_args());
        if let Some(url) = &self.blob_url {
            args.extend(["--blob-url".to_owned(), url.clone()]);
        }
        if let Some(endpoint) = &self.s3_endpoint {
            args.extend(["--s3-endpoint".to_owned(), endpoint.clone()]);
        }
        args
    }

    /// A connection to the database, to check rows directly.
    pub async fn db(&self) -> TestDb {
        self.connect(true).await
    }

    /// A connection that may write, to put the state back as an older parley left it.
    pub async fn db_writable(&self) -> TestDb {
        self.connect(false).await
    }

    async fn connect(&self, read_only: bool) -> TestDb {
        sqlx::any::install_default_drivers();
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => {
                let mode = if read_only { "?mode=ro" } else { "" };
                format!("sqlite://{}{mode}", self.data_dir().join("parley.db").display())
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        TestDb {
            pool,
            postgres: !self.is_sqlite(),
        }
    }

    /// The blob store, to check objects directly.
    pub fn blobs(&self) -> Blobs {
        match &self.blob_url {
            Some(url) => Blobs::s3(url, self.s3_endpoint.as_deref(), None).unwrap(),
            None => Blobs::local(&self.data_dir().join("blobs")).unwrap(),
        }
    }

    /// Keys of every blob of a conversation.
    pub async fn blob_keys(&self, id: &str) -> Vec<String> {
        let id = parley_domain::ConversationId::parse(id).unwrap();
        self.blobs().list_conversation(&id).await.unwrap()
    }

    /// Whether the conversation's recording is in the blob store.
    pub async fn has_recording(&self, id: &str) -> bool {
        self.blob_keys(id)
            .await
            .iter()
            .any(|k| k.ends_with("/assets/recording.wav"))
    }

    /// Where content could hide: every file of an embedded store, or every row of a shared one.
    pub async fn holds(&self, needle: &str) -> bool {
        if self.is_sqlite() {
            !files_containing(self.data_dir(), needle.as_bytes()).is_empty()
        } else {
            self.db().await.rows_mentioning(needle).await > 0
        }
    }

    /// Waits until no background job is due (retention purges weeks away do not count).
    pub async fn wait_for_jobs(&self) {
        let db = self.db().await;
        eventually("the job queue drains", || async { db.due_jobs().await == 0 }).await;
        db.close().await;
    }

    /// Runs `parley ARGS…` against this state; panics unless it succeeds; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = parley().args(args).args(self.args()).output().unwrap();
        assert!(
            out.status.success(),
            "parley {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A database connection for checks, on either backend (`?` placeholders work on both).
pub struct TestDb {
    pool: AnyPool,
    postgres: bool,
}

impl TestDb {
    fn sql(&self, sql: &str) -> String {
        if !self.postgres {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        out
    }

    /// One row, with string binds.
    pub async fn row(&self, sql: &str, binds: &[&str]) -> AnyRow {
        let sql = self.sql(sql);
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(*b);
        }
        q.fetch_one(&self.pool).await.unwrap()
    }

    /// Every row, with string binds.
    pub async fn rows(&self, sql: &str, binds: &[&str]) -> Vec<AnyRow> {
        let sql = self.sql(sql);
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(*b);
        }
        q.fetch_all(&self.pool).await.unwrap()
    }

    /// A statement with text binds (`None` for NULL); the rows it changed.
    pub async fn execute(&self, sql: &str, binds: &[Option<&str>]) -> u64 {
        let sql = self.sql(sql);
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(*b);
        }
        q.execute(&self.pool).await.unwrap().rows_affected()
    }

    /// `SELECT COUNT(*) …` (or any integer) with one bound id.
    pub async fn count(&self, sql: &str, id: &str) -> i64 {
        self.row(sql, &[id]).await.get(0)
    }

    /// An integer from a query without parameters.
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.row(sql, &[]).await.get(0)
    }

    /// A text value with one bound id.
    pub async fn text(&self, sql: &str, id: &str) -> String {
        self.row(sql, &[id]).await.get(0)
    }

    /// Jobs whose time has come, finished or not.
    pub async fn due_jobs(&self) -> i64 {
        let sql = self.sql("SELECT COUNT(*) FROM job WHERE run_at <= ?");
        let now = chrono::Utc::now().timestamp_micros();
        sqlx::query(&sql)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .unwrap()
            .get(0)
    }

    /// Row counts of one conversation: (conversation, event, asset).
    pub async fn rows_of(&self, id: &str) -> (i64, i64, i64) {
        (
            self.count("SELECT COUNT(*) FROM conversation WHERE conversation_id = ?", id)
                .await,
            self.count("SELECT COUNT(*) FROM event WHERE conversation_id = ?", id)
                .await,
            self.count("SELECT COUNT(*) FROM asset WHERE conversation_id = ?", id)
                .await,
        )
    }

    /// Rows, in any table, whose text mentions `needle` (PostgreSQL only: a row cast to text).
    pub async fn rows_mentioning(&self, needle: &str) -> i64 {
        assert!(self.postgres, "on SQLite, read the files instead");
        let mut total = 0;
        for table in CONTENT_TABLES {
            let sql = format!("SELECT COUNT(*) FROM {table} t WHERE t::text LIKE '%' || $1 || '%'");
            let n: i64 = sqlx::query(&sql)
                .bind(needle)
                .fetch_one(&self.pool)
                .await
                .unwrap()
                .get(0);
            total += n;
        }
        total
    }

    /// The text of every row, in any table, that mentions `needle` (PostgreSQL only).
    pub async fn rows_text_mentioning(&self, needle: &str) -> Vec<String> {
        assert!(self.postgres, "on SQLite, read the files instead");
        let mut texts = Vec::new();
        for table in CONTENT_TABLES {
            let sql = format!("SELECT t::text FROM {table} t WHERE t::text LIKE '%' || $1 || '%'");
            for row in sqlx::query(&sql)
                .bind(needle)
                .fetch_all(&self.pool)
                .await
                .unwrap()
            {
                texts.push(row.get::<String, _>(0));
            }
        }
        texts
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Every table of the content store.
const CONTENT_TABLES: [&str; 11] = [
    "account",
    "api_key",
    "conversation",
    "event",
    "asset",
    "participant",
    "delivery",
    "erasure_receipt",
    "job",
    "resource",
    "resource_purge",
];

/// A server running in this test process.
pub struct TestApp {
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
    pub backing: Backing,
    server: Option<Server>,
}

impl TestApp {
    /// A server with test defaults on a fresh data directory.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server with adjusted settings on a fresh data directory.
    pub async fn spawn_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        Self::spawn_on(Backing::fresh().await, adjust).await
    }

    /// A server on given state.
    pub async fn spawn_on(backing: Backing, adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let mut config = backing.config();
        adjust(&mut config);
        let server = parley_server::start(config).await.expect("server starts");
        // State that already has accounts gets no first key: the test brings its own.
        let key = server.initial_key.clone().unwrap_or_default();
        Self {
            base: format!("http://{}", server.addr),
            key,
            client: reqwest::Client::new(),
            backing,
            server: Some(server),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.backing.data_dir()
    }

    /// A request with this app's key.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.req_as(&self.key, method, path)
    }

    /// A request with another key.
    pub fn req_as(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", key)
    }

    /// Creates a conversation and returns its id.
    pub async fn create(&self, body: Value) -> String {
        self.create_as(&self.key, body).await
    }

    pub async fn create_as(&self, key: &str, body: Value) -> String {
        let res = self
            .req_as(key, Method::POST, "/v2/conversations")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let json: Value = res.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "create failed: {json}");
        json["conversation_id"].as_str().unwrap().to_owned()
    }

    /// Creates a conversation, waits for the replica to join, and ends it (so its assets exist).
    pub async fn ended(&self, body: Value) -> String {
        let id = self.create(body).await;
        self.wait_joined(&id).await;
        let res = self
            .req(Method::POST, &format!("/v2/conversations/{id}/end"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        id
    }

    /// Waits until the simulated replica has joined.
    pub async fn wait_joined(&self, id: &str) {
        let db = self.db().await;
        eventually("the replica joins", || async {
            db.count("SELECT COUNT(*) FROM event WHERE conversation_id = ? AND event_type = 'system.replica_joined'", id)
                .await
                == 1
        })
        .await;
        db.close().await;
    }

    /// GET/POST/DELETE returning status and JSON body (Null when empty).
    pub async fn call(&self, method: Method, path: &str) -> (StatusCode, Value) {
        send(self.req(method, path)).await
    }

    pub async fn call_as(&self, key: &str, method: Method, path: &str) -> (StatusCode, Value) {
        send(self.req_as(key, method, path)).await
    }

    /// A connection to the database, to check rows directly.
    pub async fn db(&self) -> TestDb {
        self.backing.db().await
    }

    /// Waits until no background job is due (retention purges weeks away do not count).
    pub async fn wait_for_jobs(&self) {
        self.backing.wait_for_jobs().await;
    }

    /// Makes a key for another account with the `parley keys create` command.
    pub fn new_key(&self, account: &str) -> String {
        cli_new_key(&self.backing, account)
    }

    /// Stops the server gracefully; the state stays for inspection.
    pub async fn stop(mut self) -> Backing {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        self.backing
    }
}

/// Sends a request and reads its status and JSON body.
pub async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let res = req.send().await.expect("request is answered");
    let status = res.status();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    if let Some(ct) = content_type.filter(|ct| !ct.starts_with("application/json")) {
        let len = res.bytes().await.unwrap().len();
        return (status, Value::String(format!("<{len} bytes of {ct}>")));
    }
    let text = res.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text:?}"))
    };
    (status, json)
}

/// Creates a conversation on a server given by its base URL (a `parley` subprocess); returns its id.
pub async fn create_on(client: &reqwest::Client, base: &str, key: &str, body: Value) -> String {
    let res = client
        .post(format!("{base}/v2/conversations"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The contract's answer for any unknown, deleted or foreign id.
pub fn invalid_id() -> Value {
    json!({ "error": "Invalid conversation_id" })
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    /// A file's bytes, read by a child process. Closing a descriptor of `parley.db` in this
    /// process would drop every POSIX lock this process holds on it, those of a server running
    /// in-process included; a `parley` command run next would then take itself for the last user
    /// and remove the live server's WAL.
    fn read_elsewhere(path: &Path) -> Option<Vec<u8>> {
        let out = Command::new("cat").arg(path).output().ok()?;
        out.status.success().then_some(out.stdout)
    }

    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(bytes) = read_elsewhere(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path);
            }
        }
    }
    found
}

/// Polls `check` until it holds, failing after 15 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `parley` binary.
pub fn parley() -> Command {
    Command::new(env!("CARGO_BIN_EXE_parley"))
}

/// `parley keys create --account NAME`: the key, alone on stdout.
pub fn cli_new_key(backing: &Backing, account: &str) -> String {
    let stdout = backing.cli(&["keys", "create", "--account", account]);
    let key = stdout.trim_end_matches('\n');
    assert!(
        !key.contains('\n') && key.len() == 32,
        "stdout holds only the key: {stdout:?}"
    );
    key.to_owned()
}

/// A `parley serve` subprocess.
pub struct Proc {
    pub child: Child,
    pub base: String,
    /// The first key, when this start created it.
    pub key: Option<String>,
    /// Its stderr after startup, line by line.
    pub stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `parley serve` on `backing` (port 0) with extra flags, and waits until it listens.
    pub fn start(backing: &Backing, extra: &[&str]) -> Self {
        let child = parley()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--replica-join-delay",
                "0s",
                "--job-poll-interval",
                "50ms",
                // Short leases, so a killed process's claimed work is taken over within a test.
                "--job-lease",
                "3s",
                "--webhook-timeout",
                "1s",
            ])
            .args(backing.serve_args())
            .args(extra)
            .env("PARLEY_LOG", "warn")
            // Tests serve their documents on 127.0.0.1.
            .env("PARLEY_DOCUMENT_ALLOW_PRIVATE", "true")
            // The default 64 MiB, written by every server a test starts, would only cost time; a
            // flag in `extra` still overrides it.
            .env("PARLEY_DISK_RESERVE_BYTES", "1048576")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Owned by `Proc` from here, so a failed start still kills and reaps it on drop.
        let (tx, rx) = mpsc::channel();
        let mut proc = Self {
            child,
            base: String::new(),
            key: None,
            stderr: rx,
        };
        let stderr = proc.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep draining after startup so the child never blocks on a full pipe.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = proc
                .stderr
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("parley prints its address");
            if let Some(rest) = line.split("API key ").nth(1) {
                proc.key = Some(rest.split_whitespace().next().unwrap().to_owned());
            }
            if let Some(rest) = line.split("listening on ").nth(1) {
                proc.base = rest.split_whitespace().next().unwrap().to_owned();
                return proc;
            }
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request that reached a [`Receiver`].
#[derive(Debug, Clone)]
pub struct Hit {
    pub delivery_id: String,
    pub signature: Option<String>,
    pub body: Value,
    pub raw: String,
    /// What the receiver answered.
    pub status: u16,
}

impl Hit {
    pub fn event_type(&self) -> &str {
        self.body["event_type"].as_str().unwrap_or_default()
    }
}

/// A webhook receiver that records every request and answers from a script (then 200).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    hits: std::sync::Arc<std::sync::Mutex<Vec<Hit>>>,
    script: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>,
    /// While set, requests wait here before being answered (a hung receiver).
    hold: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Receiver {
    /// A receiver on a fresh port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// A port nobody listens on yet; `start_on` it later to bring the receiver up.
    pub async fn reserve_port() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    /// A receiver on a given port (after a [`Receiver::reserve_port`]).
    pub async fn start_on(port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        Self::serve(listener)
    }

    fn serve(listener: tokio::net::TcpListener) -> Self {
        let port = listener.local_addr().unwrap().port();
        let receiver = Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            hits: Default::default(),
            script: Default::default(),
            hold: std::sync::Arc::new(tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS)),
        };
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let r = r.clone();
                async move {
                    let _permit = r.hold.acquire().await.unwrap();
                    let status = r.script.lock().unwrap().pop_front().unwrap_or(200);
                    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
                    r.hits.lock().unwrap().push(Hit {
                        delivery_id: header("x-parley-delivery-id").unwrap_or_default(),
                        signature: header("x-parley-signature"),
                        body: serde_json::from_str(&body).unwrap_or(Value::Null),
                        raw: body,
                        status,
                    });
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        receiver
    }

    /// Answers these statuses to the next requests, in order.
    pub fn answer(&self, statuses: &[u16]) {
        self.script.lock().unwrap().extend(statuses);
    }

    /// Answers 200 from now on.
    pub fn clear_script(&self) {
        self.script.lock().unwrap().clear();
    }

    /// Holds every request open until [`Receiver::release`].
    pub fn hang(&self) {
        self.hold.forget_permits(tokio::sync::Semaphore::MAX_PERMITS);
    }

    pub fn release(&self) {
        self.hold.add_permits(tokio::sync::Semaphore::MAX_PERMITS);
    }

    /// Every request so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Requests answered with a 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.status))
            .collect()
    }

    /// Waits until `n` deliveries have been accepted.
    pub async fn wait_delivered(&self, n: usize) -> Vec<Hit> {
        eventually(&format!("{n} webhooks are delivered"), || async {
            self.delivered().len() >= n
        })
        .await;
        self.delivered()
    }
}

/// A `parley` command running in the background, its stderr read line by line as it comes.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    pub stderr: Vec<String>,
}

impl Running {
    /// Starts `command` with stderr piped (and stdout dropped).
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Reads stderr until a line satisfies `wanted`, and returns it; `None` if the command
    /// ended first. Panics after a minute.
    pub fn wait_for_line(&mut self, wanted: impl Fn(&str) -> bool) -> Option<String> {
        self.read_until(Instant::now() + Duration::from_secs(60), wanted)
    }

    fn read_until(&mut self, deadline: Instant, wanted: impl Fn(&str) -> bool) -> Option<String> {
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if wanted(&line) {
                        return Some(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no such line in time; stderr so far: {:#?}", self.stderr)
                }
            }
        }
    }

    /// Sends a signal by name (`INT`, `TERM`).
    pub fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -s {name}");
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits (up to five minutes) for the command to end; its status and whole stderr.
    pub fn finish(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + Duration::from_secs(300);
        self.read_until(deadline, |_| false);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running; stderr: {:#?}",
                self.stderr
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, std::mem::take(&mut self.stderr).join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client reads of a conversation: its verbose view (links with the servers' addresses
/// taken out, as they change between servers) and the SHA-256 of its recording.
pub async fn view(app: &TestApp, id: &str) -> (Value, Option<String>) {
    let (status, conversation) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=true"))
        .await;
    assert_eq!(status, StatusCode::OK, "{id}: {conversation}");
    let conversation = serde_json::from_str(&without_addresses(&conversation.to_string())).unwrap();
    let res = app
        .req(Method::GET, &format!("/v2/conversations/{id}/recording"))
        .send()
        .await
        .unwrap();
    let recording = match res.status() {
        StatusCode::OK => Some(hex::encode(Sha256::digest(res.bytes().await.unwrap()))),
        _ => None,
    };
    (conversation, recording)
}

/// `text` with every `http://127.0.0.1:PORT` replaced by `BASE`.
fn without_addresses(text: &str) -> String {
    const LOCAL: &str = "http://127.0.0.1:";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(LOCAL) {
        out.push_str(&rest[..at]);
        out.push_str("BASE");
        rest = rest[at + LOCAL.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}
