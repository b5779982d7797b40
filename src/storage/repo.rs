//! The task repository: tasks and the queue (claims, leases, guarded updates), with guarded
//! (compare-and-set) updates as the only way to change a task's state. Batches, webhook
//! deliveries and access live in traits of their own beside it; `storage::contract` holds
//! the suite every implementation must pass.

use async_trait::async_trait;

pub use crate::domain::task_row::{NewTask, Task};
use crate::domain::{TaskId, TaskState};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt task row {id}: {message}")]
    Corrupt { id: String, message: String },
    #[error("a task with provider id {0} already exists")]
    DuplicateProviderId(String),
}

impl RepoError {
    /// The storage fault behind this error (disk full, read-only), if that is what it is.
    pub fn fault(&self) -> Option<super::StorageFault> {
        match self {
            Self::Database(e) => super::StorageFault::of_sqlx(e),
            Self::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                super::StorageFault::of_sqlx(e)
            }
            _ => None,
        }
    }
}

/// Which tasks a listing returns, newest first.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub states: Vec<TaskState>,
    pub batch_id: Option<String>,
    /// `Some(None)` lists tasks without an owner.
    pub owner: Option<Option<String>>,
    /// Only tasks older than this id (the cursor).
    pub before: Option<TaskId>,
    pub limit: usize,
}

/// The columns a guarded update sets; `None` leaves a column as it is.
#[derive(Clone, Debug, Default)]
pub struct TaskUpdate {
    pub state: Option<TaskState>,
    pub run_at: Option<i64>,
    /// Drop the lease (the work is done or handed back).
    pub release_lease: bool,
    pub add_attempt: bool,
    /// The hash of a newly issued callback token.
    pub callback_token_hash: Option<String>,
    pub provider_task_id: Option<String>,
    pub result_source_urls: Option<Vec<String>>,
    pub result_keys: Option<Vec<String>>,
    pub result_urls: Option<Vec<String>>,
    pub credits: Option<i64>,
    pub cost_time_ms: Option<i64>,
    /// `Some(None)` clears the error.
    pub error: Option<Option<(String, String)>>,
    pub submitted_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub missing_answers: Option<u32>,
    /// Keep the task at its provider for good (`fallback = 0`): a create of it may have
    /// reached the provider, so it must never move to another.
    pub pin_provider: bool,
}

/// Tasks moving to another provider (failover): which may move and where to. A task moves
/// only while its create is known not to have been made (no provider id, never submitted,
/// no callback), when its request allowed it, and never to a provider it left.
#[derive(Clone, Debug)]
pub struct ProviderMove<'a> {
    pub from: &'a str,
    pub to: &'a str,
    /// The model the tasks take at `to` (its default).
    pub model: &'a str,
    /// Why they move (`credits`, `credit_floor`, `failing`, `attempts`).
    pub reason: &'a str,
    /// Whether a task whose request said nothing about `fallback` may move.
    pub by_default: bool,
    /// Only this task, `submitting` under this worker's lease; otherwise queued tasks.
    pub held: Option<(&'a TaskId, &'a str)>,
    /// At most this many, highest priority and oldest first.
    pub limit: usize,
    pub now: i64,
}

