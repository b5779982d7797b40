//! The background engine: the dispatcher submits queued tasks to the provider each task
//! names, the reconciler asks asynchronous providers about tasks whose answer is due (a
//! callback arrived, or it is overdue), and ingest copies results into the bucket, whether
//! downloaded or handed over inline by a synchronous provider. All of them claim work from
//! the database under a lease and change state only through guarded updates.

pub mod circuit;
mod dispatch;
mod ingest;
mod inline;
mod inputs;
pub mod limits;
mod reconcile;
mod registry;

pub use registry::{ProviderRegistry, Registered};

pub use inputs::InputRoute;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::domain::image::ImageLimits;
use crate::domain::task::transition;
use crate::domain::{Event, TaskId, TaskState};
use crate::events::EventBus;
use crate::net::Fetcher;
use crate::providers::Delivery;
use crate::providers::kie::{CostUnit, Record};
use crate::status::{StatusBoard, task_record};
use crate::storage::keys;
use crate::storage::{BlobStore, NewTask, RepoError, Task, TaskRepo, TaskUpdate};
use limits::Pause;
use registry::Pool;

/// Knobs the engine runs with, derived from configuration.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub worker_id: String,
    /// How long a claim lasts without a heartbeat; a running job renews it every third.
    pub lease: Duration,
    /// Concurrent status queries (the reconciler) and settlements of interrupted creates.
    /// Each provider's own call slots are set when it is registered.
    pub dispatch_concurrency: usize,
    pub ingest_concurrency: usize,
    pub max_attempts: u32,
    pub task_deadline: Duration,
    pub tick: Duration,
    pub max_result_bytes: u64,
    pub image_limits: ImageLimits,
    /// `{base}/{taskId}?token=…` is the callback URL registered per task.
    pub callback_base: Url,
    /// Take the outcome from the provider's query API rather than the callback body.
    pub verify_callbacks: bool,
    /// First look at a submitted task when no callback has come.
    pub first_poll: Duration,
    /// How input images reach the provider.
    pub input_route: InputRoute,
    /// How long a create with no answer (timeout after sending) waits for a callback
    /// before it is settled.
    pub unconfirmed_window: Duration,
    /// Settle an unconfirmed create by submitting again (may bill twice) instead of failing.
    pub resubmit_unconfirmed: bool,
    /// How long a 402 (no credits) pauses submission.
    pub credits_pause: Duration,
    /// "No such task" answers in a row after which a task fails `provider_task_missing`.
    pub missing_task_answers: u32,
    /// How long in-flight jobs may take to finish at shutdown.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("the callback names provider task {given}, but this task is {known}")]
    ProviderIdMismatch { given: String, known: String },
    #[error("the callback body has no data object")]
    MalformedCallback,
    #[error("task {0} not found")]
    NotFound(TaskId),
    #[error("task {id} is {state}; {action} is not possible")]
    Conflict {
        id: TaskId,
        state: TaskState,
        action: &'static str,
    },
}

/// What a claimed task needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    Submit,
    /// Claimed from `submitting` with a lapsed lease: its dispatcher died mid-call.
    SettleInterrupted,
    Reconcile,
    Ingest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Dispatch,
    Reconcile,
    Ingest,
}

pub struct Engine {
    repo: Arc<dyn TaskRepo>,
    blobs: BlobStore,
    /// Providers by the name tasks store; each has its own call slots.
    providers: ProviderRegistry,
    fetcher: Fetcher,
    board: Arc<StatusBoard>,
    events: Arc<EventBus>,
    settings: EngineSettings,
    reconcile_slots: Pool,
    ingest_slots: Pool,
    dispatch_wake: Notify,
    reconcile_wake: Notify,
    ingest_wake: Notify,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn after(now: i64, delay: Duration) -> i64 {
    now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
}

/// A fresh callback token (shown once, in the callback URL) and the hash that is stored.
pub fn new_callback_token() -> (String, String) {
    let bytes: [u8; 32] = rand::rng().random();
    let token = hex::encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time check of a presented token against the stored hash.
pub fn token_matches(presented: &str, stored_hash: &str) -> bool {
    use subtle::ConstantTimeEq;
    let presented = hash_token(presented);
    // Both are 64 hex characters when a token was issued; a length mismatch (no token
    // issued yet) fails without comparing a prefix.
    presented.len() == stored_hash.len()
        && bool::from(presented.as_bytes().ct_eq(stored_hash.as_bytes()))
}

/// Capped exponential backoff with ±20 % jitter; a provider's `Retry-After` is a floor.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let base_ms = 2_000u64
        .saturating_mul(1u64 << attempt.min(16))
        .min(300_000);
    let jitter = rand::rng().random_range(0.8..1.2);
    let delay = Duration::from_millis((base_ms as f64 * jitter) as u64);
    retry_after.map_or(delay, |floor| delay.max(floor))
}

impl Engine {
    pub fn new(
        repo: Arc<dyn TaskRepo>,
        blobs: BlobStore,
        providers: ProviderRegistry,
        fetcher: Fetcher,
        board: Arc<StatusBoard>,
        events: Arc<EventBus>,
        settings: EngineSettings,
    ) -> Self {
        Self {
            events,
            reconcile_slots: Pool::new(settings.dispatch_concurrency),
            ingest_slots: Pool::new(settings.ingest_concurrency),
            repo,
            blobs,
            providers,
            fetcher,
            board,
            settings,
            dispatch_wake: Notify::new(),
            reconcile_wake: Notify::new(),
            ingest_wake: Notify::new(),
        }
    }

