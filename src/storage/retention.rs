//! The retention repository: what `darkroom gc`, the background sweep
//! (`DARKROOM_RETENTION_DAYS`) and `DELETE /api/tasks/{id}` read and delete. The SQL is
//! written once for both backends (as in `stats.rs`); the two differ only in how a list
//! column reads as text ([`Dialect`]).
//!
//! A task is *expired* at a cutoff when it is final, finished (or, without a completion
//! time, created) before the cutoff, and its webhook is not waiting to be delivered. Every
//! other task is *kept*; [`RetentionRepo::kept_task_inputs`] reads exactly the complement
//! of [`RetentionRepo::expired_tasks`], so an object a kept task names is never taken for
//! an expired one's.

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row, Type,
};

use super::RepoError;
use crate::domain::{TaskId, TaskState};

/// A task that may be deleted, with what it names in the bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpiredTask {
    pub id: TaskId,
    pub provider: String,
    pub provider_task_id: Option<String>,
    pub batch_id: Option<String>,
    pub created_at: i64,
    pub result_keys: Vec<String>,
    /// The upload key or URL the client named as the source.
    pub source: String,
    pub input_urls: Vec<String>,
}

/// What a kept task names as its inputs.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskInputs {
    pub id: TaskId,
    pub created_at: i64,
    pub source: String,
    pub input_urls: Vec<String>,
}

/// An upload recorded in the `uploads` table.
#[derive(Clone, Debug, PartialEq)]
pub struct UploadRow {
    pub key: String,
    pub created_at: i64,
}

/// The rows one deletion removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeletedRows {
    pub tasks: Vec<TaskId>,
    /// Batches left without any task.
    pub batches: Vec<String>,
}

/// Which tasks [`RetentionRepo::objects_in_use`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Users {
    /// Every task.
    Any,
    /// Unfinished tasks only.
    Unfinished,
}

#[async_trait]
pub trait RetentionRepo: Send + Sync + 'static {
    /// Tasks expired at `cutoff` (see the module), by id, after `after`; at most `limit`.
    async fn expired_tasks(
        &self,
        cutoff: i64,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<ExpiredTask>, RepoError>;

    /// The inputs of every task kept at `cutoff` (not expired) and created at or after
    /// `since`, by creation time then id, after `after`; at most `limit`.
    async fn kept_task_inputs(
        &self,
        cutoff: i64,
        since: i64,
        after: Option<&(i64, TaskId)>,
        limit: usize,
    ) -> Result<Vec<TaskInputs>, RepoError>;

    /// Deletes, in one transaction, those of `ids` that are final (an unfinished one is
    /// left as it is), their webhook deliveries, and the batches this leaves without tasks.
    async fn delete_final_tasks(&self, ids: &[TaskId]) -> Result<DeletedRows, RepoError>;

    /// Uploads recorded before `cutoff`, by key, after `after`; at most `limit`.
    async fn uploads_before(
        &self,
        cutoff: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UploadRow>, RepoError>;

    /// Forgets these uploads' rows; how many there were.
    async fn delete_uploads(&self, keys: &[String]) -> Result<u64, RepoError>;

    /// Which of `keys` (object keys) a task other than `except` names as its source or in
    /// its input URLs. Only tasks created at or after `since` are read (a task can only
    /// name an object that existed when it was made); for a recorded upload, its upload
    /// time is used instead.
    async fn objects_in_use(
        &self,
        keys: &[String],
        since: i64,
        except: &TaskId,
        users: Users,
    ) -> Result<Vec<String>, RepoError>;
}

/// What differs between the backends' SQL here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A list column (JSON text on SQLite, `TEXT[]` on PostgreSQL) as JSON text.
    fn json_list(self, column: &str) -> String {
        match self {
            Self::Sqlite => column.to_owned(),
            Self::Postgres => format!("array_to_json({column})::text"),
        }
    }

    /// `position of the next bound text in the list column > 0`, up to the bind.
    fn list_contains(self, column: &str) -> String {
        match self {
            Self::Sqlite => format!("instr({column}, "),
            Self::Postgres => format!("strpos(array_to_string({column}, ' '), "),
        }
    }
}

