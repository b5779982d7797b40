//! The contract of [`BudgetRepo`]: a task's estimate is counted in the global scope and its
//! key's only where both stay within their budgets (all or nothing, once per task, exact
//! when many reserve at once); settling replaces it by what was used; days are counted
//! apart; keys' budgets are set, changed and removed, and waiting tasks woken.

use super::new_task;
use crate::domain::budget::{BudgetExceeded, BudgetScope, CreditDay};
use crate::domain::{JobCode, TaskId, TaskState};
use crate::storage::{BudgetCheck, CreditReservation, Repo, ScopeSpend, TaskUpdate};

const DAY_MS: i64 = 86_400_000;

async fn reserve(
    repo: &dyn Repo,
    task: &TaskId,
    owner: Option<&str>,
    credits: i64,
    global_limit: i64,
    now: i64,
) -> BudgetCheck {
    let day = CreditDay::of(now);
    repo.reserve_credits(&CreditReservation {
        task,
        owner,
        day: &day,
        credits,
        global_limit,
        check_budgets: true,
        now,
    })
    .await
    .unwrap()
}

async fn spend(repo: &dyn Repo, now: i64) -> Vec<(String, i64)> {
    repo.credit_spend(&CreditDay::of(now).name)
        .await
        .unwrap()
        .into_iter()
        .map(|ScopeSpend { scope, credits }| (scope.as_str().to_owned(), credits))
        .collect()
}

fn pair(scope: &str, credits: i64) -> (String, i64) {
    (scope.to_owned(), credits)
}

pub async fn credits_are_reserved_within_every_budget_once_per_task(repo: &dyn Repo) {
    let now = 10 * DAY_MS + 5;
    repo.set_daily_budget("alice", Some(12), now).await.unwrap();
    let ids: Vec<TaskId> = (0..5).map(|_| TaskId::new()).collect();
    for id in &ids[..3] {
        assert_eq!(
            reserve(repo, id, Some("alice"), 4, 0, now).await,
            BudgetCheck::Reserved
        );
    }
    assert_eq!(
        reserve(repo, &ids[0], Some("alice"), 4, 0, now).await,
        BudgetCheck::AlreadyReserved,
        "an earlier try's reservation stands"
    );
    // The key's budget is spent; the global scope (with room) is not counted either.
    assert_eq!(
        reserve(repo, &ids[3], Some("alice"), 4, 100, now).await,
        BudgetCheck::Exceeded(BudgetExceeded {
            scope: BudgetScope::Key("alice".into()),
            limit: 12,
            spent: 12,
            needed: 4,
            resets_at: 11 * DAY_MS,
        })
    );
    assert_eq!(spend(repo, now).await, [pair("*", 12), pair("alice", 12)]);
    // The global budget, checked first.
    let BudgetCheck::Exceeded(global) = reserve(repo, &ids[4], Some("bob"), 4, 14, now).await
    else {
        panic!("12 + 4 is over a global budget of 14");
    };
    assert_eq!(
        (global.scope, global.limit, global.spent),
        (BudgetScope::Global, 14, 12)
    );
    // A task without a key counts globally only; an estimate of 0 always fits.
    assert_eq!(
        reserve(repo, &ids[4], None, 2, 14, now).await,
        BudgetCheck::Reserved
    );
    assert_eq!(
        reserve(repo, &TaskId::new(), Some("alice"), 0, 14, now).await,
        BudgetCheck::Reserved
    );
    assert_eq!(spend(repo, now).await, [pair("*", 14), pair("alice", 12)]);
}

pub async fn settling_replaces_the_estimate_by_what_was_used(repo: &dyn Repo) {
    let now = 3 * DAY_MS;
    let [a, b, c, d] = [TaskId::new(), TaskId::new(), TaskId::new(), TaskId::new()];
    for id in [&a, &b, &c, &d] {
        reserve(repo, id, Some("alice"), 4, 0, now).await;
    }
    assert!(repo.settle_credits(&a, Some(6)).await.unwrap());
    assert!(
        !repo.settle_credits(&a, Some(100)).await.unwrap(),
        "settled once"
    );
    assert!(
        repo.settle_credits(&b, None).await.unwrap(),
        "the estimate stands"
    );
    assert!(
        repo.settle_credits(&c, Some(0)).await.unwrap(),
        "not billed"
    );
    assert!(
        repo.settle_credits(&d, Some(4)).await.unwrap(),
        "billed what was reserved"
    );
    assert!(
        !repo.settle_credits(&d, Some(4)).await.unwrap(),
        "settled once"
    );
    assert_eq!(spend(repo, now).await, [pair("*", 14), pair("alice", 14)]);
    assert!(!repo.settle_credits(&TaskId::new(), Some(4)).await.unwrap());
    // Settled, a task is counted again only by a new reservation.
    assert_eq!(
        reserve(repo, &c, Some("alice"), 4, 0, now).await,
        BudgetCheck::Reserved
    );
}

