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
    fn fresh_ids_have_sixteen_hex_digits() {
        let id = ConversationId::from_random([0xab; 8]);
        assert_eq!(id.as_str(), "cabababababababab");
        assert!(ConversationId::parse(id.as_str()).is_ok());
    }
}
