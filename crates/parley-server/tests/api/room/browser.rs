//! The room page in a real browser: headless Chromium driven through chromedriver.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Receiver, TestApp, send};

/// chromedriver on a free port, killed on drop.
pub struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
    profile_dir: String,
}

impl Driver {
    pub async fn start() -> Self {
        let port = Receiver::reserve_port().await;
        let binary = std::env::var("PARLEY_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary} (apt-get install chromium chromium-driver): {e}"));
        let profile = tempfile::tempdir().unwrap();
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile_dir: profile.path().display().to_string(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/status", driver.url)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    pub async fn browser(&self) -> Client {
        let binary = std::env::var("PARLEY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                // The background-networking flags keep Chromium off a network this machine does not have.
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", format!("--user-data-dir={}", self.profile_dir),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object literal")
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the element's text satisfies `check`; returns that text.
async fn wait_text(browser: &Client, id: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        if let Ok(element) = browser.find(Locator::Id(id)).await
            && let Ok(text) = element.text().await
        {
            if check(&text) {
                return text;
            }
            last = text;
        }
        assert!(
            Instant::now() < deadline,
            "#{id} never matched; last text {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(browser: &Client, id: &str) {
    browser
        .find(Locator::Id(id))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_joins_hears_the_greeting_leaves_and_the_call_ends() {
    let app = TestApp::spawn().await;
    let greeting = "Hello from the simulated replica!";
    let (status, created) = send(app.req(Method::POST, "/v2/conversations").json(&json!({
        "conversation_name": "Browser room",
        "persona_id": "pdac61133ac5",
        "custom_greeting": greeting,
        "properties": { "participant_left_timeout": 1 },
    })))
    .await;
    assert_eq!(status, StatusCode::OK);
    let id = created["conversation_id"].as_str().unwrap().to_owned();
    let url = created["conversation_url"].as_str().unwrap().to_owned();

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&url).await.unwrap();
    wait_text(&browser, "title", |t| t == "Browser room").await;
    wait_text(&browser, "replica-state", |t| t == "in the room").await;
    assert!(
        !browser
            .find(Locator::Id("greeting"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );

    click(&browser, "join").await;
    wait_text(&browser, "greeting", |t| t == greeting).await;
    wait_text(&browser, "participants", |t| t == "1 person in the room").await;
    let db = app.db().await;
    let present: i64 = db
        .count(
            "SELECT participants_present FROM conversation WHERE conversation_id = ?",
            &id,
        )
        .await;
    assert_eq!(present, 1);

    click(&browser, "leave").await;
    let ended = wait_text(&browser, "message", |t| t.contains("has ended")).await;
    assert_eq!(
        ended,
        "This conversation has ended. Everyone left the call, and nobody came back in time."
    );
    let reason = browser
        .find(Locator::Id("message"))
        .await
        .unwrap()
        .attr("data-shutdown-reason")
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("participant_left_timeout reached"));
    wait_text(&browser, "replica-state", |t| t == "left the room").await;
    wait_text(&browser, "participants", |t| t == "0 people in the room").await;
    let (_, got) = app.call(Method::GET, &format!("/v2/conversations/{id}")).await;
    assert_eq!(got["status"], "ended");

    // Once deleted, the room says so.
    let (status, _) = app
        .call(Method::DELETE, &format!("/v2/conversations/{id}?hard=true"))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    browser.goto(&url).await.unwrap();
    wait_text(&browser, "message", |t| {
        t.contains("does not exist or has been deleted")
    })
    .await;
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_room_needs_its_meeting_token() {
    let app = TestApp::spawn().await;
    let (_, created) = send(
        app.req(Method::POST, "/v2/conversations")
            .json(&json!({ "conversation_name": "Private", "require_auth": true })),
    )
    .await;
    let url = created["conversation_url"].as_str().unwrap().to_owned();
    let token = created["meeting_token"].as_str().unwrap().to_owned();

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&url).await.unwrap();
    wait_text(&browser, "message", |t| t.contains("private room")).await;
    // No replica tile saying "joining…" and no button to press.
    for hidden in ["join", "replica-state"] {
        let element = browser.find(Locator::Id(hidden)).await.unwrap();
        assert!(!element.is_displayed().await.unwrap(), "#{hidden} is shown");
    }

    browser.goto(&format!("{url}?t={token}")).await.unwrap();
    wait_text(&browser, "title", |t| t == "Private").await;
    wait_text(&browser, "replica-state", |t| t == "in the room").await;
    click(&browser, "join").await;
    wait_text(&browser, "status", |t| t == "You are in the call.").await;
    browser.close().await.unwrap();
}
