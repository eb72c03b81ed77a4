//! Running out of disk space: the reserve file, the remembered full disk, and when writes resume.
//!
//! A write that fails for lack of space (SQLite's SQLITE_FULL, PostgreSQL's 53100, ENOSPC from
//! the blob folder) marks the disk full. From then on creates and call finalisation, the writes
//! that grow the store, are refused up front with 503, while ends, deletes, room changes and job
//! and delivery bookkeeping go on. With an embedded database, the reserve file beside it is
//! deleted at that moment, so those small writes (and SQLite's WAL) find room even on a disk that
//! was 100% full. `/health` answers 503 while the mark stands. See docs/ARCHITECTURE.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use parley_blobs::{BlobError, Blobs};
use parley_domain::Timestamp;
use parley_store::{ConversationStore, StoreError};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// How often, at most, a full disk is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// The reserve is written in chunks of this size.
const CHUNK: usize = 1 << 20;

/// What this process knows about free space: the reserve, and whether the disk is full.
#[derive(Debug)]
pub struct Disk {
    reserve: Option<Reserve>,
    full: AtomicBool,
    /// When the full disk was last looked at; held while looking, so one request does it at a time.
    checked: tokio::sync::Mutex<Option<Instant>>,
}

/// A file that holds space in the data directory until the disk fills.
#[derive(Debug)]
struct Reserve {
    path: PathBuf,
    bytes: u64,
}

impl Disk {
    /// No reserve (a shared database, or `--disk-reserve-bytes 0`): only remembers a full disk.
    pub fn without_reserve() -> Self {
        Self {
            reserve: None,
            full: AtomicBool::new(false),
            checked: tokio::sync::Mutex::new(None),
        }
    }

    /// Keeps a reserve of `bytes` at `path`, writing it now if it is missing.
    ///
    /// Without room for the reserve and as much again, the disk starts out full.
    pub async fn with_reserve(path: PathBuf, bytes: u64) -> anyhow::Result<Self> {
        if bytes == 0 {
            // A reserve from an earlier start would hold its space for nothing.
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing the disk reserve {}", path.display()));
                }
                _ => return Ok(Self::without_reserve()),
            }
        }
        let reserve = Reserve { path, bytes };
        let whole = reserve
            .refill()
            .await
            .with_context(|| format!("writing the disk reserve {}", reserve.path.display()))?;
        if !whole {
            tracing::warn!(
                path = %reserve.path.display(),
                reserve.bytes = bytes,
                "not enough free space for the disk reserve and as much again: creates get 503 until there is"
            );
        }
        Ok(Self {
            reserve: Some(reserve),
            full: AtomicBool::new(!whole),
            checked: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether a write failed for lack of space and no check has found room since.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// Remembers that a write failed for lack of space, and gives up the reserve.
    pub fn mark_full(&self) {
        if self.full.swap(true, Ordering::SeqCst) {
            return;
        }
        // The first look comes a little later: the write that failed may have been large, and a
        // tiny probe right after it could succeed.
        if let Ok(mut checked) = self.checked.try_lock() {
            *checked = Some(Instant::now());
        }
        let Some(reserve) = &self.reserve else {
            tracing::warn!("the disk is full: creates get 503 until a write succeeds again");
            return;
        };
        match std::fs::remove_file(&reserve.path) {
            Ok(()) => tracing::warn!(
                reserve.bytes = reserve.bytes,
                "the disk is full: released the reserve so ends, deletes and background work go on; \
                 creates get 503 until there is room again"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("the disk is full and the reserve is already gone: creates get 503")
            }
            Err(e) => tracing::warn!(error = %e, "the disk is full; releasing the reserve failed"),
        }
    }

    /// Marks the disk full if `error`, or any error in its chain, is a full disk; true if so.
    pub fn notice(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        let full = is_disk_full(error);
        if full {
            self.mark_full();
        }
        full
    }

    /// Ok when writes that grow the store may go ahead.
    ///
    /// While the disk is marked full, at most once per [`RECHECK`] this looks again: the reserve
    /// is written back (only with room for it and as much again, so the disk does not fill at
    /// once), then one tiny write goes to the database and one to the blob store. If all work,
    /// the mark is lifted. Otherwise the answer is [`StoreError::disk_full`].
    pub async fn check_writable(
        &self,
        store: &dyn ConversationStore,
        blobs: &Blobs,
    ) -> Result<(), StoreError> {
        if !self.is_full() {
            return Ok(());
        }
        // Someone else is looking right now: their answer will do for the next request.
        let Ok(mut checked) = self.checked.try_lock() else {
            return Err(StoreError::disk_full());
        };
        if checked.is_some_and(|at| at.elapsed() < RECHECK) {
            return Err(StoreError::disk_full());
        }
        *checked = Some(Instant::now());
        if let Some(reserve) = &self.reserve {
            match reserve.refill().await {
                Ok(true) => {}
                Ok(false) => return Err(StoreError::disk_full()),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "writing the disk reserve back failed");
                    return Err(StoreError::disk_full());
                }
            }
        }
        store.probe_write(Timestamp::now()).await?;
        blobs.probe_write().await.map_err(|e| match e {
            BlobError::DiskFull => StoreError::disk_full(),
            other => StoreError::Unavailable(other.to_string()),
        })?;
        self.full.store(false, Ordering::SeqCst);
        *checked = None;
        tracing::info!("there is room on the disk again: creates resume");
        Ok(())
    }
}

