//! Measures how long a slot file with many keys takes to open: warm (in the page cache) and cold.
//!
//! ```text
//! cargo run --release -p parley-keys --example open_million [KEYS] [FOLDER]
//! ```
//!
//! KEYS defaults to 1,000,000; FOLDER to a temporary one (the file is about 256 bytes a key).
//! "Cold" asks the kernel to drop the file's cached pages first (`posix_fadvise(DONTNEED)`),
//! which affects this file only. It also reports the resident memory the open adds (the index)
//! and how long a `get` takes.

use std::time::{Duration, Instant};

use parley_domain::{ConversationId, KeyOwner, Timestamp};
use parley_keys::{KeyStore, MasterKey, SlotFileKeyStore};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let keys: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000_000);
    let temp = tempfile::tempdir()?;
    let folder = args
        .next()
        .map(Into::into)
        .unwrap_or_else(|| temp.path().to_owned());
    let path = folder.join("keys.slots");
    let master = MasterKey::generate();

    let started = Instant::now();
    let store = SlotFileKeyStore::create(&path, master.clone()).await?;
    let mut sample = Vec::new();
    for start in (0..keys).step_by(10_000) {
        let batch: Vec<_> = (start..keys.min(start + 10_000))
            .map(|_| KeyOwner::from(ConversationId::from_random(rand::random())))
            .collect();
        store.create_many(&batch, Timestamp::now()).await?;
        sample.push(batch[0].clone());
    }
    drop(store);
    let size = std::fs::metadata(&path)?.len();
    println!(
        "wrote {keys} keys in {:.1?} ({} MiB file)",
        started.elapsed(),
        size / (1 << 20)
    );

    let mut warm = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let store = SlotFileKeyStore::open(&path, master.clone()).await?;
        warm.push(started.elapsed());
        assert_eq!(store.status().await?.keys, keys as u64);
    }
    warm.sort();
    println!(
        "open, warm: median {:.1?}, best {:.1?}, worst {:.1?}",
        warm[2], warm[0], warm[4]
    );

    let mut cold = Vec::new();
    for _ in 0..3 {
        let file = std::fs::File::open(&path)?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
        drop(file);
        let started = Instant::now();
        let store = SlotFileKeyStore::open(&path, master.clone()).await?;
        cold.push(started.elapsed());
        drop(store);
    }
    cold.sort();
    println!(
        "open, cold (file evicted from the page cache): median {:.1?}",
        cold[1]
    );

    let before = resident_kib()?;
    let store = SlotFileKeyStore::open(&path, master.clone()).await?;
    let after = resident_kib()?;
    println!(
        "resident memory added by an open store: {} MiB",
        (after - before) / 1024
    );

    let started = Instant::now();
    let mut found = 0;
    for _ in 0..100 {
        for conversation in &sample {
            found += usize::from(store.get(conversation).await?.is_some());
        }
    }
    let per_get = started.elapsed() / u32::try_from(100 * sample.len())?;
    assert_eq!(found, 100 * sample.len());
    println!(
        "get: {:.1?} each (a positioned read and an unwrap)",
        per_get.max(Duration::from_nanos(1))
    );
    Ok(())
}

/// The process's resident set size from /proc, in KiB.
fn resident_kib() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: 0 kB");
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}
