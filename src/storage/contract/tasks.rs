//! The contract of [`TaskRepo`]: tasks and the queue. Claims by priority, then fairness
//! between owners, then age; guarded updates that change nothing when the state (or the
//! lease) differs; leases owned by one worker; provider ids unique per provider.

use super::new_task;
use crate::domain::{TaskId, TaskState};
use crate::storage::{RepoError, TaskFilter, TaskRepo, TaskUpdate};

fn to(state: TaskState) -> TaskUpdate {
    TaskUpdate {
        state: Some(state),
        ..TaskUpdate::default()
    }
}

pub async fn insert_and_get_round_trip(repo: &dyn TaskRepo) {
    let mut t = new_task(Some("alice"), 3, 7);
    t.webhook_url = Some("https://hooks.example.com/x".into());
    t.callback_token_hash = "hash".into();
    repo.insert(std::slice::from_ref(&t)).await.unwrap();
    let got = repo.get(&t.id).await.unwrap().expect("inserted task");
    assert_eq!(got.id, t.id);
    assert_eq!(got.state, TaskState::Queued);
    assert_eq!(
        (got.provider.as_str(), got.model.as_str(), got.priority),
        ("kie", "google/nano-banana-edit", 3)
    );
    assert_eq!(got.owner.as_deref(), Some("alice"));
    assert_eq!(got.input_urls, t.input_urls);
    assert_eq!(got.webhook_url, t.webhook_url);
    assert_eq!(got.callback_token_hash, "hash");
    assert_eq!((got.created_at, got.run_at, got.attempts), (7, 7, 0));
    assert_eq!((got.lease_owner, got.provider_task_id), (None, None));
    assert!(repo.get(&TaskId::new()).await.unwrap().is_none());
}

pub async fn insert_is_all_or_nothing(repo: &dyn TaskRepo) {
    let a = new_task(None, 0, 1);
    let b = new_task(None, 0, 2);
    repo.insert(std::slice::from_ref(&a)).await.unwrap();
    // `b` and then `a` again: the duplicate fails the insert, so `b` is not queued either.
    assert!(repo.insert(&[b.clone(), a.clone()]).await.is_err());
    assert!(repo.get(&b.id).await.unwrap().is_none(), "all or none");
    assert!(repo.get(&a.id).await.unwrap().is_some());
}

pub async fn claims_by_priority_then_age(repo: &dyn TaskRepo) {
    let mut tasks = vec![
        new_task(None, 0, 1),
        new_task(None, 5, 2),
        new_task(None, 0, 3),
        new_task(None, 5, 4),
        new_task(None, -3, 0),
    ];
    // A token left from an earlier attempt.
    tasks[1].callback_token_hash = "an earlier attempt's".into();
    repo.insert(&tasks).await.unwrap();
    let claimed = repo.claim_queued("kie", 100, 10, "w", 1000).await.unwrap();
    let order: Vec<(i32, i64)> = claimed.iter().map(|t| (t.priority, t.created_at)).collect();
    assert_eq!(order, [(5, 2), (5, 4), (0, 1), (0, 3), (-3, 0)]);
    for t in &claimed {
        assert_eq!(t.state, TaskState::Submitting);
        assert_eq!(
            (t.lease_owner.as_deref(), t.lease_until),
            (Some("w"), Some(1000))
        );
        assert_eq!(
            t.callback_token_hash, "",
            "a claim clears the callback token"
        );
    }
    assert!(
        repo.claim_queued("kie", 100, 10, "w", 1000)
            .await
            .unwrap()
            .is_empty(),
        "a task is claimed once"
    );
}

pub async fn claims_are_per_provider_and_bounded(repo: &dyn TaskRepo) {
    let mut other = new_task(None, 9, 1);
    other.provider = "gemini".into();
    let tasks = vec![other.clone(), new_task(None, 0, 2), new_task(None, 0, 3)];
    repo.insert(&tasks).await.unwrap();
    let one = repo.claim_queued("kie", 100, 1, "w", 1000).await.unwrap();
    assert_eq!(one.len(), 1, "at most `limit`");
    assert_eq!(one[0].id, tasks[1].id);
    let rest = repo.claim_queued("kie", 100, 10, "w", 1000).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, tasks[2].id);
    let gemini = repo
        .claim_queued("gemini", 100, 10, "w", 1000)
        .await
        .unwrap();
    assert_eq!(gemini.len(), 1);
    assert_eq!(gemini[0].id, other.id);
}

