//! `parley migrate-store`: everything copied from an embedded store, and the copy serves it all.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Backing, Receiver, TestApp, cli_new_key, parley};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_store_is_copied_whole_into_another_store() {
    // The source: an embedded store with some of everything.
    let source = Backing::sqlite();
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_on(source.clone(), |_| {}).await;
    let key = app.key.clone();
    let recorded = app
        .ended(json!({
            "conversation_name": "kept",
            "callback_url": receiver.url,
            "persona_id": "pdac61133ac5",
            "properties": { "enable_recording": true },
        }))
        .await;
    receiver.wait_delivered(5).await;
    let active = app.create(json!({ "conversation_name": "still on" })).await;
    let hidden = app.ended(json!({ "conversation_name": "soft-deleted" })).await;
    app.call(Method::DELETE, &format!("/v2/conversations/{hidden}"))
        .await;
    let erased = app
        .ended(json!({ "properties": { "enable_recording": true } }))
        .await;
    app.call(Method::DELETE, &format!("/v2/conversations/{erased}?hard=true"))
        .await;
    let other_key = cli_new_key(&source, "team-b");
    app.wait_for_jobs().await;
    let (_, before) = app
        .call(Method::GET, &format!("/v2/conversations/{recorded}?verbose=true"))
        .await;
    let wav_before = app
        .req(Method::GET, &format!("/v2/conversations/{recorded}/recording"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (_, list_before) = app.call(Method::GET, "/v2/conversations?limit=100").await;
    app.stop().await;

    // The copy: into a fresh store of the run's backend (SQLite, or PostgreSQL and S3).
    let target = Backing::fresh().await;
    let out = parley()
        .arg("migrate-store")
        .args(source.migrate_args("from"))
        .args(target.migrate_args("to"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("conversation") && stdout.contains("blobs"),
        "{stdout}"
    );
    // Copying again into what is no longer empty is refused.
    let again = parley()
        .arg("migrate-store")
        .args(source.migrate_args("from"))
        .args(target.migrate_args("to"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty store"));

    // The destination serves the same conversations, events, recordings, keys and receipts.
    let mut copy = TestApp::spawn_on(target.clone(), |_| {}).await;
    copy.key = key;
    let (_, after) = copy
        .call(Method::GET, &format!("/v2/conversations/{recorded}?verbose=true"))
        .await;
    let strip = |mut v: serde_json::Value| {
        // Only the base URL in links differs between the two servers.
        v.as_object_mut().unwrap().remove("conversation_url");
        v
    };
    assert_eq!(strip(after), strip(before));
    let wav_after = copy
        .req(Method::GET, &format!("/v2/conversations/{recorded}/recording"))
        .send()
        .await
        .unwrap();
    assert_eq!(wav_after.status(), StatusCode::OK);
    assert_eq!(wav_after.bytes().await.unwrap(), wav_before);
    let (_, list_after) = copy.call(Method::GET, "/v2/conversations?limit=100").await;
    assert_eq!(list_after["total_count"], list_before["total_count"]);
    let ids = |l: &serde_json::Value| -> Vec<String> {
        l["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["conversation_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&list_after), ids(&list_before));
    assert!(ids(&list_after).contains(&active));
    assert_eq!(
        copy.call(Method::GET, &format!("/v2/conversations/{hidden}"))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        copy.call_as(&other_key, Method::GET, "/v2/conversations").await.0,
        StatusCode::OK
    );
    assert!(target.cli(&["receipts"]).contains(&erased));
    target.cli(&["conversations", "restore", &hidden]);
    assert_eq!(
        copy.call(Method::GET, &format!("/v2/conversations/{hidden}"))
            .await
            .0,
        StatusCode::OK
    );
    // New rows get fresh ids after the copied ones: the copy keeps working.
    let fresh = copy.ended(json!({})).await;
    assert_eq!(
        copy.call(Method::GET, &format!("/v2/conversations/{fresh}"))
            .await
            .0,
        StatusCode::OK
    );
}
