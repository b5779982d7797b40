//! The worker machinery: one loop per kind of work (a lane) claims due work under a lease
//! and starts a job for each claim in its own spawned task (a panic stays there and is
//! logged), heartbeated until it ends; `run` drains them at shutdown and `run_pending`
//! steps them deterministically for tests. A task job's outcome is settled here
//! (`Engine::settle`); a webhook job records its own.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Engine, Registered, after, now_ms};
use crate::domain::{TaskId, TaskState};
use crate::providers::Delivery;
use crate::storage::{RepoError, Task, WebhookDelivery};

/// What a claimed task needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Job {
    /// Claimed from the queue at `claimed_at` (when its create slot was reserved).
    Submit {
        claimed_at: i64,
    },
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
    Webhook,
}

impl Work {
    const ALL: [Work; 4] = [Work::Dispatch, Work::Reconcile, Work::Ingest, Work::Webhook];
}

/// How often a step looks for work that only turns up slowly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pace {
    /// The running worker loop: such checks at most once a tick.
    Loop,
    /// `run_pending`: every check in every step, so tests see everything due.
    Every,
}

/// What a job holds under its lease.
enum Claim {
    Task(Box<Task>, Job),
    /// A webhook delivery's lease is its `run_at`, set to `lease_until` by the claim.
    Webhook(WebhookDelivery, i64),
}

