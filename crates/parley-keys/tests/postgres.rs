//! The key store contract on PostgreSQL, each test on a fresh database of its own, and what
//! only a shared store shows: several processes on one key database.
//!
//! Needs `PARLEY_TEST_POSTGRES_URL` (`scripts/test` sets it) and the `postgres-tests` feature;
//! without the URL every test fails.

use std::sync::Arc;

use parley_domain::{ConversationId, KeyOwner};
use parley_keys::testing::{KeyStoreFixture, T0, WrappedCopy, fresh_conversation, fresh_row};
use parley_keys::{KeyError, KeyId, KeyResult, KeyStore, MasterKey, PgKeyStore};
use sqlx::{PgPool, Row};

/// A key database made for one test, dropped by `tear_down`; a failed test leaves it.
struct FreshKeyDb {
    admin_url: String,
    name: String,
    url: String,
}

impl FreshKeyDb {
    /// Creates the database, or panics: these tests never pass without running.
    async fn fresh() -> Self {
        let Ok(admin_url) = std::env::var("PARLEY_TEST_POSTGRES_URL") else {
            panic!(
                "PARLEY_TEST_POSTGRES_URL is not set: run scripts/test, which starts a throwaway \
                 PostgreSQL (see README)"
            );
        };
        let name = format!("parley_keys_test_{:016x}", rand::random::<u64>());
        let admin = admin(&admin_url).await;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("creating the test database");
        admin.close().await;
        let mut url = url::Url::parse(&admin_url).expect("PARLEY_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        Self {
            admin_url,
            name,
            url: url.to_string(),
        }
    }

    async fn pool(&self) -> PgPool {
        admin(&self.url).await
    }
}

impl KeyStoreFixture for FreshKeyDb {
    async fn open(&self, master: &MasterKey) -> KeyResult<Arc<dyn KeyStore>> {
        Ok(Arc::new(PgKeyStore::connect(&self.url, master.clone()).await?))
    }

    async fn wrapped_copies(&self) -> Vec<WrappedCopy> {
        let pool = self.pool().await;
        let rows = sqlx::query("SELECT conversation_id, data_key_id, wrapped, other_wrapped FROM data_key")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.iter()
            .flat_map(|row| {
                let owner = KeyOwner::parse(row.get("conversation_id")).unwrap();
                let key_id = KeyId::parse(row.get("data_key_id")).unwrap();
                let wraps = [Some(row.get::<Vec<u8>, _>("wrapped")), row.get("other_wrapped")];
                wraps.into_iter().flatten().map(move |wrapped| WrappedCopy {
                    owner: owner.clone(),
                    key_id,
                    wrapped,
                })
            })
            .collect()
    }

    async fn tear_down(self) {
        let admin = admin(&self.admin_url).await;
        sqlx::raw_sql(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&admin)
            .await
            .expect("dropping the test database");
        admin.close().await;
    }
}

/// One connection, as a pool (a bare connection held across an await is not `Send`).
async fn admin(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("PARLEY_TEST_POSTGRES_URL must reach a running server")
}

