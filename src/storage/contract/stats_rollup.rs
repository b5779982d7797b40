//! The contract of [`StatsRepo`] against the tasks themselves: after a scripted run through
//! the repository's own writes (claims, guarded updates with retries back to the queue,
//! cancels, failures, expiries, a retry task, a finished task corrected afterwards), and
//! again after whole rows are restored (`darkroom reindex`) and after some are deleted
//! (retention), every window answers what a
//! direct count of the task rows gives: counts by bucket, state, provider and code,
//! counts per owner, and each stage's nearest-rank percentiles (at the histogram's
//! resolution: the bucket of the exact value).

use super::new_task;
use crate::domain::stats::{
    Percentiles, Stage, StatsQuery, StatsTally, StatsWindow, TaskStats, duration_bucket,
};
use crate::domain::{TaskId, TaskState};
use crate::storage::{Repo, Task, TaskFilter, TaskUpdate};

/// "Now" of the run: 2023-11-14T13:37:00Z, off any bucket's edge.
const NOW: i64 = 1_699_969_020_000;
const MINUTE: i64 = 60_000;

/// What the tasks' rows say the query's answer is.
fn direct_count(tasks: &[Task], query: &StatsQuery) -> TaskStats {
    let counted: Vec<&Task> = tasks
        .iter()
        .filter(|t| (query.since..query.end()).contains(&t.created_at))
        .filter(|t| query.owner.is_none() || t.owner == query.owner)
        .collect();
    let failure = |s: TaskState| {
        matches!(
            s,
            TaskState::Failed | TaskState::Canceled | TaskState::Expired
        )
    };
    let mut tally = StatsTally::default();
    for t in &counted {
        let bucket = (t.created_at - query.since) / query.bucket_ms();
        let code = if failure(t.state) {
            t.error_code.clone().filter(|c| !c.is_empty())
        } else {
            None
        };
        let credits = t.credits.unwrap_or(0);
        tally.add_group((bucket, t.state, t.provider.clone(), code), 1, credits);
        if query.per_owner {
            tally.add_owner(t.owner.clone(), t.state, 1, credits);
        }
    }
    let succeeded = |t: &&&Task| t.state == TaskState::Succeeded;
    let durations = |stage: Stage| -> Vec<i64> {
        match stage {
            Stage::Queue => counted
                .iter()
                .filter_map(|t| Some(t.submitted_at? - t.created_at))
                .collect(),
            Stage::Provider => counted
                .iter()
                .filter(succeeded)
                .filter_map(|t| Some(t.completed_at? - t.submitted_at?))
                .collect(),
            Stage::EndToEnd => counted
                .iter()
                .filter(succeeded)
                .filter_map(|t| Some(t.completed_at? - t.created_at))
                .collect(),
        }
    };
    let mut stages = Vec::new();
    for stage in Stage::ALL {
        let mut d = durations(stage);
        if d.is_empty() {
            continue;
        }
        d.sort_unstable();
        let count = d.len() as i64;
        // The exact nearest-rank value's bucket.
        let at = |p| duration_bucket(d[usize::try_from(Percentiles::rank(p, count) - 1).unwrap()]);
        stages.push((
            stage,
            Percentiles {
                count,
                p50_ms: at(50),
                p95_ms: at(95),
                p99_ms: at(99),
            },
        ));
    }
    tally.into_stats(stages)
}

/// The repository's answer, in the order of [`direct_count`]'s.
async fn answered(repo: &dyn Repo, query: &StatsQuery) -> TaskStats {
    let mut stats = repo.task_stats(query).await.unwrap();
    stats.groups.sort_by(|a, b| {
        (a.bucket, a.state, &a.provider, &a.error_code).cmp(&(
            b.bucket,
            b.state,
            &b.provider,
            &b.error_code,
        ))
    });
    stats
        .owners
        .sort_by(|a, b| (&a.owner, a.state).cmp(&(&b.owner, b.state)));
    stats
}

async fn all_tasks(repo: &dyn Repo) -> Vec<Task> {
    repo.list(&TaskFilter {
        limit: 10_000,
        ..TaskFilter::default()
    })
    .await
    .unwrap()
}

/// Every window, for everyone (with a row per owner) and for one owner, against the rows.
async fn every_window_agrees(repo: &dyn Repo, context: &str) {
    let tasks = all_tasks(repo).await;
    for window in StatsWindow::ALL {
        for (owner, per_owner) in [(None, true), (Some("alice".to_owned()), false)] {
            let query = window.query(NOW, owner.clone(), per_owner);
            let expected = direct_count(&tasks, &query);
            assert!(
                !expected.groups.is_empty(),
                "{context}: the run has tasks in {}",
                window.as_str()
            );
            assert_eq!(
                answered(repo, &query).await,
                expected,
                "{context}: window {}, owner {owner:?}",
                window.as_str()
            );
        }
    }
}

