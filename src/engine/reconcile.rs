//! Asking the provider about tasks whose answer is due: right after a callback (which is
//! only a hint, since KIE does not sign its body), and on a backing-off schedule when no
//! callback comes, until the deadline. The deadline is judged on an answer: a task past it
//! is asked once more and expires only if the provider still has no result, and while the
//! provider cannot be reached at all (its circuit is open) nothing expires.

use std::time::Duration;

use super::circuit::{Admission, Circuit, provider_label};
use super::job::{Outcome, Reason, RetryPolicy};
use super::{Engine, after, now_ms};
use crate::domain::{Event, JobCode, TaskState};
use crate::providers::{Delivery, ProviderError, RemoteStatus};
use crate::storage::{RepoError, Task, TaskUpdate};

/// KIE's guidance: every few seconds at first, backing off to 15–30 s after two minutes.
fn next_poll_delay(age: Duration) -> Duration {
    if age < Duration::from_secs(30) {
        Duration::from_secs(3)
    } else if age < Duration::from_secs(120) {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(20)
    }
}

/// A status query that failed is asked again later, backing off (never giving up: the
/// deadline does that); it never comes sooner than the polling schedule.
const QUERY_RETRY: RetryPolicy =
    RetryPolicy::doubling(Duration::from_secs(4), Duration::from_secs(32), None);

impl Engine {
    /// Polls again after the stage's own schedule: not a retry, the task is fine.
    async fn poll_later(&self, task: &Task, update: TaskUpdate) -> Result<Outcome, RepoError> {
        self.touch(task, update).await?;
        Ok(Outcome::Done)
    }

    pub(super) async fn reconcile(&self, task: Task) -> Result<Outcome, RepoError> {
        let now = now_ms();
        let since = task.submitted_at.unwrap_or(task.created_at);
        let age = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
        let later = TaskUpdate {
            run_at: Some(after(now, next_poll_delay(age))),
            release_lease: true,
            ..TaskUpdate::default()
        };
        // After an unconfirmed create there is no id to ask about: only a callback can tell.
        let Some(provider_task_id) = task.provider_task_id.clone() else {
            if age >= self.settings.unconfirmed_window {
                return self.settle_unconfirmed(&task).await;
            }
            return self.poll_later(&task, later).await;
        };
        let past_deadline = age >= self.settings.task_deadline;
        // Only providers that report later can be asked; a task of any other is left to
        // its deadline (the dispatcher never leaves one in this state).
        let Some(provider) = self
            .providers
            .get(&task.provider)
            .map(|p| p.provider().clone())
            .filter(|p| p.delivery() == Delivery::Later)
        else {
            if past_deadline {
                return Ok(self.expire());
            }
            tracing::warn!(task_id = %task.id, provider = %task.provider, "no provider to ask about this task; waiting for its deadline");
            return self.poll_later(&task, later).await;
        };
        // While the provider cannot be reached nothing is asked and nothing expires: the
        // deadline is about the provider taking too long, and whether it has is unknown
        // until it answers (a finished, paid result may be waiting there). One probe at a
        // time goes out; the first answer after the outage decides, deadline included.
        let circuit = self.circuit(&task.provider);
        if let Some(Admission::Wait(outage)) = circuit.map(Circuit::admit) {
            let update = TaskUpdate {
                run_at: Some(outage.next_probe_ms().max(now)),
                ..later
            };
            return self.poll_later(&task, update).await;
        }
        let started = std::time::Instant::now();
        let answer = provider.query(&provider_task_id).await;
        let class = super::observe::answer_class(answer.as_ref().map(|_| ()));
        self.observe_provider_call(provider.name(), "query", class, started.elapsed());
        self.metrics
            .provider_counter(crate::telemetry::names::RECONCILER_POLLS, provider.name())
            .increment(1);
        match answer {
            Err(ProviderError::Unreachable(reason)) => {
                let run_at = circuit.map_or(after(now, next_poll_delay(age)), |c| {
                    c.unreachable(&reason).next_probe_ms()
                });
                tracing::debug!(task_id = %task.id, reason = %reason, "provider unreachable; the task waits");
                let update = TaskUpdate {
                    run_at: Some(run_at.max(now)),
                    ..later
                };
                self.poll_later(&task, update).await
            }
            Err(error) => {
                self.provider_reached(&task.provider);
                if past_deadline {
                    return Ok(self.expire());
                }
                tracing::warn!(task_id = %task.id, error = %error, "provider query failed");
                let retry_after = match &error {
                    ProviderError::Retryable { retry_after, .. } => *retry_after,
                    _ => None,
                };
                // The task itself is fine, so no reason is shown on it: it polls later.
                let backoff = QUERY_RETRY.delay(task.attempts).unwrap_or(QUERY_RETRY.cap);
                let delay = retry_after
                    .map_or(backoff, |floor| backoff.max(floor))
                    .max(next_poll_delay(age));
                let update = TaskUpdate {
                    run_at: Some(after(now, delay)),
                    ..later
                };
                self.poll_later(&task, update).await
            }
            Ok(status) => {
                self.provider_reached(&task.provider);
                let finished = matches!(
                    status,
                    RemoteStatus::Succeeded { .. } | RemoteStatus::Failed { .. }
                );
                if past_deadline && !finished {
                    return Ok(self.expire());
                }
                self.apply_remote(&task, status, true).await
            }
        }
    }

