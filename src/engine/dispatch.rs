//! Submitting claimed tasks to the provider they name, and settling tasks whose dispatcher
//! died mid-call. An asynchronous provider's acceptance makes the task `submitted`; a
//! synchronous provider's images go straight on to ingest (see `inline.rs`).

use std::time::Duration;

use super::limits::ProviderGate;
use super::{Engine, after, backoff, new_callback_token, now_ms};
use crate::domain::{Event, TaskState};
use crate::providers::{Delivery, ProviderError, Submission, SubmitRequest};
use crate::storage::{RepoError, Task, TaskUpdate};

/// How long an accepted create's answer is held while storage refuses to record it.
const RECORD_ACCEPTED_FOR: Duration = Duration::from_secs(60);

impl Engine {
    pub(super) async fn submit(&self, task: Task) -> Result<(), RepoError> {
        if task.state != TaskState::Submitting {
            return Ok(());
        }
        let Some(provider) = self
            .providers
            .get(&task.provider)
            .map(|p| p.provider().clone())
        else {
            // Only claimed per registered provider, so this is a configuration change under
            // a running queue; say so rather than retry forever.
            let update = TaskUpdate {
                release_lease: true,
                error: Some(Some((
                    "provider_unavailable".to_owned(),
                    format!("this darkroom has no provider {:?}", task.provider),
                ))),
                ..TaskUpdate::default()
            };
            return self
                .apply(&task, Event::Rejected, true, update)
                .await
                .map(|_| ());
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
                    return Ok(());
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
        let started = std::time::Instant::now();
        let outcome = provider.submit(&request).await;
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
        match outcome {
            Ok(Submission::Accepted { provider_task_id }) => {
                self.accepted(&task, provider_task_id).await
            }
            Ok(Submission::Completed(generated)) => self.completed_inline(&task, generated).await,
            Ok(Submission::Failed { code, message }) => {
                self.generation_refused(&task, code, message).await
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

    /// The provider answered that this task yields no image (blocked prompt, safety stop,
    /// text-only reply, unusable input): it fails with the provider's reason.
    async fn generation_refused(
        &self,
        task: &Task,
        code: String,
        message: String,
    ) -> Result<(), RepoError> {
        tracing::warn!(task_id = %task.id, code = %code, reason = %message, "provider generated no image");
        let update = TaskUpdate {
            add_attempt: true,
            submitted_at: Some(now_ms()),
            error: Some(Some((code, message))),
            ..TaskUpdate::default()
        };
        self.apply(task, Event::ProviderFailed, true, update)
            .await
            .map(|_| ())
    }

    /// Records an accepted create. The provider has the task (and bills it) now, so a
    /// storage fault (disk full, read-only) does not drop what it answered: the write is
    /// retried with backoff for up to `RECORD_ACCEPTED_FOR`. Giving up leaves the task to the
    /// unconfirmed-create path, with the provider's id in the log for the operator.
    async fn accepted(&self, task: &Task, provider_task_id: String) -> Result<(), RepoError> {
        let started = std::time::Instant::now();
        let mut wait = Duration::from_millis(200);
        loop {
            match self.record_accepted(task, &provider_task_id).await {
                Err(e) if e.fault().is_some() && started.elapsed() < RECORD_ACCEPTED_FOR => {
                    tracing::warn!(task_id = %task.id, provider_task_id = %provider_task_id, error = %e, retry_in_ms = wait.as_millis() as u64, "recording an accepted create failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::error!(task_id = %task.id, provider_task_id = %provider_task_id, error = %e, "recording an accepted create failed; the task is left to the unconfirmed-create path");
                    return Err(e);
                }
                Ok(()) => return Ok(()),
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

    async fn submit_failed(&self, task: &Task, error: ProviderError) -> Result<(), RepoError> {
        let now = now_ms();
        let attempts = task.attempts + 1;
        tracing::warn!(task_id = %task.id, attempt = attempts, error = %error, "provider create failed");
        // A 429 or a 402 is about the account, not this task: the whole provider (this task's
        // provider, not the others) pauses and the task waits its turn again without spending
        // an attempt.
        let gate = self.providers.get(&task.provider).map(|p| p.gate());
        if let Some((gate, (pause, code))) =
            gate.and_then(|gate| Some((gate, self.account_problem(gate, &error)?)))
        {
            gate.pause(pause, code, &error.to_string());
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
            let update = TaskUpdate {
                run_at: Some(after(now, pause)),
                release_lease: true,
                error: Some(Some(("provider_paused".to_owned(), message))),
                ..TaskUpdate::default()
            };
            return self
                .apply(task, Event::RetryLater, true, update)
                .await
                .map(|_| ());
        }
        let (event, update) = match &error {
            ProviderError::Retryable { retry_after, .. }
                if attempts < self.settings.max_attempts =>
            {
                (
                    Event::RetryLater,
                    TaskUpdate {
                        run_at: Some(after(now, backoff(attempts, *retry_after))),
                        error: Some(Some(("provider_retrying".to_owned(), error.to_string()))),
                        ..TaskUpdate::default()
                    },
                )
            }
            ProviderError::Retryable { .. } => (
                Event::Rejected,
                TaskUpdate {
                    error: Some(Some((
                        "provider_unavailable".to_owned(),
                        format!("gave up after {attempts} attempts: {error}"),
                    ))),
                    ..TaskUpdate::default()
                },
            ),
            ProviderError::Permanent { code, .. } => (
                Event::Rejected,
                TaskUpdate {
                    error: Some(Some((format!("provider_{code}"), error.to_string()))),
                    ..TaskUpdate::default()
                },
            ),
            ProviderError::Ambiguous(_) => (
                Event::Ambiguous,
                TaskUpdate {
                    submitted_at: Some(now),
                    run_at: Some(after(now, self.settings.first_poll)),
                    error: Some(Some(("submit_ambiguous".to_owned(), error.to_string()))),
                    ..TaskUpdate::default()
                },
            ),
        };
        let update = TaskUpdate {
            add_attempt: true,
            release_lease: true,
            ..update
        };
        self.apply(task, event, true, update).await.map(|_| ())
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
    pub(super) async fn settle_interrupted(&self, task: &Task) -> Result<(), RepoError> {
        let now = now_ms();
        if self.delivery_of(task) == Delivery::Inline {
            let attempts = task.attempts + 1;
            tracing::warn!(task_id = %task.id, attempt = attempts, "dispatcher lease lapsed during a synchronous generation; requesting it again");
            let give_up = attempts >= self.settings.max_attempts;
            let (event, message) = if give_up {
                (
                    Event::Rejected,
                    format!("darkroom stopped during generation {attempts} times; giving up"),
                )
            } else {
                (
                    Event::RetryLater,
                    "darkroom stopped while the image was being generated; it is requested again"
                        .to_owned(),
                )
            };
            let update = TaskUpdate {
                run_at: Some(now),
                release_lease: true,
                add_attempt: true,
                error: Some(Some(("submit_interrupted".to_owned(), message))),
                ..TaskUpdate::default()
            };
            return self.apply(task, event, true, update).await.map(|_| ());
        }
        tracing::warn!(task_id = %task.id, "dispatcher lease lapsed during create; waiting for the provider instead of resubmitting");
        let update = TaskUpdate {
            submitted_at: Some(now),
            run_at: Some(after(now, self.settings.first_poll)),
            release_lease: true,
            error: Some(Some((
                "submit_interrupted".to_owned(),
                "darkroom stopped while creating this task; it is not resubmitted, to avoid paying twice".to_owned(),
            ))),
            ..TaskUpdate::default()
        };
        self.apply(task, Event::Ambiguous, true, update)
            .await
            .map(|_| ())
    }
}
