//! The statistics repository (`GET /api/stats`): aggregates over the tasks created in a
//! window, computed by the database from a rollup it keeps itself.
//!
//! Finished tasks (succeeded, failed, canceled, expired) are counted by triggers on `tasks`
//! (migration 0012 on SQLite, 0005 on PostgreSQL) in the transaction of the write that
//! finished them: per bucket of their creation time at the window's width (5 minutes,
//! an hour, a UTC day), owner, provider, state and error code in `stats_counts`, and their
//! stage durations in a histogram of fixed buckets in `stats_durations`. A window is then a
//! few dozen rows of each, whatever the number of tasks in it. Unfinished tasks change
//! state too often to be rolled up for free; they are few, and read from `tasks` itself
//! (through the `tasks_due` index on their state). Both reads run in one read transaction,
//! so a task finishing meanwhile is counted once, in one place or the other.
//!
//! The SQL is written once for both backends (`QueryBuilder` numbers the placeholders).

use std::collections::BTreeMap;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row,
    SqlSafeStr, Type,
};

use super::RepoError;
use crate::domain::TaskState;
use crate::domain::stats::{
    LONGEST_DURATION_MS, Percentiles, Stage, StatsQuery, StatsTally, TaskStats,
};

#[async_trait]
pub trait StatsRepo: Send + Sync + 'static {
    /// Counts, credits, error codes, the time series, stage percentiles (and, when
    /// `query.per_owner`, counts per owner) of the tasks created in the query's window.
    async fn task_stats(&self, query: &StatsQuery) -> Result<TaskStats, RepoError>;

    /// The duration histogram's bucket bounds the database counts with, ascending (the
    /// contract checks them against [`crate::domain::stats::duration_buckets`]).
    async fn duration_bucket_bounds(&self) -> Result<Vec<i64>, RepoError>;
}

#[async_trait]
impl StatsRepo for super::sqlite::SqliteRepo {
    async fn task_stats(&self, query: &StatsQuery) -> Result<TaskStats, RepoError> {
        // A deferred transaction reads one snapshot of the WAL from its first read on.
        task_stats(&self.pool, "BEGIN", query).await
    }

    async fn duration_bucket_bounds(&self) -> Result<Vec<i64>, RepoError> {
        Ok(sqlx::query_scalar(BUCKET_BOUNDS)
            .fetch_all(&self.pool)
            .await?)
    }
}

#[async_trait]
impl StatsRepo for super::postgres::PgRepo {
    async fn task_stats(&self, query: &StatsQuery) -> Result<TaskStats, RepoError> {
        task_stats(
            &self.pool,
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            query,
        )
        .await
    }

    async fn duration_bucket_bounds(&self) -> Result<Vec<i64>, RepoError> {
        Ok(sqlx::query_scalar(BUCKET_BOUNDS)
            .fetch_all(&self.pool)
            .await?)
    }
}

const BUCKET_BOUNDS: &str = "SELECT le_ms FROM stats_duration_buckets ORDER BY le_ms";

/// `state IN ('queued', …)`: the states a task is not finished in (literals of our own).
fn push_unfinished<DB: Database>(q: &mut QueryBuilder<DB>) {
    let unfinished: Vec<String> = TaskState::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    q.push(format_args!(" state IN ({})", unfinished.join(", ")));
}

/// The rollup rows of the window: `grain_ms = … AND slot >= since AND slot < end
/// [AND owner = …]` (the primary key's order, so a range of it).
fn push_rollup_window<DB>(q: &mut QueryBuilder<DB>, query: &StatsQuery)
where
    DB: Database,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    q.push(" grain_ms = ")
        .push_bind(query.bucket_ms())
        .push(" AND slot >= ")
        .push_bind(query.since)
        .push(" AND slot < ")
        .push_bind(query.end());
    if let Some(owner) = &query.owner {
        q.push(" AND owner = ").push_bind(owner.clone());
    }
}

/// The window's unfinished tasks: `state IN (unfinished) AND created_at in the window
/// [AND owner = …]`.
fn push_unfinished_window<DB>(q: &mut QueryBuilder<DB>, query: &StatsQuery)
where
    DB: Database,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    push_unfinished(q);
    q.push(" AND created_at >= ")
        .push_bind(query.since)
        .push(" AND created_at < ")
        .push_bind(query.end());
    if let Some(owner) = &query.owner {
        q.push(" AND owner = ").push_bind(owner.clone());
    }
}

