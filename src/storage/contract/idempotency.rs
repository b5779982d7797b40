//! The contract of [`IdempotencyRepo`]: a key is reserved by exactly one claim, per owner;
//! answered keys replay, released and abandoned ones are free again, expired ones are
//! taken over and purged; tasks and the answer naming them are written together or not
//! at all.

use super::new_task;
use crate::storage::{
    Batch, IdempotencyClaim, IdempotencyCompletion, IdempotencyRepo, Repo, Reservation,
    StoredAnswer,
};

fn claim<'a>(
    owner: &'a str,
    key: &'a str,
    hash: &'a str,
    token: &'a str,
    now: i64,
) -> IdempotencyClaim<'a> {
    IdempotencyClaim {
        owner,
        key,
        request_hash: Some(hash),
        token,
        now,
        locked_until: now + 100,
        expires_at: now + 1_000,
    }
}

fn done(
    owner: &str,
    key: &str,
    hash: &str,
    token: &str,
    now: i64,
    body: &str,
) -> IdempotencyCompletion {
    IdempotencyCompletion {
        owner: owner.into(),
        key: key.into(),
        token: token.into(),
        request_hash: hash.into(),
        answer: StoredAnswer {
            status: 200,
            body: body.as_bytes().to_vec(),
        },
        completed_at: now,
        expires_at: now + 1_000,
    }
}

fn completed(hash: &str, body: &str) -> Reservation {
    Reservation::Completed {
        request_hash: hash.into(),
        answer: StoredAnswer {
            status: 200,
            body: body.as_bytes().to_vec(),
        },
    }
}

pub async fn idempotency_keys_are_reserved_once_and_replay_their_answer(
    repo: &dyn IdempotencyRepo,
) {
    let first = claim("alice", "k1", "h1", "t1", 10);
    assert_eq!(
        repo.reserve_idempotency_key(&first).await.unwrap(),
        Reservation::Reserved
    );
    // While it runs, a second request is told so (with the first one's fingerprint).
    assert_eq!(
        repo.reserve_idempotency_key(&claim("alice", "k1", "h2", "t2", 11))
            .await
            .unwrap(),
        Reservation::InFlight {
            request_hash: Some("h1".into())
        }
    );
    // Another owner's key of the same name is another key; the anonymous owner is one too.
    assert_eq!(
        repo.reserve_idempotency_key(&claim("bob", "k1", "h1", "t3", 11))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        repo.reserve_idempotency_key(&claim("", "k1", "h1", "t4", 11))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    // Only the holder answers, once.
    assert!(
        !repo
            .complete_idempotency_key(&done("alice", "k1", "h1", "t2", 12, "no"))
            .await
            .unwrap()
    );
    assert!(
        repo.complete_idempotency_key(&done("alice", "k1", "h1", "t1", 12, "{\"a\":1}"))
            .await
            .unwrap()
    );
    assert!(
        !repo
            .complete_idempotency_key(&done("alice", "k1", "h1", "t1", 13, "again"))
            .await
            .unwrap()
    );
    for (hash, token) in [("h1", "t5"), ("h2", "t6")] {
        assert_eq!(
            repo.reserve_idempotency_key(&claim("alice", "k1", hash, token, 14))
                .await
                .unwrap(),
            completed("h1", "{\"a\":1}"),
            "an answered key replays, whatever the new request (the caller compares)"
        );
    }
    // An answered key is not released.
    assert!(
        !repo
            .release_idempotency_key("alice", "k1", "t1")
            .await
            .unwrap()
    );
    // An upload's fingerprint is known only with its answer.
    let upload = IdempotencyClaim {
        request_hash: None,
        ..claim("alice", "k2", "", "t7", 20)
    };
    assert_eq!(
        repo.reserve_idempotency_key(&upload).await.unwrap(),
        Reservation::Reserved
    );
    assert_eq!(
        repo.reserve_idempotency_key(&claim("alice", "k2", "h9", "t8", 21))
            .await
            .unwrap(),
        Reservation::InFlight { request_hash: None }
    );
    assert!(
        repo.complete_idempotency_key(&done("alice", "k2", "h8", "t7", 22, "up"))
            .await
            .unwrap()
    );
    assert_eq!(
        repo.reserve_idempotency_key(&claim("alice", "k2", "h9", "t9", 23))
            .await
            .unwrap(),
        completed("h8", "up")
    );
}

pub async fn released_and_abandoned_idempotency_keys_are_free_again(repo: &dyn IdempotencyRepo) {
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k", "h", "t1", 10))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert!(
        !repo
            .release_idempotency_key("a", "k", "someone-else")
            .await
            .unwrap()
    );
    assert!(repo.release_idempotency_key("a", "k", "t1").await.unwrap());
    assert!(!repo.release_idempotency_key("a", "k", "t1").await.unwrap());
    // Released: the retry proceeds, even with another body.
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k", "h2", "t2", 20))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    // Its holder died: past `locked_until` (20 + 100) the key is taken over ...
    assert!(matches!(
        repo.reserve_idempotency_key(&claim("a", "k", "h2", "t3", 119))
            .await
            .unwrap(),
        Reservation::InFlight { .. }
    ));
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k", "h2", "t3", 120))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    // ... and the late holder can neither answer nor release what it lost.
    assert!(
        !repo
            .complete_idempotency_key(&done("a", "k", "h2", "t2", 121, "late"))
            .await
            .unwrap()
    );
    assert!(!repo.release_idempotency_key("a", "k", "t2").await.unwrap());
    assert!(
        repo.complete_idempotency_key(&done("a", "k", "h2", "t3", 122, "new"))
            .await
            .unwrap()
    );
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k", "h2", "t4", 123))
            .await
            .unwrap(),
        completed("h2", "new")
    );
}

