//! Submitting claimed tasks to the provider they name, and settling tasks whose dispatcher
//! died mid-call. An asynchronous provider's acceptance makes the task `submitted`; a
//! synchronous provider's images go straight on to ingest (see `inline.rs`).

use std::time::Duration;

use super::circuit::Admission;
use super::job::{Attempt, Growth, Outcome, Reason, RetryPolicy};
use super::limits::ProviderGate;
use super::{Engine, Registered, after, new_callback_token, now_ms};
use crate::domain::{Event, JobCode, TaskState};
use crate::providers::inputs::InputError;
use crate::providers::{Delivery, ProviderError, Submission, SubmitRequest};
use crate::storage::{LimitedClaimRequest, RepoError, SharedPause, Task, TaskUpdate};

/// How long an accepted create's answer is held while storage refuses to record it.
const RECORD_ACCEPTED_FOR: Duration = Duration::from_secs(60);

/// Retrying the record of an accepted create: quickly at first, the answer is in hand.
const RECORD_ACCEPTED_RETRY: RetryPolicy = RetryPolicy {
    first: Duration::from_millis(200),
    growth: Growth::Factor(2),
    cap: Duration::from_secs(5),
    max_attempts: None,
    jitter: 0.0,
};

impl Engine {
    /// Creates (4 s doubling to 5 min, ±20 %) up to `max_attempts` in all.
    pub(super) fn create_retry(&self) -> RetryPolicy {
        RetryPolicy::doubling(
            Duration::from_secs(4),
            Duration::from_secs(300),
            Some(self.settings.max_attempts),
        )
    }

    /// Sends a task claimed at `claimed_at` to its provider, once its budgets allow it.
    pub(super) async fn submit(&self, task: Task, claimed_at: i64) -> Result<Outcome, RepoError> {
        if task.state != TaskState::Submitting {
            return Ok(Outcome::Done);
        }
        if let Some(held) = self.check_budget(&task, claimed_at).await? {
            return Ok(held);
        }
        let Some(provider) = self
            .providers
            .get(&task.provider)
            .map(|p| p.provider().clone())
        else {
            // Only claimed per registered provider, so this is a configuration change under
            // a running queue; say so rather than retry forever.
            return Ok(Outcome::GiveUp(Reason::free(
                JobCode::ProviderUnavailable,
                format!("this darkroom has no provider {:?}", task.provider),
            )));
        };
        // Only a provider that reports later gets a callback URL (and its token).
        let (task, callback_url) = match provider.delivery() {
            Delivery::Later => {
                let (token, hash) = new_callback_token();
                let armed = TaskUpdate {
                    callback_token_hash: Some(hash),
                    ..TaskUpdate::default()
                };
                let Some(task) = self.touch(&task, armed).await? else {
                    return Ok(Outcome::Done);
                };
                let url = self.callback_url(&task.id, &token);
                (task, Some(url))
            }
            Delivery::Inline => (task, None),
        };
        // A provider that sends inputs inline reads them itself from darkroom's own URLs
        // (the bucket); any other is handed URLs by the configured input route.
        let image_urls = if provider.takes_inline_inputs() {
            task.input_urls.clone()
        } else {
            match self.provider_inputs(&task, provider.as_ref()).await {
                Ok(urls) => urls,
                Err(error) => return self.submit_failed(&task, error).await,
            }
        };
        let request = SubmitRequest {
            task_id: task.id.clone(),
            model: task.model.clone(),
            prompt: task.prompt.clone(),
            image_urls,
            aspect_ratio: task.aspect_ratio.clone(),
            output_format: task.output_format.clone(),
            callback_url,
        };
        self.stamp_create(&task, claimed_at).await;
        let started = std::time::Instant::now();
        let outcome = provider.submit(&request).await;
        if !matches!(outcome, Err(ProviderError::Input(_))) {
            let class = super::observe::answer_class(outcome.as_ref().map(|_| ()));
            self.observe_provider_call(provider.name(), "create", class, started.elapsed());
        }
        tracing::info!(
            task_id = %task.id,
            provider = provider.name(),
            duration_ms = started.elapsed().as_millis() as u64,
            outcome = match &outcome {
                Ok(Submission::Accepted { .. }) => "accepted",
                Ok(Submission::Completed(_)) => "completed",
                Ok(Submission::Failed { .. }) => "no_image",
                Err(_) => "error",
            },
            "provider create answered"
        );
        // Anything but a connection never made (or inputs never read) proves the provider
        // is there.
        if !matches!(
            outcome,
            Err(ProviderError::Unreachable(_) | ProviderError::Input(_))
        ) {
            self.provider_reached(&task.provider);
        }
        // Failed creates in a row (5xx, 429) count towards failover; any other answer ends
        // the run. A create whose fate is unknown says neither.
        match &outcome {
            Ok(_) | Err(ProviderError::Permanent { .. }) => {
                self.count_create(&task.provider, false, "").await;
            }
            Err(error @ ProviderError::Retryable { .. }) => {
                self.count_create(&task.provider, true, &error.to_string())
                    .await;
            }
            Err(_) => {}
        }
        match outcome {
            Ok(Submission::Accepted { provider_task_id }) => {
                self.accepted(&task, provider_task_id).await
            }
            Ok(Submission::Completed(generated)) => self.completed_inline(&task, generated).await,
            Ok(Submission::Failed { code, message }) => {
                // No image will come of it (blocked prompt, safety stop, text-only reply,
                // unusable input): the task fails with the provider's reason.
                tracing::warn!(task_id = %task.id, code = %code, reason = %message, "provider generated no image");
                Ok(Outcome::GiveUp(Reason::spent(
                    JobCode::Provider(code),
                    message,
                )))
            }
            Err(error) => {
                // A callback may have proved the task exists even though the create answer
                // was an error: then it is accepted, not retried.
                let current = self.repo.get(&task.id).await?;
                if let Some(pid) = current.as_ref().and_then(|t| t.provider_task_id.clone()) {
                    return self.accepted(&task, pid).await;
                }
                self.submit_failed(&task, error).await
            }
        }
    }

