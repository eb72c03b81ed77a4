//! Sealing: a value as XChaCha20-Poly1305 ciphertext under a data key, bound to where it belongs.
//!
//! A sealed value is `version (1 byte) ‖ nonce (24 random bytes) ‖ ciphertext ‖ tag (16 bytes)`.
//! The 24-byte nonce is drawn at random for every value: XChaCha20's nonce is long enough that
//! random nonces never collide in practice, so no counter has to survive a crash. The associated
//! data (see [`content_aad`]) names the key's owner (a conversation, say) and the field, so a
//! value copied to another row or field fails to open rather than showing up in the wrong place.

use base64ct::{Base64, Encoding};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use parley_domain::KeyOwner;
use rand::RngCore;
use zeroize::Zeroizing;

/// The format version byte that starts every sealed value this build writes.
pub const SEALED_VERSION: u8 = 1;

/// What starts the text form of a sealed value: `pe1:` then standard base64 with padding.
///
/// "pe" is "parley encrypted", "1" the format version. The prefix lets an upgrade tell a sealed
/// value from a plaintext one left by an older parley ([`is_sealed_text`]).
pub const SEALED_TEXT_PREFIX: &str = "pe1:";

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Bytes a sealed value adds to its plaintext: version, nonce and tag.
pub(crate) const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// A sealed value that does not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Too short, not in the text form, or not UTF-8 where text was expected.
    #[error("not a sealed value")]
    Malformed,
    /// Written by a newer format this build does not know.
    #[error("sealed with format version {0}, which this build of parley does not know")]
    UnknownVersion(u8),
    /// The authentication tag does not match. Deliberately one case, so a failure says nothing
    /// about which of the causes it was.
    #[error(
        "the sealed value does not open: a wrong or destroyed key, altered bytes, or a value \
         moved from another owner or field"
    )]
    Rejected,
}

