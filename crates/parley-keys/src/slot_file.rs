//! The embedded key store: one file of fixed-size slots, each overwritten in place and fsynced.
//!
//! # Why not a second SQLite database
//!
//! Deleting a row from SQLite does not remove its bytes. A b-tree page that is rebuilt leaves a
//! stale copy of a moved cell in the page's unallocated space (`secure_delete` does not zero it:
//! hard-deleted content was found there under load), a freed page keeps its bytes until reused, and the
//! WAL keeps every frame that ever held the row until a checkpoint overwrites it, which may be
//! never for a given offset. A key table there would leak wrapped keys the same way the content
//! did. Here each key has exactly one place in the file, and destroying it writes zeros over
//! that place and fsyncs before returning: no page is rebuilt, no log holds an old version.
//! (What the filesystem or an SSD's flash translation layer copies underneath is out of reach of
//! any file format; see `docs/THREAT-MODEL.md`.)
//!
//! # Crash safety
//!
//! Every write is of a whole 256-byte slot at a 256-aligned offset (never straddling a 512-byte
//! sector) or a whole 512-byte header copy, followed by `sync_data` before the operation returns.
//! A write that a crash cuts short fails its CRC-32C and reads as torn: it is reported and wiped
//! when the file is next opened, never read as a key (the wrapped key is also authenticated, so
//! even a torn write that kept its CRC could not unwrap as a different key). A slot being
//! rewrapped is never overwritten while it holds the only copy: the new slot is written and
//! synced first, then the old one is zeroed (copy on write), so a crash during a rotation leaves
//! at worst two copies of one key, and opening the file wipes one. Header updates alternate
//! between two copies with a sequence number, so a torn header write leaves the previous one.
//!
//! # Concurrency and start-up
//!
//! One process owns the file: opening takes an exclusive advisory lock (`flock`) and fails with
//! [`KeyError::Locked`] when another store has it. Inside, writes are serialised by a mutex and
//! run on Tokio's blocking pool (they wait for the disk); reads go through an in-memory index
//! built at open and read one slot each. Opening scans the file sequentially in 4 MiB reads;
//! a million keys open in well under a second (`examples/open_million.rs`).

pub mod layout;

mod index;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::ops::ControlFlow;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use parley_domain::{KeyOwner, Timestamp};

use self::index::Index;
use self::layout::{HEADER_LEN, Header, Rotation, SLOT_LEN, SLOTS_OFFSET, SlotRead, SlotView, Wrap};
use crate::error::{KeyError, KeyResult};
use crate::id::KeyId;
use crate::master::{MasterKey, MasterKeyId};
use crate::seal::DataKey;
use crate::store::{
    ConversationKey, ImportedKey, KeyInfo, KeyStore, KeyStoreStatus, Progress, RotationPhase,
    RotationProgress,
};

/// Slots read per `read_at` when scanning: 4 MiB.
const SCAN_SLOTS: u32 = 16_384;

/// Slots a rotation moves per sync.
const ROTATION_BATCH: usize = 256;

/// The embedded key store: a slot file, owned by one process.
pub struct SlotFileKeyStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    file: File,
    /// Lock order: `writer`, then `keys`, then `index`.
    writer: Mutex<Writer>,
    keys: RwLock<Keys>,
    index: RwLock<Index>,
    /// Set by a failed write: after a failed fsync nobody knows what is on disk, so the store
    /// refuses everything until it is opened again (PostgreSQL takes the same view).
    stopped: Mutex<Option<String>>,
    repaired_at_open: Vec<String>,
}

/// The master keys this process holds.
struct Keys {
    current: MasterKey,
    /// The key a rotation in this process is wrapping to: new keys are wrapped under both.
    next: Option<MasterKey>,
}

/// What only the writer touches.
struct Writer {
    header: Header,
    /// Slots in the file (whole ones).
    slot_count: u32,
    /// Free slots, lowest first, so the file stays compact.
    free: BinaryHeap<Reverse<u32>>,
}

/// What a rotation pass does to a slot.
#[derive(Clone, Copy)]
enum Pass {
    /// Add a copy wrapped under this key (dropping any other non-current copy).
    Rewrap(MasterKeyId),
    /// Keep only the copy wrapped under the current key.
    Retire,
}

