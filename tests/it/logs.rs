//! Logs you can follow a task through (issue 12, item 4), read from the `darkroom` binary's
//! own output: JSON is one object a line; every line of a task's jobs carries its
//! `task_id` (and, once known, the provider's id) as span fields; the access line names
//! the route template; and output that is not a terminal gets no colour codes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{BIN, Running, free_port, png, wait_for_http};

/// Starts `darkroom serve` (embedded simulator) with `env`, its standard output in a file.
fn serve(dir: &std::path::Path, port: u16, env: &[(&str, &str)]) -> Running {
    let out = std::fs::File::create(dir.join("stdout.log")).unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .current_dir(dir)
        .env("DARKROOM_DATA_DIR", dir)
        .env("DARKROOM_LISTEN", format!("127.0.0.1:{port}"))
        .env("DARKROOM_SIM_LATENCY_MS", "20-60")
        .env("DARKROOM_FIRST_POLL_MS", "500")
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(out))
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    Running(command.spawn().unwrap())
}

fn stop(mut running: Running) {
    let _ = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status();
    let start = Instant::now();
    while running.0.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn json_logs_follow_a_task_by_its_span_fields() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let running = serve(
        dir.path(),
        port,
        &[
            ("DARKROOM_LOG_FORMAT", "json"),
            ("DARKROOM_LOG", "info,darkroom::http::access=debug"),
        ],
    );
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_for_http(&http, &format!("{base}/healthz")).await;
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(png(40, 30)).file_name("a.png"),
    );
    let up: Value = http
        .post(format!("{base}/api/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload = &up["uploaded"][0];
    let answer: Value = http
        .post(format!("{base}/api/generate"))
        .json(&json!({"prompt": "p", "uploads": [{"key": upload["key"], "url": upload["url"]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["taskIds"][0].as_str().expect("a task id").to_owned();
    let start = Instant::now();
    loop {
        let status: Value = http
            .get(format!("{base}/api/task-status?taskId={id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "completed" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(running);
    let log = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(!log.contains('\u{1b}'), "colour codes in a log file");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {e}: {l}"))
        })
        .collect();
    let of_task: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["task_id"] == id.as_str())
        .collect();
    let changes: Vec<&str> = of_task
        .iter()
        .filter(|l| l["fields"]["message"] == "task state changed")
        .filter_map(|l| l["fields"]["to"].as_str())
        .collect();
    let with_provider_id = of_task
        .iter()
        .filter(|l| {
            l["span"]["provider_task_id"]
                .as_str()
                .is_some_and(|p| !p.is_empty())
        })
        .count();
    let access = lines.iter().find(|l| {
        l["target"] == "darkroom::http::access" && l["fields"]["route"] == "/api/generate"
    });
    println!(
        "logs: {} JSON lines, {} in the task's span (state changes {changes:?}), {with_provider_id} naming the provider's id; access line {}",
        lines.len(),
        of_task.len(),
        access.map_or("missing".to_owned(), ToString::to_string)
    );
    for state in ["submitted", "ingesting", "succeeded"] {
        assert!(
            changes.contains(&state),
            "no change to {state} in the task's span: {changes:?}"
        );
    }
    assert!(
        with_provider_id > 0,
        "no line of the task names the provider's id"
    );
    let access = access.expect("an access line for POST /api/generate");
    assert_eq!(access["fields"]["method"], "POST");
    assert_eq!(access["fields"]["status"], 200);
    assert!(
        access["fields"]["latency_us"].as_u64().is_some(),
        "{access}"
    );
    // The task's own path never shows as a route: it is the template.
    assert!(
        !lines.iter().any(|l| {
            l["target"] == "darkroom::http::access"
                && l["fields"]["route"]
                    .as_str()
                    .is_some_and(|r| r.contains("tsk_"))
        }),
        "a raw path as a route"
    );
}

#[tokio::test]
async fn text_logs_have_no_colours_when_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let running = serve(dir.path(), port, &[("DARKROOM_LOG", "debug")]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_for_http(&http, &format!("http://127.0.0.1:{port}/readyz")).await;
    stop(running);
    let log = std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    assert!(log.lines().count() > 5, "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file:\n{log}"
    );
}
