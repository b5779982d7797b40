//! The contract of [`BatchRepo`]: a batch and its tasks stored together, listed newest
//! first by owner, and counted per state with the credits they consumed.

use super::new_task;
use crate::domain::TaskState;
use crate::storage::{Batch, BatchCount, BatchRepo, Repo, TaskFilter, TaskUpdate};

fn batch(id: &str, owner: Option<&str>, total: i64) -> Batch {
    Batch {
        id: id.into(),
        owner: owner.map(str::to_owned),
        prompt: "a prompt".into(),
        webhook_url: Some("https://hooks.example.com/b".into()),
        total,
        created_at: 10,
    }
}

pub async fn batch_round_trip_and_listing(repo: &dyn BatchRepo) {
    let one = batch("bat_1", Some("alice"), 0);
    let two = batch("bat_2", None, 0);
    let three = batch("bat_3", Some("alice"), 0);
    for b in [&one, &two, &three] {
        repo.insert_batch(b, &[]).await.unwrap();
    }
    assert_eq!(repo.get_batch("bat_1").await.unwrap(), Some(one.clone()));
    assert_eq!(repo.get_batch("bat_9").await.unwrap(), None);
    let all = repo.list_batches(None, None, 10).await.unwrap();
    assert_eq!(
        all,
        [three.clone(), two.clone(), one.clone()],
        "newest first"
    );
    assert_eq!(
        repo.list_batches(Some(Some("alice".into())), None, 10)
            .await
            .unwrap(),
        [three.clone(), one.clone()]
    );
    assert_eq!(
        repo.list_batches(Some(None), None, 10).await.unwrap(),
        std::slice::from_ref(&two)
    );
    assert_eq!(
        repo.list_batches(None, Some("bat_3".into()), 1)
            .await
            .unwrap(),
        std::slice::from_ref(&two),
        "the cursor and the limit"
    );
    assert!(
        repo.insert_batch(&one, &[]).await.is_err(),
        "ids are unique"
    );
    assert!(repo.batch_counts("bat_1").await.unwrap().is_empty());
}

pub async fn batch_counts_follow_task_states(repo: &dyn Repo) {
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let mut t = new_task(Some("alice"), 0, i);
            t.batch_id = Some("bat_c".into());
            t
        })
        .collect();
    let mut outside = new_task(Some("alice"), 0, 9);
    outside.batch_id = None;
    repo.insert(std::slice::from_ref(&outside)).await.unwrap();
    repo.insert_batch(&batch("bat_c", Some("alice"), 4), &tasks)
        .await
        .unwrap();
    for t in &tasks {
        assert_eq!(
            repo.get(&t.id).await.unwrap().unwrap().batch_id.as_deref(),
            Some("bat_c"),
            "the batch's tasks are stored with it"
        );
    }
    let listed = TaskFilter {
        batch_id: Some("bat_c".into()),
        limit: 10,
        ..TaskFilter::default()
    };
    assert_eq!(repo.list(&listed).await.unwrap().len(), 4);
    let counts = repo.batch_counts("bat_c").await.unwrap();
    assert_eq!(
        counts,
        [BatchCount {
            state: TaskState::Queued,
            count: 4,
            credits: 0
        }]
    );
    for (t, credits) in tasks.iter().take(2).zip([3, 5]) {
        let done = TaskUpdate {
            state: Some(TaskState::Succeeded),
            credits: Some(credits),
            ..TaskUpdate::default()
        };
        repo.update(&t.id, TaskState::Queued, None, &done, 20)
            .await
            .unwrap()
            .unwrap();
    }
    let failed = TaskUpdate {
        state: Some(TaskState::Failed),
        ..TaskUpdate::default()
    };
    repo.update(&tasks[2].id, TaskState::Queued, None, &failed, 20)
        .await
        .unwrap()
        .unwrap();
    let mut counts = repo.batch_counts("bat_c").await.unwrap();
    counts.sort_by_key(|c| c.state.as_str());
    assert_eq!(
        counts,
        [
            BatchCount {
                state: TaskState::Failed,
                count: 1,
                credits: 0
            },
            BatchCount {
                state: TaskState::Queued,
                count: 1,
                credits: 0
            },
            BatchCount {
                state: TaskState::Succeeded,
                count: 2,
                credits: 8
            },
        ]
    );
}
