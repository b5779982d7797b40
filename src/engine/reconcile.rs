//! Asking the provider about tasks whose answer is due: right after a callback (which is
//! only a hint, since KIE does not sign its body), and on a backing-off schedule when no
//! callback comes, until the deadline.

use std::time::Duration;

use super::{Engine, after, backoff, now_ms};
use crate::domain::{Event, TaskState};
use crate::providers::{Delivery, RemoteStatus};
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

impl Engine {
    pub(super) async fn reconcile(&self, task: Task) -> Result<(), RepoError> {
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
            return self.touch(&task, later).await.map(|_| ());
        };
        if age >= self.settings.task_deadline {
            let minutes = self.settings.task_deadline.as_secs() / 60;
            let update = TaskUpdate {
                error: Some(Some((
                    "deadline_exceeded".to_owned(),
                    format!("no result from the provider within {minutes} minutes"),
                ))),
                ..TaskUpdate::default()
            };
            return self
                .apply(&task, Event::Expire, true, update)
                .await
                .map(|_| ());
        }
        // Only providers that report later can be asked; a task of any other is left to
        // its deadline (the dispatcher never leaves one in this state).
        let Some(provider) = self
            .providers
            .get(&task.provider)
            .map(|p| p.provider().clone())
            .filter(|p| p.delivery() == Delivery::Later)
        else {
            tracing::warn!(task_id = %task.id, provider = %task.provider, "no provider to ask about this task; waiting for its deadline");
            return self.touch(&task, later).await.map(|_| ());
        };
        match provider.query(&provider_task_id).await {
            Ok(status) => self.apply_remote(&task, status, true).await,
            Err(error) => {
                tracing::warn!(task_id = %task.id, error = %error, "provider query failed");
                let retry_after = match &error {
                    crate::providers::ProviderError::Retryable { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let delay = backoff(task.attempts.min(4), retry_after).max(next_poll_delay(age));
                let update = TaskUpdate {
                    run_at: Some(after(now, delay)),
                    ..later
                };
                self.touch(&task, update).await.map(|_| ())
            }
        }
    }

    /// The window for a create with no answer has passed and no callback named the task.
    async fn settle_unconfirmed(&self, task: &Task) -> Result<(), RepoError> {
        // Opting in to resubmission still spends attempts: a provider that never answers
        // must not be paid again and again.
        if self.settings.resubmit_unconfirmed && task.attempts < self.settings.max_attempts {
            tracing::warn!(task_id = %task.id, "unconfirmed create: submitting again as configured (the provider may bill twice)");
            let update = TaskUpdate {
                run_at: Some(now_ms()),
                release_lease: true,
                error: Some(Some((
                    "resubmitted_unconfirmed".to_owned(),
                    "the first create got no answer and no callback came; submitted again"
                        .to_owned(),
                ))),
                ..TaskUpdate::default()
            };
            let moved = self.apply(task, Event::Resubmit, true, update).await?;
            if moved.is_some() {
                self.dispatch_wake.notify_one();
            }
            return Ok(());
        }
        let minutes = self.settings.unconfirmed_window.as_secs().div_ceil(60);
        let update = TaskUpdate {
            error: Some(Some((
                "submit_unconfirmed".to_owned(),
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
            ))),
            ..TaskUpdate::default()
        };
        self.apply(task, Event::ProviderFailed, true, update)
            .await
            .map(|_| ())
    }

    /// Moves a task according to the provider's word, from a query or a trusted callback.
    pub(super) async fn apply_remote(
        &self,
        task: &Task,
        status: RemoteStatus,
        leased: bool,
    ) -> Result<(), RepoError> {
        let now = now_ms();
        let since = task.submitted_at.unwrap_or(task.created_at);
        let age = Duration::from_millis(u64::try_from(now - since).unwrap_or(0));
        let later = TaskUpdate {
            run_at: Some(after(now, next_poll_delay(age))),
            release_lease: true,
            ..TaskUpdate::default()
        };
        match status {
            RemoteStatus::Waiting => self.touch(task, later).await.map(|_| ()),
            RemoteStatus::Generating if task.state == TaskState::Submitted => self
                .apply(task, Event::ProviderProgress, leased, later)
                .await
                .map(|_| ()),
            RemoteStatus::Generating => self.touch(task, later).await.map(|_| ()),
            RemoteStatus::Succeeded {
                result_urls,
                credits,
                cost_time_ms,
            } => {
                let update = TaskUpdate {
                    result_source_urls: Some(result_urls),
                    credits,
                    cost_time_ms,
                    run_at: Some(now),
                    release_lease: true,
                    error: Some(None),
                    ..TaskUpdate::default()
                };
                if self
                    .apply(task, Event::ProviderSucceeded, leased, update)
                    .await?
                    .is_some()
                {
                    self.ingest_wake.notify_one();
                }
                Ok(())
            }
            RemoteStatus::Failed { code, message } => {
                let update = TaskUpdate {
                    error: Some(Some((
                        "provider_failed".to_owned(),
                        format!(
                            "{} task failed (failCode {code}): {message}",
                            task.provider.to_uppercase()
                        ),
                    ))),
                    ..TaskUpdate::default()
                };
                self.apply(task, Event::ProviderFailed, leased, update)
                    .await
                    .map(|_| ())
            }
        }
    }
}
