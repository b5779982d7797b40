//! The webhook lane: a delivery whose task is final is claimed under a lease like any other
//! job (see `worker.rs`), the [`Deliverer`] makes the attempt (payload, signature, POST),
//! and its outcome is recorded on the Standard Webhooks schedule.

use std::time::Duration;

use super::Engine;
use super::job::{Growth, Outcome, Reason, RetryPolicy};
use crate::clock::now_ms;
use crate::domain::JobCode;
use crate::storage::{RepoError, WebhookDelivery};
use crate::webhooks::{ATTEMPTS, Attempted, Deliverer, LATER_RETRIES};

/// Deliveries attempted at once.
pub(super) const WEBHOOK_CONCURRENCY: usize = 8;

/// `first_retry`, then 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts, no jitter.
pub(super) fn webhook_retry(first_retry: Duration) -> RetryPolicy {
    RetryPolicy {
        first: first_retry,
        growth: Growth::Steps(&LATER_RETRIES),
        cap: Duration::MAX,
        max_attempts: Some(ATTEMPTS),
        jitter: 0.0,
    }
}

impl Engine {
    /// One attempt at a claimed delivery, and its outcome recorded.
    pub(super) async fn deliver(
        &self,
        deliverer: &Deliverer,
        delivery: &WebhookDelivery,
    ) -> Result<(), RepoError> {
        let attempt = delivery.attempts + 1;
        let (id, task_id) = (&delivery.id, &delivery.task_id);
        let (outcome, status) = match deliverer.attempt(delivery, now_ms()).await? {
            Attempted::Delivered { status } => {
                tracing::info!(webhook_id = %id, task_id = %task_id, attempt, status, "webhook delivered");
                (Outcome::Done, Some(status))
            }
            Attempted::TaskMissing => {
                let reason = Reason::free(JobCode::WebhookTaskMissing, "the task no longer exists");
                (Outcome::GiveUp(reason), None)
            }
            Attempted::Failed(e) => {
                let status = e.status();
                let retry = e.is_retryable();
                let delay = retry
                    .then(|| webhook_retry(deliverer.first_retry).delay(attempt))
                    .flatten();
                let code = if retry {
                    JobCode::WebhookFailed
                } else {
                    JobCode::WebhookRefused
                };
                let reason = Reason::spent(code, e.to_string());
                match delay {
                    Some(delay) => {
                        tracing::warn!(webhook_id = %id, task_id = %task_id, attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "webhook attempt failed; will retry");
                        (Outcome::RetryIn { delay, reason }, status)
                    }
                    None => {
                        tracing::error!(webhook_id = %id, task_id = %task_id, attempt, code = %reason.code, error = %e, "webhook not delivered; giving up");
                        (Outcome::GiveUp(reason), status)
                    }
                }
            }
        };
        self.settle_delivery(delivery, outcome, status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_follow_the_standard_webhooks_schedule() {
        let policy = webhook_retry(Duration::from_secs(5));
        let waits: Vec<Option<u64>> = (1..=ATTEMPTS)
            .map(|n| policy.delay(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            waits,
            [
                Some(5),
                Some(5 * 60),
                Some(30 * 60),
                Some(2 * 3600),
                Some(5 * 3600),
                Some(10 * 3600),
                Some(10 * 3600),
                None
            ]
        );
    }
}
