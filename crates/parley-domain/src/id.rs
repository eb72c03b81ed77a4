//! Typed ids: a raw string becomes an id only through `parse`, so a malformed one never reaches storage.

use std::fmt;

/// An id that failed to parse; the wire error names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Invalid {0}")]
pub struct InvalidId(pub &'static str);

/// A conversation id: `c` followed by lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ConversationId(String);

impl ConversationId {
    /// Accepts `c` + 6 to 32 lowercase hex digits, the forms seen on the wire.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        if is_prefixed_hex(raw, b'c', 6, 32) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidId("conversation_id"))
        }
    }

    /// Makes a fresh id from 8 random bytes (the caller supplies them from a CSPRNG).
    pub fn from_random(bytes: [u8; 8]) -> Self {
        Self(random_id('c', bytes))
    }

    /// The id as it appears on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whose data key: the id of a sealed object, which owns exactly one key in the key store.
///
/// One lowercase ASCII letter then 6 to 32 lowercase hex digits, so it fits a key store slot's
/// 33 bytes: a conversation id (`c…`) is one, and so is a resource row's internal id (`o…`).
/// The owner's string is what binds a wrapped key to its owner, so a conversation's owner is
/// exactly its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct KeyOwner(String);

impl KeyOwner {
    /// Accepts a lowercase ASCII letter followed by 6 to 32 lowercase hex digits.
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        match raw.as_bytes().first() {
            Some(&prefix) if prefix.is_ascii_lowercase() && is_prefixed_hex(raw, prefix, 6, 32) => {
                Ok(Self(raw.to_owned()))
            }
            _ => Err(InvalidId("key_owner")),
        }
    }

    /// The owner as stored beside its key.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The conversation that owns the key, when the owner is a conversation id.
    pub fn as_conversation(&self) -> Option<ConversationId> {
        ConversationId::parse(&self.0).ok()
    }
}

impl fmt::Display for KeyOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&ConversationId> for KeyOwner {
    fn from(id: &ConversationId) -> Self {
        // Every conversation id is a valid owner: `c` and 6 to 32 lowercase hex digits.
        Self(id.0.clone())
    }
}

impl From<ConversationId> for KeyOwner {
    fn from(id: ConversationId) -> Self {
        Self(id.0)
    }
}

/// A fresh id of another kind: `prefix` and the 8 random bytes in lowercase hex (the caller
/// supplies them from a CSPRNG), e.g. a webhook delivery's `d…`.
pub fn random_id(prefix: char, bytes: [u8; 8]) -> String {
    format!("{prefix}{}", hex::encode(bytes))
}

/// True when `raw` is `prefix` followed by `min..=max` lowercase hex digits.
pub(crate) fn is_prefixed_hex(raw: &str, prefix: u8, min: usize, max: usize) -> bool {
    let bytes = raw.as_bytes();
    let digits = bytes.len().saturating_sub(1);
    bytes.first() == Some(&prefix)
        && (min..=max).contains(&digits)
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_ids_parse() {
        for id in ["c123456", "ca980e2e", "ca4301628cb9"] {
            assert_eq!(ConversationId::parse(id).unwrap().as_str(), id);
        }
    }

    #[test]
    fn anything_else_is_rejected() {
        let long = format!("c{}", "a".repeat(10_000));
        for raw in [
            "",
            "c",
            "c12345",
            "C123456",
            "c12345G",
            "c123456/..",
            "..",
            "c123\u{0}456",
            "agora",
            "persona-builder",
            "r123456",
            &long,
        ] {
            assert_eq!(
                ConversationId::parse(raw),
                Err(InvalidId("conversation_id")),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn conversation_ids_and_row_ids_are_key_owners() {
        let long = format!("o{}", "f".repeat(32));
        for raw in ["c123456", "ca4301628cb9", "o0a1b2c3d4e5f6071", "z000000", &long] {
            assert_eq!(KeyOwner::parse(raw).unwrap().as_str(), raw);
        }
    }

    #[test]
    fn anything_else_is_not_a_key_owner() {
        let long = format!("o{}", "a".repeat(33));
        for raw in [
            "",
            "o",
            "o12345",
            "O0a1b2c3d4e5f6071",
            "0a1b2c3d4e5f6071",
            "o0a1b2c3d4e5f607G",
            "o0A1b2c3d4e5f6071",
            "é0a1b2c3",
            "o0a1b2c3/..",
            "oo123456",
            "-0123456",
            "o123\u{0}456",
            &long,
        ] {
            assert_eq!(KeyOwner::parse(raw), Err(InvalidId("key_owner")), "{raw:?}");
        }
    }

    #[test]
    fn a_conversations_key_owner_is_its_id_and_maps_back() {
        let id = ConversationId::parse("ca4301628cb9").unwrap();
        let owner = KeyOwner::from(&id);
        assert_eq!(owner.as_str(), id.as_str());
        assert_eq!(owner.to_string(), "ca4301628cb9");
        assert_eq!(owner, KeyOwner::from(id.clone()));
        assert_eq!(owner, KeyOwner::parse("ca4301628cb9").unwrap());
        assert_eq!(owner.as_conversation(), Some(id));
    }

    #[test]
    fn a_row_id_owner_is_no_conversation() {
        let owner = KeyOwner::parse("o0a1b2c3d4e5f6071").unwrap();
        assert_eq!(owner.as_conversation(), None);
        assert_eq!(owner.to_string(), "o0a1b2c3d4e5f6071");
    }

    #[test]
    fn fresh_ids_have_sixteen_hex_digits() {
        let id = ConversationId::from_random([0xab; 8]);
        assert_eq!(id.as_str(), "cabababababababab");
        assert!(ConversationId::parse(id.as_str()).is_ok());
    }
}
