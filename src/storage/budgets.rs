//! Daily credit budgets as every instance sees them: each key's budget, the credits counted
//! per UTC day and scope (`*` for all tasks, else the key's name), and the estimate each
//! unfinished task holds until it is settled. One SQL text for both backends (as in
//! `retention.rs`).
//!
//! A reservation is one transaction: it adds the task's estimate to every scope it counts
//! in, but only where that stays within the scope's budget (a conditional `UPDATE`, which
//! PostgreSQL re-checks under the row lock and SQLite runs on its one writer), so N
//! instances together never count past a budget. The global scope is always taken first,
//! so two reservations never wait on each other's rows in opposite orders.

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row, Type,
};

use super::RepoError;
use crate::domain::TaskId;
use crate::domain::budget::{BudgetExceeded, BudgetScope, CreditDay, GLOBAL_SCOPE};

/// A task's estimate, to be counted before its create is sent.
#[derive(Clone, Debug)]
pub struct CreditReservation<'a> {
    pub task: &'a TaskId,
    /// The key that made it: its budget applies too.
    pub owner: Option<&'a str>,
    pub day: &'a CreditDay,
    pub credits: i64,
    /// The global budget; 0: none.
    pub global_limit: i64,
    /// Refuse what would exceed a budget (the global one, the key's); `false` only counts,
    /// for credits already spent (`darkroom reindex` recounting a lost day).
    pub check_budgets: bool,
    pub now: i64,
}

/// What a reservation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetCheck {
    /// Counted now.
    Reserved,
    /// The task holds a reservation already (an earlier try of its create).
    AlreadyReserved,
    /// Nothing counted: this budget would be exceeded.
    Exceeded(BudgetExceeded),
}

/// Credits counted in one scope on one day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeSpend {
    pub scope: BudgetScope,
    pub credits: i64,
}

#[async_trait]
pub trait BudgetRepo: Send + Sync + 'static {
    /// Counts the task's estimate in the global scope and its owner's, where each stays
    /// within its budget; all or nothing. A task that holds a reservation is not counted
    /// again.
    async fn reserve_credits(
        &self,
        reservation: &CreditReservation<'_>,
    ) -> Result<BudgetCheck, RepoError>;

    /// Replaces the task's estimate by what it used (`None`: the estimate stands) and
    /// forgets its reservation; whether it held one.
    async fn settle_credits(&self, task: &TaskId, used: Option<i64>) -> Result<bool, RepoError>;

    /// Credits counted on `day`, by scope.
    async fn credit_spend(&self, day: &str) -> Result<Vec<ScopeSpend>, RepoError>;

    /// Sets the key's daily budget (`None` removes it); `now` stamps the change.
    async fn set_daily_budget(
        &self,
        owner: &str,
        credits: Option<i64>,
        now: i64,
    ) -> Result<(), RepoError>;

    /// Every key's daily budget, by name.
    async fn daily_budgets(&self) -> Result<Vec<(String, i64)>, RepoError>;

    /// Makes queued tasks waiting on a budget (of `owner`, or every key's) due at `now`,
    /// after a budget was raised or removed; how many.
    async fn wake_budget_waiters(&self, owner: Option<&str>, now: i64) -> Result<u64, RepoError>;
}

/// The scopes a task counts in, global first, each with its budget (0: none).
fn scopes(reservation: &CreditReservation<'_>, owner_limit: i64) -> Vec<(BudgetScope, i64)> {
    let global_limit = if reservation.check_budgets {
        reservation.global_limit
    } else {
        0
    };
    let mut scopes = vec![(BudgetScope::Global, global_limit)];
    if let Some(owner) = reservation.owner {
        scopes.push((BudgetScope::Key(owner.to_owned()), owner_limit));
    }
    scopes
}

