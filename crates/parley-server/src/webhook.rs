//! Webhook delivery: the outbox runner that POSTs each event to its callback URL, in order, until it lands.

use parley_store::ConversationStore;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use parley_domain::Timestamp;
use parley_store::Delivery;
use sha2::Sha256;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::state::AppState;

/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// First retry delay; each later one doubles (with jitter), up to an hour.
    pub retry_base: Duration,
    /// How long after the first attempt a delivery keeps being retried before it is given up.
    pub retry_for: Duration,
    /// Deliveries in flight at once, across all receivers.
    pub max_in_flight: usize,
    /// Refuse callback URLs that resolve to loopback, private or link-local addresses.
    pub deny_private: bool,
}

/// The HTTP client for deliveries: no redirects (a 3xx is a failure), no connection reuse surprises.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("parley/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Delivers due webhooks until `shutdown` turns true; attempts in flight finish first.
pub async fn run(state: AppState, client: reqwest::Client, mut shutdown: watch::Receiver<bool>) {
    let settings = state.settings.webhooks.clone();
    let permits = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
    let mut in_flight = JoinSet::new();
    while !*shutdown.borrow() {
        while in_flight.try_join_next().is_some() {}
        let free = permits.available_permits();
        if free > 0 {
            let now = Timestamp::now();
            match state
                .store
                .claim_deliveries(now, state.settings.lease_from(now), free as u32)
                .await
            {
                Ok(batch) if !batch.is_empty() => {
                    for delivery in batch {
                        let permit = permits
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed");
                        let (state, client) = (state.clone(), client.clone());
                        in_flight.spawn(async move {
                            attempt(&state, &client, delivery).await;
                            drop(permit);
                        });
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    state.disk.notice(&e);
                    tracing::warn!(error = %e, "claiming webhook deliveries failed");
                }
            }
        }
        tokio::select! {
            () = state.wake_deliveries.notified() => {}
            () = tokio::time::sleep(state.settings.job_poll_interval) => {}
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = shutdown.changed() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// One attempt at one delivery, and its bookkeeping.
async fn attempt(state: &AppState, client: &reqwest::Client, delivery: Delivery) {
    let settings = &state.settings.webhooks;
    let outcome = post(client, settings, &delivery).await;
    let now = Timestamp::now();
    let recorded = match outcome {
        Ok(()) => {
            tracing::info!(
                delivery.id = %delivery.id,
                conversation.id = %delivery.conversation_id,
                event_type = %delivery.event_type,
                attempts = delivery.attempts,
                "webhook delivered"
            );
            state.store.delivery_succeeded(&delivery, now).await
        }
        Err(error) => {
            let elapsed =
                Duration::from_micros((now.as_micros() - delivery.retry_from.as_micros()).max(0) as u64);
            if elapsed >= settings.retry_for {
                tracing::warn!(
                    delivery.id = %delivery.id,
                    conversation.id = %delivery.conversation_id,
                    event_type = %delivery.event_type,
                    attempts = delivery.attempts,
                    error = %error,
                    "webhook given up"
                );
                state.store.delivery_failed(&delivery, &error, None, now).await
            } else {
                let wait = Backoff {
                    base: settings.retry_base,
                    max: MAX_BACKOFF,
                }
                .jittered(delivery.attempts);
                tracing::info!(
                    delivery.id = %delivery.id,
                    attempts = delivery.attempts,
                    error = %error,
                    retry_in_ms = wait.as_millis() as u64,
                    "webhook attempt failed"
                );
                let retry_at = now.plus_millis(wait.as_millis() as i64);
                state
                    .store
                    .delivery_failed(&delivery, &error, Some(retry_at), now)
                    .await
            }
        }
    };
    if let Err(e) = recorded {
        state.disk.notice(&e);
        tracing::warn!(delivery.id = %delivery.id, error = %e, "recording a delivery attempt failed; the lease will expire");
    }
    // The next event of this conversation may be due now.
    state.wake_deliveries.notify_one();
}

async fn post(client: &reqwest::Client, settings: &WebhookSettings, d: &Delivery) -> Result<(), String> {
    if settings.deny_private {
        check_public(&d.url).await?;
    }
    let mut req = client
        .post(&d.url)
        .timeout(settings.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("X-Parley-Delivery-Id", &d.id)
        .header("X-Parley-Event-Type", &d.event_type)
        .body(d.payload.clone());
    if let Some(secret) = &d.signing_secret {
        let t = chrono::Utc::now().timestamp();
        req = req.header(
            "X-Parley-Signature",
            format!("t={t},v1={}", sign(secret, t, &d.payload)),
        );
    }
    let res = req.send().await.map_err(describe)?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("receiver answered HTTP {}", res.status().as_u16()))
    }
}

/// `hex(HMAC-SHA256(secret, "{t}.{body}"))`: what a receiver recomputes to verify a delivery.
pub fn sign(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        // The chain names the cause without the URL, which the row already holds.
        let e = e.without_url();
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        msg
    }
}

/// Refuses URLs whose host resolves to an address a shared deployment must not reach.
pub async fn check_public(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL: {e}"))?;
    public_addrs(&parsed).await.map(drop).map_err(|e| e.to_string())
}

/// Why a URL's host may not be reached.
#[derive(Debug, thiserror::Error)]
pub enum NotPublic {
    /// No host, or one that resolves to a loopback, private or link-local address.
    #[error("{0}")]
    Refused(String),
    /// The name did not resolve (perhaps only for now).
    #[error("{0}")]
    Unresolved(String),
}

/// The addresses `url`'s host resolves to, all of them public; a caller connects to these and
/// no others, so a second lookup cannot answer differently.
pub async fn public_addrs(url: &url::Url) -> Result<Vec<std::net::SocketAddr>, NotPublic> {
    let host = url
        .host_str()
        .ok_or_else(|| NotPublic::Refused("URL has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| NotPublic::Unresolved(format!("cannot resolve {host}: {e}")))?
        .collect();
    for addr in &addrs {
        if !is_public(addr.ip()) {
            return Err(NotPublic::Refused(format!(
                "{host} resolves to the non-public address {}",
                addr.ip()
            )));
        }
    }
    Ok(addrs)
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_time_dot_body() {
        // Computed independently with Python's hmac module.
        let sig = sign("key", 1, "{}");
        assert_eq!(
            sig,
            "1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
        assert_ne!(sig, sign("key", 2, "{}"));
        assert_ne!(sig, sign("other", 1, "{}"));
    }

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
