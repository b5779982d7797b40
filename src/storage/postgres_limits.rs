//! [`LimitsRepo`] on PostgreSQL: the claim runs in a transaction that first takes an
//! advisory lock named after the provider, so the claims of every instance for one
//! provider run one at a time (claims for other providers, and every other query, do not
//! wait). The lock is released when the transaction ends, also when its connection drops.

use std::sync::LazyLock;

use async_trait::async_trait;
use sqlx::{PgConnection, Row};

use super::limits::{
    LimitedClaim, LimitedClaimRequest, LimitsRepo, Reserved, SharedPause, room_left, sql,
};
use super::postgres::{PgRepo, claim_queued_on};
use super::repo::RepoError;

static PAUSE: LazyLock<String> = LazyLock::new(|| sql::numbered(sql::PAUSE));
static FORGET_OLD: LazyLock<String> = LazyLock::new(|| sql::numbered(sql::FORGET_OLD));
static WINDOW: LazyLock<String> = LazyLock::new(|| sql::numbered(sql::WINDOW));
static IN_FLIGHT: LazyLock<String> = LazyLock::new(|| sql::numbered(sql::IN_FLIGHT));
static RESERVE: LazyLock<String> = LazyLock::new(|| sql::numbered(sql::RESERVE));
static PAUSE_UPSERT: LazyLock<String> = LazyLock::new(|| sql::numbered(sql::PAUSE_UPSERT));
static PAUSE_LIFT: LazyLock<String> = LazyLock::new(|| sql::numbered(sql::PAUSE_LIFT));

/// The statements are constants of `limits::sql` with numbered placeholders: no input
/// ever reaches their text.
fn safe(sql: &'static LazyLock<String>) -> sqlx::AssertSqlSafe<&'static str> {
    sqlx::AssertSqlSafe(sql.as_str())
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn running_pause(
    conn: &mut PgConnection,
    provider: &str,
    now: i64,
) -> Result<Option<SharedPause>, sqlx::Error> {
    let row = sqlx::query(safe(&PAUSE))
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
    conn: &mut PgConnection,
    request: &LimitedClaimRequest<'_>,
) -> Result<LimitedClaim, RepoError> {
    let limits = &request.limits;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("darkroom.provider_limits.{}", request.provider))
        .execute(&mut *conn)
        .await?;
    if let Some(pause) = running_pause(conn, request.provider, request.now).await? {
        return Ok(LimitedClaim {
            pause: Some(pause),
            ..LimitedClaim::default()
        });
    }
    let mut window = Vec::new();
    if limits.creates > 0 {
        let since = request.now.saturating_sub(limits.window_ms);
        sqlx::query(safe(&FORGET_OLD))
            .bind(request.provider)
            .bind(since)
            .execute(&mut *conn)
            .await?;
        let rows: Vec<(i64, i64)> = sqlx::query_as(safe(&WINDOW))
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
        let count: i64 = sqlx::query_scalar(safe(&IN_FLIGHT))
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
        sqlx::query(safe(&RESERVE))
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
impl LimitsRepo for PgRepo {
    async fn claim_within_limits(
        &self,
        request: &LimitedClaimRequest<'_>,
    ) -> Result<LimitedClaim, RepoError> {
        let mut tx = self.pool.begin().await?;
        let claimed = claim(&mut tx, request).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn stamp_create(
        &self,
        provider: &str,
        claimed_at: i64,
        sent_at: i64,
    ) -> Result<(), RepoError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(sql::STAMP_TAKE_POSTGRES)
            .bind(provider)
            .bind(claimed_at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(safe(&RESERVE))
            .bind(provider)
            .bind(sent_at)
            .bind(1_i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn return_create(&self, provider: &str, claimed_at: i64) -> Result<bool, RepoError> {
        let returned = sqlx::query(sql::STAMP_TAKE_POSTGRES)
            .bind(provider)
            .bind(claimed_at)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(returned > 0)
    }

    async fn pause_provider(&self, provider: &str, pause: &SharedPause) -> Result<bool, RepoError> {
        let changed = sqlx::query(safe(&PAUSE_UPSERT))
            .bind(provider)
            .bind(pause.until)
            .bind(&pause.code)
            .bind(&pause.reason)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(changed > 0)
    }

    async fn lift_provider_pause(&self, provider: &str, code: &str) -> Result<bool, RepoError> {
        let lifted = sqlx::query(safe(&PAUSE_LIFT))
            .bind(provider)
            .bind(code)
            .execute(&self.pool)
            .await?
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