impl Engine {
    /// Runs the workers until `shutdown`, then waits (bounded) for in-flight jobs.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut loops = JoinSet::new();
        for work in Work::ALL {
            loops.spawn(self.clone().work_loop(work, shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
        let drain = async {
            for provider in self.providers.iter() {
                provider.pool().drain().await;
            }
            self.reconcile_slots.drain().await;
            self.ingest_slots.drain().await;
            self.webhook_slots.drain().await;
        };
        if tokio::time::timeout(self.settings.shutdown_grace, drain)
            .await
            .is_err()
        {
            // Hand the work back now rather than when the leases run out. A create that is
            // still in flight keeps its lease: whether it reached the provider is unknown.
            // So does a webhook attempt: it is tried again when its lease runs out.
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
        self.flush_records(self.settings.shutdown_grace).await;
    }

    async fn work_loop(self: Arc<Self>, work: Work, shutdown: CancellationToken) {
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            let claimed = match self.clone().step(work, Pace::Loop).await {
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
            let wake = self.wake(work);
            // Work queued through another instance on the same database (PostgreSQL).
            let elsewhere = match work {
                Work::Dispatch => self.repo.queue_signal(),
                _ => None,
            };
            tokio::select! {
                () = wake.notified() => {}
                () = notified_if_any(elsewhere.as_deref()) => {}
                () = tokio::time::sleep(self.settings.tick) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Whether the dispatcher looks for lapsed `submitting` leases in this step.
    fn stale_check_due(&self, now: i64, pace: Pace) -> bool {
        let tick = i64::try_from(self.settings.tick.as_millis()).unwrap_or(i64::MAX);
        let last = self.stale_checked_at.load(Ordering::Relaxed);
        if pace == Pace::Loop && now.saturating_sub(last) < tick {
            return false;
        }
        self.stale_checked_at.store(now, Ordering::Relaxed);
        true
    }

    fn wake(&self, work: Work) -> &Notify {
        match work {
            Work::Dispatch => &self.dispatch_wake,
            Work::Reconcile => &self.reconcile_wake,
            Work::Ingest => &self.ingest_wake,
            Work::Webhook => &self.webhook_wake,
        }
    }

    /// Claims as much due work of one kind as there are free slots and starts a job for each.
    /// Queued tasks are claimed per provider, up to that provider's free call slots.
    async fn step(self: Arc<Self>, work: Work, pace: Pace) -> Result<JoinSet<()>, RepoError> {
        let mut jobs = JoinSet::new();
        let now = now_ms();
        let worker = self.settings.worker_id.clone();
        let lease_until = after(now, self.settings.lease);
        match work {
            Work::Dispatch => {
                // Tasks of a provider paused for credits or as failing move first (failover).
                if let Err(e) = self.fail_over_queued().await {
                    tracing::warn!(error = %e, "moving queued tasks to another provider failed");
                }
                for provider in self.providers.iter() {
                    let mut permits = provider.pool().take_free();
                    let room = self.dispatch_room(provider, permits.len()).await?;
                    if room == 0 {
                        continue;
                    }
                    permits.truncate(room);
                    let claimed = {
                        let _gate = self.enqueue_gate.write().await;
                        self.claim_queued(provider, now, room, lease_until).await
                    };
                    let queued = claimed.inspect_err(|_| provider.gate().circuit.return_probe())?;
                    if queued.is_empty() {
                        provider.gate().circuit.return_probe();
                    }
                    // Unused permits go back when the rest of the vector drops.
                    for (task, permit) in queued.into_iter().zip(permits) {
                        let claim = Claim::Task(Box::new(task), Job::Submit { claimed_at: now });
                        self.clone().start(&mut jobs, work, claim, Some(permit));
                    }
                }
                // A dispatcher that died mid-call leaves `submitting` with a lapsed lease.
                // Settling it is a database update, not a provider call: no call slot needed.
                // Leases last many ticks, so the running loop looks once a tick, not after
                // every job (a query per task under load).
                if !self.stale_check_due(now, pace) {
                    return Ok(jobs);
                }
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
                    let claim = Claim::Task(Box::new(task), Job::SettleInterrupted);
                    self.clone().start(&mut jobs, work, claim, None);
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
                    let claim = Claim::Task(Box::new(task), Job::Reconcile);
                    self.clone().start(&mut jobs, work, claim, permit);
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
                        let claim = Claim::Task(Box::new(task), Job::Ingest);
                        self.clone().start(&mut jobs, work, claim, permit);
                    }
                }
            }
            Work::Webhook => {
                let mut permits = self.webhook_slots.take_free();
                if self.webhooks.is_some() && !permits.is_empty() {
                    let due = self.repo.due_webhooks(now, permits.len()).await?;
                    for delivery in due {
                        // Another worker may have taken it since it was listed.
                        if !self
                            .repo
                            .claim_webhook(&delivery.id, now, lease_until)
                            .await?
                        {
                            continue;
                        }
                        let permit = permits.pop();
                        let claim = Claim::Webhook(delivery, lease_until);
                        self.clone().start(&mut jobs, work, claim, permit);
                    }
                }
            }
        }
        Ok(jobs)
    }

    /// Runs a task's job and settles its outcome.
    async fn run_task_job(&self, task: Task, job: Job) -> Result<(), RepoError> {
        let outcome = match job {
            Job::Submit { claimed_at } => self.submit(task.clone(), claimed_at).await?,
            Job::SettleInterrupted => self.settle_interrupted(&task).await?,
            Job::Reconcile => self.reconcile(task.clone()).await?,
            Job::Ingest => return self.ingest_leased(task).await,
        };
        self.settle(&task, outcome, true).await.map(|_| ())
    }

    /// Ingests a task this worker holds under lease and settles the outcome: the ingest
    /// lane's job, and a reconcile job's that found the results ready with a slot free.
    pub(super) async fn ingest_leased(&self, task: Task) -> Result<(), RepoError> {
        // Inline results live only in the memory of the dispatcher that received them; a
        // task found here without one has lost them.
        let outcome = if self.delivery_of(&task) == Delivery::Inline {
            self.inline_results_lost(&task).await?
        } else {
            self.ingest(task.clone()).await?
        };
        self.settle(&task, outcome, true).await.map(|_| ())
    }

    /// Runs one job in its own task (a panic stays there), holding `permit` until it ends.
    fn start(
        self: Arc<Self>,
        jobs: &mut JoinSet<()>,
        work: Work,
        claim: Claim,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        // Every line a job logs carries what it works on as span fields: a task's id, its
        // batch and the provider's id once known; a webhook's id and its task's.
        let span = match &claim {
            Claim::Task(task, job) => tracing::info_span!(
                "task",
                task_id = %task.id,
                batch_id = task.batch_id.as_deref(),
                provider = %task.provider,
                provider_task_id = task.provider_task_id.as_deref(),
                job = ?job,
            ),
            Claim::Webhook(delivery, _) => tracing::info_span!(
                "webhook",
                webhook_id = %delivery.id,
                task_id = %delivery.task_id,
            ),
        };
        let job = async move {
            let subject = match &claim {
                Claim::Task(task, _) => task.id.to_string(),
                Claim::Webhook(delivery, _) => delivery.id.clone(),
            };
            // The heartbeat keeps the lease alive while the job runs (a slow provider, a
            // minute-long generation, a large download, a slow receiver), so no other
            // worker takes the work.
            let job = async {
                match claim {
                    Claim::Task(task, job) => {
                        let id = task.id.clone();
                        tokio::select! {
                            result = self.run_task_job(*task, job) => result,
                            () = self.heartbeat(&id) => Ok(()),
                        }
                    }
                    Claim::Webhook(delivery, held_until) => {
                        let Some(deliverer) = self.webhooks.clone() else {
                            return Ok(());
                        };
                        tokio::select! {
                            result = self.deliver(&deliverer, &delivery) => result,
                            () = self.webhook_heartbeat(&delivery.id, held_until) => Ok(()),
                        }
                    }
                }
            };
            match AssertUnwindSafe(job).catch_unwind().await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let message = e.to_string();
                    if let Some(repeated) = crate::log_throttle::errors().admit(&message) {
                        tracing::error!(subject = %subject, work = ?work, error = %message, repeated, "job failed; the lease will expire and it will run again");
                    }
                }
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(subject = %subject, work = ?work, panic = %message, "job panicked; the lease will expire and it will run again");
                }
            }
            drop(permit);
            self.wake(work).notify_one();
        };
        jobs.spawn(tracing::Instrument::instrument(job, span));
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

    /// Extends a webhook attempt's lease every third of the lease (an attempt may outlast
    /// one: the POST's timeout is the fetch timeout); never returns.
    async fn webhook_heartbeat(&self, id: &str, mut held_until: i64) {
        let period = self.settings.lease / 3;
        loop {
            tokio::time::sleep(period).await;
            let until = after(now_ms(), self.settings.lease);
            match self.repo.extend_webhook_lease(id, held_until, until).await {
                Ok(true) => held_until = until,
                Ok(false) => {
                    tracing::warn!(webhook_id = %id, "webhook lease lost while delivering; another worker may attempt it too");
                    return std::future::pending().await;
                }
                Err(e) => {
                    tracing::warn!(webhook_id = %id, error = %e, "extending the webhook lease failed");
                }
            }
        }
    }

    /// Runs every kind of due work until none is left, waiting for each job. For tests and
    /// tools that drive the engine without its background loops.
    pub async fn run_pending(self: &Arc<Self>) -> Result<usize, RepoError> {
        let mut total = 0;
        loop {
            let mut ran = 0;
            for work in Work::ALL {
                let mut jobs = self.clone().step(work, Pace::Every).await?;
                ran += jobs.len();
                while jobs.join_next().await.is_some() {}
            }
            if ran == 0 {
                // The bucket records of what ran are part of it.
                self.flush_records(RUN_PENDING_RECORDS_WAIT).await;
                return Ok(total);
            }
            total += ran;
        }
    }
}

/// How long `run_pending` waits for the records of what it ran to be written.
const RUN_PENDING_RECORDS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits for `signal`, or forever when there is none.
async fn notified_if_any(signal: Option<&Notify>) {
    match signal {
        Some(signal) => signal.notified().await,
        None => std::future::pending().await,
    }
}
