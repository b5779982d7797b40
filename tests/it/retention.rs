//! Retention: `darkroom gc` (the real binary) reports on a dry run and deletes nothing,
//! then deletes exactly the old finished tasks' results, records, rows, emptied batches
//! and unused old uploads, on the local bucket and on S3, keeping unfinished and recent
//! tasks and what they use; `DELETE /api/tasks/{id}` (owner, not final, in use, shared
//! uploads); `serve`'s background sweep.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Command;

use darkroom::domain::TaskId;
use darkroom::storage::BlobStore;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::harness::{BIN, TestApp, new_s3_bucket, png, s3_env, spawn_app, spawn_app_in};

const DAY_MS: i64 = 86_400_000;
const ALICE: &str = "dk_alice_0123456789abcdef";
const BOB: &str = "dk_bob_0123456789abcdefgh";

/// Settings that keep an unfinished task where it is: no callback and no poll for ten
/// minutes.
const HOLD: &[(&str, &str)] = &[
    ("DARKROOM_SIM_LATENCY_MS", "600000-600000"),
    ("DARKROOM_FIRST_POLL_MS", "600000"),
];

fn with<'a>(env: &'a [(&'a str, String)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    env.iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().copied())
        .collect()
}

/// Uploads one image (as `key`); its upload key.
async fn upload(app: &TestApp, key: Option<&str>, width: u32) -> String {
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(png(width, 20)).file_name("a.png"),
    );
    let mut request = app.http.post(app.url("/api/upload")).multipart(form);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["uploaded"][0]["key"].as_str().unwrap().to_owned()
}

/// Queues one task per upload key (as `key`); their ids.
async fn generate(app: &TestApp, key: Option<&str>, sources: Value) -> Vec<String> {
    let body = json!({"prompt": "p", "uploads": sources});
    let (code, answer) = app
        .send(reqwest::Method::POST, "/api/generate", key, Some(&body))
        .await;
    assert_eq!(code, 200, "{answer}");
    answer["taskIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn row(app: &TestApp, id: &str) -> Option<darkroom::storage::Task> {
    app.repo.get(&TaskId::parse(id).unwrap()).await.unwrap()
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `id`'s record in the bucket shows its final row.
async fn record_caught_up(app: &TestApp, id: &str) {
    wait_until(&format!("the record of {id} is final"), || async {
        let Ok(bytes) = app.blobs.get_bytes(&format!("kie-tasks/{id}.json")).await else {
            return false;
        };
        let record: Value = serde_json::from_slice(&bytes).unwrap();
        row(app, id)
            .await
            .is_some_and(|t| record["state"] == t.state.as_str() && t.state.is_terminal())
    })
    .await;
}

/// Moves tasks and uploads `days` days into the past, in the SQLite file in `dir`.
async fn backdate(dir: &Path, tasks: &[String], uploads: &[String], days: i64) {
    let url = format!("sqlite://{}", dir.join("darkroom.db").display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let shift = days * DAY_MS;
    for id in tasks {
        sqlx::query(
            "UPDATE tasks SET created_at = created_at - ?1, updated_at = updated_at - ?1,
                 completed_at = completed_at - ?1 WHERE id = ?2",
        )
        .bind(shift)
        .bind(id)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    for key in uploads {
        sqlx::query("UPDATE uploads SET created_at = created_at - ?1 WHERE key = ?2")
            .bind(shift)
            .bind(key)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
}

/// Every key in the bucket's three folders.
async fn bucket(blobs: &BlobStore) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for folder in ["uploads", "generated", "kie-tasks"] {
        keys.extend(blobs.list(folder).await.unwrap());
    }
    keys
}

/// Runs `darkroom gc ARGS` on `dir` with `env`; its exit code and stdout. Awaited: an app
/// on the test's runtime goes on while it runs.
async fn run_gc(dir: &Path, env: &[(&str, String)], args: &[&str]) -> (i32, String) {
    let output = Command::new(BIN)
        .arg("gc")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("DARKROOM_LOG", "warn")
        .current_dir(dir)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), stdout)
}

fn line<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} in {stdout}"))
}

