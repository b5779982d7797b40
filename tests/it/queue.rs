//! The repository contract on SQLite: every check in `darkroom::storage::contract` (tasks
//! and the queue: priority, fairness between owners, age, queue positions, guarded
//! transitions and leases; batches; webhook deliveries; access), each on a fresh database.
//! It runs on SQLite twice (on a database file with a reader pool beside the writer, as in
//! production, and in memory) and on PostgreSQL, each test in a database of its own on the
//! test server (`DARKROOM_TEST_POSTGRES_URL`). Below the suites: what only PostgreSQL
//! has (claimers racing on one database, the LISTEN/NOTIFY wake, its error codes).

use std::ops::Deref;

use std::collections::HashSet;
use std::time::Duration;

use darkroom::storage::contract::new_task;
use darkroom::storage::postgres::PgRepo;
use darkroom::storage::sqlite::SqliteRepo;
use darkroom::storage::{Durability, StorageFault, TaskRepo};

use crate::harness::{PgDatabase, fresh_postgres};

/// A repository on a file in a temporary directory that lives as long as it does.
struct OnFile {
    repo: SqliteRepo,
    _dir: tempfile::TempDir,
}

impl Deref for OnFile {
    type Target = SqliteRepo;

    fn deref(&self) -> &SqliteRepo {
        &self.repo
    }
}

async fn on_file() -> OnFile {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let repo = SqliteRepo::connect(&url, 4, Durability::Normal)
        .await
        .unwrap();
    OnFile { repo, _dir: dir }
}

darkroom::repo_contract_tests!(sqlite_file, on_file);
darkroom::repo_contract_tests!(sqlite_memory, || async {
    Box::new(SqliteRepo::in_memory().await.unwrap())
});

/// A repository on a fresh PostgreSQL database, dropped (repository first) after the test.
struct OnPostgres {
    repo: PgRepo,
    _db: PgDatabase,
}

impl Deref for OnPostgres {
    type Target = PgRepo;

    fn deref(&self) -> &PgRepo {
        &self.repo
    }
}

async fn on_postgres() -> OnPostgres {
    let db = fresh_postgres().await;
    let repo = PgRepo::connect(&db.url, 4).await.unwrap();
    OnPostgres { repo, _db: db }
}

darkroom::repo_contract_tests!(postgres, on_postgres);

/// Two instances' dispatchers claiming from one PostgreSQL queue at once, four claimers
/// each: every task is claimed exactly once (`FOR UPDATE SKIP LOCKED`), none is lost.
#[tokio::test]
async fn postgres_claimers_on_one_database_never_take_the_same_task() {
    let db = fresh_postgres().await;
    let one = std::sync::Arc::new(PgRepo::connect(&db.url, 4).await.unwrap());
    let two = std::sync::Arc::new(PgRepo::connect(&db.url, 4).await.unwrap());
    let tasks: Vec<_> = (0..300)
        .map(|i| new_task(Some(["a", "b", "c"][i % 3]), (i % 4) as i32, i as i64))
        .collect();
    one.insert(&tasks).await.unwrap();
    let mut claimers = tokio::task::JoinSet::new();
    for n in 0..8 {
        let repo = if n % 2 == 0 { one.clone() } else { two.clone() };
        claimers.spawn(async move {
            let worker = format!("w{n}");
            let mut mine = Vec::new();
            let mut empty_rounds = 0;
            // A claimer may come back empty while the others hold the rows it wanted.
            while empty_rounds < 3 {
                let claimed = repo
                    .claim_queued("kie", 10_000, 7, &worker, 20_000)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    empty_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                mine.extend(claimed.into_iter().map(|t| (t.id, t.lease_owner)));
            }
            (worker, mine)
        });
    }
    let mut seen = HashSet::new();
    let mut per_claimer = Vec::new();
    while let Some(done) = claimers.join_next().await {
        let (worker, mine) = done.unwrap();
        per_claimer.push(mine.len());
        for (id, lease_owner) in mine {
            assert_eq!(lease_owner.as_deref(), Some(worker.as_str()));
            assert!(seen.insert(id.clone()), "task {id} was claimed twice");
        }
    }
    assert_eq!(seen.len(), tasks.len(), "every task claimed once");
    println!("300 tasks, 8 claimers on 2 pools: claimed per claimer {per_claimer:?}");
    drop((one, two));
}

/// A task queued through one instance wakes the other instance's dispatcher through
/// `LISTEN/NOTIFY`, without waiting for its poll.
#[tokio::test]
async fn postgres_inserts_wake_other_instances() {
    let db = fresh_postgres().await;
    let one = PgRepo::connect(&db.url, 2).await.unwrap();
    let two = PgRepo::connect(&db.url, 2).await.unwrap();
    let signal = two.queue_signal().expect("PostgreSQL has a queue signal");
    let woken = signal.notified();
    tokio::pin!(woken);
    // The listener connects in the background: insert until a wake arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut inserted = 0;
    loop {
        one.insert(&[new_task(None, 0, inserted)]).await.unwrap();
        inserted += 1;
        tokio::select! {
            () = &mut woken => break,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no wake within 10 s after {inserted} inserts"
        );
    }
    assert!(
        SqliteRepo::in_memory()
            .await
            .unwrap()
            .queue_signal()
            .is_none(),
        "SQLite wakes in memory only"
    );
}

