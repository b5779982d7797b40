//! The answer of `GET /api/stats`, folded from the repository's aggregates
//! ([`TaskStats`]): totals by state, the success rate, stage percentiles, failures by code,
//! figures per provider, a gap-free time series and, for a caller who sees every task, a
//! row per API key.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::TaskState;
use crate::domain::stats::{Percentiles, Stage, StatsQuery, StatsWindow, TaskStats};
use crate::domain::time::iso_time;

/// Tasks created in the window, and what became of them.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsView {
    /// `1h`, `24h`, `7d` or `30d`.
    pub window: &'static str,
    /// The window's start: the start of the bucket holding now minus the window.
    #[schema(format = DateTime)]
    pub since: String,
    /// Now (the last bucket is the one holding now).
    #[schema(format = DateTime)]
    pub until: String,
    /// The width of one `series` bucket, seconds: 300 (`1h`), 3600 (`24h`), 86400 (`7d`,
    /// `30d`; UTC days).
    pub bucket_secs: i64,
    /// Whose tasks are counted: `all` (API keys off), `key` (the calling key's own) or
    /// `admin` (an administrator key: every task, and `perKey`).
    pub scope: &'static str,
    /// The calling key's name; null with API keys off.
    pub key: Option<String>,
    /// Tasks created in the window.
    pub tasks: i64,
    /// Those tasks by their state now (every state, zeros included).
    pub states: BTreeMap<&'static str, i64>,
    /// In a final state (succeeded, failed, canceled, expired).
    pub finished: i64,
    pub succeeded: i64,
    /// Failed, canceled or expired.
    pub failed: i64,
    /// `succeeded / finished`, 0–1; null when none finished.
    pub success_rate: Option<f64>,
    /// Credits the providers charged for them.
    pub credits: i64,
    pub durations: StageDurations,
    /// Failed, canceled and expired tasks by error code, most first.
    pub failures: Vec<FailureCount>,
    /// Figures per provider, by name.
    pub providers: Vec<ProviderStats>,
    /// One entry per bucket from `since` to now, empty ones included.
    pub series: Vec<StatsBucket>,
    /// One row per API key (`key` null: tasks made without a key), most tasks first; only
    /// for a caller who sees every task (`scope` `all` or `admin`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_key: Option<Vec<KeyStats>>,
    /// Today's daily credit budgets (whatever the window).
    pub budgets: super::budgets::BudgetsView,
}

/// Percentiles of each stage of a task's time; null when no task has the stage's times.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StageDurations {
    /// Created → handed to the provider, over every task that was handed over.
    pub queue: Option<StagePercentiles>,
    /// Handed to the provider → results stored, over tasks that succeeded.
    pub provider: Option<StagePercentiles>,
    /// Created → results stored, over tasks that succeeded.
    pub end_to_end: Option<StagePercentiles>,
}

/// Nearest-rank percentiles, milliseconds, at the resolution of the duration histogram they
/// are counted in: each is the upper bound of the bucket holding the value at that rank,
/// never below the exact value and at most 15 % above it (exact up to 10 ms; the bounds
/// are 0-10 ms, then 1, 1.12, 1.25, 1.4, 1.6, 1.8, 2, 2.24, 2.5, 2.8, 3.15, 3.55, 4, 4.5, 5,
/// 5.6, 6.3, 7.1, 8, 9 × 10ⁿ ms, up to 10¹⁰ ms).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StagePercentiles {
    /// How many tasks they are computed over.
    pub count: i64,
    pub p50_ms: i64,
    pub p95_ms: i64,
    pub p99_ms: i64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FailureCount {
    /// The task's `errorCode` (`provider_failed`, `prompt_blocked`, `canceled`, …;
    /// `unknown` when it carries none).
    pub code: String,
    pub count: i64,
}

#[derive(Clone, Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderStats {
    pub provider: String,
    pub tasks: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub credits: i64,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatsBucket {
    /// The bucket's start.
    #[schema(format = DateTime)]
    pub start: String,
    /// Tasks created in it.
    pub tasks: i64,
    /// Of those, how many succeeded and how many failed (canceled and expired included) so far.
    pub succeeded: i64,
    pub failed: i64,
    pub credits: i64,
    /// Credits by provider (providers with none left out).
    pub credits_by_provider: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyStats {
    /// The key's name; null for tasks made without a key.
    pub key: Option<String>,
    pub tasks: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub success_rate: Option<f64>,
    pub credits: i64,
}

fn is_failure(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Failed | TaskState::Canceled | TaskState::Expired
    )
}

