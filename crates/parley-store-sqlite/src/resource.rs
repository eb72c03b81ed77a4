//! The resource table on SQLite: personas, replicas, documents, guardrails and objectives.

use parley_domain::{ResourceKind, Timestamp};
use parley_store::{Resource, StoreError, StoreResult};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use crate::{BEGIN_WRITE, map_err, ts};

const COLUMNS: &str = "row_id, account_id, kind, resource_id, status, body, version, blob_key, created_at, \
                       updated_at, deleted_at, work_at, locked_until, attempts";

fn row_to_resource(row: &SqliteRow) -> StoreResult<Resource> {
    let kind: String = row.get("kind");
    Ok(Resource {
        row_id: row.get("row_id"),
        account: row.get("account_id"),
        kind: ResourceKind::parse(&kind)
            .ok_or_else(|| StoreError::Backend(format!("unknown resource kind {kind:?}").into()))?,
        id: row.get("resource_id"),
        status: row.get("status"),
        body: row.get("body"),
        version: row.get("version"),
        blob_key: row.get("blob_key"),
        created_at: Timestamp::from_micros(row.get("created_at")),
        updated_at: Timestamp::from_micros(row.get("updated_at")),
        deleted_at: ts(row.get("deleted_at")),
        work_at: ts(row.get("work_at")),
        locked_until: ts(row.get("locked_until")),
        attempts: u32::try_from(row.get::<i64, _>("attempts")).unwrap_or(u32::MAX),
    })
}

pub(crate) async fn create(writer: &SqlitePool, r: &Resource) -> StoreResult<()> {
    sqlx::query(&format!(
        "INSERT INTO resource ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(&r.row_id)
    .bind(&r.account)
    .bind(r.kind.as_str())
    .bind(&r.id)
    .bind(&r.status)
    .bind(&r.body)
    .bind(r.version)
    .bind(&r.blob_key)
    .bind(r.created_at.as_micros())
    .bind(r.updated_at.as_micros())
    .bind(r.deleted_at.map(Timestamp::as_micros))
    .bind(r.work_at.map(Timestamp::as_micros))
    .bind(r.locked_until.map(Timestamp::as_micros))
    .bind(i64::from(r.attempts))
    .execute(writer)
    .await
    .map_err(map_err)?;
    Ok(())
}

pub(crate) async fn get(
    readers: &SqlitePool,
    account: &str,
    kind: ResourceKind,
    id: &str,
) -> StoreResult<Option<Resource>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM resource \
         WHERE account_id = ? AND kind = ? AND resource_id = ? AND deleted_at IS NULL"
    ))
    .bind(account)
    .bind(kind.as_str())
    .bind(id)
    .fetch_optional(readers)
    .await
    .map_err(map_err)?;
    row.as_ref().map(row_to_resource).transpose()
}

pub(crate) async fn load(readers: &SqlitePool, row_id: &str) -> StoreResult<Option<Resource>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM resource WHERE row_id = ?"))
        .bind(row_id)
        .fetch_optional(readers)
        .await
        .map_err(map_err)?;
    row.as_ref().map(row_to_resource).transpose()
}

pub(crate) async fn list(
    readers: &SqlitePool,
    account: &str,
    kind: ResourceKind,
    limit: u32,
    offset: u64,
) -> StoreResult<(Vec<Resource>, u64)> {
    // One read transaction, so the page and the total come from the same snapshot.
    let mut tx = readers.begin().await.map_err(map_err)?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM resource WHERE account_id = ? AND kind = ? AND deleted_at IS NULL \
         ORDER BY created_at DESC, row_id DESC LIMIT ? OFFSET ?"
    ))
    .bind(account)
    .bind(kind.as_str())
    .bind(i64::from(limit))
    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await
    .map_err(map_err)?;
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM resource WHERE account_id = ? AND kind = ? AND deleted_at IS NULL",
    )
    .bind(account)
    .bind(kind.as_str())
    .fetch_one(&mut *tx)
    .await
    .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    let list = rows
        .iter()
        .map(row_to_resource)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok((list, u64::try_from(total).unwrap_or(0)))
}

