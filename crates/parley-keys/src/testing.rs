//! The key store contract: what every `KeyStore` must do, asserted through the trait alone.
//!
//! An implementation's tests call [`key_store_contract!`](crate::key_store_contract) with an
//! expression that makes a fresh [`KeyStoreFixture`]: storage (a file, a database) that the
//! tests open, drop and open again with master keys of their choosing. Each test is reported by
//! its own name. Besides the trait, a fixture reads the wrapped copies straight from its storage,
//! so that "the old master key opens nothing" is checked on the bytes, not on the store's word.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parley_domain::{ConversationId, KeyOwner, Timestamp, random_id};

use crate::{
    ConversationKey, DataKey, ImportedKey, KeyError, KeyId, KeyInfo, KeyResult, KeyStore, MasterKey,
    RotationPhase, RotationProgress, UnfinishedRotation, content_aad,
};

/// Expands to one `#[tokio::test]` per contract test, each on a fixture of its own.
///
/// `$fresh` is an expression whose value is a future of a fresh [`KeyStoreFixture`]; for
/// example, in `tests/slot_file.rs`: `parley_keys::key_store_contract!(TempSlotFile::fresh());`.
#[macro_export]
macro_rules! key_store_contract {
    ($fresh:expr) => {
        $crate::key_store_contract!(@each $fresh;
            a_created_key_reads_back_the_same_until_it_is_destroyed,
            destroying_a_key_twice_or_one_never_made_is_fine,
            a_second_key_for_the_same_conversation_is_refused,
            a_resource_rows_key_is_created_read_listed_destroyed_and_imported_like_a_conversations,
            a_key_made_again_after_a_destroy_is_a_new_key,
            a_destroyed_key_never_comes_back_after_reopening,
            acknowledged_keys_survive_a_drop_without_a_clean_close,
            concurrent_creates_and_destroys_from_many_tasks_all_land,
            the_list_shows_each_key_once_with_its_id_and_creation_time,
            a_store_opened_with_the_wrong_master_key_is_refused,
            after_a_rotation_every_key_is_unchanged_and_only_the_new_master_key_opens_them,
            a_rotation_interrupted_while_rewrapping_resumes_and_rewraps_keys_made_meanwhile,
            a_rotation_interrupted_after_the_switch_is_finished_with_the_new_master_key,
            rotating_to_the_master_key_in_use_changes_nothing,
            imported_keys_keep_their_ids_bytes_and_creation_times,
            importing_again_skips_keys_already_there_and_refuses_another_key,
            keys_imported_during_an_interrupted_rotation_are_rewrapped_when_it_resumes,
        );
    };
    (@each $fresh:expr; $($name:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::testing::$name($fresh.await).await;
            }
        )+
    };
}

/// A data key as one storage holds it, read past the store.
#[derive(Debug, Clone)]
pub struct WrappedCopy {
    /// Whose key.
    pub owner: KeyOwner,
    /// Which key.
    pub key_id: KeyId,
    /// The wrapped bytes.
    pub wrapped: Vec<u8>,
}

/// Storage for one test: opened, dropped and opened again by the test.
pub trait KeyStoreFixture: Send + Sync + Sized + 'static {
    /// Opens the storage with `master` (creating it the first time). The test drops any earlier
    /// handle first, as a restarted process would have.
    fn open(&self, master: &MasterKey) -> impl Future<Output = KeyResult<Arc<dyn KeyStore>>> + Send;

    /// Every wrapped copy of a data key the storage holds now.
    fn wrapped_copies(&self) -> impl Future<Output = Vec<WrappedCopy>> + Send;

    /// Removes what was made for the test.
    fn tear_down(self) -> impl Future<Output = ()> + Send;
}

/// A fixed instant, so stored creation times can be checked exactly.
pub const T0: Timestamp = Timestamp::from_micros(1_750_000_000_000_000);

/// A conversation's key owner: its id from the CSPRNG, as the server makes them.
pub fn fresh_conversation() -> KeyOwner {
    KeyOwner::from(ConversationId::from_random(rand::random()))
}

