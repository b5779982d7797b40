//! [`IdempotencyRepo`] on PostgreSQL.

use async_trait::async_trait;
use sqlx::{PgConnection, Row};

use super::idempotency::{
    ExistingKey, IdempotencyClaim, IdempotencyCompletion, IdempotencyRepo, RESERVE_ROUNDS,
    Reservation,
};
use super::postgres::PgRepo;
use super::postgres_batches::insert_batch_row;
use super::postgres_rows::insert_tasks;
use super::repo::RepoError;
use super::{Batch, NewTask};

/// Records the answer if `done.token` still holds the key unanswered; rows changed.
async fn complete(
    conn: &mut PgConnection,
    done: &IdempotencyCompletion,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE idempotency_keys
         SET request_hash = $1, status = $2, body = $3, completed_at = $4, expires_at = $5
         WHERE owner = $6 AND idem_key = $7 AND token = $8 AND status IS NULL",
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

impl PgRepo {
    async fn find_idempotency_key(
        &self,
        owner: &str,
        key: &str,
    ) -> Result<Option<ExistingKey>, RepoError> {
        let row = sqlx::query(
            "SELECT request_hash, token, locked_until, status, body, expires_at
             FROM idempotency_keys WHERE owner = $1 AND idem_key = $2",
        )
        .bind(owner)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
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
impl IdempotencyRepo for PgRepo {
    async fn reserve_idempotency_key(
        &self,
        claim: &IdempotencyClaim<'_>,
    ) -> Result<Reservation, RepoError> {
        for _ in 0..RESERVE_ROUNDS {
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys
                     (owner, idem_key, request_hash, token, locked_until, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (owner, idem_key) DO NOTHING",
            )
            .bind(claim.owner)
            .bind(claim.key)
            .bind(claim.request_hash)
            .bind(claim.token)
            .bind(claim.locked_until)
            .bind(claim.now)
            .bind(claim.expires_at)
            .execute(&self.pool)
            .await?
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
                 SET request_hash = $1, token = $2, locked_until = $3, status = NULL, body = NULL,
                     created_at = $4, completed_at = NULL, expires_at = $5
                 WHERE owner = $6 AND idem_key = $7 AND token = $8",
            )
            .bind(claim.request_hash)
            .bind(claim.token)
            .bind(claim.locked_until)
            .bind(claim.now)
            .bind(claim.expires_at)
            .bind(claim.owner)
            .bind(claim.key)
            .bind(&old_token)
            .execute(&self.pool)
            .await?
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
        let mut conn = self.pool.acquire().await?;
        Ok(complete(&mut conn, done).await? == 1)
    }

    async fn insert_answered(
        &self,
        batch: Option<&Batch>,
        tasks: &[NewTask],
        done: &IdempotencyCompletion,
    ) -> Result<bool, RepoError> {
        let mut tx = self.pool.begin().await?;
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

    async fn release_idempotency_key(
        &self,
        owner: &str,
        key: &str,
        token: &str,
    ) -> Result<bool, RepoError> {
        let gone = sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE owner = $1 AND idem_key = $2 AND token = $3 AND status IS NULL",
        )
        .bind(owner)
        .bind(key)
        .bind(token)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(gone == 1)
    }

    async fn purge_expired_idempotency_keys(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<u64, RepoError> {
        let gone = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (owner, idem_key) IN
                 (SELECT owner, idem_key FROM idempotency_keys WHERE expires_at <= $1 LIMIT $2)",
        )
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(gone)
    }
}