/// One row per slot, owner, provider, state and error code ('' for none): the rollup's
/// rows, then the unfinished tasks grouped the same way.
fn counts_sql<DB>(query: &StatsQuery) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new(
        "SELECT slot, owner, provider, state, error_code, tasks, credits
         FROM stats_counts WHERE",
    );
    push_rollup_window(&mut q, query);
    q.push(
        " UNION ALL
         SELECT slot, owner, provider, state, '' AS error_code, COUNT(*) AS tasks,
                CAST(COALESCE(SUM(credits), 0) AS BIGINT) AS credits
         FROM (SELECT created_at - created_at % ",
    );
    q.push_bind(query.bucket_ms()).push(
        " AS slot, COALESCE(owner, '') AS owner, provider, state, credits
             FROM tasks WHERE",
    );
    push_unfinished_window(&mut q, query);
    q.push(") AS unfinished GROUP BY slot, owner, provider, state");
    q
}

/// The window's duration histogram: `(stage, bucket bound, tasks)`, the rollup's summed
/// over its slots, then the queue waits of unfinished tasks already handed over, counted
/// in the same buckets.
fn durations_sql<DB>(query: &StatsQuery) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    let mut q = QueryBuilder::new(
        "SELECT stage, le_ms, CAST(SUM(tasks) AS BIGINT) AS tasks FROM stats_durations WHERE",
    );
    push_rollup_window(&mut q, query);
    q.push(format_args!(
        " GROUP BY stage, le_ms
         UNION ALL
         SELECT '{queue}' AS stage, le_ms, COUNT(*) AS tasks
         FROM (SELECT COALESCE((SELECT MIN(b.le_ms) FROM stats_duration_buckets AS b
                                WHERE b.le_ms >= submitted_at - created_at),
                               {LONGEST_DURATION_MS}) AS le_ms
               FROM tasks WHERE submitted_at IS NOT NULL AND",
        queue = Stage::Queue.stored(),
    ));
    push_unfinished_window(&mut q, query);
    q.push(") AS unfinished GROUP BY le_ms");
    q
}

fn state_of(raw: &str) -> Result<TaskState, RepoError> {
    TaskState::from_str(raw).map_err(|_| RepoError::Corrupt {
        id: "(statistics)".to_owned(),
        message: format!("unknown state {raw:?}"),
    })
}

/// '' (how the rollup stores "none") as `None`.
fn non_empty(raw: String) -> Option<String> {
    (!raw.is_empty()).then_some(raw)
}

async fn task_stats<DB>(
    pool: &Pool<DB>,
    begin: impl SqlSafeStr,
    query: &StatsQuery,
) -> Result<TaskStats, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let mut tx = pool.begin_with(begin).await?;
    let counts = counts_sql::<DB>(query).build().fetch_all(&mut *tx).await?;
    let durations = durations_sql::<DB>(query)
        .build()
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;

    let mut tally = StatsTally::default();
    for row in counts {
        let tasks: i64 = row.try_get("tasks")?;
        let credits: i64 = row.try_get("credits")?;
        if tasks == 0 && credits == 0 {
            // A rollup row whose tasks all moved on (a finished task changed since).
            continue;
        }
        let state = state_of(&row.try_get::<String, _>("state")?)?;
        let slot: i64 = row.try_get("slot")?;
        let bucket = (slot - query.since).div_euclid(query.bucket_ms());
        let code = non_empty(row.try_get("error_code")?);
        tally.add_group(
            (bucket, state, row.try_get("provider")?, code),
            tasks,
            credits,
        );
        if query.per_owner {
            tally.add_owner(non_empty(row.try_get("owner")?), state, tasks, credits);
        }
    }
    let mut histograms: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for row in durations {
        histograms
            .entry(row.try_get("stage")?)
            .or_default()
            .push((row.try_get("le_ms")?, row.try_get("tasks")?));
    }
    let mut stages = Vec::new();
    for stage in Stage::ALL {
        let histogram = histograms.remove(stage.stored()).unwrap_or_default();
        if let Some(percentiles) = Percentiles::from_histogram(histogram) {
            stages.push((stage, percentiles));
        }
    }
    Ok(tally.into_stats(stages))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index that makes the unfinished tasks of a window cheap to find is partial: the
    /// planner uses it only when the query's `state IN (…)` is the index's own predicate.
    #[test]
    fn the_unfinished_index_lists_the_states_the_statistics_ask_for() {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new("");
        push_unfinished(&mut q);
        let asked = q.sql().as_str().trim().to_owned();
        for migration in [
            include_str!("../../migrations/sqlite/0015_unfinished_index.sql"),
            include_str!("../../migrations/postgres/0008_unfinished_index.sql"),
        ] {
            let predicate = migration
                .split_once("WHERE ")
                .map(|(_, p)| p.trim().trim_end_matches(';'))
                .expect("a partial index");
            assert_eq!(predicate, asked);
        }
    }
}