    /// Names of the providers tasks may name, in registration order.
    pub fn provider_names(&self) -> Vec<&'static str> {
        self.providers.names()
    }

    pub fn has_provider(&self, name: &str) -> bool {
        self.providers.get(name).is_some()
    }

    /// How results of `task` come back, from its provider (`Later` for an unknown one: the
    /// cautious reading, since it never resubmits).
    fn delivery_of(&self, task: &Task) -> Delivery {
        self.providers
            .get(&task.provider)
            .map_or(Delivery::Later, |p| p.provider().delivery())
    }

    /// Why submission to `provider` is paused right now, if it is.
    pub fn provider_pause(&self, provider: &str) -> Option<Pause> {
        self.providers.get(provider).and_then(|p| p.gate().paused())
    }

    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// Cancels a task that has not finished. Queued tasks are never submitted; for tasks
    /// already at the provider, a late result is discarded (ingest refuses a canceled task).
    pub async fn cancel(&self, id: &TaskId) -> Result<Task, EngineError> {
        // A claim may move the task between our read and our write: try a few times.
        for _ in 0..5 {
            let task = self
                .repo
                .get(id)
                .await?
                .ok_or_else(|| EngineError::NotFound(id.clone()))?;
            if task.state.is_terminal() {
                return Err(EngineError::Conflict {
                    id: id.clone(),
                    state: task.state,
                    action: "cancel",
                });
            }
            let update = TaskUpdate {
                error: Some(Some((
                    "canceled".to_owned(),
                    "canceled by the client".to_owned(),
                ))),
                ..TaskUpdate::default()
            };
            if let Some(canceled) = self.apply(&task, Event::Cancel, false, update).await? {
                return Ok(canceled);
            }
        }
        let task = self
            .repo
            .get(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(id.clone()))?;
        Err(EngineError::Conflict {
            id: id.clone(),
            state: task.state,
            action: "cancel",
        })
    }

    /// Tries a failed or expired task again as a new task with the same inputs (a
    /// finished task never changes state again); returns the new task.
    pub async fn retry(&self, id: &TaskId) -> Result<Task, EngineError> {
        let task = self
            .repo
            .get(id)
            .await?
            .ok_or_else(|| EngineError::NotFound(id.clone()))?;
        if !matches!(task.state, TaskState::Failed | TaskState::Expired) {
            return Err(EngineError::Conflict {
                id: id.clone(),
                state: task.state,
                action: "retry",
            });
        }
        let new = NewTask {
            id: TaskId::new(),
            provider: task.provider.clone(),
            model: task.model.clone(),
            prompt: task.prompt.clone(),
            source: task.source.clone(),
            image_url: task.image_url.clone(),
            input_urls: task.input_urls.clone(),
            aspect_ratio: task.aspect_ratio.clone(),
            output_format: task.output_format.clone(),
            priority: task.priority,
            batch_id: task.batch_id.clone(),
            owner: task.owner.clone(),
            callback_token_hash: String::new(),
            created_at: now_ms(),
            retry_of: Some(task.id.clone()),
            webhook_url: task.webhook_url.clone(),
        };
        let mut stored = self.enqueue(std::slice::from_ref(&new)).await?;
        tracing::info!(task_id = %new.id, retry_of = %task.id, "task retried as a new task");
        stored
            .pop()
            .ok_or_else(|| EngineError::NotFound(new.id.clone()))
    }

