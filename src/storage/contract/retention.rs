//! The contract of [`RetentionRepo`]: which tasks are expired at a cutoff and which are
//! kept (exactly the others), deleting final tasks with their deliveries and emptied
//! batches (never an unfinished one), old uploads, and which objects tasks use.

use super::new_task;
use crate::domain::{TaskId, TaskState};
use crate::storage::{Batch, DeliveryOutcome, NewTask, Repo, TaskUpdate, UploadRow, Users};

/// Inserts `t` and moves it to `state`, finished at `finished` when that is final.
async fn task_in(repo: &dyn Repo, t: &NewTask, state: TaskState, finished: Option<i64>) {
    repo.insert(std::slice::from_ref(t)).await.unwrap();
    if state != TaskState::Queued {
        let update = TaskUpdate {
            state: Some(state),
            completed_at: finished,
            result_keys: Some(vec![format!("generated/kie-{}-0.png", t.id)]),
            ..TaskUpdate::default()
        };
        repo.update(&t.id, TaskState::Queued, None, &update, 1)
            .await
            .unwrap()
            .unwrap();
    }
}

fn ids_of(tasks: &[crate::storage::ExpiredTask]) -> Vec<TaskId> {
    tasks.iter().map(|t| t.id.clone()).collect()
}

pub async fn expired_and_kept_tasks_split_at_the_cutoff(repo: &dyn Repo) {
    let cutoff = 1_000;
    // Expired: final and finished before the cutoff (or, without a completion time,
    // created before it).
    let old_success = new_task(Some("a"), 0, 10);
    task_in(repo, &old_success, TaskState::Succeeded, Some(500)).await;
    let old_failure = new_task(Some("a"), 0, 20);
    task_in(repo, &old_failure, TaskState::Failed, None).await;
    // Kept: finished after the cutoff, unfinished however old, final with a webhook still
    // waiting.
    let young = new_task(Some("a"), 0, 30);
    task_in(repo, &young, TaskState::Canceled, Some(2_000)).await;
    let stuck = new_task(Some("a"), 0, 40);
    task_in(repo, &stuck, TaskState::Running, None).await;
    let queued = new_task(Some("a"), 0, 50);
    task_in(repo, &queued, TaskState::Queued, None).await;
    let mut hooked = new_task(Some("a"), 0, 60);
    hooked.webhook_url = Some("https://hooks.example.com/x".into());
    task_in(repo, &hooked, TaskState::Expired, Some(100)).await;

    let mut expired = ids_of(&repo.expired_tasks(cutoff, None, 10).await.unwrap());
    let mut want = vec![old_success.id.clone(), old_failure.id.clone()];
    want.sort();
    expired.sort();
    assert_eq!(expired, want);
    let first = repo.expired_tasks(cutoff, None, 10).await.unwrap();
    assert_eq!(
        first[0].result_keys,
        [format!("generated/kie-{}-0.png", first[0].id)]
    );
    assert_eq!(first[0].input_urls, ["https://example.com/a.png"]);
    assert_eq!(first[0].source, "s");
    // Pages by id.
    let one = repo.expired_tasks(cutoff, None, 1).await.unwrap();
    let two = repo
        .expired_tasks(cutoff, Some(&one[0].id), 10)
        .await
        .unwrap();
    assert_eq!(ids_of(&one).len() + ids_of(&two).len(), 2);
    assert!(two[0].id > one[0].id);

    // Kept is exactly the rest, by creation time, paged.
    let kept = repo
        .kept_task_inputs(cutoff, i64::MIN, None, 10)
        .await
        .unwrap();
    let kept_ids: Vec<TaskId> = kept.iter().map(|t| t.id.clone()).collect();
    assert_eq!(
        kept_ids,
        [
            young.id.clone(),
            stuck.id.clone(),
            queued.id.clone(),
            hooked.id.clone()
        ]
    );
    let after = (kept[1].created_at, kept[1].id.clone());
    let rest = repo
        .kept_task_inputs(cutoff, i64::MIN, Some(&after), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].id, queued.id);
    let recent = repo.kept_task_inputs(cutoff, 45, None, 10).await.unwrap();
    assert_eq!(recent.len(), 2, "only those created since 45");

    // Once its webhook is delivered, the waiting task expires too.
    let due = repo.due_webhooks(i64::MAX / 2, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(repo.claim_webhook(&due[0].id, 70, 80).await.unwrap());
    repo.finish_webhook(&due[0].id, &DeliveryOutcome::Delivered { status: 200 }, 71)
        .await
        .unwrap();
    assert_eq!(repo.expired_tasks(cutoff, None, 10).await.unwrap().len(), 3);
}

