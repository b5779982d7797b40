//! The task repository on SQLite (the embedded default and single-machine production).

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::repo::{NewTask, ProviderMove, RepoError, Task, TaskFilter, TaskRepo, TaskUpdate};
use super::sqlite_rows::{insert_tasks, restore_task, task_from_row, tasks_from_rows, to_json};
use super::sqlite_writer::{Durability, Writer, connect_options};
use crate::domain::{TaskId, TaskState};

/// Reads go through a pool; every write goes through one connection. SQLite takes one
/// writer at a time anyway, and concurrent writers otherwise contend in SQLite's busy
/// handler (which sleeps) instead of queueing in the pool (which does not).
pub struct SqliteRepo {
    pub(super) pool: SqlitePool,
    pub(super) writer: Writer,
}

impl SqliteRepo {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    pub async fn connect(
        url: &str,
        max_connections: u32,
        durability: Durability,
    ) -> Result<Self, RepoError> {
        let options = connect_options(url, durability)?;
        let in_memory = url.contains(":memory:");
        let writer = Writer::open(options.clone(), in_memory).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut *writer.conn().await?)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(e) => writer.failed(e),
                other => other.into(),
            })?;
        let pool = if let Some(shared) = writer.shared_pool() {
            // Every in-memory connection is its own database: share the one.
            shared.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(max_connections)
                // A connection to a local file does not drop like a network one; the test
                // would cost a round trip to its thread on every read.
                .test_before_acquire(false)
                .connect_with(options)
                .await?
        };
        Ok(Self { pool, writer })
    }

    /// A private in-memory database, for tests.
    pub async fn in_memory() -> Result<Self, RepoError> {
        // One connection: each in-memory connection would otherwise be its own database.
        Self::connect("sqlite::memory:", 1, Durability::Normal).await
    }

    /// Caps the database at `pages` pages (`None`: no cap beyond SQLite's own). At the cap,
    /// writes fail as on a full disk; the test suite fills the database this way.
    pub async fn set_page_cap(&self, pages: Option<u32>) -> Result<(), RepoError> {
        self.writer.set_page_cap(pages).await
    }

    /// Closes every connection (readers and the writer); later calls fail. For a clean
    /// stop, and for tests that start another instance on the same file in one process
    /// (SQLite shares open files between connections of one process).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// How many pages the database file has now.
    pub async fn page_count(&self) -> Result<u32, RepoError> {
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut *self.writer.conn().await?)
            .await?;
        Ok(u32::try_from(pages).unwrap_or(u32::MAX))
    }
}

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Moves up to `limit` due queued tasks of `provider` to `submitting` under `worker`'s
/// lease: by priority, then each owner's turn, then age. Returned in that order.
///
/// Only each owner's first `limit` due tasks can be among the first `limit` overall (an
/// owner's tasks keep their own order in the claim order), so only those are ranked: the
/// owners come from a skip scan of the `tasks_claim` index (one seek per owner; the last
/// row, NULL, stands for the tasks without an owner), each owner's tasks from a walk of
/// the same index (named: the planner otherwise prefers `tasks_due` and walks every queued
/// task), and the claimed rows by id (`+state` keeps `tasks_due` out of that too). A claim
/// costs the same at 10 queued tasks as at 100,000.
///
/// `LIMIT +?3`, not `LIMIT ?3`: SQLite reads a bare bound LIMIT as a constant of the plan
/// and prepares the statement again whenever the bound value changes (the room to claim
/// changes all the time); the unary plus keeps it a value read at run time.
pub(super) async fn claim_queued_on(
    conn: &mut sqlx::SqliteConnection,
    provider: &str,
    now: i64,
    limit: usize,
    worker: &str,
    lease_until: i64,
) -> Result<Vec<Task>, RepoError> {
    let rows = sqlx::query(
        "WITH RECURSIVE owners(owner) AS (
             SELECT MIN(owner) FROM tasks INDEXED BY tasks_claim
             WHERE state = 'queued' AND provider = ?1 AND owner IS NOT NULL
             UNION ALL
             SELECT (SELECT MIN(owner) FROM tasks INDEXED BY tasks_claim
                     WHERE state = 'queued' AND provider = ?1 AND owner > owners.owner)
             FROM owners WHERE owners.owner IS NOT NULL
         ), candidates AS (
             SELECT t.id, t.priority, t.created_at, t.owner FROM owners, tasks t
             WHERE t.id IN (SELECT id FROM tasks INDEXED BY tasks_claim
                            WHERE state = 'queued' AND provider = ?1 AND owner IS owners.owner
                              AND run_at <= ?2
                            ORDER BY priority DESC, created_at ASC, id ASC LIMIT +?3)
         )
         UPDATE tasks SET state = 'submitting', lease_owner = ?4, lease_until = ?5, updated_at = ?2,
                          callback_token_hash = ''
         WHERE id IN (
             SELECT id FROM (
                 SELECT id, priority, created_at,
                        ROW_NUMBER() OVER (PARTITION BY COALESCE(owner, '')
                                           ORDER BY priority DESC, created_at ASC, id ASC) AS owner_rank
                 FROM candidates)
             ORDER BY priority DESC, owner_rank ASC, created_at ASC, id ASC LIMIT +?3)
           AND +state = 'queued'
         RETURNING *",
    )
    .bind(provider)
    .bind(now)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(worker)
    .bind(lease_until)
    .fetch_all(conn)
    .await?;
    let mut tasks = tasks_from_rows(&rows)?;
    super::repo::sort_claimed(&mut tasks);
    Ok(tasks)
}