/// Clocks of instances sharing a database may differ a little: a task's creation time is
/// compared with an upload's only after this allowance.
const CLOCK_ALLOWANCE_MS: i64 = 5 * 60 * 1000;

/// `('succeeded', 'failed', 'canceled', 'expired')`: the final states, from the domain.
fn final_states() -> String {
    let names: Vec<String> = TaskState::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("({})", names.join(", "))
}

/// The expiry predicate on `tasks` at `cutoff` (see the module).
fn push_expired<DB>(q: &mut QueryBuilder<DB>, cutoff: i64)
where
    DB: Database,
    i64: for<'t> Encode<'t, DB> + Type<DB>,
{
    q.push("(tasks.state IN ")
        .push(final_states())
        .push(" AND COALESCE(tasks.completed_at, tasks.created_at) < ")
        .push_bind(cutoff)
        .push(
            " AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                  WHERE d.task_id = tasks.id AND d.state = 'pending'))",
        );
}

fn push_ids<DB>(q: &mut QueryBuilder<DB>, ids: &[String])
where
    DB: Database,
    String: for<'t> Encode<'t, DB> + Type<DB>,
{
    q.push("(");
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(id.clone());
    }
    q.push(")");
}

fn task_id(raw: String) -> Result<TaskId, RepoError> {
    TaskId::parse(&raw).ok_or_else(|| RepoError::Corrupt {
        id: raw.clone(),
        message: "bad id".to_owned(),
    })
}

fn list(id: &str, json: &str) -> Result<Vec<String>, RepoError> {
    serde_json::from_str(json).map_err(|e| RepoError::Corrupt {
        id: id.to_owned(),
        message: format!("a list column is not a JSON list: {e}"),
    })
}

fn limit_of(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

async fn expired_tasks<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    cutoff: i64,
    after: Option<&TaskId>,
    limit: usize,
) -> Result<Vec<ExpiredTask>, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    Option<String>: for<'r> Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT id, provider, provider_task_id, batch_id, created_at, source, {} AS results, {} AS inputs
         FROM tasks WHERE ",
        dialect.json_list("result_keys"),
        dialect.json_list("input_urls"),
    ));
    push_expired(&mut q, cutoff);
    if let Some(after) = after {
        q.push(" AND id > ").push_bind(after.as_str().to_owned());
    }
    q.push(" ORDER BY id LIMIT ").push_bind(limit_of(limit));
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            Ok(ExpiredTask {
                result_keys: list(&id, &row.try_get::<String, _>("results")?)?,
                input_urls: list(&id, &row.try_get::<String, _>("inputs")?)?,
                provider: row.try_get("provider")?,
                provider_task_id: row.try_get("provider_task_id")?,
                batch_id: row.try_get("batch_id")?,
                created_at: row.try_get("created_at")?,
                source: row.try_get("source")?,
                id: task_id(id)?,
            })
        })
        .collect()
}

async fn kept_task_inputs<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    cutoff: i64,
    since: i64,
    after: Option<&(i64, TaskId)>,
    limit: usize,
) -> Result<Vec<TaskInputs>, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let mut q = QueryBuilder::<DB>::new(format!(
        "SELECT id, created_at, source, {} AS inputs FROM tasks WHERE created_at >= ",
        dialect.json_list("input_urls"),
    ));
    q.push_bind(since).push(" AND NOT ");
    push_expired(&mut q, cutoff);
    if let Some((created_at, id)) = after {
        // (created_at, id) > after
        q.push(" AND (created_at > ")
            .push_bind(*created_at)
            .push(" OR (created_at = ")
            .push_bind(*created_at)
            .push(" AND id > ")
            .push_bind(id.as_str().to_owned())
            .push("))");
    }
    q.push(" ORDER BY created_at, id LIMIT ")
        .push_bind(limit_of(limit));
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            let id: String = row.try_get("id")?;
            Ok(TaskInputs {
                input_urls: list(&id, &row.try_get::<String, _>("inputs")?)?,
                created_at: row.try_get("created_at")?,
                source: row.try_get("source")?,
                id: task_id(id)?,
            })
        })
        .collect()
}

