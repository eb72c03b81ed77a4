//! The shared store's servers going away: a prompt 503 with Retry-After, and recovery without a restart.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backing, Receiver, TestApp, eventually};

/// Runs one of the repository's service scripts; returns its stdout.
fn script(name: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name);
    let out = Command::new(&path).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Stops the test's own servers however the test ends.
struct Services {
    pg_dir: String,
    s3_dir: String,
}

impl Drop for Services {
    fn drop(&mut self) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts");
        let _ = Command::new(dir.join("s3.sh"))
            .args(["stop", &self.s3_dir])
            .output();
        let _ = Command::new(dir.join("postgres.sh"))
            .args(["stop", &self.pg_dir])
            .output();
    }
}

/// A request during an outage: answered, soon, with 503, JSON and Retry-After, which a browser
/// page on another origin may read.
async fn assert_unavailable(app: &TestApp, method: Method, path: &str) {
    let started = Instant::now();
    let res = app
        .req(method.clone(), path)
        .header("origin", "http://localhost:5173")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(
        res.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("retry-after")
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("unavailable"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answered, not hung: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_or_object_store_going_away_is_a_503_until_it_returns() {
    // Servers of its own: stopping the suite's shared ones would break the tests running beside it.
    let root = tempfile::tempdir().unwrap();
    let pg_dir = root.path().join("pg").display().to_string();
    let s3_dir = root.path().join("s3").display().to_string();
    let pg_port = Receiver::reserve_port().await.to_string();
    let s3_port = Receiver::reserve_port().await.to_string();
    let _services = Services {
        pg_dir: pg_dir.clone(),
        s3_dir: s3_dir.clone(),
    };
    let database_url = script("postgres.sh", &["start", &pg_dir, &pg_port]);
    let endpoint = script("s3.sh", &["start", &s3_dir, &s3_port, "outage"]);
    let backing = Backing::shared(database_url, "s3://outage/parley".into(), endpoint);
    let app = TestApp::spawn_on(backing, |_| {}).await;
    let id = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    // On a loaded machine the end's own finalisation can fail and be retried a little later:
    // the outage starts once the call's results are in, so that they are what must survive it.
    let verbose = format!("/v2/conversations/{id}?verbose=true");
    eventually("the call's results are stored", || async {
        let (_, got) = app.call(Method::GET, &verbose).await;
        got["events"].as_array().is_some_and(|e| e.len() >= 4)
    })
    .await;

    script("postgres.sh", &["stop", &pg_dir]);
    assert_unavailable(&app, Method::GET, "/health").await;
    assert_unavailable(&app, Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_unavailable(&app, Method::GET, "/v2/conversations").await;
    script("postgres.sh", &["start", &pg_dir, &pg_port]);
    eventually("parley reconnects to the database", || async {
        app.call(Method::GET, &format!("/v2/conversations/{id}")).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(app.call(Method::GET, "/health").await.0, StatusCode::OK);
    let (_, got) = app
        .call(Method::GET, &format!("/v2/conversations/{id}?verbose=true"))
        .await;
    assert_eq!(
        got["status"], "ended",
        "what was acknowledged before the outage is still there"
    );
    assert!(got["events"].as_array().unwrap().len() >= 4);

    script("s3.sh", &["stop", &s3_dir]);
    assert_unavailable(&app, Method::GET, &format!("/v2/conversations/{id}/recording")).await;
    // The test S3 server keeps objects in memory, so it comes back empty: recovery is shown by new
    // recordings being stored and served again, without restarting parley.
    script("s3.sh", &["start", &s3_dir, &s3_port, "outage"]);
    let after = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    eventually(
        "the recording is stored once the object store is back",
        || async {
            app.call(Method::GET, &format!("/v2/conversations/{after}/recording"))
                .await
                .0
                == StatusCode::OK
        },
    )
    .await;
    app.stop().await;
}