    /// The deadline passed and the provider has no result for the task.
    fn expire(&self) -> Outcome {
        let minutes = self.settings.task_deadline.as_secs() / 60;
        Outcome::GiveUp(Reason::free(
            JobCode::DeadlineExceeded,
            format!("no result from the provider within {minutes} minutes"),
        ))
    }

    /// The provider says it has no such task. Once may be the provider catching up on a
    /// task it has just accepted; `missing_task_answers` times in a row, it is gone, and
    /// polling until the deadline would only delay the news.
    async fn missing_answer(
        &self,
        task: &Task,
        message: String,
        later: TaskUpdate,
    ) -> Result<Outcome, RepoError> {
        let answers = task.missing_answers.saturating_add(1);
        let limit = self.settings.missing_task_answers.max(1);
        if answers < limit {
            tracing::info!(task_id = %task.id, answers, limit, "the provider has no record of this task (yet)");
            let update = TaskUpdate {
                missing_answers: Some(answers),
                ..later
            };
            return self.poll_later(task, update).await;
        }
        tracing::warn!(task_id = %task.id, answers, "the provider has no record of this task; it fails");
        let label = provider_label(&task.provider);
        Ok(Outcome::GiveUp(Reason::free(
            JobCode::ProviderTaskMissing,
            format!(
                "{label} accepted this task as {} but answered {answers} times in a row that it has no such task \
                 ({message}); no result will come from it",
                task.provider_task_id.as_deref().unwrap_or("?"),
            ),
        )))
    }

    /// The window for a create with no answer has passed and no callback named the task.
    async fn settle_unconfirmed(&self, task: &Task) -> Result<Outcome, RepoError> {
        // Opting in to resubmission still spends attempts: a provider that never answers
        // must not be paid again and again.
        if self.settings.resubmit_unconfirmed && task.attempts < self.settings.max_attempts {
            tracing::warn!(task_id = %task.id, "unconfirmed create: submitting again as configured (the provider may bill twice)");
            let update = TaskUpdate {
                run_at: Some(now_ms()),
                release_lease: true,
                error: Some(Some((
                    JobCode::ResubmittedUnconfirmed.as_str().to_owned(),
                    "the first create got no answer and no callback came; submitted again"
                        .to_owned(),
                ))),
                ..TaskUpdate::default()
            };
            let moved = self.apply(task, Event::Resubmit, true, update).await?;
            if moved.is_some() {
                self.dispatch_wake.notify_one();
            }
            return Ok(Outcome::Done);
        }
        let minutes = self.settings.unconfirmed_window.as_secs().div_ceil(60);
        Ok(Outcome::GiveUp(Reason::free(
            JobCode::SubmitUnconfirmed,
            if self.settings.resubmit_unconfirmed {
                format!(
                    "{} create requests got no answer and the provider never called back within {minutes} min \
                     of the last; the attempts are used up (DARKROOM_MAX_ATTEMPTS)",
                    task.attempts
                )
            } else {
                format!(
                    "the create request got no answer and the provider never called back within {minutes} min; \
                     it was not resubmitted, to avoid paying twice (DARKROOM_RESUBMIT_UNCONFIRMED)"
                )
            },
        )))
    }

    /// Moves a task according to the provider's word, from a query or a trusted callback.
    pub(super) async fn apply_remote(
        &self,
        task: &Task,
        status: RemoteStatus,
        leased: bool,
    ) -> Result<Outcome, RepoError> {
        let now = now_ms();
        let since = task.submitted_at.unwrap_or(task.created_at);
        let age = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
        let later = TaskUpdate {
            run_at: Some(after(now, next_poll_delay(age))),
            release_lease: true,
            // "No such task" counts only in a row.
            missing_answers: (task.missing_answers > 0).then_some(0),
            ..TaskUpdate::default()
        };
        match status {
            RemoteStatus::Missing { message } => self.missing_answer(task, message, later).await,
            RemoteStatus::Waiting => self.poll_later(task, later).await,
            RemoteStatus::Generating if task.state == TaskState::Submitted => {
                self.apply(task, Event::ProviderProgress, leased, later)
                    .await?;
                Ok(Outcome::Done)
            }
            RemoteStatus::Generating => self.poll_later(task, later).await,
            RemoteStatus::Succeeded {
                result_urls,
                credits,
                cost_time_ms,
            } => {
                // A job holding the task's lease with an ingest slot free stores the results
                // itself, under the same lease: no second claim, no round through the ingest
                // lane. Otherwise the lease goes and the ingest lane takes the task.
                let slot = if leased {
                    self.ingest_slots.try_take()
                } else {
                    None
                };
                let update = TaskUpdate {
                    result_source_urls: Some(result_urls),
                    credits,
                    cost_time_ms,
                    run_at: Some(now),
                    release_lease: slot.is_none(),
                    error: Some(None),
                    ..TaskUpdate::default()
                };
                let Some(ingesting) = self
                    .apply(task, Event::ProviderSucceeded, leased, update)
                    .await?
                else {
                    return Ok(Outcome::Done);
                };
                let Some(slot) = slot else {
                    self.ingest_wake.notify_one();
                    return Ok(Outcome::Done);
                };
                let settled = self.ingest_leased(ingesting).await;
                drop(slot);
                if self.ingest_slots.take_wanted() {
                    self.ingest_wake.notify_one();
                }
                settled.map(|()| Outcome::Done)
            }
            RemoteStatus::Failed { code, message } => Ok(Outcome::GiveUp(Reason::free(
                JobCode::ProviderFailed,
                format!(
                    "{} task failed (failCode {code}): {message}",
                    task.provider.to_uppercase()
                ),
            ))),
        }
    }
}