/// A resource row's key owner: `o` + 16 hex digits from the CSPRNG, as the server makes them.
pub fn fresh_row() -> KeyOwner {
    KeyOwner::parse(&random_id('o', rand::random())).expect("`o` + 16 hex digits is a key owner")
}

/// Owners of both kinds, alternating, so every path is taken by keys of either.
fn fresh_owner(i: usize) -> KeyOwner {
    if i.is_multiple_of(2) {
        fresh_conversation()
    } else {
        fresh_row()
    }
}

/// Keys a rotation test creates: more than one rotation batch (256), so it can stop half way.
const ROTATION_KEYS: usize = 600;

async fn open<F: KeyStoreFixture>(f: &F, master: &MasterKey) -> Arc<dyn KeyStore> {
    f.open(master).await.expect("opening the key store")
}

fn same_key(a: &DataKey, b: &DataKey) -> bool {
    a.expose_bytes() == b.expose_bytes()
}

/// Every key in `expected` reads back from `store` with the same id and bytes.
async fn assert_keys(store: &dyn KeyStore, expected: &BTreeMap<KeyOwner, (KeyId, DataKey)>) {
    for (conversation, (key_id, key)) in expected {
        let got = store
            .get(conversation)
            .await
            .unwrap()
            .expect("the key is still there");
        assert_eq!(got.key_id, *key_id, "{conversation}");
        assert!(same_key(&got.key, key), "{conversation}: the key's bytes changed");
    }
}

/// Asserts that, in the storage's own bytes, `opens` unwraps every copy and `opens_none` none,
/// and that each key of `expected` has exactly one copy (no leftover of a rotation).
async fn assert_copies<F: KeyStoreFixture>(
    f: &F,
    expected: &BTreeMap<KeyOwner, (KeyId, DataKey)>,
    opens: &MasterKey,
    opens_none: &MasterKey,
) {
    let copies = f.wrapped_copies().await;
    assert_eq!(copies.len(), expected.len(), "one wrapped copy per key");
    for copy in &copies {
        let (key_id, key) = &expected[&copy.owner];
        assert_eq!(copy.key_id, *key_id);
        let unwrapped = opens
            .unwrap_key(&copy.owner, copy.key_id, &copy.wrapped)
            .expect("the new master key opens every copy");
        assert!(same_key(&unwrapped, key));
        assert!(
            opens_none
                .unwrap_key(&copy.owner, copy.key_id, &copy.wrapped)
                .is_err(),
            "the old master key opens a copy of {}",
            copy.owner
        );
    }
}

async fn make_keys(store: &dyn KeyStore, n: usize) -> BTreeMap<KeyOwner, (KeyId, DataKey)> {
    let owners: Vec<_> = (0..n).map(fresh_owner).collect();
    let keys = store.create_many(&owners, T0).await.expect("creating keys");
    assert_eq!(keys.len(), n);
    owners
        .into_iter()
        .zip(keys)
        .map(|(c, k)| (c, (k.key_id, k.key)))
        .collect()
}

/// Keys made outside any store, as another store would hand them over: created a second apart.
fn keys_to_import(n: usize) -> Vec<ImportedKey> {
    (0..n)
        .map(|i| ImportedKey {
            owner: fresh_owner(i),
            key: ConversationKey {
                key_id: KeyId::random(),
                key: DataKey::generate(),
            },
            created_at: T0.plus_secs(i as i64),
        })
        .collect()
}

fn as_expected(keys: &[ImportedKey]) -> BTreeMap<KeyOwner, (KeyId, DataKey)> {
    keys.iter()
        .map(|k| (k.owner.clone(), (k.key.key_id, k.key.key.clone())))
        .collect()
}

