//! The key store contract on a slot file, and what only a file can show: its bytes after a
//! destroy, a torn slot, a second copy, a kill.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parley_domain::{ConversationId, KeyOwner};
use parley_keys::slot_file::layout::{self, SLOT_LEN, SlotRead};
use parley_keys::testing::{KeyStoreFixture, T0, WrappedCopy, fresh_conversation};
use parley_keys::{KeyError, KeyId, KeyResult, KeyStore, MasterKey, SlotFileKeyStore};

/// A slot file in a folder of its own, removed with it.
struct TempSlotFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempSlotFile {
    async fn fresh() -> Self {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("keys.slots");
        Self { _dir: dir, path }
    }
}

impl KeyStoreFixture for TempSlotFile {
    async fn open(&self, master: &MasterKey) -> KeyResult<Arc<dyn KeyStore>> {
        let store = if self.path.exists() {
            SlotFileKeyStore::open(&self.path, master.clone()).await?
        } else {
            SlotFileKeyStore::create(&self.path, master.clone()).await?
        };
        Ok(Arc::new(store))
    }

    async fn wrapped_copies(&self) -> Vec<WrappedCopy> {
        let mut copies = Vec::new();
        for slot in live_slots(&self.path).into_values() {
            for wrapped in slot.wraps {
                copies.push(WrappedCopy {
                    owner: slot.owner.clone(),
                    key_id: slot.key_id,
                    wrapped,
                });
            }
        }
        copies
    }

    async fn tear_down(self) {}
}

parley_keys::key_store_contract!(TempSlotFile::fresh());

/// A live slot, owned.
struct Slot {
    owner: KeyOwner,
    key_id: KeyId,
    wraps: Vec<Vec<u8>>,
}

/// Every live slot of the file, by index, read straight from its bytes.
fn live_slots(path: &Path) -> BTreeMap<u32, Slot> {
    let bytes = std::fs::read(path).unwrap();
    bytes[layout::SLOTS_OFFSET as usize..]
        .chunks_exact(SLOT_LEN)
        .enumerate()
        .filter_map(|(i, b)| match layout::decode_slot(b) {
            SlotRead::Live(view) => Some((
                i as u32,
                Slot {
                    owner: KeyOwner::parse(view.owner).unwrap(),
                    key_id: view.key_id,
                    wraps: view.wraps().iter().map(|w| w.wrapped.to_vec()).collect(),
                },
            )),
            _ => None,
        })
        .collect()
}

fn slot_of(path: &Path, owner: &KeyOwner) -> (u32, Slot) {
    live_slots(path)
        .into_iter()
        .find(|(_, s)| s.owner == *owner)
        .expect("the owner has a slot")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
}

#[tokio::test]
async fn after_a_destroy_no_byte_of_the_wrapped_key_its_id_or_the_conversation_id_is_left_in_the_file() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::generate();
    let store = f.open(&master).await.unwrap();
    let victim = fresh_conversation();
    store.create(&victim, T0).await.unwrap();
    let others: Vec<_> = (0..5).map(|_| fresh_conversation()).collect();
    store.create_many(&others, T0).await.unwrap();
    let (_, slot) = slot_of(&f.path, &victim);
    let before = std::fs::read(&f.path).unwrap();
    assert!(contains(&before, victim.as_str().as_bytes()) && contains(&before, &slot.wraps[0]));

    store.destroy(&victim).await.unwrap();

    let after = std::fs::read(&f.path).unwrap();
    assert_eq!(after.len(), before.len(), "a destroy overwrites in place");
    assert!(
        !contains(&after, victim.as_str().as_bytes()),
        "the conversation id is left"
    );
    assert!(!contains(&after, &slot.key_id.to_bytes()), "the key id is left");
    // Any 12 bytes of the wrapped key (nonce or ciphertext) would be a leftover.
    for window in slot.wraps[0].windows(12).step_by(6) {
        assert!(!contains(&after, window), "a piece of the wrapped key is left");
    }
    for other in &others {
        assert!(
            contains(&after, other.as_str().as_bytes()),
            "another key was harmed"
        );
    }
}

