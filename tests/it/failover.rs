//! Provider failover by operator policy (issue 13): with `DARKROOM_FAILOVER=kie:gemini`, the
//! queued tasks of a KIE out of credits (402), or failing create after create, move to
//! Gemini, and a task whose create attempts ran out on retryable errors moves instead of
//! failing; never both (no task is created at KIE and at Gemini), never a task whose request
//! said `"fallback": false`, and nothing at all without the policy. Against a KIE simulator
//! of the test's own and the built-in Gemini simulator.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use darkroom::providers::sim::KieSimConfig;
use serde_json::{Value, json};

use crate::harness::{TestApp, TestSim, quick_sim, spawn_app_env, spawn_sim, unthrottled_env};

const FAILOVER: (&str, &str) = ("DARKROOM_FAILOVER", "kie:gemini");

/// A KIE simulator of the test's own, and darkroom pointed at it (with `concurrency`
/// dispatch slots and `extra` settings) and at its built-in Gemini simulator.
async fn kie_and_darkroom(
    kie: KieSimConfig,
    concurrency: usize,
    extra: &[(&'static str, &str)],
) -> (TestSim, TestApp) {
    let sim = spawn_sim(kie).await;
    let app = spawn_app_env(&unthrottled_env(&sim, concurrency, extra)).await;
    (sim, app)
}

/// Darkroom's ids of the tasks the KIE simulator created (each create's callback URL names
/// darkroom's task).
fn created_at_kie(sim: &TestSim) -> HashSet<String> {
    sim.sim
        .task_ids()
        .iter()
        .filter_map(|kie_id| sim.sim.callback_url(kie_id))
        .filter_map(|url| {
            let path = url.split('?').next()?;
            Some(path.rsplit('/').next()?.to_owned())
        })
        .collect()
}

/// Checks a task that moved from KIE to Gemini for `reason` and completed there, in its
/// view and its status answer.
async fn assert_moved(app: &TestApp, task: &Value, reason: &str) {
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["provider"], "gemini", "{task}");
    assert_eq!(task["model"], "gemini-2.5-flash-image", "{task}");
    let failover = &task["failover"];
    assert_eq!(failover["from"], "kie", "{task}");
    assert_eq!(failover["to"], "gemini", "{task}");
    assert_eq!(failover["reason"], reason, "{task}");
    assert_eq!(failover["providersLeft"], json!(["kie"]), "{task}");
    assert!(failover["at"].is_string(), "{task}");
    let id = task["taskId"].as_str().unwrap();
    let status = app.status(id).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["failover"], *failover, "{status}");
    let stored = status["resultUrls"][0].as_str().unwrap();
    assert!(stored.contains(&format!("gemini-{id}-0")), "{status}");
}

#[tokio::test]
async fn kie_answering_402_sends_the_queue_to_gemini_and_no_task_goes_to_both() {
    // Credits for two images: two tasks are created and billed at KIE, the third create
    // meets a 402, and the rest of the queue moves to Gemini.
    let total = 8;
    let (sim, app) = kie_and_darkroom(
        KieSimConfig {
            credits: 8,
            ..quick_sim()
        },
        1,
        &[FAILOVER],
    )
    .await;
    let ids = app.generate_many(total, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(60)).await;
    assert_eq!(counts.get("completed"), Some(&total), "{counts:?}");

    let all = app.task_views(&ids).await;
    let at_kie: HashSet<String> = all
        .iter()
        .filter(|t| t["provider"] == "kie")
        .map(|t| t["taskId"].as_str().unwrap().to_owned())
        .collect();
    let moved: Vec<&Value> = all.iter().filter(|t| t["provider"] == "gemini").collect();
    assert_eq!(at_kie.len(), 2, "{all:?}");
    assert_eq!(moved.len(), total - 2, "{all:?}");
    for task in &all {
        if task["provider"] == "kie" {
            assert!(task.get("failover").is_none(), "{task}");
        }
    }
    for task in &moved {
        assert_moved(&app, task, "credits").await;
    }
    // Never both: KIE created exactly the tasks that ran there, Gemini was asked once for
    // each moved task and for nothing else.
    let stats = sim.sim.stats();
    assert_eq!(stats.created, 2, "{stats:?}");
    assert!(stats.no_credits >= 1, "{stats:?}");
    assert_eq!(created_at_kie(&sim), at_kie);
    let gemini = app.gemini_sim.as_ref().unwrap().stats();
    assert_eq!(gemini.requests, (total - 2) as u64, "{gemini:?}");
    let text = app.metrics_text().await;
    let line = format!(
        r#"darkroom_provider_failovers_total{{from="kie",to="gemini",reason="credits"}} {}"#,
        total - 2
    );
    assert!(text.contains(&line), "{line} in\n{text}");
    println!(
        "402 failover: {} of {total} tasks moved to Gemini, {} created at KIE, {} refused with 402, 0 at both",
        moved.len(),
        stats.created,
        stats.no_credits
    );
}