pub async fn one_owners_big_batch_does_not_starve_another(repo: &dyn TaskRepo) {
    let mut tasks: Vec<_> = (0..100).map(|i| new_task(Some("big"), 0, i)).collect();
    tasks.extend((0..5).map(|i| new_task(Some("small"), 0, 1000 + i)));
    repo.insert(&tasks).await.unwrap();
    let first_ten = repo
        .claim_queued("kie", 10_000, 10, "w", 20_000)
        .await
        .unwrap();
    let small = first_ten
        .iter()
        .filter(|t| t.owner.as_deref() == Some("small"))
        .count();
    assert_eq!(small, 5, "the owners alternate");
}

pub async fn queue_positions_follow_the_claim_order(repo: &dyn TaskRepo) {
    let tasks = vec![
        new_task(Some("a"), 0, 1),
        new_task(Some("a"), 0, 2),
        new_task(Some("b"), 0, 3),
        new_task(Some("a"), 9, 4),
    ];
    repo.insert(&tasks).await.unwrap();
    let mut positions = Vec::new();
    for t in &tasks {
        positions.push(repo.queue_position(&t.id).await.unwrap().unwrap());
    }
    // a@9 first. Owner a has then had its turn, so at priority 0 b goes next, then a's two.
    assert_eq!(positions, [3, 4, 2, 1]);
    repo.claim_queued("kie", 100, 1, "w", 1000).await.unwrap();
    assert_eq!(
        repo.queue_position(&tasks[3].id).await.unwrap(),
        None,
        "claimed tasks have no position"
    );
    assert_eq!(repo.queue_position(&tasks[0].id).await.unwrap(), Some(1));
    assert_eq!(repo.queue_position(&TaskId::new()).await.unwrap(), None);
}

