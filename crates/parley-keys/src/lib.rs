//! Data keys, one per sealed object: sealing content under them, wrapping them under a master
//! key, and the key stores where destroying one is real.
//!
//! A hard delete must leave no readable byte of a conversation anywhere, including copies that
//! parley cannot overwrite: stale b-tree cells, WAL frames, replicas, backups, bucket versions.
//! So every conversation's content is stored only as ciphertext under its own [`DataKey`]
//! ([`DataKey::seal`]), and a hard delete destroys that key ([`KeyStore::destroy`]). Every copy
//! of the content then holds ciphertext whose key no longer exists (crypto-shredding). A key's
//! owner is a [`KeyOwner`](parley_domain::KeyOwner): a conversation's id, or the id of another
//! sealed object's row.
//!
//! Data keys are kept wrapped (sealed) under one [`MasterKey`] that the operator holds, in a
//! [`KeyStore`] apart from the content:
//!
//! - [`SlotFileKeyStore`], the embedded default: one file of fixed-size slots, each overwritten in
//!   place and fsynced, so a destroyed key leaves no copy in the file.
//! - [`PgKeyStore`], for several processes: a table in a PostgreSQL database of its own.
//!
//! `docs/KEYS.md` describes the formats, rotation and the backup rules of each store;
//! `docs/THREAT-MODEL.md` what this protects against and what it does not.

mod error;
mod id;
mod master;
mod postgres;
mod seal;
pub mod slot_file;
mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{KeyError, KeyResult};
pub use id::{InvalidKeyId, KeyId};
pub use master::{InvalidMasterKey, MasterKey, MasterKeyId};
pub use postgres::PgKeyStore;
pub use seal::{DataKey, OpenError, SEALED_TEXT_PREFIX, SEALED_VERSION, content_aad, is_sealed_text};
pub use slot_file::SlotFileKeyStore;
pub use store::{
    ConversationKey, ImportedKey, KeyInfo, KeyStore, KeyStoreStatus, Progress, RotationPhase,
    RotationProgress, UnfinishedRotation,
};
