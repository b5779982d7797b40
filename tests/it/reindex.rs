//! `darkroom reindex` (the real binary): the database rebuilt from the bucket's task
//! records answers `/api/task-status` byte for byte as before, and `/api/stats` with the
//! same figures, on the local bucket and on S3; a second run adds nothing; a live
//! database's newer rows are never overwritten.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::process::Command;

use serde_json::{Value, json};

use crate::harness::{BIN, TestApp, new_s3_bucket, s3_env, spawn_app, spawn_app_in};

/// The raw body of the status answer.
async fn status_body(app: &TestApp, id: &str) -> String {
    let response = app
        .http
        .get(app.url(&format!("/api/task-status?taskId={id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{id}");
    response.text().await.unwrap()
}

/// Waits until `id`'s record in the bucket shows the state its status answer shows.
async fn record_caught_up(app: &TestApp, id: &str) {
    let start = Instant::now();
    loop {
        let status: Value = serde_json::from_str(&status_body(app, id).await).unwrap();
        if let Ok(bytes) = app.blobs.get_bytes(&format!("kie-tasks/{id}.json")).await {
            let record: Value = serde_json::from_slice(&bytes).unwrap();
            if record["state"] == status["state"] && record["updatedAt"] == status["updatedAt"] {
                return;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "record of {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_state(app: &TestApp, id: &str, state: &str) {
    let start = Instant::now();
    while app.status(id).await["state"] != state {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{id} never {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `darkroom reindex` on `dir` with `env`; its exit code and stdout. Awaited: an app
/// on the test's runtime goes on while it runs.
async fn run_reindex(dir: &std::path::Path, env: &[(&str, String)]) -> (i32, String) {
    let output = Command::new(BIN)
        .args(["reindex", "--quiet", "--data-dir"])
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

fn line(stdout: &str, label: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in {stdout}"))
}

/// `GET /api/stats` for every window.
async fn all_stats(app: &TestApp) -> BTreeMap<&'static str, Value> {
    let mut answers = BTreeMap::new();
    for window in ["1h", "24h", "7d", "30d"] {
        let (status, body) = app.get_json(&format!("/api/stats?window={window}")).await;
        assert_eq!(status, 200, "{body}");
        answers.insert(window, body);
    }
    answers
}

/// An answer of `/api/stats` without what moves with the clock.
fn figures(answer: &Value) -> Value {
    let mut figures = answer.clone();
    for moving in ["since", "until", "series"] {
        figures.as_object_mut().unwrap().remove(moving);
    }
    figures
}

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

async fn rebuilt_database_answers_as_before(env: Vec<(&'static str, String)>) {
    // Successes, failures (the simulator fails every task) and one task left `submitted`.
    let app = spawn_app(&with(&env, &[])).await;
    let mut ids = app
        .generate_from_upload(3, json!({"aspectRatio": "16:9"}))
        .await;
    app.wait_all_final(&ids, Duration::from_secs(30)).await;
    let app = app
        .restart(&with(&env, &[("DARKROOM_SIM_FAIL_RATE", "1")]))
        .await;
    let failed = app.generate_from_upload(2, json!({})).await;
    let counts = app.wait_all_final(&failed, Duration::from_secs(30)).await;
    assert_eq!(counts.get("failed"), Some(&2), "{counts:?}");
    ids.extend(failed);
    let app = app.restart(&with(&env, HOLD)).await;
    let unfinished = app.generate_from_upload(1, json!({})).await;
    wait_state(&app, &unfinished[0], "submitted").await;
    ids.extend(unfinished.clone());
    // Every answer, also by the provider's id.
    let mut before = BTreeMap::new();
    for id in &ids {
        record_caught_up(&app, id).await;
        let body = status_body(&app, id).await;
        let value: Value = serde_json::from_str(&body).unwrap();
        let provider_id = value["providerTaskId"].as_str().unwrap().to_owned();
        before.insert(provider_id.clone(), status_body(&app, &provider_id).await);
        before.insert(id.clone(), body);
    }
    let statuses: Vec<String> = before
        .values()
        .map(|b| serde_json::from_str::<Value>(b).unwrap()["status"].to_string())
        .collect();
    for status in ["\"completed\"", "\"failed\"", "\"pending\""] {
        assert!(
            statuses.iter().any(|s| s == status),
            "{status} in {statuses:?}"
        );
    }
    let stats_before = all_stats(&app).await;
    let dir = app.stop().await;

    for name in ["darkroom.db", "darkroom.db-wal", "darkroom.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    let (code, stdout) = run_reindex(dir.path(), &env).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(line(&stdout, "records read:"), 6);
    assert_eq!(line(&stdout, "tasks added:"), 6);
    assert_eq!(line(&stdout, "already present:"), 0);
    assert_eq!(line(&stdout, "unreadable records:"), 0);
    // Twice: nothing more.
    let (code, stdout) = run_reindex(dir.path(), &env).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(line(&stdout, "tasks added:"), 0);
    assert_eq!(line(&stdout, "already present:"), 6);

    let app = spawn_app_in(dir, &with(&env, HOLD)).await;
    for (id, body) in &before {
        assert_eq!(&status_body(&app, id).await, body, "{id}");
    }
    // The statistics count the restored tasks as they counted the lost ones.
    let stats_after = all_stats(&app).await;
    for (window, before) in &stats_before {
        let after = &stats_after[window];
        assert_eq!(before["tasks"], 6, "{window}: {before}");
        assert_eq!(figures(after), figures(before), "{window}");
        if after["since"] == before["since"] {
            assert_eq!(after["series"], before["series"], "{window}");
        }
    }
    // The unfinished task is in the queue's hands again, as it was.
    let row = app
        .repo
        .get(&darkroom::domain::TaskId::parse(&unfinished[0]).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.state, darkroom::domain::TaskState::Submitted);
    assert!(row.lease_owner.is_none());
}

#[tokio::test]
async fn a_lost_database_is_rebuilt_from_the_local_bucket() {
    rebuilt_database_answers_as_before(Vec::new()).await;
}

#[tokio::test]
async fn a_lost_database_is_rebuilt_from_an_s3_bucket() {
    let bucket = new_s3_bucket().await;
    rebuilt_database_answers_as_before(s3_env(&bucket)).await;
}

#[tokio::test]
async fn reindex_on_a_live_database_only_adds_what_is_missing() {
    let app = spawn_app(&[]).await;
    let ids = app.generate_from_upload(2, json!({})).await;
    app.wait_all_final(&ids, Duration::from_secs(30)).await;
    for id in &ids {
        record_caught_up(&app, id).await;
    }
    let before = status_body(&app, &ids[0]).await;
    // A stale record of a stored task (as if written before its last change), a record of
    // a task the database lacks, and one that is not a record.
    let key = format!("kie-tasks/{}.json", ids[0]);
    let mut stale: Value =
        serde_json::from_slice(&app.blobs.get_bytes(&key).await.unwrap()).unwrap();
    stale["state"] = json!("submitted");
    stale["status"] = json!("pending");
    stale["resultUrls"] = json!([]);
    let spec = |key: &str| darkroom::storage::keys::ObjectSpec {
        key: key.to_owned(),
        content_type: "application/json",
        cache_control: "no-cache",
    };
    app.blobs
        .put(&spec(&key), serde_json::to_vec(&stale).unwrap().into())
        .await
        .unwrap();
    let missing = darkroom::domain::TaskId::new();
    let mut copy: Value = serde_json::from_slice(
        &app.blobs
            .get_bytes(&format!("kie-tasks/{}.json", ids[1]))
            .await
            .unwrap(),
    )
    .unwrap();
    copy["taskId"] = json!(missing.as_str());
    copy["providerTaskId"] = json!("restored-elsewhere");
    app.blobs
        .put(
            &spec(&format!("kie-tasks/{missing}.json")),
            serde_json::to_vec(&copy).unwrap().into(),
        )
        .await
        .unwrap();
    app.blobs
        .put(&spec("kie-tasks/garbage.json"), "not json".into())
        .await
        .unwrap();

    let (code, stdout) = run_reindex(app.dir.path(), &[]).await;
    assert_eq!(code, 4, "an unreadable record is reported: {stdout}");
    assert_eq!(line(&stdout, "records read:"), 4);
    assert_eq!(line(&stdout, "tasks added:"), 1);
    assert_eq!(line(&stdout, "already present:"), 2);
    assert_eq!(line(&stdout, "unreadable records:"), 1);
    assert!(
        stdout.contains("kie-tasks/garbage.json: not a record"),
        "{stdout}"
    );
    // The newer row stands; the missing task is answered by the running server.
    assert_eq!(status_body(&app, &ids[0]).await, before);
    let restored = app.status(missing.as_str()).await;
    assert_eq!(restored["status"], "completed", "{restored}");
    assert_eq!(restored["providerTaskId"], "restored-elsewhere");
}

#[tokio::test]
async fn a_restored_queued_task_runs_and_a_restored_submitting_one_is_not_sent_again() {
    let app = spawn_app(&[]).await;
    let ids = app.generate_from_upload(1, json!({})).await;
    app.wait_all_final(&ids, Duration::from_secs(30)).await;
    record_caught_up(&app, &ids[0]).await;
    let template: Value = serde_json::from_slice(
        &app.blobs
            .get_bytes(&format!("kie-tasks/{}.json", ids[0]))
            .await
            .unwrap(),
    )
    .unwrap();
    // Records of a task that was waiting in the queue and of one whose create was under way
    // when the database was lost.
    let unfinished = |state: &str| {
        let id = darkroom::domain::TaskId::new();
        let mut record = template.clone();
        record["taskId"] = json!(id.as_str());
        record["state"] = json!(state);
        record["status"] = json!("pending");
        for field in [
            "providerTaskId",
            "completedAt",
            "submittedAt",
            "consumeCredits",
            "costTimeMs",
        ] {
            record[field] = Value::Null;
        }
        record["resultUrls"] = json!([]);
        record["resultKeys"] = json!([]);
        (id, record)
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let host = crate::harness::input_host(stop.clone()).await;
    // Its input is served apart from darkroom, whose port changes with the restart.
    let (queued, mut queued_record) = unfinished("queued");
    let input = format!("http://{host}/input.png");
    queued_record["imageUrl"] = json!(input);
    queued_record["inputUrls"] = json!([input]);
    let (submitting, submitting_record) = unfinished("submitting");
    for (id, record) in [(&queued, &queued_record), (&submitting, &submitting_record)] {
        let spec = darkroom::storage::keys::ObjectSpec {
            key: format!("kie-tasks/{id}.json"),
            content_type: "application/json",
            cache_control: "no-cache",
        };
        app.blobs
            .put(&spec, serde_json::to_vec(record).unwrap().into())
            .await
            .unwrap();
    }
    let dir = app.stop().await;
    for name in ["darkroom.db", "darkroom.db-wal", "darkroom.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    let (code, stdout) = run_reindex(dir.path(), &[]).await;
    assert_eq!((code, line(&stdout, "tasks added:")), (0, 3), "{stdout}");

    // A fresh simulator: every create it sees is counted.
    let app = spawn_app_in(dir, &[("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str())]).await;
    let done = app
        .wait_final(queued.as_str(), Duration::from_secs(30))
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let start = Instant::now();
    loop {
        let row = app.repo.get(&submitting).await.unwrap().unwrap();
        if row.state != darkroom::domain::TaskState::Submitting || row.error_code.is_some() {
            println!(
                "restored submitting task: {:?} {:?}",
                row.state, row.error_code
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never taken up: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sim = app.sim.as_ref().unwrap();
    assert_eq!(sim.stats().created, 1, "only the queued task was created");
    stop.cancel();
}

#[tokio::test]
async fn a_lost_batch_row_is_rebuilt_from_its_tasks_records() {
    let app = spawn_app(&[]).await;
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("b{i}.png"), crate::harness::png(40 + i, 30)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (status, up) = app.upload(&refs).await;
    assert_eq!(status, 200, "{up}");
    let uploads: Vec<Value> = up["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| json!({"key": u["key"], "url": u["url"]}))
        .collect();
    let (code, answer) = app
        .post_json(
            "/api/batches",
            &json!({"prompt": "a batch", "uploads": uploads}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    let batch = answer["batchId"].as_str().unwrap().to_owned();
    let ids: Vec<String> = answer["taskIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    app.wait_all_final(&ids, Duration::from_secs(30)).await;
    for id in &ids {
        record_caught_up(&app, id).await;
    }
    let (code, before) = app.get_json(&format!("/api/batches/{batch}")).await;
    assert_eq!(code, 200, "{before}");
    let dir = app.stop().await;

    for name in ["darkroom.db", "darkroom.db-wal", "darkroom.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(name));
    }
    let (code, stdout) = run_reindex(dir.path(), &[]).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(line(&stdout, "tasks added:"), 3);
    assert_eq!(line(&stdout, "batches added:"), 1);
    let (code, stdout) = run_reindex(dir.path(), &[]).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(line(&stdout, "batches added:"), 0);

    let app = spawn_app_in(dir, &[]).await;
    let (code, after) = app.get_json(&format!("/api/batches/{batch}")).await;
    assert_eq!(code, 200, "{after}");
    assert_eq!(after, before, "the batch answers as before");
}
