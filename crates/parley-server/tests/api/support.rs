//! Test harness: in-process servers, `parley` subprocesses, and readers of the on-disk state.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parley_server::{ServeConfig, Server};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};
use tempfile::TempDir;

/// A server running in this test process.
pub struct TestApp {
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
    dir: TempDir,
    server: Option<Server>,
}

impl TestApp {
    /// A server with test defaults on a fresh data directory.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server with adjusted settings on a fresh data directory.
    pub async fn spawn_with(adjust: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = ServeConfig::for_tests(dir.path().to_owned());
        adjust(&mut config);
        let server = parley_server::start(config).await.expect("server starts");
        let key = server
            .initial_key
            .clone()
            .expect("a fresh data dir gets a first key");
        Self {
            base: format!("http://{}", server.addr),
            key,
            client: reqwest::Client::new(),
            dir,
            server: Some(server),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
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
            count(&db, "SELECT COUNT(*) FROM event WHERE conversation_id = ? AND event_type = 'system.replica_joined'", id).await == 1
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

    /// A read-only connection to the database, to check rows directly.
    pub async fn db(&self) -> SqlitePool {
        open_db(self.data_dir()).await
    }

    /// Waits until no background job is due (retention purges weeks away do not count).
    pub async fn wait_for_jobs(&self) {
        let db = self.db().await;
        eventually("the job queue drains", || async { due_jobs(&db).await == 0 }).await;
        db.close().await;
    }

    /// Makes a key for another account with the `parley keys create` command.
    pub fn new_key(&self, account: &str) -> String {
        cli_new_key(self.data_dir(), account)
    }

    /// Stops the server gracefully.
    pub async fn stop(mut self) -> TempDir {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        self.dir
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

/// The contract's answer for any unknown, deleted or foreign id.
pub fn invalid_id() -> Value {
    json!({ "error": "Invalid conversation_id" })
}

/// Opens a read-only pool on a data directory's database.
pub async fn open_db(data_dir: &Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join("parley.db"))
        .read_only(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap()
}

/// `SELECT COUNT(*) …` with one bound id.
pub async fn count(db: &SqlitePool, sql: &str, id: &str) -> i64 {
    sqlx::query(sql).bind(id).fetch_one(db).await.unwrap().get(0)
}

/// Jobs whose time has come, finished or not.
pub async fn due_jobs(db: &SqlitePool) -> i64 {
    let now = chrono::Utc::now().timestamp_micros();
    sqlx::query_scalar("SELECT COUNT(*) FROM job WHERE run_at <= ?")
        .bind(now)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Row counts of one conversation: (conversation, event, asset).
pub async fn rows_of(db: &SqlitePool, id: &str) -> (i64, i64, i64) {
    (
        count(
            db,
            "SELECT COUNT(*) FROM conversation WHERE conversation_id = ?",
            id,
        )
        .await,
        count(db, "SELECT COUNT(*) FROM event WHERE conversation_id = ?", id).await,
        count(db, "SELECT COUNT(*) FROM asset WHERE conversation_id = ?", id).await,
    )
}

/// Where a conversation's recording lives on disk.
pub fn recording_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir
        .join("blobs/conversations")
        .join(id)
        .join("assets/recording.wav")
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
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
pub fn cli_new_key(data_dir: &Path, account: &str) -> String {
    let out = parley()
        .args(["keys", "create", "--account", account, "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
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
}

impl Proc {
    /// Starts `parley serve` on `data_dir` (port 0) with extra flags, and waits until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let child = parley()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--replica-join-delay",
                "0s",
                "--job-poll-interval",
                "50ms",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("PARLEY_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Owned by `Proc` from here, so a failed start still kills and reaps it on drop.
        let mut proc = Self {
            child,
            base: String::new(),
            key: None,
        };
        let stderr = proc.child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Keep draining after startup so the child never blocks on a full pipe.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = rx
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