impl SlotFileKeyStore {
    /// Creates a new, empty slot file at `path` (mode 0600) whose keys `master` wraps.
    ///
    /// Fails if the file exists: opening an existing store is [`open`](Self::open)'s job, and
    /// replacing one would lose every key in it.
    pub async fn create(path: impl AsRef<Path>, master: MasterKey) -> KeyResult<Self> {
        let path = path.as_ref().to_owned();
        blocking(move || Inner::open(path, master, true))
            .await
            .map(|inner| Self {
                inner: Arc::new(inner),
            })
    }

    /// Opens the slot file at `path` with the master key its keys are wrapped under.
    ///
    /// Refuses another master key ([`KeyError::WrongMasterKey`], or [`KeyError::RotatedOut`]
    /// for a master key rotated out), a missing file, and a file another process has open.
    /// Torn slots and leftover copies from an interrupted rotation are wiped, logged and listed
    /// in [`KeyStoreStatus::repaired_at_open`].
    pub async fn open(path: impl AsRef<Path>, master: MasterKey) -> KeyResult<Self> {
        let path = path.as_ref().to_owned();
        blocking(move || Inner::open(path, master, false))
            .await
            .map(|inner| Self {
                inner: Arc::new(inner),
            })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> KeyResult<T> + Send + 'static,
    ) -> KeyResult<T> {
        let inner = Arc::clone(&self.inner);
        blocking(move || f(&inner)).await
    }