parley_keys::key_store_contract!(FreshKeyDb::fresh());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_key_database_see_each_others_creates_and_destroys_at_once() {
    let db = FreshKeyDb::fresh().await;
    let master = MasterKey::generate();
    let (a, b) = (db.open(&master).await.unwrap(), db.open(&master).await.unwrap());
    let conversation = fresh_conversation();
    let made = a.create(&conversation, T0).await.unwrap();
    let seen = b
        .get(&conversation)
        .await
        .unwrap()
        .expect("the other process sees it");
    assert_eq!(seen.key.expose_bytes(), made.key.expose_bytes());
    assert!(matches!(
        b.create(&conversation, T0).await,
        Err(KeyError::AlreadyExists(_))
    ));

    assert_eq!(b.destroy(&conversation).await.unwrap(), Some(made.key_id));
    assert!(a.get(&conversation).await.unwrap().is_none());
    assert_eq!(a.destroy(&conversation).await.unwrap(), None);
    drop((a, b));
    db.tear_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_still_on_the_old_master_key_reads_until_retired_and_cannot_create_after_the_switch() {
    let db = FreshKeyDb::fresh().await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let rotator = db.open(&old).await.unwrap();
    let laggard = db.open(&old).await.unwrap();
    let conversation = fresh_conversation();
    let made = rotator.create(&conversation, T0).await.unwrap();

    // Stop right after the switch: copies under the old key are still there.
    let stop_once_retiring = |p: parley_keys::RotationProgress| match p.phase {
        parley_keys::RotationPhase::Rewrap => std::ops::ControlFlow::Continue(()),
        parley_keys::RotationPhase::Retire => std::ops::ControlFlow::Break(()),
    };
    // One key fits in one batch, so the retiring pass reports (and stops) after removing it;
    // make a second batch's worth first so that the stop comes with old copies left.
    let more: Vec<_> = (0..300).map(|_| fresh_conversation()).collect();
    rotator.create_many(&more, T0).await.unwrap();
    assert!(rotator.rotate(new.clone(), &stop_once_retiring).await.is_err());

    let err = laggard.create(&fresh_conversation(), T0).await.unwrap_err();
    assert!(matches!(err, KeyError::RotatedOut { .. }), "{err}");

    rotator
        .rotate(new.clone(), &|_| std::ops::ControlFlow::Continue(()))
        .await
        .unwrap();
    let err = laggard.get(&conversation).await.unwrap_err();
    assert!(matches!(err, KeyError::RotatedOut { .. }), "{err}");
    let got = rotator.get(&conversation).await.unwrap().unwrap();
    assert_eq!(got.key.expose_bytes(), made.key.expose_bytes());
    drop((rotator, laggard));
    db.tear_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_database_holds_no_row_of_a_destroyed_key() {
    let db = FreshKeyDb::fresh().await;
    let store = db.open(&MasterKey::generate()).await.unwrap();
    let conversation = fresh_conversation();
    store.create(&conversation, T0).await.unwrap();
    store.destroy(&conversation).await.unwrap();
    let pool = db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM data_key WHERE conversation_id = $1")
        .bind(conversation.as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    pool.close().await;
    drop(store);
    db.tear_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_content_database_is_refused_as_a_key_database() {
    let db = FreshKeyDb::fresh().await;
    let pool = db.pool().await;
    sqlx::raw_sql("CREATE TABLE conversation (conversation_id TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = db.open(&MasterKey::generate()).await.err().expect("refused");
    assert!(err.to_string().contains("database of its own"), "{err}");
    db.tear_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_row_written_before_key_owners_reads_back_and_a_rows_key_sits_beside_it() {
    let db = FreshKeyDb::fresh().await;
    let master = MasterKey::parse(&"00112233445566778899aabbccddeeff".repeat(2)).unwrap();
    let store = db.open(&master).await.unwrap();
    // The row as parley wrote it for conversation `ca4301628cb9` before key owners existed: the
    // data key (all `0x42`) wrapped under this master key, bound to the conversation id.
    let wrapped = hex::decode(
        "017cc5520886119f94deafb8dd8d3d2328b51deb7100006a53a220f0c09f99436034c1eda99dbbac0287ac2905b6\
         876f2f12a1e2d1fbba6338e8e489339d591ae88df958ab421e543b",
    )
    .unwrap();
    let pool = db.pool().await;
    sqlx::query(
        "INSERT INTO data_key (conversation_id, data_key_id, created_at, master_key_id, wrapped) \
         VALUES ('ca4301628cb9', 'k1032547698badcfe', $1, $2, $3)",
    )
    .bind(T0.as_micros())
    .bind(master.id().to_string())
    .bind(&wrapped)
    .execute(&pool)
    .await
    .unwrap();

    let id = ConversationId::parse("ca4301628cb9").unwrap();
    let got = store
        .get(&KeyOwner::from(&id))
        .await
        .unwrap()
        .expect("the old key");
    assert_eq!(got.key.expose_bytes(), &[0x42; 32]);
    let row = fresh_row();
    store.create(&row, T0.plus_secs(1)).await.unwrap();
    let owners: Vec<_> = store.list().await.unwrap().into_iter().map(|k| k.owner).collect();
    assert_eq!(owners, [KeyOwner::from(&id), row.clone()]);
    // The row's key is in the same column a conversation's is.
    let stored: Vec<String> = sqlx::query_scalar("SELECT conversation_id FROM data_key ORDER BY created_at")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, ["ca4301628cb9", row.as_str()]);
    pool.close().await;
    drop(store);
    db.tear_down().await;
}