    /// Queues new tasks (one transaction) and wakes the dispatcher.
    pub async fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Task>, RepoError> {
        self.repo.insert(tasks).await?;
        self.queued(tasks).await
    }

    /// Queues a batch and its tasks in one transaction, like [`Engine::enqueue`].
    pub async fn enqueue_batch(
        &self,
        batch: &crate::storage::Batch,
        tasks: &[NewTask],
    ) -> Result<Vec<Task>, RepoError> {
        self.repo.insert_batch(batch, tasks).await?;
        self.queued(tasks).await
    }

    /// After an insert: publish, wake the dispatcher, write the archive records.
    async fn queued(&self, tasks: &[NewTask]) -> Result<Vec<Task>, RepoError> {
        let mut stored = Vec::with_capacity(tasks.len());
        for new in tasks {
            if let Some(task) = self.repo.get(&new.id).await? {
                self.board.update(&task);
                self.events.publish(&task);
                stored.push(task);
            }
        }
        self.dispatch_wake.notify_one();
        // The archive records are written off the request path.
        let blobs = self.blobs.clone();
        let records: Vec<Task> = stored.clone();
        tokio::spawn(async move {
            for task in &records {
                write_record(&blobs, task).await;
            }
        });
        Ok(stored)
    }

    /// Applies `event` to `task` if the row is still in `task.state` (and leased to this
    /// worker when `leased`). Publishes the change; `None` means another actor moved it.
    async fn apply(
        &self,
        task: &Task,
        event: Event,
        leased: bool,
        mut update: TaskUpdate,
    ) -> Result<Option<Task>, RepoError> {
        let next = match transition(task.state, event) {
            Ok(next) => next,
            Err(e) => {
                tracing::debug!(task_id = %task.id, error = %e, "transition does not apply");
                return Ok(None);
            }
        };
        update.state = Some(next);
        if next.is_terminal() {
            update.release_lease = true;
            update.completed_at.get_or_insert(now_ms());
        }
        let lease = leased.then_some(self.settings.worker_id.as_str());
        let changed = self
            .repo
            .update(&task.id, task.state, lease, &update, now_ms())
            .await?;
        match &changed {
            Some(after) => {
                tracing::info!(
                    task_id = %after.id,
                    from = %task.state,
                    to = %after.state,
                    event = ?event,
                    "task state changed"
                );
                self.published(after).await;
            }
            None => tracing::info!(
                task_id = %task.id,
                from = %task.state,
                event = ?event,
                "task moved by another actor; dropping this update"
            ),
        }
        Ok(changed)
    }

    /// Updates a task without a state change (rescheduling, releasing a lease).
    async fn touch(&self, task: &Task, update: TaskUpdate) -> Result<Option<Task>, RepoError> {
        let changed = self
            .repo
            .update(
                &task.id,
                task.state,
                Some(&self.settings.worker_id),
                &update,
                now_ms(),
            )
            .await?;
        if let Some(after) = &changed {
            self.board.update(after);
        }
        Ok(changed)
    }

    /// Every state change refreshes the status answer and rewrites the bucket record.
    async fn published(&self, task: &Task) {
        self.board.update(task);
        self.events.publish(task);
        write_record(&self.blobs, task).await;
    }