pub async fn expired_idempotency_keys_are_taken_over_and_purged(repo: &dyn IdempotencyRepo) {
    // Answered at 10, kept until 1010.
    for key in ["k1", "k2", "k3"] {
        assert_eq!(
            repo.reserve_idempotency_key(&claim("a", key, "h", "t", 0))
                .await
                .unwrap(),
            Reservation::Reserved
        );
        assert!(
            repo.complete_idempotency_key(&done("a", key, "h", "t", 10, "old"))
                .await
                .unwrap()
        );
    }
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "live", "h", "t", 500))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert!(
        repo.complete_idempotency_key(&done("a", "live", "h", "t", 500, "live"))
            .await
            .unwrap()
    );
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k1", "h", "u", 1009))
            .await
            .unwrap(),
        completed("h", "old")
    );
    // Expired: its next use starts afresh (another body is no reuse).
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k1", "other", "u", 1010))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    // The sweep removes expired keys, at most `limit` at a time, and nothing else.
    assert_eq!(
        repo.purge_expired_idempotency_keys(1010, 1).await.unwrap(),
        1
    );
    assert_eq!(
        repo.purge_expired_idempotency_keys(1010, 10).await.unwrap(),
        1
    );
    assert_eq!(
        repo.purge_expired_idempotency_keys(1010, 10).await.unwrap(),
        0
    );
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "live", "h", "v", 1011))
            .await
            .unwrap(),
        completed("h", "live")
    );
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k1", "h", "v", 1011))
            .await
            .unwrap(),
        Reservation::InFlight {
            request_hash: Some("other".into())
        },
        "the key taken over is not purged"
    );
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k2", "h", "v", 1011))
            .await
            .unwrap(),
        Reservation::Reserved
    );
}

pub async fn concurrent_claims_on_one_idempotency_key_have_one_winner(repo: &dyn IdempotencyRepo) {
    let tokens: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    let claims: Vec<_> = tokens
        .iter()
        .map(|t| claim("a", "race", "h", t, 10))
        .collect();
    let answers =
        futures::future::join_all(claims.iter().map(|c| repo.reserve_idempotency_key(c))).await;
    let won = answers
        .into_iter()
        .map(|a| a.unwrap())
        .filter(|a| *a == Reservation::Reserved)
        .count();
    assert_eq!(won, 1, "exactly one claim holds the key");
}

pub async fn tasks_and_their_answer_are_written_together(repo: &dyn Repo) {
    let tasks = vec![new_task(Some("a"), 0, 1), new_task(Some("a"), 0, 2)];
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k", "h", "t1", 10))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    // A holder that lost the key writes nothing.
    assert!(
        !repo
            .insert_answered(None, &tasks, &done("a", "k", "h", "lost", 11, "x"))
            .await
            .unwrap()
    );
    assert!(repo.get(&tasks[0].id).await.unwrap().is_none());
    assert!(
        repo.insert_answered(None, &tasks, &done("a", "k", "h", "t1", 11, "ids"))
            .await
            .unwrap()
    );
    for task in &tasks {
        assert!(repo.get(&task.id).await.unwrap().is_some());
    }
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k", "h", "t2", 12))
            .await
            .unwrap(),
        completed("h", "ids")
    );
    // A failed insert (a task id that exists) leaves the answer unwritten too.
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k2", "h", "t3", 12))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert!(
        repo.insert_answered(None, &tasks[..1], &done("a", "k2", "h", "t3", 13, "dup"))
            .await
            .is_err()
    );
    assert!(matches!(
        repo.reserve_idempotency_key(&claim("a", "k2", "h", "t4", 14))
            .await
            .unwrap(),
        Reservation::InFlight { .. }
    ));
    // With a batch, the batch row joins them.
    let mut batched = new_task(Some("a"), 0, 3);
    batched.batch_id = Some("bat_0123456789abcdef0123456789abcdef".into());
    let batch = Batch {
        id: batched.batch_id.clone().unwrap(),
        owner: Some("a".into()),
        prompt: "p".into(),
        webhook_url: None,
        total: 1,
        created_at: 3,
    };
    assert_eq!(
        repo.reserve_idempotency_key(&claim("a", "k3", "h", "t5", 15))
            .await
            .unwrap(),
        Reservation::Reserved
    );
    assert!(
        repo.insert_answered(
            Some(&batch),
            std::slice::from_ref(&batched),
            &done("a", "k3", "h", "t5", 16, "b")
        )
        .await
        .unwrap()
    );
    assert_eq!(
        repo.get_batch(&batch.id).await.unwrap().map(|b| b.total),
        Some(1)
    );
    assert!(repo.get(&batched.id).await.unwrap().is_some());
}
