//! The contract of [`LimitsRepo`]: a limited claim never takes more than the create window
//! and the in-flight cap leave, counts every earlier claim (whoever made it), forgets
//! reservations once they leave the window, takes nothing while the provider is paused,
//! and stays exact when many claim at once; a pause is only ever extended, and lifted only
//! by its own code.

use super::new_task;
use crate::domain::TaskState;
use crate::storage::{
    CreateLimits, LimitedClaim, LimitedClaimRequest, Repo, Reserved, SharedPause, TaskUpdate,
};

const WINDOW: CreateLimits = CreateLimits {
    creates: 20,
    window_ms: 10_000,
    max_in_flight: 0,
};

async fn claim(repo: &dyn Repo, now: i64, wanted: usize, limits: CreateLimits) -> LimitedClaim {
    repo.claim_within_limits(&LimitedClaimRequest {
        provider: "kie",
        now,
        wanted,
        worker: "w",
        lease_until: now + 60_000,
        limits,
    })
    .await
    .unwrap()
}

async fn queue(repo: &dyn Repo, n: i64) {
    let tasks: Vec<_> = (0..n).map(|i| new_task(None, 0, i)).collect();
    repo.insert(&tasks).await.unwrap();
}

pub async fn a_limited_claim_never_exceeds_the_create_window(repo: &dyn Repo) {
    queue(repo, 40).await;
    let first = claim(repo, 1_000, 15, WINDOW).await;
    assert_eq!(first.tasks.len(), 15);
    assert_eq!(
        first.window,
        [Reserved {
            at: 1_000,
            slots: 15
        }]
    );
    assert!(first.tasks.iter().all(|t| t.state == TaskState::Submitting));
    let second = claim(repo, 2_000, 15, WINDOW).await;
    assert_eq!(second.tasks.len(), 5, "20 per window");
    let full = claim(repo, 10_999, 15, WINDOW).await;
    assert!(full.tasks.is_empty(), "the window is full until 11 000");
    assert_eq!(full.window.iter().map(|r| r.slots).sum::<usize>(), 20);
    let slid = claim(repo, 11_000, 30, WINDOW).await;
    assert_eq!(slid.tasks.len(), 15, "the first claim left the window");
    assert_eq!(
        slid.window,
        [
            Reserved {
                at: 2_000,
                slots: 5
            },
            Reserved {
                at: 11_000,
                slots: 15
            }
        ]
    );
    // Without a limit the window is not kept.
    let free = claim(repo, 11_001, 30, CreateLimits::default()).await;
    assert_eq!(free.tasks.len(), 5, "the rest of the queue");
    assert!(free.window.is_empty());
}

pub async fn the_in_flight_cap_counts_tasks_at_the_provider(repo: &dyn Repo) {
    queue(repo, 10).await;
    let cap = CreateLimits {
        max_in_flight: 3,
        ..CreateLimits::default()
    };
    let first = claim(repo, 100, 10, cap).await;
    assert_eq!(first.tasks.len(), 3);
    assert!(claim(repo, 101, 10, cap).await.tasks.is_empty());
    let done = TaskUpdate {
        state: Some(TaskState::Succeeded),
        ..TaskUpdate::default()
    };
    repo.update(&first.tasks[0].id, TaskState::Submitting, None, &done, 102)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim(repo, 103, 10, cap).await.tasks.len(), 1);
}

pub async fn a_pause_is_shared_and_only_extended(repo: &dyn Repo) {
    queue(repo, 3).await;
    let pause = |until: i64, reason: &str| SharedPause {
        until,
        code: "429".into(),
        reason: reason.into(),
    };
    assert!(
        repo.pause_provider("kie", &pause(5_000, "first"))
            .await
            .unwrap()
    );
    assert!(
        !repo
            .pause_provider("kie", &pause(3_000, "shorter"))
            .await
            .unwrap()
    );
    assert_eq!(
        repo.provider_pause("kie", 4_000).await.unwrap(),
        Some(pause(5_000, "first"))
    );
    assert_eq!(repo.provider_pause("gemini", 4_000).await.unwrap(), None);
    let held = claim(repo, 4_000, 3, WINDOW).await;
    assert!(held.tasks.is_empty(), "nothing is claimed while paused");
    assert_eq!(held.pause, Some(pause(5_000, "first")));
    assert_eq!(repo.provider_pause("kie", 5_000).await.unwrap(), None);
    assert_eq!(claim(repo, 5_000, 3, WINDOW).await.tasks.len(), 3);
    assert!(
        repo.pause_provider("kie", &pause(9_000, "longer"))
            .await
            .unwrap()
    );
    assert_eq!(
        repo.provider_pause("kie", 8_000).await.unwrap(),
        Some(pause(9_000, "longer"))
    );
}