    /// One rotation pass: list the slots to change, move them in batches, report progress.
    async fn rotation_pass(&self, pass: Pass, progress: Progress<'_>) -> KeyResult<()> {
        let phase = match pass {
            Pass::Rewrap(_) => RotationPhase::Rewrap,
            Pass::Retire => RotationPhase::Retire,
        };
        loop {
            let (todo, total) = self.run(move |inner| inner.slots_needing(pass)).await?;
            let mut done = total.saturating_sub(todo.len() as u64);
            for batch in todo.chunks(ROTATION_BATCH) {
                let batch = batch.to_vec();
                done += batch.len() as u64;
                self.run(move |inner| inner.move_slots(&batch, pass)).await?;
                let report = RotationProgress {
                    phase,
                    done: done.min(total),
                    total,
                };
                if progress(report) == ControlFlow::Break(()) {
                    return Err(KeyError::RotationInterrupted);
                }
            }
            // Under the writer lock: nothing left means nothing can be left.
            if self.run(move |inner| inner.finish_pass(pass)).await? {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl KeyStore for SlotFileKeyStore {
    async fn create(&self, owner: &KeyOwner, now: Timestamp) -> KeyResult<ConversationKey> {
        let owners = vec![owner.clone()];
        let mut keys = self.run(move |inner| inner.create(&owners, now)).await?;
        Ok(keys.pop().expect("one key per owner"))
    }

    async fn create_many(&self, owners: &[KeyOwner], now: Timestamp) -> KeyResult<Vec<ConversationKey>> {
        let owners = owners.to_vec();
        self.run(move |inner| inner.create(&owners, now)).await
    }

    async fn import(&self, keys: &[ImportedKey]) -> KeyResult<u64> {
        let keys = keys.to_vec();
        self.run(move |inner| inner.import(&keys)).await
    }

    async fn get(&self, owner: &KeyOwner) -> KeyResult<Option<ConversationKey>> {
        // One positioned read of a slot the page cache almost always holds: cheaper inline than
        // a hop to the blocking pool.
        self.inner.get(owner)
    }

    async fn destroy(&self, owner: &KeyOwner) -> KeyResult<Option<KeyId>> {
        let owner = owner.clone();
        self.run(move |inner| inner.destroy(&owner)).await
    }

    async fn list(&self) -> KeyResult<Vec<KeyInfo>> {
        self.run(Inner::list).await
    }

    async fn rotate(&self, to: MasterKey, progress: Progress<'_>) -> KeyResult<()> {
        if let Some(target) = self.run(move |inner| inner.begin_rotation(to)).await? {
            self.rotation_pass(Pass::Rewrap(target), progress).await?;
        }
        self.rotation_pass(Pass::Retire, progress).await
    }

    async fn close(&self) {
        // Not on the blocking pool: a write under way holds the writer lock for one sync.
        let inner = Arc::clone(&self.inner);
        let closed = tokio::task::spawn_blocking(move || {
            let _writer = inner
                .writer
                .lock()
                .expect("a writer never panics while holding the lock");
            *inner.stopped.lock().expect("stopped lock") =
                Some(format!("{} was closed", inner.path.display()));
            rustix::fs::flock(&inner.file, rustix::fs::FlockOperation::Unlock)
        })
        .await;
        if let Ok(Err(e)) = closed {
            tracing::warn!(key_store.path = %self.inner.path.display(), error = %e, "releasing the key store's lock failed");
        }
    }

    async fn status(&self) -> KeyResult<KeyStoreStatus> {
        self.run(|inner| {
            let writer = inner.lock_writer()?;
            Ok(KeyStoreStatus {
                master_key_id: writer.header.master,
                unfinished_rotation: writer.header.unfinished_rotation(),
                keys: inner.index.read().expect("index lock").len() as u64,
                repaired_at_open: inner.repaired_at_open.clone(),
            })
        })
        .await
    }
}

impl Inner {
    fn open(path: PathBuf, master: MasterKey, create: bool) -> KeyResult<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound if !create => KeyError::Missing(path.clone()),
                _ if create => KeyError::io(format!("creating the key store {}", path.display()), e),
                _ => KeyError::io(format!("opening the key store {}", path.display()), e),
            })?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(KeyError::Locked(path)),
            Err(e) => return Err(KeyError::io(format!("locking {}", path.display()), e.into())),
        }
        if create {
            crate::master::sync_parent_dir(&path)
                .map_err(|e| KeyError::io("syncing the key store's folder", e))?;
        }
        let len = file
            .metadata()
            .map_err(|e| KeyError::io(format!("reading {}", path.display()), e))?
            .len();
        let mut repaired = Vec::new();
        let header = match read_header(&file, len)? {
            Some(header) => header,
            // No intact header and no room for a slot: a creation cut short, which cannot have
            // held a key. Finish creating it.
            None if len <= SLOTS_OFFSET => {
                if !create {
                    repaired.push("the file's creation had been cut short; it was finished".into());
                }
                let header = Header {
                    sequence: 0,
                    master: master.id(),
                    rotation: Rotation::None,
                    previous: None,
                };
                write_header(&file, header)?;
                Header {
                    sequence: 1,
                    ..header
                }
            }
            None => {
                return Err(KeyError::Corrupt(format!(
                    "neither header copy of {} is intact",
                    path.display()
                )));
            }
        };
        if header.master != master.id() {
            return Err(KeyError::master_mismatch(
                header.master,
                header.unfinished_rotation(),
                header.previous,
                master.id(),
            ));
        }
        let slot_count = u32::try_from(len.saturating_sub(SLOTS_OFFSET) / SLOT_LEN as u64)
            .map_err(|_| KeyError::Corrupt("more slots than a slot file can have".into()))?;
        let (index, free) = scan_at_open(&file, slot_count, &header, &mut repaired)?;
        for line in &repaired {
            tracing::warn!(key_store.path = %path.display(), "{line}");
        }
        Ok(Self {
            path,
            file,
            writer: Mutex::new(Writer {
                header,
                slot_count,
                free,
            }),
            keys: RwLock::new(Keys {
                current: master,
                next: None,
            }),
            index: RwLock::new(index),
            stopped: Mutex::new(None),
            repaired_at_open: repaired,
        })
    }