#[tokio::test]
async fn after_a_rotation_no_copy_wrapped_under_the_old_master_key_is_left_in_the_file() {
    let f = TempSlotFile::fresh().await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let store = f.open(&old).await.unwrap();
    let conversations: Vec<_> = (0..300).map(|_| fresh_conversation()).collect();
    store.create_many(&conversations, T0).await.unwrap();
    let old_copies: Vec<Vec<u8>> = live_slots(&f.path).into_values().flat_map(|s| s.wraps).collect();
    assert_eq!(old_copies.len(), 300);

    store
        .rotate(new, &|_| std::ops::ControlFlow::Continue(()))
        .await
        .unwrap();

    let after = std::fs::read(&f.path).unwrap();
    for copy in &old_copies {
        assert!(
            !contains(&after, &copy[1..25]),
            "an old wrapped copy's nonce is left"
        );
        assert!(!contains(&after, &copy[25..]), "an old wrapped copy is left");
    }
    assert_eq!(live_slots(&f.path).len(), 300);
}

#[tokio::test]
async fn a_torn_slot_is_wiped_at_open_and_reported_never_read_as_a_key() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::generate();
    let store = f.open(&master).await.unwrap();
    let (victim, bystander) = (fresh_conversation(), fresh_conversation());
    store.create(&victim, T0).await.unwrap();
    let kept = store.create(&bystander, T0).await.unwrap();
    drop(store);
    // A create cut short: the slot's second half never reached the disk.
    let (index, _) = slot_of(&f.path, &victim);
    let offset = layout::slot_offset(index);
    write_at(&f.path, offset + 128, &[0; 128]);

    let store = f.open(&master).await.unwrap();
    assert!(store.get(&victim).await.unwrap().is_none());
    let status = store.status().await.unwrap();
    assert_eq!(status.repaired_at_open.len(), 1, "{:?}", status.repaired_at_open);
    assert!(status.repaired_at_open[0].contains(&format!("slot {index} was torn")));
    assert_eq!(status.keys, 1);
    let bytes = std::fs::read(&f.path).unwrap();
    let start = offset as usize;
    assert!(
        bytes[start..start + SLOT_LEN].iter().all(|&b| b == 0),
        "the torn slot was wiped"
    );
    let got = store.get(&bystander).await.unwrap().unwrap();
    assert_eq!(got.key.expose_bytes(), kept.key.expose_bytes());
    drop(store);

    // Reported once: the wipe itself was durable.
    let store = f.open(&master).await.unwrap();
    assert!(store.status().await.unwrap().repaired_at_open.is_empty());
}

#[tokio::test]
async fn a_wrapped_key_altered_under_a_valid_checksum_fails_to_unwrap_rather_than_give_a_key() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::generate();
    let store = f.open(&master).await.unwrap();
    let conversation = fresh_conversation();
    store.create(&conversation, T0).await.unwrap();
    drop(store);
    let (index, slot) = slot_of(&f.path, &conversation);
    let mut altered = slot.wraps[0].clone();
    altered[40] ^= 0x01;
    let wraps = [layout::Wrap {
        master: master.id(),
        wrapped: &altered,
    }];
    let bytes = layout::encode_slot(&conversation, slot.key_id, T0.as_micros(), &wraps);
    write_at(&f.path, layout::slot_offset(index), &bytes);

    let store = f.open(&master).await.unwrap();
    let err = store.get(&conversation).await.unwrap_err();
    assert!(matches!(err, KeyError::Unwrap { .. }), "{err}");
}

#[tokio::test]
async fn a_slot_file_in_use_by_another_store_is_refused() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::generate();
    let store = f.open(&master).await.unwrap();
    let err = SlotFileKeyStore::open(&f.path, master.clone())
        .await
        .err()
        .unwrap();
    assert!(matches!(&err, KeyError::Locked(p) if *p == f.path), "{err}");
    drop(store);
    assert!(SlotFileKeyStore::open(&f.path, master).await.is_ok());
}

