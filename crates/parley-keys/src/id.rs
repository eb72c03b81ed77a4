//! Key ids: `k` + 16 lowercase hex, random, so a receipt can name a destroyed key without holding it.

use std::fmt;

/// A string that is not a key id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid key id: expected `k` followed by 16 lowercase hex digits")]
pub struct InvalidKeyId;

/// The public name of one data key: `k` + 16 lowercase hex digits.
///
/// It is random rather than derived from the key, so it says nothing about the key's bytes, and
/// it is what an erasure receipt records once the key itself is gone.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// A fresh id from the thread's CSPRNG.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Accepts exactly `k` + 16 lowercase hex digits, the only form this crate writes.
    pub fn parse(raw: &str) -> Result<Self, InvalidKeyId> {
        let hex_part = raw.strip_prefix('k').ok_or(InvalidKeyId)?;
        if hex_part.len() != 16 || !hex_part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidKeyId);
        }
        let mut bytes = [0; 8];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| InvalidKeyId)?;
        Ok(Self(bytes))
    }

    /// The id's 8 bytes, as a slot stores them.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// The id from its 8 bytes.
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "k{}", hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_id_prints_as_k_and_sixteen_hex_digits_and_parses_back() {
        let id = KeyId::from_bytes([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f, 0x60, 0x71]);
        assert_eq!(id.to_string(), "k0a1b2c3d4e5f6071");
        assert_eq!(KeyId::parse("k0a1b2c3d4e5f6071"), Ok(id));
    }

    #[test]
    fn anything_else_is_not_a_key_id() {
        for raw in [
            "",
            "k",
            "k0a1b2c3d4e5f607",
            "k0a1b2c3d4e5f60711",
            "K0a1b2c3d4e5f6071",
            "k0A1b2c3d4e5f6071",
            "c0a1b2c3d4e5f6071",
            "k0a1b2c3d4e5f60+1",
        ] {
            assert_eq!(KeyId::parse(raw), Err(InvalidKeyId), "{raw:?}");
        }
    }

    #[test]
    fn fresh_key_ids_differ() {
        assert_ne!(KeyId::random(), KeyId::random());
    }
}
