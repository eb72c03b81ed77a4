//! `parley migrate-store`: copy every row and blob from one store to another, then verify.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use parley_blobs::{BlobKey, Blobs};
use parley_store::ConversationStore;
use parley_store::table::{Row, Table};

use crate::app::{lock_database, open_blob_url, open_store};
use crate::config::{Database, MigrateConfig, StoreConfig};

/// Copies `--from` into `--to` and checks that every count matches.
///
/// The destination must be empty, or hold what an earlier run from the same source left when it
/// failed or was killed: rows are imported by key and skipped when already there, and blobs of
/// the right size are not copied again, so a rerun finishes the copy.
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

    let mut counts = Vec::new();
    for table in Table::ALL {
        counts.push(src.count_rows(table).await?);
    }
    let resuming = check_destination(src.as_ref(), dst.as_ref(), &counts, c.batch_size).await?;
    if resuming {
        eprintln!(
            "the destination already holds an earlier copy (or part of one) from this source: completing and verifying it"
        );
    }
    let blobs = src_blobs
        .list_prefix(BlobKey::ROOT)
        .await
        .context("listing the source's blobs")?;
    let blob_bytes: u64 = blobs.iter().map(|(_, size)| size).sum();
    let present: HashMap<String, u64> = dst_blobs
        .list_prefix(BlobKey::ROOT)
        .await
        .context("listing the destination's blobs")?
        .into_iter()
        .collect();

    let total = counts.iter().sum::<u64>() + blobs.len() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:>16} [{bar:40}] {human_pos}/{human_len} ({eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    for (table, count) in Table::ALL.into_iter().zip(&counts) {
        bar.set_message(table.name());
        let started = Instant::now();
        copy_table(src.as_ref(), dst.as_ref(), table, c.batch_size, &bar).await?;
        // The bar is hidden when stderr is not a terminal; a log still shows how far it got.
        if bar.is_hidden() {
            eprintln!(
                "{}: {count} rows in {:.1?}, {} of {total} items done",
                table.name(),
                started.elapsed(),
                bar.position()
            );
        }
    }
    bar.set_message("blobs");
    copy_blobs(&src_blobs, &dst_blobs, &blobs, &present, &bar).await?;
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
    let copied = dst_blobs.list_prefix(BlobKey::ROOT).await?;
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

/// Whether the destination already holds part of a copy from this source (false when empty).
///
/// Accounts are copied first and carry their creation time to the microsecond, so a destination
/// whose accounts are all identical to the source's is a copy of it; anything else is another
/// store, which this command never merges into.
async fn check_destination(
    src: &dyn ConversationStore,
    dst: &dyn ConversationStore,
    counts: &[u64],
    batch: u32,
) -> anyhow::Result<bool> {
    let mut held = 0;
    for (table, count) in Table::ALL.into_iter().zip(counts) {
        let n = dst.count_rows(table).await?;
        ensure!(
            n <= *count,
            "the destination holds more {} rows than the source: migrate into an empty store",
            table.name()
        );
        held += n;
    }
    if held == 0 {
        return Ok(false);
    }
    let source_accounts = all_rows(src, Table::Account, batch).await?;
    for account in all_rows(dst, Table::Account, batch).await? {
        ensure!(
            source_accounts.contains(&account),
            "the destination holds data that is not from this source: migrate into an empty store"
        );
    }
    ensure!(
        !source_accounts.is_empty() && dst.count_rows(Table::Account).await? > 0,
        "the destination holds data that is not from this source: migrate into an empty store"
    );
    Ok(true)
}

async fn all_rows(store: &dyn ConversationStore, table: Table, batch: u32) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    loop {
        let page = store.export_rows(table, rows.last(), batch).await?;
        if page.is_empty() {
            return Ok(rows);
        }
        rows.extend(page);
    }
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
    batch: u32,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let mut after: Option<Row> = None;
    loop {
        let rows = src.export_rows(table, after.as_ref(), batch).await?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        dst.import_rows(table, &rows)
            .await
            .with_context(|| format!("copying {}", table.name()))?;
        bar.inc(rows.len() as u64);
        after = Some(last.clone());
    }
}

async fn copy_blobs(
    src: &Blobs,
    dst: &Blobs,
    keys: &[(String, u64)],
    present: &HashMap<String, u64>,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    for (key, size) in keys {
        // A blob is written whole or not at all, so one of the right size is done.
        if present.get(key) != Some(size) {
            let bytes = src.get(key).await.with_context(|| format!("reading {key}"))?;
            dst.put_key(key, bytes)
                .await
                .with_context(|| format!("writing {key}"))?;
        }
        bar.inc(1);
    }
    Ok(())
}
