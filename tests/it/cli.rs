//! The `darkroom` binary: start-up errors, and the KIE client against a standalone
//! `darkroom kie-sim` over real HTTP (the production code path with `KIE_API_TOKEN` set).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Running, free_port, spawn_app};
use serde_json::json;
use sqlx::Connection;

async fn start_sim(extra: &[&str]) -> (Running, u16) {
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "kie-sim",
            "--port",
            &port.to_string(),
            "--latency-ms",
            "10-30",
            "--token",
            "sim-token",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("darkroom kie-sim starts");
    let running = Running(child);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let start = Instant::now();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/sim/stats"))
            .send()
            .await
            && r.status() == 200
        {
            return (running, port);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "kie-sim did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn invalid_configuration_stops_the_start_with_a_sentence_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("PORT", "eighty"),
        ("KIE_BASE_URL", "not a url"),
        ("DARKROOM_SIM_DROP_RATE", "3"),
    ] {
        let output = Command::new(BIN)
            .arg("serve")
            .env("DARKROOM_DATA_DIR", dir.path())
            .env(key, value)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{key}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("invalid configuration") && stderr.contains(key),
            "{key}: {stderr}"
        );
    }
}

#[test]
fn the_original_env_local_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env.local"),
        "KIE_CALLBACK_URL=not-a-url\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("KIE_CALLBACK_URL"), "{stderr}");
}