    fn lock_writer(&self) -> KeyResult<MutexGuard<'_, Writer>> {
        if let Some(why) = self.stopped.lock().expect("stopped lock").as_ref() {
            return Err(KeyError::Stopped(why.clone()));
        }
        Ok(self
            .writer
            .lock()
            .expect("a writer never panics while holding the lock"))
    }

    /// Runs a write; a failure stops the store (see `stopped`).
    fn durable(&self, what: &str, f: impl FnOnce() -> std::io::Result<()>) -> KeyResult<()> {
        f().map_err(|e| {
            let why = format!("{what} in {}: {e}", self.path.display());
            tracing::error!(key_store.path = %self.path.display(), "{why}; the key store has stopped");
            *self.stopped.lock().expect("stopped lock") = Some(why.clone());
            KeyError::Stopped(why)
        })
    }

    fn read_slot(&self, slot: u32) -> KeyResult<[u8; SLOT_LEN]> {
        let mut bytes = [0u8; SLOT_LEN];
        self.file
            .read_exact_at(&mut bytes, layout::slot_offset(slot))
            .map_err(|e| KeyError::io(format!("reading slot {slot} of {}", self.path.display()), e))?;
        Ok(bytes)
    }

    /// The slot holding `owner`'s key, and its bytes. The caller holds the writer lock
    /// (so the index cannot change) or an index read lock.
    fn find(&self, index: &Index, owner: &str) -> KeyResult<Option<(u32, [u8; SLOT_LEN])>> {
        for slot in index.candidates(index.hash(owner)) {
            let bytes = self.read_slot(slot)?;
            match layout::decode_slot(&bytes) {
                SlotRead::Live(view) if view.owner == owner => return Ok(Some((slot, bytes))),
                SlotRead::Live(_) => {}
                SlotRead::Empty | SlotRead::Torn => {
                    return Err(KeyError::Corrupt(format!(
                        "slot {slot} of {} changed underneath the store",
                        self.path.display()
                    )));
                }
            }
        }
        Ok(None)
    }

    fn create(&self, owners: &[KeyOwner], now: Timestamp) -> KeyResult<Vec<ConversationKey>> {
        let mut writer = self.lock_writer()?;
        let keys = self.keys.read().expect("keys lock");
        let mut seen = std::collections::HashSet::with_capacity(owners.len());
        {
            let index = self.index.read().expect("index lock");
            for owner in owners {
                if !seen.insert(owner) || self.find(&index, owner.as_str())?.is_some() {
                    return Err(KeyError::AlreadyExists(owner.clone()));
                }
            }
        }
        let made: Vec<ImportedKey> = owners
            .iter()
            .map(|owner| ImportedKey {
                owner: owner.clone(),
                key: ConversationKey {
                    key_id: KeyId::random(),
                    key: DataKey::generate(),
                },
                created_at: now,
            })
            .collect();
        self.place(&mut writer, &keys, made.iter())?;
        Ok(made.into_iter().map(|k| k.key).collect())
    }

    fn import(&self, imported: &[ImportedKey]) -> KeyResult<u64> {
        let mut writer = self.lock_writer()?;
        let keys = self.keys.read().expect("keys lock");
        let mut batch: HashMap<&str, &ImportedKey> = HashMap::with_capacity(imported.len());
        let mut todo = Vec::with_capacity(imported.len());
        {
            let index = self.index.read().expect("index lock");
            for new in imported {
                let owner = &new.owner;
                if let Some(first) = batch.insert(owner.as_str(), new) {
                    // The same owner twice in one batch: fine only as the same key.
                    if !same_key(&first.key, &new.key) {
                        return Err(import_conflict(first.key.key_id, new));
                    }
                    continue;
                }
                let Some((_, bytes)) = self.find(&index, owner.as_str())? else {
                    todo.push(new);
                    continue;
                };
                let SlotRead::Live(view) = layout::decode_slot(&bytes) else {
                    unreachable!("find returns live slots only");
                };
                let held = unwrap_slot(&keys.current, owner, &view)?;
                if !same_key(&held, &new.key) {
                    return Err(import_conflict(held.key_id, new));
                }
            }
        }
        self.place(&mut writer, &keys, todo.iter().copied())?;
        Ok(todo.len() as u64)
    }

    /// Writes each key to a free slot (wrapped under the current master key, and the rotation's
    /// target if this process rotates), syncs once, then indexes them. The caller holds the
    /// writer lock and has checked that none of the owners has a key.
    fn place<'a>(
        &self,
        writer: &mut Writer,
        keys: &Keys,
        new: impl Iterator<Item = &'a ImportedKey>,
    ) -> KeyResult<()> {
        let mut placed = Vec::new();
        for k in new {
            let (owner, key_id) = (&k.owner, k.key.key_id);
            let current = keys.current.wrap_key(owner, key_id, &k.key.key);
            let next = keys
                .next
                .as_ref()
                .map(|next| (next.id(), next.wrap_key(owner, key_id, &k.key.key)));
            let mut wraps = vec![Wrap {
                master: keys.current.id(),
                wrapped: &current,
            }];
            if let Some((id, wrapped)) = &next {
                wraps.push(Wrap { master: *id, wrapped });
            }
            let bytes = layout::encode_slot(owner, key_id, k.created_at.as_micros(), &wraps);
            let slot = self.allocate(writer)?;
            self.durable("writing a new key", || {
                self.file.write_all_at(&bytes, layout::slot_offset(slot))
            })?;
            placed.push((owner, slot));
        }
        if placed.is_empty() {
            return Ok(());
        }
        self.durable("syncing new keys", || self.file.sync_data())?;
        let mut index = self.index.write().expect("index lock");
        for (owner, slot) in placed {
            let hash = index.hash(owner.as_str());
            index.insert(hash, slot);
        }
        Ok(())
    }

    fn get(&self, owner: &KeyOwner) -> KeyResult<Option<ConversationKey>> {
        if let Some(why) = self.stopped.lock().expect("stopped lock").as_ref() {
            return Err(KeyError::Stopped(why.clone()));
        }
        let keys = self.keys.read().expect("keys lock");
        // Held across the read, so that no destroy or move can reuse the slot meanwhile.
        let index = self.index.read().expect("index lock");
        let Some((_, bytes)) = self.find(&index, owner.as_str())? else {
            return Ok(None);
        };
        let SlotRead::Live(view) = layout::decode_slot(&bytes) else {
            unreachable!("find returns live slots only");
        };
        unwrap_slot(&keys.current, owner, &view).map(Some)
    }

    fn destroy(&self, owner: &KeyOwner) -> KeyResult<Option<KeyId>> {
        let mut writer = self.lock_writer()?;
        let found = self.find(&self.index.read().expect("index lock"), owner.as_str())?;
        let Some((slot, bytes)) = found else {
            return Ok(None);
        };
        let SlotRead::Live(view) = layout::decode_slot(&bytes) else {
            unreachable!("find returns live slots only");
        };
        // Out of the index first: from here on nobody reads the slot, and no later `get` can
        // return the key even before the zeros reach the disk.
        {
            let mut index = self.index.write().expect("index lock");
            let hash = index.hash(owner.as_str());
            index.remove(hash, slot);
        }
        self.durable("destroying a key", || {
            self.file
                .write_all_at(&[0; SLOT_LEN], layout::slot_offset(slot))?;
            self.file.sync_data()
        })?;
        writer.free.push(Reverse(slot));
        Ok(Some(view.key_id))
    }

    fn list(&self) -> KeyResult<Vec<KeyInfo>> {
        let writer = self.lock_writer()?;
        let mut keys = Vec::new();
        scan(&self.file, 0, writer.slot_count, |_, read| {
            if let SlotRead::Live(view) = read {
                let owner = KeyOwner::parse(view.owner)
                    .map_err(|_| KeyError::Corrupt("a slot holds a malformed key owner".into()))?;
                keys.push(KeyInfo {
                    owner,
                    key_id: view.key_id,
                    created_at: Timestamp::from_micros(view.created_at),
                });
            }
            Ok(())
        })?;
        keys.sort_by(|a, b| (a.created_at, &a.owner).cmp(&(b.created_at, &b.owner)));
        Ok(keys)
    }

    /// Records the start of a rotation to `to`; returns its id when keys need rewrapping, `None`
    /// when the store already uses `to` (then only the retiring pass is left, if anything).
    fn begin_rotation(&self, to: MasterKey) -> KeyResult<Option<MasterKeyId>> {
        let mut writer = self.lock_writer()?;
        let mut keys = self.keys.write().expect("keys lock");
        if writer.header.master == to.id() {
            if let Rotation::Rewrapping(abandoned) = writer.header.rotation {
                // Rotating back to the key in use: the copies wrapped for the abandoned target go.
                self.set_header(&mut writer, Rotation::Retiring(abandoned))?;
            }
            keys.next = None;
            return Ok(None);
        }
        let target = to.id();
        self.set_header(&mut writer, Rotation::Rewrapping(target))?;
        keys.next = Some(to);
        Ok(Some(target))
    }

    /// Live slots a pass has to move, in file order, and how many live slots there are.
    fn slots_needing(&self, pass: Pass) -> KeyResult<(Vec<u32>, u64)> {
        let writer = self.lock_writer()?;
        let current = writer.header.master;
        let (mut todo, mut live) = (Vec::new(), 0u64);
        scan(&self.file, 0, writer.slot_count, |slot, read| {
            if let SlotRead::Live(view) = read {
                live += 1;
                if needs(&view, current, pass) {
                    todo.push(slot);
                }
            }
            Ok(())
        })?;
        Ok((todo, live))
    }

    /// Moves the given slots (those that still need it) to fresh slots rewritten for `pass`:
    /// new copies written and synced, index switched, old slots zeroed and synced.
    fn move_slots(&self, slots: &[u32], pass: Pass) -> KeyResult<()> {
        let mut writer = self.lock_writer()?;
        let keys = self.keys.read().expect("keys lock");
        let current = &keys.current;
        let mut moves = Vec::with_capacity(slots.len());
        for &slot in slots {
            let bytes = self.read_slot(slot)?;
            let SlotRead::Live(view) = layout::decode_slot(&bytes) else {
                continue; // destroyed since the pass listed it
            };
            if !needs(&view, current.id(), pass) {
                continue;
            }
            let owner = KeyOwner::parse(view.owner)
                .map_err(|_| KeyError::Corrupt("a slot holds a malformed key owner".into()))?;
            let unwrap_error = || KeyError::Unwrap {
                owner: owner.clone(),
                key_id: view.key_id,
                master: current.id(),
            };
            let kept = view.wrap_under(current.id()).ok_or_else(unwrap_error)?;
            let mut wraps = vec![Wrap {
                master: current.id(),
                wrapped: kept,
            }];
            let added;
            if let Pass::Rewrap(target) = pass {
                let next = keys
                    .next
                    .as_ref()
                    .filter(|next| next.id() == target)
                    .expect("a rewrap pass runs while its target key is held");
                let key = current
                    .unwrap_key(&owner, view.key_id, kept)
                    .map_err(|_| unwrap_error())?;
                added = next.wrap_key(&owner, view.key_id, &key);
                wraps.push(Wrap {
                    master: target,
                    wrapped: &added,
                });
            }
            let new = layout::encode_slot(&owner, view.key_id, view.created_at, &wraps);
            moves.push((slot, owner, new));
        }
        let mut placed = Vec::with_capacity(moves.len());
        for (old, owner, new) in &moves {
            let slot = self.allocate(&mut writer)?;
            self.durable("writing a rewrapped key", || {
                self.file.write_all_at(new, layout::slot_offset(slot))
            })?;
            placed.push((*old, owner, slot));
        }
        self.durable("syncing rewrapped keys", || self.file.sync_data())?;
        {
            let mut index = self.index.write().expect("index lock");
            for (old, owner, new) in &placed {
                let hash = index.hash(owner.as_str());
                index.replace(hash, *old, *new);
            }
        }
        for (old, _, _) in &placed {
            self.durable("wiping a moved key's old slot", || {
                self.file.write_all_at(&[0; SLOT_LEN], layout::slot_offset(*old))
            })?;
        }
        self.durable("syncing wiped slots", || self.file.sync_data())?;
        writer.free.extend(placed.iter().map(|(old, _, _)| Reverse(*old)));
        Ok(())
    }

    /// Ends a pass if no slot needs it any more: a rewrap pass switches the store to the new
    /// key (the retiring pass follows); a retiring pass clears the rotation. False if slots
    /// still need the pass, which then runs again.
    fn finish_pass(&self, pass: Pass) -> KeyResult<bool> {
        let mut writer = self.lock_writer()?;
        let mut keys = self.keys.write().expect("keys lock");
        let current = writer.header.master;
        let mut left = false;
        scan(&self.file, 0, writer.slot_count, |_, read| {
            left |= matches!(read, SlotRead::Live(view) if needs(&view, current, pass));
            Ok(())
        })?;
        if left {
            return Ok(false);
        }
        match pass {
            Pass::Rewrap(target) => {
                let next = keys
                    .next
                    .take()
                    .expect("a rewrap pass runs while its target key is held");
                debug_assert_eq!(next.id(), target);
                writer.header.master = target;
                writer.header.previous = Some(current);
                self.set_header(&mut writer, Rotation::Retiring(current))?;
                keys.current = next;
            }
            Pass::Retire => {
                if writer.header.rotation != Rotation::None {
                    self.set_header(&mut writer, Rotation::None)?;
                }
            }
        }
        Ok(true)
    }

    /// Writes the header with `rotation` (and the writer's master key) to the older copy.
    fn set_header(&self, writer: &mut Writer, rotation: Rotation) -> KeyResult<()> {
        let header = Header {
            rotation,
            ..writer.header
        };
        self.durable("writing the header", || {
            write_header(&self.file, header).map_err(into_io)
        })?;
        writer.header = Header {
            sequence: header.sequence + 1,
            ..header
        };
        Ok(())
    }

    /// A free slot, growing the file by about 1/16 when none is left.
    fn allocate(&self, writer: &mut Writer) -> KeyResult<u32> {
        if let Some(Reverse(slot)) = writer.free.pop() {
            return Ok(slot);
        }
        let grow = (writer.slot_count / 16).clamp(64, 65_536);
        let count = writer
            .slot_count
            .checked_add(grow)
            .ok_or_else(|| KeyError::Corrupt("the slot file is full".into()))?;
        // A hole reads as zeros, which is an empty slot; the next sync_data makes the length
        // durable together with the slot written into it.
        self.durable("growing the key store", || {
            self.file.set_len(layout::slot_offset(count))
        })?;
        writer.free.extend((writer.slot_count..count).map(Reverse));
        writer.slot_count = count;
        Ok(writer.free.pop().expect("just grew").0)
    }
}

