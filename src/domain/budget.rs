//! Daily credit budgets: the UTC day credits are counted in, which budget a task met, and
//! the sentence that tells a client which budget it is and when it resets.

use std::fmt;

use super::task_row::Task;
use super::time::iso_time;
use super::{JobCode, TaskState};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The scope name of the global budget in the spend table (key names cannot be `*`).
pub const GLOBAL_SCOPE: &str = "*";

/// A UTC day budgets are counted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditDay {
    /// `2026-12-01`.
    pub name: String,
    /// When the next day starts (Unix ms): when every budget resets.
    pub resets_at: i64,
}

impl CreditDay {
    /// The UTC day holding `ms` (Unix milliseconds).
    pub fn of(ms: i64) -> Self {
        let start = ms.div_euclid(DAY_MS) * DAY_MS;
        let name = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(start)
            .unwrap_or_default()
            .format("%Y-%m-%d")
            .to_string();
        Self {
            name,
            resets_at: start + DAY_MS,
        }
    }
}

/// Credits a task is estimated at before it is sent, by provider name; a provider not
/// named costs 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceTable(pub Vec<(String, i64)>);

impl PriceTable {
    /// The estimate of one task of `provider`.
    pub fn price_of(&self, provider: &str) -> i64 {
        self.0
            .iter()
            .find(|(name, _)| name == provider)
            .map_or(0, |(_, credits)| *credits)
    }
}

/// Whose budget: every task's, or one key's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetScope {
    Global,
    Key(String),
}

impl BudgetScope {
    /// The scope's name in the spend table.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Global => GLOBAL_SCOPE,
            Self::Key(name) => name,
        }
    }

    pub fn from_stored(scope: &str) -> Self {
        if scope == GLOBAL_SCOPE {
            Self::Global
        } else {
            Self::Key(scope.to_owned())
        }
    }
}

/// A budget a task would exceed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetExceeded {
    pub scope: BudgetScope,
    /// The budget, credits per day.
    pub limit: i64,
    /// Credits already counted today in this scope.
    pub spent: i64,
    /// What the task is estimated at.
    pub needed: i64,
    /// When the budget resets (Unix ms).
    pub resets_at: i64,
}

impl fmt::Display for BudgetExceeded {
    /// `the daily credit budget of key "alice" (100 credits) is spent: 100 counted today,
    /// this task needs 4; it resets at 2026-12-02T00:00:00.000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            BudgetScope::Global => write!(
                f,
                "the global daily credit budget (DARKROOM_DAILY_CREDIT_BUDGET, {} credits)",
                self.limit
            )?,
            BudgetScope::Key(name) => write!(
                f,
                "the daily credit budget of key {name:?} ({} credits)",
                self.limit
            )?,
        }
        write!(
            f,
            " is spent: {} counted today, this task needs {}; it resets at {}",
            self.spent,
            self.needed,
            iso_time(self.resets_at)
        )
    }
}

/// What a finished task used, replacing its estimate: the credits its provider reported;
/// else `None` (the estimate stands) for a task that succeeded or may have been billed (its
/// create reached the provider, or may have), and 0 for one whose create never did.
pub fn credits_used(task: &Task) -> Option<i64> {
    task.credits.or_else(|| {
        let may_be_billed = task.state == TaskState::Succeeded
            || task.provider_task_id.is_some()
            || task.error_code.as_deref().is_some_and(|code| {
                code == JobCode::SubmitUnconfirmed.as_str()
                    || code == JobCode::SubmitAmbiguous.as_str()
            });
        (!may_be_billed).then_some(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_runs_from_utc_midnight_to_the_next() {
        // 2025-12-01T13:45:00Z
        let day = CreditDay::of(1_764_596_700_000);
        assert_eq!(day.name, "2025-12-01");
        assert_eq!(iso_time(day.resets_at), "2025-12-02T00:00:00.000Z");
        // The last millisecond of the day is still in it; the next is not.
        assert_eq!(CreditDay::of(day.resets_at - 1).name, "2025-12-01");
        assert_eq!(CreditDay::of(day.resets_at).name, "2025-12-02");
    }

    #[test]
    fn the_sentence_names_the_budget_and_when_it_resets() {
        let exceeded = BudgetExceeded {
            scope: BudgetScope::Key("alice".into()),
            limit: 12,
            spent: 12,
            needed: 4,
            resets_at: CreditDay::of(1_764_596_700_000).resets_at,
        };
        assert_eq!(
            exceeded.to_string(),
            "the daily credit budget of key \"alice\" (12 credits) is spent: 12 counted today, this task needs 4; it resets at 2025-12-02T00:00:00.000Z"
        );
        let global = BudgetExceeded {
            scope: BudgetScope::Global,
            ..exceeded
        };
        assert!(global.to_string().starts_with(
            "the global daily credit budget (DARKROOM_DAILY_CREDIT_BUDGET, 12 credits) is spent"
        ));
        assert_eq!(BudgetScope::from_stored("*"), BudgetScope::Global);
        assert_eq!(BudgetScope::from_stored("bob").as_str(), "bob");
    }
}
