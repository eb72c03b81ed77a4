//! A copy of a state's content (database and blobs, never its key store) taken aside and put back
//! later, as an operator restoring an old backup beside today's key store would.

use std::path::Path;

use parley_blobs::{BlobKey, Blobs};
use parley_domain::ConversationId;

use super::{Backing, need};

/// A state's content as it was when copied.
pub struct ContentCopy {
    /// The SQLite files and a local blob folder, copied here.
    files: tempfile::TempDir,
    /// The PostgreSQL database the content database was copied into.
    database: Option<String>,
    /// The S3 prefix the blobs were copied to.
    blobs: Option<Blobs>,
}

/// The files of an embedded database: the WAL and its index belong to it.
const DATABASE_FILES: [&str; 3] = ["parley.db", "parley.db-wal", "parley.db-shm"];

impl Backing {
    /// Copies the content of a stopped state aside: the SQLite files (or, on PostgreSQL, the
    /// database with `CREATE DATABASE … TEMPLATE`) and every blob (a folder, or an S3 prefix).
    pub async fn copy_content(&self) -> ContentCopy {
        let files = tempfile::tempdir().expect("temp dir");
        let database = match &self.database_url {
            None => {
                for name in DATABASE_FILES {
                    let from = self.data_dir().join(name);
                    if from.exists() {
                        std::fs::copy(&from, files.path().join(name)).unwrap();
                    }
                }
                None
            }
            Some(url) => {
                let name = database_name(url);
                let copy = format!("{name}_copy");
                admin(&[format!("CREATE DATABASE {copy} TEMPLATE {name}")], &name).await;
                Some(copy)
            }
        };
        let blobs = match &self.blob_url {
            None => {
                copy_dir(&self.data_dir().join("blobs"), &files.path().join("blobs"));
                None
            }
            Some(url) => {
                let copy = Blobs::s3(&format!("{url}-copy"), self.s3_endpoint.as_deref(), None).unwrap();
                copy_blobs(&self.blobs(), &copy).await;
                Some(copy)
            }
        };
        ContentCopy {
            files,
            database,
            blobs,
        }
    }

    /// Puts a copy back in place of the state's content (stopped), leaving its key store as it is.
    pub async fn restore_content(&self, copy: &ContentCopy) {
        match (&self.database_url, &copy.database) {
            (None, _) => {
                for name in DATABASE_FILES {
                    // Overwritten in place, as restoring a backup over the file does.
                    let (from, to) = (copy.files.path().join(name), self.data_dir().join(name));
                    if from.exists() {
                        std::fs::copy(&from, &to).unwrap();
                    } else {
                        let _ = std::fs::remove_file(&to);
                    }
                }
            }
            (Some(url), Some(copied)) => {
                let name = database_name(url);
                admin(
                    &[
                        format!("DROP DATABASE {name} WITH (FORCE)"),
                        format!("CREATE DATABASE {name} TEMPLATE {copied}"),
                    ],
                    copied,
                )
                .await;
            }
            (Some(_), None) => unreachable!("a copy of a PostgreSQL state names its database"),
        }
        match &copy.blobs {
            None => {
                let blobs = self.data_dir().join("blobs");
                let _ = std::fs::remove_dir_all(&blobs);
                copy_dir(&copy.files.path().join("blobs"), &blobs);
            }
            Some(copied) => {
                let blobs = self.blobs();
                // Whatever is there now goes; then the copy's objects come back.
                for (key, _) in blobs.list_prefix(BlobKey::ROOT).await.unwrap() {
                    let id = key.split('/').nth(1).unwrap();
                    blobs
                        .delete_conversation(&ConversationId::parse(id).unwrap())
                        .await
                        .unwrap();
                }
                copy_blobs(copied, &blobs).await;
            }
        }
    }
}

/// The database a PostgreSQL URL names.
fn database_name(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned()
}

/// Runs statements on the test server's admin database, after ending every session on
/// `template` (a template must have none).
async fn admin(statements: &[String], template: &str) {
    let pool = sqlx::PgPool::connect(&need("PARLEY_TEST_POSTGRES_URL"))
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(template)
        .execute(&pool)
        .await
        .unwrap();
    for statement in statements {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
}

async fn copy_blobs(from: &Blobs, to: &Blobs) {
    for (key, _) in from.list_prefix(BlobKey::ROOT).await.unwrap() {
        to.put_key(&key, from.get(&key).await.unwrap()).await.unwrap();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}
