//! An old copy of the content put back beside today's key store: a conversation hard-deleted
//! since the copy yields nothing of its content through any door, never a 500 or garbage, and
//! the conversations kept read as before.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backing, Proc, Receiver, TestApp, eventually, invalid_id};

/// A conversation's markers, one per content field, unique to the run.
struct Marks {
    name: String,
    context: String,
    greeting: String,
    /// Only in the stored create request.
    tag: String,
}

impl Marks {
    fn new(label: &str) -> Self {
        let run = format!("{:012x}", rand::random::<u64>() >> 16);
        let mark = |field: &str| format!("{label}-{field}-{run}");
        Self {
            name: mark("NAME"),
            context: mark("CONTEXT"),
            greeting: mark("GREETING"),
            tag: mark("TAG"),
        }
    }

    fn all(&self) -> [&str; 4] {
        [&self.name, &self.context, &self.greeting, &self.tag]
    }

    /// A create body with a marker in every content field, recorded.
    fn body(&self) -> Value {
        json!({
            "conversation_name": self.name,
            "conversational_context": format!("The secret is {}.", self.context),
            "custom_greeting": format!("Hello, {}!", self.greeting),
            "document_tags": [self.tag],
            "properties": { "enable_recording": true },
        })
    }

    /// Fails unless `text` holds none of the markers.
    fn absent_from(&self, what: &str, text: &str) {
        for mark in self.all() {
            assert!(!text.contains(mark), "{what} yields {mark}: {text}");
        }
    }
}

/// A server to ask, in this process or another, with an account's key.
struct Door {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Door {
    fn of(app: &TestApp) -> Self {
        Self {
            client: app.client.clone(),
            base: app.base.clone(),
            key: app.key.clone(),
        }
    }

    /// A response's status and body as text, whatever its type; never a 500. `key`: whether to
    /// send the API key (the room needs none).
    async fn fetch(&self, method: Method, path: &str, key: bool) -> (StatusCode, String) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if key {
            req = req.header("x-api-key", &self.key);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let body = String::from_utf8_lossy(&res.bytes().await.unwrap()).into_owned();
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {body}");
        (status, body)
    }

    /// The conversation's verbose read and recording, checked to hold every marker.
    async fn read_whole(&self, id: &str, marks: &Marks) -> (Value, Vec<u8>) {
        let (status, body) = self
            .fetch(Method::GET, &format!("/v2/conversations/{id}?verbose=true"), true)
            .await;
        assert_eq!(status, StatusCode::OK);
        for mark in [&marks.name, &marks.context, &marks.greeting] {
            assert!(body.contains(mark.as_str()), "{mark} missing: {body}");
        }
        let mut read = json_of(&body);
        // Only the base URL in links differs between two servers.
        read.as_object_mut().unwrap().remove("conversation_url");
        let wav = self
            .client
            .get(format!("{}/v2/conversations/{id}/recording", self.base))
            .header("x-api-key", &self.key)
            .send()
            .await
            .unwrap();
        assert_eq!(wav.status(), StatusCode::OK);
        let wav = wav.bytes().await.unwrap().to_vec();
        assert!(wav.starts_with(b"RIFF"));
        (read, wav)
    }
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_copy_put_back_beside_todays_keys_yields_nothing_of_a_conversation_deleted_since() {
    let backing = Backing::fresh().await;
    let (a, b) = (Marks::new("GONE"), Marks::new("KEPT"));
    // A's webhooks go to a receiver that is down until the old copy is back, so the copy holds
    // A's deliveries still queued, content and all.
    let port = Receiver::reserve_port().await;
    let app = TestApp::spawn_on(backing.clone(), |_| {}).await;
    let door = Door::of(&app);
    let mut body = a.body();
    body["callback_url"] = json!(format!("http://127.0.0.1:{port}/hook"));
    let gone = app.ended(body).await;
    let kept = app.ended(b.body()).await;
    app.wait_for_jobs().await;
    // Both read whole now, in the API and from the stored bytes: the checks below can fail.
    door.read_whole(&gone, &a).await;
    let (kept_before, kept_wav) = door.read_whole(&kept, &b).await;
    for mark in a.all() {
        assert!(app.backing.readable(&gone, mark).await, "{mark}");
        assert!(!app.backing.holds(mark).await, "{mark} is stored in plaintext");
    }
    let backing = app.stop().await;
    let old = backing.copy_content().await;

    // Today: A is hard-deleted, which destroys its key.
    let mut app = TestApp::spawn_on(backing.clone(), |_| {}).await;
    app.key = door.key.clone();
    let path = format!("/v2/conversations/{gone}?hard=true");
    let (status, _) = Door::of(&app).fetch(Method::DELETE, &path, true).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    app.wait_for_jobs().await;
    let backing = app.stop().await;

    // The old content goes back beside today's key store: it holds A's rows and blobs again.
    backing.restore_content(&old).await;
    let db = backing.db().await;
    assert_eq!(db.rows_of(&gone).await.0, 1, "the old copy holds A");
    let queued: Vec<String> = db
        .rows(
            "SELECT delivery_id FROM delivery WHERE conversation_id = ? AND status = 'pending'",
            &[&gone],
        )
        .await
        .iter()
        .map(|row| sqlx::Row::get(row, 0))
        .collect();
    db.close().await;
    assert!(!queued.is_empty(), "the old copy holds A's queued deliveries");
    assert!(backing.has_recording(&gone).await);
    for mark in a.all() {
        assert!(
            !backing.readable(&gone, mark).await,
            "{mark} is readable from the old copy"
        );
    }
    for mark in b.all() {
        assert!(backing.readable(&kept, mark).await, "{mark}");
    }

    // Started as an operator would, in a process of its own, with today's key store.
    let receiver = Receiver::start_on(port).await;
    let server = Proc::start(&backing, &[]);
    let door = Door {
        base: server.base.clone(),
        ..door
    };

    // A reads as a conversation whose content is unavailable: its metadata, null content fields,
    // no content events.
    let (status, body) = door
        .fetch(Method::GET, &format!("/v2/conversations/{gone}"), true)
        .await;
    a.absent_from("GET", &body);
    assert_eq!(status, StatusCode::OK);
    let got = json_of(&body);
    assert_eq!(got["conversation_id"], gone.as_str());
    assert_eq!(got["status"], "ended");
    assert_eq!(got["conversation_name"], Value::Null);

    let verbose = format!("/v2/conversations/{gone}?verbose=true");
    let (status, body) = door.fetch(Method::GET, &verbose, true).await;
    a.absent_from("GET verbose", &body);
    assert_eq!(status, StatusCode::OK);
    let events: Vec<String> = json_of(&body)["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events, ["system.replica_joined", "system.shutdown"], "{body}");

    let (status, body) = door.fetch(Method::GET, "/v2/conversations?limit=100", true).await;
    a.absent_from("list", &body);
    assert_eq!(status, StatusCode::OK);
    let list = json_of(&body);
    let named = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["conversation_id"] == id)
            .unwrap_or_else(|| panic!("{id} is not listed"))["conversation_name"]
            .clone()
    };
    assert_eq!(named(&gone), Value::Null);
    assert_eq!(named(&kept), b.name.as_str());

