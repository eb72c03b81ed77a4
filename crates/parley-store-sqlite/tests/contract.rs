//! The store contract on SQLite: each test on a fresh database file of its own.

use std::sync::Arc;

use parley_store::ConversationStore;
use parley_store::testing::TestStore;
use parley_store_sqlite::SqliteStore;
use tempfile::TempDir;

/// A store on a real file in a temporary directory, removed with it.
struct TempStore {
    store: Arc<SqliteStore>,
    dir: TempDir,
}

impl TempStore {
    async fn fresh() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = SqliteStore::open(&dir.path().join("parley.db"))
            .await
            .expect("opening the store");
        Self {
            store: Arc::new(store),
            dir,
        }
    }
}

impl TestStore for TempStore {
    fn store(&self) -> Arc<dyn ConversationStore> {
        self.store.clone()
    }

    async fn tear_down(self) {
        self.store.close().await;
        self.dir.close().expect("removing the temporary directory");
    }
}

parley_store::store_contract!(TempStore::fresh());
