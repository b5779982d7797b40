//! KIE's credit balance (issue 13): darkroom reads it periodically and after a 402; below
//! the configured floor it pauses KIE submission (`credit_floor`) before KIE refuses a
//! create, `/readyz`, `/api/info` and the waiting tasks say so, and a later reading back at
//! the floor lifts the pause. Against a KIE simulator of the test's own, whose balance falls
//! as it bills images and is topped up over its `/sim/credits`.

use std::time::{Duration, Instant};

use darkroom::providers::sim::KieSimConfig;
use serde_json::{Value, json};

use crate::harness::{TestApp, quick_sim, spawn_app_env, spawn_sim, unthrottled_env};

/// What the simulator bills per image.
const CREDITS_PER_IMAGE: u64 = 4;

/// Polls `/readyz` until `done` holds for KIE's entry, failing after `timeout`.
async fn wait_kie(app: &TestApp, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let (_, ready) = app.get_json("/readyz").await;
        if done(&ready["providers"]["kie"]) {
            return ready;
        }
        assert!(
            start.elapsed() < timeout,
            "/readyz not as expected after {timeout:?}: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_of(task: &Value) -> &str {
    task["state"].as_str().unwrap_or("?")
}

#[tokio::test]
async fn a_falling_balance_pauses_kie_at_the_floor_before_any_402_and_a_top_up_resumes() {
    // 100 credits pay for 25 images; 30 tasks would run the account dry. The floor of 60
    // is crossed after 11 images (56 left), with 14 images' worth still in the account:
    // far more than one task at a time can bill in a reading interval.
    let total = 30;
    let floor: u64 = 60;
    let sim = spawn_sim(KieSimConfig {
        credits: 100,
        latency_ms: (150, 250),
        ..quick_sim()
    })
    .await;
    let floor_text = floor.to_string();
    let app = spawn_app_env(&unthrottled_env(
        &sim,
        2,
        &[
            ("DARKROOM_KIE_CREDIT_FLOOR", floor_text.as_str()),
            ("DARKROOM_KIE_CREDIT_CHECK_SECS", "1"),
            // One task at KIE at a time (through the limited claim, in the database).
            ("DARKROOM_KIE_MAX_IN_FLIGHT", "1"),
        ],
    ))
    .await;
    let started = Instant::now();

    // The first reading comes at start: the full balance, the floor beside it.
    let ready = wait_kie(&app, Duration::from_secs(10), |kie| kie["credits"] == 100).await;
    let kie = &ready["providers"]["kie"];
    assert_eq!(kie["status"], "ok", "{ready}");
    assert_eq!(kie["creditFloor"], floor, "{ready}");
    assert!(kie["creditsReadAt"].is_string(), "{ready}");

    let ids = app.generate_many(total, json!({})).await;

    // The balance falls as images are billed; a reading below the floor pauses KIE.
    let ready = wait_kie(&app, Duration::from_secs(60), |kie| {
        kie["status"] == "paused"
    })
    .await;
    let kie = &ready["providers"]["kie"];
    assert_eq!(kie["code"], "credit_floor", "{ready}");
    let balance = kie["credits"].as_i64().expect("the balance read");
    assert!(balance < floor as i64, "{ready}");
    let reason = kie["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("credit balance is {balance}"))
            && reason.contains(&format!("below the floor of {floor}")),
        "{reason}"
    );
    let paused_after = started.elapsed();

    // What was at KIE when the pause began finishes; nothing more goes out.
    let settled = loop {
        let all = app.task_views(&ids).await;
        let moving = all
            .iter()
            .filter(|t| !matches!(state_of(t), "queued" | "succeeded" | "failed"))
            .count();
        if moving == 0 {
            break all;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{moving} task(s) still at KIE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let done = settled
        .iter()
        .filter(|t| state_of(t) == "succeeded")
        .count();
    let queued: Vec<&Value> = settled.iter().filter(|t| state_of(t) == "queued").collect();
    assert_eq!(done + queued.len(), total, "nothing failed: {settled:?}");
    assert!(!queued.is_empty(), "the floor held tasks back");
    for task in &queued {
        assert_eq!(task["waiting"]["code"], "provider_paused", "{task}");
        let message = task["waiting"]["message"].as_str().unwrap();
        assert!(
            message.contains("floor") && message.contains("KIE"),
            "{message}"
        );
    }
    // Two more readings (still below the floor) renew the pause: nothing is created.
    let created = sim.sim.stats().created;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let stats = sim.sim.stats();
    assert_eq!(stats.created, created, "created while paused");
    assert_eq!(stats.no_credits, 0, "KIE refused a create: {stats:?}");
    let left = sim.sim.credits();
    assert!(
        left >= CREDITS_PER_IMAGE && left < floor,
        "{left} credits left"
    );
    let (code, ready) = app.get_json("/readyz").await;
    assert_eq!(
        code, 200,
        "a paused provider leaves the instance ready: {ready}"
    );
    assert_eq!(ready["providers"]["kie"]["status"], "paused", "{ready}");
    let (_, info) = app.get_json("/api/info").await;
    for (what, body) in [("/readyz", &ready), ("/api/info", &info)] {
        let degraded = body["degraded"].as_array().expect("degraded");
        let kie = degraded
            .iter()
            .find(|d| d["component"] == "provider:kie")
            .unwrap_or_else(|| panic!("{what}: {body}"));
        assert_eq!(kie["code"], "credit_floor", "{what}: {kie}");
        let message = kie["message"].as_str().unwrap();
        assert!(
            message.contains("below the floor") && message.contains("tasks wait in the queue"),
            "{what}: {message}"
        );
    }
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"darkroom_provider_pauses_total{provider="kie",code="credit_floor"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            r#"darkroom_provider_credits{{provider="kie"}} {left}"#
        )),
        "{text}"
    );

    // Topped up over the simulator's HTTP knob: the next reading lifts the pause, and the
    // tasks held back run.
    let topped = app
        .http
        .post(format!("http://{}/sim/credits", sim.addr))
        .json(&json!({"credits": 1000}))
        .send()
        .await
        .unwrap();
    assert_eq!(topped.status(), 200);
    let ready = wait_kie(&app, Duration::from_secs(10), |kie| kie["status"] == "ok").await;
    assert!(
        ready["providers"]["kie"]["credits"].as_i64().unwrap() >= 1000 - 8,
        "{ready}"
    );
    let counts = app.wait_all_final(&ids, Duration::from_secs(90)).await;
    assert_eq!(counts.get("completed"), Some(&total), "{counts:?}");
    let stats = sim.sim.stats();
    println!(
        "credit floor {floor}: paused after {:.1} s with {balance} credits read, {done} of {total} tasks done and {} held; {} created in all, {} refused with 402",
        paused_after.as_secs_f64(),
        queued.len(),
        stats.created,
        stats.no_credits
    );
    assert_eq!(stats.created, total as u64);
    assert_eq!(stats.no_credits, 0);
    assert_eq!(stats.duplicate_creates, 0);
}

