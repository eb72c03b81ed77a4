//! The store contract on PostgreSQL: each test on a fresh database of its own.
//!
//! Needs `PARLEY_TEST_POSTGRES_URL` (`scripts/test` sets it); without it every test fails.

#[path = "support/test_db.rs"]
mod test_db;

use std::sync::Arc;

use parley_store::ConversationStore;
use parley_store::testing::TestStore;
use parley_store_postgres::PostgresStore;
use test_db::TestDb;

/// A store on a database made for it.
struct FreshDb {
    db: TestDb,
    store: Arc<PostgresStore>,
}

impl FreshDb {
    async fn fresh() -> Self {
        let db = TestDb::create().await;
        let store = Arc::new(db.store().await);
        Self { db, store }
    }
}

impl TestStore for FreshDb {
    fn store(&self) -> Arc<dyn ConversationStore> {
        self.store.clone()
    }

    async fn tear_down(self) {
        self.db.drop_database(&[&self.store]).await;
    }
}

parley_store::store_contract!(FreshDb::fresh());