#[async_trait]
impl TaskRepo for SqliteRepo {
    async fn insert(&self, tasks: &[NewTask]) -> Result<(), RepoError> {
        let written: Result<(), sqlx::Error> = async {
            let mut conn = self.writer.conn().await?;
            let mut tx = conn.begin().await?;
            insert_tasks(&mut tx, tasks).await?;
            tx.commit().await
        }
        .await;
        written.map_err(|e| self.writer.failed(e))
    }

    async fn get(&self, id: &TaskId) -> Result<Option<Task>, RepoError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn restore(&self, task: &Task) -> Result<bool, RepoError> {
        let mut conn = self
            .writer
            .conn()
            .await
            .map_err(|e| self.writer.failed(e))?;
        restore_task(&mut conn, task)
            .await
            .map_err(|e| self.writer.failed(e))
    }

    async fn get_by_provider_id(
        &self,
        provider: &str,
        provider_task_id: &str,
    ) -> Result<Option<Task>, RepoError> {
        let row = sqlx::query("SELECT * FROM tasks WHERE provider = ? AND provider_task_id = ?")
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
        let mut conn = self
            .writer
            .conn()
            .await
            .map_err(|e| self.writer.failed(e))?;
        claim_queued_on(&mut conn, provider, now, limit, worker, lease_until)
            .await
            .map_err(|e| self.writer.failed_repo(e))
    }

