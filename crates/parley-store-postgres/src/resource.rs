//! The resource table on PostgreSQL: personas, replicas, documents, guardrails and objectives.

use parley_domain::{ResourceKind, Timestamp};
use parley_store::{Resource, StoreError, StoreResult};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use crate::{map_err, ts};

const COLUMNS: &str = "row_id, account_id, kind, resource_id, status, body, version, blob_key, created_at, \
                       updated_at, deleted_at, work_at, locked_until, attempts";

fn row_to_resource(row: &PgRow) -> StoreResult<Resource> {
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

pub(crate) async fn create(writer: &PgPool, r: &Resource) -> StoreResult<()> {
    sqlx::query(&format!(
        "INSERT INTO resource ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
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
    readers: &PgPool,
    account: &str,
    kind: ResourceKind,
    id: &str,
) -> StoreResult<Option<Resource>> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM resource \
         WHERE account_id = $1 AND kind = $2 AND resource_id = $3 AND deleted_at IS NULL"
    ))
    .bind(account)
    .bind(kind.as_str())
    .bind(id)
    .fetch_optional(readers)
    .await
    .map_err(map_err)?;
    row.as_ref().map(row_to_resource).transpose()
}

pub(crate) async fn load(readers: &PgPool, row_id: &str) -> StoreResult<Option<Resource>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM resource WHERE row_id = $1"))
        .bind(row_id)
        .fetch_optional(readers)
        .await
        .map_err(map_err)?;
    row.as_ref().map(row_to_resource).transpose()
}

pub(crate) async fn list(
    readers: &PgPool,
    account: &str,
    kind: ResourceKind,
    limit: u32,
    offset: u64,
) -> StoreResult<(Vec<Resource>, u64)> {
    // One read transaction, so the page and the total come from the same snapshot.
    let mut tx = readers.begin().await.map_err(map_err)?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM resource WHERE account_id = $1 AND kind = $2 AND deleted_at IS NULL \
         ORDER BY created_at DESC, row_id DESC LIMIT $3 OFFSET $4"
    ))
    .bind(account)
    .bind(kind.as_str())
    .bind(i64::from(limit))
    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
    .fetch_all(&mut *tx)
    .await
    .map_err(map_err)?;
    let total: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM resource WHERE account_id = $1 AND kind = $2 AND deleted_at IS NULL",
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

pub(crate) async fn update(writer: &PgPool, r: &Resource) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE resource SET status = $1, body = $2, blob_key = $3, updated_at = $4, work_at = $5, \
         locked_until = $6, attempts = $7, version = version + 1 \
         WHERE row_id = $8 AND version = $9 AND deleted_at IS NULL",
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
    writer: &PgPool,
    account: &str,
    kind: ResourceKind,
    id: &str,
    now: Timestamp,
) -> StoreResult<bool> {
    // Background work stops with it: a soft-deleted document is not fetched.
    let done = sqlx::query(
        "UPDATE resource SET deleted_at = $1, updated_at = $2, work_at = NULL, locked_until = NULL, \
         version = version + 1 \
         WHERE account_id = $3 AND kind = $4 AND resource_id = $5 AND deleted_at IS NULL",
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
    writer: &PgPool,
    account: &str,
    kind: ResourceKind,
    id: &str,
    now: Timestamp,
) -> StoreResult<Option<String>> {
    let mut tx = writer.begin().await.map_err(map_err)?;
    let row_id: Option<String> = sqlx::query_scalar(
        "DELETE FROM resource WHERE account_id = $1 AND kind = $2 AND resource_id = $3 RETURNING row_id",
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
    sqlx::query("INSERT INTO resource_purge (row_id, account_id, created_at) VALUES ($1, $2, $3)")
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
    writer: &PgPool,
    now: Timestamp,
    lease_until: Timestamp,
    limit: u32,
) -> StoreResult<Vec<Resource>> {
    let rows = sqlx::query(&format!(
        "UPDATE resource SET locked_until = $1, attempts = attempts + 1, version = version + 1 \
         WHERE row_id IN (SELECT row_id FROM resource WHERE work_at IS NOT NULL AND work_at <= $2 \
           AND deleted_at IS NULL AND (locked_until IS NULL OR locked_until <= $3) \
           ORDER BY work_at, row_id LIMIT $4 FOR UPDATE SKIP LOCKED) \
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

pub(crate) async fn pending_purges(readers: &PgPool, limit: u32) -> StoreResult<Vec<String>> {
    sqlx::query_scalar("SELECT row_id FROM resource_purge ORDER BY created_at, row_id LIMIT $1")
        .bind(i64::from(limit))
        .fetch_all(readers)
        .await
        .map_err(map_err)
}

pub(crate) async fn finish_purge(writer: &PgPool, row_id: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM resource_purge WHERE row_id = $1")
        .bind(row_id)
        .execute(writer)
        .await
        .map_err(map_err)?;
    Ok(())
}