async fn reserve_credits<DB>(
    conn: &mut DB::Connection,
    reservation: &CreditReservation<'_>,
) -> Result<BudgetCheck, sqlx::Error>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    Option<String>: for<'t> Encode<'t, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let task = reservation.task.as_str().to_owned();
    let day = reservation.day.name.clone();
    let mut tx = conn.begin().await?;
    // A task is reserved once: a create tried again finds its reservation. Written first,
    // so the transaction takes the write lock at once (SQLite) and a racing reservation of
    // the same task waits for this one and then finds it (PostgreSQL).
    let mut q = QueryBuilder::<DB>::new(
        "INSERT INTO credit_reservations (task_id, day, owner, credits, at) VALUES (",
    );
    let mut values = q.separated(", ");
    values.push_bind(task);
    values.push_bind(day.clone());
    values.push_bind(reservation.owner.map(str::to_owned));
    values.push_bind(reservation.credits);
    values.push_bind(reservation.now);
    q.push(") ON CONFLICT (task_id) DO NOTHING RETURNING task_id");
    if q.build().fetch_optional(&mut *tx).await?.is_none() {
        tx.rollback().await?;
        return Ok(BudgetCheck::AlreadyReserved);
    }
    let mut owner_limit = 0;
    if let Some(owner) = reservation.owner.filter(|_| reservation.check_budgets) {
        let row =
            QueryBuilder::<DB>::new("SELECT daily_credits FROM credit_budgets WHERE owner = ")
                .push_bind(owner.to_owned())
                .build()
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(row) = row {
            owner_limit = row.try_get("daily_credits")?;
        }
    }
    for (scope, limit) in scopes(reservation, owner_limit) {
        let name = scope.as_str().to_owned();
        // One statement per scope: the day's count is made with this task's credits or
        // raised by them, only while it stays within the budget (0: none).
        let mut q =
            QueryBuilder::<DB>::new("INSERT INTO credit_spend (day, scope, credits) SELECT ");
        q.push_bind(day.clone())
            .push(", ")
            .push_bind(name.clone())
            .push(", ")
            .push_bind(reservation.credits);
        if limit > 0 {
            q.push(" WHERE ")
                .push_bind(reservation.credits)
                .push(" <= ")
                .push_bind(limit);
        } else {
            // SQLite needs a WHERE here to read the ON CONFLICT after it as the upsert's.
            q.push(" WHERE 1 = 1");
        }
        q.push(
            " ON CONFLICT (day, scope) DO UPDATE SET credits = credit_spend.credits + excluded.credits",
        );
        if limit > 0 {
            q.push(" WHERE credit_spend.credits + excluded.credits <= ")
                .push_bind(limit);
        }
        q.push(" RETURNING credits");
        if q.build().fetch_optional(&mut *tx).await?.is_none() {
            let spent: i64 =
                match QueryBuilder::<DB>::new("SELECT credits FROM credit_spend WHERE day = ")
                    .push_bind(day.clone())
                    .push(" AND scope = ")
                    .push_bind(name)
                    .build()
                    .fetch_optional(&mut *tx)
                    .await?
                {
                    Some(row) => row.try_get("credits")?,
                    None => 0,
                };
            tx.rollback().await?;
            return Ok(BudgetCheck::Exceeded(BudgetExceeded {
                scope,
                limit,
                spent,
                needed: reservation.credits,
                resets_at: reservation.day.resets_at,
            }));
        }
    }
    tx.commit().await?;
    Ok(BudgetCheck::Reserved)
}

async fn settle_credits<DB>(
    conn: &mut DB::Connection,
    task: &TaskId,
    used: Option<i64>,
) -> Result<bool, sqlx::Error>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    Option<String>: for<'t> Encode<'t, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    // Most tasks are charged what was reserved (or report nothing): then dropping the
    // reservation is the whole settlement, one statement, atomic without a transaction.
    let mut q = QueryBuilder::<DB>::new("DELETE FROM credit_reservations WHERE task_id = ");
    q.push_bind(task.as_str().to_owned());
    if let Some(used) = used {
        q.push(" AND credits = ").push_bind(used);
    }
    if q.push(" RETURNING task_id")
        .build()
        .fetch_optional(&mut *conn)
        .await?
        .is_some()
    {
        return Ok(true);
    }
    if used.is_none() {
        return Ok(false);
    }
    // Charged more or less than reserved (or nothing reserved): the day's counts change
    // with the reservation, in one transaction.
    let mut tx = conn.begin().await?;
    let row = QueryBuilder::<DB>::new("DELETE FROM credit_reservations WHERE task_id = ")
        .push_bind(task.as_str().to_owned())
        .push(" RETURNING day, owner, credits")
        .build()
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let reserved: i64 = row.try_get("credits")?;
    let change = used.map_or(0, |used| used - reserved);
    if change != 0 {
        let day: String = row.try_get("day")?;
        let owner: Option<String> = row.try_get("owner")?;
        let mut q = QueryBuilder::<DB>::new("UPDATE credit_spend SET credits = credits + ");
        q.push_bind(change)
            .push(" WHERE day = ")
            .push_bind(day)
            .push(" AND scope IN (")
            .push_bind(GLOBAL_SCOPE.to_owned())
            .push(", ")
            .push_bind(owner.unwrap_or_else(|| GLOBAL_SCOPE.to_owned()))
            .push(")");
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(true)
}

async fn credit_spend<DB>(pool: &Pool<DB>, day: &str) -> Result<Vec<ScopeSpend>, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let rows = QueryBuilder::<DB>::new("SELECT scope, credits FROM credit_spend WHERE day = ")
        .push_bind(day.to_owned())
        .push(" ORDER BY scope")
        .build()
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            Ok(ScopeSpend {
                scope: BudgetScope::from_stored(&row.try_get::<String, _>("scope")?),
                credits: row.try_get("credits")?,
            })
        })
        .collect()
}