fn rate(succeeded: i64, finished: i64) -> Option<f64> {
    (finished > 0).then(|| succeeded as f64 / finished as f64)
}

fn percentiles(p: Option<Percentiles>) -> Option<StagePercentiles> {
    p.map(|p| StagePercentiles {
        count: p.count,
        p50_ms: p.p50_ms,
        p95_ms: p.p95_ms,
        p99_ms: p.p99_ms,
    })
}

/// Who the figures are about, for [`stats_view`].
#[derive(Clone, Debug)]
pub struct StatsScope {
    /// `all`, `key` or `admin`.
    pub scope: &'static str,
    pub key: Option<String>,
}

/// Folds the repository's aggregates into the answer.
pub fn stats_view(
    window: StatsWindow,
    query: &StatsQuery,
    stats: &TaskStats,
    scope: StatsScope,
    budgets: super::budgets::BudgetsView,
) -> StatsView {
    let mut states: BTreeMap<&'static str, i64> =
        TaskState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut failures: BTreeMap<String, i64> = BTreeMap::new();
    let mut providers: BTreeMap<String, ProviderStats> = BTreeMap::new();
    let buckets = usize::try_from(query.buckets().max(0)).unwrap_or(0);
    let mut series: Vec<StatsBucket> = (0..buckets)
        .map(|i| StatsBucket {
            start: iso_time(query.since + i as i64 * query.bucket_ms()),
            tasks: 0,
            succeeded: 0,
            failed: 0,
            credits: 0,
            credits_by_provider: BTreeMap::new(),
        })
        .collect();
    for g in &stats.groups {
        *states.entry(g.state.as_str()).or_default() += g.tasks;
        let provider = providers
            .entry(g.provider.clone())
            .or_insert_with(|| ProviderStats {
                provider: g.provider.clone(),
                ..ProviderStats::default()
            });
        provider.tasks += g.tasks;
        provider.credits += g.credits;
        let succeeded = if g.state == TaskState::Succeeded {
            g.tasks
        } else {
            0
        };
        let failed = if is_failure(g.state) { g.tasks } else { 0 };
        provider.succeeded += succeeded;
        provider.failed += failed;
        if failed > 0 {
            let code = g.error_code.clone().unwrap_or_else(|| "unknown".to_owned());
            *failures.entry(code).or_default() += failed;
        }
        if let Some(bucket) = usize::try_from(g.bucket)
            .ok()
            .and_then(|i| series.get_mut(i))
        {
            bucket.tasks += g.tasks;
            bucket.succeeded += succeeded;
            bucket.failed += failed;
            bucket.credits += g.credits;
            if g.credits != 0 {
                *bucket
                    .credits_by_provider
                    .entry(g.provider.clone())
                    .or_default() += g.credits;
            }
        }
    }
    let tasks = states.values().sum();
    let succeeded = states["succeeded"];
    let failed = states["failed"] + states["canceled"] + states["expired"];
    let mut failures: Vec<FailureCount> = failures
        .into_iter()
        .map(|(code, count)| FailureCount { code, count })
        .collect();
    failures.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
    let per_key = (scope.scope != "key").then(|| per_key(stats));
    StatsView {
        window: window.as_str(),
        since: iso_time(query.since),
        until: iso_time(query.until - 1),
        bucket_secs: query.bucket_ms() / 1000,
        scope: scope.scope,
        key: scope.key,
        tasks,
        states,
        finished: succeeded + failed,
        succeeded,
        failed,
        success_rate: rate(succeeded, succeeded + failed),
        credits: providers.values().map(|p| p.credits).sum(),
        durations: StageDurations {
            queue: percentiles(stats.stage(Stage::Queue)),
            provider: percentiles(stats.stage(Stage::Provider)),
            end_to_end: percentiles(stats.stage(Stage::EndToEnd)),
        },
        failures,
        providers: providers.into_values().collect(),
        series,
        per_key,
        budgets,
    }
}

