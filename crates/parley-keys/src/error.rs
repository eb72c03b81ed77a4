//! What a key store can fail with, each case named so the server can say what to do about it.

use std::path::PathBuf;

use parley_domain::KeyOwner;

use crate::id::KeyId;
use crate::master::{InvalidMasterKey, MasterKeyId};

/// Result alias for key store operations.
pub type KeyResult<T> = Result<T, KeyError>;

/// A key store failure.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The owner already has a data key; a second would orphan content sealed under the first.
    #[error("{0} already has a data key")]
    AlreadyExists(KeyOwner),
    /// An imported key's owner already holds another key: the two stores are not copies of one
    /// another.
    #[error(
        "{owner} already holds data key {held}, which is not the imported key {given}: this key \
         store holds keys of another store"
    )]
    ImportConflict {
        /// Whose key.
        owner: KeyOwner,
        /// The key the store holds.
        held: KeyId,
        /// The key given (its id may be the same with other bytes).
        given: KeyId,
    },
    /// The store's keys are wrapped under another master key.
    #[error(
        "wrong master key: this key store's keys are wrapped under master key {store}, \
         and the master key given is {given}"
    )]
    WrongMasterKey {
        /// The master key the store was wrapped under.
        store: MasterKeyId,
        /// The one given.
        given: MasterKeyId,
    },
    /// The master key given was rotated out: the store now uses a newer one.
    #[error(
        "master key {given} was rotated out of this key store: its keys are now wrapped under \
         master key {current}; start with that one"
    )]
    RotatedOut {
        /// The old master key given.
        given: MasterKeyId,
        /// The store's master key now.
        current: MasterKeyId,
    },
    /// The master key given is the target of a rotation that has not switched over yet.
    #[error(
        "a master key rotation from {from} to {to} is unfinished: open the key store with master \
         key {from} and run the rotation to {to} again to finish it"
    )]
    RotationUnfinished {
        /// The master key the store still uses.
        from: MasterKeyId,
        /// The master key it is being rotated to.
        to: MasterKeyId,
    },
    /// The progress callback asked a rotation to stop; running it again resumes it.
    #[error("the master key rotation was stopped before it finished; run it again to resume it")]
    RotationInterrupted,
    /// A stored data key does not unwrap under the master key that should open it.
    #[error(
        "the data key {key_id} of {owner} does not unwrap under master key {master}: the stored \
         copy is damaged or was wrapped under another key"
    )]
    Unwrap {
        /// Whose key.
        owner: KeyOwner,
        /// Which key.
        key_id: KeyId,
        /// The master key that was tried.
        master: MasterKeyId,
    },
    /// Another process has the slot file open.
    #[error("the key store {0} is in use by another process")]
    Locked(PathBuf),
    /// The slot file to open does not exist.
    #[error("the key store {0} does not exist")]
    Missing(PathBuf),
    /// The store's own structure is damaged or of an unknown format.
    #[error("the key store is damaged or not a parley key store: {0}")]
    Corrupt(String),
    /// A master key file that does not hold a master key.
    #[error("the master key file {path} does not hold a master key: {reason}")]
    InvalidMasterKeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: InvalidMasterKey,
    },
    /// A file operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// An earlier write failed, so what is on disk is uncertain until the store is opened again.
    #[error("the key store stopped after a failed write; restart to open it again: {0}")]
    Stopped(String),
    /// The key database cannot be reached now; it may be back shortly.
    #[error("the key database is unavailable: {0}")]
    Unavailable(String),
    /// Any other failure of the key database.
    #[error("key database: {0}")]
    Database(String),
    /// The operation is not one this store does (a KMS that rotates its keys itself).
    #[error("this key store does not support {0}")]
    Unsupported(&'static str),
}

impl KeyError {
    /// An I/O failure with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// The error for using `given` on a store whose header names `store`, a rotation under way
    /// and the master key it last rotated from: the most helpful of the master key cases.
    pub(crate) fn master_mismatch(
        store: MasterKeyId,
        rotation: Option<crate::store::UnfinishedRotation>,
        previous: Option<MasterKeyId>,
        given: MasterKeyId,
    ) -> Self {
        use crate::store::UnfinishedRotation::{Retiring, Rewrapping};
        match rotation {
            Some(Rewrapping { from, to }) if to == given => Self::RotationUnfinished { from, to },
            Some(Retiring { from, .. }) if from == given => Self::RotatedOut {
                given,
                current: store,
            },
            _ if previous == Some(given) => Self::RotatedOut {
                given,
                current: store,
            },
            _ => Self::WrongMasterKey { store, given },
        }
    }
}