    let recording = format!("/v2/conversations/{gone}/recording");
    let unavailable = json!({ "error": "Recording unavailable: its content can no longer be read" });
    let (status, body) = door.fetch(Method::GET, &recording, true).await;
    assert_eq!(
        (status, json_of(&body)),
        (StatusCode::NOT_FOUND, unavailable.clone())
    );

    // The room: the page, its state, and a join into the ended call.
    let (status, body) = door.fetch(Method::GET, &format!("/rooms/{gone}"), false).await;
    a.absent_from("the room page", &body);
    assert_eq!(status, StatusCode::OK);
    let (status, body) = door
        .fetch(Method::GET, &format!("/rooms/{gone}/state"), false)
        .await;
    a.absent_from("the room's state", &body);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&body)["conversation_name"], Value::Null);
    let (status, body) = door
        .fetch(Method::POST, &format!("/rooms/{gone}/join"), false)
        .await;
    a.absent_from("a join", &body);
    assert_eq!(status, StatusCode::CONFLICT);

    let end = format!("/v2/conversations/{gone}/end");
    let (status, body) = door.fetch(Method::POST, &end, true).await;
    a.absent_from("end", &body);
    assert_eq!(
        (status, json_of(&body)),
        (
            StatusCode::OK,
            json!({ "conversation_id": gone, "status": "ended" })
        )
    );

    // A's queued deliveries, due now: those with content are given up, none sends a marker.
    for delivery in &queued {
        backing.cli(&["webhooks", "retry", delivery]);
    }
    let db = backing.db().await;
    let pending = "SELECT COUNT(*) FROM delivery WHERE conversation_id = ? AND status = 'pending'";
    eventually("A's queued deliveries are settled", || async {
        db.count(pending, &gone).await == 0
    })
    .await;
    db.close().await;
    let deliveries = backing.cli(&["webhooks", "list", "--conversation", &gone]);
    a.absent_from("parley webhooks list", &deliveries);
    assert!(
        deliveries.contains("content unavailable: the conversation's data key no longer exists"),
        "{deliveries}"
    );
    for hit in receiver.hits() {
        a.absent_from("a webhook", &hit.raw);
        assert!(
            ["system.replica_joined", "system.shutdown"].contains(&hit.event_type()),
            "a content event was sent: {}",
            hit.raw
        );
    }
    for command in [
        &["receipts"][..],
        &["jobs"],
        &["webhooks", "list"],
        &["webhooks", "list", "--failed"],
        &["keys", "list"],
        &["accounts", "list"],
    ] {
        a.absent_from(&format!("parley {command:?}"), &backing.cli(command));
    }

    // B, kept, reads as it did before the delete, recording included.
    let (kept_after, wav) = door.read_whole(&kept, &b).await;
    assert_eq!(kept_after, kept_before);
    assert_eq!(wav, kept_wav);

    // An old database put back without its blobs (A's were purged today): the same clear 404.
    let id = parley_domain::ConversationId::parse(&gone).unwrap();
    backing.blobs().delete_conversation(&id).await.unwrap();
    let (status, body) = door.fetch(Method::GET, &recording, true).await;
    assert_eq!((status, json_of(&body)), (StatusCode::NOT_FOUND, unavailable));

    // A can be deleted again, as any conversation can.
    let (status, _) = door
        .fetch(Method::DELETE, &format!("/v2/conversations/{gone}"), true)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = door
        .fetch(Method::GET, &format!("/v2/conversations/{gone}"), true)
        .await;
    assert_eq!((status, json_of(&body)), (StatusCode::BAD_REQUEST, invalid_id()));
    let hard = format!("/v2/conversations/{gone}?hard=true");
    let (status, _) = door.fetch(Method::DELETE, &hard, true).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    backing.wait_for_jobs().await;
    let receipts = backing.cli(&["receipts"]);
    assert!(receipts.contains(&gone), "{receipts}");
    a.absent_from("parley receipts", &receipts);
    for mark in a.all() {
        assert!(!backing.readable(&gone, mark).await, "{mark}");
    }
    server.kill();
}