#[tokio::test]
async fn only_tasks_whose_request_allows_it_move() {
    // The operator's default is off: only `"fallback": true` moves.
    let (sim, app) = kie_and_darkroom(
        KieSimConfig {
            credits: 0,
            ..quick_sim()
        },
        2,
        &[FAILOVER, ("DARKROOM_FAILOVER_BY_DEFAULT", "false")],
    )
    .await;
    let allowed = app.generate_many(2, json!({"fallback": true})).await;
    let refused = app.generate_many(2, json!({"fallback": false})).await;
    let silent = app.generate_many(2, json!({})).await;
    let counts = app.wait_all_final(&allowed, Duration::from_secs(30)).await;
    assert_eq!(counts.get("completed"), Some(&2), "{counts:?}");
    for task in app.task_views(&allowed).await {
        assert_eq!(task["fallback"], true, "{task}");
        assert_moved(&app, &task, "credits").await;
    }
    // The others wait for KIE, paused for credits, however long.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let waiting: Vec<String> = refused.iter().chain(&silent).cloned().collect();
    for task in app.task_views(&waiting).await {
        assert_eq!(task["state"], "queued", "{task}");
        assert_eq!(task["provider"], "kie", "{task}");
        assert!(task.get("failover").is_none(), "{task}");
        assert_eq!(task["waiting"]["code"], "provider_paused", "{task}");
    }
    let views_refused = app.task_views(&refused).await;
    assert!(views_refused.iter().all(|t| t["fallback"] == false));
    let stats = sim.sim.stats();
    assert_eq!(stats.created, 0, "{stats:?}");
    assert_eq!(app.gemini_sim.as_ref().unwrap().stats().requests, 2);
}

#[tokio::test]
async fn without_the_policy_tasks_wait_for_kie() {
    let (sim, app) = kie_and_darkroom(
        KieSimConfig {
            credits: 0,
            ..quick_sim()
        },
        2,
        &[],
    )
    .await;
    let ids = app.generate_many(3, json!({"fallback": true})).await;
    let start = Instant::now();
    while sim.sim.stats().no_credits == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "no 402 yet");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Several dispatcher ticks (50 ms) later, nothing has moved.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    for task in app.task_views(&ids).await {
        assert_eq!(task["state"], "queued", "{task}");
        assert_eq!(task["provider"], "kie", "{task}");
        assert_eq!(task["waiting"]["code"], "provider_paused", "{task}");
        assert!(task.get("failover").is_none(), "{task}");
    }
    assert_eq!(app.gemini_sim.as_ref().unwrap().stats().requests, 0);
    assert_eq!(sim.sim.stats().created, 0);
}

#[tokio::test]
async fn a_task_whose_attempts_run_out_on_server_errors_moves_instead_of_failing() {
    // Every create is refused with 500 or 455 (retryable; nothing is made at KIE). Two
    // attempts, then the task moves; the failing-provider pause is off here.
    let (sim, app) = kie_and_darkroom(
        KieSimConfig {
            server_error_rate: 1.0,
            ..quick_sim()
        },
        1,
        &[
            FAILOVER,
            ("DARKROOM_MAX_ATTEMPTS", "2"),
            ("DARKROOM_FAILOVER_AFTER_FAILURES", "0"),
        ],
    )
    .await;
    let ids = app.generate_many(1, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(30)).await;
    assert_eq!(counts.get("completed"), Some(&1), "{counts:?}");
    let task = &app.task_views(&ids).await[0];
    assert_moved(&app, task, "attempts").await;
    let stats = sim.sim.stats();
    assert_eq!((stats.created, stats.injected_errors), (0, 2), "{stats:?}");
    assert_eq!(app.gemini_sim.as_ref().unwrap().stats().requests, 1);
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["providers"]["kie"]["status"], "ok", "{ready}");
}

