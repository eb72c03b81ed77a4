//! The seam: the `KeyStore` trait that the server holds as `Arc<dyn KeyStore>`, and its types.

use std::ops::ControlFlow;

use async_trait::async_trait;
use parley_domain::{KeyOwner, Timestamp};

use crate::error::KeyResult;
use crate::id::KeyId;
use crate::master::{MasterKey, MasterKeyId};
use crate::seal::DataKey;

/// An owner's data key (a conversation's, say) and its id.
#[derive(Clone)]
pub struct ConversationKey {
    /// The key's public name, for receipts.
    pub key_id: KeyId,
    /// The key itself.
    pub key: DataKey,
}

impl std::fmt::Debug for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConversationKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A data key to put into a store as it is, with its id and creation time: for copying keys from
/// one store to another.
#[derive(Clone)]
pub struct ImportedKey {
    /// Whose key.
    pub owner: KeyOwner,
    /// The key and its id, kept as they are.
    pub key: ConversationKey,
    /// When the key was first made, kept as it is.
    pub created_at: Timestamp,
}

impl std::fmt::Debug for ImportedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportedKey")
            .field("owner", &self.owner)
            .field("key_id", &self.key.key_id)
            .field("created_at", &self.created_at)
            .finish_non_exhaustive()
    }
}

/// A key as listed for a cross-check: never its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Whose key.
    pub owner: KeyOwner,
    /// Which key.
    pub key_id: KeyId,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A master key rotation that has started and not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnfinishedRotation {
    /// Keys are being wrapped under `to` too; `from` is still the store's master key.
    Rewrapping {
        /// The master key in use.
        from: MasterKeyId,
        /// The master key being rotated to.
        to: MasterKeyId,
    },
    /// The store has switched to `to`; copies wrapped under `from` are being removed.
    Retiring {
        /// The master key being retired.
        from: MasterKeyId,
        /// The master key in use.
        to: MasterKeyId,
    },
}

/// Which pass of a rotation a [`RotationProgress`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationPhase {
    /// Wrapping every key under the new master key too.
    Rewrap,
    /// Removing every copy wrapped under the old master key.
    Retire,
}

/// How far a rotation's current pass has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationProgress {
    /// The pass.
    pub phase: RotationPhase,
    /// Keys this pass has dealt with, including those a previous, interrupted run had done.
    pub done: u64,
    /// Keys in the store when the pass started (creates and destroys during it can move this).
    pub total: u64,
}

/// Told of a rotation's progress after each durable batch; `Break` stops the rotation there,
/// leaving it as a crash would (resumable).
pub type Progress<'a> = &'a (dyn Fn(RotationProgress) -> ControlFlow<()> + Send + Sync);

/// What a key store reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStoreStatus {
    /// The master key that wraps the store's keys.
    pub master_key_id: MasterKeyId,
    /// A rotation that was started and not finished.
    pub unfinished_rotation: Option<UnfinishedRotation>,
    /// How many keys the store holds.
    pub keys: u64,
    /// Damage found and repaired when the store was opened (a torn slot wiped, say), one line each.
    pub repaired_at_open: Vec<String>,
}

/// Where data keys live, one per owner (a sealed object: a conversation, say), and where
/// destroying one is real.
///
/// The server holds it as `Arc<dyn KeyStore>` and never sees how keys are kept. Two stores ship:
/// [`SlotFileKeyStore`](crate::SlotFileKeyStore) (embedded) and [`PgKeyStore`](crate::PgKeyStore)
/// (shared). An external KMS fits behind it too, since nothing here assumes where keys are kept
/// or how they are wrapped: `create` may ask the KMS for a data key (AWS KMS `GenerateDataKey`,
/// Vault transit `datakey`) and keep the wrapped form where deletion is real, or keep a key per
/// owner in the KMS itself and `destroy` it there (then the KMS's own waiting period before
/// a deletion takes effect counts towards the erasure deadline). A KMS that rotates its master
/// keys itself answers [`rotate`](Self::rotate) with [`KeyError::Unsupported`](crate::KeyError).
///
/// Every method that changes keys is durable before it returns, so an acknowledged create
/// survives a crash and an acknowledged destroy never comes back.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Makes a fresh data key for `owner`, durable before it returns.
    ///
    /// Fails with `AlreadyExists` when the owner has a key. An owner whose key was destroyed may
    /// be given a new one: it is another key, and nothing sealed under the old one opens with it.
    async fn create(&self, owner: &KeyOwner, now: Timestamp) -> KeyResult<ConversationKey>;

    /// Makes fresh keys for many owners at once, durable before it returns; for encrypting an
    /// existing store in place, where a sync per key would take hours.
    ///
    /// Not atomic: on an error some keys may have been made, which [`get`](Self::get) shows.
    async fn create_many(&self, owners: &[KeyOwner], now: Timestamp) -> KeyResult<Vec<ConversationKey>> {
        let mut keys = Vec::with_capacity(owners.len());
        for owner in owners {
            keys.push(self.create(owner, now).await?);
        }
        Ok(keys)
    }

    /// Puts known keys into the store (wrapped under its master key), keeping their ids and
    /// creation times: for copying a key store. Durable before it returns; returns how many were
    /// written.
    ///
    /// Idempotent, so a copy that was killed finishes when run again: a key already held with
    /// the same id and bytes is skipped. An owner that holds another key fails the whole
    /// batch with [`KeyError::ImportConflict`] and nothing of it is written. A batch is written
    /// whole or, after a crash, in part (which a rerun completes).
    ///
    /// It knows nothing of destroyed keys: importing a key brings it back, so the caller imports
    /// only keys of owners that exist.
    async fn import(&self, keys: &[ImportedKey]) -> KeyResult<u64>;

    /// The owner's key: `None` once destroyed, or if it never had one.
    async fn get(&self, owner: &KeyOwner) -> KeyResult<Option<ConversationKey>>;

    /// The keys of many owners (a page of a list), in the order asked; `None` for each one
    /// without a key.
    async fn get_many(&self, owners: &[KeyOwner]) -> KeyResult<Vec<Option<ConversationKey>>> {
        let mut keys = Vec::with_capacity(owners.len());
        for owner in owners {
            keys.push(self.get(owner).await?);
        }
        Ok(keys)
    }

    /// Destroys the owner's key, durably and irreversibly before it returns.
    ///
    /// Returns the destroyed key's id, or `None` when there was no key (destroyed already, or
    /// never made), so destroying twice is fine.
    async fn destroy(&self, owner: &KeyOwner) -> KeyResult<Option<KeyId>>;

    /// Every key the store holds (owner, key id, creation time), for a cross-check.
    async fn list(&self) -> KeyResult<Vec<KeyInfo>>;

    /// Rewraps every data key under `to` without touching content; afterwards the old master key
    /// opens nothing in this store, and the store must be opened with `to`.
    ///
    /// Resumable after a crash, or after `progress` returns `Break`, at any point: run it again
    /// with the same `to` (opening the store with the old master key if the rotation had not yet
    /// switched over, else with `to`). Rotating to the current master key finishes an interrupted
    /// rotation, or does nothing.
    async fn rotate(&self, to: MasterKey, progress: Progress<'_>) -> KeyResult<()>;

    /// The master key in use, an unfinished rotation, the number of keys, repairs made at open.
    async fn status(&self) -> KeyResult<KeyStoreStatus>;

    /// Lets go of the store once a write under way has finished: an embedded store's file lock
    /// is released at once (so the same process may open it again) and every later call fails.
    async fn close(&self) {}
}