fn no_progress(_: RotationProgress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Create, get, seal and open, destroy, get.
pub async fn a_created_key_reads_back_the_same_until_it_is_destroyed<F: KeyStoreFixture>(f: F) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let conversation = fresh_conversation();
    assert!(store.get(&conversation).await.unwrap().is_none());

    let made = store.create(&conversation, T0).await.unwrap();
    assert!(made.key_id.to_string().starts_with('k'));
    let aad = content_aad(&conversation, "conversation.conversational_context");
    let sealed = made.key.seal(&aad, b"the secret plan");

    let got = store.get(&conversation).await.unwrap().expect("the key");
    assert_eq!(got.key_id, made.key_id);
    assert_eq!(got.key.open(&aad, &sealed).unwrap(), b"the secret plan");

    assert_eq!(store.destroy(&conversation).await.unwrap(), Some(made.key_id));
    assert!(store.get(&conversation).await.unwrap().is_none());
    assert!(store.list().await.unwrap().is_empty());
    drop(store);
    f.tear_down().await;
}

/// Destroy is idempotent.
pub async fn destroying_a_key_twice_or_one_never_made_is_fine<F: KeyStoreFixture>(f: F) {
    let store = open(&f, &MasterKey::generate()).await;
    let conversation = fresh_conversation();
    assert_eq!(store.destroy(&conversation).await.unwrap(), None);
    let made = store.create(&conversation, T0).await.unwrap();
    assert_eq!(store.destroy(&conversation).await.unwrap(), Some(made.key_id));
    assert_eq!(store.destroy(&conversation).await.unwrap(), None);
    drop(store);
    f.tear_down().await;
}

/// A second key would orphan content sealed under the first.
pub async fn a_second_key_for_the_same_conversation_is_refused<F: KeyStoreFixture>(f: F) {
    let store = open(&f, &MasterKey::generate()).await;
    let conversation = fresh_conversation();
    let first = store.create(&conversation, T0).await.unwrap();

    let err = store.create(&conversation, T0).await.unwrap_err();
    assert!(
        matches!(&err, KeyError::AlreadyExists(c) if *c == conversation),
        "{err}"
    );
    let other = fresh_conversation();
    let err = store
        .create_many(&[other.clone(), conversation.clone()], T0)
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::AlreadyExists(_)), "{err}");
    let err = store
        .create_many(&[other.clone(), other.clone()], T0)
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::AlreadyExists(_)), "{err}");

    let got = store.get(&conversation).await.unwrap().unwrap();
    assert_eq!(got.key_id, first.key_id);
    assert!(same_key(&got.key, &first.key));
    assert!(
        store.get(&other).await.unwrap().is_none(),
        "a refused batch made no key"
    );
    drop(store);
    f.tear_down().await;
}

/// A resource row's id owns a key just as a conversation's does, side by side with one that
/// shares its hex digits.
pub async fn a_resource_rows_key_is_created_read_listed_destroyed_and_imported_like_a_conversations<
    F: KeyStoreFixture,