#[tokio::test]
async fn kie_failing_create_after_create_pauses_as_failing_and_its_queue_moves() {
    let total = 6;
    let (sim, app) = kie_and_darkroom(
        KieSimConfig {
            server_error_rate: 1.0,
            ..quick_sim()
        },
        1,
        &[FAILOVER, ("DARKROOM_FAILOVER_AFTER_FAILURES", "2")],
    )
    .await;
    let ids = app.generate_many(total, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(60)).await;
    assert_eq!(counts.get("completed"), Some(&total), "{counts:?}");
    for task in app.task_views(&ids).await {
        assert_moved(&app, &task, "failing").await;
    }
    let (_, ready) = app.get_json("/readyz").await;
    let kie = &ready["providers"]["kie"];
    assert_eq!(
        (&kie["status"], &kie["code"]),
        (&json!("paused"), &json!("failing")),
        "{ready}"
    );
    let stats = sim.sim.stats();
    assert_eq!((stats.created, stats.injected_errors), (0, 2), "{stats:?}");
    let text = app.metrics_text().await;
    assert!(
        text.contains(r#"darkroom_provider_pauses_total{provider="kie",code="failing"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_credit_floor_pause_moves_the_queue_too() {
    // A balance below the floor from the first reading: KIE never sees a create.
    let (sim, app) = kie_and_darkroom(
        KieSimConfig {
            credits: 20,
            ..quick_sim()
        },
        2,
        &[
            FAILOVER,
            ("DARKROOM_KIE_CREDIT_FLOOR", "100"),
            ("DARKROOM_KIE_CREDIT_CHECK_SECS", "1"),
        ],
    )
    .await;
    let start = Instant::now();
    loop {
        let (_, ready) = app.get_json("/readyz").await;
        if ready["providers"]["kie"]["code"] == "credit_floor" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ids = app.generate_many(3, json!({})).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(30)).await;
    assert_eq!(counts.get("completed"), Some(&3), "{counts:?}");
    for task in app.task_views(&ids).await {
        assert_moved(&app, &task, "credit_floor").await;
    }
    assert_eq!(sim.sim.stats().created, 0);
}

#[tokio::test]
async fn instances_sharing_postgresql_move_each_task_once() {
    // Two instances on one PostgreSQL database and one S3 bucket sweep the same queue of a
    // KIE without credits at once: each task moves once and is generated once, by one of
    // the two Gemini lanes.
    let total = 12;
    let database = crate::harness::fresh_postgres().await;
    let bucket = crate::harness::new_s3_bucket().await;
    let sim = spawn_sim(KieSimConfig {
        credits: 0,
        ..quick_sim()
    })
    .await;
    let mut env = unthrottled_env(&sim, 2, &[FAILOVER]);
    env.extend(crate::harness::s3_env(&bucket));
    env.push(("DARKROOM_DATABASE_URL", database.url.clone()));
    // Both serve the same object URLs, so either reads the other's uploads from the bucket.
    env.push(("DARKROOM_PUBLIC_URL", "http://darkroom.test".to_owned()));
    let a = spawn_app_env(&env).await;
    let b = spawn_app_env(&env).await;
    let mut ids = a.generate_many(total / 2, json!({})).await;
    ids.extend(b.generate_many(total / 2, json!({})).await);
    let counts = a.wait_all_final(&ids, Duration::from_secs(60)).await;
    assert_eq!(counts.get("completed"), Some(&total), "{counts:?}");
    for task in a.task_views(&ids).await {
        assert_moved(&a, &task, "credits").await;
    }
    let generated = a.gemini_sim.as_ref().unwrap().stats().requests
        + b.gemini_sim.as_ref().unwrap().stats().requests;
    assert_eq!(generated, total as u64, "one Gemini call per task");
    assert_eq!(sim.sim.stats().created, 0);
    let moves = |text: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with("darkroom_provider_failovers_total{"))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(
        moves(&a.metrics_text().await) + moves(&b.metrics_text().await),
        total as u64,
        "each task moved once, by one instance"
    );
}