/// A key slot written for conversation `ca4301628cb9` by parley before key owners existed: key id
/// `k1032547698badcfe`, created at 1_700_000_000_000_000 µs, wrapped under master key `0011…eeff`
/// twice (the key's bytes are all `0x42`).
const SLOT_OF_A_CONVERSATION: &str = "\
    010c6361343330313632386362390000000000000000000000000000000000000000001032547698badcfe00401e1824\
    0a060002a0da34465053de017cc5520886119f94deafb8dd8d3d2328b51deb7100006a53a220f0c09f99436034c1eda9\
    9dbbac0287ac2905b6876f2f12a1e2d1fbba6338e8e489339d591ae88df958ab421e543b000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000\
    0000000000000000000000006d3ec1b6";

#[tokio::test]
async fn a_slot_file_written_before_key_owners_opens_and_serves_its_conversations_key() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::parse(&"00112233445566778899aabbccddeeff".repeat(2)).unwrap();
    drop(f.open(&master).await.unwrap());
    let slot = hex::decode(SLOT_OF_A_CONVERSATION).unwrap();
    assert_eq!(slot.len(), SLOT_LEN);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f.path)
        .unwrap()
        .set_len(layout::slot_offset(1))
        .unwrap();
    write_at(&f.path, layout::slot_offset(0), &slot);

    let store = f.open(&master).await.unwrap();
    assert!(store.status().await.unwrap().repaired_at_open.is_empty());
    let id = ConversationId::parse("ca4301628cb9").unwrap();
    let owner = KeyOwner::from(&id);
    let got = store.get(&owner).await.unwrap().expect("the old key");
    assert_eq!(got.key_id.to_string(), "k1032547698badcfe");
    assert_eq!(got.key.expose_bytes(), &[0x42; 32]);
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].owner.as_conversation(), Some(id));
    assert_eq!(
        listed[0].created_at,
        parley_domain::Timestamp::from_micros(1_700_000_000_000_000)
    );

    // The same slot written today is byte for byte the old one.
    let wrapped = live_slots(&f.path)[&0].wraps[0].clone();
    let wraps = [layout::Wrap {
        master: master.id(),
        wrapped: &wrapped,
    }];
    let today = layout::encode_slot(&owner, got.key_id, 1_700_000_000_000_000, &wraps);
    assert_eq!(today.as_slice(), slot.as_slice());
    assert_eq!(store.destroy(&owner).await.unwrap(), Some(got.key_id));
    assert!(!contains(&std::fs::read(&f.path).unwrap(), b"ca4301628cb9"));
}

#[tokio::test]
async fn a_closed_store_lets_go_of_its_file_while_still_held_and_refuses_further_calls() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::generate();
    let store = f.open(&master).await.unwrap();
    let conversation = KeyOwner::parse("c0123456789abcdef").unwrap();
    let made = store.create(&conversation, T0).await.unwrap();
    // Something still holds the old store (a task finishing late), yet it can be opened again.
    store.close().await;
    let reopened = SlotFileKeyStore::open(&f.path, master).await.unwrap();
    let got = reopened.get(&conversation).await.unwrap().expect("the key");
    assert_eq!(got.key.expose_bytes(), made.key.expose_bytes());
    let err = store.get(&conversation).await.unwrap_err();
    assert!(matches!(err, KeyError::Stopped(_)), "{err}");
    let err = store.destroy(&conversation).await.unwrap_err();
    assert!(matches!(err, KeyError::Stopped(_)), "{err}");
    assert!(reopened.get(&conversation).await.unwrap().is_some());
}

