//! The contract of [`TaskRepo::move_provider`]: the move of provider failover is one guarded
//! statement that takes only tasks whose create is known not to have been made (queued or
//! held `submitting` under the caller's lease, no provider id, never submitted, no callback,
//! not pinned), whose request allowed it (or said nothing, when the default allows), and
//! never to a provider they left; moved tasks are queued at the target, due at once, with
//! its model, no attempts and no error, the provider they left recorded.

use super::new_task;
use crate::domain::{TaskId, TaskState};
use crate::storage::{NewTask, ProviderMove, TaskRepo, TaskUpdate};

fn to_gemini(reason: &'static str, by_default: bool, now: i64) -> ProviderMove<'static> {
    ProviderMove {
        from: "kie",
        to: "gemini",
        model: "gemini-2.5-flash-image",
        reason,
        by_default,
        held: None,
        limit: 100,
        now,
    }
}

fn allowing(fallback: Option<bool>, created_at: i64) -> NewTask {
    NewTask {
        fallback,
        ..new_task(None, 0, created_at)
    }
}

pub async fn only_tasks_whose_create_was_never_made_move(repo: &dyn TaskRepo) {
    let free = allowing(None, 1);
    let said_yes = allowing(Some(true), 2);
    let said_no = allowing(Some(false), 3);
    let accepted = allowing(None, 4);
    let unconfirmed = allowing(None, 5);
    let requeued_after_unconfirmed = allowing(None, 6);
    let pinned = allowing(None, 7);
    let called_back = allowing(None, 8);
    let other_provider = NewTask {
        provider: "gemini".into(),
        ..allowing(None, 9)
    };
    repo.insert(&[
        free.clone(),
        said_yes.clone(),
        said_no.clone(),
        accepted.clone(),
        unconfirmed.clone(),
        requeued_after_unconfirmed.clone(),
        pinned.clone(),
        called_back.clone(),
        other_provider.clone(),
    ])
    .await
    .unwrap();
    let set = |id: &TaskId, from: TaskState, update: TaskUpdate| {
        let id = id.clone();
        async move {
            repo.update(&id, from, None, &update, 10)
                .await
                .unwrap()
                .unwrap()
        }
    };
    // Accepted by KIE: at KIE for good.
    set(
        &accepted.id,
        TaskState::Queued,
        TaskUpdate {
            state: Some(TaskState::Submitted),
            provider_task_id: Some("kie-1".into()),
            submitted_at: Some(10),
            ..TaskUpdate::default()
        },
    )
    .await;
    // A create with no answer: waiting for a callback.
    set(
        &unconfirmed.id,
        TaskState::Queued,
        TaskUpdate {
            state: Some(TaskState::Submitted),
            submitted_at: Some(10),
            ..TaskUpdate::default()
        },
    )
    .await;
    // Resubmitted after an unconfirmed create: queued, but the first create may exist.
    set(
        &requeued_after_unconfirmed.id,
        TaskState::Queued,
        TaskUpdate {
            submitted_at: Some(10),
            ..TaskUpdate::default()
        },
    )
    .await;
    set(
        &pinned.id,
        TaskState::Queued,
        TaskUpdate {
            pin_provider: true,
            ..TaskUpdate::default()
        },
    )
    .await;
    repo.note_callback(&called_back.id, 10).await.unwrap();
    // Still queued, due later, with the reason it waits.
    set(
        &free.id,
        TaskState::Queued,
        TaskUpdate {
            run_at: Some(5_000),
            add_attempt: true,
            error: Some(Some(("provider_paused".into(), "no credits".into()))),
            ..TaskUpdate::default()
        },
    )
    .await;

    let moved = repo
        .move_provider(&to_gemini("credits", true, 20))
        .await
        .unwrap();
    let mut ids: Vec<&TaskId> = moved.iter().map(|t| &t.id).collect();
    ids.sort();
    let mut expected = vec![&free.id, &said_yes.id];
    expected.sort();
    assert_eq!(ids, expected, "only never-created tasks that may move");
    let got = repo.get(&free.id).await.unwrap().unwrap();
    assert_eq!(got.state, TaskState::Queued);
    assert_eq!(
        (got.provider.as_str(), got.model.as_str()),
        ("gemini", "gemini-2.5-flash-image")
    );
    assert_eq!((got.run_at, got.attempts, got.updated_at), (20, 0, 20));
    assert_eq!((&got.error_code, &got.error_message), (&None, &None));
    assert_eq!(got.failover.left, ["kie"]);
    assert_eq!(got.failover.reason.as_deref(), Some("credits"));
    assert_eq!(got.failover.moved_at, Some(20));
    assert_eq!(got.failover.allowed, None, "the request's choice is kept");
    assert_eq!(got, moved.iter().find(|t| t.id == free.id).unwrap().clone());
    for id in [
        &said_no.id,
        &accepted.id,
        &unconfirmed.id,
        &requeued_after_unconfirmed.id,
        &pinned.id,
        &called_back.id,
    ] {
        let stayed = repo.get(id).await.unwrap().unwrap();
        assert_eq!(stayed.provider, "kie", "{id} must not move");
        assert!(stayed.failover.left.is_empty());
    }
    assert_eq!(
        repo.get(&other_provider.id)
            .await
            .unwrap()
            .unwrap()
            .provider,
        "gemini"
    );

    // With the default off, only tasks whose request said yes move; none are left here.
    let again = repo
        .move_provider(&to_gemini("credits", false, 30))
        .await
        .unwrap();
    assert!(again.is_empty());
}

pub async fn the_default_decides_for_requests_that_said_nothing(repo: &dyn TaskRepo) {
    let silent = allowing(None, 1);
    let said_yes = allowing(Some(true), 2);
    repo.insert(&[silent.clone(), said_yes.clone()])
        .await
        .unwrap();
    let moved = repo
        .move_provider(&to_gemini("failing", false, 10))
        .await
        .unwrap();
    assert_eq!(
        moved.iter().map(|t| &t.id).collect::<Vec<_>>(),
        [&said_yes.id]
    );
    let moved = repo
        .move_provider(&to_gemini("failing", true, 11))
        .await
        .unwrap();
    assert_eq!(
        moved.iter().map(|t| &t.id).collect::<Vec<_>>(),
        [&silent.id]
    );
}

pub async fn a_task_never_returns_to_a_provider_it_left(repo: &dyn TaskRepo) {
    let task = allowing(None, 1);
    repo.insert(std::slice::from_ref(&task)).await.unwrap();
    assert_eq!(
        repo.move_provider(&to_gemini("credits", true, 10))
            .await
            .unwrap()
            .len(),
        1
    );
    let back = ProviderMove {
        from: "gemini",
        to: "kie",
        model: "google/nano-banana-edit",
        ..to_gemini("failing", true, 20)
    };
    assert!(repo.move_provider(&back).await.unwrap().is_empty());
    // On to a third provider, the list of providers left grows in order.
    let third = ProviderMove {
        from: "gemini",
        to: "other",
        model: "other-model",
        ..to_gemini("failing", true, 30)
    };
    let moved = repo.move_provider(&third).await.unwrap();
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0].failover.left, ["kie", "gemini"]);
    assert_eq!(moved[0].failover.reason.as_deref(), Some("failing"));
}

