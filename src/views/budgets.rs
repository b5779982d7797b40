//! The daily credit budgets as `GET /api/stats` shows them: today's (UTC) global budget
//! and the keys' budgets, each with what is counted against it and what is left.

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::budget::{BudgetScope, CreditDay};
use crate::domain::time::iso_time;

/// Today's budgets.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetsView {
    /// The UTC day counted, `2026-12-01`.
    pub day: String,
    /// When every budget resets (the next UTC midnight).
    #[schema(format = DateTime)]
    pub resets_at: String,
    /// `wait` (a task over a budget stays queued until the reset) or `fail`.
    pub policy: &'static str,
    /// Every task together (`DARKROOM_DAILY_CREDIT_BUDGET`).
    pub global: BudgetView,
    /// Keys with a budget or with credits counted today: the calling key's own, or every
    /// key for a caller who sees every task. By name.
    pub keys: Vec<KeyBudgetView>,
}

/// One budget today.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetView {
    /// Credits per day; null: no budget.
    pub daily_credits: Option<i64>,
    /// Credits counted today: estimates of tasks not finished yet, what finished tasks used.
    pub spent: i64,
    /// What is left today; null without a budget.
    pub remaining: Option<i64>,
}

/// One key's budget today.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyBudgetView {
    pub key: String,
    #[serde(flatten)]
    pub budget: BudgetView,
}

fn budget(limit: Option<i64>, spent: i64) -> BudgetView {
    let limit = limit.filter(|n| *n > 0);
    BudgetView {
        daily_credits: limit,
        spent,
        remaining: limit.map(|n| (n - spent).max(0)),
    }
}

/// Today's budgets: `spent` is the day's spend by scope, `key_budgets` every key's budget;
/// only keys `shown` accepts are listed.
pub fn budgets_view(
    day: &CreditDay,
    fail_when_spent: bool,
    global_limit: i64,
    spent: &[(BudgetScope, i64)],
    key_budgets: &[(String, i64)],
    shown: impl Fn(&str) -> bool,
) -> BudgetsView {
    let spent_in = |scope: &BudgetScope| {
        spent
            .iter()
            .find(|(s, _)| s == scope)
            .map_or(0, |(_, n)| *n)
    };
    let mut names: Vec<&str> = key_budgets.iter().map(|(k, _)| k.as_str()).collect();
    names.extend(spent.iter().filter_map(|(s, _)| match s {
        BudgetScope::Key(name) => Some(name.as_str()),
        BudgetScope::Global => None,
    }));
    names.sort_unstable();
    names.dedup();
    let keys = names
        .into_iter()
        .filter(|name| shown(name))
        .map(|name| {
            let limit = key_budgets.iter().find(|(k, _)| k == name).map(|(_, n)| *n);
            KeyBudgetView {
                key: name.to_owned(),
                budget: budget(limit, spent_in(&BudgetScope::Key(name.to_owned()))),
            }
        })
        .collect();
    BudgetsView {
        day: day.name.clone(),
        resets_at: iso_time(day.resets_at),
        policy: if fail_when_spent { "fail" } else { "wait" },
        global: budget(Some(global_limit), spent_in(&BudgetScope::Global)),
        keys,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_shows_its_budget_and_what_is_left() {
        let day = CreditDay::of(1_764_596_700_000);
        let spent = [
            (BudgetScope::Global, 30),
            (BudgetScope::Key("alice".into()), 14),
            (BudgetScope::Key("carol".into()), 16),
        ];
        let budgets = [("alice".to_owned(), 12), ("bob".to_owned(), 100)];
        let view = budgets_view(&day, false, 0, &spent, &budgets, |_| true);
        assert_eq!(view.day, "2025-12-01");
        assert_eq!(view.policy, "wait");
        assert_eq!(view.global.daily_credits, None, "0 is no budget");
        assert_eq!((view.global.spent, view.global.remaining), (30, None));
        let keys: Vec<(&str, Option<i64>, i64, Option<i64>)> = view
            .keys
            .iter()
            .map(|k| {
                (
                    k.key.as_str(),
                    k.budget.daily_credits,
                    k.budget.spent,
                    k.budget.remaining,
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("alice", Some(12), 14, Some(0)),
                ("bob", Some(100), 0, Some(100)),
                ("carol", None, 16, None),
            ]
        );
        let own = budgets_view(&day, true, 50, &spent, &budgets, |k| k == "bob");
        assert_eq!(own.keys.len(), 1);
        assert_eq!(own.policy, "fail");
        assert_eq!(own.global.remaining, Some(20));
    }
}