pub async fn a_pause_is_lifted_only_by_its_own_code(repo: &dyn Repo) {
    queue(repo, 2).await;
    let floor = SharedPause {
        until: 60_000,
        code: "credit_floor".into(),
        reason: "balance 36, below the floor of 40".into(),
    };
    assert!(repo.pause_provider("kie", &floor).await.unwrap());
    assert!(
        !repo.lift_provider_pause("kie", "402").await.unwrap(),
        "another code's lift leaves it"
    );
    assert!(
        !repo
            .lift_provider_pause("gemini", "credit_floor")
            .await
            .unwrap()
    );
    assert_eq!(
        repo.provider_pause("kie", 1_000).await.unwrap(),
        Some(floor.clone())
    );
    assert!(claim(repo, 1_000, 2, WINDOW).await.tasks.is_empty());
    assert!(
        repo.lift_provider_pause("kie", "credit_floor")
            .await
            .unwrap()
    );
    assert!(
        !repo
            .lift_provider_pause("kie", "credit_floor")
            .await
            .unwrap()
    );
    assert_eq!(repo.provider_pause("kie", 1_000).await.unwrap(), None);
    assert_eq!(claim(repo, 1_000, 2, WINDOW).await.tasks.len(), 2);
    // Lifted, a pause may start again (a later reading below the floor).
    assert!(repo.pause_provider("kie", &floor).await.unwrap());
    assert_eq!(
        repo.provider_pause("kie", 2_000).await.unwrap(),
        Some(floor)
    );
}

pub async fn concurrent_limited_claims_take_exactly_the_window(repo: &dyn Repo) {
    queue(repo, 100).await;
    let claims = (0..12).map(|_| claim(repo, 1_000, 5, WINDOW));
    let taken: usize = futures::future::join_all(claims)
        .await
        .iter()
        .map(|c| c.tasks.len())
        .sum();
    assert_eq!(taken, 20, "twelve claimers of five share one window of 20");
}

pub async fn a_create_slot_given_back_is_claimed_again(repo: &dyn Repo) {
    queue(repo, 40).await;
    assert_eq!(claim(repo, 1_000, 20, WINDOW).await.tasks.len(), 20);
    assert!(claim(repo, 1_001, 5, WINDOW).await.tasks.is_empty());
    // Two of the twenty were not sent after all.
    assert!(repo.return_create("kie", 1_000).await.unwrap());
    assert!(repo.return_create("kie", 1_000).await.unwrap());
    assert!(
        !repo.return_create("kie", 999).await.unwrap(),
        "no claim was made then"
    );
    let again = claim(repo, 1_002, 5, WINDOW).await;
    assert_eq!(again.tasks.len(), 2);
    assert_eq!(again.window.iter().map(|r| r.slots).sum::<usize>(), 20);
}

pub async fn a_create_counts_from_when_it_is_sent(repo: &dyn Repo) {
    queue(repo, 40).await;
    assert_eq!(claim(repo, 1_000, 20, WINDOW).await.tasks.len(), 20);
    // One create went out 3 s after its claim: it holds its slot until 3 s after the
    // claim's others are gone.
    repo.stamp_create("kie", 1_000, 4_000).await.unwrap();
    let later = claim(repo, 11_001, 20, WINDOW).await;
    assert_eq!(later.tasks.len(), 19, "the late create still counts");
    assert!(claim(repo, 13_999, 5, WINDOW).await.tasks.is_empty());
    assert_eq!(claim(repo, 14_001, 5, WINDOW).await.tasks.len(), 1);
    // A claim's row already forgotten: the send is counted all the same.
    repo.stamp_create("kie", 1_000, 14_002).await.unwrap();
    let window = claim(repo, 14_003, 5, WINDOW).await.window;
    assert_eq!(window.iter().map(|r| r.slots).sum::<usize>(), 21);
}
