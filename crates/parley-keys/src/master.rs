//! The master key: 32 bytes from the operator that wrap every data key, and its public id.
//!
//! Its text form is standard base64 with padding (44 characters, as `openssl rand -base64 32`
//! prints) or 64 hex digits (`openssl rand -hex 32`); surrounding whitespace is ignored. A file
//! holds the text form. The server reads `PARLEY_MASTER_KEY` in its config and hands the value
//! to [`MasterKey::parse`]; this crate reads no environment variables.
//!
//! Two subkeys are derived from it with HMAC-SHA-256 under fixed labels: one wraps data keys,
//! one names the key ([`MasterKeyId`]). The id therefore reveals nothing about either.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64ct::{Base64, Encoding};
use hmac::{Hmac, Mac};
use parley_domain::KeyOwner;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{KeyError, KeyResult};
use crate::id::KeyId;
use crate::seal::{self, DataKey, OpenError, SEALED_OVERHEAD};

/// Length of a data key wrapped under a master key: a sealed 32-byte value.
pub(crate) const WRAPPED_LEN: usize = SEALED_OVERHEAD + 32;

/// Text that is not a master key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a master key is 32 bytes written as base64 (44 characters, e.g. `openssl rand -base64 32`) \
     or as 64 hex digits"
)]
pub struct InvalidMasterKey;

/// The public name of a master key: `m` + 16 hex digits of an HMAC under the key.
///
/// A key store records the id of the master key that wrapped its keys, so it can refuse to start
/// with another one instead of failing on every read.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MasterKeyId([u8; 8]);

impl MasterKeyId {
    /// The id's 8 bytes, as a slot file's header and slots store them.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The id from its 8 bytes.
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }

    /// Accepts the printed form, `m` + 16 lowercase hex digits.
    pub fn parse(raw: &str) -> Option<Self> {
        let hex_part = raw.strip_prefix('m')?;
        if hex_part.len() != 16 || !hex_part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut bytes = [0; 8];
        hex::decode_to_slice(hex_part, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl fmt::Display for MasterKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", hex::encode(self.0))
    }
}

impl fmt::Debug for MasterKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKeyId({self})")
    }
}

/// The operator's master key; zeroed when dropped, printed only as its id.
#[derive(Clone)]
pub struct MasterKey {
    /// The operator's 32 bytes, kept to write them to a file once.
    raw: Zeroizing<[u8; 32]>,
    /// The subkey that wraps data keys.
    wrapping: Zeroizing<[u8; 32]>,
    id: MasterKeyId,
}

impl MasterKey {
    /// A fresh master key from the thread's CSPRNG.
    pub fn generate() -> Self {
        let mut raw = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(raw.as_mut());
        Self::from_raw(raw)
    }

    /// Parses the text form: base64 (44 characters) or 64 hex digits, whitespace around it ignored.
    pub fn parse(text: &str) -> Result<Self, InvalidMasterKey> {
        let text = text.trim();
        let mut raw = Zeroizing::new([0u8; 32]);
        match text.len() {
            64 => hex::decode_to_slice(text, raw.as_mut()).map_err(|_| InvalidMasterKey)?,
            // base64ct decodes in constant time, so the key's bytes do not show in timing.
            44 => {
                let decoded = Base64::decode(text, raw.as_mut()).map_err(|_| InvalidMasterKey)?;
                if decoded.len() != 32 {
                    return Err(InvalidMasterKey);
                }
            }
            _ => return Err(InvalidMasterKey),
        }
        Ok(Self::from_raw(raw))
    }

