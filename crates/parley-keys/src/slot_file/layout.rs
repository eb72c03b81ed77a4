//! The slot file's bytes: two header copies, then fixed-size slots, each checked by a CRC-32C.
//!
//! ```text
//! offset 0     header copy 0   512 bytes
//! offset 512   header copy 1   512 bytes
//! offset 1024  slot 0          256 bytes
//! offset 1280  slot 1          256 bytes ...
//! ```
//!
//! A header copy:
//!
//! ```text
//!   0  8  magic "PRLYKEYS"
//!   8  4  format version, u32 little-endian (1)
//!  12  4  slot length, u32 little-endian (256)
//!  16  8  sequence, u64 little-endian: the copy with the higher one is current
//!  24  8  id of the master key in use
//!  32  1  rotation: 0 none, 1 rewrapping (to the key below), 2 retiring (the key below)
//!  33  8  the other master key of the rotation, zeros when none
//!  41  1  1 when the next field holds a master key rotated out, else 0
//!  42  8  the master key the store last rotated from (so it can be named as such), or zeros
//!  50 458 zeros
//! 508  4  CRC-32C of bytes 0..508, little-endian
//! ```
//!
//! A slot:
//!
//! ```text
//!   0  1  state: 0 empty, 1 one wrapped copy, 2 two (during a rotation)
//!   1  1  length of the owner (7..=33)
//!   2 33  owner: the id of the sealed object (a conversation id), ASCII, zero-padded
//!  35  8  key id
//!  43  8  created at, microseconds since the epoch, i64 little-endian
//!  51  8  master key id of the first wrapped copy
//!  59 73  first wrapped copy (a sealed value: version, nonce, ciphertext, tag)
//! 132  8  master key id of the second wrapped copy, or zeros
//! 140 73  second wrapped copy, or zeros
//! 213 39  zeros
//! 252  4  CRC-32C of bytes 0..252, little-endian
//! ```
//!
//! An empty slot is 256 zero bytes. Anything else whose CRC or fields do not check out is torn:
//! a write that a crash cut short. Slots are 256 bytes at offsets that are multiples of 256, so
//! none straddles a 512-byte sector, and the two header copies are a sector each.

use parley_domain::KeyOwner;

use crate::id::KeyId;
use crate::master::{MasterKeyId, WRAPPED_LEN};
use crate::store::UnfinishedRotation;

/// Bytes of one header copy.
pub const HEADER_LEN: usize = 512;
/// Where the first slot starts: after the two header copies.
pub const SLOTS_OFFSET: u64 = 2 * HEADER_LEN as u64;
/// Bytes of one slot.
pub const SLOT_LEN: usize = 256;
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &[u8; 8] = b"PRLYKEYS";
const HEADER_CRC_AT: usize = HEADER_LEN - 4;
const SLOT_CRC_AT: usize = SLOT_LEN - 4;
const ID_MAX: usize = 33;
const WRAP_AT: [usize; 2] = [51, 132];

/// Slice-by-16 tables: about ten times the default byte-at-a-time speed, which is most of what
/// opening a million slots costs.
static CRC32C: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// The store-wide state a header records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Higher wins between the two copies; each header write goes to the older copy.
    pub sequence: u64,
    /// The master key in use.
    pub master: MasterKeyId,
    /// A rotation under way, if any.
    pub rotation: Rotation,
    /// The master key the store last switched from: only its id, to name it when it is given.
    pub previous: Option<MasterKeyId>,
}

/// A rotation as the header records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// No rotation under way.
    None,
    /// Every key is being wrapped under this master key too.
    Rewrapping(MasterKeyId),
    /// The store switched from this master key; its copies are being removed.
    Retiring(MasterKeyId),
}

impl Header {
    /// The rotation in the terms of [`UnfinishedRotation`].
    pub fn unfinished_rotation(&self) -> Option<UnfinishedRotation> {
        match self.rotation {
            Rotation::None => None,
            Rotation::Rewrapping(to) => Some(UnfinishedRotation::Rewrapping {
                from: self.master,
                to,
            }),
            Rotation::Retiring(from) => Some(UnfinishedRotation::Retiring {
                from,
                to: self.master,
            }),
        }
    }
}

/// Why a header copy was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Not a slot file's header at all, or torn: magic or CRC wrong.
    Unreadable,
    /// A parley key store of a format (or slot length) this build does not know.
    UnknownFormat {
        /// The version it records.
        version: u32,
        /// The slot length it records.
        slot_len: u32,
    },
}

