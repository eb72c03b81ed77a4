//! Documents: fetching a document's URL in the background, sealing what it holds, and the plain
//! text chunks parley serves from it.
//!
//! A create stores the row with status `started` and work due now; the job runner claims it
//! (`work`) and calls [`fetch`], which moves it to `processing`, downloads the URL, seals the
//! bytes into the `content` blob and ends in `ready` or `error`. Every write names the version its
//! claim left, so a claim that lost its lease (another process took the work over) writes nothing.

use std::time::Duration;

use bytes::Bytes;
use parley_blobs::BlobKey;
use parley_domain::Timestamp;
use parley_store::{ConversationStore, Resource};
use serde_json::{Map, Value, json};

use crate::backoff::Backoff;
use crate::sealed::resource as sealed;
use crate::state::AppState;
use crate::webhook::{self, NotPublic};

/// Status of a document whose first fetch has not started.
pub const STARTED: &str = "started";
/// Status while its first fetch runs.
pub const PROCESSING: &str = "processing";
/// Status once its content is stored.
pub const READY: &str = "ready";
/// Status after a fetch that failed for good; `error_message` says why.
pub const ERROR: &str = "error";
/// Status while a recrawl runs; the previous content stays until it is done.
pub const RECRAWLING: &str = "recrawling";

/// The name of a document's content blob.
pub const CONTENT: &str = "content";
/// Attempts at a fetch that keeps failing in a way worth retrying (network, 5xx, 429).
const MAX_ATTEMPTS: u32 = 5;
/// Waits between those attempts: 1 s, doubling, up to 5 min.
const RETRY: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(300),
};
/// Redirects followed, each checked like the first URL.
const MAX_REDIRECTS: usize = 5;
/// Characters per chunk, at most (a paragraph longer than this is cut at a space).
pub const CHUNK_CHARS: usize = 1000;

/// How documents are fetched.
#[derive(Debug, Clone)]
pub struct DocumentSettings {
    /// Largest document fetched, in bytes.
    pub max_bytes: u64,
    /// How long one fetch (all its redirects and the body) may take.
    pub fetch_timeout: Duration,
    /// Whether loopback, private and link-local addresses may be fetched.
    pub allow_private: bool,
}