/// The status answer to a task id nobody ever had, with the id in its message replaced.
async fn unknown_answer(app: &TestApp, id: &str) -> (u16, Value) {
    let (code, body) = app.get_json(&format!("/api/task-status?taskId={id}")).await;
    (
        code,
        serde_json::from_str(&body.to_string().replace(id, "ID")).unwrap(),
    )
}

async fn gc_deletes_only_old_finished_tasks(env: Vec<(&'static str, String)>) {
    let app = spawn_app(&with(&env, &[])).await;
    // Old and finished: a batch of two, each from its own upload.
    let old_uploads = [upload(&app, None, 30).await, upload(&app, None, 31).await];
    let body =
        json!({"prompt": "a batch", "uploads": [{"key": old_uploads[0]}, {"key": old_uploads[1]}]});
    let (code, answer) = app.post_json("/api/batches", &body).await;
    assert_eq!(code, 200, "{answer}");
    let batch = answer["batchId"].as_str().unwrap().to_owned();
    let old: Vec<String> = serde_json::from_value(answer["taskIds"].clone()).unwrap();
    // Recent and finished, from an upload that will look old: the upload stays.
    let reused = upload(&app, None, 32).await;
    let young = generate(&app, None, json!([{"key": reused}])).await;
    // An old upload nobody used.
    let unused = upload(&app, None, 33).await;
    let finished: Vec<String> = old.iter().chain(&young).cloned().collect();
    app.wait_all_final(&finished, Duration::from_secs(30)).await;
    for id in &finished {
        record_caught_up(&app, id).await;
    }
    // Old but unfinished: stays, and so does its upload.
    let app = app.restart(&with(&env, HOLD)).await;
    let stuck_upload = upload(&app, None, 34).await;
    let stuck = generate(&app, None, json!([{"key": stuck_upload}])).await;
    wait_until("the held task is submitted", || async {
        row(&app, &stuck[0]).await.unwrap().state.as_str() == "submitted"
    })
    .await;
    let mut doomed = BTreeSet::from([unused.clone()]);
    doomed.extend(old_uploads.iter().cloned());
    for id in &old {
        let task = row(&app, id).await.unwrap();
        assert_eq!(task.result_keys.len(), 1, "{task:?}");
        doomed.extend(task.result_keys.iter().cloned());
        doomed.insert(format!("kie-tasks/{id}.json"));
    }
    let blobs = app.blobs.clone();
    let dir = app.stop().await;
    let all_old: Vec<String> = old.iter().chain(&stuck).cloned().collect();
    let old_keys = [
        &old_uploads[..],
        &[reused.clone(), unused.clone(), stuck_upload.clone()],
    ]
    .concat();
    backdate(dir.path(), &all_old, &old_keys, 40).await;
    let before = bucket(&blobs).await;
    assert!(doomed.is_subset(&before), "{doomed:?} in {before:?}");
    let mut doomed_bytes = 0;
    for key in &doomed {
        doomed_bytes += blobs.size(key).await.unwrap().unwrap();
    }

    // No retention period: refused.
    let (code, _) = run_gc(dir.path(), &env, &["--dry-run"]).await;
    assert_eq!(code, 1);
    let mut days = env.clone();
    days.push(("DARKROOM_RETENTION_DAYS", "30".into()));
    let (code, dry) = run_gc(dir.path(), &days, &["--dry-run"]).await;
    assert_eq!(code, 0, "{dry}");
    assert_eq!(line(&dry, "tasks would be deleted:"), "2");
    assert_eq!(line(&dry, "batches would be deleted:"), "1");
    assert!(
        line(&dry, "results would be deleted:").starts_with("2 ("),
        "{dry}"
    );
    assert!(
        line(&dry, "records would be deleted:").starts_with("2 ("),
        "{dry}"
    );
    assert!(
        line(&dry, "uploads would be deleted:").starts_with("3 ("),
        "{dry}"
    );
    assert_eq!(
        line(&dry, "bytes would be deleted:"),
        doomed_bytes.to_string()
    );
    assert_eq!(bucket(&blobs).await, before, "a dry run deletes nothing");

    let (code, done) = run_gc(dir.path(), &days, &[]).await;
    assert_eq!(code, 0, "{done}");
    let facts = |out: &str| -> Vec<String> {
        out.lines()
            .skip(1)
            .filter(|l| !l.starts_with("finished before:"))
            .map(|l| l.replace(" would be deleted:", " deleted:"))
            .collect()
    };
    assert_eq!(
        facts(&done),
        facts(&dry),
        "the real run does what the dry run said"
    );
    let after = bucket(&blobs).await;
    let want: BTreeSet<String> = before.difference(&doomed).cloned().collect();
    assert_eq!(after, want, "exactly the old finished tasks' objects went");
    for kept in [&reused, &stuck_upload] {
        assert!(after.contains(kept.as_str()), "{kept}");
    }
    // Twice: nothing more.
    let (code, again) = run_gc(dir.path(), &days, &["--days", "30"]).await;
    assert_eq!(code, 0, "{again}");
    assert_eq!(line(&again, "tasks deleted:"), "0");
    assert_eq!(line(&again, "uploads deleted:"), "0 (0 bytes)");

    let app = spawn_app_in(dir, &with(&env, HOLD)).await;
    let unknown = unknown_answer(&app, TaskId::new().as_str()).await;
    assert_eq!(unknown.0, 404);
    for id in &old {
        assert_eq!(unknown_answer(&app, id).await, unknown, "{id}");
        assert!(row(&app, id).await.is_none());
    }
    let (code, _) = app.get_json(&format!("/api/batches/{batch}")).await;
    assert_eq!(code, 404, "the emptied batch went");
    assert_eq!(app.status(&young[0]).await["status"], "completed");
    assert_eq!(app.status(&stuck[0]).await["status"], "pending");
}

#[tokio::test]
async fn gc_dry_run_then_real_run_on_the_local_bucket() {
    gc_deletes_only_old_finished_tasks(Vec::new()).await;
}

#[tokio::test]
async fn gc_dry_run_then_real_run_on_an_s3_bucket() {
    let bucket = new_s3_bucket().await;
    gc_deletes_only_old_finished_tasks(s3_env(&bucket)).await;
}

async fn delete(app: &TestApp, id: &str, key: Option<&str>) -> (u16, Value) {
    app.send(
        reqwest::Method::DELETE,
        &format!("/api/tasks/{id}"),
        key,
        None,
    )
    .await
}

#[tokio::test]
async fn delete_removes_one_finished_task_for_its_owner_only() {
    let keys = format!("alice:{ALICE},bob:{BOB}");
    let app = spawn_app(&[
        ("DARKROOM_API_KEYS", keys.as_str()),
        ("DARKROOM_WORKERS", "false"),
    ])
    .await;
    let alice = Some(ALICE);
    // Two tasks from one upload, one from its own.
    let shared = upload(&app, alice, 30).await;
    let own = upload(&app, alice, 31).await;
    let pair = [
        generate(&app, alice, json!([{"key": shared}]))
            .await
            .remove(0),
        generate(&app, alice, json!([{"key": shared}]))
            .await
            .remove(0),
    ];
    let single = generate(&app, alice, json!([{"key": own}])).await.remove(0);

    // Not final yet.
    let (code, body) = delete(&app, &single, alice).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], "task_not_finished");
    let all: Vec<String> = pair.iter().chain([&single]).cloned().collect();
    app.step_until_final(&all, Duration::from_secs(30)).await;
    for id in &all {
        record_caught_up(&app, id).await;
    }
    // Another key's task is a missing one.
    let (code, missing) = delete(&app, &TaskId::new().to_string(), Some(BOB)).await;
    assert_eq!(code, 404);
    let (code, body) = delete(&app, &single, Some(BOB)).await;
    assert_eq!((code, &body), (404, &missing));
    assert!(row(&app, &single).await.is_some());

    // A result in use by an unfinished task: refused until that one is final.
    let result_url = row(&app, &single).await.unwrap().result_urls[0].clone();
    let body = json!({"prompt": "again", "imageUrls": [result_url]});
    let (code, answer) = app
        .send(reqwest::Method::POST, "/api/generate", alice, Some(&body))
        .await;
    assert_eq!(code, 200, "{answer}");
    let user = answer["taskIds"][0].as_str().unwrap().to_owned();
    let (code, body) = delete(&app, &single, alice).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], "task_in_use");
    let (code, _) = app
        .send(
            reqwest::Method::POST,
            &format!("/api/tasks/{user}/cancel"),
            alice,
            None,
        )
        .await;
    assert_eq!(code, 200);

    let task = row(&app, &single).await.unwrap();
    let (code, body) = delete(&app, &single, alice).await;
    assert_eq!(code, 204, "{body}");
    assert!(row(&app, &single).await.is_none());
    for key in task
        .result_keys
        .iter()
        .chain([&own, &format!("kie-tasks/{single}.json")])
    {
        assert!(!app.blobs.exists(key).await.unwrap(), "{key} is gone");
    }
    for path in [
        format!("/api/tasks/{single}"),
        format!("/api/task-status?taskId={single}"),
    ] {
        let (code, body) = app.send(reqwest::Method::GET, &path, alice, None).await;
        assert_eq!(code, 404, "{path}: {body}");
        assert_eq!(body["code"], "task_not_found", "{body}");
    }
    let (code, _) = delete(&app, &single, alice).await;
    assert_eq!(code, 404, "deleted once");

    // A shared upload stays while another task uses it.
    let (code, _) = delete(&app, &pair[0], alice).await;
    assert_eq!(code, 204);
    assert!(app.blobs.exists(&shared).await.unwrap());
    let (code, _) = delete(&app, &pair[1], alice).await;
    assert_eq!(code, 204);
    assert!(!app.blobs.exists(&shared).await.unwrap());
    // Alice may not use it any more either.
    let body = json!({"prompt": "p", "uploads": [{"key": shared}]});
    let (code, answer) = app
        .send(reqwest::Method::POST, "/api/generate", alice, Some(&body))
        .await;
    assert_eq!(code, 400, "{answer}");
    assert_eq!(answer["code"], "upload_not_found");
}

