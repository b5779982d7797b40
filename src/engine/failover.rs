//! Provider failover by the operator's policy (`DARKROOM_FAILOVER=kie:gemini`, off by
//! default). Queued tasks of a provider paused for credits (a 402, the credit floor) or as
//! failing (`DARKROOM_FAILOVER_AFTER_FAILURES` failed creates in a row: 5xx or 429) move to
//! the next provider of the chain, and a task whose create attempts are used up on
//! retryable errors moves instead of failing. Never both: a move is one guarded update in
//! the database that takes only a task whose create is known not to have been made (no
//! provider id, never submitted, no callback, not pinned after an interrupted call), whose
//! request allowed it (`"fallback"`, or the operator's default), and never to a provider it
//! left; so every instance sharing the database agrees on where each task runs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::circuit::provider_label;
use super::credits::FLOOR_CODE;
use super::{Engine, Registered, now_ms};
use crate::domain::TaskId;
use crate::providers::ProviderError;
use crate::storage::{ProviderMove, RepoError, Task, TaskUpdate};

/// The pause of a provider whose creates keep failing (with failover on).
pub const FAILING_CODE: &str = "failing";

/// Why a task moved, as the task, the log and the metric say it.
pub const MOVED_FOR_CREDITS: &str = "credits";
pub const MOVED_FOR_FLOOR: &str = "credit_floor";
pub const MOVED_FOR_FAILING: &str = "failing";
pub const MOVED_FOR_ATTEMPTS: &str = "attempts";

/// Queued tasks moved per provider and dispatcher step (the rest in the next).
const MOVES_PER_STEP: usize = 100;

/// The operator's failover policy.
#[derive(Clone, Debug, Default)]
pub struct FailoverPolicy {
    /// Provider names in order; empty: off.
    pub chain: Vec<String>,
    /// Whether a task whose request did not say `fallback` may move.
    pub by_default: bool,
    /// Failed creates in a row that pause a provider as failing; 0: never.
    pub after_failures: u32,
    /// How long that pause lasts.
    pub pause: Duration,
}

impl FailoverPolicy {
    pub fn is_on(&self) -> bool {
        !self.chain.is_empty()
    }

    /// The providers after `provider` in the chain, in order.
    fn after<'a>(&'a self, provider: &str) -> impl Iterator<Item = &'a str> {
        let start = self
            .chain
            .iter()
            .position(|p| p == provider)
            .map_or(self.chain.len(), |at| at + 1);
        self.chain[start..].iter().map(String::as_str)
    }
}

/// Whether a retryable create error proves the create was not made: the provider answered
/// with an error status, or the request was never sent (an input could not be read for
/// upload). A timeout, a cut connection or an answer that could not be read prove nothing.
fn create_refused(code: &str) -> bool {
    code == "local_io" || (!code.is_empty() && code.bytes().all(|b| b.is_ascii_digit()))
}

/// Why queued tasks of a provider paused with `code` move, if they do: a 429 pause alone
/// does not (it lasts seconds); many in a row make the provider `failing`.
fn reason_of_pause(code: &str) -> Option<&'static str> {
    match code {
        "402" => Some(MOVED_FOR_CREDITS),
        FLOOR_CODE => Some(MOVED_FOR_FLOOR),
        FAILING_CODE => Some(MOVED_FOR_FAILING),
        _ => None,
    }
}

impl Engine {
    /// Where a task of `from` that left `left` may move now: the first provider after it in
    /// the chain that this instance has, it never left, and that is not paused itself.
    fn failover_target(&self, from: &str, left: &[String]) -> Option<&Registered> {
        self.settings
            .failover
            .after(from)
            .filter(|name| !left.iter().any(|l| l == name))
            .filter_map(|name| self.providers.get(name))
            .find(|target| target.gate().paused().is_none())
    }

    /// Moves queued tasks off every provider paused for a reason that moves them (a step of
    /// the dispatcher, before it claims). How many moved.
    pub(super) async fn fail_over_queued(&self) -> Result<usize, RepoError> {
        if !self.settings.failover.is_on() {
            return Ok(0);
        }
        let mut moved = 0;
        for registered in self.providers.iter() {
            let Some(reason) = registered
                .gate()
                .paused()
                .and_then(|pause| reason_of_pause(&pause.code))
            else {
                continue;
            };
            let from = registered.name();
            let Some(target) = self.failover_target(from, &[]) else {
                continue;
            };
            let tasks = self
                .repo
                .move_provider(&ProviderMove {
                    from,
                    to: target.name(),
                    model: target.model(),
                    reason,
                    by_default: self.settings.failover.by_default,
                    held: None,
                    limit: MOVES_PER_STEP,
                    now: now_ms(),
                })
                .await?;
            for task in &tasks {
                self.moved(task, from).await;
            }
            moved += tasks.len();
        }
        if moved > 0 {
            self.dispatch_wake.notify_one();
        }
        Ok(moved)
    }

