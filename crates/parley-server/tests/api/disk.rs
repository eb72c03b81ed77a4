//! A full disk: creates get a 503 that says so, ends and deletes still work, nothing acknowledged
//! is lost, and writes, jobs and `/health` come back by themselves once there is room.
//!
//! Each test mounts small tmpfs filesystems of its own, so it needs root (CI runs as root).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use parley_blobs::Blobs;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;
use tempfile::TempDir;

use crate::support::{Backing, Proc, Receiver, TestApp, create_on, eventually, send};

/// A tmpfs of a given size, unmounted however the test ends.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "parley-disk-test"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a server left running by a failed assertion may still hold files open.
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes a file of up to `bytes` (stopping quietly when the disk is full): someone else's data
/// on the same disk. Returns its path.
fn other_tenant(dir: &Path, bytes: u64) -> PathBuf {
    let path = dir.join("someone-elses-file");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut written = 0;
    while written < bytes {
        match file.write_all(&chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("writing the other tenant's file: {e}"),
        }
    }
    path
}

fn assert_disk_full(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {body}");
    assert_eq!(
        body,
        &json!({ "error": "storage unavailable: the disk is full" }),
        "{what}"
    );
}

/// POST /v2/conversations, returning status, `Retry-After` and body.
async fn try_create(app: &TestApp, body: &Value) -> (StatusCode, Option<String>, Value) {
    let res = app
        .req(Method::POST, "/v2/conversations")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, res.json().await.unwrap())
}

/// A create that takes about half a megabyte on disk (the context is stored twice: as a column
/// and inside the stored request). Random, so PostgreSQL cannot compress it away.
fn filler() -> Value {
    let context = hex::encode((0..128 << 10).map(|_| rand::random::<u8>()).collect::<Vec<u8>>());
    json!({ "test_mode": true, "conversational_context": context })
}

/// Waits until a webhook of this type for this conversation has been delivered.
async fn wait_webhook(receiver: &Receiver, id: &str, event_type: &str) {
    eventually(&format!("{event_type} of {id} is delivered"), || async {
        receiver
            .delivered()
            .iter()
            .any(|h| h.event_type() == event_type && h.body["conversation_id"] == id)
    })
    .await;
}