#[tokio::test]
async fn serve_sweeps_old_finished_tasks_in_the_background() {
    let app = spawn_app(&[
        ("DARKROOM_RETENTION_DAYS", "1"),
        ("DARKROOM_RETENTION_INTERVAL_SECS", "1"),
    ])
    .await;
    let ids = app.generate_from_upload(2, json!({})).await;
    app.wait_all_final(&ids, Duration::from_secs(30)).await;
    for id in &ids {
        record_caught_up(&app, id).await;
    }
    // The status board has both answers ready; one task now looks two days old.
    assert_eq!(app.status(&ids[0]).await["status"], "completed");
    backdate(app.dir.path(), &ids[..1], &[], 2).await;
    wait_until("the sweep deletes the old task", || async {
        row(&app, &ids[0]).await.is_none()
    })
    .await;
    let (code, body) = app
        .get_json(&format!("/api/task-status?taskId={}", ids[0]))
        .await;
    assert_eq!(code, 404, "the ready answer was dropped too: {body}");
    assert!(
        !app.blobs
            .exists(&format!("kie-tasks/{}.json", ids[0]))
            .await
            .unwrap()
    );
    assert_eq!(app.status(&ids[1]).await["status"], "completed");
    assert!(
        app.blobs
            .exists(&format!("kie-tasks/{}.json", ids[1]))
            .await
            .unwrap()
    );
}