    /// Handles an authenticated callback: learns the provider id if it is new, makes the
    /// task due for the reconciler now, and, when callbacks are trusted, applies the body.
    pub async fn accept_callback(
        &self,
        task: &Task,
        body: &Value,
        trust_body: bool,
    ) -> Result<(), EngineError> {
        let data = body
            .get("data")
            .filter(|d| d.is_object())
            .ok_or(EngineError::MalformedCallback)?;
        let record = Record::parse(data, CostUnit::Seconds);
        let now = now_ms();
        if let Some(given) = &record.task_id {
            match &task.provider_task_id {
                Some(known) if known != given => {
                    return Err(EngineError::ProviderIdMismatch {
                        given: given.clone(),
                        known: known.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    self.repo.set_provider_task_id(&task.id, given, now).await?;
                }
            }
        }
        let Some(noted) = self.repo.note_callback(&task.id, now).await? else {
            tracing::info!(task_id = %task.id, state = %task.state, "callback for a finished task ignored");
            return Ok(());
        };
        tracing::info!(task_id = %noted.id, remote_state = %record.state, "callback received");
        if trust_body && !self.settings.verify_callbacks {
            self.apply_remote(&noted, record.status, false).await?;
        }
        self.reconcile_wake.notify_one();
        Ok(())
    }

    /// Runs the workers until `shutdown`, then waits (bounded) for in-flight jobs.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut loops = JoinSet::new();
        for work in [Work::Dispatch, Work::Reconcile, Work::Ingest] {
            loops.spawn(self.clone().work_loop(work, shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
        let drain = async {
            for provider in self.providers.iter() {
                provider.pool().drain().await;
            }
            self.reconcile_slots.drain().await;
            self.ingest_slots.drain().await;
        };
        if tokio::time::timeout(self.settings.shutdown_grace, drain)
            .await
            .is_err()
        {
            // Hand the work back now rather than when the leases run out. A create that is
            // still in flight keeps its lease: whether it reached the provider is unknown.
            match self.repo.release_leases(&self.settings.worker_id).await {
                Ok(released) => tracing::warn!(
                    released,
                    "shutdown: jobs still running after the grace period; their tasks were released for another worker"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "shutdown: releasing leases failed; they will expire");
                }
            }
        } else {
            tracing::info!("shutdown: in-flight work finished");
        }
    }

    async fn work_loop(self: Arc<Self>, work: Work, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let claimed = match self.clone().step(work).await {
                Ok(mut jobs) => {
                    let n = jobs.len();
                    jobs.detach_all();
                    n
                }
                Err(e) => {
                    let message = e.to_string();
                    if let Some(repeated) = crate::log_throttle::errors().admit(&message) {
                        tracing::error!(work = ?work, error = %message, repeated, "claiming work failed");
                    }
                    0
                }
            };
            if claimed > 0 {
                continue;
            }
            let wake = match work {
                Work::Dispatch => &self.dispatch_wake,
                Work::Reconcile => &self.reconcile_wake,
                Work::Ingest => &self.ingest_wake,
            };
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(self.settings.tick) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Claims as much due work of one kind as there are free slots and starts a job for each.
    /// Queued tasks are claimed per provider, up to that provider's free call slots.
    async fn step(self: Arc<Self>, work: Work) -> Result<JoinSet<()>, RepoError> {
        let mut jobs = JoinSet::new();
        let now = now_ms();
        let worker = self.settings.worker_id.clone();
        let lease_until = after(now, self.settings.lease);
        match work {
            Work::Dispatch => {
                for provider in self.providers.iter() {
                    let mut permits = provider.pool().take_free();
                    // Create slots are reserved here; what the queue does not use goes back.
                    let room = self.dispatch_room(provider, permits.len()).await?;
                    if room == 0 {
                        continue;
                    }
                    permits.truncate(room);
                    let queued = self
                        .repo
                        .claim_queued(provider.name(), now, room, &worker, lease_until)
                        .await?;
                    provider.gate().creates.release(room - queued.len());
                    if queued.is_empty() {
                        provider.gate().circuit.return_probe();
                    }
                    // Unused permits go back when the rest of the vector drops.
                    for (task, permit) in queued.into_iter().zip(permits) {
                        self.clone()
                            .start(&mut jobs, work, task, Job::Submit, Some(permit));
                    }
                }
                // A dispatcher that died mid-call leaves `submitting` with a lapsed lease.
                // Settling it is a database update, not a provider call: no call slot needed.
                let stale = self
                    .repo
                    .claim_due(
                        TaskState::Submitting,
                        now,
                        self.settings.dispatch_concurrency,
                        &worker,
                        lease_until,
                    )
                    .await?;
                for task in stale {
                    self.clone()
                        .start(&mut jobs, work, task, Job::SettleInterrupted, None);
                }
            }
            Work::Reconcile => {
                let mut permits = self.reconcile_slots.take_free();
                // Queries are reserved from every provider that is ever asked (those that
                // report later); each gives back what its tasks did not use.
                let askable: Vec<&Registered> = self
                    .providers
                    .iter()
                    .filter(|p| p.provider().delivery() == Delivery::Later)
                    .collect();
                let room = askable
                    .iter()
                    .map(|p| p.gate().queries.reserve(permits.len()))
                    .min()
                    .unwrap_or(0);
                permits.truncate(room);
                let mut claimed: Vec<Task> = Vec::new();
                for state in [TaskState::Submitted, TaskState::Running] {
                    let left = room - claimed.len();
                    if left == 0 {
                        break;
                    }
                    claimed.extend(
                        self.repo
                            .claim_due(state, now, left, &worker, lease_until)
                            .await?,
                    );
                }
                for provider in &askable {
                    let used = claimed
                        .iter()
                        .filter(|t| t.provider == provider.name())
                        .count();
                    provider.gate().queries.release(room.saturating_sub(used));
                }
                for task in claimed {
                    let permit = permits.pop();
                    self.clone()
                        .start(&mut jobs, work, task, Job::Reconcile, permit);
                }
            }
            Work::Ingest => {
                let mut permits = self.ingest_slots.take_free();
                if !permits.is_empty() {
                    let due = self
                        .repo
                        .claim_due(
                            TaskState::Ingesting,
                            now,
                            permits.len(),
                            &worker,
                            lease_until,
                        )
                        .await?;
                    for task in due {
                        let permit = permits.pop();
                        self.clone()
                            .start(&mut jobs, work, task, Job::Ingest, permit);
                    }
                }
            }
        }
        Ok(jobs)
    }

    /// Runs one job in its own task (a panic stays there), holding `permit` until it ends.
    fn start(
        self: Arc<Self>,
        jobs: &mut JoinSet<()>,
        work: Work,
        task: Task,
        job: Job,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        jobs.spawn(async move {
            let id = task.id.clone();
            let job_future = async {
                match job {
                    Job::Submit => self.submit(task).await,
                    Job::SettleInterrupted => self.settle_interrupted(&task).await,
                    Job::Reconcile => self.reconcile(task).await,
                    // Inline results live only in the memory of the dispatcher that received
                    // them; a task found here without one has lost them.
                    Job::Ingest if self.delivery_of(&task) == Delivery::Inline => {
                        self.inline_results_lost(&task).await
                    }
                    Job::Ingest => self.ingest(task).await,
                }
            };
            // The heartbeat keeps the lease alive while the job runs (a slow provider, a
            // minute-long generation, a large download), so no other worker takes the task.
            let result = tokio::select! {
                result = job_future => result,
                () = self.heartbeat(&id) => Ok(()),
            };
            if let Err(e) = result {
                let message = e.to_string();
                if let Some(repeated) = crate::log_throttle::errors().admit(&message) {
                    tracing::error!(task_id = %id, work = ?work, error = %message, repeated, "job failed; the lease will expire and it will run again");
                }
            }
            drop(permit);
            let wake = match work {
                Work::Dispatch => &self.dispatch_wake,
                Work::Reconcile => &self.reconcile_wake,
                Work::Ingest => &self.ingest_wake,
            };
            wake.notify_one();
        });
    }

    /// Extends this worker's lease on `id` every third of the lease; never returns.
    async fn heartbeat(&self, id: &TaskId) {
        let period = self.settings.lease / 3;
        loop {
            tokio::time::sleep(period).await;
            let until = after(now_ms(), self.settings.lease);
            match self
                .repo
                .extend_lease(id, &self.settings.worker_id, until)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(task_id = %id, "lease lost while working; the result of this job will be refused");
                }
                Err(e) => tracing::warn!(task_id = %id, error = %e, "extending the lease failed"),
            }
        }
    }

    /// Runs every kind of due work until none is left, waiting for each job. For tests and
    /// tools that drive the engine without its background loops.
    pub async fn run_pending(self: &Arc<Self>) -> Result<usize, RepoError> {
        let mut total = 0;
        loop {
            let mut ran = 0;
            for work in [Work::Dispatch, Work::Reconcile, Work::Ingest] {
                let mut jobs = self.clone().step(work).await?;
                ran += jobs.len();
                while jobs.join_next().await.is_some() {}
            }
            if ran == 0 {
                return Ok(total);
            }
            total += ran;
        }
    }

    fn callback_url(&self, id: &TaskId, token: &str) -> String {
        format!(
            "{}/{id}?token={token}",
            self.settings.callback_base.as_str().trim_end_matches('/')
        )
    }
}

async fn write_record(blobs: &BlobStore, task: &Task) {
    let spec = keys::task_record(&task.id);
    if let Err(e) = blobs.put(&spec, task_record(task)).await {
        // The database is the source of truth; the next change rewrites the record.
        tracing::warn!(task_id = %task.id, key = %spec.key, error = %e, "writing the task record failed");
    }
}
