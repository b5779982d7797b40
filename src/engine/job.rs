//! One job model. Every stage (submit, reconcile, ingest, inline generation, webhook
//! delivery) ends its try with an [`Outcome`]: done, try again after a delay, or give up
//! with a stable code and a sentence. The waits come from a [`RetryPolicy`]. An outcome
//! becomes a guarded change in one place: [`Engine::settle`] for a task (the guarded
//! update, the status board, the event, the bucket record) and [`Engine::settle_delivery`]
//! for a webhook delivery.
//!
//! A stage whose success is a transition with data of its own (accepted with the
//! provider's id, succeeded with results) makes that guarded transition itself and
//! returns [`Outcome::Done`]; retries and give-ups always go through here. A stage with
//! work left after giving up (ingest removes the results it had stored) or that moved the
//! task on since its claim (the inline store) calls `settle` itself and returns `Done`.

use std::time::Duration;

use rand::Rng;

use super::{Engine, after, now_ms};
use crate::domain::{Event, JobCode, TaskState};
use crate::storage::{DeliveryOutcome, RepoError, Task, TaskUpdate, WebhookDelivery};

/// How the wait grows from one failed attempt to the next.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Growth {
    /// Each wait is the previous one times this factor.
    Factor(u32),
    /// The waits after the second attempt on, in order; past the end, the last again.
    Steps(&'static [Duration]),
}

/// When a failed attempt is tried again, and when not any more.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt.
    pub first: Duration,
    pub growth: Growth,
    /// No wait is longer (before jitter).
    pub cap: Duration,
    /// Attempts in all; `None` never gives up.
    pub max_attempts: Option<u32>,
    /// Each wait is drawn from ± this fraction of itself (0.2: ±20 %).
    pub jitter: f64,
}

impl RetryPolicy {
    /// Capped exponential backoff, doubling, with ±20 % jitter.
    pub const fn doubling(first: Duration, cap: Duration, max_attempts: Option<u32>) -> Self {
        Self {
            first,
            growth: Growth::Factor(2),
            cap,
            max_attempts,
            jitter: 0.2,
        }
    }

    /// The wait after failed attempt number `attempt` (1-based; 0 reads as 1), or `None`
    /// when that was the last attempt allowed.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if self.exhausted(attempt) {
            return None;
        }
        let step = attempt.max(1) - 1;
        let base = match self.growth {
            Growth::Factor(factor) => self
                .first
                .saturating_mul(factor.saturating_pow(step.min(16))),
            Growth::Steps(steps) => match step.checked_sub(1) {
                None => self.first,
                Some(n) => steps
                    .get(n as usize)
                    .or(steps.last())
                    .copied()
                    .unwrap_or(self.first),
            },
        };
        let base = base.min(self.cap);
        if self.jitter <= 0.0 {
            return Some(base);
        }
        let spread = rand::rng().random_range(1.0 - self.jitter..1.0 + self.jitter);
        Some(base.mul_f64(spread))
    }

    /// Whether attempt number `attempt` (1-based) was the last one allowed.
    pub fn exhausted(&self, attempt: u32) -> bool {
        self.max_attempts.is_some_and(|max| attempt >= max)
    }
}

/// Whether a try counts against the task's attempts. A try that reached the provider or
/// the result's host counts; a wait for something outside the task (a paused or unreachable
/// provider, a bucket that refuses writes) and a decision about it (a deadline) do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Spent,
    Free,
}

/// Why a job waits or ended: a stable code and a sentence for a person.
#[derive(Clone, Debug, PartialEq)]
pub struct Reason {
    pub code: JobCode,
    pub message: String,
    pub attempt: Attempt,
}

impl Reason {
    /// A try that counts against the task's attempts.
    pub fn spent(code: JobCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            attempt: Attempt::Spent,
        }
    }

    /// A try that does not count.
    pub fn free(code: JobCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            attempt: Attempt::Free,
        }
    }
}

/// How a stage's try ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The work is done (or moved on by a transition the stage made itself).
    Done,
    /// Try again after `delay`. A task being submitted goes back to the queue; any other
    /// keeps its state. The reason is shown on the task meanwhile.
    RetryIn { delay: Duration, reason: Reason },
    /// Stop for good. A task fails (it expires for `deadline_exceeded`).
    GiveUp(Reason),
}

/// The event that ends a task giving up in `state`.
fn give_up_event(state: TaskState, code: &JobCode) -> Event {
    match (state, code) {
        (_, JobCode::DeadlineExceeded) => Event::Expire,
        (TaskState::Submitting, _) => Event::Rejected,
        (TaskState::Ingesting, _) => Event::IngestFailed,
        _ => Event::ProviderFailed,
    }
}

