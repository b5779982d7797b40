//! The task repository on PostgreSQL (`DARKROOM_DATABASE_URL=postgres://…`): the same
//! contract as SQLite (`storage::contract`), with claims that lock the rows they take
//! (`FOR UPDATE SKIP LOCKED`), so claimers on one database never take the same task and
//! never wait for each other.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, QueryBuilder};
use tokio::sync::Notify;

use super::postgres_rows::{insert_tasks, restore_task, task_from_row, tasks_from_rows};
use super::repo::{NewTask, ProviderMove, RepoError, Task, TaskFilter, TaskRepo, TaskUpdate};
use crate::domain::{TaskId, TaskState};

/// Changes kept for a follower that is behind before it is told it missed some.
const FEED_CAPACITY: usize = 4096;

/// How long a query waits for a free connection (or for PostgreSQL to accept one).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A pool of connections to one PostgreSQL database, and the listener that wakes the
/// dispatcher when any instance queues work.
pub struct PgRepo {
    pub(super) pool: PgPool,
    wake: Arc<Notify>,
    /// Task changes committed by other processes, from the listener.
    pub(super) changes: tokio::sync::broadcast::Sender<super::feed::FeedEvent>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for PgRepo {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgRepo {
    /// Connects to the database at `url` and applies pending migrations
    /// (`migrations/postgres`; instances starting together take turns under sqlx's
    /// advisory lock).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, RepoError> {
        // Every connection names this process as the origin of the task changes it
        // commits (the change trigger announces them with it), so the listener can tell
        // them from other instances' changes.
        let origin = format!("pool-{}", uuid::Uuid::now_v7().simple());
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?
            .options([(super::postgres_wake::ORIGIN_SETTING, origin.as_str())]);
        let pool = PgPoolOptions::new()
            // One more than asked: the queue listener keeps one for itself.
            .max_connections(max_connections.saturating_add(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let wake = Arc::new(Notify::new());
        let (changes, _) = tokio::sync::broadcast::channel(FEED_CAPACITY);
        let listener = super::postgres_wake::spawn_listener(
            pool.clone(),
            origin,
            wake.clone(),
            changes.clone(),
        );
        Ok(Self {
            pool,
            wake,
            changes,
            listener,
        })
    }

    /// Stops the listener and closes every connection; later calls fail.
    pub async fn close(&self) {
        self.listener.abort();
        self.pool.close().await;
    }
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub(super) fn as_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Moves up to `limit` due queued tasks of `provider` to `submitting` under `worker`'s
/// lease: by priority, then each owner's turn, then age. Returned in that order.
pub(super) async fn claim_queued_on(
    conn: &mut sqlx::PgConnection,
    provider: &str,
    now: i64,
    limit: usize,
    worker: &str,
    lease_until: i64,
) -> Result<Vec<Task>, RepoError> {
    // The claim order of SQLite (priority, then each owner's turn, then age) is worked
    // out without locks; then the first `limit` of the best few that no other claimer
    // holds are locked and taken. Locking every candidate instead would write a lock
    // into each queued row on every claim. A claimer racing another may take fewer than
    // `limit` (the rest are locked by the other); it comes back on its next round.
    // As on SQLite, only each owner's first few are ranked: owners by a skip scan of the
    // `tasks_claim` index, each owner's tasks by a walk of it (the ownerless ones apart:
    // `owner = NULL` matches nothing, and `IS NOT DISTINCT FROM` uses no index).
    let rows = sqlx::query(
        "WITH RECURSIVE owners(owner) AS (
             SELECT MIN(owner) FROM tasks
             WHERE state = 'queued' AND provider = $1 AND owner IS NOT NULL
             UNION ALL
             SELECT (SELECT MIN(t.owner) FROM tasks t
                     WHERE t.state = 'queued' AND t.provider = $1 AND t.owner > owners.owner)
             FROM owners WHERE owners.owner IS NOT NULL
         ), candidates AS (
             (SELECT id, priority, created_at, owner FROM tasks
              WHERE state = 'queued' AND provider = $1 AND owner IS NULL AND run_at <= $2
              ORDER BY priority DESC, created_at ASC, id ASC LIMIT $3)
             UNION ALL
             SELECT c.id, c.priority, c.created_at, c.owner
             FROM owners CROSS JOIN LATERAL (
                 SELECT id, priority, created_at, owner FROM tasks
                 WHERE state = 'queued' AND provider = $1 AND owner = owners.owner
                   AND run_at <= $2
                 ORDER BY priority DESC, created_at ASC, id ASC LIMIT $3) c
             WHERE owners.owner IS NOT NULL
         ), ranked AS (
             SELECT id, priority, created_at,
                    ROW_NUMBER() OVER (PARTITION BY COALESCE(owner, '')
                                       ORDER BY priority DESC, created_at ASC, id ASC) AS owner_rank
             FROM candidates
         ), wanted AS (
             SELECT id, priority, owner_rank, created_at FROM ranked
             ORDER BY priority DESC, owner_rank ASC, created_at ASC, id ASC
             LIMIT $3
         ), taken AS (
             SELECT t.id FROM tasks t JOIN wanted w ON w.id = t.id
             WHERE t.state = 'queued'
             ORDER BY w.priority DESC, w.owner_rank ASC, w.created_at ASC, w.id ASC
             LIMIT $4
             FOR UPDATE OF t SKIP LOCKED
         )
         UPDATE tasks SET state = 'submitting', lease_owner = $5, lease_until = $6, updated_at = $2,
                          callback_token_hash = ''
         FROM taken WHERE tasks.id = taken.id AND tasks.state = 'queued'
         RETURNING tasks.*",
    )
    .bind(provider)
    .bind(now)
    .bind(as_limit(limit.saturating_mul(4).saturating_add(16)))
    .bind(as_limit(limit))
    .bind(worker)
    .bind(lease_until)
    .fetch_all(conn)
    .await?;
    let mut tasks = tasks_from_rows(&rows)?;
    super::repo::sort_claimed(&mut tasks);
    Ok(tasks)
}

#[async_trait]
impl TaskRepo for PgRepo {
    async fn insert(&self, tasks: &[NewTask]) -> Result<(), RepoError> {
        let mut tx = self.pool.begin().await?;
        insert_tasks(&mut tx, tasks).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get(&self, id: &TaskId) -> Result<Option<Task>, RepoError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn restore(&self, task: &Task) -> Result<bool, RepoError> {
        let mut conn = self.pool.acquire().await?;
        Ok(restore_task(&mut conn, task).await?)
    }

    async fn get_by_provider_id(
        &self,
        provider: &str,
        provider_task_id: &str,
    ) -> Result<Option<Task>, RepoError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE provider = $1 AND provider_task_id = $2")
            .bind(provider)
            .bind(provider_task_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn claim_queued(
        &self,
        provider: &str,
        now: i64,
        limit: usize,
        worker: &str,
        lease_until: i64,
    ) -> Result<Vec<Task>, RepoError> {
        let mut conn = self.pool.acquire().await?;
        claim_queued_on(&mut conn, provider, now, limit, worker, lease_until).await
    }

    async fn claim_due(
        &self,
        state: TaskState,
        now: i64,
        limit: usize,
        worker: &str,
        lease_until: i64,
    ) -> Result<Vec<Task>, RepoError> {
        // The lease condition is checked again on the locked row (READ COMMITTED re-reads a
        // row that changed while the lock was awaited), so a lease taken meanwhile holds.
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT id FROM tasks WHERE state = $1 AND run_at <= $2
                   AND (lease_until IS NULL OR lease_until < $2)
                 ORDER BY run_at ASC LIMIT $3
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE tasks SET lease_owner = $4, lease_until = $5
             FROM due WHERE tasks.id = due.id
             RETURNING tasks.*",
        )
        .bind(state.as_str())
        .bind(now)
        .bind(as_limit(limit))
        .bind(worker)
        .bind(lease_until)
        .fetch_all(&self.pool)
        .await?;
        tasks_from_rows(&rows)
    }

    async fn update(
        &self,
        id: &TaskId,
        from: TaskState,
        lease: Option<&str>,
        update: &TaskUpdate,
        now: i64,
    ) -> Result<Option<Task>, RepoError> {
        let mut q: QueryBuilder<Postgres> =
            super::update_sql::guarded_update(id, from, lease, update, now, |values| {
                values.to_vec()
            });
        match q.build().fetch_optional(&self.pool).await {
            Ok(row) => row.as_ref().map(task_from_row).transpose(),
            Err(e) if is_unique_violation(&e) => Err(RepoError::DuplicateProviderId(
                update.provider_task_id.clone().unwrap_or_default(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    async fn move_provider(&self, mv: &ProviderMove<'_>) -> Result<Vec<Task>, RepoError> {
        let mut q: QueryBuilder<Postgres> = super::update_sql::provider_move(mv);
        match q.build().fetch_all(&self.pool).await {
            Ok(rows) => tasks_from_rows(&rows),
            Err(e) => Err(e.into()),
        }
    }

    async fn set_provider_task_id(
        &self,
        id: &TaskId,
        provider_task_id: &str,
        now: i64,
    ) -> Result<bool, RepoError> {
        let result = sqlx::query(
            "UPDATE tasks SET provider_task_id = $1, updated_at = $2
             WHERE id = $3 AND provider_task_id IS NULL",
        )
        .bind(provider_task_id)
        .bind(now)
        .bind(id.as_str())
        .execute(&self.pool)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) if is_unique_violation(&e) => {
                Err(RepoError::DuplicateProviderId(provider_task_id.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn note_callback(&self, id: &TaskId, now: i64) -> Result<Option<Task>, RepoError> {
        let row = sqlx::query(
            "UPDATE tasks SET callback_at = $1, run_at = LEAST(run_at, $1), updated_at = $1
             WHERE id = $2 AND state NOT IN ('succeeded', 'failed', 'canceled', 'expired')
             RETURNING *",
        )
        .bind(now)
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn ping(&self) -> Result<(), RepoError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe_write(&self, headroom_bytes: u32) -> Result<(), RepoError> {
        // Rolled back: the table stays empty. A read-only server (a standby, or
        // default_transaction_read_only) refuses it with 25006, a full disk with 53100.
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO write_probe (filler) VALUES ($1)")
            .bind(vec![0u8; headroom_bytes as usize])
            .execute(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(())
    }

    async fn count_in_flight(&self, provider: &str) -> Result<usize, RepoError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks
             WHERE provider = $1 AND state IN ('submitting', 'submitted', 'running')",
        )
        .bind(provider)
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    async fn count_unfinished(&self) -> Result<Vec<(String, TaskState, u64)>, RepoError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT provider, state, COUNT(*) FROM tasks
             WHERE state IN ('queued', 'submitting', 'submitted', 'running', 'ingesting')
             GROUP BY provider, state",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(provider, state, count)| {
                let state = state.parse::<TaskState>().map_err(|e| RepoError::Corrupt {
                    id: format!("{provider}/{state}"),
                    message: e.to_string(),
                })?;
                Ok((provider, state, u64::try_from(count).unwrap_or(0)))
            })
            .collect()
    }

    async fn extend_lease(&self, id: &TaskId, worker: &str, until: i64) -> Result<bool, RepoError> {
        let done =
            sqlx::query("UPDATE tasks SET lease_until = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(until)
                .bind(id.as_str())
                .bind(worker)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self, worker: &str) -> Result<u64, RepoError> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_owner = NULL, lease_until = NULL
             WHERE lease_owner = $1 AND state <> 'submitting'",
        )
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, RepoError> {
        let mut q: QueryBuilder<Postgres> = QueryBuilder::new("SELECT * FROM tasks WHERE TRUE");
        if !filter.states.is_empty() {
            let states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
            q.push(" AND state = ANY(").push_bind(states).push(")");
        }
        if let Some(batch) = &filter.batch_id {
            q.push(" AND batch_id = ").push_bind(batch.clone());
        }
        match &filter.owner {
            Some(Some(owner)) => {
                q.push(" AND owner = ").push_bind(owner.clone());
            }
            Some(None) => {
                q.push(" AND owner IS NULL");
            }
            None => {}
        }
        if let Some(before) = &filter.before {
            q.push(" AND id < ").push_bind(before.as_str().to_owned());
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(as_limit(filter.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        tasks_from_rows(&rows)
    }

    async fn queue_position(&self, id: &TaskId) -> Result<Option<u64>, RepoError> {
        // The claim order of `claim_queued`, ignoring `run_at` (a task waiting out a
        // backoff keeps its place). Each provider's queue is claimed on its own.
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM (
                 SELECT id, ROW_NUMBER() OVER (ORDER BY priority DESC, owner_rank ASC, created_at ASC, id ASC) AS position
                 FROM (
                     SELECT id, priority, created_at,
                            ROW_NUMBER() OVER (PARTITION BY COALESCE(owner, '')
                                               ORDER BY priority DESC, created_at ASC, id ASC) AS owner_rank
                     FROM tasks WHERE state = 'queued'
                       AND provider = (SELECT provider FROM tasks WHERE id = $1)) AS ranked) AS ordered
             WHERE id = $1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(position.and_then(|p| u64::try_from(p).ok()))
    }

    fn queue_signal(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }
}
