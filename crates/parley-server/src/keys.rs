//! API keys: random secrets shown once, stored and looked up only by their SHA-256.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// A fresh key (32 lowercase hex digits, like hosted keys) and its id.
pub fn generate() -> (String, String) {
    let mut secret = [0u8; 16];
    let mut id = [0u8; 6];
    rand::rng().fill_bytes(&mut secret);
    rand::rng().fill_bytes(&mut id);
    (format!("k{}", hex::encode(id)), hex::encode(secret))
}

/// The stored form of a key.
///
/// A fast hash is enough: keys are 128 random bits, so there is nothing to brute-force, and a
/// lookup by hash reveals nothing about the key through timing.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_hash_deterministically() {
        let (id1, k1) = generate();
        let (id2, k2) = generate();
        assert_ne!(k1, k2);
        assert_ne!(id1, id2);
        assert_eq!(k1.len(), 32);
        assert_eq!(hash(&k1), hash(&k1));
        assert_ne!(hash(&k1), hash(&k2));
    }
}