/// The whole repository behind `app` (SQLite or PostgreSQL).
fn full_repo(app: &TestApp) -> &dyn darkroom::storage::Repo {
    match (&app.sqlite, &app.postgres) {
        (Some(sqlite), _) => sqlite.as_ref(),
        (None, Some(postgres)) => postgres.as_ref(),
        (None, None) => unreachable!("a test app has a database"),
    }
}

/// An old task whose result a newer task took as its input stays, with that result, until
/// the newer task is old too; then both go, with the upload.
async fn an_old_result_in_use_is_kept_with_its_task(env: &[(&str, &str)]) {
    let app = spawn_app(env).await;
    let source = upload(&app, None, 30).await;
    let first = generate(&app, None, json!([{"key": source}])).await;
    app.wait_all_final(&first, Duration::from_secs(30)).await;
    let first_row = row(&app, &first[0]).await.unwrap();
    let body = json!({"prompt": "again", "imageUrls": [first_row.result_urls[0]]});
    let (code, answer) = app.post_json("/api/generate", &body).await;
    assert_eq!(code, 200, "{answer}");
    let second = crate::harness::task_ids(&answer);
    app.wait_all_final(&second, Duration::from_secs(30)).await;
    for id in first.iter().chain(&second) {
        record_caught_up(&app, id).await;
    }
    let second_row = row(&app, &second[0]).await.unwrap();
    let sweep = |cutoff: i64, dry_run: bool| darkroom::retention::SweepOptions {
        cutoff,
        dry_run,
        batch: 1,
    };

    // Only the first is old: it stays, in use.
    let between = second_row.created_at;
    assert!(first_row.completed_at.unwrap() < between);
    for dry_run in [true, false] {
        let report =
            darkroom::retention::sweep(&app.blobs, full_repo(&app), &sweep(between, dry_run), None)
                .await
                .unwrap();
        assert_eq!((report.tasks, report.kept_in_use), (0, 1), "{report:?}");
        assert_eq!(report.uploads.count, 0, "{report:?}");
    }
    assert!(row(&app, &first[0]).await.is_some());
    assert!(app.blobs.exists(&first_row.result_keys[0]).await.unwrap());

    // Both old: both go, their results, records and the upload, one task per round.
    let later = darkroom::clock::now_ms() + 1;
    let dry = darkroom::retention::sweep(&app.blobs, full_repo(&app), &sweep(later, true), None)
        .await
        .unwrap();
    let done = darkroom::retention::sweep(&app.blobs, full_repo(&app), &sweep(later, false), None)
        .await
        .unwrap();
    for report in [&dry, &done] {
        assert_eq!((report.tasks, report.kept_in_use), (2, 0), "{report:?}");
        assert_eq!(report.results.count, 2, "{report:?}");
        assert_eq!(report.records.count, 2, "{report:?}");
        assert_eq!(report.uploads.count, 1, "{report:?}");
    }
    assert_eq!(dry.bytes(), done.bytes());
    for id in first.iter().chain(&second) {
        assert!(row(&app, id).await.is_none(), "{id}");
    }
    assert!(
        bucket(&app.blobs).await.is_empty(),
        "{:?}",
        bucket(&app.blobs).await
    );
}

#[tokio::test]
async fn an_old_result_in_use_is_kept_on_sqlite() {
    an_old_result_in_use_is_kept_with_its_task(&[]).await;
}

#[tokio::test]
async fn an_old_result_in_use_is_kept_on_postgres() {
    let db = crate::harness::fresh_postgres().await;
    an_old_result_in_use_is_kept_with_its_task(&[("DARKROOM_DATABASE_URL", db.url.as_str())]).await;
}