    /// Reads a master key file (its text form, as [`generate_file`](Self::generate_file) writes).
    pub fn load_file(path: &Path) -> KeyResult<Self> {
        let mut text = Zeroizing::new(String::new());
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| KeyError::io(format!("reading the master key file {}", path.display()), e))?;
        Self::parse(&text).map_err(|e| KeyError::InvalidMasterKeyFile {
            path: path.to_owned(),
            reason: e,
        })
    }

    /// Writes a fresh master key to a new file readable by its owner alone (mode 0600).
    ///
    /// For the embedded default's first start. Refuses to replace an existing file: losing a
    /// master key loses every conversation.
    pub fn generate_file(path: &Path) -> KeyResult<Self> {
        let key = Self::generate();
        let context = || format!("writing a new master key file {}", path.display());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| KeyError::io(context(), e))?;
        let text = key.to_text();
        file.write_all(text.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|e| KeyError::io(context(), e))?;
        sync_parent_dir(path).map_err(|e| KeyError::io(context(), e))?;
        Ok(key)
    }

    /// The key's text form (base64), for writing it where the operator keeps it.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(Base64::encode_string(self.raw.as_ref()))
    }

    /// The key's public id.
    pub fn id(&self) -> MasterKeyId {
        self.id
    }

    /// Wraps a data key, bound to its owner and key id.
    pub fn wrap_key(&self, owner: &KeyOwner, key_id: KeyId, key: &DataKey) -> Vec<u8> {
        seal::seal_with(&self.wrapping, &wrap_aad(owner, key_id), key.expose_bytes())
    }

    /// Unwraps a data key wrapped by [`wrap_key`](Self::wrap_key) for the same owner and id.
    ///
    /// Public so that tools and tests can check which master key opens a stored copy.
    pub fn unwrap_key(&self, owner: &KeyOwner, key_id: KeyId, wrapped: &[u8]) -> Result<DataKey, OpenError> {
        if wrapped.len() != WRAPPED_LEN {
            return Err(OpenError::Malformed);
        }
        let bytes = Zeroizing::new(seal::open_with(
            &self.wrapping,
            &wrap_aad(owner, key_id),
            wrapped,
        )?);
        let bytes: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| OpenError::Malformed)?;
        Ok(DataKey::from_bytes(bytes))
    }

    fn from_raw(raw: Zeroizing<[u8; 32]>) -> Self {
        let wrapping = derive(&raw, b"parley-keys/wrap/v1");
        let id_bytes = derive(&raw, b"parley-keys/master-key-id/v1");
        let id = MasterKeyId(id_bytes[..8].try_into().expect("a SHA-256 output has 32 bytes"));
        Self { raw, wrapping, id }
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Syncs the folder holding `path`, so that a file just created there survives a crash.
pub(crate) fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// HMAC-SHA-256 of `label` under the master key: a subkey independent of every other label's.
fn derive(raw: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(raw).expect("HMAC takes a key of any length");
    mac.update(label);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The AAD of a wrapped data key: its owner and key id, under a tag of its own so a wrapped key
/// can never pass for content.
///
/// The owner part is the owner's string, which for a conversation is its id: the bytes keys
/// were wrapped under before owners other than conversations existed, so those keys still unwrap.
fn wrap_aad(owner: &KeyOwner, key_id: KeyId) -> Vec<u8> {
    seal::tagged_aad(
        b"parley/wrapped-key/v1",
        &[owner.as_str().as_bytes(), &key_id.to_bytes()],
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn conversation() -> KeyOwner {
        KeyOwner::parse("c0123456789abcdef").unwrap()
    }

    #[test]
    fn base64_and_hex_forms_of_the_same_bytes_are_the_same_key() {
        let hex_form = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let from_hex = MasterKey::parse(hex_form).unwrap();
        let from_base64 = MasterKey::parse(&format!("  {}\n", from_hex.to_text().as_str())).unwrap();
        assert_eq!(from_hex.id(), from_base64.id());
        assert_eq!(from_base64.to_text().len(), 44);
    }

    #[test]
    fn text_that_is_not_32_bytes_is_refused() {
        for bad in [
            "",
            "short",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeef",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeefg",
            // 44 characters of base64 that decode to 31 bytes.
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
        ] {
            assert!(MasterKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_id_is_stable_for_a_key_and_differs_between_keys() {
        let key = MasterKey::generate();
        assert_eq!(key.id(), MasterKey::parse(&key.to_text()).unwrap().id());
        assert_ne!(key.id(), MasterKey::generate().id());
        let printed = key.id().to_string();
        assert_eq!(MasterKeyId::parse(&printed), Some(key.id()));
        assert!(printed.starts_with('m') && printed.len() == 17);
    }

    #[test]
    fn the_id_is_not_made_of_the_keys_bytes() {
        let key = MasterKey::parse(&"ab".repeat(32)).unwrap();
        assert!(!key.id().to_string().contains("abab"));
    }

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_master_owner_and_key_id() {
        let (master, data, key_id) = (MasterKey::generate(), DataKey::generate(), KeyId::random());
        let wrapped = master.wrap_key(&conversation(), key_id, &data);
        assert_eq!(wrapped.len(), WRAPPED_LEN);
        let unwrapped = master.unwrap_key(&conversation(), key_id, &wrapped).unwrap();
        assert_eq!(unwrapped.expose_bytes(), data.expose_bytes());

        let other = KeyOwner::parse("cfedcba9876543210").unwrap();
        let row = KeyOwner::parse("o0123456789abcdef").unwrap();
        assert!(master.unwrap_key(&row, key_id, &wrapped).is_err());
        assert!(
            MasterKey::generate()
                .unwrap_key(&conversation(), key_id, &wrapped)
                .is_err()
        );
        assert!(master.unwrap_key(&other, key_id, &wrapped).is_err());
        assert!(
            master
                .unwrap_key(&conversation(), KeyId::random(), &wrapped)
                .is_err()
        );
    }

    /// A data key wrapped for conversation `ca4301628cb9` by parley before key owners existed
    /// (master key `0011…eeff` twice, key id `k1032547698badcfe`, key bytes all `0x42`).
    const WRAPPED_FOR_A_CONVERSATION: &str = "\
        017cc5520886119f94deafb8dd8d3d2328b51deb7100006a53a220f0c09f99436034c1eda99dbbac0287ac2905b6876f\
        2f12a1e2d1fbba6338e8e489339d591ae88df958ab421e543b";

    #[test]
    fn a_key_wrapped_for_a_conversation_before_key_owners_unwraps_under_its_id_as_owner() {
        let master = MasterKey::parse(&"00112233445566778899aabbccddeeff".repeat(2)).unwrap();
        let key_id = KeyId::parse("k1032547698badcfe").unwrap();
        let wrapped = hex::decode(WRAPPED_FOR_A_CONVERSATION).unwrap();
        let id = parley_domain::ConversationId::parse("ca4301628cb9").unwrap();
        let key = master.unwrap_key(&KeyOwner::from(&id), key_id, &wrapped).unwrap();
        assert_eq!(key.expose_bytes(), &[0x42; 32]);
        // The AAD is the tag, then each part length-prefixed: the conversation id's bytes as is.
        let mut aad = b"parley/wrapped-key/v1".to_vec();
        aad.extend_from_slice(&12u32.to_be_bytes());
        aad.extend_from_slice(b"ca4301628cb9");
        aad.extend_from_slice(&8u32.to_be_bytes());
        aad.extend_from_slice(&key_id.to_bytes());
        assert_eq!(wrap_aad(&KeyOwner::from(id), key_id), aad);
    }

    #[test]
    fn a_generated_key_file_is_private_loads_back_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::generate_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(MasterKey::load_file(&path).unwrap().id(), key.id());

        let err = MasterKey::generate_file(&path).unwrap_err();
        assert!(err.to_string().contains("master key file"), "{err}");
        assert_eq!(MasterKey::load_file(&path).unwrap().id(), key.id());
    }

    #[test]
    fn a_key_file_with_something_else_in_it_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, "not a key").unwrap();
        let err = MasterKey::load_file(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("base64"),
            "{err}"
        );
    }

    #[test]
    fn a_master_key_prints_only_its_id() {
        let key = MasterKey::parse(&"ab".repeat(32)).unwrap();
        let printed = format!("{key:?}");
        assert!(printed.contains(&key.id().to_string()));
        assert!(!printed.contains("abab") && !printed.contains(key.to_text().as_str()));
    }
}