    async fn claim_due(
        &self,
        state: TaskState,
        now: i64,
        limit: usize,
        worker: &str,
        lease_until: i64,
    ) -> Result<Vec<Task>, RepoError> {
        // `+state`: the claimed rows are found by id; without it the planner walks every
        // task in `state` through `tasks_due` to match them. The state is a literal (one of
        // our own names), never bound: see `update_sql::push_state_is`; `LIMIT +?` as in
        // `claim_queued_on`.
        let state = state.as_str();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE tasks SET lease_owner = ?, lease_until = ?
             WHERE id IN (
                 SELECT id FROM tasks WHERE state = '{state}' AND run_at <= ?
                   AND (lease_until IS NULL OR lease_until < ?)
                 ORDER BY run_at ASC LIMIT +?)
               AND +state = '{state}' AND (lease_until IS NULL OR lease_until < ?)
             RETURNING *"
        )))
        .bind(worker)
        .bind(lease_until)
        .bind(now)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(now)
        .fetch_all(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
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
        let mut q: QueryBuilder<Sqlite> =
            super::update_sql::guarded_update(id, from, lease, update, now, to_json);
        match q
            .build()
            .fetch_optional(&mut *self.writer.conn().await?)
            .await
        {
            Ok(row) => row.as_ref().map(task_from_row).transpose(),
            Err(e) if is_unique_violation(&e) => Err(RepoError::DuplicateProviderId(
                update.provider_task_id.clone().unwrap_or_default(),
            )),
            Err(e) => Err(self.writer.failed(e)),
        }
    }

    async fn move_provider(&self, mv: &ProviderMove<'_>) -> Result<Vec<Task>, RepoError> {
        let mut q: QueryBuilder<Sqlite> = super::update_sql::provider_move(mv);
        match q.build().fetch_all(&mut *self.writer.conn().await?).await {
            Ok(rows) => tasks_from_rows(&rows),
            Err(e) => Err(self.writer.failed(e)),
        }
    }

    async fn set_provider_task_id(
        &self,
        id: &TaskId,
        provider_task_id: &str,
        now: i64,
    ) -> Result<bool, RepoError> {
        let result = sqlx::query(
            "UPDATE tasks SET provider_task_id = ?, updated_at = ?
             WHERE id = ? AND provider_task_id IS NULL",
        )
        .bind(provider_task_id)
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *self.writer.conn().await?)
        .await;
        match result {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(e) if is_unique_violation(&e) => {
                Err(RepoError::DuplicateProviderId(provider_task_id.to_owned()))
            }
            Err(e) => Err(self.writer.failed(e)),
        }
    }

    async fn note_callback(&self, id: &TaskId, now: i64) -> Result<Option<Task>, RepoError> {
        let row = sqlx::query(
            "UPDATE tasks SET callback_at = ?, run_at = MIN(run_at, ?), updated_at = ?
             WHERE id = ? AND state NOT IN ('succeeded', 'failed', 'canceled', 'expired')
             RETURNING *",
        )
        .bind(now)
        .bind(now)
        .bind(now)
        .bind(id.as_str())
        .fetch_optional(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn ping(&self) -> Result<(), RepoError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe_write(&self, headroom_bytes: u32) -> Result<(), RepoError> {
        self.writer.probe(headroom_bytes).await
    }

    async fn count_in_flight(&self, provider: &str) -> Result<usize, RepoError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks
             WHERE provider = ? AND state IN ('submitting', 'submitted', 'running')",
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
        let done = sqlx::query("UPDATE tasks SET lease_until = ? WHERE id = ? AND lease_owner = ?")
            .bind(until)
            .bind(id.as_str())
            .bind(worker)
            .execute(&mut *self.writer.conn().await?)
            .await
            .map_err(|e| self.writer.failed(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self, worker: &str) -> Result<u64, RepoError> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_owner = NULL, lease_until = NULL
             WHERE lease_owner = ? AND state <> 'submitting'",
        )
        .bind(worker)
        .execute(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        Ok(done.rows_affected())
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, RepoError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM tasks WHERE 1 = 1");
        if !filter.states.is_empty() {
            q.push(" AND state IN (");
            let mut states = q.separated(", ");
            for state in &filter.states {
                states.push_bind(state.as_str());
            }
            q.push(")");
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
        q.push(" ORDER BY id DESC LIMIT +")
            .push_bind(i64::try_from(filter.limit).unwrap_or(i64::MAX));
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
                       AND provider = (SELECT provider FROM tasks WHERE id = ?)))
             WHERE id = ?",
        )
        .bind(id.as_str())
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(position.and_then(|p| u64::try_from(p).ok()))
    }
}
