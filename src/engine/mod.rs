//! The background engine: the dispatcher submits queued tasks to the provider each task
//! names, the reconciler asks asynchronous providers about tasks whose answer is due (a
//! callback arrived, or it is overdue), and ingest copies results into the bucket, whether
//! downloaded or handed over inline by a synchronous provider; the webhook lane delivers
//! webhooks of final tasks. All of them claim work from the database under a lease, end
//! each try with an outcome (`job.rs`) and change state only through guarded updates.

mod budget;
pub mod circuit;
pub mod credits;
mod dispatch;
pub mod failover;
mod ingest;
mod inline;
mod inputs;
pub mod job;
pub mod limits;
mod observe;
mod reconcile;
mod records;
mod registry;
mod relay;
mod tokens;
mod webhook;
mod worker;

pub use budget::BudgetSettings;
pub use registry::{ProviderRegistry, Registered};

pub use inputs::InputRoute;

pub use crate::clock::{after, now_ms};
pub use tokens::{hash_token, new_callback_token, token_matches};

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;
use url::Url;

use crate::domain::image::ImageLimits;
use crate::domain::task::transition;
use crate::domain::{Event, JobCode, TaskId, TaskState};
use crate::events::EventBus;
use crate::net::Fetcher;
use crate::providers::Delivery;
use crate::providers::inputs::InputLoader;
use crate::status::StatusBoard;
use crate::storage::{BlobStore, NewTask, Repo, RepoError, Task, TaskUpdate};
use crate::telemetry::Metrics;
use crate::webhooks::Deliverer;
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
    /// Probe the image URLs clients gave before a create for a provider that fetches
    /// inputs itself.
    pub check_client_inputs: bool,
    /// How long a 402 (no credits) pauses submission.
    pub credits_pause: Duration,
    /// "No such task" answers in a row after which a task fails `provider_task_missing`.
    pub missing_task_answers: u32,
    /// How long in-flight jobs may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Daily credit budgets and the prices tasks are estimated at.
    pub budget: BudgetSettings,
    /// Which providers queued tasks may move to (off by default).
    pub failover: failover::FailoverPolicy,
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

pub struct Engine {
    repo: Arc<dyn Repo>,
    blobs: BlobStore,
    /// The archive records in the bucket, written behind state changes.
    records: Arc<records::Records>,
    /// Providers by the name tasks store; each has its own call slots.
    providers: ProviderRegistry,
    fetcher: Fetcher,
    /// Looks at client input URLs before a provider that fetches them itself is called.
    inputs: InputLoader,
    board: Arc<StatusBoard>,
    events: Arc<EventBus>,
    settings: EngineSettings,
    reconcile_slots: Pool,
    ingest_slots: Pool,
    /// Makes webhook attempts; without it the webhook lane claims nothing.
    webhooks: Option<Arc<Deliverer>>,
    webhook_slots: Pool,
    dispatch_wake: Notify,
    reconcile_wake: Notify,
    ingest_wake: Notify,
    webhook_wake: Notify,
    /// Held shared from a queue insert until its `queued` events are published, and
    /// exclusively by the dispatcher while it claims queued tasks: a task is never claimed
    /// (and moved on) before its first event is out, so that event says `queued` and comes
    /// first.
    enqueue_gate: tokio::sync::RwLock<()>,
    /// What the engine counts and times (`/metrics`).
    metrics: Arc<Metrics>,
    /// When the dispatcher last looked for `submitting` tasks whose lease lapsed (ms).
    stale_checked_at: std::sync::atomic::AtomicI64,
}