pub async fn a_held_task_moves_only_under_its_lease_and_a_claimed_one_not_at_all(
    repo: &dyn TaskRepo,
) {
    let tasks = [allowing(None, 1), allowing(None, 2), allowing(None, 3)];
    repo.insert(&tasks).await.unwrap();
    let claimed = repo.claim_queued("kie", 10, 2, "w1", 1_000).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // A sweep of queued tasks leaves the claimed ones (being submitted) alone.
    let swept = repo
        .move_provider(&to_gemini("credits", true, 20))
        .await
        .unwrap();
    assert_eq!(
        swept.iter().map(|t| &t.id).collect::<Vec<_>>(),
        [&tasks[2].id]
    );
    // Another worker cannot move a task this one holds; its holder can.
    let held = &claimed[0].id;
    let by = |worker: &'static str, now: i64| ProviderMove {
        held: Some((held, worker)),
        limit: 1,
        ..to_gemini("attempts", true, now)
    };
    assert!(repo.move_provider(&by("w2", 30)).await.unwrap().is_empty());
    let moved = repo.move_provider(&by("w1", 31)).await.unwrap();
    assert_eq!(moved.len(), 1);
    let moved = &moved[0];
    assert_eq!(
        (moved.state, moved.lease_owner.as_deref()),
        (TaskState::Queued, None)
    );
    assert_eq!(moved.provider, "gemini");
    assert_eq!(moved.callback_token_hash, "");
    // The other claimed task is still the claimer's.
    let other = repo.get(&claimed[1].id).await.unwrap().unwrap();
    assert_eq!(
        (other.state, other.provider.as_str()),
        (TaskState::Submitting, "kie")
    );
}

pub async fn moves_take_the_highest_priority_and_oldest_first_up_to_the_limit(repo: &dyn TaskRepo) {
    let tasks = [
        new_task(None, 0, 1),
        new_task(None, 5, 2),
        new_task(None, 0, 3),
    ];
    repo.insert(&tasks).await.unwrap();
    let first = repo
        .move_provider(&ProviderMove {
            limit: 2,
            ..to_gemini("credits", true, 10)
        })
        .await
        .unwrap();
    let mut ids: Vec<&TaskId> = first.iter().map(|t| &t.id).collect();
    ids.sort();
    let mut expected = vec![&tasks[0].id, &tasks[1].id];
    expected.sort();
    assert_eq!(ids, expected);
    let rest = repo
        .move_provider(&to_gemini("credits", true, 11))
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|t| &t.id).collect::<Vec<_>>(),
        [&tasks[2].id]
    );
}
