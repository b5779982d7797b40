//! `darkroom migrate-db` (the real binary): an SQLite database with 10,000 tasks (some run
//! through the simulator, the rest written in bulk in every state) and a row in every
//! copied table goes to a fresh PostgreSQL database and back to a new SQLite file. Every
//! row of every table is compared field by field on all three, and `/api/task-status`
//! (with `/api/tasks/{id}`, the stored key, the webhook secret and a signed `/files` URL)
//! answers the same on a darkroom started on each. A non-empty target is refused without
//! `--allow-non-empty`, and with it only what is missing is added.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use darkroom::domain::{TaskId, TaskState};
use darkroom::storage::copy::{CellRow, NOT_COPIED, Table};
use darkroom::storage::{Batch, Durability, NewTask, Repo, SharedPause, Task};
use serde_json::json;

use crate::harness::{BIN, TestApp, fresh_postgres, spawn_app_in};

const TASKS: usize = 10_000;

/// Runs `darkroom migrate-db --from from --to to` with `extra` flags; exit code, stdout,
/// stderr.
fn migrate_db(from: &str, to: &str, extra: &[&str]) -> (i32, String, String) {
    let started = Instant::now();
    let output = Command::new(BIN)
        .args(["migrate-db", "--from", from, "--to", to])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    println!(
        "migrate-db {from} -> {to} {extra:?}: {:.1} s\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

/// The counts of a table's line in the summary: source, target, copied, present.
fn counts(stdout: &str, table: &str) -> [u64; 4] {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(table))
        .unwrap_or_else(|| panic!("no {table} line in {stdout}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    numbers.try_into().unwrap()
}

/// Every row of every copied table, in key order: tasks whole, the others as cells.
#[derive(Debug)]
struct Snapshot {
    tasks: Vec<Task>,
    rows: BTreeMap<&'static str, Vec<CellRow>>,
}

async fn snapshot(repo: &dyn Repo) -> Snapshot {
    let mut tasks: Vec<Task> = Vec::new();
    loop {
        let page = repo
            .tasks_after(tasks.last().map(|t| &t.id), 1000)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        tasks.extend(page);
    }
    let mut rows = BTreeMap::new();
    for table in Table::ALL {
        if table == Table::Tasks {
            continue;
        }
        let mut all: Vec<CellRow> = Vec::new();
        loop {
            let page = repo.rows_after(table, all.last(), 500).await.unwrap();
            if page.is_empty() {
                break;
            }
            all.extend(page);
        }
        rows.insert(table.name(), all);
    }
    Snapshot { tasks, rows }
}

async fn open(url: &str) -> darkroom::storage::Opened {
    darkroom::storage::open(url, 2, Durability::Normal)
        .await
        .unwrap()
}

/// A task as another darkroom would have left it: state by `i`, with what that state holds.
fn bulk_task(i: usize, at: i64) -> Task {
    let id = TaskId::new();
    let created_at = at + i as i64;
    let state = [
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Canceled,
        TaskState::Submitted,
        TaskState::Running,
        TaskState::Expired,
    ][i % 6];
    let finished = state.is_terminal();
    let sent = state != TaskState::Canceled;
    let codes = [
        "provider_failed",
        "deadline_exceeded",
        "input_not_found",
        "provider_task_missing",
    ];
    Task {
        state,
        provider: if i.is_multiple_of(7) { "gemini" } else { "kie" }.into(),
        model: "google/nano-banana-edit".into(),
        prompt: format!("bulk prompt {i}, with \"quotes\" and ünïcode"),
        source: format!("uploads/bulk-{}.png", i % 50),
        image_url: format!("https://images.example.com/{i}.png"),
        input_urls: vec![
            format!("https://images.example.com/{i}.png"),
            "uploads/extra.png".into(),
        ],
        aspect_ratio: ["1:1", "16:9", "9:16"][i % 3].into(),
        output_format: ["png", "jpeg"][i % 2].into(),
        priority: (i % 3) as i32 - 1,
        batch_id: None,
        owner: match i % 4 {
            0 => None,
            1 => Some("bob".into()),
            _ => Some("alice".into()),
        },
        attempts: (i % 3) as u32,
        run_at: created_at + 100,
        lease_owner: None,
        lease_until: None,
        provider_task_id: sent.then(|| format!("bulk-{i}")),
        callback_token_hash: if sent {
            format!("hash-{i}")
        } else {
            String::new()
        },
        callback_at: (state == TaskState::Succeeded).then_some(created_at + 50),
        result_source_urls: if state == TaskState::Succeeded {
            vec![format!("https://results.example.com/{i}.png")]
        } else {
            vec![]
        },
        result_keys: if state == TaskState::Succeeded {
            vec![format!("generated/kie-{id}-0.png")]
        } else {
            vec![]
        },
        result_urls: if state == TaskState::Succeeded {
            vec![format!("https://cdn.example.com/generated/kie-{id}-0.png")]
        } else {
            vec![]
        },
        credits: (state == TaskState::Succeeded).then_some(4),
        cost_time_ms: (state == TaskState::Succeeded).then_some(1000 + i as i64),
        error_code: matches!(state, TaskState::Failed | TaskState::Expired)
            .then(|| codes[i % codes.len()].to_owned()),
        error_message: matches!(state, TaskState::Failed | TaskState::Expired)
            .then(|| format!("it went wrong ({i})")),
        created_at,
        updated_at: created_at + 60,
        submitted_at: sent.then_some(created_at + 10),
        completed_at: finished.then_some(created_at + 60),
        retry_of: None,
        webhook_url: None,
        missing_answers: (i % 2) as u32,
        failover: if i.is_multiple_of(7) {
            darkroom::domain::task_row::Failover {
                allowed: Some(true),
                left: vec!["kie".into()],
                reason: Some("credits".into()),
                moved_at: Some(created_at + 10),
            }
        } else {
            darkroom::domain::task_row::Failover::default()
        },
        id,
    }
}

fn new_task(prompt: &str, at: i64, webhook: bool) -> NewTask {
    NewTask {
        id: TaskId::new(),
        provider: "kie".into(),
        model: "google/nano-banana-edit".into(),
        prompt: prompt.into(),
        source: "uploads/queued.png".into(),
        image_url: "https://images.example.com/q.png".into(),
        input_urls: vec!["https://images.example.com/q.png".into()],
        aspect_ratio: "1:1".into(),
        output_format: "png".into(),
        priority: 0,
        batch_id: None,
        owner: Some("alice".into()),
        callback_token_hash: String::new(),
        created_at: at,
        retry_of: None,
        webhook_url: webhook.then(|| "https://hooks.example.com/darkroom".into()),
        fallback: Some(false),
    }
}

/// Fills the database at `url` (already holding the tasks of a real run) up to `TASKS`
/// tasks, with a row in every copied table.
async fn fill(url: &str, real_tasks: usize) {
    let opened = open(url).await;
    let repo = opened.repo.as_ref();
    let at = chrono::Utc::now().timestamp_millis() - 3_600_000;
    // A batch with a webhook: its tasks' delivery rows are written with them.
    let mut batch_tasks: Vec<NewTask> = (0..5).map(|_| new_task("batch", at, true)).collect();
    let batch = Batch {
        id: format!("bat_{}", uuid::Uuid::now_v7().simple()),
        owner: Some("alice".into()),
        prompt: "batch".into(),
        webhook_url: Some("https://hooks.example.com/darkroom".into()),
        total: 5,
        created_at: at,
    };
    for t in &mut batch_tasks {
        t.batch_id = Some(batch.id.clone());
    }
    repo.insert_batch(&batch, &batch_tasks).await.unwrap();
    // Queued tasks through the ordinary insert, the rest whole in every other state.
    let queued = 1000;
    for chunk in (0..queued).collect::<Vec<_>>().chunks(500) {
        let tasks: Vec<NewTask> = chunk
            .iter()
            .map(|i| new_task(&format!("queued {i}"), at + *i as i64, false))
            .collect();
        repo.insert(&tasks).await.unwrap();
    }
    let bulk = TASKS - real_tasks - batch_tasks.len() - queued;
    let tasks: Vec<Task> = (0..bulk).map(|i| bulk_task(i, at)).collect();
    for chunk in tasks.chunks(1000) {
        let added = repo.add_tasks(chunk).await.unwrap();
        assert_eq!(added.inserted, chunk.len() as u64);
    }
    let access = opened.access.as_ref();
    access
        .record_upload("uploads/bulk-1.png", Some("alice"), at)
        .await
        .unwrap();
    access
        .webhook_secret("bob", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", at)
        .await
        .unwrap();
    let pause = SharedPause {
        until: at + 365 * 86_400_000,
        code: "402".into(),
        reason: "out of credits".into(),
    };
    repo.pause_provider("gemini", &pause).await.unwrap();
    // A key's budget and a task holding its estimate.
    repo.set_daily_budget("alice", Some(1000), at)
        .await
        .unwrap();
    let day = darkroom::domain::budget::CreditDay::of(at);
    let reservation = darkroom::storage::CreditReservation {
        task: &tasks[0].id,
        owner: Some("alice"),
        day: &day,
        credits: 4,
        global_limit: 0,
        check_budgets: true,
        now: at,
    };
    repo.reserve_credits(&reservation).await.unwrap();
    opened.close().await;
}

/// What is asked of each darkroom: the status and the task of each sampled task and the
/// status of each sampled provider id, each with its owner's key; each key's webhook secret.
struct Sample {
    /// (the task id or provider id, whether it is a task id, its owner's key)
    asks: Vec<(String, bool, String)>,
    keys: Vec<String>,
}

/// What a darkroom on `dir` (the bucket; the database `database_url`) answers to `sample`,
/// and whether the signed `/files` URL opens.
async fn answers(
    dir: tempfile::TempDir,
    database_url: &str,
    sample: &Sample,
    signed_path: Option<&str>,
) -> (BTreeMap<String, String>, TestApp) {
    let app = spawn_app_in(
        dir,
        &[
            ("DARKROOM_DATABASE_URL", database_url),
            ("DARKROOM_WORKERS", "false"),
            ("DARKROOM_KEY_RATE_PER_SEC", "100000"),
            ("DARKROOM_KEY_RATE_BURST", "100000"),
        ],
    )
    .await;
    let mut out = BTreeMap::new();
    for (id, is_task_id, key) in &sample.asks {
        let mut paths = vec![format!("/api/task-status?taskId={id}")];
        if *is_task_id {
            paths.push(format!("/api/tasks/{id}"));
        }
        for path in paths {
            let response = app
                .http
                .get(app.url(&path))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let body = response.text().await.unwrap();
            out.insert(path, body);
        }
    }
    for (i, key) in sample.keys.iter().enumerate() {
        let (code, secret) = app
            .send(reqwest::Method::GET, "/api/webhook-secret", Some(key), None)
            .await;
        assert_eq!(code, 200, "{secret}");
        out.insert(format!("webhook-secret {i}"), secret.to_string());
    }
    if let Some(path) = signed_path {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        out.insert("signed file".into(), response.status().to_string());
    }
    (out, app)
}

/// Uploads an image and queues `count` tasks of it with `key` (and `Idempotency-Key`
/// `idempotency`); the task ids.
async fn keyed_generate(app: &TestApp, key: &str, count: usize, idempotency: &str) -> Vec<String> {
    let part = reqwest::multipart::Part::bytes(crate::harness::png(40, 30)).file_name("a.png");
    let form = reqwest::multipart::Form::new().part("files", part);
    let response = app
        .http
        .post(app.url("/api/upload"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let up: serde_json::Value = response.json().await.unwrap();
    let url = up["uploaded"][0]["url"].clone();
    let response = app
        .http
        .post(app.url("/api/generate"))
        .bearer_auth(key)
        .header("Idempotency-Key", idempotency)
        .json(&json!({"prompt": "a real one", "imageUrls": vec![url; count]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    crate::harness::task_ids(&response.json().await.unwrap())
}

/// Waits until every task of `ids` is final (read from the repository).
async fn wait_final(app: &TestApp, ids: &[String]) {
    let start = Instant::now();
    for id in ids {
        let id = TaskId::parse(id).unwrap();
        while !app
            .repo
            .get(&id)
            .await
            .unwrap()
            .is_some_and(|t| t.state.is_terminal())
        {
            assert!(start.elapsed() < Duration::from_secs(30), "{id} not final");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `found` holds every row `expected` holds, field by field; the first difference named.
fn assert_same(expected: &Snapshot, found: &Snapshot, name: &str) {
    assert_eq!(expected.tasks.len(), found.tasks.len(), "{name}: tasks");
    for (e, f) in expected.tasks.iter().zip(&found.tasks) {
        assert_eq!(e, f, "{name}: task {}", e.id);
    }
    assert_eq!(
        expected.rows.keys().collect::<Vec<_>>(),
        found.rows.keys().collect::<Vec<_>>()
    );
    for (table, rows) in &expected.rows {
        assert_eq!(rows, &found.rows[table], "{name}: {table}");
    }
}

#[tokio::test]
async fn ten_thousand_tasks_go_to_postgres_and_back_with_every_answer_identical() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let source_url = format!("sqlite://{}/darkroom.db", dir.path().display());
    // Two stored keys: darkroom starts with keys on (and makes its /files secret).
    let keys: BTreeMap<&str, darkroom::domain::api_key::NewApiKey> = ["alice", "bob"]
        .into_iter()
        .map(|name| (name, darkroom::domain::api_key::generate()))
        .collect();
    {
        let opened = open(&source_url).await;
        for (name, key) in &keys {
            let made = opened.access.create_api_key(name, &key.hash, &key.hint, 1);
            assert!(made.await.unwrap());
        }
        opened.close().await;
    }
    // A real run: uploads, results in the bucket, idempotency keys, webhook secrets.
    let app = spawn_app_in(dir, &[]).await;
    let mut real = keyed_generate(&app, &keys["alice"].key, 3, "move-me").await;
    real.extend(keyed_generate(&app, &keys["bob"].key, 1, "move-me-too").await);
    wait_final(&app, &real).await;
    let dir = app.stop().await;
    // Then the bulk.
    fill(&source_url, real.len()).await;
    let source = open(&source_url).await;
    let before = snapshot(source.repo.as_ref()).await;
    source.close().await;
    assert_eq!(before.tasks.len(), TASKS);
    println!("source filled in {:.1} s", started.elapsed().as_secs_f64());

    // The sample: the real tasks, the batch's, every 50th of the rest (with an owner: a
    // key sees only its own), and provider ids.
    let key_of = |t: &Task| t.owner.as_deref().map(|o| keys[o].key.clone());
    let mut asks: Vec<(String, bool, String)> = before
        .tasks
        .iter()
        .enumerate()
        .filter(|(i, t)| i % 50 == 0 || t.batch_id.is_some() || real.contains(&t.id.to_string()))
        .filter_map(|(_, t)| Some((t.id.to_string(), true, key_of(t)?)))
        .collect();
    asks.extend(
        before
            .tasks
            .iter()
            .filter(|t| t.provider_task_id.is_some())
            .step_by(400)
            .filter_map(|t| Some((t.provider_task_id.clone()?, false, key_of(t)?))),
    );
    assert!(asks.len() > 200, "{}", asks.len());
    let sample = Sample {
        asks,
        keys: keys.values().map(|k| k.key.clone()).collect(),
    };
    let succeeded = before
        .tasks
        .iter()
        .find(|t| real.contains(&t.id.to_string()) && !t.result_keys.is_empty())
        .expect("a real task succeeded");
    let (original, app) = answers(dir, &source_url, &sample, None).await;
    // A /files URL as signed by the source's secret (made at the start above).
    let signed = app.blobs.url(&succeeded.result_keys[0]);
    let signed_path = signed[signed.find("/files/").unwrap()..].to_owned();
    assert!(signed_path.contains('?'), "signed: {signed_path}");
    let dir = app.stop().await;
    let source = open(&source_url).await;
    let before = snapshot(source.repo.as_ref()).await;
    source.close().await;
    for table in Table::ALL {
        let held = match table {
            Table::Tasks => before.tasks.len(),
            _ => before.rows[table.name()].len(),
        };
        assert!(held > 0, "the source has a row in {}", table.name());
    }

    // SQLite to PostgreSQL.
    let pg = fresh_postgres().await;
    let (code, stdout, _) = migrate_db(&source_url, &pg.url, &[]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        counts(&stdout, "tasks"),
        [TASKS as u64, TASKS as u64, TASKS as u64, 0]
    );
    for table in Table::ALL {
        let [source, target, copied, present] = counts(&stdout, table.name());
        assert!(
            source > 0 && source == target && target == copied && present == 0,
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("verified: the target holds every row of the source"),
        "{stdout}"
    );
    for (name, _) in NOT_COPIED {
        assert!(stdout.contains(name), "{stdout}");
    }
    // Again: refused without the flag, and with it nothing is added.
    let (code, stdout, stderr) = migrate_db(&source_url, &pg.url, &["--quiet"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("already holds rows"), "{stderr}");
    assert!(stderr.contains("--allow-non-empty"), "{stderr}");
    assert!(stderr.contains(&format!("tasks: {TASKS}")), "{stderr}");
    let (code, stdout, _) = migrate_db(&source_url, &pg.url, &["--allow-non-empty"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        counts(&stdout, "tasks"),
        [TASKS as u64, TASKS as u64, 0, TASKS as u64]
    );
    let on_pg = open(&pg.url).await;
    let middle = snapshot(on_pg.repo.as_ref()).await;
    on_pg.close().await;
    assert_same(&before, &middle, "PostgreSQL");

    // And back, into a new SQLite file, in small transactions.
    let back_dir = tempfile::tempdir().unwrap();
    let back_url = format!("sqlite://{}/back.db", back_dir.path().display());
    let (code, stdout, _) = migrate_db(&pg.url, &back_url, &["--batch-size", "700"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        counts(&stdout, "tasks"),
        [TASKS as u64, TASKS as u64, TASKS as u64, 0]
    );
    let back = open(&back_url).await;
    let after = snapshot(back.repo.as_ref()).await;
    back.close().await;
    assert_same(&before, &after, "back on SQLite");

    // Every sampled answer, from a darkroom on each database with the same bucket.
    let (on_pg, app) = answers(dir, &pg.url, &sample, Some(&signed_path)).await;
    let dir = app.stop().await;
    let (on_back, app) = answers(dir, &back_url, &sample, Some(&signed_path)).await;
    drop(app);
    assert_eq!(
        on_pg["signed file"], "200 OK",
        "the source's /files secret came along"
    );
    let compare = |name: &str, answers: &BTreeMap<String, String>| {
        for (path, body) in &original {
            assert_eq!(answers.get(path), Some(body), "{name}: {path}");
        }
    };
    compare("postgres", &on_pg);
    compare("back on sqlite", &on_back);
    assert_eq!(on_back["signed file"], "200 OK");
    println!(
        "{TASKS} tasks to PostgreSQL and back: {} answers identical on both, {:.1} s in all",
        original.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn urls_that_cannot_be_copied_between_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/darkroom.db", dir.path().display());
    let missing = format!("sqlite://{}/none.db", dir.path().display());
    let (code, _, stderr) = migrate_db(&missing, &url, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        !dir.path().join("none.db").exists(),
        "a missing source is not created"
    );
    std::fs::write(dir.path().join("darkroom.db"), b"").unwrap();
    let same = format!("sqlite://{}/./darkroom.db", dir.path().display());
    let (code, _, stderr) = migrate_db(&url, &same, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("the same database"), "{stderr}");
    let (code, _, stderr) = migrate_db(&url, "mysql://h/db", &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--to must be a database URL"), "{stderr}");
}

/// Every table of both schemas is copied or named as left out (with its reason in the
/// docs), so a table added later cannot be forgotten by `migrate-db`.
#[tokio::test]
async fn every_table_of_both_schemas_is_copied_or_named_as_left_out() {
    use sqlx::Connection;
    let mut known: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
    known.extend(NOT_COPIED.iter().map(|(name, _)| *name));
    known.sort_unstable();
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}/darkroom.db", dir.path().display());
    open(&sqlite_url).await.close().await;
    let mut sqlite = sqlx::SqliteConnection::connect(&sqlite_url).await.unwrap();
    let mut on_sqlite: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table'
           AND name NOT LIKE '\\_sqlx%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut sqlite)
    .await
    .unwrap();
    on_sqlite.sort_unstable();
    assert_eq!(on_sqlite, known, "SQLite's tables");
    let pg = fresh_postgres().await;
    open(&pg.url).await.close().await;
    let mut postgres = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let mut on_postgres: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
           AND table_name NOT LIKE '\\_sqlx%'",
    )
    .fetch_all(&mut postgres)
    .await
    .unwrap();
    on_postgres.sort_unstable();
    assert_eq!(on_postgres, known, "PostgreSQL's tables");
    postgres.close().await.unwrap();
}
