//! The claim order of [`TaskRepo::claim_queued`] against a ranking of the whole queue
//! worked out here: the claim itself ranks only each owner's first few tasks.

use super::new_task;
use crate::storage::TaskRepo;

/// The claim order on a mixed queue (tasks without an owner, three owners of different
/// sizes, two priorities, ties in age), claimed a few at a time until it is empty: every
/// claim takes what ranking the whole remaining queue would put first (priority, then
/// each owner's turn, then age, then id). The claim ranks only each owner's first few;
/// this holds it to the whole ranking.
pub async fn claims_follow_the_ranking_of_the_whole_queue(repo: &dyn TaskRepo) {
    let owners = [None, Some("ann"), Some("bo"), Some("cy")];
    let mut tasks = Vec::new();
    for i in 0..60_i64 {
        // ann gets half the tasks; every fifth is urgent; ages repeat in pairs.
        let owner = owners[[0, 1, 1, 2, 1, 3][(i % 6) as usize]];
        let priority = if i % 5 == 0 { 5 } else { 0 };
        tasks.push(new_task(owner, priority, 1_000 + i / 2));
    }
    repo.insert(&tasks).await.unwrap();
    let mut left = tasks;
    for round in 0.. {
        if left.is_empty() {
            break;
        }
        let limit = [1, 3, 7][round % 3];
        // The whole remaining queue ranked: each owner's turn within a priority.
        let mut ranked: Vec<(i32, usize, i64, String)> = Vec::new();
        for task in &left {
            let mut own: Vec<_> = left.iter().filter(|t| t.owner == task.owner).collect();
            own.sort_by(|a, b| {
                (b.priority, a.created_at, a.id.as_str()).cmp(&(
                    a.priority,
                    b.created_at,
                    b.id.as_str(),
                ))
            });
            let turn = own.iter().position(|t| t.id == task.id).unwrap();
            ranked.push((
                -task.priority,
                turn,
                task.created_at,
                task.id.as_str().to_owned(),
            ));
        }
        ranked.sort();
        let mut expected: Vec<String> = ranked.into_iter().take(limit).map(|r| r.3).collect();
        let claimed = repo
            .claim_queued("kie", 10_000, limit, "w", 20_000)
            .await
            .unwrap();
        let mut got: Vec<String> = claimed.iter().map(|t| t.id.as_str().to_owned()).collect();
        expected.sort();
        got.sort();
        assert_eq!(got, expected, "claim {round} of {limit}");
        left.retain(|t| !got.contains(&t.id.as_str().to_owned()));
    }
}
