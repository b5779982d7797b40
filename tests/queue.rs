//! The queue's order against a real SQLite database: priority first, fairness between
//! owners within a priority, age last; queue positions; guarded transitions and leases.

use darkroom::domain::{TaskId, TaskState};
use darkroom::storage::sqlite::SqliteRepo;
use darkroom::storage::{NewTask, TaskRepo, TaskUpdate};

fn task(owner: Option<&str>, priority: i32, created_at: i64) -> NewTask {
    NewTask {
        id: TaskId::new(),
        provider: "kie".into(),
        model: "google/nano-banana-edit".into(),
        prompt: "p".into(),
        source: "s".into(),
        image_url: "https://example.com/a.png".into(),
        input_urls: vec!["https://example.com/a.png".into()],
        aspect_ratio: "1:1".into(),
        output_format: "png".into(),
        priority,
        batch_id: None,
        owner: owner.map(str::to_owned),
        callback_token_hash: String::new(),
        created_at,
        retry_of: None,
        webhook_url: None,
    }
}

async fn repo() -> (SqliteRepo, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    (
        SqliteRepo::connect(&url, 4, darkroom::storage::Durability::Normal)
            .await
            .unwrap(),
        dir,
    )
}

#[tokio::test]
async fn higher_priority_first_then_oldest_first() {
    let (repo, _dir) = repo().await;
    let tasks = vec![
        task(None, 0, 1),
        task(None, 5, 2),
        task(None, 0, 3),
        task(None, 5, 4),
        task(None, -3, 0),
    ];
    repo.insert(&tasks).await.unwrap();
    let claimed = repo.claim_queued("kie", 100, 10, "w", 1000).await.unwrap();
    let order: Vec<(i32, i64)> = claimed.iter().map(|t| (t.priority, t.created_at)).collect();
    println!("claim order (priority, age): {order:?}");
    assert_eq!(order, [(5, 2), (5, 4), (0, 1), (0, 3), (-3, 0)]);
}

#[tokio::test]
async fn one_owners_big_batch_does_not_starve_another() {
    let (repo, _dir) = repo().await;
    let mut tasks: Vec<NewTask> = (0..100).map(|i| task(Some("big"), 0, i)).collect();
    tasks.extend((0..5).map(|i| task(Some("small"), 0, 1000 + i)));
    repo.insert(&tasks).await.unwrap();
    let first_ten = repo
        .claim_queued("kie", 10_000, 10, "w", 20_000)
        .await
        .unwrap();
    let small = first_ten
        .iter()
        .filter(|t| t.owner.as_deref() == Some("small"))
        .count();
    println!(
        "fairness: of the first 10 claims, {small} are the small owner's (queued after 100 of the big owner's)"
    );
    assert_eq!(small, 5, "the owners alternate");
}

#[tokio::test]
async fn queue_positions_follow_the_claim_order() {
    let (repo, _dir) = repo().await;
    let tasks = vec![
        task(Some("a"), 0, 1),
        task(Some("a"), 0, 2),
        task(Some("b"), 0, 3),
        task(Some("a"), 9, 4),
    ];
    repo.insert(&tasks).await.unwrap();
    let positions: Vec<u64> = {
        let mut out = Vec::new();
        for t in &tasks {
            out.push(repo.queue_position(&t.id).await.unwrap().unwrap());
        }
        out
    };
    // a@9 first. Owner a has then had its turn, so at priority 0 b goes next, then a's two.
    assert_eq!(positions, [3, 4, 2, 1]);
    repo.claim_queued("kie", 100, 1, "w", 1000).await.unwrap();
    assert_eq!(
        repo.queue_position(&tasks[3].id).await.unwrap(),
        None,
        "claimed tasks have no position"
    );
    assert_eq!(repo.queue_position(&tasks[0].id).await.unwrap(), Some(1));
}

#[tokio::test]
async fn backoff_keeps_a_task_out_of_claims_until_its_time() {
    let (repo, _dir) = repo().await;
    let t = task(None, 0, 1);
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
    assert_eq!(
        repo.claim_queued("kie", 5_000, 10, "w", 9_000)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_stale_workers_writes_are_refused_and_lapsed_leases_are_reclaimed() {
    let (repo, _dir) = repo().await;
    let t = task(None, 0, 1);
    repo.insert(std::slice::from_ref(&t)).await.unwrap();
    let claimed = repo
        .claim_queued("kie", 100, 1, "old-worker", 200)
        .await
        .unwrap();
    assert_eq!(claimed[0].state, TaskState::Submitting);
    // The lease runs out; another worker takes the task over.
    let taken = repo
        .claim_due(TaskState::Submitting, 300, 10, "new-worker", 400)
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
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
}