/// A header copy's bytes.
pub fn encode_header(header: &Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(SLOT_LEN as u32).to_le_bytes());
    b[16..24].copy_from_slice(&header.sequence.to_le_bytes());
    b[24..32].copy_from_slice(&header.master.to_bytes());
    let (state, other) = match header.rotation {
        Rotation::None => (0, [0; 8]),
        Rotation::Rewrapping(to) => (1, to.to_bytes()),
        Rotation::Retiring(from) => (2, from.to_bytes()),
    };
    b[32] = state;
    b[33..41].copy_from_slice(&other);
    if let Some(previous) = header.previous {
        b[41] = 1;
        b[42..50].copy_from_slice(&previous.to_bytes());
    }
    let crc = CRC32C.checksum(&b[..HEADER_CRC_AT]);
    b[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads a header copy.
pub fn decode_header(b: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
    if &b[0..8] != MAGIC || CRC32C.checksum(&b[..HEADER_CRC_AT]) != le_u32(&b[HEADER_CRC_AT..]) {
        return Err(HeaderError::Unreadable);
    }
    let (version, slot_len) = (le_u32(&b[8..12]), le_u32(&b[12..16]));
    if version != FORMAT_VERSION || slot_len as usize != SLOT_LEN {
        return Err(HeaderError::UnknownFormat { version, slot_len });
    }
    let other = MasterKeyId::from_bytes(b[33..41].try_into().expect("8 bytes"));
    let rotation = match b[32] {
        0 => Rotation::None,
        1 => Rotation::Rewrapping(other),
        2 => Rotation::Retiring(other),
        _ => return Err(HeaderError::Unreadable),
    };
    let previous = match b[41] {
        0 => None,
        1 => Some(MasterKeyId::from_bytes(b[42..50].try_into().expect("8 bytes"))),
        _ => return Err(HeaderError::Unreadable),
    };
    Ok(Header {
        previous,
        sequence: u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
        master: MasterKeyId::from_bytes(b[24..32].try_into().expect("8 bytes")),
        rotation,
    })
}

/// One wrapped copy of a data key, and the master key it is wrapped under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wrap<'a> {
    /// The master key that opens it.
    pub master: MasterKeyId,
    /// The sealed data key.
    pub wrapped: &'a [u8],
}

/// A live slot, borrowed from the bytes it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView<'a> {
    /// Whose key (already checked to be a lowercase letter + lowercase hex, a [`KeyOwner`]).
    pub owner: &'a str,
    /// Which key.
    pub key_id: KeyId,
    /// When it was created, microseconds since the epoch.
    pub created_at: i64,
    wraps: [Wrap<'a>; 2],
    wrap_count: usize,
}

impl<'a> SlotView<'a> {
    /// Its wrapped copies: one, or two during a rotation.
    pub fn wraps(&self) -> &[Wrap<'a>] {
        &self.wraps[..self.wrap_count]
    }

    /// The copy wrapped under `master`, if there is one.
    pub fn wrap_under(&self, master: MasterKeyId) -> Option<&'a [u8]> {
        self.wraps()
            .iter()
            .find(|w| w.master == master)
            .map(|w| w.wrapped)
    }
}

/// What a slot's bytes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRead<'a> {
    /// All zeros: free.
    Empty,
    /// A key.
    Live(SlotView<'a>),
    /// Neither: a write cut short, or damage. Never read as a key.
    Torn,
}