/// The data key a live slot holds, unwrapped with `master`.
fn unwrap_slot(master: &MasterKey, owner: &KeyOwner, view: &SlotView<'_>) -> KeyResult<ConversationKey> {
    let unwrap_error = || KeyError::Unwrap {
        owner: owner.clone(),
        key_id: view.key_id,
        master: master.id(),
    };
    let wrapped = view.wrap_under(master.id()).ok_or_else(unwrap_error)?;
    let key = master
        .unwrap_key(owner, view.key_id, wrapped)
        .map_err(|_| unwrap_error())?;
    Ok(ConversationKey {
        key_id: view.key_id,
        key,
    })
}

fn same_key(a: &ConversationKey, b: &ConversationKey) -> bool {
    a.key_id == b.key_id && a.key.expose_bytes() == b.key.expose_bytes()
}

fn import_conflict(held: KeyId, new: &ImportedKey) -> KeyError {
    KeyError::ImportConflict {
        owner: new.owner.clone(),
        held,
        given: new.key.key_id,
    }
}

/// True when `view` has to be moved by `pass` on a store whose master key is `current`.
fn needs(view: &SlotView<'_>, current: MasterKeyId, pass: Pass) -> bool {
    match pass {
        Pass::Rewrap(target) => view.wrap_under(target).is_none(),
        Pass::Retire => view.wraps().iter().any(|w| w.master != current),
    }
}