#[tokio::test]
async fn open_never_creates_a_file_and_create_never_replaces_one() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::generate();
    let err = SlotFileKeyStore::open(&f.path, master.clone())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, KeyError::Missing(_)), "{err}");
    assert!(!f.path.exists());

    let store = SlotFileKeyStore::create(&f.path, master.clone()).await.unwrap();
    let conversation = fresh_conversation();
    store.create(&conversation, T0).await.unwrap();
    drop(store);
    let err = SlotFileKeyStore::create(&f.path, master.clone())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("creating the key store"), "{err}");
    let store = SlotFileKeyStore::open(&f.path, master).await.unwrap();
    assert!(store.get(&conversation).await.unwrap().is_some());

    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&f.path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn a_second_copy_left_by_an_interrupted_move_is_wiped_at_open_so_a_destroy_leaves_none() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::generate();
    let store = f.open(&master).await.unwrap();
    let conversation = fresh_conversation();
    let made = store.create(&conversation, T0).await.unwrap();
    drop(store);
    let (index, slot) = slot_of(&f.path, &conversation);
    let mut bytes = vec![0u8; SLOT_LEN];
    std::fs::File::open(&f.path)
        .unwrap()
        .read_exact_at(&mut bytes, layout::slot_offset(index))
        .unwrap();
    write_at(&f.path, layout::slot_offset(index + 7), &bytes);
    assert_eq!(live_slots(&f.path).len(), 2);

    let store = f.open(&master).await.unwrap();
    let status = store.status().await.unwrap();
    assert_eq!(status.keys, 1);
    assert!(
        status.repaired_at_open.iter().any(|r| r.contains("second copy")),
        "{:?}",
        status.repaired_at_open
    );
    assert_eq!(live_slots(&f.path).len(), 1);
    let got = store.get(&conversation).await.unwrap().unwrap();
    assert_eq!(got.key.expose_bytes(), made.key.expose_bytes());

    store.destroy(&conversation).await.unwrap();
    let after = std::fs::read(&f.path).unwrap();
    assert!(!contains(&after, &slot.wraps[0][25..]));
    assert!(!contains(&after, conversation.as_str().as_bytes()));
}

#[tokio::test]
async fn free_slots_are_reused_so_churn_does_not_grow_the_file() {
    let f = TempSlotFile::fresh().await;
    let store = f.open(&MasterKey::generate()).await.unwrap();
    let first: Vec<_> = (0..40).map(|_| fresh_conversation()).collect();
    store.create_many(&first, T0).await.unwrap();
    let len = std::fs::metadata(&f.path).unwrap().len();
    for round in 0..5 {
        for conversation in store.list().await.unwrap() {
            store.destroy(&conversation.owner).await.unwrap();
        }
        let next: Vec<_> = (0..40).map(|_| fresh_conversation()).collect();
        store.create_many(&next, T0).await.unwrap();
        assert_eq!(std::fs::metadata(&f.path).unwrap().len(), len, "round {round}");
    }
}

#[tokio::test]
async fn a_torn_header_write_falls_back_to_the_previous_header() {
    let f = TempSlotFile::fresh().await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let store = f.open(&old).await.unwrap();
    let conversations: Vec<_> = (0..10).map(|_| fresh_conversation()).collect();
    let keys = store.create_many(&conversations, T0).await.unwrap();
    // The header's second write (the rotation's start) goes to copy 0; tear it.
    let err = store
        .rotate(new.clone(), &|_| std::ops::ControlFlow::Break(()))
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::RotationInterrupted));
    drop(store);
    write_at(&f.path, 200, &[0xff; 100]);

    let store = f.open(&old).await.unwrap();
    assert_eq!(
        store.status().await.unwrap().unfinished_rotation,
        None,
        "the previous header"
    );
    for (conversation, key) in conversations.iter().zip(&keys) {
        let got = store.get(conversation).await.unwrap().unwrap();
        assert_eq!(got.key.expose_bytes(), key.key.expose_bytes());
    }
    store
        .rotate(new.clone(), &|_| std::ops::ControlFlow::Continue(()))
        .await
        .unwrap();
    drop(store);
    let store = f.open(&new).await.unwrap();
    assert_eq!(store.list().await.unwrap().len(), 10);
}

