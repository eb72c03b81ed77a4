//! The in-memory index of a slot file: a keyed 64-bit hash of each key's owner to its slot.
//!
//! It stores no ids, so a million keys cost about 32 MiB (hashbrown's table of `(u64, u32)`
//! entries at its power-of-two capacity) instead of one heap string each. Two owners may
//! share a hash; both slots are kept, and the store tells them apart by reading the slot, which
//! holds the id. The hash is SipHash under a random per-process key, so nobody can pick ids
//! that collide on purpose.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// Owner hashes to slots.
#[derive(Default)]
pub(super) struct Index {
    ids: RandomState,
    /// The first slot of each hash.
    first: HashMap<u64, u32, BuildHasherDefault<AlreadyHashed>>,
    /// Further slots of a hash that several owners share: almost always empty.
    more: HashMap<u64, Vec<u32>, BuildHasherDefault<AlreadyHashed>>,
    len: usize,
}

impl Index {
    /// The hash under which `owner` is indexed.
    pub(super) fn hash(&self, owner: &str) -> u64 {
        self.ids.hash_one(owner)
    }

    /// Adds a slot under a hash.
    pub(super) fn insert(&mut self, hash: u64, slot: u32) {
        self.len += 1;
        if let Some(_first) = self.first.get(&hash) {
            self.more.entry(hash).or_default().push(slot);
        } else {
            self.first.insert(hash, slot);
        }
    }

    /// Adds a slot under a hash that has none yet, in one lookup; false (and nothing added) if
    /// the hash has a slot already.
    pub(super) fn insert_if_vacant(&mut self, hash: u64, slot: u32) -> bool {
        match self.first.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(slot);
                self.len += 1;
                true
            }
        }
    }

    /// Removes a slot from under a hash; false if it was not there.
    pub(super) fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let removed = if self.first.get(&hash) == Some(&slot) {
            match self.more.get_mut(&hash).and_then(Vec::pop) {
                Some(next) => self.first.insert(hash, next),
                None => self.first.remove(&hash),
            };
            true
        } else if let Some(more) = self.more.get_mut(&hash) {
            let before = more.len();
            more.retain(|&s| s != slot);
            before != more.len()
        } else {
            false
        };
        if self.more.get(&hash).is_some_and(Vec::is_empty) {
            self.more.remove(&hash);
        }
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// Moves an owner's entry from one slot to another.
    pub(super) fn replace(&mut self, hash: u64, old: u32, new: u32) {
        if self.remove(hash, old) {
            self.insert(hash, new);
        }
    }

    /// The slots that may hold the owner with this hash.
    pub(super) fn candidates(&self, hash: u64) -> impl Iterator<Item = u32> + '_ {
        // `more` is almost always empty: skip hashing into it then.
        let more = match self.more.is_empty() {
            true => &[][..],
            false => self.more.get(&hash).map(Vec::as_slice).unwrap_or_default(),
        };
        self.first
            .get(&hash)
            .copied()
            .into_iter()
            .chain(more.iter().copied())
    }

    /// How many slots are indexed.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `n` entries at once, so a large file's open does not rehash as it grows.
    pub(super) fn reserve(&mut self, n: usize) {
        self.first.reserve(n);
    }
}

/// A `Hasher` for keys that are already uniform 64-bit hashes: hashing them again is waste.
#[derive(Default)]
pub(super) struct AlreadyHashed(u64);

impl Hasher for AlreadyHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sharing_a_hash_are_all_candidates_until_removed() {
        let mut index = Index::default();
        index.insert(7, 1);
        index.insert(7, 2);
        index.insert(7, 3);
        assert!(index.insert_if_vacant(8, 4));
        assert!(!index.insert_if_vacant(8, 5));
        assert_eq!(index.candidates(7).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(index.len(), 4);

        assert!(index.remove(7, 1));
        assert!(!index.remove(7, 1));
        let mut left: Vec<_> = index.candidates(7).collect();
        left.sort_unstable();
        assert_eq!(left, [2, 3]);

        index.replace(7, 2, 9);
        assert!(index.remove(7, 3) && index.remove(7, 9));
        assert_eq!(index.candidates(7).count(), 0);
        assert!(index.more.is_empty());
        assert_eq!(index.candidates(8).collect::<Vec<_>>(), [4]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn the_same_id_hashes_the_same_within_an_index() {
        let index = Index::default();
        assert_eq!(index.hash("c0123456"), index.hash("c0123456"));
        assert_ne!(index.hash("c0123456"), index.hash("c0123457"));
    }
}