/// [`RetentionRepo::delete_final_tasks`] on `pool` (the SQLite writer's, or PostgreSQL's).
async fn delete_final_tasks<DB>(
    conn: &mut DB::Connection,
    ids: &[TaskId],
) -> Result<DeletedRows, sqlx::Error>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    Option<String>: for<'r> Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    if ids.is_empty() {
        return Ok(DeletedRows::default());
    }
    let ids: Vec<String> = ids.iter().map(|id| id.as_str().to_owned()).collect();
    let mut tx = conn.begin().await?;
    // The deliveries first: they point at their tasks.
    let mut q = QueryBuilder::<DB>::new(
        "DELETE FROM webhook_deliveries WHERE task_id IN (SELECT id FROM tasks WHERE id IN ",
    );
    push_ids(&mut q, &ids);
    q.push(" AND state IN ").push(final_states()).push(")");
    q.build().execute(&mut *tx).await?;
    let mut q = QueryBuilder::<DB>::new("DELETE FROM tasks WHERE id IN ");
    push_ids(&mut q, &ids);
    q.push(" AND state IN ")
        .push(final_states())
        .push(" RETURNING id, batch_id");
    let rows = q.build().fetch_all(&mut *tx).await?;
    let mut deleted = DeletedRows::default();
    let mut batches: Vec<String> = Vec::new();
    for row in &rows {
        let id: String = row.try_get("id")?;
        if let Some(task) = TaskId::parse(&id) {
            deleted.tasks.push(task);
        }
        if let Some(batch) = row.try_get::<Option<String>, _>("batch_id")?
            && !batches.contains(&batch)
        {
            batches.push(batch);
        }
    }
    if !batches.is_empty() {
        let mut q = QueryBuilder::<DB>::new("DELETE FROM batches WHERE id IN ");
        push_ids(&mut q, &batches);
        q.push(
            " AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.batch_id = batches.id) RETURNING id",
        );
        for row in q.build().fetch_all(&mut *tx).await? {
            deleted.batches.push(row.try_get("id")?);
        }
    }
    tx.commit().await?;
    Ok(deleted)
}