async fn set_daily_budget<DB>(
    conn: &mut DB::Connection,
    owner: &str,
    credits: Option<i64>,
    now: i64,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut q = match credits {
        None => {
            let mut q = QueryBuilder::<DB>::new("DELETE FROM credit_budgets WHERE owner = ");
            q.push_bind(owner.to_owned());
            q
        }
        Some(credits) => {
            let mut q = QueryBuilder::<DB>::new(
                "INSERT INTO credit_budgets (owner, daily_credits, updated_at) VALUES (",
            );
            q.push_bind(owner.to_owned())
                .push(", ")
                .push_bind(credits)
                .push(", ")
                .push_bind(now)
                .push(
                    ") ON CONFLICT (owner) DO UPDATE SET daily_credits = excluded.daily_credits,
                     updated_at = excluded.updated_at",
                );
            q
        }
    };
    q.build().execute(&mut *conn).await?;
    Ok(())
}

async fn daily_budgets<DB>(pool: &Pool<DB>) -> Result<Vec<(String, i64)>, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: Type<DB> + for<'r> Decode<'r, DB>,
    String: Type<DB> + for<'r> Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let rows =
        QueryBuilder::<DB>::new("SELECT owner, daily_credits FROM credit_budgets ORDER BY owner")
            .build()
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("owner")?, row.try_get("daily_credits")?)))
        .collect()
}

async fn wake_budget_waiters<DB>(
    conn: &mut DB::Connection,
    owner: Option<&str>,
    now: i64,
) -> Result<u64, sqlx::Error>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::<DB>::new("UPDATE tasks SET run_at = ");
    q.push_bind(now)
        .push(" WHERE state = 'queued' AND error_code = ")
        .push_bind(crate::domain::JobCode::BudgetExhausted.as_str().to_owned())
        .push(" AND run_at > ")
        .push_bind(now);
    if let Some(owner) = owner {
        q.push(" AND owner = ").push_bind(owner.to_owned());
    }
    q.push(" RETURNING id");
    Ok(q.build().fetch_all(&mut *conn).await?.len() as u64)
}

#[async_trait]
impl BudgetRepo for super::sqlite::SqliteRepo {
    async fn reserve_credits(
        &self,
        reservation: &CreditReservation<'_>,
    ) -> Result<BudgetCheck, RepoError> {
        reserve_credits::<sqlx::Sqlite>(&mut *self.writer.conn().await?, reservation)
            .await
            .map_err(|e| self.writer.failed(e))
    }

    async fn settle_credits(&self, task: &TaskId, used: Option<i64>) -> Result<bool, RepoError> {
        settle_credits::<sqlx::Sqlite>(&mut *self.writer.conn().await?, task, used)
            .await
            .map_err(|e| self.writer.failed(e))
    }

    async fn credit_spend(&self, day: &str) -> Result<Vec<ScopeSpend>, RepoError> {
        credit_spend(&self.pool, day).await
    }

    async fn set_daily_budget(
        &self,
        owner: &str,
        credits: Option<i64>,
        now: i64,
    ) -> Result<(), RepoError> {
        set_daily_budget::<sqlx::Sqlite>(&mut *self.writer.conn().await?, owner, credits, now)
            .await
            .map_err(|e| self.writer.failed(e))
    }

    async fn daily_budgets(&self) -> Result<Vec<(String, i64)>, RepoError> {
        daily_budgets(&self.pool).await
    }

    async fn wake_budget_waiters(&self, owner: Option<&str>, now: i64) -> Result<u64, RepoError> {
        wake_budget_waiters::<sqlx::Sqlite>(&mut *self.writer.conn().await?, owner, now)
            .await
            .map_err(|e| self.writer.failed(e))
    }
}

#[async_trait]
impl BudgetRepo for super::postgres::PgRepo {
    async fn reserve_credits(
        &self,
        reservation: &CreditReservation<'_>,
    ) -> Result<BudgetCheck, RepoError> {
        Ok(
            reserve_credits::<sqlx::Postgres>(&mut *self.pool.acquire().await?, reservation)
                .await?,
        )
    }

    async fn settle_credits(&self, task: &TaskId, used: Option<i64>) -> Result<bool, RepoError> {
        Ok(settle_credits::<sqlx::Postgres>(&mut *self.pool.acquire().await?, task, used).await?)
    }

    async fn credit_spend(&self, day: &str) -> Result<Vec<ScopeSpend>, RepoError> {
        credit_spend(&self.pool, day).await
    }

    async fn set_daily_budget(
        &self,
        owner: &str,
        credits: Option<i64>,
        now: i64,
    ) -> Result<(), RepoError> {
        Ok(set_daily_budget::<sqlx::Postgres>(
            &mut *self.pool.acquire().await?,
            owner,
            credits,
            now,
        )
        .await?)
    }

    async fn daily_budgets(&self) -> Result<Vec<(String, i64)>, RepoError> {
        daily_budgets(&self.pool).await
    }

    async fn wake_budget_waiters(&self, owner: Option<&str>, now: i64) -> Result<u64, RepoError> {
        Ok(
            wake_budget_waiters::<sqlx::Postgres>(&mut *self.pool.acquire().await?, owner, now)
                .await?,
        )
    }
}