/// Every task change is announced from the transaction that makes it (the change
/// trigger): another instance hears each insert and state change it committed, never one
/// rolled back, and an instance does not hear its own. A change made from outside darkroom
/// (psql) is announced with the origin `-` to everyone.
#[tokio::test]
async fn postgres_task_changes_are_announced_by_their_own_transactions() {
    use darkroom::domain::TaskState;
    use darkroom::storage::{ChangeFeed, FeedEvent, TaskUpdate};
    use sqlx::Connection;
    use tokio::sync::broadcast::Receiver;

    /// The next change on `feed` (skipping the listener's `Missed` at connect), or `None`
    /// after `wait`.
    async fn next_change(
        feed: &mut Receiver<FeedEvent>,
        wait: Duration,
    ) -> Option<darkroom::storage::Change> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, feed.recv()).await {
                Ok(Ok(FeedEvent::Changed(change))) => return Some(change),
                Ok(Ok(FeedEvent::Missed { .. })) => {}
                Ok(Err(e)) => panic!("the feed failed: {e}"),
                Err(_) => return None,
            }
        }
    }

    let db = fresh_postgres().await;
    let one = PgRepo::connect(&db.url, 2).await.unwrap();
    let two = PgRepo::connect(&db.url, 2).await.unwrap();
    let mut on_one = one.changes().expect("PostgreSQL has a feed");
    let mut on_two = two.changes().expect("PostgreSQL has a feed");

    // The listeners connect in the background: insert until two hears one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let task = loop {
        let task = new_task(None, 0, 1);
        one.insert(std::slice::from_ref(&task)).await.unwrap();
        if let Some(change) = next_change(&mut on_two, Duration::from_millis(200)).await {
            assert_eq!(
                (change.task_id, change.state),
                (task.id.clone(), TaskState::Queued)
            );
            break task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "two heard no insert within 10 s"
        );
    };
    while next_change(&mut on_two, Duration::from_millis(300))
        .await
        .is_some()
    {}

    let running = TaskUpdate {
        state: Some(TaskState::Running),
        ..TaskUpdate::default()
    };
    let moved = one
        .update(&task.id, TaskState::Queued, None, &running, 2)
        .await
        .unwrap();
    assert!(moved.is_some());
    let change = next_change(&mut on_two, Duration::from_secs(5))
        .await
        .expect("two hears the change");
    assert_eq!(
        (&change.task_id, change.state),
        (&task.id, TaskState::Running)
    );
    assert!(change.origin.starts_with("pool-"), "{change:?}");

    // An update that leaves the state as it was announces nothing; one rolled back neither.
    let touch = TaskUpdate {
        run_at: Some(9),
        ..TaskUpdate::default()
    };
    one.update(&task.id, TaskState::Running, None, &touch, 3)
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("UPDATE tasks SET state = 'failed' WHERE id = $1")
        .bind(task.id.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        next_change(&mut on_two, Duration::from_millis(500)).await,
        None
    );

    // Made from outside: origin `-`, heard by both.
    sqlx::query("UPDATE tasks SET state = 'succeeded' WHERE id = $1")
        .bind(task.id.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    for feed in [&mut on_one, &mut on_two] {
        let change = next_change(feed, Duration::from_secs(5))
            .await
            .expect("a change made in psql is heard");
        assert_eq!(
            (change.origin.as_str(), change.state),
            ("-", TaskState::Succeeded)
        );
    }
    // And one heard none of its own inserts and changes before it.
    assert_eq!(
        next_change(&mut on_one, Duration::from_millis(300)).await,
        None
    );
}

/// PostgreSQL's own refusals are storage faults like SQLite's: a read-only transaction
/// (a standby, or read-only mode) is `read_only`, a server that refuses connections is
/// `unavailable`.
#[tokio::test]
async fn postgres_errors_map_to_storage_faults() {
    use sqlx::Connection;
    let db = fresh_postgres().await;
    let repo = PgRepo::connect(&db.url, 2).await.unwrap();
    repo.probe_write(64 * 1024).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .execute(&mut conn)
        .await
        .unwrap();
    let refused = sqlx::query("INSERT INTO write_probe (filler) VALUES ('\\x00')")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(
        StorageFault::of_sqlx(&refused),
        Some(StorageFault::ReadOnly),
        "{refused}"
    );
    let port = crate::harness::free_port();
    let unreachable =
        sqlx::PgConnection::connect(&format!("postgres://postgres@127.0.0.1:{port}/x"))
            .await
            .unwrap_err();
    assert_eq!(
        StorageFault::of_sqlx(&unreachable),
        Some(StorageFault::Failing),
        "{unreachable:?}"
    );
    drop(conn);
    repo.close().await;
}
