//! [`LimitsRepo`] on SQLite: the claim runs on the one writer connection in a transaction,
//! which serializes it with every other write of this process (and a restarted process
//! reads what its predecessor reserved).

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::{Row, SqliteConnection};

use super::limits::{
    LimitedClaim, LimitedClaimRequest, LimitsRepo, Reserved, SharedPause, room_left, sql,
};
use super::repo::RepoError;
use super::sqlite::{SqliteRepo, claim_queued_on};

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn running_pause(
    conn: &mut SqliteConnection,
    provider: &str,
    now: i64,
) -> Result<Option<SharedPause>, sqlx::Error> {
    let row = sqlx::query(sql::PAUSE)
        .bind(provider)
        .bind(now)
        .fetch_optional(conn)
        .await?;
    row.map(|row| {
        Ok(SharedPause {
            until: row.try_get(0)?,
            code: row.try_get(1)?,
            reason: row.try_get(2)?,
        })
    })
    .transpose()
}

async fn claim(
    conn: &mut SqliteConnection,
    request: &LimitedClaimRequest<'_>,
) -> Result<LimitedClaim, RepoError> {
    let limits = &request.limits;
    if let Some(pause) = running_pause(conn, request.provider, request.now).await? {
        return Ok(LimitedClaim {
            pause: Some(pause),
            ..LimitedClaim::default()
        });
    }
    let mut window = Vec::new();
    if limits.creates > 0 {
        let since = request.now.saturating_sub(limits.window_ms);
        sqlx::query(sql::FORGET_OLD)
            .bind(request.provider)
            .bind(since)
            .execute(&mut *conn)
            .await?;
        let rows: Vec<(i64, i64)> = sqlx::query_as(sql::WINDOW)
            .bind(request.provider)
            .bind(since)
            .fetch_all(&mut *conn)
            .await?;
        window = rows
            .into_iter()
            .map(|(at, slots)| Reserved {
                at,
                slots: usize::try_from(slots).unwrap_or(0),
            })
            .collect();
    }
    let mut in_flight = 0;
    if limits.max_in_flight > 0 {
        let count: i64 = sqlx::query_scalar(sql::IN_FLIGHT)
            .bind(request.provider)
            .fetch_one(&mut *conn)
            .await?;
        in_flight = usize::try_from(count).unwrap_or(0);
    }
    let room = room_left(limits, request.wanted, &window, in_flight);
    if room == 0 {
        return Ok(LimitedClaim {
            window,
            ..LimitedClaim::default()
        });
    }
    let tasks = claim_queued_on(
        conn,
        request.provider,
        request.now,
        room,
        request.worker,
        request.lease_until,
    )
    .await?;
    if limits.creates > 0 && !tasks.is_empty() {
        sqlx::query(sql::RESERVE)
            .bind(request.provider)
            .bind(request.now)
            .bind(as_i64(tasks.len()))
            .execute(&mut *conn)
            .await?;
        window.push(Reserved {
            at: request.now,
            slots: tasks.len(),
        });
    }
    Ok(LimitedClaim {
        tasks,
        window,
        pause: None,
    })
}

#[async_trait]
impl LimitsRepo for SqliteRepo {
    async fn claim_within_limits(
        &self,
        request: &LimitedClaimRequest<'_>,
    ) -> Result<LimitedClaim, RepoError> {
        let claimed: Result<LimitedClaim, RepoError> = async {
            let mut conn = self.writer.conn().await?;
            let mut tx = conn.begin().await?;
            let claimed = claim(&mut tx, request).await?;
            tx.commit().await?;
            Ok(claimed)
        }
        .await;
        claimed.map_err(|e| self.writer.failed_repo(e))
    }

    async fn stamp_create(
        &self,
        provider: &str,
        claimed_at: i64,
        sent_at: i64,
    ) -> Result<(), RepoError> {
        let stamped: Result<(), sqlx::Error> = async {
            let mut conn = self.writer.conn().await?;
            let mut tx = conn.begin().await?;
            sqlx::query(sql::STAMP_TAKE_SQLITE)
                .bind(provider)
                .bind(claimed_at)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::RESERVE)
                .bind(provider)
                .bind(sent_at)
                .bind(1_i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        stamped.map_err(|e| self.writer.failed(e))
    }

    async fn return_create(&self, provider: &str, claimed_at: i64) -> Result<bool, RepoError> {
        let returned = sqlx::query(sql::STAMP_TAKE_SQLITE)
            .bind(provider)
            .bind(claimed_at)
            .execute(&mut *self.writer.conn().await?)
            .await
            .map_err(|e| self.writer.failed(e))?
            .rows_affected();
        Ok(returned > 0)
    }

    async fn pause_provider(&self, provider: &str, pause: &SharedPause) -> Result<bool, RepoError> {
        let changed = sqlx::query(sql::PAUSE_UPSERT)
            .bind(provider)
            .bind(pause.until)
            .bind(&pause.code)
            .bind(&pause.reason)
            .execute(&mut *self.writer.conn().await?)
            .await
            .map_err(|e| self.writer.failed(e))?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn lift_provider_pause(&self, provider: &str, code: &str) -> Result<bool, RepoError> {
        let lifted = sqlx::query(sql::PAUSE_LIFT)
            .bind(provider)
            .bind(code)
            .execute(&mut *self.writer.conn().await?)
            .await
            .map_err(|e| self.writer.failed(e))?
            .rows_affected();
        Ok(lifted > 0)
    }

    async fn provider_pause(
        &self,
        provider: &str,
        now: i64,
    ) -> Result<Option<SharedPause>, RepoError> {
        let mut conn = self.pool.acquire().await?;
        Ok(running_pause(&mut conn, provider, now).await?)
    }
}
