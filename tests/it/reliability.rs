//! docs/RELIABILITY.md R1, R2, R4 and R5, and the cost-safety rules, against a simulator with
//! its faults turned on. Each test prints its figures.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::harness::{callbacks_answered, quick_sim, spawn_app_env, spawn_sim};
use darkroom::providers::sim::KieSimConfig;
use serde_json::json;
use tokio::sync::broadcast::error::TryRecvError;

/// Darkroom with its own limits off and fast polling, pointed at `sim`. The callback routes'
/// rate limit is off too: a duplicate refused with 429 never reaches the code under test.
fn unthrottled(
    sim: &crate::harness::TestSim,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = crate::harness::unthrottled_env(
        sim,
        16,
        &[
            ("DARKROOM_CALLBACK_RATE_PER_SEC", "1000000"),
            ("DARKROOM_CALLBACK_RATE_BURST", "1000000"),
        ],
    );
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

async fn r1(concurrent: bool) {
    let sim = spawn_sim(KieSimConfig {
        duplicate_rate: 1.0,
        duplicate_count: 2,
        duplicate_count_max: 10,
        concurrent_duplicates: concurrent,
        ..quick_sim()
    })
    .await;
    let app = spawn_app_env(&unthrottled(&sim, &[])).await;
    let started = Instant::now();
    let ids = app.generate_many(1000, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(240)).await;
    let took = started.elapsed();
    assert_eq!(counts.get("completed"), Some(&1000), "{counts:?}");
    // A second download would follow a duplicate: count once every delivery has been
    // answered and the server has stopped, finishing the jobs it had in flight.
    callbacks_answered(&sim.sim, ids.len() as u64, Duration::from_secs(120)).await;
    let blobs = app.blobs.clone();
    let _data = app.stop().await;

    let stored = blobs.list("generated").await.unwrap();
    let mut per_task: HashMap<&str, usize> = HashMap::new();
    for key in &stored {
        let id = key
            .trim_start_matches("generated/kie-")
            .split('-')
            .next()
            .unwrap();
        *per_task.entry(id).or_insert(0) += 1;
    }
    let duplicate_objects = per_task.values().filter(|n| **n > 1).count();
    let stats = sim.sim.stats();
    let mode = if concurrent {
        "10 at once"
    } else {
        "sequentially"
    };
    println!(
        "R1 ({mode}): 1000 tasks, {} callback deliveries ({} duplicates; {} answered 2xx, {} not), {} results downloaded, {} objects stored, {} tasks with duplicate objects, {:.1} s",
        stats.callbacks_sent,
        stats.duplicates_sent,
        stats.callbacks_delivered,
        stats.callback_failures,
        stats.files_served,
        stored.len(),
        duplicate_objects,
        took.as_secs_f64()
    );
    // Result keys are deterministic, so the object count alone cannot see a second ingest;
    // the downloads can: each result is fetched exactly once.
    assert_eq!(
        stats.files_served, 1000,
        "results downloaded more than once"
    );
    assert_eq!(stored.len(), 1000);
    assert_eq!(duplicate_objects, 0);
    assert!(
        stats.duplicates_sent >= 1000,
        "every callback was delivered at least twice"
    );
    assert_eq!(
        stats.callback_failures, 0,
        "every delivery, duplicates included, was accepted by darkroom"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_duplicate_callbacks_sequentially_store_one_result_each() {
    r1(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_duplicate_callbacks_at_once_store_one_result_each() {
    r1(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_one_completion_event_per_task() {
    let sim = spawn_sim(KieSimConfig {
        duplicate_rate: 1.0,
        duplicate_count: 5,
        duplicate_count_max: 10,
        concurrent_duplicates: true,
        ..quick_sim()
    })
    .await;
    let app = spawn_app_env(&unthrottled(&sim, &[])).await;
    let mut events = app.events.subscribe();
    let ids = app.generate_many(200, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(120)).await;
    assert_eq!(counts.get("completed"), Some(&200), "{counts:?}");
    // Every duplicate delivery has been answered; then the server stops, finishing the jobs
    // it has in flight. No event can come after this point, so the count below is final.
    let stats = callbacks_answered(&sim.sim, ids.len() as u64, Duration::from_secs(60)).await;
    app.stop().await;
    let mut completions: HashMap<String, usize> = HashMap::new();
    loop {
        match events.try_recv() {
            Ok(event) if event.state == "succeeded" => {
                *completions.entry(event.task_id.to_string()).or_insert(0) += 1;
            }
            Ok(_) => {}
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            Err(TryRecvError::Lagged(missed)) => panic!("{missed} events were not counted"),
        }
    }
    let repeated = completions.values().filter(|n| **n > 1).count();
    println!(
        "R1 events: {} tasks, {} callback deliveries ({} duplicates; {} answered 2xx, {} not), all answered before counting; {} completion events for {} tasks, {repeated} tasks completed twice",
        ids.len(),
        stats.callbacks_sent,
        stats.duplicates_sent,
        stats.callbacks_delivered,
        stats.callback_failures,
        completions.values().sum::<usize>(),
        completions.len()
    );
    assert!(
        stats.duplicates_sent >= 4 * ids.len() as u64,
        "every callback was delivered at least 5 times"
    );
    assert_eq!(
        stats.callback_failures, 0,
        "every delivery, duplicates included, was accepted by darkroom"
    );
    assert_eq!(completions.len(), ids.len());
    assert_eq!(repeated, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r2_callbacks_before_the_create_answer() {
    let sim = spawn_sim(KieSimConfig {
        early_callback_rate: 1.0,
        ..quick_sim()
    })
    .await;
    let app = spawn_app_env(&unthrottled(&sim, &[("DARKROOM_FIRST_POLL_MS", "600000")])).await;
    let ids = app.generate_many(200, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(120)).await;
    println!("R2: 200 tasks called back before createTask answered: {counts:?}");
    assert_eq!(counts.get("completed"), Some(&200), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r4_dropped_callbacks_heal_through_the_reconciler() {
    let sim = spawn_sim(KieSimConfig {
        drop_rate: 0.3,
        ..quick_sim()
    })
    .await;
    let app = spawn_app_env(&unthrottled(&sim, &[("DARKROOM_FIRST_POLL_MS", "300")])).await;
    let ids = app.generate_many(300, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(120)).await;
    let stats = sim.sim.stats();
    println!(
        "R4: 300 tasks, {} callbacks dropped, {} recordInfo queries, {counts:?}",
        stats.dropped, stats.queries
    );
    assert_eq!(counts.get("completed"), Some(&300), "{counts:?}");
    assert!(
        stats.dropped >= 30,
        "the fault was really injected: {}",
        stats.dropped
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r5_bursts_of_429_500_455_and_timeouts_within_the_limit_without_double_creates() {
    // The simulator enforces KIE's 20 per 10 s; darkroom keeps its own limit (default 20
    // per 10 s) and must never trip the simulator's.
    let sim = spawn_sim(KieSimConfig {
        latency_ms: (0, 50),
        image_long_side: 48,
        http_429_rate: 0.15,
        server_error_rate: 0.15,
        timeout_rate: 0.1,
        timeout_hang: Duration::from_secs(3),
        ..KieSimConfig::default()
    })
    .await;
    let mut env = sim.kie_env();
    env.extend([
        ("DARKROOM_KIE_TIMEOUT_SECS", "1".to_owned()),
        ("DARKROOM_FIRST_POLL_MS", "500".to_owned()),
        ("DARKROOM_MAX_ATTEMPTS", "20".to_owned()),
    ]);
    let app = spawn_app_env(&env).await;
    let started = Instant::now();
    let ids = app.generate_many(50, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(180)).await;
    let took = started.elapsed();
    let stats = sim.sim.stats();
    let mut attempts = Vec::new();
    for id in &ids {
        let (_, task) = app.get_json(&format!("/api/tasks/{id}")).await;
        attempts.push(task["attempts"].as_u64().unwrap());
    }
    println!(
        "R5: 50 tasks in {:.1} s: {counts:?}; creates accepted {}, injected refusals {}, create timeouts {}, \
         429s from the window {}, duplicate creates {}, most creates in one 10 s window {}, attempts max {}",
        took.as_secs_f64(),
        stats.created,
        stats.injected_errors,
        stats.timeouts,
        stats.rate_limited,
        stats.duplicate_creates,
        stats.max_creates_in_window,
        attempts.iter().max().unwrap()
    );
    assert_eq!(counts.values().sum::<usize>(), 50);
    assert_eq!(
        counts.get("completed"),
        Some(&50),
        "unconfirmed creates are resolved by their callbacks"
    );
    assert_eq!(stats.duplicate_creates, 0, "no task was created twice");
    assert_eq!(
        stats.rate_limited, 0,
        "darkroom never exceeded the provider's window"
    );
    assert!(stats.max_creates_in_window <= 20);
    assert!(
        stats.injected_errors > 0 && stats.timeouts > 0,
        "the faults were really injected"
    );
}

#[tokio::test]
async fn an_unconfirmed_create_is_failed_after_its_window_not_resubmitted() {
    let sim = spawn_sim(KieSimConfig {
        timeout_rate: 1.0,
        timeout_hang: Duration::from_secs(5),
        drop_rate: 1.0,
        ..quick_sim()
    })
    .await;
    // Workers off: the engine moves only when the test steps it.
    let app = spawn_app_env(&unthrottled(
        &sim,
        &[
            ("DARKROOM_WORKERS", "false"),
            ("DARKROOM_KIE_TIMEOUT_SECS", "1"),
            ("DARKROOM_UNCONFIRMED_WINDOW_SECS", "2"),
            ("DARKROOM_FIRST_POLL_MS", "200"),
        ],
    ))
    .await;
    let ids = app.generate_many(2, json!({})).await;
    // The dispatcher submits both; each create times out after 1 s. `run_pending` returns
    // as soon as nothing is due (the next look is 200 ms later), long before the 2 s window
    // ends, and nothing moves between steps: the tasks are waiting and say what for.
    app.engine.run_pending().await.unwrap();
    for id in &ids {
        let (_, task) = app.get_json(&format!("/api/tasks/{id}")).await;
        assert_eq!(task["state"], "submitted", "{task}");
        assert_eq!(task["unconfirmed"], true, "{task}");
        assert_eq!(task["error"]["code"], "submit_ambiguous", "{task}");
    }
    // Real time is the point now: step until the window has passed and both are settled.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut waited = Vec::new();
    for id in &ids {
        let status = loop {
            app.engine.run_pending().await.unwrap();
            let status = app.status(id).await;
            if matches!(status["status"].as_str(), Some("completed" | "failed")) {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "not settled after 30 s: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status["status"], "failed");
        assert_eq!(status["errorCode"], "submit_unconfirmed", "{status}");
        // Not before the window: failed no sooner than 2 s after the create timed out.
        let row = app
            .repo
            .get(&darkroom::domain::TaskId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        let waited_ms = row.completed_at.unwrap_or(row.updated_at) - row.submitted_at.unwrap();
        assert!(waited_ms >= 2000, "failed after {waited_ms} ms: {row:?}");
        waited.push(waited_ms);
    }
    let stats = sim.sim.stats();
    println!(
        "unconfirmed: {} tasks failed submit_unconfirmed {waited:?} ms after their creates timed out; {} creates at the simulator, {} duplicates",
        ids.len(),
        stats.created,
        stats.duplicate_creates
    );
    assert_eq!(stats.created, 2);
    assert_eq!(stats.duplicate_creates, 0);
}

#[tokio::test]
async fn an_unconfirmed_create_is_resubmitted_when_the_operator_opted_in() {
    // Every create hangs past darkroom's timeout and no callback ever comes.
    let sim = spawn_sim(KieSimConfig {
        timeout_rate: 1.0,
        timeout_hang: Duration::from_secs(5),
        drop_rate: 1.0,
        ..quick_sim()
    })
    .await;
    let app = spawn_app_env(&unthrottled(
        &sim,
        &[
            ("DARKROOM_KIE_TIMEOUT_SECS", "1"),
            ("DARKROOM_UNCONFIRMED_WINDOW_SECS", "1"),
            ("DARKROOM_FIRST_POLL_MS", "200"),
            ("DARKROOM_RESUBMIT_UNCONFIRMED", "true"),
            ("DARKROOM_MAX_ATTEMPTS", "2"),
        ],
    ))
    .await;
    let ids = app.generate_many(1, json!({})).await;
    let status = app.wait_final(&ids[0], Duration::from_secs(40)).await;
    let stats = sim.sim.stats();
    println!(
        "resubmit opted in: {} creates for 1 task ({} counted as double creates), then: {}",
        stats.created, stats.duplicate_creates, status["error"]
    );
    assert_eq!(
        stats.created, 2,
        "submitted again once, then the attempts ran out"
    );
    assert_eq!(
        stats.duplicate_creates, 1,
        "the double create the option accepts"
    );
    assert_eq!(status["status"], "failed");
    assert_eq!(status["errorCode"], "submit_unconfirmed");
}

#[tokio::test]
async fn no_credits_pause_the_provider_and_show_in_readyz() {
    let sim = spawn_sim(KieSimConfig {
        credits: 8, // two tasks' worth
        ..quick_sim()
    })
    .await;
    let app = spawn_app_env(&unthrottled(
        &sim,
        &[("DARKROOM_DISPATCH_CONCURRENCY", "1")],
    ))
    .await;
    let ids = app.generate_many(3, json!({})).await;
    // Two complete; the third meets the 402 and waits in the queue.
    let start = Instant::now();
    loop {
        let (_, ready) = app.get_json("/readyz").await;
        if ready["provider"]["status"] == "paused" {
            assert_eq!(ready["provider"]["code"], "402", "{ready}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pause shows in /readyz as soon as the 402 is answered; the task that met it is
    // handed back to the queue a moment later (its own write): wait for that, bounded.
    let waiting = loop {
        let mut waiting = 0;
        let mut unsettled = 0;
        for id in &ids {
            let (_, task) = app.get_json(&format!("/api/tasks/{id}")).await;
            match task["state"].as_str() {
                Some("queued") => {
                    waiting += 1;
                    assert_eq!(task["error"]["code"], "provider_paused", "{task}");
                    assert!(
                        task["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("insufficient credits"),
                        "{task}"
                    );
                }
                Some("submitting") => unsettled += 1,
                _ => {}
            }
        }
        if unsettled == 0 {
            break waiting;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{unsettled} task(s) still submitting 30 s after the 402"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stats = sim.sim.stats();
    println!(
        "402: {} tasks created, {waiting} waiting in the queue while submission is paused",
        stats.created
    );
    assert_eq!(waiting, 1);
    assert_eq!(stats.created, 2);
    // /readyz and /api/info name what is degraded, in words and fields (issue 12).
    let (code, ready) = app.get_json("/readyz").await;
    assert_eq!(
        code, 200,
        "a paused provider does not make the instance unready: {ready}"
    );
    let (_, info) = app.get_json("/api/info").await;
    for (what, body) in [("/readyz", &ready), ("/api/info", &info)] {
        let degraded = body["degraded"].as_array().expect("degraded");
        assert_eq!(degraded.len(), 1, "{what}: {body}");
        let kie = &degraded[0];
        assert_eq!(kie["component"], "provider:kie", "{what}: {kie}");
        assert_eq!(kie["status"], "paused", "{what}: {kie}");
        assert_eq!(kie["code"], "402", "{what}: {kie}");
        let until = kie["until"].as_str().expect("until");
        let message = kie["message"].as_str().unwrap();
        assert!(
            message.contains("insufficient credits") && message.contains(until),
            "{what}: {kie}"
        );
    }
    assert_eq!(
        ready["provider"]["resumesAt"],
        ready["degraded"][0]["until"]
    );
    // And the metrics: the pause counted once, its gauge up.
    let (_, text) = {
        let response = app.http.get(app.url("/metrics")).send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    };
    for line in [
        r#"darkroom_provider_pauses_total{provider="kie",code="402"} 1"#,
        r#"darkroom_provider_paused{provider="kie"} 1"#,
        r#"darkroom_tasks{provider="kie",state="queued"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
}

/// A dispatcher that stopped after its claim but before the create went out (it died, or
/// storage refused the callback token it must store first) left a task in `submitting`
/// with no token: that create was never sent, so it is sent now, once. One that stopped
/// after arming its token may have reached the provider and is not sent again.
#[tokio::test]
async fn a_create_interrupted_before_it_was_sent_is_sent_once_not_left_waiting() {
    let sim = spawn_sim(quick_sim()).await;
    let app = spawn_app_env(&unthrottled(
        &sim,
        &[("DARKROOM_WORKERS", "false"), ("DARKROOM_LEASE_SECS", "1")],
    ))
    .await;
    let ids = app.generate_many(2, json!({})).await;
    // A dispatcher that is gone claims both; one of them got as far as storing its token.
    let now = darkroom::clock::now_ms();
    let claimed = app
        .repo
        .claim_queued("kie", now, 10, "a-dispatcher-that-died", now - 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let armed = &claimed[1];
    let update = darkroom::storage::TaskUpdate {
        callback_token_hash: Some(darkroom::engine::hash_token("a token it stored")),
        ..darkroom::storage::TaskUpdate::default()
    };
    app.repo
        .update(
            &armed.id,
            darkroom::domain::TaskState::Submitting,
            Some("a-dispatcher-that-died"),
            &update,
            now,
        )
        .await
        .unwrap()
        .expect("the armed task");

    let never_sent_id = claimed[0].id.as_str().to_owned();
    assert!(ids.contains(&never_sent_id));
    let tasks = app
        .step_until_final(&[never_sent_id], Duration::from_secs(30))
        .await;
    let never_sent = &tasks[0];
    assert_eq!(
        never_sent.state,
        darkroom::domain::TaskState::Succeeded,
        "{never_sent:?}"
    );
    let (_, waiting) = app.get_json(&format!("/api/tasks/{}", armed.id)).await;
    let stats = sim.sim.stats();
    println!(
        "interrupted creates: the one never sent was sent and {}; the armed one is {} ({}); {} creates at the simulator, {} duplicates",
        never_sent.state.as_str(),
        waiting["state"],
        waiting["error"]["code"],
        stats.created,
        stats.duplicate_creates
    );
    assert_eq!(waiting["state"], "submitted", "{waiting}");
    assert_eq!(waiting["error"]["code"], "submit_interrupted", "{waiting}");
    assert_eq!(
        stats.created, 1,
        "only the create that was never sent is sent"
    );
    assert_eq!(stats.duplicate_creates, 0);
}