/// One owner's data key (a conversation's, say): 32 random bytes, zeroed when dropped, never printed.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh key from the thread's CSPRNG (ChaCha12, seeded and reseeded from the OS).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        Self(bytes)
    }

    /// A key from its bytes, for a key store that gets them from elsewhere (a KMS).
    ///
    /// The caller should zero its own copy afterwards.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// The key's bytes, for wrapping it (a KMS) or comparing two handles in tests.
    ///
    /// Whatever is made from them must be zeroed too; sealing never needs this.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Seals `plaintext` under this key, bound to `aad`; see [`content_aad`].
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        seal_with(&self.0, aad, plaintext)
    }

    /// Opens a value made by [`seal`](Self::seal) with the same key and `aad`.
    ///
    /// A wrong key, a changed byte or another `aad` is an error, never a panic or garbage.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        open_with(&self.0, aad, sealed)
    }

    /// Seals text into the form a TEXT column holds: [`SEALED_TEXT_PREFIX`] + base64.
    pub fn seal_text(&self, aad: &[u8], plaintext: &str) -> String {
        let sealed = self.seal(aad, plaintext.as_bytes());
        format!("{SEALED_TEXT_PREFIX}{}", Base64::encode_string(&sealed))
    }

    /// Opens a value made by [`seal_text`](Self::seal_text).
    pub fn open_text(&self, aad: &[u8], sealed: &str) -> Result<String, OpenError> {
        let encoded = sealed
            .strip_prefix(SEALED_TEXT_PREFIX)
            .ok_or(OpenError::Malformed)?;
        let bytes = Base64::decode_vec(encoded).map_err(|_| OpenError::Malformed)?;
        let plaintext = self.open(aad, &bytes)?;
        String::from_utf8(plaintext).map_err(|_| OpenError::Malformed)
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// True when `value` is in the text form of a sealed value, so an upgrade can skip it.
pub fn is_sealed_text(value: &str) -> bool {
    value.starts_with(SEALED_TEXT_PREFIX)
}

/// The associated data that binds a sealed value to its key's owner and its field.
///
/// `field` names where the value lives, e.g. `conversation.conversational_context`,
/// `event.properties` or `blob:recordings/1.wav`. Each part is length-prefixed after a domain
/// tag, so no two different (owner, field) pairs give the same bytes. A conversation's owner is
/// its id, so content sealed before owners other than conversations existed still opens.
pub fn content_aad(owner: &KeyOwner, field: &str) -> Vec<u8> {
    tagged_aad(
        b"parley/content/v1",
        &[owner.as_str().as_bytes(), field.as_bytes()],
    )
}

/// `tag`, then each part as a 4-byte big-endian length and its bytes.
pub(crate) fn tagged_aad(tag: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(tag.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    aad.extend_from_slice(tag);
    for part in parts {
        let len = u32::try_from(part.len()).expect("an AAD part is far shorter than 4 GiB");
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

/// Seals under raw key bytes; the master key wraps data keys with this too.
pub(crate) fn seal_with(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let key: &Key = key.into();
    let cipher = XChaCha20Poly1305::new(key);
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt((&nonce).into(), Payload { msg: plaintext, aad })
        .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
    let mut sealed = Vec::with_capacity(SEALED_OVERHEAD + plaintext.len());
    sealed.push(SEALED_VERSION);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(&ciphertext);
    sealed
}

/// Opens under raw key bytes.
pub(crate) fn open_with(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < SEALED_OVERHEAD {
        return Err(OpenError::Malformed);
    }
    let (version, rest) = sealed.split_at(1);
    if version[0] != SEALED_VERSION {
        return Err(OpenError::UnknownVersion(version[0]));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = <&XNonce>::try_from(nonce).expect("split at the nonce's length");
    let key: &Key = key.into();
    XChaCha20Poly1305::new(key)
        .decrypt(nonce, Payload { msg: ciphertext, aad })
        .map_err(|_| OpenError::Rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(id: &str) -> KeyOwner {
        KeyOwner::from(parley_domain::ConversationId::parse(id).unwrap())
    }

    #[test]
    fn a_sealed_value_opens_with_its_key_and_aad() {
        let key = DataKey::generate();
        let aad = content_aad(&conversation("c0123456789abcdef"), "conversation.custom_greeting");
        let sealed = key.seal(&aad, b"Hello there");
        assert_eq!(sealed.len(), SEALED_OVERHEAD + 11);
        assert_eq!(sealed[0], SEALED_VERSION);
        assert_eq!(key.open(&aad, &sealed).unwrap(), b"Hello there");
    }

    #[test]
    fn sealing_the_same_value_twice_gives_different_bytes() {
        let key = DataKey::generate();
        assert_ne!(key.seal(b"aad", b"same"), key.seal(b"aad", b"same"));
    }

    #[test]
    fn a_wrong_key_does_not_open_a_sealed_value() {
        let sealed = DataKey::generate().seal(b"aad", b"secret");
        assert_eq!(
            DataKey::generate().open(b"aad", &sealed),
            Err(OpenError::Rejected)
        );
    }

    #[test]
    fn a_value_moved_to_another_conversation_or_field_does_not_open() {
        let key = DataKey::generate();
        let (a, b) = (
            conversation("c0123456789abcdef"),
            conversation("cfedcba9876543210"),
        );
        let sealed = key.seal(&content_aad(&a, "conversation.conversation_name"), b"secret");
        for aad in [
            content_aad(&b, "conversation.conversation_name"),
            content_aad(&a, "conversation.custom_greeting"),
        ] {
            assert_eq!(key.open(&aad, &sealed), Err(OpenError::Rejected));
        }
    }

    #[test]
    fn every_single_changed_byte_is_detected() {
        let key = DataKey::generate();
        let sealed = key.seal(b"aad", b"a short secret");
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 0x01;
            let expected = if i == 0 {
                OpenError::UnknownVersion(0)
            } else {
                OpenError::Rejected
            };
            assert_eq!(key.open(b"aad", &tampered), Err(expected), "byte {i}");
        }
    }

    #[test]
    fn truncated_or_empty_values_are_malformed_not_a_panic() {
        let key = DataKey::generate();
        let sealed = key.seal(b"aad", b"x");
        for len in 0..SEALED_OVERHEAD {
            assert_eq!(
                key.open(b"aad", &sealed[..len]),
                Err(OpenError::Malformed),
                "{len}"
            );
        }
        assert_eq!(
            key.open(b"aad", &sealed[..sealed.len() - 1]),
            Err(OpenError::Rejected)
        );
    }

    #[test]
    fn an_empty_plaintext_seals_and_opens() {
        let key = DataKey::generate();
        assert_eq!(key.open(b"", &key.seal(b"", b"")).unwrap(), b"");
    }

    #[test]
    fn text_round_trips_through_its_prefixed_base64_form() {
        let key = DataKey::generate();
        let text = key.seal_text(b"aad", "Talk about the café ☕");
        assert!(text.starts_with("pe1:") && is_sealed_text(&text));
        assert!(text.is_ascii());
        assert_eq!(key.open_text(b"aad", &text).unwrap(), "Talk about the café ☕");
    }

    #[test]
    fn text_without_the_prefix_or_with_broken_base64_is_malformed() {
        let key = DataKey::generate();
        let text = key.seal_text(b"aad", "hi");
        assert!(!is_sealed_text("Weekly sync"));
        for bad in [
            "Weekly sync",
            "pe1:",
            "pe1:%%%%",
            &text[4..],
            &format!("pe2:{}", &text[4..]),
        ] {
            assert_eq!(key.open_text(b"aad", bad), Err(OpenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn sealed_bytes_that_are_not_utf8_do_not_open_as_text() {
        let key = DataKey::generate();
        let text = format!("pe1:{}", Base64::encode_string(&key.seal(b"aad", &[0xff, 0xfe])));
        assert_eq!(key.open_text(b"aad", &text), Err(OpenError::Malformed));
    }

    #[test]
    fn the_aad_of_different_pairs_differs_even_when_their_concatenations_agree() {
        let (a, b) = (conversation("c0123456"), conversation("c01234567"));
        assert_ne!(content_aad(&a, "7x"), content_aad(&b, "x"));
    }

    #[test]
    fn content_sealed_for_a_conversation_before_key_owners_opens_under_its_id_as_owner() {
        // Sealed by parley before key owners existed, under a key of 32 bytes of 0x42.
        let sealed =
            "pe1:ARSgTrSNXm3Iwqbq9O8lClUtRJzOU54pVH6IBWp6fikc1evVzm5dzVOEpDqSUKPdkXjeUveW2UiRPa0PWScq";
        let owner = conversation("ca4301628cb9");
        let aad = content_aad(&owner, "conversation.conversational_context");
        let opened = DataKey::from_bytes(&[0x42; 32]).open_text(&aad, sealed);
        assert_eq!(opened.unwrap(), "Talk about the weather");
        let row = KeyOwner::parse("oa4301628cb9").unwrap();
        let elsewhere = content_aad(&row, "conversation.conversational_context");
        assert_eq!(
            DataKey::from_bytes(&[0x42; 32]).open_text(&elsewhere, sealed),
            Err(OpenError::Rejected)
        );
    }

    #[test]
    fn a_data_key_never_prints_its_bytes() {
        let key = DataKey::from_bytes(&[0xab; 32]);
        assert_eq!(format!("{key:?}"), "DataKey(..)");
    }
}