/// Moves a task along `path` (each step a guarded update from the state before it), with
/// the columns the engine sets on the way, each step `step_ms` after the previous.
async fn walk(repo: &dyn Repo, id: &TaskId, created_at: i64, path: &[TaskState], n: i64) {
    use TaskState::*;
    let mut from = Queued;
    let mut at = created_at;
    for &to in path {
        at += 150 + (n * 7919) % 40_000;
        let mut update = TaskUpdate {
            state: Some(to),
            ..TaskUpdate::default()
        };
        match to {
            Submitted => update.submitted_at = Some(at),
            // A retryable error: back to the queue, one attempt more.
            Queued => {
                update.add_attempt = true;
                update.error = Some(Some(("provider_429".into(), "busy".into())));
            }
            Succeeded => {
                update.completed_at = Some(at);
                update.credits = Some(1 + n % 5);
                update.error = Some(None);
            }
            Failed => {
                update.completed_at = Some(at);
                let code = ["provider_failed", "input_not_found", "prompt_blocked"];
                let code = code[usize::try_from(n % 3).unwrap()];
                update.error = Some(Some((code.into(), "why".into())));
            }
            Canceled => {
                update.completed_at = Some(at);
                update.error = Some(Some(("canceled".into(), "asked to".into())));
            }
            Expired => {
                update.completed_at = Some(at);
                update.error = Some(Some(("deadline_exceeded".into(), "late".into())));
            }
            _ => {}
        }
        let moved = repo.update(id, from, None, &update, NOW).await.unwrap();
        assert!(moved.is_some(), "{id}: {from} → {to}");
        from = to;
    }
}

pub async fn stats_rollup_agrees_with_the_tasks_after_a_run_a_restore_and_deletions(
    repo: &dyn Repo,
) {
    use TaskState::*;
    let paths: [&[TaskState]; 9] = [
        &[Submitting, Submitted, Running, Ingesting, Succeeded],
        // Retried after a 429, then failed at the provider.
        &[Submitting, Queued, Submitting, Submitted, Running, Failed],
        // Retried, then succeeded.
        &[Submitting, Queued, Submitting, Submitted, Succeeded],
        &[Canceled],
        &[Submitting, Submitted, Expired],
        &[Submitting, Submitted, Canceled],
        // Unfinished: waiting, at the provider, storing results.
        &[],
        &[Submitting, Submitted, Running],
        &[Submitting, Submitted, Running, Ingesting],
    ];
    // Creation times from a minute ago to 40 days ago (the last outside every window).
    let ages = [
        MINUTE,
        4 * MINUTE,
        40 * MINUTE,
        70 * MINUTE,
        5 * 60 * MINUTE,
        23 * 60 * MINUTE,
        3 * 24 * 60 * MINUTE,
        12 * 24 * 60 * MINUTE,
        40 * 24 * 60 * MINUTE,
    ];
    let owners = [None, Some("alice"), Some("bob")];
    let mut n = 0_i64;
    let mut failed = Vec::new();
    for (a, age) in ages.iter().enumerate() {
        for (p, path) in paths.iter().enumerate() {
            n += 1;
            let mut task = new_task(owners[(a + p) % 3], 0, NOW - age + n * 13);
            if n % 4 == 0 {
                task.provider = "gemini".into();
            }
            repo.insert(std::slice::from_ref(&task)).await.unwrap();
            walk(repo, &task.id, task.created_at, path, n).await;
            if path.last() == Some(&Failed) {
                failed.push(task);
            }
        }
    }
    // A failed task retried by hand: a new task that succeeds.
    for old in &failed {
        let mut retry = new_task(old.owner.as_deref(), 0, old.created_at + 1_000);
        retry.retry_of = Some(old.id.clone());
        repo.insert(std::slice::from_ref(&retry)).await.unwrap();
        walk(
            repo,
            &retry.id,
            retry.created_at,
            &[Submitting, Submitted, Succeeded],
            n,
        )
        .await;
    }
    every_window_agrees(repo, "after the run").await;

    // A finished task corrected afterwards (its credits and completion), and one moved from
    // one final state to another: the rollup follows the row.
    let tasks = all_tasks(repo).await;
    let recent = |state| {
        tasks
            .iter()
            .rfind(|t| t.state == state && NOW - t.created_at < 30 * MINUTE)
            .expect("a recent task in that state")
    };
    let done = recent(Succeeded);
    let fix = TaskUpdate {
        credits: Some(17),
        completed_at: done.completed_at.map(|t| t + 90_000),
        ..TaskUpdate::default()
    };
    let fixed = repo.update(&done.id, Succeeded, None, &fix, NOW).await;
    assert!(fixed.unwrap().is_some());
    let expired = recent(Expired);
    let fail = TaskUpdate {
        state: Some(Failed),
        error: Some(Some(("provider_failed".into(), "after all".into()))),
        ..TaskUpdate::default()
    };
    let moved = repo.update(&expired.id, Expired, None, &fail, NOW).await;
    assert!(moved.unwrap().is_some());
    every_window_agrees(repo, "after corrections").await;

    // Restored rows (reindex) count as they are: copies under new ids, and a row already
    // stored, which is refused and counts nothing more.
    let tasks = all_tasks(repo).await;
    for task in &tasks {
        let copy = Task {
            id: TaskId::new(),
            provider_task_id: None,
            ..task.clone()
        };
        assert!(repo.restore(&copy).await.unwrap());
    }
    assert!(!repo.restore(&tasks[0]).await.unwrap(), "already stored");
    every_window_agrees(repo, "after restoring copies").await;

    // Deleted tasks (the retention sweep, DELETE /api/tasks/{id}) count no more: one in
    // three, finished or not (the unfinished ones are refused and stay).
    let doomed: Vec<TaskId> = all_tasks(repo)
        .await
        .into_iter()
        .step_by(3)
        .map(|t| t.id)
        .collect();
    repo.delete_final_tasks(&doomed).await.unwrap();
    every_window_agrees(repo, "after deleting some").await;
}
