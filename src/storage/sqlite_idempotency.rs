//! [`IdempotencyRepo`] on SQLite.

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::{Row, SqliteConnection};

use super::idempotency::{
    ExistingKey, IdempotencyClaim, IdempotencyCompletion, IdempotencyRepo, RESERVE_ROUNDS,
    Reservation,
};
use super::repo::RepoError;
use super::sqlite::SqliteRepo;
use super::sqlite_batches::insert_batch_row;
use super::sqlite_rows::insert_tasks;
use super::{Batch, NewTask};

/// Records the answer if `done.token` still holds the key unanswered; rows changed.
async fn complete(
    conn: &mut SqliteConnection,
    done: &IdempotencyCompletion,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE idempotency_keys
         SET request_hash = ?, status = ?, body = ?, completed_at = ?, expires_at = ?
         WHERE owner = ? AND idem_key = ? AND token = ? AND status IS NULL",
    )
    .bind(&done.request_hash)
    .bind(i64::from(done.answer.status))
    .bind(&done.answer.body)
    .bind(done.completed_at)
    .bind(done.expires_at)
    .bind(&done.owner)
    .bind(&done.key)
    .bind(&done.token)
    .execute(conn)
    .await?
    .rows_affected())
}

impl SqliteRepo {
    async fn find_idempotency_key(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<ExistingKey>, RepoError> {
        // On the writer: the row the insert just lost to is read without a reader lagging.
        let row = sqlx::query(
            "SELECT request_hash, token, locked_until, status, body, expires_at
             FROM idempotency_keys WHERE owner = ? AND idem_key = ?",
        )
        .bind(owner)
        .bind(key)
        .fetch_optional(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(ExistingKey {
            request_hash: row.try_get("request_hash")?,
            token: row.try_get("token")?,
            locked_until: row.try_get("locked_until")?,
            status: row.try_get("status")?,
            body: row.try_get("body")?,
            expires_at: row.try_get("expires_at")?,
        }))
    }
}

#[async_trait]
impl IdempotencyRepo for SqliteRepo {
    async fn reserve_idempotency_key(
        &self,
        claim: &IdempotencyClaim<'_>,
    ) -> Result<Reservation, RepoError> {
        for _ in 0..RESERVE_ROUNDS {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys
                     (owner, idem_key, request_hash, token, locked_until, created_at, expires_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (owner, idem_key) DO NOTHING",
            )
            .bind(claim.owner)
            .bind(claim.key)
            .bind(claim.request_hash)
            .bind(claim.token)
            .bind(claim.locked_until)
            .bind(claim.now)
            .bind(claim.expires_at)
            .execute(&mut *self.writer.conn().await?)
            .await
            .map_err(|e| self.writer.failed(e))?
            .rows_affected();
            if inserted == 1 {
                return Ok(Reservation::Reserved);
            }
            let Some(existing) = self.find_idempotency_key(claim.owner, claim.key).await? else {
                continue; // released or purged meanwhile: insert again
            };
            let old_token = existing.token.clone();
            if let Some(standing) = existing.standing(claim.now) {
                return Ok(standing);
            }
            // Expired, or its holder died: take it over, if no other claim did first.
            let taken = sqlx::query(
                "UPDATE idempotency_keys
                 SET request_hash = ?, token = ?, locked_until = ?, status = NULL, body = NULL,
                     created_at = ?, completed_at = NULL, expires_at = ?
                 WHERE owner = ? AND idem_key = ? AND token = ?",
            )
            .bind(claim.request_hash)
            .bind(claim.token)
            .bind(claim.locked_until)
            .bind(claim.now)
            .bind(claim.expires_at)
            .bind(claim.owner)
            .bind(claim.key)
            .bind(&old_token)
            .execute(&mut *self.writer.conn().await?)
            .await
            .map_err(|e| self.writer.failed(e))?
            .rows_affected();
            if taken == 1 {
                return Ok(Reservation::Reserved);
            }
        }
        // Other claims kept winning the row: one of them holds it.
        Ok(Reservation::InFlight { request_hash: None })
    }

    async fn complete_idempotency_key(
        &self,
        done: &IdempotencyCompletion,
    ) -> Result<bool, RepoError> {
        let written: Result<u64, sqlx::Error> = async {
            let mut conn = self.writer.conn().await?;
            complete(&mut conn, done).await
        }
        .await;
        Ok(written.map_err(|e| self.writer.failed(e))? == 1)
    }

    async fn insert_answered(
        &self,
        batch: Option<&Batch>,
        tasks: &[NewTask],
        done: &IdempotencyCompletion,
    ) -> Result<bool, RepoError> {
        let written: Result<bool, sqlx::Error> = async {
            let mut conn = self.writer.conn().await?;
            let mut tx = conn.begin().await?;
            // The answer first: a reservation lost meanwhile writes nothing at all.
            if complete(&mut tx, done).await? != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            if let Some(batch) = batch {
                insert_batch_row(&mut tx, batch).await?;
            }
            insert_tasks(&mut tx, tasks).await?;
            tx.commit().await?;
            Ok(true)
        }
        .await;
        written.map_err(|e| self.writer.failed(e))
    }

    async fn release_idempotency_key(
        &self,
        owner: &str,
        key: &str,
        token: &str,
    ) -> Result<bool, RepoError> {
        let gone = sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE owner = ? AND idem_key = ? AND token = ? AND status IS NULL",
        )
        .bind(owner)
        .bind(key)
        .bind(token)
        .execute(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?
        .rows_affected();
        Ok(gone == 1)
    }

    async fn purge_expired_idempotency_keys(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<u64, RepoError> {
        let gone = sqlx::query(
            "DELETE FROM idempotency_keys WHERE rowid IN
                 (SELECT rowid FROM idempotency_keys WHERE expires_at <= ? LIMIT +?)",
        )
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?
        .rows_affected();
        Ok(gone)
    }
}