/// Checks every acknowledged conversation through the API and in the database file.
async fn assert_all_there(
    app: &TestApp,
    live: &BTreeSet<String>,
    hidden: &BTreeSet<String>,
    erased: &[String],
) {
    for id in live {
        let (status, got) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
        assert_eq!(status, StatusCode::OK, "acknowledged {id} is readable: {got}");
        assert_eq!(got["conversation_id"], id.as_str());
    }
    for id in hidden.iter().chain(erased) {
        let (status, _) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "deleted {id} stays deleted");
    }
    let db = app.db().await;
    let rows = db
        .rows(
            "SELECT conversation_id, CAST(CASE WHEN deleted_at IS NULL THEN 0 ELSE 1 END AS BIGINT) \
             FROM conversation",
            &[],
        )
        .await;
    let on_disk: BTreeSet<(String, bool)> = rows
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) == 1))
        .collect();
    db.close().await;
    let expected: BTreeSet<(String, bool)> = live
        .iter()
        .map(|id| (id.clone(), false))
        .chain(hidden.iter().map(|id| (id.clone(), true)))
        .collect();
    assert_eq!(
        on_disk, expected,
        "the database holds exactly what was acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_creates_keeps_ends_and_deletes_working_and_recovers_by_itself() {
    let disk = Tmpfs::mount(48 << 20);
    // Another program's 16 MiB on the same disk: deleting it later is how room comes back.
    let tenant = other_tenant(disk.path(), 16 << 20);
    let backing = Backing::sqlite_in(disk.path());
    // More than SQLite's WAL holds between checkpoints (about 4 MiB): a purge's checkpoint may
    // have to grow the database file by that much.
    let reserve = 8 << 20;
    let adjust = move |c: &mut parley_server::ServeConfig| c.disk_reserve_bytes = reserve;
    let mut app = TestApp::spawn_on(backing, adjust).await;
    let reserve_file = app.data_dir().join("parley.reserve");
    assert_eq!(std::fs::metadata(&reserve_file).unwrap().len(), reserve);
    let receiver = Receiver::start().await;
    let call = |recording: bool| json!({ "callback_url": receiver.url, "properties": { "enable_recording": recording } });
    // A call that will be ended while the disk is full, one ended before to hard-delete then.
    let live_call = app.create(call(true)).await;
    app.wait_joined(&live_call).await;
    let to_erase = app.ended(call(true)).await;
    wait_webhook(&receiver, &to_erase, "application.recording_ready").await;
    assert!(app.backing.has_recording(&to_erase).await);
    let mut live: BTreeSet<String> = [live_call.clone()].into();

    // Fill the disk with creates until one is refused.
    let (status, retry_after, body) = loop {
        let (status, retry_after, body) = try_create(&app, &filler()).await;
        if status != StatusCode::OK {
            break (status, retry_after, body);
        }
        live.insert(body["conversation_id"].as_str().unwrap().to_owned());
        assert!(
            live.len() < 100,
            "48 MiB fills up within 100 half-megabyte creates"
        );
    };
    assert_disk_full(status, &body, "the create that found the disk full");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        live.len() > 10,
        "the disk held many creates first: {}",
        live.len()
    );
    assert!(!reserve_file.exists(), "the reserve is given up");

    // While full: health says so, even a tiny create waits, reads work.
    let (status, body) = app.call(Method::GET, "/health").await;
    assert_disk_full(status, &body, "/health");
    let (status, _, body) = try_create(&app, &json!({ "test_mode": true })).await;
    assert_disk_full(status, &body, "a tiny create");
    let (status, list) = app.call(Method::GET, "/v2/conversations?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list["total_count"],
        live.len() + 1,
        "every create acknowledged, plus the ended call"
    );

    // Ends and deletes go on, on the reserve's room, and so do webhook deliveries.
    let (status, body) = app
        .call(Method::POST, &format!("/v2/conversations/{live_call}/end"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_webhook(&receiver, &live_call, "system.shutdown").await;
    let fillers: Vec<String> = live.iter().filter(|id| **id != live_call).cloned().collect();
    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{}", fillers[0]))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "a soft delete");
    live.remove(&fillers[0]);
    let hidden: BTreeSet<String> = [fillers[0].clone()].into();
    let mut erased = Vec::new();
    for id in [&to_erase, &fillers[1]] {
        let (status, _) = app
            .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=true"))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "a hard delete of {id}");
        live.remove(id);
        erased.push(id.clone());
    }
    assert!(
        app.backing.blob_keys(&to_erase).await.is_empty(),
        "the recording is gone at once"
    );
    let db = app.db().await;
    eventually("the purges finish on the full disk", || async {
        db.scalar("SELECT COUNT(*) FROM job WHERE kind = 'purge'").await == 0
    })
    .await;
    db.close().await;
    // Deletes do not give the filesystem its space back (SQLite keeps the pages for reuse).
    let (status, body) = app.call(Method::GET, "/health").await;
    assert_disk_full(status, &body, "/health after the deletes");

    // Room comes back: everything resumes without a restart.
    std::fs::remove_file(&tenant).unwrap();
    eventually("/health is 200 again", || async {
        app.call(Method::GET, "/health").await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        std::fs::metadata(&reserve_file).unwrap().len(),
        reserve,
        "the reserve is back"
    );
    let (status, _, body) = try_create(&app, &filler()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    live.insert(body["conversation_id"].as_str().unwrap().to_owned());
    // The call ended while full gets its recording now (its finalisation waited for room).
    wait_webhook(&receiver, &live_call, "application.recording_ready").await;
    assert!(app.backing.has_recording(&live_call).await);
    let fresh = app.ended(call(true)).await;
    live.insert(fresh.clone());
    wait_webhook(&receiver, &fresh, "application.recording_ready").await;
    app.wait_for_jobs().await;
    assert_all_there(&app, &live, &hidden, &erased).await;

    // And after a restart.
    let key = app.key.clone();
    let backing = app.stop().await;
    app = TestApp::spawn_on(backing, adjust).await;
    app.key = key;
    assert_all_there(&app, &live, &hidden, &erased).await;
    assert_eq!(app.call(Method::GET, "/health").await.0, StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_blob_folder_holds_recordings_back_and_fails_health_until_there_is_room() {
    let blob_disk = Tmpfs::mount(1 << 20);
    let blob_dir = blob_disk.path().join("blobs");
    let blob_url = blob_dir.display().to_string();
    let app = TestApp::spawn_on(Backing::sqlite(), move |c| c.blobs.blob_url = Some(blob_url)).await;
    let blobs = Blobs::local(&blob_dir).unwrap();
    let receiver = Receiver::start().await;
    let tenant = other_tenant(blob_disk.path(), u64::MAX);

    let id = app
        .ended(json!({ "callback_url": receiver.url, "properties": { "enable_recording": true } }))
        .await;
    wait_webhook(&receiver, &id, "system.shutdown").await;
    let (status, body) = app.call(Method::GET, "/health").await;
    assert_disk_full(status, &body, "/health with a full blob folder");
    let (status, _, body) = try_create(&app, &json!({ "test_mode": true })).await;
    assert_disk_full(status, &body, "a create");
    let (status, got) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!((status, got["status"].as_str()), (StatusCode::OK, Some("ended")));
    let key = format!("conversations/{id}/assets/recording.wav");
    assert!(blobs.get(&key).await.is_err(), "no recording yet");

    std::fs::remove_file(&tenant).unwrap();
    eventually("/health is 200 again", || async {
        app.call(Method::GET, "/health").await.0 == StatusCode::OK
    })
    .await;
    wait_webhook(&receiver, &id, "application.recording_ready").await;
    assert!(blobs.get(&key).await.is_ok());
    let wav = app
        .req(Method::GET, &format!("/v2/conversations/{id}/recording"))
        .send()
        .await
        .unwrap();
    assert!(wav.bytes().await.unwrap().starts_with(b"RIFF"));
    app.create(json!({ "test_mode": true })).await;
    app.wait_for_jobs().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_after_a_crash_on_a_full_disk_starts_on_its_reserve() {
    let disk = Tmpfs::mount(32 << 20);
    let backing = Backing::sqlite_in(disk.path());
    // Larger than the harness's default: the reserve must hold what the WAL holds.
    let reserve = ["--disk-reserve-bytes", "8388608"];
    let first = Proc::start(&backing, &reserve);
    let key = first.key.clone().unwrap();
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    // About 2.7 MiB sealed: under SQLite's automatic checkpoint (4 MiB of WAL), so all of it is
    // still in the WAL when the server dies.
    for _ in 0..4 {
        acknowledged.push(create_on(&client, &first.base, &key, filler()).await);
    }
    // Killed: what it wrote is still in the WAL, and checkpointing it at the next open needs room.
    first.kill();
    let tenant = other_tenant(disk.path(), u64::MAX);

    let second = Proc::start(&backing, &reserve);
    let get = |path: String| {
        send(
            client
                .get(format!("{}{path}", second.base))
                .header("x-api-key", &key),
        )
    };
    let (status, body) = get("/health".into()).await;
    assert_disk_full(status, &body, "/health after the start");
    for id in &acknowledged {
        let (status, got) = get(format!("/v2/conversations/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{id}: {got}");
    }
    std::fs::remove_file(&tenant).unwrap();
    eventually("/health is 200 again", || async {
        get("/health".into()).await.0 == StatusCode::OK
    })
    .await;
    create_on(&client, &second.base, &key, json!({ "test_mode": true })).await;
}

/// A PostgreSQL cluster of the test's own (`scripts/postgres.sh`), stopped however the test ends.
struct Cluster {
    dir: TempDir,
}

impl Cluster {
    /// Starts it on `port`; returns it and the URL of its `parley` database.
    fn start(port: u16) -> (Self, String) {
        let cluster = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = Command::new(Self::script())
            .arg("start")
            .arg(cluster.dir.path())
            .arg(port.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        (cluster, url)
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres.sh")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_full_disk_is_a_503_and_writes_come_back_by_themselves() {
    let disk = Tmpfs::mount(24 << 20);
    let owner = Command::new("chown")
        .arg("postgres")
        .arg(disk.path())
        .status()
        .unwrap();
    assert!(owner.success());
    // Declared after the disk, so it stops before the disk is unmounted.
    let (_cluster, url) = Cluster::start(Receiver::reserve_port().await);
    // Only parley's database is on the small disk. PostgreSQL's WAL stays on the big one: a WAL
    // it cannot write stops the whole server, which is not what this test is about.
    let admin = sqlx::PgPool::connect(&url).await.unwrap();
    let location = disk.path().display();
    for sql in [
        format!("CREATE TABLESPACE small LOCATION '{location}'"),
        "CREATE DATABASE full_disk TABLESPACE small".to_owned(),
    ] {
        sqlx::raw_sql(&sql).execute(&admin).await.unwrap();
    }
    admin.close().await;
    let mut db_url = url::Url::parse(&url).unwrap();
    db_url.set_path("/full_disk");
    let app = TestApp::spawn_on(Backing::postgres_with_local_blobs(db_url.to_string()), |_| {}).await;
    let tenant = other_tenant(disk.path(), 4 << 20);
    let call = app.create(json!({})).await;
    let mut live: BTreeSet<String> = [call.clone()].into();

    let (status, retry_after, body) = loop {
        let (status, retry_after, body) = try_create(&app, &filler()).await;
        if status != StatusCode::OK {
            break (status, retry_after, body);
        }
        live.insert(body["conversation_id"].as_str().unwrap().to_owned());
        assert!(
            live.len() < 100,
            "24 MiB fills up within 100 half-megabyte creates"
        );
    };
    assert_disk_full(status, &body, "the create that found the disk full");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Without a reserve, other writes may or may not find room; they never fail with a 500.
    let (status, body) = app
        .call(Method::POST, &format!("/v2/conversations/{call}/end"))
        .await;
    assert!(
        status == StatusCode::OK || body == json!({ "error": "storage unavailable: the disk is full" }),
        "an end on a full disk: {status} {body}"
    );
    let victim = live.iter().find(|id| **id != call).unwrap().clone();
    let (status, body) = app
        .call(Method::DELETE, &format!("/v2/conversations/{victim}?hard=true"))
        .await;
    let mut erased = Vec::new();
    if status == StatusCode::NO_CONTENT {
        live.remove(&victim);
        erased.push(victim);
    } else {
        assert_disk_full(status, &body, "a hard delete that found no room");
    }

    std::fs::remove_file(&tenant).unwrap();
    eventually("/health is 200 again", || async {
        app.call(Method::GET, "/health").await.0 == StatusCode::OK
    })
    .await;
    let (status, _, body) = try_create(&app, &filler()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    live.insert(body["conversation_id"].as_str().unwrap().to_owned());
    let (status, _) = app
        .call(Method::POST, &format!("/v2/conversations/{call}/end"))
        .await;
    assert_eq!(status, StatusCode::OK);
    app.wait_for_jobs().await;
    assert_all_there(&app, &live, &BTreeSet::new(), &erased).await;
    app.stop().await;
}