/// Without a floor the balance is still read and shown, and a 402 has it read at once:
/// `/readyz` shows the empty account beside the 402 pause, long before the next periodic
/// reading.
#[tokio::test]
async fn a_402_reads_the_balance_at_once() {
    let sim = spawn_sim(KieSimConfig {
        credits: 8, // two images
        ..quick_sim()
    })
    .await;
    let app = spawn_app_env(&unthrottled_env(
        &sim,
        1,
        &[("DARKROOM_KIE_CREDIT_CHECK_SECS", "3600")],
    ))
    .await;
    let ready = wait_kie(&app, Duration::from_secs(10), |kie| kie["credits"] == 8).await;
    assert!(
        ready["providers"]["kie"].get("creditFloor").is_none(),
        "no floor configured: {ready}"
    );
    let ids = app.generate_many(3, json!({})).await;
    let ready = wait_kie(&app, Duration::from_secs(30), |kie| {
        kie["status"] == "paused" && kie["credits"] == 0
    })
    .await;
    assert_eq!(ready["providers"]["kie"]["code"], "402", "{ready}");
    assert_eq!(sim.sim.stats().no_credits, 1);
    // Two tasks are billed and complete; the third met the 402 and waits in the queue.
    let start = Instant::now();
    loop {
        let all = app.task_views(&ids).await;
        let count = |state: &str| all.iter().filter(|t| state_of(t) == state).count();
        if count("succeeded") == 2 && count("queued") == 1 {
            let waiting = all.iter().find(|t| state_of(t) == "queued").unwrap();
            assert_eq!(waiting["waiting"]["code"], "provider_paused", "{waiting}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.sim.stats().created, 2);
}