>(
    f: F,
) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let row = fresh_row();
    let twin = KeyOwner::parse(&format!("c{}", &row.as_str()[1..])).unwrap();
    assert_eq!(row.as_conversation(), None);
    assert!(store.get(&row).await.unwrap().is_none());

    let made = store.create(&row, T0).await.unwrap();
    let of_twin = store.create(&twin, T0.plus_secs(1)).await.unwrap();
    assert_ne!(made.key_id, of_twin.key_id);
    let err = store.create(&row, T0).await.unwrap_err();
    assert!(matches!(&err, KeyError::AlreadyExists(o) if *o == row), "{err}");
    let aad = content_aad(&row, "persona.system_prompt");
    let sealed = made.key.seal(&aad, b"the persona's secret");
    let got = store.get(&row).await.unwrap().expect("the key");
    assert_eq!(got.key_id, made.key_id);
    assert_eq!(got.key.open(&aad, &sealed).unwrap(), b"the persona's secret");
    assert!(
        got.key
            .open(&content_aad(&twin, "persona.system_prompt"), &sealed)
            .is_err(),
        "a value sealed for the row does not open as the conversation's"
    );

    let imported = ImportedKey {
        owner: fresh_row(),
        key: ConversationKey {
            key_id: KeyId::random(),
            key: DataKey::generate(),
        },
        created_at: T0.plus_secs(2),
    };
    assert_eq!(store.import(std::slice::from_ref(&imported)).await.unwrap(), 1);
    assert_eq!(store.import(std::slice::from_ref(&imported)).await.unwrap(), 0);
    let listed = store.list().await.unwrap();
    assert_eq!(
        listed,
        [
            KeyInfo {
                owner: row.clone(),
                key_id: made.key_id,
                created_at: T0
            },
            KeyInfo {
                owner: twin.clone(),
                key_id: of_twin.key_id,
                created_at: T0.plus_secs(1)
            },
            KeyInfo {
                owner: imported.owner.clone(),
                key_id: imported.key.key_id,
                created_at: T0.plus_secs(2)
            },
        ]
    );
    drop(store);

    // Reopened (the slot file rebuilds its index from the slots), the same keys read back.
    let store = open(&f, &master).await;
    let mut expected = as_expected(std::slice::from_ref(&imported));
    expected.insert(row.clone(), (made.key_id, made.key.clone()));
    expected.insert(twin.clone(), (of_twin.key_id, of_twin.key));
    assert_keys(&*store, &expected).await;
    assert_copies(&f, &expected, &master, &MasterKey::generate()).await;

    assert_eq!(store.destroy(&row).await.unwrap(), Some(made.key_id));
    assert_eq!(store.destroy(&row).await.unwrap(), None);
    assert!(store.get(&row).await.unwrap().is_none());
    assert!(
        store.get(&twin).await.unwrap().is_some(),
        "only the row's key went"
    );
    let owners: Vec<_> = store.list().await.unwrap().into_iter().map(|k| k.owner).collect();
    assert_eq!(owners, [twin, imported.owner]);
    drop(store);
    f.tear_down().await;
}

/// Destroying and creating again gives another key, under which the old content does not open.
pub async fn a_key_made_again_after_a_destroy_is_a_new_key<F: KeyStoreFixture>(f: F) {
    let store = open(&f, &MasterKey::generate()).await;
    let conversation = fresh_conversation();
    let old = store.create(&conversation, T0).await.unwrap();
    let sealed = old.key.seal(b"aad", b"old content");
    store.destroy(&conversation).await.unwrap();

    let new = store.create(&conversation, T0).await.unwrap();
    assert_ne!(new.key_id, old.key_id);
    assert!(!same_key(&new.key, &old.key));
    let got = store.get(&conversation).await.unwrap().unwrap();
    assert!(got.key.open(b"aad", &sealed).is_err());
    drop(store);
    f.tear_down().await;
}

/// A destroy is durable: reopening the storage does not bring the key back.
pub async fn a_destroyed_key_never_comes_back_after_reopening<F: KeyStoreFixture>(f: F) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let keys = make_keys(&*store, 20).await;
    let mut kept = keys.clone();
    let destroyed: Vec<_> = keys.keys().step_by(2).cloned().collect();
    for conversation in &destroyed {
        kept.remove(conversation);
        assert!(store.destroy(conversation).await.unwrap().is_some());
    }
    drop(store);

    for _ in 0..2 {
        let store = open(&f, &master).await;
        for conversation in &destroyed {
            assert!(
                store.get(conversation).await.unwrap().is_none(),
                "{conversation} came back"
            );
        }
        assert_keys(&*store, &kept).await;
        assert_eq!(store.list().await.unwrap().len(), kept.len());
    }
    f.tear_down().await;
}

/// Every create and destroy is durable when it returns; there is nothing to flush at close.
pub async fn acknowledged_keys_survive_a_drop_without_a_clean_close<F: KeyStoreFixture>(f: F) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let mut keys = BTreeMap::new();
    for _ in 0..10 {
        let conversation = fresh_conversation();
        let made = store.create(&conversation, T0).await.unwrap();
        keys.insert(conversation, (made.key_id, made.key));
    }
    keys.extend(make_keys(&*store, 50).await);
    drop(store);

    let store = open(&f, &master).await;
    assert_keys(&*store, &keys).await;
    drop(store);
    f.tear_down().await;
}