pub async fn backoff_keeps_a_task_out_of_claims_until_its_time(repo: &dyn TaskRepo) {
    let t = new_task(None, 0, 1);
    repo.insert(std::slice::from_ref(&t)).await.unwrap();
    let later = TaskUpdate {
        run_at: Some(5_000),
        ..TaskUpdate::default()
    };
    repo.update(&t.id, TaskState::Queued, None, &later, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(
        repo.claim_queued("kie", 4_999, 10, "w", 9_000)
            .await
            .unwrap()
            .is_empty()
    );
    // A task waiting out a backoff keeps its place in the queue.
    assert_eq!(repo.queue_position(&t.id).await.unwrap(), Some(1));
    assert_eq!(
        repo.claim_queued("kie", 5_000, 10, "w", 9_000)
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn guarded_update_changes_nothing_when_the_state_differs(repo: &dyn TaskRepo) {
    let t = new_task(None, 0, 1);
    repo.insert(std::slice::from_ref(&t)).await.unwrap();
    let done = TaskUpdate {
        state: Some(TaskState::Succeeded),
        result_keys: Some(vec!["results/a.png".into()]),
        credits: Some(4),
        error: Some(Some(("code".into(), "message".into()))),
        completed_at: Some(20),
        add_attempt: true,
        ..TaskUpdate::default()
    };
    // Not in `submitted`: nothing changes.
    assert!(
        repo.update(&t.id, TaskState::Submitted, None, &done, 20)
            .await
            .unwrap()
            .is_none()
    );
    let unchanged = repo.get(&t.id).await.unwrap().unwrap();
    assert_eq!(unchanged.state, TaskState::Queued);
    assert!(unchanged.result_keys.is_empty());
    assert_eq!((unchanged.attempts, unchanged.credits), (0, None));
    // An unknown task is not updated either.
    assert!(
        repo.update(&TaskId::new(), TaskState::Queued, None, &done, 20)
            .await
            .unwrap()
            .is_none()
    );
    // From the state it is in, the update applies and returns the new row.
    let after = repo
        .update(&t.id, TaskState::Queued, None, &done, 20)
        .await
        .unwrap()
        .expect("guard holds");
    assert_eq!(after.state, TaskState::Succeeded);
    assert_eq!(after.result_keys, ["results/a.png"]);
    assert_eq!((after.attempts, after.credits), (1, Some(4)));
    assert_eq!(after.error_code.as_deref(), Some("code"));
    assert_eq!((after.completed_at, after.updated_at), (Some(20), 20));
    assert_eq!(repo.get(&t.id).await.unwrap().unwrap(), after);
    // `Some(None)` clears the error; a second identical transition no longer applies.
    let cleared = TaskUpdate {
        error: Some(None),
        ..TaskUpdate::default()
    };
    let after = repo
        .update(&t.id, TaskState::Succeeded, None, &cleared, 21)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((after.error_code, after.error_message), (None, None));
    assert!(
        repo.update(&t.id, TaskState::Queued, None, &done, 22)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn stale_workers_writes_are_refused_and_lapsed_leases_reclaimed(repo: &dyn TaskRepo) {
    let t = new_task(None, 0, 1);
    repo.insert(std::slice::from_ref(&t)).await.unwrap();
    let claimed = repo
        .claim_queued("kie", 100, 1, "old-worker", 200)
        .await
        .unwrap();
    assert_eq!(claimed[0].state, TaskState::Submitting);
    // A live lease is not taken over.
    assert!(
        repo.claim_due(TaskState::Submitting, 150, 10, "new-worker", 400)
            .await
            .unwrap()
            .is_empty()
    );
    // The lease runs out; another worker takes the task over.
    let taken = repo
        .claim_due(TaskState::Submitting, 300, 10, "new-worker", 400)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(
        taken[0].state,
        TaskState::Submitting,
        "claim_due keeps the state"
    );
    assert_eq!(taken[0].lease_owner.as_deref(), Some("new-worker"));
    // The old worker finally answers: its guarded write changes nothing.
    let accepted = TaskUpdate {
        state: Some(TaskState::Submitted),
        provider_task_id: Some("p1".into()),
        ..TaskUpdate::default()
    };
    assert!(
        repo.update(
            &t.id,
            TaskState::Submitting,
            Some("old-worker"),
            &accepted,
            301
        )
        .await
        .unwrap()
        .is_none()
    );
    assert!(
        repo.update(
            &t.id,
            TaskState::Submitting,
            Some("new-worker"),
            &accepted,
            302
        )
        .await
        .unwrap()
        .is_some()
    );
    // Leases extend only for their holder; a live lease is not claimed.
    assert!(!repo.extend_lease(&t.id, "old-worker", 900).await.unwrap());
    assert!(
        repo.claim_due(TaskState::Submitted, 350, 10, "third", 500)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        repo.claim_due(TaskState::Submitted, 401, 10, "third", 500)
            .await
            .unwrap()
            .len(),
        1
    );
    // Tasks in another state are not claimed by `claim_due`.
    assert!(
        repo.claim_due(TaskState::Running, 10_000, 10, "fourth", 20_000)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn leases_extend_and_release_only_for_their_holder(repo: &dyn TaskRepo) {
    let a = new_task(None, 0, 1);
    let b = new_task(None, 0, 2);
    repo.insert(&[a.clone(), b.clone()]).await.unwrap();
    repo.claim_queued("kie", 10, 2, "w", 100).await.unwrap();
    assert!(repo.extend_lease(&a.id, "w", 500).await.unwrap());
    assert!(!repo.extend_lease(&a.id, "someone-else", 900).await.unwrap());
    assert_eq!(
        repo.get(&a.id).await.unwrap().unwrap().lease_until,
        Some(500)
    );
    // `b` moves on to `submitted` keeping its lease; `a` stays mid-create.
    repo.update(
        &b.id,
        TaskState::Submitting,
        Some("w"),
        &to(TaskState::Submitted),
        20,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(repo.release_leases("someone-else").await.unwrap(), 0);
    assert_eq!(
        repo.release_leases("w").await.unwrap(),
        1,
        "tasks mid-create keep their lease"
    );
    let a = repo.get(&a.id).await.unwrap().unwrap();
    let b = repo.get(&b.id).await.unwrap().unwrap();
    assert_eq!(a.lease_owner.as_deref(), Some("w"));
    assert_eq!((b.lease_owner, b.lease_until), (None, None));
    // A released task is claimable at once; releasing in an update drops the lease too.
    assert_eq!(
        repo.claim_due(TaskState::Submitted, 30, 10, "v", 40)
            .await
            .unwrap()
            .len(),
        1
    );
    let release = TaskUpdate {
        release_lease: true,
        ..TaskUpdate::default()
    };
    let dropped = repo
        .update(&b.id, TaskState::Submitted, Some("v"), &release, 31)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dropped.lease_owner, None);
}

pub async fn provider_ids_are_unique_and_set_once(repo: &dyn TaskRepo) {
    let a = new_task(None, 0, 1);
    let b = new_task(None, 0, 2);
    let mut c = new_task(None, 0, 3);
    c.provider = "gemini".into();
    repo.insert(&[a.clone(), b.clone(), c.clone()])
        .await
        .unwrap();
    assert!(repo.set_provider_task_id(&a.id, "p1", 5).await.unwrap());
    assert!(
        !repo.set_provider_task_id(&a.id, "p2", 6).await.unwrap(),
        "only if none is known yet"
    );
    assert_eq!(
        repo.get(&a.id)
            .await
            .unwrap()
            .unwrap()
            .provider_task_id
            .as_deref(),
        Some("p1")
    );
    assert_eq!(
        repo.get_by_provider_id("kie", "p1")
            .await
            .unwrap()
            .unwrap()
            .id,
        a.id
    );
    assert!(
        repo.get_by_provider_id("gemini", "p1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        repo.get_by_provider_id("kie", "p9")
            .await
            .unwrap()
            .is_none()
    );
    // The same provider id on a second task of that provider is refused, either way.
    assert!(matches!(
        repo.set_provider_task_id(&b.id, "p1", 7).await,
        Err(RepoError::DuplicateProviderId(id)) if id == "p1"
    ));
    let dup = TaskUpdate {
        provider_task_id: Some("p1".into()),
        ..TaskUpdate::default()
    };
    assert!(matches!(
        repo.update(&b.id, TaskState::Queued, None, &dup, 8).await,
        Err(RepoError::DuplicateProviderId(id)) if id == "p1"
    ));
    assert_eq!(
        repo.get(&b.id).await.unwrap().unwrap().provider_task_id,
        None
    );
    // Another provider may use the same id.
    assert!(repo.set_provider_task_id(&c.id, "p1", 9).await.unwrap());
}

pub async fn callbacks_make_a_live_task_due(repo: &dyn TaskRepo) {
    let live = new_task(None, 0, 1);
    let done = new_task(None, 0, 2);
    repo.insert(&[live.clone(), done.clone()]).await.unwrap();
    let later = TaskUpdate {
        run_at: Some(1_000),
        ..TaskUpdate::default()
    };
    repo.update(&live.id, TaskState::Queued, None, &later, 3)
        .await
        .unwrap()
        .unwrap();
    repo.update(&done.id, TaskState::Queued, None, &to(TaskState::Failed), 3)
        .await
        .unwrap()
        .unwrap();
    let noted = repo.note_callback(&live.id, 50).await.unwrap().unwrap();
    assert_eq!((noted.callback_at, noted.run_at), (Some(50), 50));
    // A callback never pushes a task back.
    let noted = repo.note_callback(&live.id, 60).await.unwrap().unwrap();
    assert_eq!((noted.callback_at, noted.run_at), (Some(60), 50));
    assert!(
        repo.note_callback(&done.id, 70).await.unwrap().is_none(),
        "terminal"
    );
    assert_eq!(repo.get(&done.id).await.unwrap().unwrap().callback_at, None);
    assert!(
        repo.note_callback(&TaskId::new(), 70)
            .await
            .unwrap()
            .is_none()
    );
}

pub async fn listing_filters_and_pages(repo: &dyn TaskRepo) {
    let tasks = vec![
        new_task(Some("alice"), 0, 1),
        new_task(Some("alice"), 0, 2),
        new_task(None, 0, 3),
        new_task(Some("bob"), 0, 4),
    ];
    repo.insert(&tasks).await.unwrap();
    repo.update(
        &tasks[1].id,
        TaskState::Queued,
        None,
        &to(TaskState::Failed),
        5,
    )
    .await
    .unwrap()
    .unwrap();
    let mut newest_first: Vec<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
    newest_first.sort_by(|a, b| b.as_str().cmp(a.as_str()));
    let ids = |list: Vec<crate::storage::Task>| list.into_iter().map(|t| t.id).collect::<Vec<_>>();

    let all = TaskFilter {
        limit: 10,
        ..TaskFilter::default()
    };
    assert_eq!(ids(repo.list(&all).await.unwrap()), newest_first);
    let page = TaskFilter {
        limit: 2,
        ..TaskFilter::default()
    };
    assert_eq!(ids(repo.list(&page).await.unwrap()), newest_first[..2]);
    let next = TaskFilter {
        limit: 10,
        before: Some(newest_first[1].clone()),
        ..TaskFilter::default()
    };
    assert_eq!(ids(repo.list(&next).await.unwrap()), newest_first[2..]);

    let alice = TaskFilter {
        owner: Some(Some("alice".into())),
        limit: 10,
        ..TaskFilter::default()
    };
    assert_eq!(repo.list(&alice).await.unwrap().len(), 2);
    let nobody = TaskFilter {
        owner: Some(None),
        limit: 10,
        ..TaskFilter::default()
    };
    assert_eq!(
        ids(repo.list(&nobody).await.unwrap()),
        [tasks[2].id.clone()]
    );
    let failed = TaskFilter {
        states: vec![TaskState::Failed, TaskState::Canceled],
        limit: 10,
        ..TaskFilter::default()
    };
    assert_eq!(
        ids(repo.list(&failed).await.unwrap()),
        [tasks[1].id.clone()]
    );
    let in_batch = TaskFilter {
        batch_id: Some("no-such-batch".into()),
        limit: 10,
        ..TaskFilter::default()
    };
    assert!(repo.list(&in_batch).await.unwrap().is_empty());
}

pub async fn in_flight_counts_and_health(repo: &dyn TaskRepo) {
    repo.ping().await.unwrap();
    repo.probe_write(4096).await.unwrap();
    let tasks: Vec<_> = (0..4).map(|i| new_task(None, 0, i)).collect();
    repo.insert(&tasks).await.unwrap();
    assert_eq!(
        repo.count_in_flight("kie").await.unwrap(),
        0,
        "queued is not in flight"
    );
    let claimed = repo.claim_queued("kie", 10, 3, "w", 100).await.unwrap();
    assert_eq!(repo.count_in_flight("kie").await.unwrap(), 3);
    repo.update(
        &claimed[0].id,
        TaskState::Submitting,
        None,
        &to(TaskState::Running),
        11,
    )
    .await
    .unwrap()
    .unwrap();
    repo.update(
        &claimed[1].id,
        TaskState::Submitting,
        None,
        &to(TaskState::Succeeded),
        11,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(repo.count_in_flight("kie").await.unwrap(), 2);
    assert_eq!(repo.count_in_flight("gemini").await.unwrap(), 0);
    // The metrics' queue gauge: unfinished tasks by provider and state; finished ones and
    // empty pairs are left out.
    let mut unfinished = repo.count_unfinished().await.unwrap();
    unfinished.sort_by_key(|(p, s, _)| (p.clone(), s.as_str()));
    assert_eq!(
        unfinished,
        [
            ("kie".to_owned(), TaskState::Queued, 1),
            ("kie".to_owned(), TaskState::Running, 1),
            ("kie".to_owned(), TaskState::Submitting, 1),
        ]
    );
}