fn per_key(stats: &TaskStats) -> Vec<KeyStats> {
    let mut keys: BTreeMap<Option<String>, KeyStats> = BTreeMap::new();
    for o in &stats.owners {
        let row = keys.entry(o.owner.clone()).or_insert_with(|| KeyStats {
            key: o.owner.clone(),
            tasks: 0,
            succeeded: 0,
            failed: 0,
            success_rate: None,
            credits: 0,
        });
        row.tasks += o.tasks;
        row.credits += o.credits;
        if o.state == TaskState::Succeeded {
            row.succeeded += o.tasks;
        } else if is_failure(o.state) {
            row.failed += o.tasks;
        }
    }
    let mut rows: Vec<KeyStats> = keys
        .into_values()
        .map(|mut k| {
            k.success_rate = rate(k.succeeded, k.succeeded + k.failed);
            k
        })
        .collect();
    rows.sort_by(|a, b| b.tasks.cmp(&a.tasks).then(a.key.cmp(&b.key)));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::stats::{OwnerGroup, StatsGrain, StatsGroup};

    fn group(
        bucket: i64,
        state: TaskState,
        provider: &str,
        code: Option<&str>,
        tasks: i64,
        credits: i64,
    ) -> StatsGroup {
        StatsGroup {
            bucket,
            state,
            provider: provider.into(),
            error_code: code.map(str::to_owned),
            tasks,
            credits,
        }
    }

    #[test]
    fn folds_groups_into_totals_failures_providers_and_a_gap_free_series() {
        let query = StatsQuery {
            since: 0,
            until: 3 * 3_600_000,
            grain: StatsGrain::Hour,
            owner: None,
            per_owner: true,
        };
        let stats = TaskStats {
            groups: vec![
                group(0, TaskState::Succeeded, "kie", None, 3, 12),
                group(2, TaskState::Failed, "kie", Some("provider_failed"), 1, 0),
                group(2, TaskState::Canceled, "gemini", None, 2, 0),
                group(2, TaskState::Succeeded, "gemini", None, 1, 2),
                group(2, TaskState::Queued, "kie", None, 4, 0),
            ],
            stages: vec![],
            owners: vec![
                OwnerGroup {
                    owner: Some("a".into()),
                    state: TaskState::Succeeded,
                    tasks: 4,
                    credits: 14,
                },
                OwnerGroup {
                    owner: None,
                    state: TaskState::Failed,
                    tasks: 1,
                    credits: 0,
                },
            ],
        };
        let scope = StatsScope {
            scope: "admin",
            key: Some("ops".into()),
        };
        let no_budgets = || {
            let day = crate::domain::budget::CreditDay::of(0);
            super::super::budgets::budgets_view(&day, false, 0, &[], &[], |_| true)
        };
        let view = stats_view(StatsWindow::Day, &query, &stats, scope, no_budgets());
        assert_eq!(
            (view.tasks, view.finished, view.succeeded, view.failed),
            (11, 7, 4, 3)
        );
        assert_eq!(view.success_rate, Some(4.0 / 7.0));
        assert_eq!(view.credits, 14);
        assert_eq!(view.states["queued"], 4);
        assert_eq!(view.states["expired"], 0);
        let failures: Vec<_> = view
            .failures
            .iter()
            .map(|f| (f.code.as_str(), f.count))
            .collect();
        assert_eq!(failures, [("unknown", 2), ("provider_failed", 1)]);
        let providers: Vec<_> = view
            .providers
            .iter()
            .map(|p| {
                (
                    p.provider.as_str(),
                    p.tasks,
                    p.succeeded,
                    p.failed,
                    p.credits,
                )
            })
            .collect();
        assert_eq!(providers, [("gemini", 3, 1, 2, 2), ("kie", 8, 3, 1, 12)]);
        let series: Vec<_> = view
            .series
            .iter()
            .map(|b| (b.tasks, b.succeeded, b.failed, b.credits))
            .collect();
        assert_eq!(series, [(3, 3, 0, 12), (0, 0, 0, 0), (8, 1, 3, 2)]);
        assert_eq!(view.series[1].start, "1970-01-01T01:00:00.000Z");
        assert_eq!(view.series[2].credits_by_provider["gemini"], 2);
        let keys = view.per_key.unwrap();
        assert_eq!(keys[0].key.as_deref(), Some("a"));
        assert_eq!(keys[1].success_rate, Some(0.0));
        let own = stats_view(
            StatsWindow::Day,
            &query,
            &stats,
            StatsScope {
                scope: "key",
                key: Some("a".into()),
            },
            no_budgets(),
        );
        assert!(own.per_key.is_none(), "a key sees no other keys");
    }
}
