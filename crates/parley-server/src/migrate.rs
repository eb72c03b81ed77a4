//! `parley migrate-store`: copy every row and blob from one store to another, then verify.

use anyhow::{Context, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use parley_blobs::Blobs;
use parley_store::ConversationStore;
use parley_store::table::Table;

use crate::app::{lock_database, open_blob_url, open_store};
use crate::config::{Database, MigrateConfig, StoreConfig};

/// Rows copied per transaction.
const BATCH: u32 = 500;
/// Where conversation blobs live in every blob store.
const BLOB_PREFIX: &str = "conversations/";

/// Copies `--from` into `--to` (which must be empty) and checks that every count matches.
pub async fn migrate_store(c: MigrateConfig) -> anyhow::Result<()> {
    let from = side(&c.from);
    let to = side(&c.to);
    let (from_db, to_db) = (from.database()?, to.database()?);
    ensure!(from_db != to_db, "--from and --to name the same database");
    // A server writing to an embedded source would make the copy inconsistent.
    let _lock = match &from_db {
        Database::Sqlite(path) => Some(lock_database(path).context("stop the servers on the source first")?),
        Database::Postgres(_) => None,
    };
    let src = open_store(&from).await.context("opening the source")?;
    let dst = open_store(&to).await.context("opening the destination")?;
    let endpoint = c.s3_endpoint.as_deref();
    let region = c.s3_region.as_deref();
    let src_blobs = blobs_of(
        &from_db,
        c.from_blob_url.as_deref(),
        "--from-blob-url",
        endpoint,
        region,
    )?;
    let dst_blobs = blobs_of(
        &to_db,
        c.to_blob_url.as_deref(),
        "--to-blob-url",
        endpoint,
        region,
    )?;

    for table in [Table::Account, Table::Conversation, Table::ErasureReceipt] {
        if dst.count_rows(table).await? > 0 {
            bail!(
                "the destination already holds {} rows; migrate into an empty store",
                table.name()
            );
        }
    }
    let mut counts = Vec::new();
    for table in Table::ALL {
        counts.push(src.count_rows(table).await?);
    }
    let blobs = src_blobs
        .list_prefix(BLOB_PREFIX)
        .await
        .context("listing the source's blobs")?;
    let blob_bytes: u64 = blobs.iter().map(|(_, size)| size).sum();

    let total = counts.iter().sum::<u64>() + blobs.len() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:>16} [{bar:40}] {pos}/{len} ({eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    for table in Table::ALL {
        bar.set_message(table.name());
        copy_table(src.as_ref(), dst.as_ref(), table, &bar).await?;
    }
    bar.set_message("blobs");
    copy_blobs(&src_blobs, &dst_blobs, &blobs, &bar).await?;
    bar.finish_and_clear();

    // Verify from the destination itself, not from what we think we wrote.
    println!("{:<16} {:>10} {:>10}", "TABLE", "SOURCE", "COPIED");
    for (table, expected) in Table::ALL.into_iter().zip(&counts) {
        let copied = dst.count_rows(table).await?;
        println!("{:<16} {expected:>10} {copied:>10}", table.name());
        ensure!(
            copied == *expected,
            "{}: {copied} rows copied of {expected}",
            table.name()
        );
    }
    let copied = dst_blobs.list_prefix(BLOB_PREFIX).await?;
    let copied_bytes: u64 = copied.iter().map(|(_, size)| size).sum();
    println!("{:<16} {:>10} {:>10}", "blobs", blobs.len(), copied.len());
    ensure!(
        copied.len() == blobs.len() && copied_bytes == blob_bytes,
        "blobs: {} ({copied_bytes} bytes) copied of {} ({blob_bytes} bytes)",
        copied.len(),
        blobs.len()
    );
    eprintln!("migrated and verified: every table and blob count matches");
    src.close().await;
    dst.close().await;
    Ok(())
}

fn side(url: &str) -> StoreConfig {
    StoreConfig {
        data_dir: ".".into(),
        database_url: Some(url.to_owned()),
    }
}

/// One side's blobs: the URL given, else `blobs/` beside an embedded database (a shared one has
/// no place to guess).
fn blobs_of(
    db: &Database,
    url: Option<&str>,
    flag: &str,
    endpoint: Option<&str>,
    region: Option<&str>,
) -> anyhow::Result<Blobs> {
    let default = match (db, url) {
        (Database::Sqlite(path), _) => path
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join("blobs"),
        (Database::Postgres(_), Some(_)) => std::path::PathBuf::new(),
        (Database::Postgres(_), None) => bail!("a PostgreSQL side needs {flag} (a folder or s3://…)"),
    };
    open_blob_url(url, &default, endpoint, region)
}

async fn copy_table(
    src: &dyn ConversationStore,
    dst: &dyn ConversationStore,
    table: Table,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut offset = 0;
    loop {
        let rows = src.export_rows(table, offset, BATCH).await?;
        if rows.is_empty() {
            return Ok(());
        }
        dst.import_rows(table, &rows)
            .await
            .with_context(|| format!("copying {}", table.name()))?;
        offset += rows.len() as u64;
        bar.inc(rows.len() as u64);
    }
}

async fn copy_blobs(
    src: &Blobs,
    dst: &Blobs,
    keys: &[(String, u64)],
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    for (key, _) in keys {
        let bytes = src.get(key).await.with_context(|| format!("reading {key}"))?;
        dst.put_key(key, bytes)
            .await
            .with_context(|| format!("writing {key}"))?;
        bar.inc(1);
    }
    Ok(())
}
