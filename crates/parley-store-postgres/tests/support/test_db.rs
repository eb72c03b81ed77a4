//! A PostgreSQL database made for one test on the server at `PARLEY_TEST_POSTGRES_URL`.

use parley_store::ConversationStore;
use parley_store_postgres::PostgresStore;
use sqlx::PgPool;

/// A fresh, empty database, dropped by `drop_database`; a failed test leaves it for inspection.
pub struct TestDb {
    admin_url: String,
    name: String,
    /// The test database's own URL.
    pub url: String,
}

impl TestDb {
    /// Creates the database, or panics: these tests never pass without running.
    pub async fn create() -> Self {
        let Ok(admin_url) = std::env::var("PARLEY_TEST_POSTGRES_URL") else {
            panic!(
                "PARLEY_TEST_POSTGRES_URL is not set: run scripts/test, which starts a throwaway \
                 PostgreSQL (see README)"
            );
        };
        let name = format!("parley_test_{:016x}", rand::random::<u64>());
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

    /// A store on this database: each call is another "process" with its own pool.
    pub async fn store(&self) -> PostgresStore {
        PostgresStore::connect(&self.url)
            .await
            .expect("connecting the store")
    }

    /// Closes the stores, then drops the database.
    pub async fn drop_database(self, stores: &[&PostgresStore]) {
        for store in stores {
            store.close().await;
        }
        let admin = admin(&self.admin_url).await;
        sqlx::raw_sql(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&admin)
            .await
            .expect("dropping the test database");
        admin.close().await;
    }
}

/// One connection to the server's default database, as a pool: a future that holds a bare
/// `&mut PgConnection` across an await is not `Send` (sqlx's `Executor` lifetimes), and a
/// `TestStore` tear-down must be.
async fn admin(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("PARLEY_TEST_POSTGRES_URL must reach a running server")
}
