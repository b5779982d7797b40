//! The contract of [`DeliveryRepo`]: a task with a webhook has one delivery, due once the
//! task is final; each attempt is claimed by one worker; the outcome is recorded and a
//! retry comes back when it is due.

use super::new_task;
use crate::domain::TaskState;
use crate::storage::{DeliveryOutcome, NewTask, Repo, TaskUpdate};

async fn final_task_with_webhook(repo: &dyn Repo, created_at: i64) -> NewTask {
    let mut t = new_task(None, 0, created_at);
    t.webhook_url = Some("https://hooks.example.com/d".into());
    repo.insert(std::slice::from_ref(&t)).await.unwrap();
    let done = TaskUpdate {
        state: Some(TaskState::Succeeded),
        ..TaskUpdate::default()
    };
    repo.update(&t.id, TaskState::Queued, None, &done, created_at)
        .await
        .unwrap()
        .unwrap();
    t
}

pub async fn deliveries_wait_for_a_final_task(repo: &dyn Repo) {
    let mut live = new_task(None, 0, 1);
    live.webhook_url = Some("https://hooks.example.com/live".into());
    let silent = new_task(None, 0, 1);
    repo.insert(&[live.clone(), silent.clone()]).await.unwrap();
    assert!(
        repo.due_webhooks(100, 10).await.unwrap().is_empty(),
        "not final yet; no webhook asked for"
    );
    let failed = TaskUpdate {
        state: Some(TaskState::Failed),
        ..TaskUpdate::default()
    };
    for t in [&live, &silent] {
        repo.update(&t.id, TaskState::Queued, None, &failed, 2)
            .await
            .unwrap()
            .unwrap();
    }
    let due = repo.due_webhooks(100, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].task_id, live.id);
    assert_eq!(due[0].url, "https://hooks.example.com/live");
    assert_eq!(due[0].attempts, 0);
    assert!(due[0].id.starts_with("msg_"), "{}", due[0].id);
    // Due from the task's creation on, not before.
    assert!(repo.due_webhooks(0, 10).await.unwrap().is_empty());
    // The limit holds.
    final_task_with_webhook(repo, 3).await;
    assert_eq!(repo.due_webhooks(100, 1).await.unwrap().len(), 1);
    assert_eq!(repo.due_webhooks(100, 10).await.unwrap().len(), 2);
}

pub async fn a_delivery_is_claimed_once_per_attempt(repo: &dyn Repo) {
    let t = final_task_with_webhook(repo, 1).await;
    let due = repo.due_webhooks(10, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let id = &due[0].id;
    assert_eq!(due[0].task_id, t.id);
    assert!(repo.claim_webhook(id, 10, 1_000).await.unwrap());
    assert!(
        !repo.claim_webhook(id, 10, 1_000).await.unwrap(),
        "another worker took it first"
    );
    assert!(
        repo.due_webhooks(500, 10).await.unwrap().is_empty(),
        "claimed until its lease runs out"
    );
    // A worker that died mid-attempt: the lease runs out and the delivery is due again,
    // with the attempt counted.
    let again = repo.due_webhooks(1_000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert!(
        !repo
            .claim_webhook("msg_unknown", 1_000, 2_000)
            .await
            .unwrap()
    );
}

pub async fn a_running_attempt_extends_its_lease_while_it_holds_it(repo: &dyn Repo) {
    final_task_with_webhook(repo, 1).await;
    let id = repo.due_webhooks(10, 10).await.unwrap()[0].id.clone();
    assert!(repo.claim_webhook(&id, 10, 100).await.unwrap());
    assert!(repo.extend_webhook_lease(&id, 100, 300).await.unwrap());
    assert!(
        repo.due_webhooks(200, 10).await.unwrap().is_empty(),
        "held until the extended lease"
    );
    assert!(
        !repo.extend_webhook_lease(&id, 100, 400).await.unwrap(),
        "only from the lease it holds"
    );
    // The lease ran out and another worker took it: the first one's heartbeat is refused.
    assert!(repo.claim_webhook(&id, 300, 500).await.unwrap());
    assert!(!repo.extend_webhook_lease(&id, 300, 600).await.unwrap());
    repo.finish_webhook(&id, &DeliveryOutcome::Delivered { status: 200 }, 400)
        .await
        .unwrap();
    assert!(!repo.extend_webhook_lease(&id, 500, 700).await.unwrap());
}

pub async fn retries_come_back_when_due_and_finished_ones_do_not(repo: &dyn Repo) {
    final_task_with_webhook(repo, 1).await;
    final_task_with_webhook(repo, 2).await;
    let due = repo.due_webhooks(10, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    let (a, b) = (due[0].id.clone(), due[1].id.clone());

    assert!(repo.claim_webhook(&a, 10, 100).await.unwrap());
    let retry = DeliveryOutcome::Retry {
        run_at: 50,
        status: Some(503),
        error: "unavailable".into(),
    };
    repo.finish_webhook(&a, &retry, 11).await.unwrap();
    assert!(repo.claim_webhook(&b, 10, 100).await.unwrap());
    repo.finish_webhook(&b, &DeliveryOutcome::Delivered { status: 204 }, 12)
        .await
        .unwrap();

    assert!(repo.due_webhooks(49, 10).await.unwrap().is_empty());
    let due = repo.due_webhooks(50, 10).await.unwrap();
    assert_eq!(due.len(), 1, "only the retry, and only when due");
    assert_eq!((due[0].id.as_str(), due[0].attempts), (a.as_str(), 1));

    assert!(repo.claim_webhook(&a, 50, 200).await.unwrap());
    let gave_up = DeliveryOutcome::GaveUp {
        status: None,
        error: "connection refused".into(),
    };
    repo.finish_webhook(&a, &gave_up, 51).await.unwrap();
    assert!(repo.due_webhooks(1_000_000, 10).await.unwrap().is_empty());
    assert!(!repo.claim_webhook(&a, 1_000_000, 2_000_000).await.unwrap());
    assert!(!repo.claim_webhook(&b, 1_000_000, 2_000_000).await.unwrap());
}
