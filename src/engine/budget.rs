//! Daily credit budgets, checked before a create is sent: each task is estimated at its
//! provider's price and counted against the global budget and its key's (in the database,
//! so every instance counts alike). A task that would exceed one is not sent: it waits
//! for the next UTC day or fails, by the operator's policy, with `budget_exhausted` and a
//! sentence naming the budget and when it resets. Once the task finishes, its estimate is
//! replaced by what the provider reported it used.

use std::time::Duration;

use super::Engine;
use super::job::{Outcome, Reason};
use crate::domain::JobCode;
use crate::domain::budget::{BudgetScope, CreditDay, PriceTable, credits_used};
use crate::storage::{BudgetCheck, CreditReservation, RepoError, Task};

/// The budgets the engine applies and the prices it estimates tasks at.
#[derive(Clone, Debug, Default)]
pub struct BudgetSettings {
    /// Credits all tasks together may use per UTC day; 0: no global budget.
    pub global_daily_credits: i64,
    /// A task over a budget fails; otherwise it waits for the reset.
    pub fail_when_spent: bool,
    /// What a task is estimated at, by provider.
    pub prices: PriceTable,
}

/// A budget resets at the day's end; waiting tasks come due within this much after it, so
/// a long queue does not land on the dispatcher in the same millisecond.
const RESET_SPREAD_MS: u64 = 60_000;

impl Engine {
    /// Counts `task`'s estimate against its budgets before its create is sent. `None`: it
    /// may go. Otherwise what becomes of it: it waits for the reset, or gives up, with
    /// `budget_exhausted`. The create slot its claim took (`claimed_at`) is given back, as
    /// nothing is sent.
    pub(super) async fn check_budget(
        &self,
        task: &Task,
        claimed_at: i64,
    ) -> Result<Option<Outcome>, RepoError> {
        let budget = &self.settings.budget;
        let now = super::now_ms();
        let day = CreditDay::of(now);
        let reservation = CreditReservation {
            task: &task.id,
            owner: task.owner.as_deref(),
            day: &day,
            credits: budget.prices.price_of(&task.provider),
            global_limit: budget.global_daily_credits,
            check_budgets: true,
            now,
        };
        let exceeded = match self.repo.reserve_credits(&reservation).await? {
            BudgetCheck::Reserved | BudgetCheck::AlreadyReserved => return Ok(None),
            BudgetCheck::Exceeded(exceeded) => exceeded,
        };
        self.metrics.budget_refused(match exceeded.scope {
            BudgetScope::Global => "global",
            BudgetScope::Key(_) => "key",
        });
        if let Some(registered) = self.providers.get(&task.provider)
            && !registered.gate().create_limits().is_unlimited()
            && let Err(e) = self.repo.return_create(&task.provider, claimed_at).await
        {
            tracing::warn!(task_id = %task.id, error = %e, "the unused create slot could not be given back; it frees when the window passes");
        }
        let message = exceeded.to_string();
        if budget.fail_when_spent {
            tracing::warn!(task_id = %task.id, reason = %message, "task failed: over its credit budget");
            return Ok(Some(Outcome::GiveUp(Reason::free(
                JobCode::BudgetExhausted,
                format!("not sent: {message}"),
            ))));
        }
        tracing::info!(task_id = %task.id, reason = %message, "task waits for its credit budget to reset");
        let until_reset = u64::try_from(exceeded.resets_at.saturating_sub(now)).unwrap_or(0);
        let spread = rand::random_range(0..RESET_SPREAD_MS);
        Ok(Some(Outcome::RetryIn {
            delay: Duration::from_millis(until_reset + spread),
            reason: Reason::free(
                JobCode::BudgetExhausted,
                format!(
                    "waiting: {message}; the task is sent then (or sooner if the budget is raised)"
                ),
            ),
        }))
    }

    /// At start, tasks waiting on a budget are looked at again: a budget may have been
    /// raised (the global one is configuration) while no worker ran.
    pub async fn recheck_budget_waiters(&self) {
        match self.repo.wake_budget_waiters(None, super::now_ms()).await {
            Ok(0) => {}
            Ok(woken) => {
                tracing::info!(
                    tasks = woken,
                    "tasks waiting on a credit budget are checked again"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "tasks waiting on a credit budget could not be checked again; they wait for the reset");
            }
        }
    }

    /// A finished task's estimate is replaced by what it used ([`credits_used`]).
    pub(super) async fn settle_budget(&self, task: &Task) {
        let used = credits_used(task);
        if let Err(e) = self.repo.settle_credits(&task.id, used).await {
            tracing::warn!(task_id = %task.id, error = %e, "the task's credits could not be settled; its estimate stays counted today");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_without_a_price_costs_nothing() {
        let settings = BudgetSettings {
            global_daily_credits: 0,
            fail_when_spent: false,
            prices: PriceTable(vec![("kie".into(), 4)]),
        };
        assert_eq!(settings.prices.price_of("kie"), 4);
        assert_eq!(settings.prices.price_of("gemini"), 0);
    }
}