impl Engine {
    pub fn new(
        repo: Arc<dyn Repo>,
        blobs: BlobStore,
        providers: ProviderRegistry,
        fetcher: Fetcher,
        board: Arc<StatusBoard>,
        events: Arc<EventBus>,
        settings: EngineSettings,
    ) -> Self {
        let inputs = InputLoader::new(
            blobs.clone(),
            fetcher.clone(),
            settings.max_result_bytes,
            settings.image_limits,
        );
        Self {
            events,
            inputs,
            reconcile_slots: Pool::new(settings.dispatch_concurrency),
            ingest_slots: Pool::new(settings.ingest_concurrency),
            repo,
            records: Arc::new(records::Records::new(blobs.clone())),
            blobs,
            providers,
            fetcher,
            board,
            settings,
            webhooks: None,
            webhook_slots: Pool::new(webhook::WEBHOOK_CONCURRENCY),
            dispatch_wake: Notify::new(),
            reconcile_wake: Notify::new(),
            ingest_wake: Notify::new(),
            webhook_wake: Notify::new(),
            enqueue_gate: tokio::sync::RwLock::new(()),
            metrics: Arc::new(Metrics::new()),
            stale_checked_at: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Records into `metrics` (the app's) instead of a recorder of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Delivers outbound webhooks with `deliverer`, in the webhook lane.
    pub fn with_webhooks(mut self, deliverer: Arc<Deliverer>) -> Self {
        self.webhooks = Some(deliverer);
        self
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

    /// Why queued tasks of `provider` are held back right now, and until when: a pause
    /// (429, 402, the credit floor), an open circuit (until the next probe), or a full create
    /// window (until a slot frees).
    pub fn provider_hold(&self, provider: &str) -> Option<crate::views::Waiting> {
        let registered = self.providers.get(provider)?;
        let gate = registered.gate();
        let label = circuit::provider_label(provider);
        let in_ms = |left: Duration| {
            now_ms().saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX))
        };
        let (code, message, until) = if let Some(pause) = gate.paused() {
            (
                JobCode::ProviderPaused,
                format!(
                    "{label} {}, so submission is paused; the task waits its turn without spending an attempt ({})",
                    limits::pause_cause(&pause.code),
                    pause.reason
                ),
                pause.until,
            )
        } else if let Some(outage) = gate.circuit.outage() {
            (
                JobCode::ProviderUnreachable,
                circuit::unreachable_sentence(provider, &outage),
                outage.next_probe_ms(),
            )
        } else if let Some(left) = gate.creates.next_free_in() {
            (
                JobCode::RateWindowFull,
                format!(
                    "{label}'s create window is full (darkroom keeps within {label}'s limit); the task goes out as slots free"
                ),
                in_ms(left),
            )
        } else {
            return None;
        };
        Some(crate::views::Waiting {
            code: code.as_str().to_owned(),
            message,
            until: crate::clock::iso_time(until),
        })
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
                    JobCode::Canceled.as_str().to_owned(),
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
            // A retry is a new request: the original's choice, not where it ended up.
            fallback: task.failover.allowed,
        };
        let mut stored = self.enqueue(std::slice::from_ref(&new)).await?;
        tracing::info!(task_id = %new.id, retry_of = %task.id, "task retried as a new task");
        stored
            .pop()
            .ok_or_else(|| EngineError::NotFound(new.id.clone()))
    }

    /// Queues new tasks (one transaction) and wakes the dispatcher.
    pub async fn enqueue(&self, tasks: &[NewTask]) -> Result<Vec<Task>, RepoError> {
        let _gate = self.enqueue_gate.read().await;
        self.repo.insert(tasks).await?;
        self.queued(tasks).await
    }

    /// Queues a batch and its tasks in one transaction, like [`Engine::enqueue`].
    pub async fn enqueue_batch(
        &self,
        batch: &crate::storage::Batch,
        tasks: &[NewTask],
    ) -> Result<Vec<Task>, RepoError> {
        let _gate = self.enqueue_gate.read().await;
        self.repo.insert_batch(batch, tasks).await?;
        self.queued(tasks).await
    }

    /// Queues tasks (and their batch) like [`Engine::enqueue`], recording the answer of the
    /// request's `Idempotency-Key` in the same transaction. `false`, with nothing queued,
    /// when the request no longer holds its key.
    pub async fn enqueue_answered(
        &self,
        batch: Option<&crate::storage::Batch>,
        tasks: &[NewTask],
        done: &crate::storage::IdempotencyCompletion,
    ) -> Result<bool, RepoError> {
        let _gate = self.enqueue_gate.read().await;
        if !self.repo.insert_answered(batch, tasks, done).await? {
            return Ok(false);
        }
        self.queued(tasks).await?;
        Ok(true)
    }

    /// After an insert: publish, wake the dispatcher, write the archive records. The rows
    /// are what the insert wrote (not read back): another instance may have moved them on
    /// already, and their `queued` events go out first all the same.
    async fn queued(&self, tasks: &[NewTask]) -> Result<Vec<Task>, RepoError> {
        let mut stored = Vec::with_capacity(tasks.len());
        for new in tasks {
            let task = new.as_queued();
            self.board.update_unless_newer(&task);
            self.events.publish(&task);
            stored.push(task);
        }
        self.dispatch_wake.notify_one();
        // The archive records are written off the request path, create-only: a task that
        // moved on before its first record was out already has a newer one, which stays.
        for task in &stored {
            self.records.write_first(task);
        }
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
                self.observe_transition(task, after);
                if after.state.is_terminal() {
                    self.settle_budget(after).await;
                }
                self.published(after);
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

    /// Every state change refreshes the status answer and rewrites the bucket record
    /// (behind the change: [`records`]).
    fn published(&self, task: &Task) {
        self.board.update(task);
        self.events.publish(task);
        self.wake_webhook_if_due(task);
        self.records.write(task);
    }

    /// A finished task's webhook is due now. A task without one has no delivery row:
    /// waking the webhook lane for it would only cost a query.
    fn wake_webhook_if_due(&self, task: &Task) {
        if task.state.is_terminal() && task.webhook_url.is_some() {
            self.webhook_wake.notify_one();
        }
    }

    /// Waits until the bucket records of every change made so far are written, at most
    /// `within`; whether they all were. At shutdown, and for tests and tools that read the
    /// records right after a change.
    pub async fn flush_records(&self, within: Duration) -> bool {
        let outstanding = self.records.outstanding();
        let written = self.records.flush(within).await;
        if !written {
            tracing::warn!(
                outstanding,
                waited_ms = within.as_millis() as u64,
                "task records still being written; the database holds every change, the bucket's records of some are behind"
            );
        }
        written
    }

    /// Handles an authenticated callback: learns the provider id if it is new, makes the
    /// task due for the reconciler now, and, when callbacks are trusted, applies the body.
    #[tracing::instrument(name = "callback", skip_all, fields(
        task_id = %task.id,
        batch_id = task.batch_id.as_deref(),
        provider = %task.provider,
        provider_task_id = task.provider_task_id.as_deref(),
    ))]
    pub async fn accept_callback(
        &self,
        task: &Task,
        body: &Value,
        trust_body: bool,
    ) -> Result<(), EngineError> {
        // The provider that ran the task reads its own callback.
        let record = self
            .providers
            .get(&task.provider)
            .and_then(|p| p.provider().parse_callback(body))
            .ok_or(EngineError::MalformedCallback)?;
        let now = now_ms();
        if let Some(given) = &record.provider_task_id {
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
            let outcome = self.apply_remote(&noted, record.status, false).await?;
            self.settle(&noted, outcome, false).await?;
        }
        self.reconcile_wake.notify_one();
        Ok(())
    }

    fn callback_url(&self, id: &TaskId, token: &str) -> String {
        format!(
            "{}/{id}?token={token}",
            self.settings.callback_base.as_str().trim_end_matches('/')
        )
    }
}
