//! docs/RELIABILITY.md R14's provider rows, against a standalone simulator over real HTTP: a
//! provider that cannot be reached for a while (its listener closed, then opened again on
//! the same port), and a provider that answers it has no record of a task it accepted.
//! Each test prints what it measured.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::harness::{TestApp, TestSim, quick_sim, spawn_app_env, spawn_sim, unthrottled_env};
use darkroom::providers::sim::KieSimConfig;
use serde_json::{Value, json};

/// Darkroom pointed at `sim`, its own limits off, probing an unreachable provider after
/// 200 ms, then 400 ms, 800 ms, at most every second: production's 5 s to 60 s, scaled down.
fn env(sim: &TestSim, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = unthrottled_env(sim, 8, extra);
    env.extend([
        ("DARKROOM_UNREACHABLE_FIRST_PROBE_MS", "200".to_owned()),
        ("DARKROOM_UNREACHABLE_MAX_PROBE_MS", "1000".to_owned()),
    ]);
    env
}

/// `/readyz`'s HTTP status and its view of KIE.
async fn kie_readiness(app: &TestApp) -> (u16, Value) {
    let (code, ready) = app.get_json("/readyz").await;
    (code, ready["providers"]["kie"].clone())
}

async fn task(app: &TestApp, id: &str) -> Value {
    let (code, task) = app.get_json(&format!("/api/tasks/{id}")).await;
    assert_eq!(code, 200, "{task}");
    task
}

