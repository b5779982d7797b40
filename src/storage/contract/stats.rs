//! The contract of [`StatsRepo`]: counts by bucket, state, provider and error code, credits,
//! stage percentiles (nearest rank, at the histogram's resolution) and counts per owner, over
//! exactly the tasks created in the window, and only the owner's when one is named; the
//! database's histogram buckets are the domain's.

use super::new_task;
use crate::domain::TaskState;
use crate::domain::stats::{
    OwnerGroup, Percentiles, Stage, StatsGrain, StatsGroup, StatsQuery, duration_buckets,
};
use crate::storage::{NewTask, Repo, TaskUpdate};

/// Midnight UTC, 2023-11-14.
const BASE: i64 = 1_699_920_000_000;
/// The width of a bucket of these checks' windows.
const FIVE_MINUTES: i64 = 300_000;

/// Ten 5-minute buckets from `BASE`.
fn window(owner: Option<&str>, per_owner: bool) -> StatsQuery {
    StatsQuery {
        since: BASE,
        until: BASE + 10 * FIVE_MINUTES,
        grain: StatsGrain::FiveMinutes,
        owner: owner.map(str::to_owned),
        per_owner,
    }
}

/// A task created at `BASE + at`, moved from `queued` to `state` with these timestamps
/// (offsets from `BASE`), credits and error code.
struct Made<'a> {
    owner: Option<&'a str>,
    provider: &'a str,
    at: i64,
    state: TaskState,
    submitted: Option<i64>,
    completed: Option<i64>,
    credits: Option<i64>,
    code: Option<&'a str>,
}

async fn make(repo: &dyn Repo, made: Made<'_>) -> NewTask {
    let mut task = new_task(made.owner, 0, BASE + made.at);
    task.provider = made.provider.to_owned();
    repo.insert(std::slice::from_ref(&task)).await.unwrap();
    if made.state != TaskState::Queued {
        let update = TaskUpdate {
            state: Some(made.state),
            submitted_at: made.submitted.map(|t| BASE + t),
            completed_at: made.completed.map(|t| BASE + t),
            credits: made.credits,
            error: made.code.map(|c| Some((c.to_owned(), "why".to_owned()))),
            ..TaskUpdate::default()
        };
        repo.update(&task.id, TaskState::Queued, None, &update, BASE)
            .await
            .unwrap()
            .expect("the task was queued");
    }
    task
}

fn made(owner: Option<&str>, at: i64, state: TaskState) -> Made<'_> {
    Made {
        owner,
        provider: "kie",
        at,
        state,
        submitted: None,
        completed: None,
        credits: None,
        code: None,
    }
}

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

fn sorted<T: Clone, K: Ord>(items: &[T], key: impl Fn(&T) -> K) -> Vec<T> {
    let mut items = items.to_vec();
    items.sort_by_key(key);
    items
}

