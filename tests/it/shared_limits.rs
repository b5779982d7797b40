//! Provider limits held in the database (`storage::limits`), seen by a process that
//! replaces one killed with SIGKILL: the create window its predecessor filled seconds
//! before, and the pause it took after a 402. Against a KIE simulator in this test's
//! process, which outlives every darkroom and counts what it refused.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Running, free_port, spawn_sim, wait_for_http};
use darkroom::providers::sim::KieSimConfig;
use serde_json::{Value, json};

const TOKEN: &str = "limits-token";

fn start_darkroom(data: &std::path::Path, port: u16, sim: &str, env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .current_dir(data)
        .env("DARKROOM_DATA_DIR", data)
        .env("DARKROOM_LISTEN", format!("127.0.0.1:{port}"))
        .env("KIE_API_TOKEN", TOKEN)
        .env("KIE_BASE_URL", format!("http://{sim}"))
        .env("DARKROOM_TRUSTED_FETCH_HOSTS", sim)
        .env("DARKROOM_KIE_QUERIES_PER_SECOND", "0")
        .env("DARKROOM_LEASE_SECS", "3")
        .env("DARKROOM_UNCONFIRMED_WINDOW_SECS", "4")
        .env("DARKROOM_FIRST_POLL_MS", "500")
        .env("DARKROOM_TICK_MS", "50")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    Running(command.spawn().expect("darkroom starts"))
}

/// Queues `n` tasks (one source each) whose input the simulator serves.
async fn queue(http: &reqwest::Client, base: &str, input: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let count = (n - ids.len()).min(10);
        let answer: Value = http
            .post(format!("{base}/api/generate"))
            .json(&json!({"prompt": "limits", "imageUrls": vec![input; count]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let made = crate::harness::task_ids(&answer);
        assert_eq!(made.len(), count, "{answer}");
        ids.extend(made);
    }
    ids
}

async fn ready(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn states(http: &reqwest::Client, base: &str, ids: &[String]) -> Vec<Value> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let body: Value = http
            .get(format!("{base}/api/tasks/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.push(body);
    }
    out
}

/// A process killed in the middle of a burst of creates, replaced at once: the new one
/// counts the creates its predecessor made in the window and causes no 429. With the window
/// in memory, the new process started with an empty window and sent a full one at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_restarted_after_sigkill_mid_burst_causes_no_rate_limited_create() {
    const TASKS: usize = 24;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let data = tempfile::tempdir().unwrap();
    let sim = spawn_sim(KieSimConfig {
        token: Some(TOKEN.to_owned()),
        latency_ms: (50, 200),
        rate_limit: 6,
        rate_window: Duration::from_secs(2),
        ..KieSimConfig::default()
    })
    .await;
    let sim_addr = sim.addr.to_string();
    let input = crate::harness::serve_png().await;
    let limits = [
        ("DARKROOM_KIE_CREATES_PER_WINDOW", "6"),
        ("DARKROOM_KIE_CREATE_WINDOW_SECS", "2"),
    ];
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut darkroom = start_darkroom(data.path(), port, &sim_addr, &limits);
    wait_for_http(&http, &format!("{base}/healthz")).await;
    let ids = queue(&http, &base, &input, TASKS).await;

    // The first window's creates are sent; the process dies right after.
    let started = Instant::now();
    while sim.sim.stats().created < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no creates: {:?}",
            sim.sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    darkroom.0.kill().unwrap(); // SIGKILL
    let _ = darkroom.0.wait();
    let killed_at = started.elapsed();
    let darkroom = start_darkroom(data.path(), port, &sim_addr, &limits);
    wait_for_http(&http, &format!("{base}/healthz")).await;
    let restarted_in = started.elapsed() - killed_at;

    let deadline = Instant::now() + Duration::from_secs(60);
    let answers = loop {
        let answers = states(&http, &base, &ids).await;
        let done = answers
            .iter()
            .all(|a| matches!(a["state"].as_str(), Some("succeeded" | "failed")));
        if done {
            break answers;
        }
        assert!(
            Instant::now() < deadline,
            "tasks never finished: {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(darkroom);
    let stats = sim.sim.stats();
    let succeeded = answers.iter().filter(|a| a["state"] == "succeeded").count();
    println!(
        "restart mid-burst: {TASKS} tasks, killed after {} creates at {:.2} s, restarted in {:.2} s; \
         {succeeded} succeeded; simulator: {} creates, {} rate limited, busiest {} s window {}",
        6,
        killed_at.as_secs_f64(),
        restarted_in.as_secs_f64(),
        stats.created,
        stats.rate_limited,
        2,
        stats.max_creates_in_window,
    );
    for failed in answers.iter().filter(|a| a["state"] == "failed") {
        assert!(
            failed["error"]["code"].is_string(),
            "a failure names its reason: {failed}"
        );
    }
    assert_eq!(
        stats.rate_limited, 0,
        "no create beyond the window: {stats:?}"
    );
    assert!(stats.max_creates_in_window <= 6, "{stats:?}");
    assert_eq!(stats.duplicate_creates, 0, "{stats:?}");
}

/// A 402 pauses KIE in the database: the process that replaces a killed one does not try
/// again before the pause ends, and `/readyz` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credits_pause_outlives_a_restart() {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let data = tempfile::tempdir().unwrap();
    let sim = spawn_sim(KieSimConfig {
        token: Some(TOKEN.to_owned()),
        latency_ms: (50, 100),
        // Two images' worth.
        credits: 8,
        ..KieSimConfig::default()
    })
    .await;
    let sim_addr = sim.addr.to_string();
    let input = crate::harness::serve_png().await;
    let env = [("DARKROOM_KIE_CREDITS_PAUSE_SECS", "60")];
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut darkroom = start_darkroom(data.path(), port, &sim_addr, &env);
    wait_for_http(&http, &format!("{base}/healthz")).await;
    queue(&http, &base, &input, 4).await;
    // Killed once the pause is taken (the 402 answered and settled).
    let started = Instant::now();
    while ready(&http, &base).await["providers"]["kie"]["status"] != "paused" {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no pause: {:?}",
            sim.sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    darkroom.0.kill().unwrap();
    let _ = darkroom.0.wait();
    let refused_before = sim.sim.stats().no_credits;

    let _darkroom = start_darkroom(data.path(), port, &sim_addr, &env);
    wait_for_http(&http, &format!("{base}/healthz")).await;
    // New tasks, due at once: a process that did not know of the pause would create them.
    let fresh = queue(&http, &base, &input, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = states(&http, &base, &fresh).await;
    for task in &waiting {
        assert_eq!(task["state"], "queued", "{task}");
        assert_eq!(task["waiting"]["code"], "provider_paused", "{task}");
    }
    let ready = ready(&http, &base).await;
    let stats = sim.sim.stats();
    println!(
        "402 pause across a restart: simulator refused {refused_before} create(s) before the kill, {} after; /readyz kie: {}",
        stats.no_credits - refused_before,
        ready["providers"]["kie"]
    );
    assert_eq!(
        stats.no_credits, refused_before,
        "no create was tried during the pause"
    );
    assert_eq!(ready["providers"]["kie"]["status"], "paused", "{ready}");
    assert_eq!(ready["providers"]["kie"]["code"], "402", "{ready}");
    assert!(
        ready["providers"]["kie"]["resumesInSecs"].as_u64().unwrap() > 50,
        "{ready}"
    );
}