/// Builds the index and free list, wiping torn slots and second copies of a key.
fn scan_at_open(
    file: &File,
    slot_count: u32,
    header: &Header,
    repaired: &mut Vec<String>,
) -> KeyResult<(Index, BinaryHeap<Reverse<u32>>)> {
    let mut index = Index::default();
    index.reserve(slot_count as usize);
    let mut free = Vec::new();
    let mut wipe = Vec::new();
    scan(file, 0, slot_count, |slot, read| {
        match read {
            SlotRead::Empty => free.push(slot),
            SlotRead::Torn => {
                repaired.push(format!(
                    "slot {slot} was torn (a write cut short) or damaged; wiped"
                ));
                wipe.push(slot);
            }
            SlotRead::Live(view) => {
                let hash = index.hash(view.owner);
                if index.insert_if_vacant(hash, slot) {
                    return Ok(());
                }
                let mut twin = None;
                for other in index.candidates(hash) {
                    let mut bytes = [0u8; SLOT_LEN];
                    file.read_exact_at(&mut bytes, layout::slot_offset(other))
                        .map_err(|e| KeyError::io("reading the key store", e))?;
                    if let SlotRead::Live(o) = layout::decode_slot(&bytes)
                        && o.owner == view.owner
                    {
                        twin = Some((other, copy_score(&o, header)));
                    }
                }
                match twin {
                    None => index.insert(hash, slot),
                    Some((other, other_score)) => {
                        // A move that a crash interrupted: both copies hold the same key; keep the
                        // one further along the rotation.
                        let (keep, drop) = if copy_score(&view, header) > other_score {
                            (slot, other)
                        } else {
                            (other, slot)
                        };
                        index.replace(hash, other, keep);
                        repaired.push(format!(
                            "slot {drop} held a second copy of a key (an interrupted move); wiped"
                        ));
                        wipe.push(drop);
                    }
                }
            }
        }
        Ok(())
    })?;
    if !wipe.is_empty() {
        for &slot in &wipe {
            file.write_all_at(&[0; SLOT_LEN], layout::slot_offset(slot))
                .map_err(|e| KeyError::io("wiping a torn slot", e))?;
        }
        file.sync_data()
            .map_err(|e| KeyError::io("wiping torn slots", e))?;
        free.extend(wipe);
    }
    Ok((index, free.into_iter().map(Reverse).collect()))
}

