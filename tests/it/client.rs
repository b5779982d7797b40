//! The command-line client (`darkroom generate`, `tasks …`, `batches …`) as a user runs it:
//! the built binary against a running darkroom over real HTTP — files in, results out,
//! exit codes, `--json` — and `darkroom serve`'s flags.

use std::path::Path;
use std::process::{Output, Stdio};

use crate::harness::{BIN, Running, TestApp, free_port, png, spawn_app, wait_for_http};
use serde_json::{Value, json};

const ALICE: &str = "dk_alice_0123456789abcdef";

/// Runs `darkroom ARGS… --server <app>` without waiting on the server's runtime: the
/// server runs in this process, so the child is awaited, never blocked on.
async fn darkroom(server: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .args(["--server", server])
        .env_remove("DARKROOM_SERVER")
        .env_remove("DARKROOM_KEY")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    tokio::time::timeout(std::time::Duration::from_secs(120), command.output())
        .await
        .expect("the client finishes within 120 s")
        .expect("the client runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The one JSON document a `--json` run prints.
fn document(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}\nstderr: {}",
            stdout(output),
            stderr(output)
        )
    })
}

/// Writes PNG files into `dir`; their paths as strings.
fn pngs(dir: &Path, count: u32) -> Vec<String> {
    (0..count)
        .map(|i| {
            let path = dir.join(format!("in{i}.png"));
            std::fs::write(&path, png(40 + i, 30)).unwrap();
            path.display().to_string()
        })
        .collect()
}

/// Submits one task through the client (`--json`) and returns its id and the run.
async fn generate_one(app: &TestApp, dir: &Path, extra: &[&str]) -> (String, Output) {
    let files = pngs(dir, 1);
    let out = dir.join("out");
    let mut args = vec!["generate", "--json", "-p", "make it red", "--out"];
    let out = out.display().to_string();
    args.push(&out);
    args.extend(extra);
    args.extend(files.iter().map(String::as_str));
    let run = darkroom(&app.base, &args, &[]).await;
    let id = document(&run)["tasks"][0]["taskId"]
        .as_str()
        .expect("a task id")
        .to_owned();
    (id, run)
}

#[tokio::test]
async fn generate_uploads_files_follows_the_tasks_and_downloads_the_results() {
    let app = spawn_app(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    // Eleven: more than one upload request and one generate request take (ten each).
    let files = pngs(dir.path(), 11);
    let out = dir.path().join("results");
    let mut args = vec!["generate", "--prompt", "a red linen dress", "--out"];
    let out_arg = out.display().to_string();
    args.push(&out_arg);
    args.extend(files.iter().map(String::as_str));
    let run = darkroom(&app.base, &args, &[]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("11 of 11 task(s) succeeded"),
        "{}",
        stderr(&run)
    );
    // stdout is the result files, one a line, named <taskId>-<n>.<ext>.
    let printed: Vec<String> = stdout(&run).lines().map(str::to_owned).collect();
    assert_eq!(printed.len(), 11, "{printed:?}");
    for line in &printed {
        let path = Path::new(line);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("tsk_") && name.ends_with("-0.png"),
            "{name}"
        );
        assert_eq!(path.parent().unwrap(), out);
        let image = image::open(path).unwrap_or_else(|e| panic!("{line} decodes: {e}"));
        assert!(image.width() > 0);
    }
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(left.len(), 11, "no .part file is left behind");
}