    /// Moves `task` (being submitted under this worker's lease, its create refused with a
    /// retryable error) to the next provider instead of failing it, when the policy and its
    /// request allow. Whether it moved.
    pub(super) async fn fail_over_held(&self, task: &Task) -> Result<bool, RepoError> {
        if !self.settings.failover.is_on() {
            return Ok(false);
        }
        let Some(target) = self.failover_target(&task.provider, &task.failover.left) else {
            return Ok(false);
        };
        let worker = self.settings.worker_id.as_str();
        let held: (&TaskId, &str) = (&task.id, worker);
        let moved = self
            .repo
            .move_provider(&ProviderMove {
                from: &task.provider,
                to: target.name(),
                model: target.model(),
                reason: MOVED_FOR_ATTEMPTS,
                by_default: self.settings.failover.by_default,
                held: Some(held),
                limit: 1,
                now: now_ms(),
            })
            .await?;
        let Some(moved) = moved.first() else {
            return Ok(false);
        };
        self.moved(moved, &task.provider).await;
        self.dispatch_wake.notify_one();
        Ok(true)
    }

    /// Keeps `task` at its provider for good when `error` leaves open whether its create
    /// was made (a synchronous provider's timeout, an unreadable answer): it will be tried
    /// there again, never moved. `None` when another actor moved the task meanwhile.
    pub(super) async fn pin_unless_refused(
        &self,
        task: &Task,
        error: &ProviderError,
    ) -> Result<Option<()>, RepoError> {
        match error {
            ProviderError::Retryable { code, .. }
                if !create_refused(code) && task.failover.allowed != Some(false) =>
            {
                let pin = TaskUpdate {
                    pin_provider: true,
                    ..TaskUpdate::default()
                };
                Ok(self.touch(task, pin).await?.map(|_| ()))
            }
            _ => Ok(Some(())),
        }
    }

    /// A task moved: the log line, the metric, and the change published like any other.
    async fn moved(&self, task: &Task, from: &str) {
        let reason = task.failover.reason.as_deref().unwrap_or_default();
        tracing::info!(
            task_id = %task.id,
            from,
            to = %task.provider,
            reason,
            model = %task.model,
            "task moved to another provider (failover)"
        );
        self.metrics
            .provider_failover(from, &task.provider, static_reason(reason));
        // The estimate counted at the provider it left never became a create there: it is
        // taken back, and the task is counted at its new provider's price when it is sent.
        if let Err(e) = self.repo.settle_credits(&task.id, Some(0)).await {
            tracing::warn!(task_id = %task.id, error = %e, "the estimate counted at the provider the task left could not be taken back");
        }
        self.published(task);
    }

    /// Counts a failed create of `provider` (5xx, 429: `failed`) or clears the count (any
    /// other answer). With failover on, the count reaching the policy's threshold pauses the
    /// provider as failing, on every instance, so its queued tasks move.
    pub(super) async fn count_create(&self, provider: &str, failed: bool, error: &str) {
        let Some(registered) = self.providers.get(provider) else {
            return;
        };
        let gate = registered.gate();
        if !failed {
            gate.failed_creates.store(0, Ordering::Relaxed);
            return;
        }
        let in_a_row = gate.failed_creates.fetch_add(1, Ordering::Relaxed) + 1;
        let policy = &self.settings.failover;
        if !policy.is_on() || policy.after_failures == 0 || in_a_row < policy.after_failures {
            return;
        }
        gate.failed_creates.store(0, Ordering::Relaxed);
        let reason = format!(
            "{in_a_row} creates in a row failed (the last: {error}); its queued tasks move to the next provider"
        );
        if let Some(shared) = gate.pause(policy.pause, FAILING_CODE, &reason) {
            self.metrics.provider_paused(provider, FAILING_CODE);
            tracing::warn!(
                provider,
                failures = in_a_row,
                "{} is failing: paused for failover",
                provider_label(provider)
            );
            if let Err(e) = self.repo.pause_provider(provider, &shared).await {
                tracing::warn!(provider, error = %e, "the pause could not be written to the database: it holds on this instance only");
            }
        }
    }
}

/// A reason read back from a row, as one of the bounded metric label values.
fn static_reason(reason: &str) -> &'static str {
    match reason {
        MOVED_FOR_CREDITS => MOVED_FOR_CREDITS,
        MOVED_FOR_FLOOR => MOVED_FOR_FLOOR,
        MOVED_FOR_FAILING => MOVED_FOR_FAILING,
        MOVED_FOR_ATTEMPTS => MOVED_FOR_ATTEMPTS,
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_moves_only_forward_along_the_chain() {
        let policy = FailoverPolicy {
            chain: vec!["kie".into(), "gemini".into()],
            ..FailoverPolicy::default()
        };
        assert_eq!(policy.after("kie").collect::<Vec<_>>(), ["gemini"]);
        assert!(policy.after("gemini").next().is_none());
        assert!(policy.after("other").next().is_none());
        assert!(!FailoverPolicy::default().is_on());
    }

    #[test]
    fn only_an_error_status_proves_a_create_was_refused() {
        for refused in ["500", "455", "429", "503", "local_io"] {
            assert!(create_refused(refused), "{refused}");
        }
        for unsure in ["timeout", "transport", "bad_answer", ""] {
            assert!(!create_refused(unsure), "{unsure}");
        }
    }

    #[test]
    fn only_pauses_that_last_move_tasks() {
        assert_eq!(reason_of_pause("402"), Some(MOVED_FOR_CREDITS));
        assert_eq!(reason_of_pause(FLOOR_CODE), Some(MOVED_FOR_FLOOR));
        assert_eq!(reason_of_pause(FAILING_CODE), Some(MOVED_FOR_FAILING));
        assert_eq!(reason_of_pause("429"), None);
    }
}
