//! What the engine tells the metrics: each state change as it is made (stage times from the
//! task's own timestamps, outcomes, failure codes, credits), and at each scrape the gauges
//! that are read rather than counted (the queue from the database, each provider's pause,
//! circuit and create window).

use std::time::Duration;

use super::Engine;
use crate::domain::TaskState;
use crate::storage::{RepoError, Task};
use crate::telemetry::names::{self, stage};

/// Milliseconds from `from` to `to`, as a duration (0 when `to` is earlier).
fn between(from: i64, to: i64) -> Duration {
    Duration::from_millis(u64::try_from(to.saturating_sub(from)).unwrap_or(0))
}

impl Engine {
    /// Records what a state change from `before` to `after` completed.
    pub(super) fn observe_transition(&self, before: &Task, after: &Task) {
        let metrics = &self.metrics;
        let provider = after.provider.as_str();
        let now = after.updated_at;
        // The provider's answer: its callback when one came after the create, else now
        // (the poll, or the synchronous answer, that found the result).
        let answered_at = |fallback: i64| {
            after
                .callback_at
                .filter(|at| after.submitted_at.is_some_and(|s| *at >= s))
                .unwrap_or(fallback)
                .min(fallback)
        };
        match (before.state, after.state) {
            (TaskState::Submitting, TaskState::Submitted) => {
                if let Some(submitted) = after.submitted_at {
                    let took = between(after.created_at, submitted);
                    metrics.task_stage(provider, stage::QUEUED_TO_SUBMITTED, took);
                }
            }
            // A synchronous provider: submitted and answered in one call.
            (TaskState::Submitting, TaskState::Ingesting) => {
                metrics.task_stage(
                    provider,
                    stage::QUEUED_TO_SUBMITTED,
                    between(after.created_at, now),
                );
                metrics.task_stage(provider, stage::SUBMITTED_TO_ANSWER, Duration::ZERO);
            }
            (TaskState::Submitted | TaskState::Running, TaskState::Ingesting) => {
                if let Some(submitted) = after.submitted_at {
                    let took = between(submitted, answered_at(now));
                    metrics.task_stage(provider, stage::SUBMITTED_TO_ANSWER, took);
                }
            }
            _ => {}
        }
        if !after.state.is_terminal() {
            return;
        }
        let finished_at = after.completed_at.unwrap_or(now);
        let failure = match after.state {
            TaskState::Failed | TaskState::Expired => after.error_code.as_deref(),
            _ => None,
        };
        metrics.task_finished(provider, after.state.as_str(), failure);
        if after.state == TaskState::Succeeded {
            // Ingest started when the task entered `ingesting`: its row's last change before
            // this one, unless a callback (the answer) came earlier.
            let answered = answered_at(before.updated_at);
            metrics.task_stage(
                provider,
                stage::ANSWER_TO_STORED,
                between(answered, finished_at),
            );
            metrics.task_stage(
                provider,
                stage::END_TO_END,
                between(after.created_at, finished_at),
            );
            if let Some(credits) = after.credits.and_then(|c| u64::try_from(c).ok()) {
                metrics.credits(provider, credits);
            }
        }
    }

    /// A request to a provider and its answer's class.
    pub(super) fn observe_provider_call(
        &self,
        provider: &'static str,
        operation: &'static str,
        status: &'static str,
        took: Duration,
    ) {
        self.metrics
            .provider_request(provider, operation, status, took);
    }

    /// Sets the gauges read at scrape time: unfinished tasks by provider and state (one
    /// grouped count in the database), and each provider's pause, circuit and create window.
    pub async fn refresh_gauges(&self) -> Result<(), RepoError> {
        let counts = self.repo.count_unfinished().await?;
        let metrics = &self.metrics;
        for registered in self.providers.iter() {
            let name = registered.name();
            let gate = registered.gate();
            for state in names::UNFINISHED_STATES {
                let count = counts
                    .iter()
                    .find(|(p, s, _)| p == name && s.as_str() == state)
                    .map_or(0, |(_, _, n)| *n);
                metrics.queue(name, state, count);
            }
            let flag = |on: bool| if on { 1.0 } else { 0.0 };
            metrics.provider_gauge(names::PROVIDER_PAUSED, name, flag(gate.paused().is_some()));
            metrics.provider_gauge(
                names::PROVIDER_UNREACHABLE,
                name,
                flag(gate.circuit.outage().is_some()),
            );
            #[allow(clippy::cast_precision_loss)]
            {
                metrics.provider_gauge(
                    names::PROVIDER_CREATE_SLOTS_IN_USE,
                    name,
                    gate.creates.in_use() as f64,
                );
                metrics.provider_gauge(
                    names::PROVIDER_CREATE_SLOTS,
                    name,
                    gate.creates.max() as f64,
                );
            }
        }
        // Tasks of a provider no longer configured still count.
        for (provider, state, count) in &counts {
            if self.providers.get(provider).is_none() {
                metrics.queue(provider, state.as_str(), *count);
            }
        }
        self.refresh_budget_gauges().await
    }

    /// Today's budgets (the global one and every key's with a budget `shown`), with what
    /// is counted against each: for `/api/stats` and the budget gauges.
    pub async fn budgets_today(
        &self,
        shown: impl Fn(&str) -> bool,
    ) -> Result<crate::views::budgets::BudgetsView, RepoError> {
        let day = crate::domain::budget::CreditDay::of(super::now_ms());
        let spent: Vec<_> = self
            .repo
            .credit_spend(&day.name)
            .await?
            .into_iter()
            .map(|s| (s.scope, s.credits))
            .collect();
        let budget = &self.settings.budget;
        Ok(crate::views::budgets::budgets_view(
            &day,
            budget.fail_when_spent,
            budget.global_daily_credits,
            &spent,
            &self.repo.daily_budgets().await?,
            shown,
        ))
    }

    /// Today's budgets: the global one, what is counted against it, and how many keys have
    /// spent theirs.
    async fn refresh_budget_gauges(&self) -> Result<(), RepoError> {
        let view = self.budgets_today(|_| true).await?;
        let budget = &self.settings.budget;
        let exhausted = view
            .keys
            .iter()
            .filter(|k| k.budget.remaining == Some(0))
            .count();
        #[allow(clippy::cast_precision_loss)]
        {
            let metrics = &self.metrics;
            metrics.plain_gauge(
                names::BUDGET_DAILY_CREDITS,
                budget.global_daily_credits as f64,
            );
            metrics.plain_gauge(names::BUDGET_SPENT_CREDITS, view.global.spent as f64);
            metrics.plain_gauge(names::BUDGET_KEYS_EXHAUSTED, exhausted as f64);
        }
        Ok(())
    }
}

/// The class of a provider's answer, for [`names::PROVIDER_REQUESTS`]: its code's hundreds
/// (`4xx`), `429` on its own, `timeout` (sent, no answer), `unreachable` (nothing sent).
pub(super) fn answer_class(result: Result<(), &crate::providers::ProviderError>) -> &'static str {
    use crate::providers::ProviderError;
    let code = match result {
        Ok(()) => return "2xx",
        Err(ProviderError::Unreachable(_)) => return "unreachable",
        Err(ProviderError::Ambiguous(_)) => return "timeout",
        Err(ProviderError::Input(_)) => return "input",
        Err(ProviderError::Retryable { code, .. } | ProviderError::Permanent { code, .. }) => code,
    };
    match code.parse::<u16>() {
        Ok(429) => "429",
        Ok(200..=299) => "2xx",
        Ok(300..=399) => "3xx",
        Ok(400..=499) => "4xx",
        Ok(500..=599) => "5xx",
        _ => "error",
    }
}