/// Many tasks create and destroy at once; every acknowledged operation lands, exactly.
pub async fn concurrent_creates_and_destroys_from_many_tasks_all_land<F: KeyStoreFixture>(f: F) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut kept = Vec::new();
                for i in 0..12 {
                    let conversation = fresh_conversation();
                    let made = store.create(&conversation, T0).await.unwrap();
                    if i % 3 == 0 {
                        assert_eq!(store.destroy(&conversation).await.unwrap(), Some(made.key_id));
                    } else {
                        kept.push((conversation, (made.key_id, made.key)));
                    }
                }
                kept
            })
        })
        .collect();
    let mut kept = BTreeMap::new();
    for task in tasks {
        kept.extend(task.await.unwrap());
    }
    assert_eq!(kept.len(), 16 * 8);
    assert_keys(&*store, &kept).await;

    // Half of them destroyed at once, each by two tasks racing: exactly one destroys it.
    let victims: Vec<_> = kept.keys().take(kept.len() / 2).cloned().collect();
    let destroyed = Arc::new(AtomicU64::new(0));
    let racers: Vec<_> = victims
        .iter()
        .flat_map(|c| [c.clone(), c.clone()])
        .map(|conversation| {
            let (store, destroyed) = (Arc::clone(&store), Arc::clone(&destroyed));
            tokio::spawn(async move {
                if store.destroy(&conversation).await.unwrap().is_some() {
                    destroyed.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for racer in racers {
        racer.await.unwrap();
    }
    assert_eq!(destroyed.load(Ordering::SeqCst), victims.len() as u64);
    for conversation in &victims {
        kept.remove(conversation);
    }
    drop(store);

    let store = open(&f, &master).await;
    let listed: HashSet<_> = store.list().await.unwrap().into_iter().map(|k| k.owner).collect();
    assert_eq!(listed, kept.keys().cloned().collect::<HashSet<_>>());
    assert_keys(&*store, &kept).await;
    drop(store);
    f.tear_down().await;
}

/// The list is what a cross-check needs, and nothing of the keys themselves.
pub async fn the_list_shows_each_key_once_with_its_id_and_creation_time<F: KeyStoreFixture>(f: F) {
    let store = open(&f, &MasterKey::generate()).await;
    let (a, b, c) = (fresh_conversation(), fresh_conversation(), fresh_conversation());
    let ka = store.create(&a, T0.plus_secs(2)).await.unwrap();
    let kb = store.create(&b, T0).await.unwrap();
    let kc = store.create(&c, T0.plus_secs(1)).await.unwrap();
    store.destroy(&c).await.unwrap();
    assert_ne!(kc.key_id, ka.key_id);

    let listed = store.list().await.unwrap();
    assert_eq!(
        listed,
        [
            KeyInfo {
                owner: b,
                key_id: kb.key_id,
                created_at: T0
            },
            KeyInfo {
                owner: a,
                key_id: ka.key_id,
                created_at: T0.plus_secs(2)
            },
        ],
        "oldest first"
    );
    let status = store.status().await.unwrap();
    assert_eq!(status.keys, 2);
    assert_eq!(status.unfinished_rotation, None);
    drop(store);
    f.tear_down().await;
}

/// A store refuses to start with a master key that did not wrap its keys.
pub async fn a_store_opened_with_the_wrong_master_key_is_refused<F: KeyStoreFixture>(f: F) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let keys = make_keys(&*store, 3).await;
    assert_eq!(store.status().await.unwrap().master_key_id, master.id());
    drop(store);

    let wrong = MasterKey::generate();
    let err = f
        .open(&wrong)
        .await
        .err()
        .expect("the wrong master key is refused");
    assert!(
        matches!(err, KeyError::WrongMasterKey { store, given } if store == master.id() && given == wrong.id()),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains(&master.id().to_string()) && message.contains(&wrong.id().to_string()));

    let store = open(&f, &master).await;
    assert_keys(&*store, &keys).await;
    drop(store);
    f.tear_down().await;
}

/// The whole rotation: same keys, new master key, and no copy the old one opens.
pub async fn after_a_rotation_every_key_is_unchanged_and_only_the_new_master_key_opens_them<
    F: KeyStoreFixture,
>(
    f: F,
) {
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let store = open(&f, &old).await;
    let keys = make_keys(&*store, ROTATION_KEYS).await;
    let reports = std::sync::Mutex::new(Vec::new());
    let record = |p: RotationProgress| {
        reports.lock().unwrap().push(p);
        ControlFlow::Continue(())
    };
    store.rotate(new.clone(), &record).await.unwrap();

    let reports = reports.into_inner().unwrap();
    let last_of = |phase| reports.iter().rev().find(|p| p.phase == phase).copied();
    for phase in [RotationPhase::Rewrap, RotationPhase::Retire] {
        let last = last_of(phase).expect("progress reported for each pass");
        assert_eq!(
            (last.done, last.total),
            (ROTATION_KEYS as u64, ROTATION_KEYS as u64),
            "{phase:?}"
        );
    }
    assert!(
        reports
            .windows(2)
            .all(|w| w[0].phase != w[1].phase || w[0].done <= w[1].done)
    );

    // The same handle goes on working, with the new key.
    assert_keys(&*store, &keys).await;
    let status = store.status().await.unwrap();
    assert_eq!(
        (status.master_key_id, status.unfinished_rotation),
        (new.id(), None)
    );
    let extra = fresh_conversation();
    let made_after = store.create(&extra, T0).await.unwrap();
    drop(store);

    let err = f.open(&old).await.err().expect("the old master key is refused");
    assert!(
        matches!(err, KeyError::RotatedOut { given, current } if given == old.id() && current == new.id()),
        "{err}"
    );
    let store = open(&f, &new).await;
    assert_keys(&*store, &keys).await;
    let mut everything = keys.clone();
    everything.insert(extra, (made_after.key_id, made_after.key));
    assert_copies(&f, &everything, &new, &old).await;
    drop(store);
    f.tear_down().await;
}

/// Stopped (as a crash would) while rewrapping: the old key still opens everything, keys made
/// before the rotation resumes are rewrapped too, and the resumed rotation completes.
pub async fn a_rotation_interrupted_while_rewrapping_resumes_and_rewraps_keys_made_meanwhile<
    F: KeyStoreFixture,
>(
    f: F,
) {
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let store = open(&f, &old).await;
    let mut keys = make_keys(&*store, ROTATION_KEYS).await;
    let stop_after_first_batch = |p: RotationProgress| {
        assert_eq!(p.phase, RotationPhase::Rewrap);
        assert!(p.done < p.total, "the first batch is not the whole store");
        ControlFlow::Break(())
    };
    let err = store
        .rotate(new.clone(), &stop_after_first_batch)
        .await
        .unwrap_err();
    assert!(matches!(err, KeyError::RotationInterrupted), "{err}");
    drop(store);

    // The new key cannot open a store that has not switched to it yet.
    let err = f
        .open(&new)
        .await
        .err()
        .expect("refused until the rotation switches");
    assert!(
        matches!(err, KeyError::RotationUnfinished { from, to } if from == old.id() && to == new.id()),
        "{err}"
    );

    // A restart with the old key works normally meanwhile, and makes keys wrapped only under it.
    let store = open(&f, &old).await;
    assert_keys(&*store, &keys).await;
    let status = store.status().await.unwrap();
    assert_eq!(
        status.unfinished_rotation,
        Some(UnfinishedRotation::Rewrapping {
            from: old.id(),
            to: new.id()
        })
    );
    keys.extend(make_keys(&*store, 5).await);
    let destroyed = keys.keys().next().cloned().unwrap();
    store.destroy(&destroyed).await.unwrap();
    keys.remove(&destroyed);

    let first = std::sync::Mutex::new(None);
    let note_first = |p: RotationProgress| {
        first.lock().unwrap().get_or_insert(p);
        ControlFlow::Continue(())
    };
    store.rotate(new.clone(), &note_first).await.unwrap();
    let first = first.into_inner().unwrap().expect("progress reported");
    assert_eq!(first.phase, RotationPhase::Rewrap);
    assert!(
        first.done > 256,
        "the resumed pass counts what the first run did: {first:?}"
    );
    assert_keys(&*store, &keys).await;
    drop(store);

    assert!(matches!(f.open(&old).await, Err(KeyError::RotatedOut { .. })));
    let store = open(&f, &new).await;
    assert_keys(&*store, &keys).await;
    assert!(store.get(&destroyed).await.unwrap().is_none());
    assert_copies(&f, &keys, &new, &old).await;
    drop(store);
    f.tear_down().await;
}

/// Stopped after the switch: only the new key opens the store, and it finishes the rotation.
pub async fn a_rotation_interrupted_after_the_switch_is_finished_with_the_new_master_key<
    F: KeyStoreFixture,
>(
    f: F,
) {
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let store = open(&f, &old).await;
    let keys = make_keys(&*store, ROTATION_KEYS).await;
    let stop_once_retiring = |p: RotationProgress| match p.phase {
        RotationPhase::Rewrap => ControlFlow::Continue(()),
        RotationPhase::Retire => ControlFlow::Break(()),
    };
    let err = store.rotate(new.clone(), &stop_once_retiring).await.unwrap_err();
    assert!(matches!(err, KeyError::RotationInterrupted), "{err}");
    drop(store);

    let err = f.open(&old).await.err().expect("the old key was rotated out");
    assert!(matches!(err, KeyError::RotatedOut { .. }), "{err}");
    let store = open(&f, &new).await;
    assert_keys(&*store, &keys).await;
    assert_eq!(
        store.status().await.unwrap().unfinished_rotation,
        Some(UnfinishedRotation::Retiring {
            from: old.id(),
            to: new.id()
        })
    );
    store.rotate(new.clone(), &no_progress).await.unwrap();
    assert_eq!(store.status().await.unwrap().unfinished_rotation, None);
    assert_keys(&*store, &keys).await;
    assert_copies(&f, &keys, &new, &old).await;
    drop(store);
    f.tear_down().await;
}

/// A rotation to the key in use is a no-op on a store with no rotation under way.
pub async fn rotating_to_the_master_key_in_use_changes_nothing<F: KeyStoreFixture>(f: F) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let keys = make_keys(&*store, 10).await;
    store.rotate(master.clone(), &no_progress).await.unwrap();
    let status = store.status().await.unwrap();
    assert_eq!(
        (status.master_key_id, status.unfinished_rotation, status.keys),
        (master.id(), None, 10)
    );
    assert_keys(&*store, &keys).await;
    assert_copies(&f, &keys, &master, &MasterKey::generate()).await;
    drop(store);
    f.tear_down().await;
}

/// An import puts the very keys given into the store, under its own master key, durably.
pub async fn imported_keys_keep_their_ids_bytes_and_creation_times<F: KeyStoreFixture>(f: F) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let made = make_keys(&*store, 3).await;
    let imported = keys_to_import(300);
    assert_eq!(store.import(&imported).await.unwrap(), 300);

    let mut expected = as_expected(&imported);
    assert_keys(&*store, &expected).await;
    let first = &imported[0];
    let aad = content_aad(&first.owner, "conversation.request_json");
    let sealed = first.key.key.seal(&aad, b"sealed before the copy");
    let got = store.get(&first.owner).await.unwrap().unwrap();
    assert_eq!(got.key.open(&aad, &sealed).unwrap(), b"sealed before the copy");
    let listed: BTreeMap<_, _> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.owner.clone(), k))
        .collect();
    for k in &imported {
        let info = &listed[&k.owner];
        assert_eq!((info.key_id, info.created_at), (k.key.key_id, k.created_at));
    }
    assert_eq!(store.status().await.unwrap().keys, 303);
    drop(store);

    let store = open(&f, &master).await;
    expected.extend(made);
    assert_keys(&*store, &expected).await;
    // One copy per key, wrapped under this store's master key only.
    assert_copies(&f, &expected, &master, &MasterKey::generate()).await;
    drop(store);
    f.tear_down().await;
}