/// Every task id the database holds, read through the API.
async fn ids_in_database(app: &TestApp) -> HashSet<String> {
    let (code, page) = app.get_json("/api/tasks?limit=200").await;
    assert_eq!(code, 200, "{page}");
    assert!(page["nextCursor"].is_null(), "more than one page: {page}");
    page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_provider_loses_no_queued_task_and_spends_no_attempt() {
    const TASKS: usize = 50;
    // 6 s in the suite; `R14_OUTAGE_SECS=180` runs the three minutes by hand.
    let outage_secs: u64 = std::env::var("R14_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let outage = Duration::from_secs(outage_secs);
    let mut sim = spawn_sim(quick_sim()).await;
    // Three attempts: without the circuit, a task refused three times would fail.
    let app = spawn_app_env(&env(
        &sim,
        &[
            ("DARKROOM_MAX_ATTEMPTS", "3"),
            ("DARKROOM_FIRST_POLL_MS", "500"),
        ],
    ))
    .await;
    let mut events = app.events.subscribe();

    sim.stop_listening().await;
    let down_at = chrono::Utc::now();
    let down = Instant::now();
    let acknowledged = app.generate_many(TASKS, json!({})).await;

    // While it is down: /readyz says so (and stays ready), nothing fails, nothing is created.
    let mut unreachable_samples = 0;
    let mut since = None;
    while down.elapsed() < outage {
        let (code, kie) = kie_readiness(&app).await;
        assert_eq!(code, 200, "the instance stays ready: {kie}");
        if kie["status"] == "unreachable" {
            unreachable_samples += 1;
            assert_eq!(kie["code"], "provider_unreachable", "{kie}");
            since = Some(kie["since"].as_str().unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, failed) = app.get_json("/api/tasks?state=failed").await;
    let failed_while_down = failed["tasks"].as_array().unwrap().len();
    let since = since.expect("/readyz said unreachable while the provider was down");
    let since_at = chrono::DateTime::parse_from_rfc3339(&since).unwrap();
    let since_lag_ms = (since_at.timestamp_millis() - down_at.timestamp_millis()) as f64;

    // A task whose create was refused says why it waits.
    let mut refused: HashMap<String, usize> = HashMap::new();
    while let Ok(event) = events.try_recv() {
        if event.state == "queued" && event.error_code.as_deref() == Some("provider_unreachable") {
            *refused.entry(event.task_id.to_string()).or_insert(0) += 1;
        }
    }
    let some_refused = refused.keys().next().expect("creates were refused").clone();
    let waiting = task(&app, &some_refused).await;
    let created_while_down = sim.sim.stats().created;

    sim.listen_again().await;
    let back = Instant::now();
    let counts = app
        .wait_all_final(&acknowledged, Duration::from_secs(60))
        .await;
    let recovered_in = back.elapsed();
    let (code, kie_after) = kie_readiness(&app).await;

    while let Ok(event) = events.try_recv() {
        if event.state == "queued" && event.error_code.as_deref() == Some("provider_unreachable") {
            *refused.entry(event.task_id.to_string()).or_insert(0) += 1;
        }
    }
    let in_database = ids_in_database(&app).await;
    let mut attempts = Vec::with_capacity(TASKS);
    for id in &acknowledged {
        attempts.push(task(&app, id).await["attempts"].as_u64().unwrap());
    }
    let stats = sim.sim.stats();
    let completed = counts.get("completed").copied().unwrap_or(0);
    println!(
        "provider unreachable for {:.1} s with {TASKS} tasks queued: acknowledged ids {}, ids in the database {}, \
         tasks completed {completed} ({counts:?}), failed while down {failed_while_down}, created at the provider \
         while down {created_while_down}; creates refused {} (over {} tasks, at most {} for one task), attempts \
         spent {} (at most {} for one task); /readyz said unreachable in {unreachable_samples} samples, since {since} \
         ({since_lag_ms:.0} ms after the listener closed), then {:?} {}; all done {:.1} s after the provider came back; \
         creates at the provider {}, duplicates {}",
        outage.as_secs_f64(),
        acknowledged.len(),
        in_database.len(),
        refused.values().sum::<usize>(),
        refused.len(),
        refused.values().max().unwrap(),
        attempts.iter().sum::<u64>(),
        attempts.iter().max().unwrap(),
        code,
        kie_after["status"],
        recovered_in.as_secs_f64(),
        stats.created,
        stats.duplicate_creates,
    );
    println!("a refused task while it waited: {}", waiting["error"]);

    assert_eq!(
        in_database,
        acknowledged.iter().cloned().collect::<HashSet<_>>()
    );
    assert_eq!(failed_while_down, 0);
    assert_eq!(created_while_down, 0, "nothing reached the provider");
    assert!(
        unreachable_samples > 0,
        "/readyz said unreachable while down"
    );
    assert!(
        (-1000.0..=outage.as_millis() as f64).contains(&since_lag_ms),
        "since {since} is when it went down"
    );
    assert_eq!(waiting["state"], "queued", "{waiting}");
    assert_eq!(
        waiting["error"]["code"], "provider_unreachable",
        "{waiting}"
    );
    assert!(
        waiting["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot be reached since {since}")),
        "{waiting}"
    );
    assert_eq!(completed, TASKS, "{counts:?}");
    assert!(
        refused.values().max().copied().unwrap() > 3,
        "one task was refused more often than DARKROOM_MAX_ATTEMPTS allows"
    );
    assert!(
        attempts.iter().all(|a| *a == 1),
        "one attempt each, the one that reached the provider: {attempts:?}"
    );
    assert_eq!(stats.created, TASKS as u64);
    assert_eq!(stats.duplicate_creates, 0);
    assert_eq!(code, 200);
    assert_eq!(kie_after["status"], "ok", "{kie_after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tasks_waiting_at_an_unreachable_provider_neither_fail_nor_expire() {
    const TASKS: usize = 10;
    // No callbacks: only polls can finish these tasks. The deadline is 2 s, and the first
    // poll comes after it, while the provider is away.
    let mut sim = spawn_sim(KieSimConfig {
        drop_rate: 1.0,
        ..quick_sim()
    })
    .await;
    let app = spawn_app_env(&env(
        &sim,
        &[
            ("DARKROOM_FIRST_POLL_MS", "2500"),
            ("DARKROOM_TASK_DEADLINE_SECS", "2"),
        ],
    ))
    .await;
    let ids = app.generate_many(TASKS, json!({})).await;
    // Once KIE has them all (and before the first poll), it goes away.
    let start = Instant::now();
    loop {
        let mut at_provider = 0;
        for id in &ids {
            at_provider += usize::from(!task(&app, id).await["providerTaskId"].is_null());
        }
        if at_provider == TASKS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tasks not submitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.stop_listening().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, kie_down) = kie_readiness(&app).await;
    let mut states_down: HashMap<String, usize> = HashMap::new();
    let mut past_deadline = 0;
    for id in &ids {
        let task = task(&app, id).await;
        *states_down
            .entry(task["state"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        let submitted =
            chrono::DateTime::parse_from_rfc3339(task["submittedAt"].as_str().unwrap()).unwrap();
        let age = chrono::Utc::now().signed_duration_since(submitted);
        past_deadline += usize::from(age.num_seconds() >= 2);
    }
    let queries_while_down = sim.sim.stats().queries;

    sim.listen_again().await;
    let back = Instant::now();
    let counts = app.wait_all_final(&ids, Duration::from_secs(60)).await;
    let took = back.elapsed();
    let stats = sim.sim.stats();
    println!(
        "{TASKS} tasks at the provider when it went away for 5 s (deadline 2 s): /readyz said {}, states while down \
         {states_down:?}, {past_deadline} past their deadline; after it came back: {counts:?} in {:.1} s; \
         recordInfo answered {} times ({queries_while_down} before the outage), callbacks sent {}",
        kie_down["status"],
        took.as_secs_f64(),
        stats.queries,
        stats.callbacks_sent,
    );
    assert_eq!(kie_down["status"], "unreachable", "{kie_down}");
    assert_eq!(past_deadline, TASKS);
    assert!(
        states_down
            .keys()
            .all(|s| s == "submitted" || s == "running"),
        "nothing failed or expired while the provider was down: {states_down:?}"
    );
    assert_eq!(
        counts.get("completed"),
        Some(&TASKS),
        "the results waiting at the provider were kept: {counts:?}"
    );
    assert_eq!(stats.callbacks_sent, 0, "completed through polls only");
}

/// Tasks the simulator forgets as soon as it accepts them: `recordInfo` answers "not found"
/// (as HTTP 404, or in the body of an HTTP 200) and no callback comes.
async fn forgotten_tasks_end_provider_task_missing(errors_in_body: bool) {
    const TASKS: usize = 3;
    const ANSWERS: u64 = 3;
    let sim = spawn_sim(KieSimConfig {
        forget_rate: 1.0,
        errors_in_body,
        ..quick_sim()
    })
    .await;
    let answers = ANSWERS.to_string();
    let app = spawn_app_env(&env(
        &sim,
        &[
            ("DARKROOM_FIRST_POLL_MS", "300"),
            ("DARKROOM_MISSING_TASK_ANSWERS", &answers),
            ("DARKROOM_TASK_DEADLINE_SECS", "120"),
        ],
    ))
    .await;
    let started = Instant::now();
    let ids = app.generate_many(TASKS, json!({})).await;
    let mut ended = Vec::new();
    for id in &ids {
        ended.push(app.wait_final(id, Duration::from_secs(60)).await);
    }
    let took = started.elapsed();
    let stats = sim.sim.stats();
    let how = if errors_in_body {
        "code 404 in an HTTP 200 envelope"
    } else {
        "HTTP 404"
    };
    println!(
        "recordInfo \"not found\" ({how}): {TASKS} tasks accepted and forgotten, {} \"not found\" answers \
         ({:.1} per task), all ended in {:.1} s (deadline 120 s): {} / {}",
        stats.not_found,
        stats.not_found as f64 / TASKS as f64,
        took.as_secs_f64(),
        ended[0]["errorCode"],
        ended[0]["error"],
    );
    for status in &ended {
        assert_eq!(status["status"], "failed", "{status}");
        assert_eq!(status["errorCode"], "provider_task_missing", "{status}");
        assert!(
            status["error"]
                .as_str()
                .unwrap()
                .contains(&format!("{ANSWERS} times in a row")),
            "{status}"
        );
    }
    assert_eq!(stats.forgotten, TASKS as u64);
    assert_eq!(
        stats.not_found,
        TASKS as u64 * ANSWERS,
        "each task was asked exactly the configured number of times"
    );
    assert!(
        took < Duration::from_secs(30),
        "ended by the answers, not the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn record_info_not_found_ends_the_task_provider_task_missing() {
    forgotten_tasks_end_provider_task_missing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn record_info_not_found_in_the_body_ends_the_task_provider_task_missing() {
    forgotten_tasks_end_provider_task_missing(true).await;
}

/// One field of each task, comma-separated.
fn column(tasks: &[Value], pointer: &str) -> String {
    tasks
        .iter()
        .map(|t| t.pointer(pointer).unwrap_or(&Value::Null).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_gemini_pauses_gemini_only() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gemini_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = crate::harness::spawn_app(&[
        ("GEMINI_API_KEY", "test-key"),
        ("GEMINI_BASE_URL", &gemini_url),
        ("DARKROOM_UNREACHABLE_FIRST_PROBE_MS", "200"),
        ("DARKROOM_UNREACHABLE_MAX_PROBE_MS", "1000"),
        // Without the circuit, two refusals would fail a task within about 5 s.
        ("DARKROOM_MAX_ATTEMPTS", "2"),
    ])
    .await;
    let started = Instant::now();
    let gemini_ids = app.generate_many(3, json!({"provider": "gemini"})).await;
    let kie_ids = app.generate_many(3, json!({"provider": "kie"})).await;
    let kie_counts = app.wait_all_final(&kie_ids, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(started.elapsed())).await;
    let (_, ready) = app.get_json("/readyz").await;
    // A probe (about once a second) takes one task to `submitting` for the length of a
    // refused connect and its write: read them again until no probe is in flight.
    let read_at = Instant::now();
    let waiting = loop {
        let mut waiting = Vec::new();
        for id in &gemini_ids {
            waiting.push(task(&app, id).await);
        }
        let probing = waiting.iter().any(|t| t["state"] == "submitting");
        if !probing || read_at.elapsed() > Duration::from_secs(10) {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "Gemini unreachable for {:.1} s: KIE tasks {kie_counts:?}; /readyz gemini {} (since {}), kie {}; Gemini tasks \
         {} with attempts {} and codes {}",
        started.elapsed().as_secs_f64(),
        ready["providers"]["gemini"]["status"],
        ready["providers"]["gemini"]["since"],
        ready["providers"]["kie"]["status"],
        column(&waiting, "/state"),
        column(&waiting, "/attempts"),
        column(&waiting, "/error/code"),
    );
    assert_eq!(kie_counts.get("completed"), Some(&3), "{kie_counts:?}");
    assert_eq!(
        ready["providers"]["gemini"]["status"], "unreachable",
        "{ready}"
    );
    assert_eq!(ready["providers"]["kie"]["status"], "ok", "{ready}");
    for task in &waiting {
        assert_eq!(task["state"], "queued", "{task}");
        assert_eq!(task["attempts"], 0, "{task}");
    }
    assert!(
        waiting
            .iter()
            .any(|t| t["error"]["code"] == "provider_unreachable"),
        "{waiting:?}"
    );
}