impl Engine {
    /// Turns a stage's outcome for `task` (as claimed, in its state then) into the guarded
    /// update, when `leased` only while this worker still holds the lease. Returns the task
    /// as changed; `None` when nothing changed (done, or another actor moved it first).
    pub(super) async fn settle(
        &self,
        task: &Task,
        outcome: Outcome,
        leased: bool,
    ) -> Result<Option<Task>, RepoError> {
        match outcome {
            Outcome::Done => Ok(None),
            Outcome::RetryIn { delay, reason } => {
                let update = TaskUpdate {
                    run_at: Some(after(now_ms(), delay)),
                    release_lease: true,
                    add_attempt: reason.attempt == Attempt::Spent,
                    error: Some(Some((reason.code.as_str().to_owned(), reason.message))),
                    ..TaskUpdate::default()
                };
                // Only a task being submitted changes state to wait: back to the queue.
                if task.state == TaskState::Submitting {
                    self.apply(task, Event::RetryLater, leased, update).await
                } else {
                    self.touch(task, update).await
                }
            }
            Outcome::GiveUp(reason) => {
                let spent = reason.attempt == Attempt::Spent;
                let event = give_up_event(task.state, &reason.code);
                let update = TaskUpdate {
                    add_attempt: spent,
                    // A refused create was still sent: it is when the provider had it.
                    submitted_at: (spent && task.state == TaskState::Submitting).then(now_ms),
                    error: Some(Some((reason.code.as_str().to_owned(), reason.message))),
                    ..TaskUpdate::default()
                };
                self.apply(task, event, leased, update).await
            }
        }
    }

    /// Records a webhook delivery attempt's outcome: `status` is the receiver's answer, if
    /// one came.
    pub(super) async fn settle_delivery(
        &self,
        delivery: &WebhookDelivery,
        outcome: Outcome,
        status: Option<u16>,
    ) -> Result<(), RepoError> {
        let now = now_ms();
        self.metrics.webhook(match outcome {
            Outcome::Done => "delivered",
            Outcome::RetryIn { .. } => "retry",
            Outcome::GiveUp(_) => "gave_up",
        });
        let recorded = match outcome {
            Outcome::Done => DeliveryOutcome::Delivered {
                status: status.unwrap_or(200),
            },
            Outcome::RetryIn { delay, reason } => DeliveryOutcome::Retry {
                run_at: after(now, delay),
                status,
                error: reason.message,
            },
            Outcome::GiveUp(reason) => DeliveryOutcome::GaveUp {
                status,
                error: reason.message,
            },
        };
        self.repo.finish_webhook(&delivery.id, &recorded, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATER: [Duration; 2] = [Duration::from_secs(60), Duration::from_secs(600)];

    #[test]
    fn doubling_is_capped_and_gives_up_after_the_last_attempt() {
        let policy = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::doubling(Duration::from_secs(4), Duration::from_secs(20), Some(5))
        };
        let waits: Vec<Option<u64>> = (1..=5)
            .map(|n| policy.delay(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(waits, [Some(4), Some(8), Some(16), Some(20), None]);
        assert_eq!(policy.delay(0), policy.delay(1));
        assert!(policy.exhausted(5) && !policy.exhausted(4));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let policy = RetryPolicy::doubling(Duration::from_secs(10), Duration::from_secs(10), None);
        for _ in 0..100 {
            let wait = policy.delay(3).unwrap();
            assert!(wait >= Duration::from_secs(8) && wait <= Duration::from_secs(12));
        }
        assert!(policy.delay(u32::MAX).is_some(), "never gives up");
    }

    #[test]
    fn steps_follow_the_first_wait_in_order() {
        let policy = RetryPolicy {
            first: Duration::from_secs(5),
            growth: Growth::Steps(&LATER),
            cap: Duration::from_secs(3600),
            max_attempts: Some(4),
            jitter: 0.0,
        };
        let waits: Vec<Option<u64>> = (1..=4)
            .map(|n| policy.delay(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(waits, [Some(5), Some(60), Some(600), None]);
    }

    #[test]
    fn giving_up_ends_in_the_state_the_stage_implies() {
        let code = JobCode::ProviderFailed;
        assert_eq!(give_up_event(TaskState::Submitting, &code), Event::Rejected);
        assert_eq!(
            give_up_event(TaskState::Ingesting, &code),
            Event::IngestFailed
        );
        assert_eq!(
            give_up_event(TaskState::Running, &code),
            Event::ProviderFailed
        );
        assert_eq!(
            give_up_event(TaskState::Submitted, &JobCode::DeadlineExceeded),
            Event::Expire
        );
    }
}