    /// Records an accepted create. The provider has the task (and bills it) now, so a
    /// storage fault (disk full, read-only) does not drop what it answered: the write is
    /// retried with backoff for up to `RECORD_ACCEPTED_FOR`. Giving up leaves the task to the
    /// unconfirmed-create path, with the provider's id in the log for the operator.
    async fn accepted(&self, task: &Task, provider_task_id: String) -> Result<Outcome, RepoError> {
        // From here on the job's log lines name the provider's id too.
        tracing::Span::current().record("provider_task_id", provider_task_id.as_str());
        let started = std::time::Instant::now();
        let mut failed = 0;
        loop {
            match self.record_accepted(task, &provider_task_id).await {
                Err(e) if e.fault().is_some() && started.elapsed() < RECORD_ACCEPTED_FOR => {
                    failed += 1;
                    let wait = RECORD_ACCEPTED_RETRY
                        .delay(failed)
                        .unwrap_or(RECORD_ACCEPTED_RETRY.cap);
                    tracing::warn!(task_id = %task.id, provider_task_id = %provider_task_id, error = %e, retry_in_ms = wait.as_millis() as u64, "recording an accepted create failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::error!(task_id = %task.id, provider_task_id = %provider_task_id, error = %e, "recording an accepted create failed; the task is left to the unconfirmed-create path");
                    return Err(e);
                }
                Ok(()) => return Ok(Outcome::Done),
            }
        }
    }

    async fn record_accepted(&self, task: &Task, provider_task_id: &str) -> Result<(), RepoError> {
        let provider_task_id = provider_task_id.to_owned();
        let now = now_ms();
        let update = TaskUpdate {
            provider_task_id: Some(provider_task_id.clone()),
            run_at: Some(after(now, self.settings.first_poll)),
            release_lease: true,
            add_attempt: true,
            submitted_at: Some(now),
            error: Some(None),
            ..TaskUpdate::default()
        };
        match self.apply(task, Event::Accepted, true, update).await {
            // A callback that came before this answer left its mark: look now.
            Ok(Some(submitted)) if submitted.callback_at.is_some() => {
                let due = TaskUpdate {
                    run_at: Some(now),
                    ..TaskUpdate::default()
                };
                self.repo
                    .update(&submitted.id, submitted.state, None, &due, now)
                    .await?;
                self.reconcile_wake.notify_one();
                Ok(())
            }
            Ok(Some(_)) => Ok(()),
            // The task moved on (a trusted callback finished it): keep the id for lookups.
            Ok(None) => self
                .repo
                .set_provider_task_id(&task.id, &provider_task_id, now)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        }
    }

    /// What a failed create amounts to. An account problem (429, 402) pauses the provider
    /// and one that cannot be reached opens its circuit: the task waits without spending an
    /// attempt. An unconfirmed create moves on to wait for a callback.
    async fn submit_failed(&self, task: &Task, error: ProviderError) -> Result<Outcome, RepoError> {
        // Nothing was sent: no attempt spent, and the circuit (not each task) says so.
        if let ProviderError::Unreachable(reason) = &error {
            return Ok(self.submit_unreachable(task, reason));
        }
        let attempts = task.attempts + 1;
        if let ProviderError::Input(input) = error {
            return Ok(self.input_failed(task, attempts, input));
        }
        tracing::warn!(task_id = %task.id, attempt = attempts, error = %error, "provider create failed");
        // A create that may have been made keeps its task at this provider (failover).
        if self.pin_unless_refused(task, &error).await?.is_none() {
            return Ok(Outcome::Done);
        }
        // A 429 or a 402 is about the account, not this task: the whole provider (this task's
        // provider, not the others) pauses and the task waits its turn again without spending
        // an attempt.
        let registered = self.providers.get(&task.provider);
        if let Some((registered, (pause, code))) = registered.and_then(|registered| {
            Some((registered, self.account_problem(registered.gate(), &error)?))
        }) {
            let gate = registered.gate();
            // Written to the database first, so every instance (and this one after a
            // restart) holds off before this one says it is paused: a crash right after
            // `/readyz` shows the pause cannot lose it.
            let shared = SharedPause {
                until: after(now_ms(), pause),
                code: code.to_owned(),
                reason: error.to_string(),
            };
            if let Err(e) = self.repo.pause_provider(&task.provider, &shared).await {
                tracing::warn!(provider = %task.provider, error = %e, "the pause could not be written to the database: it holds on this instance only");
            }
            if gate.pause(pause, code, &shared.reason).is_some() {
                self.metrics.provider_paused(&task.provider, code);
                // Out of credits: the balance is read at once (for the log, the gauge and
                // `/readyz`; below the floor, the floor pause holds until a top-up is seen).
                if code == "402"
                    && let Some(balance) = self.read_credits_of(registered).await
                {
                    tracing::warn!(provider = %task.provider, balance, "credit balance after a 402");
                }
            }
            let message = match code {
                "402" => format!(
                    "the provider reports insufficient credits; submission is paused for {} s: {error}",
                    pause.as_secs()
                ),
                _ => format!(
                    "the provider is rate limiting; submission is paused for {} s: {error}",
                    pause.as_secs()
                ),
            };
            return Ok(Outcome::RetryIn {
                delay: pause,
                reason: Reason::free(JobCode::ProviderPaused, message),
            });
        }
        let outcome = match &error {
            ProviderError::Retryable { retry_after, .. } => {
                match self.create_retry().delay(attempts) {
                    Some(delay) => Outcome::RetryIn {
                        delay: retry_after.map_or(delay, |floor| delay.max(floor)),
                        reason: Reason::spent(JobCode::ProviderRetrying, error.to_string()),
                    },
                    // The provider refused every attempt, so no create of it was made: by
                    // the failover policy it moves to the next provider instead of failing.
                    None if self.fail_over_held(task).await? => Outcome::Done,
                    None => Outcome::GiveUp(Reason::spent(
                        JobCode::ProviderUnavailable,
                        format!("gave up after {attempts} attempts: {error}"),
                    )),
                }
            }
            ProviderError::Permanent { code, .. } => Outcome::GiveUp(Reason::spent(
                JobCode::Provider(format!("provider_{code}")),
                error.to_string(),
            )),
            // Never here: an unreachable provider and unreadable inputs returned above.
            ProviderError::Unreachable(reason) => self.submit_unreachable(task, reason),
            ProviderError::Input(input) => {
                Outcome::GiveUp(Reason::free(input.code.clone(), input.message.clone()))
            }
            ProviderError::Ambiguous(_) => {
                self.metrics
                    .provider_counter(crate::telemetry::names::UNCONFIRMED_CREATES, &task.provider)
                    .increment(1);
                let reason = Reason::spent(JobCode::SubmitAmbiguous, error.to_string());
                return self.wait_for_callback(task, reason).await;
            }
        };
        Ok(outcome)
    }

    /// An input image could not be read, so nothing went to the provider. A final problem
    /// (no such host, a 4xx, not an image) fails the task at once with the input's code; one
    /// that may pass is tried again like a create, and gives up with the same code.
    fn input_failed(&self, task: &Task, attempts: u32, input: InputError) -> Outcome {
        tracing::warn!(task_id = %task.id, attempt = attempts, code = %input.code, error = %input.message, "input image unreadable");
        if !input.retryable {
            return Outcome::GiveUp(Reason::free(input.code, input.message));
        }
        match self.create_retry().delay(attempts) {
            Some(delay) => Outcome::RetryIn {
                delay,
                reason: Reason::spent(input.code, input.message),
            },
            None => Outcome::GiveUp(Reason::free(
                input.code,
                format!("gave up after {attempts} attempts: {}", input.message),
            )),
        }
    }

    /// A create that may or may not have reached the provider is never sent again blindly:
    /// the task waits as `submitted` (without a provider id) for a callback to settle it.
    async fn wait_for_callback(&self, task: &Task, reason: Reason) -> Result<Outcome, RepoError> {
        let now = now_ms();
        let update = TaskUpdate {
            submitted_at: Some(now),
            run_at: Some(after(now, self.settings.first_poll)),
            release_lease: true,
            add_attempt: reason.attempt == Attempt::Spent,
            error: Some(Some((reason.code.as_str().to_owned(), reason.message))),
            ..TaskUpdate::default()
        };
        self.apply(task, Event::Ambiguous, true, update).await?;
        Ok(Outcome::Done)
    }

    /// How many queued tasks of `provider` may be claimed now, before its shared limits:
    /// free call slots, none while it is paused, and only the one probe while it cannot be
    /// reached. A provider without limits has its shared pause read here (at most every
    /// half second); a limited claim reads it in its transaction.
    pub(super) async fn dispatch_room(
        &self,
        provider: &Registered,
        free_slots: usize,
    ) -> Result<usize, RepoError> {
        if free_slots == 0 {
            return Ok(0);
        }
        let gate = provider.gate();
        let now = now_ms();
        if gate.create_limits().is_unlimited() && gate.pause_read_due(now) {
            let shared = self.repo.provider_pause(provider.name(), now).await?;
            gate.adopt_pause(now, shared);
        }
        if gate.paused().is_some() {
            return Ok(0);
        }
        Ok(match gate.circuit.admit() {
            Admission::Closed => free_slots,
            Admission::Probe => 1,
            Admission::Wait(_) => 0,
        })
    }

    /// Claims up to `room` queued tasks of `provider`. Within its create window and
    /// in-flight cap as the database holds them (every instance's and every earlier
    /// process's creates count), when it has limits.
    pub(super) async fn claim_queued(
        &self,
        provider: &Registered,
        now: i64,
        room: usize,
        lease_until: i64,
    ) -> Result<Vec<Task>, RepoError> {
        let gate = provider.gate();
        let limits = gate.create_limits();
        let worker = self.settings.worker_id.as_str();
        if limits.is_unlimited() {
            return self
                .repo
                .claim_queued(provider.name(), now, room, worker, lease_until)
                .await;
        }
        let claimed = self
            .repo
            .claim_within_limits(&LimitedClaimRequest {
                provider: provider.name(),
                now,
                wanted: room,
                worker,
                lease_until,
                limits,
            })
            .await?;
        gate.creates.adopt(now, &claimed.window);
        gate.adopt_pause(now, claimed.pause);
        Ok(claimed.tasks)
    }

    /// Counts the task's create slot from now, as it is sent (the provider counts it when
    /// it arrives, however long the claim took to get here). On failure the claim's own
    /// stamp stands, which can only be earlier.
    async fn stamp_create(&self, task: &Task, claimed_at: i64) {
        let limited = self
            .providers
            .get(&task.provider)
            .is_some_and(|p| p.gate().create_limits().creates > 0);
        if !limited {
            return;
        }
        if let Err(e) = self
            .repo
            .stamp_create(&task.provider, claimed_at, now_ms())
            .await
        {
            tracing::warn!(task_id = %task.id, error = %e, "the create could not be stamped with its send time; it counts from its claim");
        }
    }

    /// A 429 (rate limited) or a 402 (no credits) pauses the provider: for how long.
    fn account_problem(
        &self,
        gate: &ProviderGate,
        error: &ProviderError,
    ) -> Option<(std::time::Duration, &'static str)> {
        match error {
            ProviderError::Retryable {
                code, retry_after, ..
            } if code == "429" => {
                let window_left = gate.creates.next_free_in();
                let pause = retry_after
                    .or(window_left)
                    .unwrap_or(std::time::Duration::from_secs(10))
                    .max(std::time::Duration::from_secs(1));
                Some((pause, "429"))
            }
            ProviderError::Permanent { code, .. } if code == "402" => {
                Some((self.settings.credits_pause, "402"))
            }
            _ => None,
        }
    }

    /// A `submitting` task whose lease ran out: its create may or may not have reached the
    /// provider. For a provider that reports later it waits as `submitted` for a callback
    /// until the deadline. A synchronous provider will never say anything more: the answer
    /// went down with the dispatcher, so the task is queued again (attempts still count).
    pub(super) async fn settle_interrupted(&self, task: &Task) -> Result<Outcome, RepoError> {
        if self.delivery_of(task) == Delivery::Inline {
            let attempts = task.attempts + 1;
            tracing::warn!(task_id = %task.id, attempt = attempts, "dispatcher lease lapsed during a synchronous generation; requesting it again");
            // The provider may have made (and billed) it: it never moves to another one.
            let pinned = TaskUpdate {
                pin_provider: true,
                ..TaskUpdate::default()
            };
            if self.touch(task, pinned).await?.is_none() {
                return Ok(Outcome::Done);
            }
            if self.create_retry().exhausted(attempts) {
                return Ok(Outcome::GiveUp(Reason::spent(
                    JobCode::SubmitInterrupted,
                    format!("darkroom stopped during generation {attempts} times; giving up"),
                )));
            }
            // At once: the wait was the lease that had to run out.
            return Ok(Outcome::RetryIn {
                delay: Duration::ZERO,
                reason: Reason::spent(
                    JobCode::SubmitInterrupted,
                    "darkroom stopped while the image was being generated; it is requested again",
                ),
            });
        }
        if task.callback_token_hash.is_empty() {
            // The claim clears the token and the create is sent only once a fresh one is
            // stored: this create was never sent (its dispatcher stopped, or storage refused
            // the token), so it is sent now, without spending an attempt.
            tracing::warn!(task_id = %task.id, "dispatcher lease lapsed before the create was sent; creating it now");
            return Ok(Outcome::RetryIn {
                delay: Duration::ZERO,
                reason: Reason::free(
                    JobCode::SubmitInterrupted,
                    "darkroom stopped before sending this task to the provider; it is sent now",
                ),
            });
        }
        tracing::warn!(task_id = %task.id, "dispatcher lease lapsed during create; waiting for the provider instead of resubmitting");
        let reason = Reason::free(
            JobCode::SubmitInterrupted,
            "darkroom stopped while creating this task; it is not resubmitted, to avoid paying twice",
        );
        self.wait_for_callback(task, reason).await
    }
}