#[tokio::test]
async fn generate_json_batch_with_a_url_input_and_jpeg_output() {
    let app = spawn_app(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let files = pngs(dir.path(), 1);
    // An http(s) argument is passed as an image URL: here one of the server's own uploads.
    let (status, up) = app.upload(&[("url.png", png(36, 36))]).await;
    assert_eq!(status, 200, "{up}");
    let url = up["uploaded"][0]["url"].as_str().unwrap().to_owned();
    let out = dir.path().join("out").display().to_string();
    let run = darkroom(
        &app.base,
        &[
            "generate",
            "--json",
            "--batch",
            "--format",
            "jpeg",
            "--aspect-ratio",
            "4:3",
            "--prompt",
            "studio light",
            "--out",
            &out,
            &files[0],
            &url,
        ],
        &[],
    )
    .await;
    assert!(run.status.success(), "{}", stderr(&run));
    let doc = document(&run);
    let batch = doc["batchId"].as_str().expect("a batch id");
    assert!(batch.starts_with("bat_"), "{doc}");
    assert_eq!(
        (doc["succeeded"].clone(), doc["failed"].clone()),
        (json!(2), json!(0))
    );
    let tasks = doc["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2);
    for task in tasks {
        assert_eq!(task["state"], "succeeded", "{task}");
        assert_eq!(task["provider"], "kie", "{task}");
        assert!(task["error"].is_null());
        let file = task["files"][0].as_str().expect("a downloaded file");
        assert!(file.ends_with("-0.jpg"), "{file}");
        let format = image::ImageReader::open(file)
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .format();
        assert_eq!(format, Some(image::ImageFormat::Jpeg), "{file}");
    }
    // Every task of the batch is one the client followed.
    let (_, shown) = app.get_json(&format!("/api/batches/{batch}")).await;
    assert_eq!(shown["total"], 2, "{shown}");
}

#[tokio::test]
async fn a_failed_task_exits_non_zero_naming_the_task_its_code_and_message() {
    let app = spawn_app(&[("DARKROOM_SIM_FAIL_RATE", "1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let files = pngs(dir.path(), 2);
    let out = dir.path().join("out").display().to_string();
    // Once with the event stream, once polling: both end with the same reasons.
    for extra in [None, Some("--poll")] {
        let mut args = vec!["generate", "-p", "fail please", "--out", &out];
        args.extend(extra);
        args.extend(files.iter().map(String::as_str));
        let run = darkroom(&app.base, &args, &[]).await;
        assert_eq!(run.status.code(), Some(1), "{extra:?}: {}", stderr(&run));
        let err = stderr(&run);
        let reasons: Vec<&str> = err.lines().filter(|l| l.starts_with("task tsk_")).collect();
        assert_eq!(
            reasons.len(),
            2,
            "{extra:?}: one line per failed task: {err}"
        );
        for line in reasons {
            // task <id> failed: <code>: <message>
            let rest = line.split_once(" failed: ").map(|(_, r)| r);
            let (code, message) = rest
                .and_then(|r| r.split_once(": "))
                .unwrap_or_else(|| panic!("{line}"));
            assert!(code.starts_with("provider_"), "{line}");
            assert!(!message.trim().is_empty(), "{line}");
        }
        assert!(stdout(&run).is_empty(), "no result files: {}", stdout(&run));
    }
}

#[tokio::test]
async fn unreachable_servers_missing_keys_and_refused_requests_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let files = pngs(dir.path(), 1);

    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let run = darkroom(&nowhere, &["tasks", "list"], &[]).await;
    assert_eq!(run.status.code(), Some(3));
    assert!(
        stderr(&run).contains(&format!("cannot reach darkroom at {nowhere}")),
        "{}",
        stderr(&run)
    );
    let run = darkroom(&nowhere, &["tasks", "list", "--json"], &[]).await;
    assert_eq!(document(&run)["error"]["code"], "unreachable");

    let app = spawn_app(&[("DARKROOM_API_KEYS", &format!("alice:{ALICE}"))]).await;
    let out = dir.path().join("out").display().to_string();
    let args = ["generate", "-p", "x", "--out", &out, &files[0]];
    let run = darkroom(&app.base, &args, &[]).await;
    assert_eq!(run.status.code(), Some(3));
    assert!(
        stderr(&run).contains("API key missing or wrong: pass --key or set DARKROOM_KEY"),
        "{}",
        stderr(&run)
    );
    let run = darkroom(
        &app.base,
        &args,
        &[("DARKROOM_KEY", "dk_wrong_0123456789abcdef")],
    )
    .await;
    assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
    // The key from the environment works, and results download with it.
    let run = darkroom(&app.base, &args, &[("DARKROOM_KEY", ALICE)]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    let run = darkroom(&app.base, &["tasks", "list", "--key", ALICE], &[]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run).lines().count(), 1, "{}", stdout(&run));

    // Another refusal: the server's own code and sentence.
    let run = darkroom(
        &app.base,
        &[
            "generate",
            "-p",
            "x",
            "--aspect-ratio",
            "7:3",
            "--key",
            ALICE,
            &files[0],
        ],
        &[],
    )
    .await;
    assert_eq!(run.status.code(), Some(3));
    assert!(
        stderr(&run).contains("invalid_aspect_ratio: "),
        "{}",
        stderr(&run)
    );
    // A file that is not there is the command line's fault.
    let run = darkroom(&app.base, &["generate", "-p", "x", "missing.png"], &[]).await;
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(stderr(&run).contains("missing.png"), "{}", stderr(&run));
    // A batch is one request: more images than one takes are refused before uploading.
    let many = pngs(dir.path(), 11);
    let mut args = vec!["generate", "--batch", "-p", "x"];
    args.extend(many.iter().map(String::as_str));
    let run = darkroom(&app.base, &args, &[]).await;
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("at most 10 images"),
        "{}",
        stderr(&run)
    );
}

#[tokio::test]
async fn tasks_list_show_wait_and_retry() {
    let app = spawn_app(&[("DARKROOM_SIM_FAIL_RATE", "1")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (failed, run) = generate_one(&app, dir.path(), &[]).await;
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(document(&run)["tasks"][0]["state"], "failed");

    let run = darkroom(
        &app.base,
        &["tasks", "list", "--json", "--state", "failed"],
        &[],
    )
    .await;
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(document(&run)["tasks"][0]["taskId"], failed.as_str());
    let run = darkroom(&app.base, &["tasks", "list"], &[]).await;
    assert!(stdout(&run).contains(&failed), "{}", stdout(&run));

    let run = darkroom(&app.base, &["tasks", "show", &failed], &[]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    let shown = stdout(&run);
    assert!(
        shown.contains("failed (failed)") && shown.contains("error"),
        "{shown}"
    );
    let run = darkroom(&app.base, &["tasks", "show", &failed, "--json"], &[]).await;
    assert_eq!(document(&run)["taskId"], failed.as_str());

    // Retry: the new id alone on stdout; waiting for it reports its failure.
    let run = darkroom(&app.base, &["tasks", "retry", &failed], &[]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    let retry = stdout(&run).trim().to_owned();
    assert!(retry.starts_with("tsk_") && retry != failed, "{retry}");
    let run = darkroom(&app.base, &["tasks", "wait", &retry], &[]).await;
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains(&format!("task {retry} failed: ")),
        "{}",
        stderr(&run)
    );
    let run = darkroom(&app.base, &["tasks", "retry", &retry, "--json"], &[]).await;
    assert_eq!(document(&run)["retryOf"], retry.as_str());

    let missing = "tsk_00000000000000000000000000000000";
    let run = darkroom(&app.base, &["tasks", "show", missing], &[]).await;
    assert_eq!(run.status.code(), Some(3));
    assert!(stderr(&run).contains("task_not_found"), "{}", stderr(&run));
}

#[tokio::test]
async fn tasks_wait_downloads_and_cancel_stops_a_queued_task() {
    // Workers off: tasks stay queued until the test steps the engine.
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let ids = app.generate_from_upload(2, json!({})).await;

    // Not final within --timeout: exit 1, naming the task and its state.
    let run = darkroom(
        &app.base,
        &["tasks", "wait", &ids[0], "--timeout", "1"],
        &[],
    )
    .await;
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains(&format!(
            "task {} not final after 1 s: still queued",
            ids[0]
        )),
        "{}",
        stderr(&run)
    );

    let run = darkroom(&app.base, &["tasks", "cancel", &ids[1], "--json"], &[]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(document(&run)["state"], "canceled");
    let run = darkroom(&app.base, &["tasks", "cancel", &ids[1]], &[]).await;
    assert_eq!(run.status.code(), Some(3));
    assert!(
        stderr(&run).contains("task_state_conflict"),
        "{}",
        stderr(&run)
    );

    // The first task completes while the client waits; its result is downloaded.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let waiting = tokio::spawn({
        let base = app.base.clone();
        let id = ids[0].clone();
        async move { darkroom(&base, &["tasks", "wait", &id, "--json", "--out", &out], &[]).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !waiting.is_finished() {
        app.engine.run_pending().await.expect("the engine steps");
        assert!(std::time::Instant::now() < deadline, "the wait did not end");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let run = waiting.await.unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let doc = document(&run);
    let file = doc["tasks"][0]["files"][0].as_str().expect("a file");
    assert!(image::open(file).is_ok(), "{file} decodes");

    // Waiting on a canceled task: exit 1 with its reason.
    let run = darkroom(&app.base, &["tasks", "wait", &ids[1]], &[]).await;
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains(&format!("task {} canceled: ", ids[1])),
        "{}",
        stderr(&run)
    );
}

#[tokio::test]
async fn batches_show_and_zip() {
    let app = spawn_app(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, run) = generate_one(&app, dir.path(), &["--batch"]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    let batch = document(&run)["batchId"].as_str().unwrap().to_owned();

    let run = darkroom(&app.base, &["batches", "show", &batch, "--json"], &[]).await;
    let shown = document(&run);
    assert_eq!(
        (shown["total"].clone(), shown["done"].clone()),
        (json!(1), json!(true))
    );
    let run = darkroom(&app.base, &["batches", "show", &batch], &[]).await;
    assert!(stdout(&run).contains("succeeded 1"), "{}", stdout(&run));

    let zip = dir.path().join("batch.zip");
    let zip_arg = zip.display().to_string();
    let run = darkroom(
        &app.base,
        &["batches", "zip", &batch, "--out", &zip_arg, "--wait"],
        &[],
    )
    .await;
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(stdout(&run).trim(), zip_arg);
    // Python's zipfile checks every CRC: an independent reader.
    let script = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nassert z.testzip() is None\nprint(len(z.namelist()))";
    let checked = std::process::Command::new("python3")
        .args(["-c", script, &zip_arg])
        .output()
        .expect("python3 runs");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&checked.stdout).trim(), "1");

    let run = darkroom(&app.base, &["batches", "show", "bat_nope"], &[]).await;
    assert_eq!(run.status.code(), Some(3));
    assert!(stderr(&run).contains("batch_not_found"), "{}", stderr(&run));
}

#[tokio::test]
async fn an_unfinished_batch_is_not_zipped_without_wait() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (status, up) = app.upload(&[("a.png", png(30, 30))]).await;
    assert_eq!(status, 200, "{up}");
    let body = json!({"prompt": "p", "uploads": [{"key": up["uploaded"][0]["key"]}]});
    let (_, created) = app.post_json("/api/batches", &body).await;
    let batch = created["batchId"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("b.zip").display().to_string();
    let run = darkroom(
        &app.base,
        &["batches", "zip", batch, "--out", &zip, "--json"],
        &[],
    )
    .await;
    assert_eq!(run.status.code(), Some(3));
    // The server's refusal, passed on: its code and its counts.
    let refusal = document(&run);
    assert_eq!(refusal["error"]["code"], "batch_not_finished", "{refusal}");
    let message = refusal["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("1 of its 1 tasks are not final yet (1 queued)"),
        "{refusal}"
    );
    assert!(!Path::new(&zip).exists());
    assert!(!Path::new(&format!("{zip}.part")).exists());
}

#[tokio::test]
async fn serve_flags_win_over_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flag-data");
    let env_data = dir.path().join("env-data");
    let port = free_port();
    let env_port = free_port();
    let child = std::process::Command::new(BIN)
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(&data)
        .env("DARKROOM_LISTEN", format!("127.0.0.1:{env_port}"))
        .env("DARKROOM_DATA_DIR", &env_data)
        .env("DARKROOM_LOG", "warn")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("darkroom serve starts");
    let _running = Running(child);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_for_http(&http, &format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(
        data.join("darkroom.db").exists(),
        "the database is under --data-dir"
    );
    assert!(!env_data.exists(), "DARKROOM_DATA_DIR lost to --data-dir");
    assert!(
        http.get(format!("http://127.0.0.1:{env_port}/healthz"))
            .send()
            .await
            .is_err(),
        "--port won over DARKROOM_LISTEN's port"
    );
    // And the client reaches it there.
    let run = darkroom(
        &format!("http://127.0.0.1:{port}"),
        &["tasks", "list", "--json"],
        &[],
    )
    .await;
    assert_eq!(document(&run)["tasks"], json!([]));

    let help = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in [
        "--port",
        "--listen",
        "--data-dir",
        "--config",
        "DARKROOM_DATA_DIR",
        "darkroom.example.toml",
    ] {
        assert!(help.contains(needle), "serve --help names {needle}: {help}");
    }
}

/// The sum of `darkroom_http_requests_total` over `route` in the server's `/metrics`.
async fn requests_to(app: &TestApp, route: &str) -> f64 {
    let text = app.metrics_text().await;
    let label = format!("route=\"{route}\"");
    text.lines()
        .filter(|l| l.starts_with("darkroom_http_requests_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test]
async fn generate_follows_tasks_on_the_event_stream_and_polls_only_when_told() {
    // Generations that take seconds: a follower that polled would ask many times.
    let app = spawn_app(&[("DARKROOM_SIM_LATENCY_MS", "2000-2500")]).await;
    let dir = tempfile::tempdir().unwrap();
    let (id, run) = generate_one(&app, dir.path(), &[]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(document(&run)["tasks"][0]["state"], "succeeded", "{id}");
    let streamed = requests_to(&app, "/api/events").await;
    let polled = requests_to(&app, "/api/tasks/{id}").await;
    assert_eq!(streamed, 1.0, "one event stream for the run");
    assert_eq!(polled, 0.0, "no polls while the stream works");

    let (_, run) = generate_one(&app, dir.path(), &["--poll"]).await;
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(
        requests_to(&app, "/api/events").await,
        streamed,
        "--poll opens no stream"
    );
    let polls = requests_to(&app, "/api/tasks/{id}").await;
    assert!(
        polls >= 2.0,
        "--poll asks until the task is final: {polls} polls"
    );
}