/// How far along a rotation a copy of a slot is: the one to keep of two.
fn copy_score(view: &SlotView<'_>, header: &Header) -> i32 {
    view.wraps()
        .iter()
        .map(|w| match header.rotation {
            _ if w.master == header.master => 2,
            Rotation::Rewrapping(to) if w.master == to => 1,
            _ => -1,
        })
        .sum()
}

/// Calls `f` with each slot in `from..to`, reading 4 MiB at a time.
fn scan(
    file: &File,
    from: u32,
    to: u32,
    mut f: impl FnMut(u32, SlotRead<'_>) -> KeyResult<()>,
) -> KeyResult<()> {
    let mut buffer = vec![0u8; SCAN_SLOTS as usize * SLOT_LEN];
    let mut start = from;
    while start < to {
        let n = (to - start).min(SCAN_SLOTS);
        let chunk = &mut buffer[..n as usize * SLOT_LEN];
        file.read_exact_at(chunk, layout::slot_offset(start))
            .map_err(|e| KeyError::io("reading the key store", e))?;
        for (i, bytes) in chunk.chunks_exact(SLOT_LEN).enumerate() {
            f(start + i as u32, layout::decode_slot(bytes))?;
        }
        start += n;
    }
    Ok(())
}

/// The current header: the intact copy with the higher sequence; `None` if neither is intact.
fn read_header(file: &File, len: u64) -> KeyResult<Option<Header>> {
    let mut best: Option<Header> = None;
    for copy in 0..2u64 {
        if len < (copy + 1) * HEADER_LEN as u64 {
            break;
        }
        let mut bytes = [0u8; HEADER_LEN];
        file.read_exact_at(&mut bytes, copy * HEADER_LEN as u64)
            .map_err(|e| KeyError::io("reading the key store's header", e))?;
        match layout::decode_header(&bytes) {
            Ok(h) if best.is_none_or(|b| h.sequence > b.sequence) => best = Some(h),
            Ok(_) | Err(layout::HeaderError::Unreadable) => {}
            Err(layout::HeaderError::UnknownFormat { version, slot_len }) => {
                return Err(KeyError::Corrupt(format!(
                    "format version {version} with {slot_len}-byte slots, which this build of \
                     parley does not read (it reads version {} with {SLOT_LEN}-byte slots)",
                    layout::FORMAT_VERSION
                )));
            }
        }
    }
    Ok(best)
}

/// Writes `header` with the next sequence number to the copy that does not hold the current
/// one, then syncs: a torn write leaves the current copy intact.
fn write_header(file: &File, header: Header) -> KeyResult<()> {
    let next = Header {
        sequence: header.sequence + 1,
        ..header
    };
    let copy = next.sequence % 2;
    file.write_all_at(&layout::encode_header(&next), copy * HEADER_LEN as u64)
        .and_then(|()| file.sync_data())
        .map_err(|e| KeyError::io("writing the key store's header", e))
}

fn into_io(e: KeyError) -> std::io::Error {
    match e {
        KeyError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Runs blocking work on Tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> KeyResult<T> + Send + 'static) -> KeyResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KeyError::Stopped(format!("a key store task failed: {e}")))?
}