async fn uploads_before<DB>(
    pool: &Pool<DB>,
    cutoff: i64,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<UploadRow>, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let mut q = QueryBuilder::<DB>::new("SELECT key, created_at FROM uploads WHERE created_at < ");
    q.push_bind(cutoff);
    if let Some(after) = after {
        q.push(" AND key > ").push_bind(after.to_owned());
    }
    q.push(" ORDER BY key LIMIT ").push_bind(limit_of(limit));
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|row| {
            Ok(UploadRow {
                key: row.try_get("key")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .collect()
}

/// [`RetentionRepo::delete_uploads`] on `pool` (the SQLite writer's, or PostgreSQL's).
async fn delete_uploads<DB>(conn: &mut DB::Connection, keys: &[String]) -> Result<u64, sqlx::Error>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    if keys.is_empty() {
        return Ok(0);
    }
    let mut q = QueryBuilder::<DB>::new("DELETE FROM uploads WHERE key IN ");
    push_ids(&mut q, keys);
    q.push(" RETURNING key");
    Ok(q.build().fetch_all(&mut *conn).await?.len() as u64)
}

async fn objects_in_use<DB>(
    pool: &Pool<DB>,
    dialect: Dialect,
    keys: &[String],
    since: i64,
    except: &TaskId,
    users: Users,
) -> Result<Vec<String>, RepoError>
where
    DB: Database,
    <DB as Database>::Arguments: Default + IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    String: for<'t> Encode<'t, DB> + Type<DB> + for<'r> Decode<'r, DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
{
    let mut used = Vec::new();
    for key in keys {
        let mut q = QueryBuilder::<DB>::new("SELECT id FROM tasks WHERE id <> ");
        q.push_bind(except.as_str().to_owned())
            .push(" AND created_at >= COALESCE((SELECT created_at FROM uploads WHERE key = ")
            .push_bind(key.clone())
            .push("), ")
            .push_bind(since)
            .push(") - ")
            .push_bind(CLOCK_ALLOWANCE_MS)
            .push(" AND (source = ")
            .push_bind(key.clone())
            .push(" OR ")
            .push(dialect.list_contains("input_urls"))
            .push_bind(key.clone())
            .push(") > 0)");
        if users == Users::Unfinished {
            q.push(" AND state NOT IN ").push(final_states());
        }
        q.push(" LIMIT 1");
        if q.build().fetch_optional(pool).await?.is_some() {
            used.push(key.clone());
        }
    }
    Ok(used)
}

#[async_trait]
impl RetentionRepo for super::sqlite::SqliteRepo {
    async fn expired_tasks(
        &self,
        cutoff: i64,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<ExpiredTask>, RepoError> {
        expired_tasks(&self.pool, Dialect::Sqlite, cutoff, after, limit).await
    }

    async fn kept_task_inputs(
        &self,
        cutoff: i64,
        since: i64,
        after: Option<&(i64, TaskId)>,
        limit: usize,
    ) -> Result<Vec<TaskInputs>, RepoError> {
        kept_task_inputs(&self.pool, Dialect::Sqlite, cutoff, since, after, limit).await
    }

    async fn delete_final_tasks(&self, ids: &[TaskId]) -> Result<DeletedRows, RepoError> {
        delete_final_tasks::<sqlx::Sqlite>(&mut *self.writer.conn().await?, ids)
            .await
            .map_err(|e| self.writer.failed(e))
    }

    async fn uploads_before(
        &self,
        cutoff: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UploadRow>, RepoError> {
        uploads_before(&self.pool, cutoff, after, limit).await
    }

    async fn delete_uploads(&self, keys: &[String]) -> Result<u64, RepoError> {
        delete_uploads::<sqlx::Sqlite>(&mut *self.writer.conn().await?, keys)
            .await
            .map_err(|e| self.writer.failed(e))
    }

    async fn objects_in_use(
        &self,
        keys: &[String],
        since: i64,
        except: &TaskId,
        users: Users,
    ) -> Result<Vec<String>, RepoError> {
        objects_in_use(&self.pool, Dialect::Sqlite, keys, since, except, users).await
    }
}

#[async_trait]
impl RetentionRepo for super::postgres::PgRepo {
    async fn expired_tasks(
        &self,
        cutoff: i64,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<ExpiredTask>, RepoError> {
        expired_tasks(&self.pool, Dialect::Postgres, cutoff, after, limit).await
    }

    async fn kept_task_inputs(
        &self,
        cutoff: i64,
        since: i64,
        after: Option<&(i64, TaskId)>,
        limit: usize,
    ) -> Result<Vec<TaskInputs>, RepoError> {
        kept_task_inputs(&self.pool, Dialect::Postgres, cutoff, since, after, limit).await
    }

    async fn delete_final_tasks(&self, ids: &[TaskId]) -> Result<DeletedRows, RepoError> {
        Ok(delete_final_tasks::<sqlx::Postgres>(&mut *self.pool.acquire().await?, ids).await?)
    }

    async fn uploads_before(
        &self,
        cutoff: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UploadRow>, RepoError> {
        uploads_before(&self.pool, cutoff, after, limit).await
    }

    async fn delete_uploads(&self, keys: &[String]) -> Result<u64, RepoError> {
        Ok(delete_uploads::<sqlx::Postgres>(&mut *self.pool.acquire().await?, keys).await?)
    }

    async fn objects_in_use(
        &self,
        keys: &[String],
        since: i64,
        except: &TaskId,
        users: Users,
    ) -> Result<Vec<String>, RepoError> {
        objects_in_use(&self.pool, Dialect::Postgres, keys, since, except, users).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_states_are_the_domains() {
        assert_eq!(
            final_states(),
            "('succeeded', 'failed', 'canceled', 'expired')"
        );
    }
}
