//! The CPU that sealing adds to a request: create, GET, verbose GET and a recording download.
//!
//! `cargo run --release -p parley-server --example seal_cost`
//!
//! Measures process CPU time (all threads, so the key store's blocking-pool work counts, and
//! other processes on the machine do not) per operation of exactly what `SealedStore` and the
//! recording download do on top of an unsealed server, with the embedded key store on a
//! temporary folder. Numbers go to `docs/PERFORMANCE.md`.

use std::time::Duration;

use parley_domain::replica::{self, RecordingLocation};
use parley_domain::{Conversation, ConversationId, Status, Timestamp};
use parley_keys::{KeyStore, MasterKey, SlotFileKeyStore};
use parley_server::sealed::{self, SealedStore};
use rustix::time::{ClockId, clock_gettime};

/// CPU time of the whole process so far.
fn cpu() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// A conversation as `bench/seed.py` makes them, with a context of a realistic length.
fn conversation(id: ConversationId) -> Conversation {
    let now = Timestamp::now();
    let context = "You are a friendly interviewer for a software engineering role. Ask about the \
                   candidate's recent projects, how they handled a production incident, and how \
                   they review code. Keep each question short, wait for the answer, and follow up \
                   once on anything vague. Close by asking whether they have questions for us.";
    let request = serde_json::json!({
        "conversation_name": "bench",
        "conversational_context": context,
        "properties": { "enable_recording": true },
    });
    Conversation {
        id,
        account: "default".into(),
        status: Status::Ended,
        conversation_name: Some("bench".into()),
        callback_url: None,
        replica_id: "r90bbd427f71".into(),
        persona_id: "pdac61133ac5".into(),
        conversational_context: Some(context.into()),
        custom_greeting: Some("Hi! Thanks for making the time today.".into()),
        test_mode: false,
        enable_recording: true,
        meeting_token: None,
        request_json: request.to_string(),
        created_at: now,
        updated_at: now,
        joined_at: Some(now),
        ended_at: Some(now.plus_secs(60)),
        shutdown_reason: Some("end_conversation_endpoint_hit".into()),
        deleted_at: None,
        max_call_duration: 3600,
        participant_left_timeout: 60,
        participant_absent_timeout: 300,
        participants_present: 0,
        participant_joined_at: None,
        participant_left_at: None,
    }
}

fn report(what: &str, n: u32, spent: Duration) {
    let per = spent / n;
    println!("| {what} | {:.1} µs |", per.as_nanos() as f64 / 1000.0);
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let keys = SlotFileKeyStore::create(dir.path().join("keys.slots"), MasterKey::generate()).await?;
    const N: u32 = 2_000;
    let ids: Vec<ConversationId> = (0..N)
        .map(|_| ConversationId::from_random(rand::random()))
        .collect();
    println!("| operation | process CPU per operation |");
    println!("|---|--:|");

    // Create: a fresh key (written and synced; the sync's wait is not CPU) and the sealed fields.
    let start = cpu();
    let mut sealed = Vec::with_capacity(ids.len());
    for id in &ids {
        let key = keys.create(&id.into(), Timestamp::now()).await?;
        sealed.push(SealedStore::seal_conversation(
            &key.key,
            &conversation(id.clone()),
        ));
    }
    report("create: make and store the key, seal 4 fields", N, cpu() - start);
    let start = cpu();
    for id in &ids {
        std::hint::black_box(conversation(id.clone()));
    }
    let fixture = cpu() - start;
    report("(building the fixture, included above)", N, fixture);

    // GET: the key and the 4 fields opened.
    let start = cpu();
    for c in &sealed {
        let key = keys.get(&(&c.id).into()).await?;
        std::hint::black_box(SealedStore::open_conversation(key.as_ref(), c.clone()));
    }
    report("GET: read the key, open 4 fields", N, cpu() - start);

    // Verbose GET: the same, plus the content events (transcript, analysis, recording link).
    let location = RecordingLocation {
        bucket_name: "parley".into(),
        key: "conversations/x/assets/recording.wav".into(),
        uri: "http://127.0.0.1:8080/v2/conversations/x/recording".into(),
        duration_secs: 60,
    };
    let mut events = Vec::with_capacity(sealed.len());
    for c in &sealed {
        let key = keys.get(&(&c.id).into()).await?.expect("a key");
        let plain = replica::after_end_events(&conversation(c.id.clone()), Timestamp::now(), Some(&location));
        let sealed_events: Vec<_> = plain
            .iter()
            .map(|e| SealedStore::seal_event(&key.key, &c.id, e))
            .collect();
        events.push(sealed_events);
    }
    let start = cpu();
    for (c, evs) in sealed.iter().zip(&events) {
        let key = keys.get(&(&c.id).into()).await?;
        std::hint::black_box(SealedStore::open_conversation(key.as_ref(), c.clone()));
        for e in evs {
            std::hint::black_box(SealedStore::open_properties(
                key.as_ref().map(|k| &k.key),
                &c.id,
                e.event_type.as_str(),
                e.properties.clone(),
            ));
        }
    }
    report("verbose GET: the above and 3 content events", N, cpu() - start);

    // Recording download: open a 60 s and a 300 s recording (8 kHz, 16-bit mono).
    for secs in [60, 300] {
        let c = conversation(ids[0].clone());
        let wav = replica::recording_wav(&c, secs, 7);
        let key = keys.get(&(&c.id).into()).await?.expect("a key");
        let blob_key = format!("conversations/{}/assets/recording.wav", c.id);
        let stored = sealed::seal_blob(&key.key, &c.id, &blob_key, &wav);
        let n = 50;
        let start = cpu();
        for _ in 0..n {
            let key = keys.get(&(&c.id).into()).await?.expect("a key");
            std::hint::black_box(sealed::open_blob(&key.key, &c.id, &blob_key, &stored));
        }
        report(
            &format!(
                "recording download: open a {secs} s recording ({} KiB)",
                wav.len() >> 10
            ),
            n,
            cpu() - start,
        );
    }
    Ok(())
}