#[tokio::test]
async fn kie_mode_against_a_standalone_simulator_completes() {
    let (_sim, port) = start_sim(&[]).await;
    let base = format!("http://127.0.0.1:{port}");
    let trusted = format!("127.0.0.1:{port}");
    let app = spawn_app(&[
        ("KIE_API_TOKEN", "sim-token"),
        ("KIE_BASE_URL", base.as_str()),
        ("DARKROOM_TRUSTED_FETCH_HOSTS", trusted.as_str()),
    ])
    .await;
    assert!(
        app.sim.is_none(),
        "KIE_API_TOKEN switches the simulator off"
    );
    let (_, info) = app.get_json("/api/info").await;
    assert_eq!(info["simulator"], false);
    let ids = app.generate_from_upload(2, json!({})).await;
    for id in &ids {
        let status = app.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(status["status"], "completed", "{status}");
    }
    let stats: serde_json::Value = app
        .http
        .get(format!("{base}/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["created"], 2, "{stats}");
    assert!(stats["callbacksSent"].as_u64().unwrap() >= 2, "{stats}");
}

#[tokio::test]
async fn results_on_an_untrusted_private_host_are_never_fetched() {
    let (_sim, port) = start_sim(&[]).await;
    let base = format!("http://127.0.0.1:{port}");
    // No DARKROOM_TRUSTED_FETCH_HOSTS: the simulator's loopback result URLs are refused.
    let app = spawn_app(&[
        ("KIE_API_TOKEN", "sim-token"),
        ("KIE_BASE_URL", base.as_str()),
    ])
    .await;
    let ids = app.generate_from_upload(1, json!({})).await;
    let status = app.wait_final(&ids[0], Duration::from_secs(30)).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "result_download_failed");
    assert!(app.blobs.list("generated").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_wrong_kie_token_fails_tasks_with_the_providers_reason() {
    let (_sim, port) = start_sim(&["--errors-in-body"]).await;
    let base = format!("http://127.0.0.1:{port}");
    let app = spawn_app(&[("KIE_API_TOKEN", "wrong"), ("KIE_BASE_URL", base.as_str())]).await;
    let ids = app.generate_from_upload(1, json!({})).await;
    let status = app.wait_final(&ids[0], Duration::from_secs(30)).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "provider_401", "{status}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_exits_zero() {
    let (_sim, sim_port) = start_sim(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(BIN)
        .arg("serve")
        .current_dir(dir.path())
        .env("DARKROOM_DATA_DIR", dir.path())
        .env("DARKROOM_LISTEN", format!("127.0.0.1:{port}"))
        .env("KIE_API_TOKEN", "sim-token")
        .env("KIE_BASE_URL", format!("http://127.0.0.1:{sim_port}"))
        .env(
            "DARKROOM_TRUSTED_FETCH_HOSTS",
            format!("127.0.0.1:{sim_port}"),
        )
        .env("DARKROOM_SHUTDOWN_GRACE_SECS", "5")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(start.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({"prompt": "p", "imageUrls": ["https://example.com/a.png", "https://example.com/b.png"]});
    let answer = http
        .post(format!("{base}/api/generate"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "darkroom did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = start.elapsed();
    assert!(exit.success(), "exit status {exit}");
    // In-flight work finished: no create was cut off mid-call (no task left `submitting`)
    // and no claim is left behind for a lease to expire.
    let db = dir.path().join("darkroom.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, lease_owner FROM tasks")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "both tasks were stored");
    let states: Vec<&str> = rows.iter().map(|(s, _)| s.as_str()).collect();
    let leased = rows.iter().filter(|(_, lease)| lease.is_some()).count();
    println!(
        "SIGTERM: exited with {exit} after {} ms; tasks left {states:?}, {leased} still leased",
        took.as_millis()
    );
    assert!(
        !states.contains(&"submitting"),
        "a create was cut off: {states:?}"
    );
    assert_eq!(leased, 0, "claims left behind: {rows:?}");
}

/// `darkroom keys create` prints the key's webhook secret, `keys webhook-secret` prints the
/// same one, `--rotate` replaces it, revoking keeps it (it belongs to the name), and a
/// server on that database serves what the command printed.
#[tokio::test]
async fn keys_cli_prints_and_rotates_the_webhook_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/keys.db", dir.path().display());
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(BIN)
            .args(args)
            .env("DARKROOM_DATABASE_URL", &db)
            .env("DARKROOM_DATA_DIR", dir.path())
            .env("DARKROOM_LOG", "warn")
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        (output.status.success(), stdout, stderr)
    };
    let secret_line = |stdout: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("whsec_"))
            .unwrap_or_else(|| panic!("a whsec_ line in {stdout}"))
            .to_owned()
    };

    let (ok, created, err) = run(&["keys", "create", "dave"], &[]);
    assert!(ok, "{err}");
    let key = created
        .lines()
        .find(|l| l.starts_with("dk_"))
        .expect("the key is printed")
        .to_owned();
    let first = secret_line(&created);
    let (ok, shown, err) = run(&["keys", "webhook-secret", "dave"], &[]);
    assert!(ok, "{err}");
    assert_eq!(shown.trim(), first, "the same secret");

    let (ok, rotated, err) = run(&["keys", "webhook-secret", "dave", "--rotate"], &[]);
    assert!(ok, "{err}");
    let second = secret_line(&rotated);
    assert_ne!(second, first);
    assert!(rotated.contains("previous secret"), "{rotated}");

    // A name no key has is refused; a key from DARKROOM_API_KEYS has a secret too.
    let (ok, _, err) = run(&["keys", "webhook-secret", "nobody"], &[]);
    assert!(!ok && err.contains("no key named"), "{err}");
    let configured = [("DARKROOM_API_KEYS", "erin:dk_erin_0123456789abcdef")];
    let (ok, erin, err) = run(&["keys", "webhook-secret", "erin"], &configured);
    assert!(ok, "{err}");
    assert!(erin.trim().starts_with("whsec_") && erin.trim() != second);

    let app = spawn_app(&[
        ("DARKROOM_DATABASE_URL", &db),
        ("DARKROOM_WORKERS", "false"),
    ])
    .await;
    let response = app
        .http
        .get(app.url("/api/webhook-secret"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let served: serde_json::Value = response.json().await.unwrap();
    assert_eq!(served["secret"], second.as_str(), "{served}");
    assert!(served["previousValidUntil"].is_string(), "{served}");

    // Revoking keeps the secret: it belongs to the name, like the key's tasks.
    let (ok, _, err) = run(&["keys", "revoke", "dave"], &[]);
    assert!(ok, "{err}");
    let (ok, shown, err) = run(&["keys", "webhook-secret", "dave"], &[]);
    assert!(ok, "{err}");
    assert_eq!(shown.trim(), second);
}

/// One serving process per SQLite file: a second `darkroom serve` on the same data
/// directory stops at once with a sentence naming the first one's pid and PostgreSQL;
/// once the first is gone (even by SIGKILL), a new one starts.
#[tokio::test]
async fn a_second_process_on_one_sqlite_file_is_refused() {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = |port: u16| {
        Command::new(BIN)
            .arg("serve")
            .env("DARKROOM_DATA_DIR", dir.path())
            .env("DARKROOM_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("darkroom serve starts")
    };
    let first_port = free_port();
    let mut first = Running(serve(first_port));
    crate::harness::wait_for_http(&http, &format!("http://127.0.0.1:{first_port}/healthz")).await;

    let second = serve(free_port()).wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    println!("second process: {}; {said}", second.status);
    assert!(!second.status.success());
    let pid = first.0.id();
    assert!(said.contains(&format!("pid {pid}")), "{said}");
    assert!(said.contains("one process per SQLite file"), "{said}");
    assert!(said.contains("PostgreSQL"), "{said}");

    first.0.kill().unwrap(); // SIGKILL: the kernel drops the lock with the process
    let _ = first.0.wait();
    let third_port = free_port();
    let _third = Running(serve(third_port));
    crate::harness::wait_for_http(&http, &format!("http://127.0.0.1:{third_port}/healthz")).await;
}