/// Rerunning an import skips what is there; a conversation holding another key fails the batch,
/// which then writes nothing.
pub async fn importing_again_skips_keys_already_there_and_refuses_another_key<F: KeyStoreFixture>(f: F) {
    let master = MasterKey::generate();
    let store = open(&f, &master).await;
    let imported = keys_to_import(20);
    assert_eq!(store.import(&imported[..10]).await.unwrap(), 10);
    assert_eq!(store.import(&imported).await.unwrap(), 10, "only the new half");
    assert_eq!(store.import(&imported).await.unwrap(), 0);
    // The same key twice in one batch counts once.
    let twice = keys_to_import(1);
    let doubled = [twice[0].clone(), twice[0].clone()];
    assert_eq!(store.import(&doubled).await.unwrap(), 1);

    let held = &imported[3];
    let stranger = keys_to_import(1).remove(0);
    let refused = |given: ImportedKey, expected: KeyId| {
        let store = Arc::clone(&store);
        let stranger = stranger.clone();
        async move {
            let err = store.import(&[stranger, given.clone()]).await.unwrap_err();
            assert!(
                matches!(&err, KeyError::ImportConflict { owner, held, given: g }
                    if *owner == given.owner && *held == expected && *g == given.key.key_id),
                "{err}"
            );
        }
    };
    // Another key id for a conversation that has a key.
    refused(
        ImportedKey {
            key: ConversationKey {
                key_id: KeyId::random(),
                key: held.key.key.clone(),
            },
            ..held.clone()
        },
        held.key.key_id,
    )
    .await;
    // The same id with other bytes.
    refused(
        ImportedKey {
            key: ConversationKey {
                key_id: held.key.key_id,
                key: DataKey::generate(),
            },
            ..held.clone()
        },
        held.key.key_id,
    )
    .await;
    // A key made here by `create`, and another one imported for the same conversation.
    let conversation = fresh_conversation();
    let created = store.create(&conversation, T0).await.unwrap();
    refused(
        ImportedKey {
            owner: conversation.clone(),
            ..keys_to_import(1).remove(0)
        },
        created.key_id,
    )
    .await;
    // Two different keys for one conversation in one batch.
    let other = ImportedKey {
        key: ConversationKey {
            key_id: KeyId::random(),
            key: DataKey::generate(),
        },
        ..stranger.clone()
    };
    let err = store.import(&[stranger.clone(), other]).await.unwrap_err();
    assert!(matches!(err, KeyError::ImportConflict { .. }), "{err}");

    assert!(
        store.get(&stranger.owner).await.unwrap().is_none(),
        "a refused batch wrote nothing"
    );
    let mut expected = as_expected(&imported);
    expected.extend(as_expected(&twice));
    expected.insert(conversation, (created.key_id, created.key));
    assert_keys(&*store, &expected).await;
    assert_eq!(store.status().await.unwrap().keys, expected.len() as u64);
    drop(store);
    f.tear_down().await;
}

/// Keys imported while a rotation is half done (by a process that does not hold the new master
/// key) are rewrapped when it resumes, like keys created meanwhile.
pub async fn keys_imported_during_an_interrupted_rotation_are_rewrapped_when_it_resumes<
    F: KeyStoreFixture,
>(
    f: F,
) {
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let store = open(&f, &old).await;
    let mut keys = make_keys(&*store, ROTATION_KEYS).await;
    let stop = |_: RotationProgress| ControlFlow::Break(());
    assert!(store.rotate(new.clone(), &stop).await.is_err());
    drop(store);

    let store = open(&f, &old).await;
    let imported = keys_to_import(7);
    assert_eq!(store.import(&imported).await.unwrap(), 7);
    keys.extend(as_expected(&imported));
    store.rotate(new.clone(), &no_progress).await.unwrap();
    drop(store);

    let store = open(&f, &new).await;
    assert_keys(&*store, &keys).await;
    assert_copies(&f, &keys, &new, &old).await;
    drop(store);
    f.tear_down().await;
}