/// Whether `error` or any error in its chain says the disk is full.
pub fn is_disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_disk_full)
            || matches!(e.downcast_ref::<BlobError>(), Some(BlobError::DiskFull))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

impl Reserve {
    /// Makes sure the reserve file is whole; false when there is not room for it and as much again.
    async fn refill(&self) -> anyhow::Result<bool> {
        let (path, bytes) = (self.path.clone(), self.bytes);
        tokio::task::spawn_blocking(move || refill(&path, bytes))
            .await
            .context("joining the reserve writer")?
    }
}

fn refill(path: &Path, bytes: u64) -> anyhow::Result<bool> {
    let existing = match std::fs::metadata(path) {
        Ok(meta) if meta.len() == bytes => return Ok(true),
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stat =
        rustix::fs::statvfs(dir).with_context(|| format!("reading free space of {}", dir.display()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize) + existing;
    // Room for the reserve and as much again: written back into a nearly full disk, the reserve
    // would fill it at once, and the disk would flip between full and not.
    if free < bytes.saturating_mul(2) {
        return Ok(false);
    }
    match write_reserve(path, bytes) {
        Ok(()) => {
            tracing::info!(path = %path.display(), reserve.bytes = bytes, "disk reserve in place");
            Ok(true)
        }
        Err(e) => {
            let _ = std::fs::remove_file(path);
            if e.kind() == std::io::ErrorKind::StorageFull {
                Ok(false)
            } else {
                Err(e.into())
            }
        }
    }
}

/// Writes `bytes` of random data: zeros would take no space on a compressing filesystem.
fn write_reserve(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let mut chunk = vec![0u8; CHUNK];
    // Incompressible is all it needs, not unpredictable: a small fast generator keeps the first
    // start quick (the cryptographic one takes seconds for 64 MiB in a debug build).
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        rng.fill_bytes(&mut chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_recognised_anywhere_in_an_error_chain() {
        let store = anyhow::Error::new(StoreError::disk_full()).context("storing call results");
        assert!(is_disk_full(store.as_ref()));
        let blob = anyhow::Error::new(BlobError::DiskFull).context("storing recording");
        assert!(is_disk_full(blob.as_ref()));
        let other = anyhow::Error::new(StoreError::Unavailable("pool timed out".into()));
        assert!(!is_disk_full(other.as_ref()));
    }

    #[tokio::test]
    async fn the_reserve_is_written_released_when_the_disk_fills_and_written_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.reserve");
        let disk = Disk::with_reserve(path.clone(), 64 << 10).await.unwrap();
        assert!(!disk.is_full());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 10);

        assert!(disk.notice(&StoreError::disk_full()));
        assert!(disk.is_full());
        assert!(!path.exists(), "the reserve is given up");
        assert!(!disk.notice(&StoreError::Unavailable("pool timed out".into())));

        // Written back by a later check, here directly (the check also needs a store).
        assert!(disk.reserve.as_ref().unwrap().refill().await.unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 10);
    }

    #[tokio::test]
    async fn turning_the_reserve_off_removes_an_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.reserve");
        Disk::with_reserve(path.clone(), 64 << 10).await.unwrap();
        let disk = Disk::with_reserve(path.clone(), 0).await.unwrap();
        assert!(!path.exists());
        assert!(disk.reserve.is_none());
    }

    #[tokio::test]
    async fn without_room_for_twice_the_reserve_the_disk_starts_out_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.reserve");
        // No disk has an exabyte free.
        let disk = Disk::with_reserve(path.clone(), 1 << 60).await.unwrap();
        assert!(disk.is_full());
        assert!(!path.exists());
    }
}
