//! The contract of [`TaskRepo::restore`]: whole rows written as they are, and never over a
//! task already stored (`darkroom reindex`).

use super::new_task;
use crate::domain::{TaskId, TaskState};
use crate::storage::{TaskRepo, TaskUpdate};

/// A finished task with every column set, as `darkroom reindex` restores one.
fn restored_task(provider_task_id: &str) -> crate::storage::Task {
    crate::storage::Task {
        id: TaskId::new(),
        state: TaskState::Succeeded,
        provider: "kie".into(),
        model: "google/nano-banana-edit".into(),
        prompt: "a restored cat".into(),
        source: "uploads/a.png".into(),
        image_url: "https://example.com/a.png".into(),
        input_urls: vec![
            "https://example.com/a.png".into(),
            "https://example.com/b.png".into(),
        ],
        aspect_ratio: "16:9".into(),
        output_format: "jpeg".into(),
        priority: 2,
        batch_id: Some("bat_1".into()),
        owner: Some("alice".into()),
        attempts: 3,
        run_at: 40,
        lease_owner: None,
        lease_until: None,
        provider_task_id: Some(provider_task_id.into()),
        callback_token_hash: String::new(),
        callback_at: Some(35),
        result_source_urls: vec!["https://p.example.com/r.png".into()],
        result_keys: vec!["generated/kie-x-0.jpg".into()],
        result_urls: vec!["https://b.example.com/generated/kie-x-0.jpg".into()],
        credits: Some(4),
        cost_time_ms: Some(12_000),
        error_code: Some("provider_500".into()),
        error_message: Some("a sentence".into()),
        created_at: 10,
        updated_at: 50,
        submitted_at: Some(20),
        completed_at: Some(50),
        retry_of: Some(TaskId::new()),
        webhook_url: Some("https://hooks.example.com/x".into()),
        missing_answers: 1,
        failover: crate::domain::task_row::Failover {
            allowed: Some(true),
            left: vec!["kie".into()],
            reason: Some("credits".into()),
            moved_at: Some(15),
        },
    }
}

pub async fn restore_writes_whole_rows_and_never_overwrites(repo: &dyn TaskRepo) {
    let task = restored_task("kie-restored-1");
    assert!(
        repo.restore(&task).await.unwrap(),
        "a missing task is added"
    );
    assert_eq!(
        repo.get(&task.id).await.unwrap().unwrap(),
        task,
        "every column"
    );
    assert_eq!(
        repo.get_by_provider_id("kie", "kie-restored-1")
            .await
            .unwrap()
            .unwrap()
            .id,
        task.id
    );
    // The same id again, even with other contents: nothing changes.
    let older = crate::storage::Task {
        state: TaskState::Queued,
        prompt: "older".into(),
        updated_at: 11,
        ..task.clone()
    };
    assert!(!repo.restore(&older).await.unwrap());
    assert_eq!(repo.get(&task.id).await.unwrap().unwrap(), task);
    // A task already stored through the queue keeps its newer state.
    let queued = new_task(None, 0, 1);
    repo.insert(std::slice::from_ref(&queued)).await.unwrap();
    repo.update(
        &queued.id,
        TaskState::Queued,
        None,
        &TaskUpdate {
            state: Some(TaskState::Canceled),
            ..TaskUpdate::default()
        },
        2,
    )
    .await
    .unwrap()
    .unwrap();
    let stale = crate::storage::Task {
        id: queued.id.clone(),
        state: TaskState::Queued,
        provider_task_id: None,
        ..restored_task("unused")
    };
    assert!(!repo.restore(&stale).await.unwrap());
    assert_eq!(
        repo.get(&queued.id).await.unwrap().unwrap().state,
        TaskState::Canceled
    );
    // Another id with a provider id already taken at that provider: refused, not an error.
    let twin = restored_task("kie-restored-1");
    assert!(!repo.restore(&twin).await.unwrap());
    assert!(repo.get(&twin.id).await.unwrap().is_none());
}