#[tokio::test]
async fn a_file_whose_headers_are_both_unreadable_is_refused_not_reinitialised() {
    let f = TempSlotFile::fresh().await;
    let master = MasterKey::generate();
    let store = f.open(&master).await.unwrap();
    store.create(&fresh_conversation(), T0).await.unwrap();
    drop(store);
    write_at(&f.path, 0, &[0x55; 1024]);
    let err = f.open(&master).await.err().unwrap();
    assert!(matches!(err, KeyError::Corrupt(_)), "{err}");
    assert_eq!(
        live_slots(&f.path).len(),
        1,
        "the keys are left for an operator to recover"
    );
}

/// Set in the child process of the kill test: the slot file it writes to.
const KILL_CHILD: &str = "PARLEY_KEYS_KILL_TEST_FILE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_create_and_destroy_survives_a_kill_at_an_arbitrary_moment() {
    let master_text = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let master = MasterKey::parse(master_text).unwrap();
    if let Ok(path) = std::env::var(KILL_CHILD) {
        return kill_child(Path::new(&path), master).await;
    }
    let f = TempSlotFile::fresh().await;
    drop(f.open(&master).await.unwrap());
    let mut created: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut destroyed = Vec::new();
    for round in 0..4u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "every_acknowledged_create_and_destroy_survives_a_kill_at_an_arbitrary_moment",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(KILL_CHILD, &f.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it get going, then kill it after a varying number of acknowledgements.
        let mut acks = 0;
        while acks < 40 + round * 25 {
            let line = lines.next().expect("the child keeps writing").unwrap();
            if !note(&line, &mut created, &mut destroyed) {
                continue;
            }
            acks += 1;
        }
        std::thread::sleep(Duration::from_millis(3 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines the child wrote before it died are acknowledgements too.
        for line in lines.map_while(Result::ok) {
            note(&line, &mut created, &mut destroyed);
        }

        let store = f.open(&master).await.unwrap();
        assert!(
            store.status().await.unwrap().repaired_at_open.is_empty(),
            "a kill tears no write"
        );
        for (conversation, (key_id, key)) in &created {
            let got = store
                .get(&KeyOwner::parse(conversation).unwrap())
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("round {round}: acknowledged key of {conversation} lost"));
            assert_eq!(
                (got.key_id.to_string(), hex::encode(got.key.expose_bytes())),
                (key_id.clone(), key.clone())
            );
        }
        for conversation in &destroyed {
            let gone = store.get(&KeyOwner::parse(conversation).unwrap()).await.unwrap();
            assert!(
                gone.is_none(),
                "round {round}: destroyed key of {conversation} came back"
            );
        }
    }
    assert!(
        created.len() > 50 && destroyed.len() > 20,
        "{} {}",
        created.len(),
        destroyed.len()
    );
}

/// Records one line of the child's: an acknowledged create, a destroy about to start (after
/// which the key may or may not be there), or an acknowledged destroy. False for other lines.
fn note(line: &str, created: &mut BTreeMap<String, (String, String)>, destroyed: &mut Vec<String>) -> bool {
    match line.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["created", c, k, key] => {
            created.insert(c.to_string(), (k.to_string(), key.to_string()));
        }
        ["destroying", c] => {
            created.remove(*c);
        }
        ["destroyed", c] => destroyed.push(c.to_string()),
        _ => return false,
    }
    true
}

/// The child: creates keys and destroys every third one until killed, printing each
/// acknowledgement as soon as the store gives it, and each destroy before it starts.
async fn kill_child(path: &Path, master: MasterKey) {
    let store = SlotFileKeyStore::open(path, master).await.unwrap();
    for i in 0u64.. {
        let conversation = fresh_conversation();
        let made = store.create(&conversation, T0).await.unwrap();
        println!(
            "created {conversation} {} {}",
            made.key_id,
            hex::encode(made.key.expose_bytes())
        );
        if i % 3 == 0 {
            println!("destroying {conversation}");
            store.destroy(&conversation).await.unwrap();
            println!("destroyed {conversation}");
        }
    }
}