pub async fn each_utc_day_is_counted_apart(repo: &dyn Repo) {
    let today = 20 * DAY_MS + 1;
    repo.set_daily_budget("alice", Some(4), today)
        .await
        .unwrap();
    reserve(repo, &TaskId::new(), Some("alice"), 4, 0, today).await;
    assert!(matches!(
        reserve(repo, &TaskId::new(), Some("alice"), 4, 0, today + 1000).await,
        BudgetCheck::Exceeded(_)
    ));
    let tomorrow = 21 * DAY_MS;
    assert_eq!(
        reserve(repo, &TaskId::new(), Some("alice"), 4, 0, tomorrow).await,
        BudgetCheck::Reserved
    );
    assert_eq!(spend(repo, today).await, [pair("*", 4), pair("alice", 4)]);
    assert_eq!(
        spend(repo, tomorrow).await,
        [pair("*", 4), pair("alice", 4)]
    );
}

pub async fn budgets_are_set_changed_removed_and_waiters_woken(repo: &dyn Repo) {
    repo.set_daily_budget("bob", Some(5), 1).await.unwrap();
    repo.set_daily_budget("alice", Some(12), 1).await.unwrap();
    repo.set_daily_budget("alice", Some(20), 2).await.unwrap();
    assert_eq!(
        repo.daily_budgets().await.unwrap(),
        [("alice".to_owned(), 20), ("bob".to_owned(), 5)]
    );
    repo.set_daily_budget("bob", None, 3).await.unwrap();
    assert_eq!(
        repo.daily_budgets().await.unwrap(),
        [("alice".to_owned(), 20)]
    );
    // Tasks waiting on a budget (queued, `budget_exhausted`, due tomorrow), and one
    // waiting for another reason.
    let now = 1_000;
    let waiting = [
        new_task(Some("alice"), 0, 1),
        new_task(Some("bob"), 0, 2),
        new_task(Some("alice"), 0, 3),
    ];
    repo.insert(&waiting).await.unwrap();
    for (task, code) in waiting.iter().zip([
        JobCode::BudgetExhausted,
        JobCode::BudgetExhausted,
        JobCode::ProviderPaused,
    ]) {
        let update = TaskUpdate {
            run_at: Some(now + DAY_MS),
            error: Some(Some((code.as_str().to_owned(), "waiting".to_owned()))),
            ..TaskUpdate::default()
        };
        let changed = repo
            .update(&task.id, TaskState::Queued, None, &update, now)
            .await
            .unwrap();
        assert!(changed.is_some());
    }
    assert_eq!(
        repo.wake_budget_waiters(Some("alice"), now).await.unwrap(),
        1
    );
    let due = |i: usize| {
        let id = waiting[i].id.clone();
        async move { repo.get(&id).await.unwrap().unwrap().run_at }
    };
    assert_eq!(due(0).await, now);
    assert_eq!(due(1).await, now + DAY_MS, "bob's budget did not change");
    assert_eq!(due(2).await, now + DAY_MS, "not waiting on a budget");
    assert_eq!(repo.wake_budget_waiters(None, now).await.unwrap(), 1);
    assert_eq!(due(1).await, now);
}

pub async fn concurrent_reservations_never_exceed_a_budget(repo: &dyn Repo) {
    let now = 40 * DAY_MS;
    repo.set_daily_budget("alice", Some(40), now).await.unwrap();
    let ids: Vec<TaskId> = (0..30).map(|_| TaskId::new()).collect();
    let checks = ids
        .iter()
        .map(|id| reserve(repo, id, Some("alice"), 4, 1_000, now));
    let reserved = futures::future::join_all(checks)
        .await
        .iter()
        .filter(|c| **c == BudgetCheck::Reserved)
        .count();
    assert_eq!(
        reserved, 10,
        "thirty tasks of 4 credits share a budget of 40"
    );
    assert_eq!(spend(repo, now).await, [pair("*", 40), pair("alice", 40)]);
}