/// A live slot's bytes. `wraps` holds one or two copies, each a 73-byte wrapped data key.
pub fn encode_slot(owner: &KeyOwner, key_id: KeyId, created_at: i64, wraps: &[Wrap<'_>]) -> [u8; SLOT_LEN] {
    assert!(
        matches!(wraps.len(), 1 | 2),
        "a slot holds one or two wrapped copies"
    );
    let id = owner.as_str().as_bytes();
    let mut b = [0u8; SLOT_LEN];
    b[0] = wraps.len() as u8;
    // KeyOwner::parse allows at most 33 bytes, which is what the slot has room for.
    b[1] = id.len() as u8;
    b[2..2 + id.len()].copy_from_slice(id);
    b[35..43].copy_from_slice(&key_id.to_bytes());
    b[43..51].copy_from_slice(&created_at.to_le_bytes());
    for (wrap, at) in wraps.iter().zip(WRAP_AT) {
        assert_eq!(wrap.wrapped.len(), WRAPPED_LEN, "a wrapped data key's length");
        b[at..at + 8].copy_from_slice(&wrap.master.to_bytes());
        b[at + 8..at + 8 + WRAPPED_LEN].copy_from_slice(wrap.wrapped);
    }
    let crc = CRC32C.checksum(&b[..SLOT_CRC_AT]);
    b[SLOT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads a slot's bytes (exactly [`SLOT_LEN`] of them).
pub fn decode_slot(b: &[u8]) -> SlotRead<'_> {
    let b: &[u8; SLOT_LEN] = match b.try_into() {
        Ok(b) => b,
        Err(_) => return SlotRead::Torn,
    };
    if b[0] == 0 {
        return if b.iter().all(|&x| x == 0) {
            SlotRead::Empty
        } else {
            SlotRead::Torn
        };
    }
    if !matches!(b[0], 1 | 2) || CRC32C.checksum(&b[..SLOT_CRC_AT]) != le_u32(&b[SLOT_CRC_AT..]) {
        return SlotRead::Torn;
    }
    let len = b[1] as usize;
    let id = &b[2..2 + len.min(ID_MAX)];
    let id_ok = (7..=ID_MAX).contains(&len)
        && id[0].is_ascii_lowercase()
        && id[1..].iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let Ok(owner) = std::str::from_utf8(id) else {
        return SlotRead::Torn;
    };
    if !id_ok {
        return SlotRead::Torn;
    }
    let wrap = |at: usize| Wrap {
        master: MasterKeyId::from_bytes(b[at..at + 8].try_into().expect("8 bytes")),
        wrapped: &b[at + 8..at + 8 + WRAPPED_LEN],
    };
    SlotRead::Live(SlotView {
        owner,
        key_id: KeyId::from_bytes(b[35..43].try_into().expect("8 bytes")),
        created_at: i64::from_le_bytes(b[43..51].try_into().expect("8 bytes")),
        wraps: [wrap(WRAP_AT[0]), wrap(WRAP_AT[1])],
        wrap_count: b[0] as usize,
    })
}

/// The file offset of slot `index`.
pub fn slot_offset(index: u32) -> u64 {
    SLOTS_OFFSET + u64::from(index) * SLOT_LEN as u64
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(n: u8) -> MasterKeyId {
        MasterKeyId::from_bytes([n; 8])
    }

    #[test]
    fn a_header_round_trips_in_every_rotation_state() {
        for rotation in [
            Rotation::None,
            Rotation::Rewrapping(master(2)),
            Rotation::Retiring(master(3)),
        ] {
            let header = Header {
                sequence: 7,
                master: master(1),
                rotation,
                previous: Some(master(4)),
            };
            assert_eq!(decode_header(&encode_header(&header)), Ok(header));
        }
    }

    #[test]
    fn a_header_with_any_byte_changed_is_not_read() {
        let bytes = encode_header(&Header {
            sequence: 1,
            master: master(1),
            rotation: Rotation::None,
            previous: None,
        });
        for i in 0..HEADER_LEN {
            let mut torn = bytes;
            torn[i] ^= 0x80;
            assert!(decode_header(&torn).is_err(), "byte {i}");
        }
    }

    #[test]
    fn a_header_of_a_newer_format_says_so() {
        let mut bytes = encode_header(&Header {
            sequence: 1,
            master: master(1),
            rotation: Rotation::None,
            previous: None,
        });
        bytes[8] = 2;
        let crc = CRC32C.checksum(&bytes[..HEADER_CRC_AT]);
        bytes[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&bytes),
            Err(HeaderError::UnknownFormat {
                version: 2,
                slot_len: 256
            })
        );
    }

    #[test]
    fn a_slot_round_trips_with_one_or_two_wrapped_copies() {
        let owner = KeyOwner::parse(&format!("c{}", "f".repeat(32))).unwrap();
        let (w1, w2) = ([1u8; WRAPPED_LEN], [2u8; WRAPPED_LEN]);
        let wraps = [
            Wrap {
                master: master(1),
                wrapped: &w1,
            },
            Wrap {
                master: master(2),
                wrapped: &w2,
            },
        ];
        for n in [1, 2] {
            let bytes = encode_slot(&owner, KeyId::from_bytes([9; 8]), -5, &wraps[..n]);
            let SlotRead::Live(view) = decode_slot(&bytes) else {
                panic!("not live")
            };
            assert_eq!(view.owner, owner.as_str());
            assert_eq!(view.key_id, KeyId::from_bytes([9; 8]));
            assert_eq!(view.created_at, -5);
            assert_eq!(view.wraps(), &wraps[..n]);
            assert_eq!(view.wrap_under(master(2)), (n == 2).then_some(&w2[..]));
        }
    }

    #[test]
    fn zeros_are_empty_and_any_changed_byte_or_a_half_write_is_torn() {
        assert_eq!(decode_slot(&[0; SLOT_LEN]), SlotRead::Empty);
        let owner = KeyOwner::parse("c0123456").unwrap();
        let w = [7u8; WRAPPED_LEN];
        let bytes = encode_slot(
            &owner,
            KeyId::random(),
            1,
            &[Wrap {
                master: master(1),
                wrapped: &w,
            }],
        );
        for i in 0..SLOT_LEN {
            let mut torn = bytes;
            torn[i] ^= 0x01;
            assert_eq!(decode_slot(&torn), SlotRead::Torn, "byte {i}");
        }
        // The first half written, the second still zero; and the reverse.
        let mut half = [0u8; SLOT_LEN];
        half[..128].copy_from_slice(&bytes[..128]);
        assert_eq!(decode_slot(&half), SlotRead::Torn);
        let mut half = [0u8; SLOT_LEN];
        half[128..].copy_from_slice(&bytes[128..]);
        assert_eq!(decode_slot(&half), SlotRead::Torn);
    }

    #[test]
    fn no_slot_straddles_a_sector() {
        for index in [0, 1, 2, 3, 1_000_001] {
            let start = slot_offset(index);
            assert_eq!(start / 512, (start + SLOT_LEN as u64 - 1) / 512, "slot {index}");
        }
    }
}