#[async_trait]
pub trait TaskRepo: Send + Sync + 'static {
    /// Inserts all tasks in one transaction: all are queued or none is.
    async fn insert(&self, tasks: &[NewTask]) -> Result<(), RepoError>;

    async fn get(&self, id: &TaskId) -> Result<Option<Task>, RepoError>;

    /// Writes `task` as it is (every column), unless a task with its id, or its provider
    /// id at its provider, is already stored: then nothing changes and the answer is false
    /// (`INSERT … ON CONFLICT DO NOTHING`). `darkroom reindex` restores rows with it.
    async fn restore(&self, task: &Task) -> Result<bool, RepoError>;

    async fn get_by_provider_id(
        &self,
        provider: &str,
        provider_task_id: &str,
    ) -> Result<Option<Task>, RepoError>;

    /// Moves up to `limit` due `queued` tasks of `provider` to `submitting` under a lease held
    /// by `worker`, highest priority first, oldest first within a priority. Claims are per
    /// provider so each provider's own concurrency bound decides how many it takes. The
    /// claim clears the task's callback token: the dispatcher arms a fresh one before it
    /// calls the provider, so a claimed task with no token was never sent.
    async fn claim_queued(
        &self,
        provider: &str,
        now: i64,
        limit: usize,
        worker: &str,
        lease_until: i64,
    ) -> Result<Vec<Task>, RepoError>;

    /// Leases up to `limit` due tasks in `state` whose lease is free or has run out,
    /// without changing their state.
    async fn claim_due(
        &self,
        state: TaskState,
        now: i64,
        limit: usize,
        worker: &str,
        lease_until: i64,
    ) -> Result<Vec<Task>, RepoError>;

    /// Applies `update` only if the task is still in `from` (and, with `lease`, still
    /// leased to that worker). `None` means someone else moved it first.
    async fn update(
        &self,
        id: &TaskId,
        from: TaskState,
        lease: Option<&str>,
        update: &TaskUpdate,
        now: i64,
    ) -> Result<Option<Task>, RepoError>;

    /// Records the provider's id learned from a callback, only if none is known yet.
    /// Moves the tasks `mv` allows to its provider, queued and due at once with no attempts
    /// spent there, in one guarded statement; returns them as moved.
    async fn move_provider(&self, mv: &ProviderMove<'_>) -> Result<Vec<Task>, RepoError>;

    async fn set_provider_task_id(
        &self,
        id: &TaskId,
        provider_task_id: &str,
        now: i64,
    ) -> Result<bool, RepoError>;

    /// Notes that a callback arrived and makes the task due now, unless it is terminal.
    async fn note_callback(&self, id: &TaskId, now: i64) -> Result<Option<Task>, RepoError>;

    /// Whether the database answers (for `/readyz`).
    async fn ping(&self) -> Result<(), RepoError>;

    /// Whether the database accepts a write now, with room to spare: a write of
    /// `headroom_bytes` in a transaction that is rolled back (for `/readyz`).
    async fn probe_write(&self, headroom_bytes: u32) -> Result<(), RepoError>;

    /// Tasks of `provider` being created or waiting at the provider.
    async fn count_in_flight(&self, provider: &str) -> Result<usize, RepoError>;

    /// Unfinished tasks (queued, submitting, submitted, running, ingesting) counted by
    /// provider and state, for the metrics; pairs with no task are left out. Reads only
    /// unfinished rows through the `(state, run_at)` index, however many tasks finished.
    async fn count_unfinished(&self) -> Result<Vec<(String, TaskState, u64)>, RepoError>;

    /// Pushes out this worker's lease; false when the lease is no longer this worker's.
    async fn extend_lease(&self, id: &TaskId, worker: &str, until: i64) -> Result<bool, RepoError>;

    /// Drops every lease `worker` holds, except on tasks mid-create (whether those reached
    /// the provider is unknown; their lease runs out and they are settled as unconfirmed).
    async fn release_leases(&self, worker: &str) -> Result<u64, RepoError>;

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, RepoError>;

    /// 1-based place in the queue of a queued task, in claim order.
    async fn queue_position(&self, id: &TaskId) -> Result<Option<u64>, RepoError>;

    /// Woken when tasks may have been queued through another process sharing the database
    /// (PostgreSQL: `LISTEN/NOTIFY`), so the dispatcher need not wait for its next poll.
    /// `None` (the default) when the backend has no such signal: on SQLite one process owns
    /// the file and wakes its dispatcher in memory.
    fn queue_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}

/// Claimed tasks in queue order (RETURNING gives no order guarantee; callers submit in
/// queue order).
pub(super) fn sort_claimed(tasks: &mut [Task]) {
    tasks.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.created_at.cmp(&b.created_at))
    });
}
