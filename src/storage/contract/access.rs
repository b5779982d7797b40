//! The contract of [`AccessRepo`]: API keys (created, found by hash, revoked, the name
//! reusable after), who uploaded what, unfinished tasks per owner, server secrets and each
//! key's webhook signing secret (stored once, rotated with a grace period).

use super::new_task;
use crate::domain::TaskState;
use crate::storage::{AccessRepo, Repo, TaskUpdate};

pub async fn keys_are_created_and_revoked(repo: &dyn AccessRepo) {
    assert!(!repo.has_api_keys().await.unwrap());
    assert!(repo.list_api_keys().await.unwrap().is_empty());
    assert!(
        repo.create_api_key("alice", "h1", "dk_abc", 1)
            .await
            .unwrap()
    );
    assert!(
        !repo
            .create_api_key("alice", "h2", "dk_def", 2)
            .await
            .unwrap(),
        "the name is taken"
    );
    assert!(repo.has_api_keys().await.unwrap());
    assert_eq!(
        repo.api_key_name("h1").await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(repo.api_key_name("h2").await.unwrap(), None);
    assert!(repo.revoke_api_key("alice", 3).await.unwrap());
    assert!(!repo.revoke_api_key("alice", 4).await.unwrap());
    assert!(!repo.revoke_api_key("nobody", 4).await.unwrap());
    assert_eq!(repo.api_key_name("h1").await.unwrap(), None);
    assert!(!repo.has_api_keys().await.unwrap());
    // A revoked name can be used again; the listing keeps the revoked key.
    assert!(
        repo.create_api_key("alice", "h3", "dk_ghi", 5)
            .await
            .unwrap()
    );
    assert!(repo.create_api_key("bob", "h4", "dk_jkl", 6).await.unwrap());
    assert_eq!(
        repo.api_key_name("h3").await.unwrap().as_deref(),
        Some("alice")
    );
    let keys = repo.list_api_keys().await.unwrap();
    let revoked: Vec<_> = keys.iter().filter(|k| k.revoked_at.is_some()).collect();
    let live: Vec<_> = keys.iter().filter(|k| k.revoked_at.is_none()).collect();
    assert_eq!(revoked.len() + live.len(), keys.len());
    assert!(
        live.iter()
            .any(|k| (k.name.as_str(), k.hint.as_str(), k.created_at) == ("alice", "dk_ghi", 5))
    );
    assert!(live.iter().any(|k| k.name == "bob"));
    assert!(
        revoked
            .iter()
            .all(|k| k.name == "alice" && k.revoked_at == Some(3))
    );
}

pub async fn uploads_have_owners(repo: &dyn AccessRepo) {
    repo.record_upload("uploads/a.png", Some("alice"), 1)
        .await
        .unwrap();
    repo.record_upload("uploads/b.png", None, 1).await.unwrap();
    assert_eq!(
        repo.upload_owner("uploads/a.png").await.unwrap(),
        Some(Some("alice".to_owned()))
    );
    assert_eq!(
        repo.upload_owner("uploads/b.png").await.unwrap(),
        Some(None)
    );
    assert_eq!(repo.upload_owner("uploads/c.png").await.unwrap(), None);
    repo.forget_upload("uploads/b.png").await.unwrap();
    repo.forget_upload("uploads/never.png").await.unwrap();
    assert_eq!(repo.upload_owner("uploads/b.png").await.unwrap(), None);
    assert_eq!(
        repo.upload_owner("uploads/a.png").await.unwrap(),
        Some(Some("alice".to_owned())),
        "forgetting one upload leaves the others"
    );
}

pub async fn unfinished_tasks_are_counted_per_owner(repo: &dyn Repo) {
    assert_eq!(repo.count_unfinished_tasks("alice").await.unwrap(), 0);
    let tasks = vec![
        new_task(Some("alice"), 0, 1),
        new_task(Some("alice"), 0, 2),
        new_task(Some("alice"), 0, 3),
        new_task(Some("bob"), 0, 4),
        new_task(None, 0, 5),
    ];
    repo.insert(&tasks).await.unwrap();
    assert_eq!(repo.count_unfinished_tasks("alice").await.unwrap(), 3);
    assert_eq!(repo.count_unfinished_tasks("bob").await.unwrap(), 1);
    let running = TaskUpdate {
        state: Some(TaskState::Running),
        ..TaskUpdate::default()
    };
    repo.update(&tasks[0].id, TaskState::Queued, None, &running, 6)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        repo.count_unfinished_tasks("alice").await.unwrap(),
        3,
        "in flight is unfinished"
    );
    for (t, state) in tasks[1..3]
        .iter()
        .zip([TaskState::Succeeded, TaskState::Canceled])
    {
        let end = TaskUpdate {
            state: Some(state),
            ..TaskUpdate::default()
        };
        repo.update(&t.id, TaskState::Queued, None, &end, 7)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(repo.count_unfinished_tasks("alice").await.unwrap(), 1);
    assert_eq!(repo.count_unfinished_tasks("carol").await.unwrap(), 0);
}

pub async fn server_secrets_are_stored_once(repo: &dyn AccessRepo) {
    let first = repo.server_secret("files", "one", 1).await.unwrap();
    let second = repo.server_secret("files", "two", 2).await.unwrap();
    assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
    let other = repo.server_secret("cursor", "three", 3).await.unwrap();
    assert_eq!(other, "three", "each name has its own secret");
}

/// Concurrent first calls for a key's secret, each with a fresh candidate, all get the
/// one that was stored. (The SQLite backend also checks this across two instances on one
/// database file, in its own tests.)
pub async fn concurrent_first_webhook_secret_calls_agree(repo: &dyn AccessRepo) {
    for round in 0..10 {
        let owner = format!("key-{round}");
        let (a, b, c) = tokio::join!(
            repo.webhook_secret(&owner, "whsec_first", 1),
            repo.webhook_secret(&owner, "whsec_second", 2),
            repo.webhook_secret(&owner, "whsec_third", 3),
        );
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(a, b, "round {round}");
        assert_eq!(a, c, "round {round}");
        assert!(["whsec_first", "whsec_second", "whsec_third"].contains(&a.secret.as_str()));
        let again = repo.webhook_secret(&owner, "whsec_later", 9).await.unwrap();
        assert_eq!(again, a, "later calls keep it");
    }
}

pub async fn rotation_keeps_the_previous_secret_for_a_while(repo: &dyn AccessRepo) {
    let first = repo.webhook_secret("alice", "whsec_one", 10).await.unwrap();
    assert_eq!(first.secret, "whsec_one");
    assert_eq!((first.created_at, first.current_since()), (10, 10));
    assert_eq!(first.previous_at(10), None);

    let rotated = repo
        .rotate_webhook_secret("alice", "whsec_two", 20, 120)
        .await
        .unwrap();
    assert_eq!(rotated.secret, "whsec_two");
    assert_eq!((rotated.created_at, rotated.current_since()), (10, 20));
    assert_eq!(rotated.previous_at(119), Some("whsec_one"));
    assert_eq!(rotated.previous_valid_until(119), Some(120));
    assert_eq!(rotated.previous_at(120), None, "past its end");
    assert_eq!(rotated.previous_valid_until(120), None);
    assert_eq!(
        repo.webhook_secret("alice", "whsec_unused", 30)
            .await
            .unwrap(),
        rotated
    );

    // A second rotation keeps only the secret it replaces.
    let again = repo
        .rotate_webhook_secret("alice", "whsec_three", 40, 140)
        .await
        .unwrap();
    assert_eq!(again.secret, "whsec_three");
    assert_eq!(again.previous_at(41), Some("whsec_two"));

    // Rotating a key that never had a secret just makes one.
    let fresh = repo
        .rotate_webhook_secret("bob", "whsec_b", 50, 150)
        .await
        .unwrap();
    assert_eq!(
        (
            fresh.secret.as_str(),
            fresh.previous_at(51),
            fresh.created_at
        ),
        ("whsec_b", None, 50)
    );
    // Owners are separate, and the secret never shows in Debug output.
    assert_eq!(
        repo.webhook_secret("alice", "x", 60).await.unwrap().secret,
        "whsec_three"
    );
    assert!(!format!("{again:?}").contains("whsec_"));
}