/// What a fetch came to.
#[derive(Debug)]
enum Failure {
    /// Not worth retrying; the code is the hosted API's `error_message`.
    Permanent(&'static str),
    /// Worth retrying (the network, the server's 5xx or 429, a timeout).
    Transient(String),
}

/// A downloaded document.
struct Downloaded {
    bytes: Vec<u8>,
    content_type: Option<String>,
    final_url: String,
}

/// Fetches a claimed document and records the outcome; failures worth retrying come back later
/// through `work_at`. Never panics and never returns an error: what went wrong is on the row or
/// in the log, and an unwritten outcome is retried when the claim's lease runs out.
pub async fn fetch(state: &AppState, claimed: Resource) {
    let row_id = claimed.row_id.clone();
    if let Err(e) = fetch_claimed(state, claimed).await {
        state.disk.notice(e.as_ref());
        tracing::warn!(resource.row_id = %row_id, error = format!("{e:#}"), "document fetch failed; it is retried when its lease runs out");
    }
}

async fn fetch_claimed(state: &AppState, mut row: Resource) -> anyhow::Result<()> {
    let Some(url) = fields_of(&row).and_then(|f| f.get("document_url")?.as_str().map(str::to_owned)) else {
        // Content unavailable (its key is gone): nothing to fetch, and nothing can be written.
        tracing::warn!(resource.row_id = %row.row_id, "document to fetch has no readable fields");
        return Ok(());
    };
    if row.status == STARTED {
        match commit(state, row, |_, r| r.status = PROCESSING.into()).await? {
            Some(moved) => row = moved,
            None => return Ok(()),
        }
    }
    let outcome =
        match tokio::time::timeout(state.settings.documents.fetch_timeout, download(state, &url)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Transient("timed out".into())),
        };
    match outcome {
        Ok(doc) => store_content(state, row, doc).await,
        Err(Failure::Permanent(code)) => {
            tracing::info!(resource.row_id = %row.row_id, error_message = code, "document fetch failed");
            commit(state, row, |f, r| fail(f, r, code)).await.map(drop)
        }
        Err(Failure::Transient(why)) if row.attempts >= MAX_ATTEMPTS => {
            tracing::info!(resource.row_id = %row.row_id, attempts = row.attempts, error = %why, "document fetch given up");
            commit(state, row, |f, r| fail(f, r, "file_download_failed"))
                .await
                .map(drop)
        }
        Err(Failure::Transient(why)) => {
            let wait = RETRY.jittered(row.attempts);
            tracing::info!(resource.row_id = %row.row_id, attempts = row.attempts, error = %why, retry_in_ms = wait.as_millis() as u64, "document fetch will be retried");
            let at = Timestamp::now().plus_millis(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            commit(state, row, |_, r| {
                r.work_at = Some(at);
                r.locked_until = None;
            })
            .await
            .map(drop)
        }
    }
}

/// Seals the bytes into the document's content blob and marks it ready.
async fn store_content(state: &AppState, row: Resource, doc: Downloaded) -> anyhow::Result<()> {
    let row_id = row.row_id.clone();
    let Some(key) = state.store.resource_key(&row_id).await? else {
        // Hard-deleted while we fetched.
        return Ok(());
    };
    let blob_key = BlobKey::Resource {
        row_id: row_id.clone(),
        name: CONTENT.into(),
    };
    let path = blob_key.path();
    let sealed_bytes = sealed::seal_blob(&key.key, &sealed::owner(&row_id)?, &path, &doc.bytes);
    drop(key);
    state.blobs.put(&blob_key, sealed_bytes).await?;
    let chunk_count = text_of(&doc.bytes, doc.content_type.as_deref()).map_or(0, |t| chunks(&t).len());
    let now = Timestamp::now();
    let written = commit(state, row, |f, r| {
        r.status = READY.into();
        r.blob_key = Some(path.clone());
        r.work_at = None;
        r.locked_until = None;
        f.insert("error_message".into(), Value::Null);
        f.insert("content_type".into(), json!(doc.content_type));
        f.insert("file_size".into(), json!(doc.bytes.len()));
        f.insert("chunk_count".into(), json!(chunk_count));
        if !f.get("crawl_config").is_none_or(Value::is_null) {
            let count = f.get("crawl_count").and_then(Value::as_u64).unwrap_or(0);
            f.insert("crawl_count".into(), json!(count + 1));
            f.insert("crawled_urls".into(), json!([doc.final_url]));
            f.insert("last_crawled_at".into(), json!(now));
        }
    })
    .await?;
    if written.is_none() {
        // The document went while we worked (a hard delete may have purged before our write):
        // take back what we wrote.
        match state.store.load_resource(&row_id).await? {
            Some(r) if r.deleted_at.is_none() => {}
            _ => {
                state.blobs.delete_resource(&row_id).await?;
            }
        }
    } else {
        tracing::info!(resource.row_id = %row_id, file.size = doc.bytes.len(), chunk.count = chunk_count, "document ready");
    }
    Ok(())
}

/// The row's work ends in `error` with the hosted API's code; earlier content stays.
fn fail(fields: &mut Map<String, Value>, row: &mut Resource, code: &str) {
    row.status = ERROR.into();
    row.work_at = None;
    row.locked_until = None;
    fields.insert("error_message".into(), json!(code));
}

fn fields_of(row: &Resource) -> Option<Map<String, Value>> {
    match serde_json::from_str(&row.body) {
        Ok(Value::Object(fields)) => Some(fields),
        _ => None,
    }
}

/// Writes `change` on the claimed row; the written row, or `None` once the claim no longer holds
/// (the document was deleted, or its lease ran out and another runner took the work).
///
/// A client's rename in between moves the version on without touching the work, so the change is
/// made again on what the rename left, as long as the lease is still ours.
async fn commit(
    state: &AppState,
    mut row: Resource,
    change: impl Fn(&mut Map<String, Value>, &mut Resource),
) -> anyhow::Result<Option<Resource>> {
    let lease = row.locked_until;
    for _ in 0..8 {
        let Some(mut fields) = fields_of(&row) else {
            return Ok(None);
        };
        change(&mut fields, &mut row);
        row.body = Value::Object(fields).to_string();
        row.updated_at = Timestamp::now();
        if state.store.update_resource(&row).await? {
            row.version += 1;
            return Ok(Some(row));
        }
        match state.store.load_resource(&row.row_id).await? {
            Some(current)
                if current.deleted_at.is_none()
                    && current.work_at.is_some()
                    && current.locked_until == lease =>
            {
                row = current;
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Downloads `url`, following redirects. Unless private addresses are allowed (and never with
/// `--webhook-deny-private`), every hop must resolve to public addresses only, and the connection
/// goes to exactly those addresses.
async fn download(state: &AppState, url: &str) -> Result<Downloaded, Failure> {
    let settings = &state.settings.documents;
    let mut url = url::Url::parse(url).map_err(|_| Failure::Permanent("invalid_file_url"))?;
    for _ in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Failure::Permanent("invalid_file_url"));
        }
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("parley/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.fetch_timeout);
        if state.settings.webhooks.deny_private || !settings.allow_private {
            let addrs = webhook::public_addrs(&url).await.map_err(|e| match e {
                NotPublic::Refused(why) => {
                    tracing::info!(error = %why, "document URL refused");
                    Failure::Permanent("invalid_file_url")
                }
                NotPublic::Unresolved(why) => Failure::Transient(why),
            })?;
            let host = url.host_str().unwrap_or_default().to_owned();
            builder = builder.resolve_to_addrs(&host, &addrs);
        }
        let client = builder
            .build()
            .map_err(|e| Failure::Transient(format!("building the HTTP client: {e}")))?;
        let mut res = client.get(url.clone()).send().await.map_err(transient)?;
        let status = res.status();
        if status.is_redirection() {
            let next = res
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| url.join(loc).ok())
                .ok_or(Failure::Permanent("file_download_failed"))?;
            url = next;
            continue;
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure::Transient(format!("HTTP {}", status.as_u16())));
        }
        if !status.is_success() {
            return Err(Failure::Permanent("file_download_failed"));
        }
        if res.content_length().is_some_and(|n| n > settings.max_bytes) {
            return Err(Failure::Permanent("file_size_too_large"));
        }
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut bytes = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(transient)? {
            if (bytes.len() + chunk.len()) as u64 > settings.max_bytes {
                return Err(Failure::Permanent("file_size_too_large"));
            }
            bytes.extend_from_slice(&chunk);
        }
        if bytes.is_empty() {
            return Err(Failure::Permanent("file_empty"));
        }
        return Ok(Downloaded {
            bytes,
            content_type,
            final_url: url.to_string(),
        });
    }
    Err(Failure::Permanent("file_download_failed"))
}

fn transient(e: reqwest::Error) -> Failure {
    Failure::Transient(if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.without_url().to_string()
    })
}

/// A stored document's content, opened: `None` when it has none yet, or its key is gone.
pub async fn content(state: &AppState, row: &Resource) -> anyhow::Result<Option<Bytes>> {
    let Some(path) = &row.blob_key else {
        return Ok(None);
    };
    let Some(key) = state.store.resource_key(&row.row_id).await? else {
        return Ok(None);
    };
    let sealed_bytes = match state.blobs.get(path).await {
        Ok(bytes) => bytes,
        Err(parley_blobs::BlobError::NotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(sealed::open_blob(
        &key.key,
        &sealed::owner(&row.row_id)?,
        path,
        &sealed_bytes,
    ))
}

/// The text of a document's bytes, if parley can read it: UTF-8 text as it is, HTML with its
/// markup, scripts and styles taken out. `None` for anything else (PDF, Office files, images).
pub fn text_of(bytes: &[u8], content_type: Option<&str>) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.contains('\0') {
        return None;
    }
    let head = text
        .trim_start()
        .get(..15)
        .unwrap_or_default()
        .to_ascii_lowercase();
    let html = content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("html"))
        || head.starts_with("<!doctype html")
        || head.starts_with("<html");
    Some(if html { strip_html(text) } else { text.to_owned() })
}

/// The visible text of an HTML page, roughly: tags become breaks, a few entities are decoded.
fn strip_html(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    while let Some(open) = html[at..].find('<').map(|i| at + i) {
        out.push_str(&decode_entities(&html[at..open]));
        let tag_end = html[open..].find('>').map_or(html.len(), |i| open + i + 1);
        let name: String = lower[open + 1..tag_end]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        at = tag_end;
        if name == "script" || name == "style" {
            let close = format!("</{name}");
            at = lower[at..].find(&close).map_or(html.len(), |i| {
                let end = at + i;
                html[end..].find('>').map_or(html.len(), |j| end + j + 1)
            });
        }
        out.push('\n');
    }
    out.push_str(&decode_entities(&html[at..]));
    // One paragraph per run of text, without the indentation the markup had.
    let mut text = String::new();
    for line in out.lines().map(str::trim) {
        if line.is_empty() {
            if !text.is_empty() && !text.ends_with("\n\n") {
                text.push_str("\n\n");
            }
        } else {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push(' ');
            }
            text.push_str(line);
        }
    }
    text.trim().to_owned()
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The text cut into chunks of at most [`CHUNK_CHARS`] characters: whole paragraphs together
/// while they fit, a longer paragraph cut at spaces (or anywhere, if it has none).
pub fn chunks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, out: &mut Vec<String>| {
        if !current.trim().is_empty() {
            out.push(current.trim().to_owned());
        }
        current.clear();
    };
    for para in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let len = para.chars().count();
        if current.chars().count() + len + 2 <= CHUNK_CHARS {
            if !current.is_empty() {
                current.push_str("\n\n");
            }
            current.push_str(para);
            continue;
        }
        flush(&mut current, &mut out);
        if len <= CHUNK_CHARS {
            current.push_str(para);
            continue;
        }
        let mut rest = para;
        while rest.chars().count() > CHUNK_CHARS {
            let limit = rest
                .char_indices()
                .nth(CHUNK_CHARS)
                .map_or(rest.len(), |(i, _)| i);
            let cut = rest[..limit]
                .rfind(char::is_whitespace)
                .filter(|&i| i > 0)
                .unwrap_or(limit);
            out.push(rest[..cut].trim().to_owned());
            rest = rest[cut..].trim_start();
        }
        current.push_str(rest);
    }
    flush(&mut current, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_loses_its_markup_scripts_and_styles() {
        let page = "<!doctype html><html><head><style>p{color:red}</style><script>var x = '<p>';</script>\
                    <title>T</title></head><body><h1>Hello &amp; welcome</h1>\n<p>First\n  paragraph.</p><p>Second</p></body></html>";
        let text = text_of(page.as_bytes(), Some("text/html; charset=utf-8")).unwrap();
        assert!(
            !text.contains('<') && !text.contains("color") && !text.contains("var x"),
            "{text:?}"
        );
        assert!(text.contains("Hello & welcome"), "{text:?}");
        assert!(text.contains("First paragraph."), "{text:?}");
    }

    #[test]
    fn binary_content_has_no_text() {
        assert_eq!(text_of(b"%PDF-1.7\0\x01\x02", Some("application/pdf")), None);
        assert_eq!(text_of(&[0xff, 0xfe, 0x00], None), None);
        assert_eq!(
            text_of(b"plain words", Some("text/plain")).as_deref(),
            Some("plain words")
        );
    }

    #[test]
    fn chunks_keep_paragraphs_together_and_cut_long_ones_at_spaces() {
        let short = "one\n\ntwo\n\nthree";
        assert_eq!(chunks(short), vec!["one\n\ntwo\n\nthree"]);
        let long = "word ".repeat(500);
        let cut = chunks(&long);
        assert!(cut.len() >= 3, "{}", cut.len());
        assert!(
            cut.iter()
                .all(|c| c.chars().count() <= CHUNK_CHARS && !c.starts_with(' '))
        );
        assert_eq!(cut.join(" ").split_whitespace().count(), 500);
        let unbroken = "x".repeat(2500);
        assert_eq!(
            chunks(&unbroken).iter().map(String::len).collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        assert!(chunks("  \n\n ").is_empty());
    }
}