pub async fn stats_count_tasks_of_the_window_by_state_code_provider_and_bucket(repo: &dyn Repo) {
    use TaskState::*;
    let alice = Some("alice");
    let bob = Some("bob");
    // Created at `at`, handed over `queue` ms later, done `end` ms after creation.
    let ok = |at: i64, queue: i64, end: i64, credits| Made {
        submitted: Some(at + queue),
        completed: Some(at + end),
        credits: Some(credits),
        ..made(alice, at, Succeeded)
    };
    make(repo, ok(30_000, 200, 1200, 4)).await;
    make(repo, ok(330_000, 100, 2100, 6)).await;
    let failed = Made {
        submitted: Some(450_400),
        completed: Some(450_500),
        code: Some("provider_failed"),
        ..made(bob, 450_000, Failed)
    };
    make(repo, failed).await;
    let canceled = Made {
        completed: Some(750_050),
        code: Some("canceled"),
        ..made(bob, 750_000, Canceled)
    };
    make(repo, canceled).await;
    // A queued task's waiting reason is not a failure code.
    let waiting = Made {
        code: Some("provider_paused"),
        ..made(None, 780_000, Queued)
    };
    make(repo, waiting).await;
    let blocked = Made {
        provider: "gemini",
        submitted: Some(810_100),
        completed: Some(810_200),
        code: Some("prompt_blocked"),
        ..made(alice, 810_000, Failed)
    };
    make(repo, blocked).await;
    // Outside the window: just before it, and at its (exclusive) end.
    make(repo, ok(-1, 1, 6, 100)).await;
    make(repo, ok(10 * FIVE_MINUTES, 1, 2, 100)).await;

    let stats = repo.task_stats(&window(None, false)).await.unwrap();
    let key = |g: &StatsGroup| (g.bucket, g.state.as_str(), g.provider.clone());
    assert_eq!(
        sorted(&stats.groups, key),
        [
            group(0, Succeeded, "kie", None, 1, 4),
            group(1, Failed, "kie", Some("provider_failed"), 1, 0),
            group(1, Succeeded, "kie", None, 1, 6),
            group(2, Canceled, "kie", Some("canceled"), 1, 0),
            group(2, Failed, "gemini", Some("prompt_blocked"), 1, 0),
            group(2, Queued, "kie", None, 1, 0),
        ]
    );
    assert!(stats.owners.is_empty(), "not asked for");
    // Queue: 200, 100, 400, 100 → sorted 100 100 200 400; provider: 1000, 2000;
    // end to end: 1200, 2100 (only tasks that succeeded have the last two), which count in
    // the buckets up to 1250 and 2240.
    let p = |count, p50_ms, p95_ms, p99_ms| Percentiles {
        count,
        p50_ms,
        p95_ms,
        p99_ms,
    };
    assert_eq!(stats.stage(Stage::Queue), Some(p(4, 100, 400, 400)));
    assert_eq!(stats.stage(Stage::Provider), Some(p(2, 1000, 2000, 2000)));
    assert_eq!(stats.stage(Stage::EndToEnd), Some(p(2, 1250, 2240, 2240)));

    let own = repo.task_stats(&window(alice, false)).await.unwrap();
    assert_eq!(
        sorted(&own.groups, key),
        [
            group(0, Succeeded, "kie", None, 1, 4),
            group(1, Succeeded, "kie", None, 1, 6),
            group(2, Failed, "gemini", Some("prompt_blocked"), 1, 0),
        ],
        "only the owner's tasks"
    );
    assert_eq!(own.stage(Stage::Queue), Some(p(3, 100, 200, 200)));

    let all = repo.task_stats(&window(None, true)).await.unwrap();
    let owner = |o: Option<&str>, state, tasks, credits| OwnerGroup {
        owner: o.map(str::to_owned),
        state,
        tasks,
        credits,
    };
    assert_eq!(
        sorted(&all.owners, |o: &OwnerGroup| (
            o.owner.clone(),
            o.state.as_str()
        )),
        [
            owner(None, Queued, 1, 0),
            owner(alice, Failed, 1, 0),
            owner(alice, Succeeded, 2, 10),
            owner(bob, Canceled, 1, 0),
            owner(bob, Failed, 1, 0),
        ]
    );

    let empty = StatsQuery {
        since: BASE + 20 * FIVE_MINUTES,
        until: BASE + 30 * FIVE_MINUTES,
        ..window(None, true)
    };
    let none = repo.task_stats(&empty).await.unwrap();
    assert!(none.groups.is_empty() && none.stages.is_empty() && none.owners.is_empty());
}

pub async fn stats_percentiles_are_nearest_rank(repo: &dyn Repo) {
    // Queue waits of 10, 20, … 1000 ms, inserted out of order: of unfinished tasks (read
    // from the tasks) and of finished ones (from the rollup) alike.
    for i in (1..=100).rev() {
        let at = (i * 37) % 100;
        let state = if i % 2 == 0 {
            TaskState::Submitted
        } else {
            TaskState::Failed
        };
        let task = Made {
            submitted: Some(at + i * 10),
            ..made(None, at, state)
        };
        make(repo, task).await;
    }
    let stats = repo.task_stats(&window(None, false)).await.unwrap();
    // Exactly 500, 950 and 990 ms; the last two count in the bucket up to 1000 ms.
    assert_eq!(
        stats.stage(Stage::Queue),
        Some(Percentiles {
            count: 100,
            p50_ms: 500,
            p95_ms: 1000,
            p99_ms: 1000,
        })
    );
    assert_eq!(stats.stage(Stage::Provider), None, "none succeeded");
    assert_eq!(stats.stage(Stage::EndToEnd), None);
}

pub async fn stats_histogram_buckets_are_the_domains(repo: &dyn Repo) {
    assert_eq!(
        repo.duration_bucket_bounds().await.unwrap(),
        duration_buckets(),
        "the migration's stats_duration_buckets and domain::stats::duration_buckets differ"
    );
}