pub(crate) async fn update(writer: &SqlitePool, r: &Resource) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE resource SET status = ?, body = ?, blob_key = ?, updated_at = ?, work_at = ?, \
         locked_until = ?, attempts = ?, version = version + 1 \
         WHERE row_id = ? AND version = ? AND deleted_at IS NULL",
    )
    .bind(&r.status)
    .bind(&r.body)
    .bind(&r.blob_key)
    .bind(r.updated_at.as_micros())
    .bind(r.work_at.map(Timestamp::as_micros))
    .bind(r.locked_until.map(Timestamp::as_micros))
    .bind(i64::from(r.attempts))
    .bind(&r.row_id)
    .bind(r.version)
    .execute(writer)
    .await
    .map_err(map_err)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn soft_delete(
    writer: &SqlitePool,
    account: &str,
    kind: ResourceKind,
    id: &str,
    now: Timestamp,
) -> StoreResult<bool> {
    // Background work stops with it: a soft-deleted document is not fetched.
    let done = sqlx::query(
        "UPDATE resource SET deleted_at = ?, updated_at = ?, work_at = NULL, locked_until = NULL, \
         version = version + 1 \
         WHERE account_id = ? AND kind = ? AND resource_id = ? AND deleted_at IS NULL",
    )
    .bind(now.as_micros())
    .bind(now.as_micros())
    .bind(account)
    .bind(kind.as_str())
    .bind(id)
    .execute(writer)
    .await
    .map_err(map_err)?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn hard_delete(
    writer: &SqlitePool,
    account: &str,
    kind: ResourceKind,
    id: &str,
    now: Timestamp,
) -> StoreResult<Option<String>> {
    let mut tx = writer.begin_with(BEGIN_WRITE).await.map_err(map_err)?;
    let row_id: Option<String> = sqlx::query_scalar(
        "DELETE FROM resource WHERE account_id = ? AND kind = ? AND resource_id = ? RETURNING row_id",
    )
    .bind(account)
    .bind(kind.as_str())
    .bind(id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(map_err)?;
    let Some(row_id) = row_id else {
        return Ok(None);
    };
    sqlx::query("INSERT INTO resource_purge (row_id, account_id, created_at) VALUES (?, ?, ?)")
        .bind(&row_id)
        .bind(account)
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    tx.commit().await.map_err(map_err)?;
    Ok(Some(row_id))
}

pub(crate) async fn claim_work(
    writer: &SqlitePool,
    now: Timestamp,
    lease_until: Timestamp,
    limit: u32,
) -> StoreResult<Vec<Resource>> {
    let rows = sqlx::query(&format!(
        "UPDATE resource SET locked_until = ?, attempts = attempts + 1, version = version + 1 \
         WHERE row_id IN (SELECT row_id FROM resource WHERE work_at IS NOT NULL AND work_at <= ? \
           AND deleted_at IS NULL AND (locked_until IS NULL OR locked_until <= ?) \
           ORDER BY work_at, row_id LIMIT ?) \
         RETURNING {COLUMNS}"
    ))
    .bind(lease_until.as_micros())
    .bind(now.as_micros())
    .bind(now.as_micros())
    .bind(i64::from(limit))
    .fetch_all(writer)
    .await
    .map_err(map_err)?;
    let mut claimed = rows
        .iter()
        .map(row_to_resource)
        .collect::<StoreResult<Vec<_>>>()?;
    claimed.sort_by_key(|r| (r.work_at, r.row_id.clone()));
    Ok(claimed)
}

pub(crate) async fn pending_purges(readers: &SqlitePool, limit: u32) -> StoreResult<Vec<String>> {
    sqlx::query_scalar("SELECT row_id FROM resource_purge ORDER BY created_at, row_id LIMIT ?")
        .bind(i64::from(limit))
        .fetch_all(readers)
        .await
        .map_err(map_err)
}

pub(crate) async fn finish_purge(writer: &SqlitePool, row_id: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM resource_purge WHERE row_id = ?")
        .bind(row_id)
        .execute(writer)
        .await
        .map_err(map_err)?;
    Ok(())
}