pub async fn deleting_takes_final_tasks_their_deliveries_and_emptied_batches(repo: &dyn Repo) {
    let batch = |id: &str| Batch {
        id: id.into(),
        owner: None,
        prompt: "p".into(),
        webhook_url: None,
        total: 2,
        created_at: 1,
    };
    let in_batch = |id: &str, at: i64| {
        let mut t = new_task(None, 0, at);
        t.batch_id = Some(id.to_owned());
        t.webhook_url = Some("https://hooks.example.com/b".into());
        t
    };
    // bat_full: both tasks final; bat_half: one final, one running.
    let full = [in_batch("bat_full", 1), in_batch("bat_full", 2)];
    let half = [in_batch("bat_half", 3), in_batch("bat_half", 4)];
    repo.insert_batch(&batch("bat_full"), &full).await.unwrap();
    repo.insert_batch(&batch("bat_half"), &half).await.unwrap();
    let done = TaskUpdate {
        state: Some(TaskState::Succeeded),
        completed_at: Some(5),
        ..TaskUpdate::default()
    };
    for t in full.iter().chain(&half[..1]) {
        repo.update(&t.id, TaskState::Queued, None, &done, 5)
            .await
            .unwrap()
            .unwrap();
    }
    let ids: Vec<TaskId> = full.iter().chain(&half).map(|t| t.id.clone()).collect();
    let deleted = repo.delete_final_tasks(&ids).await.unwrap();
    let mut gone = deleted.tasks.clone();
    gone.sort();
    let mut want: Vec<TaskId> = full
        .iter()
        .chain(&half[..1])
        .map(|t| t.id.clone())
        .collect();
    want.sort();
    assert_eq!(gone, want, "the unfinished task stays");
    assert_eq!(deleted.batches, ["bat_full"]);
    for id in &want {
        assert!(repo.get(id).await.unwrap().is_none());
    }
    assert!(repo.get(&half[1].id).await.unwrap().is_some());
    assert!(repo.get_batch("bat_full").await.unwrap().is_none());
    assert!(repo.get_batch("bat_half").await.unwrap().is_some());
    // The deleted tasks' deliveries went with them; the live one's waits.
    repo.update(&half[1].id, TaskState::Queued, None, &done, 6)
        .await
        .unwrap()
        .unwrap();
    let due = repo.due_webhooks(i64::MAX / 2, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].task_id, half[1].id);
    // Twice, or nothing: no error.
    assert_eq!(
        repo.delete_final_tasks(&want).await.unwrap(),
        Default::default()
    );
    assert_eq!(
        repo.delete_final_tasks(&[]).await.unwrap(),
        Default::default()
    );
    let last = repo
        .delete_final_tasks(std::slice::from_ref(&half[1].id))
        .await
        .unwrap();
    assert_eq!(last.batches, ["bat_half"]);
}

pub async fn old_uploads_are_listed_and_forgotten(repo: &dyn Repo) {
    for (key, at) in [
        ("uploads/b.png", 10),
        ("uploads/a.png", 20),
        ("uploads/c.png", 3_000),
    ] {
        repo.record_upload(key, None, at).await.unwrap();
    }
    let old = repo.uploads_before(1_000, None, 10).await.unwrap();
    assert_eq!(
        old,
        [
            UploadRow {
                key: "uploads/a.png".into(),
                created_at: 20
            },
            UploadRow {
                key: "uploads/b.png".into(),
                created_at: 10
            },
        ]
    );
    let page = repo
        .uploads_before(1_000, Some("uploads/a.png"), 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].key, "uploads/b.png");
    assert_eq!(
        repo.delete_uploads(&["uploads/a.png".into(), "uploads/zz.png".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(repo.upload_owner("uploads/a.png").await.unwrap(), None);
    assert_eq!(repo.uploads_before(1_000, None, 10).await.unwrap().len(), 1);
    assert_eq!(repo.delete_uploads(&[]).await.unwrap(), 0);
}

pub async fn objects_in_use_are_found_by_key_and_url(repo: &dyn Repo) {
    repo.record_upload("uploads/u1.png", None, 100)
        .await
        .unwrap();
    let mut by_key = new_task(None, 0, 200);
    by_key.source = "uploads/u1.png".into();
    by_key.input_urls = vec!["http://127.0.0.1:1/files/uploads/u1.png?sig=abc".into()];
    task_in(repo, &by_key, TaskState::Succeeded, Some(300)).await;
    let mut by_url = new_task(None, 0, 400);
    by_url.source = "https://cdn.example/x.png".into();
    by_url.input_urls = vec![
        "https://cdn.example/x.png".into(),
        "https://cdn.example/uploads/u2.png".into(),
        format!("https://cdn.example/generated/kie-{}-0.png", by_key.id),
    ];
    task_in(repo, &by_url, TaskState::Running, None).await;
    let keys: Vec<String> = [
        "uploads/u1.png",
        "uploads/u2.png",
        "uploads/u3.png",
        &format!("generated/kie-{}-0.png", by_key.id),
    ]
    .map(str::to_owned)
    .to_vec();
    let nobody = TaskId::new();
    assert_eq!(
        repo.objects_in_use(&keys, 0, &nobody, Users::Any)
            .await
            .unwrap(),
        [keys[0].clone(), keys[1].clone(), keys[3].clone()]
    );
    // Another task than the one asking; unfinished ones only.
    assert_eq!(
        repo.objects_in_use(&keys[..1], 0, &by_key.id, Users::Any)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        repo.objects_in_use(&keys, 0, &nobody, Users::Unfinished)
            .await
            .unwrap(),
        [keys[1].clone(), keys[3].clone()]
    );
    // Tasks made long before `since` cannot name the object (an upload's own time wins).
    assert_eq!(
        repo.objects_in_use(&keys[1..2], 10_000_000, &nobody, Users::Any)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        repo.objects_in_use(&keys[..1], 10_000_000, &nobody, Users::Any)
            .await
            .unwrap(),
        [keys[0].clone()],
        "uploaded at 100: read from then on"
    );
}
