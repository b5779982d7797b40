//! The task API: listing with filters and cursors, detail with queue position, cancel and
//! retry.

use std::time::Duration;

use crate::harness::{callbacks_answered, spawn_app, spawn_app_env, spawn_sim};
use darkroom::providers::sim::KieSimConfig;
use serde_json::json;

#[tokio::test]
async fn list_filter_and_paginate() {
    // Workers off: tasks stay queued and in a known order.
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let a = app.generate_many(7, json!({"batchId": "alpha"})).await;
    let b = app
        .generate_many(3, json!({"batchId": "beta", "priority": 5}))
        .await;

    let (code, page) = app.get_json("/api/tasks?limit=4").await;
    assert_eq!(code, 200, "{page}");
    let first: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["taskId"].as_str().unwrap())
        .collect();
    assert_eq!(first.len(), 4);
    assert_eq!(first[0], b[2], "newest first");
    let mut seen: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    let mut cursor = page["nextCursor"].as_str().unwrap().to_owned();
    loop {
        let (_, page) = app
            .get_json(&format!("/api/tasks?limit=4&cursor={cursor}"))
            .await;
        seen.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["taskId"].as_str().unwrap().to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10, "every task once across pages");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 10, "no task twice across pages: {seen:?}");

    let (_, beta) = app.get_json("/api/tasks?batchId=beta").await;
    assert_eq!(beta["tasks"].as_array().unwrap().len(), 3);
    let (_, queued) = app.get_json("/api/tasks?state=queued,failed").await;
    assert_eq!(queued["tasks"].as_array().unwrap().len(), 10);
    let (_, none) = app.get_json("/api/tasks?state=succeeded").await;
    assert!(none["tasks"].as_array().unwrap().is_empty());

    // Detail: the priority-5 tasks are ahead of the batch queued before them.
    let (_, detail) = app.get_json(&format!("/api/tasks/{}", a[0])).await;
    assert_eq!(detail["queuePosition"], 4, "{detail}");
    assert_eq!(detail["batchId"], "alpha");
    assert_eq!(detail["attempts"], 0);
    let (_, detail) = app.get_json(&format!("/api/tasks/{}", b[0])).await;
    assert_eq!(detail["queuePosition"], 1, "{detail}");

    for (query, code) in [
        ("state=bogus", "invalid_state"),
        ("limit=0", "invalid_limit"),
        ("limit=500", "invalid_limit"),
        ("cursor=x", "invalid_cursor"),
    ] {
        let (status, body) = app.get_json(&format!("/api/tasks?{query}")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
    let (status, _) = app
        .get_json("/api/tasks/tsk_0123456789abcdef0123456789abcdef")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_canceled_queued_task_is_never_submitted() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let ids = app.generate_many(2, json!({})).await;
    let (code, canceled) = app
        .post_json(&format!("/api/tasks/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(code, 200, "{canceled}");
    assert_eq!(canceled["state"], "canceled");
    let (code, again) = app
        .post_json(&format!("/api/tasks/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(
        (code, again["code"].as_str()),
        (409, Some("task_state_conflict"))
    );
    assert_eq!(
        app.status(&ids[0]).await["status"],
        "failed",
        "canceled reads as failed on the original endpoint"
    );
    let task = app
        .repo
        .get(&darkroom::domain::TaskId::parse(&ids[0]).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.state, darkroom::domain::TaskState::Canceled);
    // Now the dispatcher runs: only the other task reaches the provider.
    app.engine.run_pending().await.unwrap();
    assert_eq!(app.sim.clone().unwrap().stats().created, 1);
    let (_, other) = app.get_json(&format!("/api/tasks/{}", ids[1])).await;
    assert_ne!(other["state"], "queued", "{other}");
    let (_, canceled) = app.get_json(&format!("/api/tasks/{}", ids[0])).await;
    assert_eq!(canceled["state"], "canceled");
    assert!(canceled["providerTaskId"].is_null());
}

#[tokio::test]
async fn a_late_result_for_a_canceled_task_is_discarded() {
    let sim = spawn_sim(KieSimConfig {
        latency_ms: (500, 500),
        rate_limit: 0,
        image_long_side: 48,
        ..KieSimConfig::default()
    })
    .await;
    // Workers off: the engine moves only when the test steps it.
    let mut env = sim.kie_env();
    env.push(("DARKROOM_WORKERS", "false".to_owned()));
    let app = spawn_app_env(&env).await;
    let ids = app.generate_many(1, json!({})).await;
    // The dispatcher submits it; the provider is generating. Then cancel.
    app.engine.run_pending().await.unwrap();
    let (_, task) = app.get_json(&format!("/api/tasks/{}", ids[0])).await;
    assert!(task["providerTaskId"].is_string(), "{task}");
    let (code, canceled) = app
        .post_json(&format!("/api/tasks/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(code, 200, "{canceled}");
    // The provider finishes and calls back, and darkroom has answered the callback; then
    // all the work that became due runs. Only now can "nothing was stored" be judged.
    let answered = callbacks_answered(&sim.sim, 1, Duration::from_secs(20)).await;
    let ran = app.engine.run_pending().await.unwrap();
    let (_, task) = app.get_json(&format!("/api/tasks/{}", ids[0])).await;
    let stored = app.blobs.list("generated").await.unwrap();
    let stats = sim.sim.stats();
    println!(
        "late result for a canceled task: {} callback(s) answered 2xx; then {ran} jobs ran, {} recordInfo queries, {} result downloads, {} objects stored; state {}",
        answered.callbacks_delivered,
        stats.queries,
        stats.files_served,
        stored.len(),
        task["state"]
    );
    assert_eq!(answered.callbacks_delivered, 1, "{answered:?}");
    assert_eq!(task["state"], "canceled");
    assert_eq!(stats.files_served, 0, "the late result was downloaded");
    assert!(stored.is_empty(), "late result stored: {stored:?}");
}

#[tokio::test]
async fn a_failed_task_is_retried_as_a_new_task() {
    let sim = spawn_sim(KieSimConfig {
        latency_ms: (0, 10),
        rate_limit: 0,
        fail_rate: 1.0,
        image_long_side: 48,
        ..KieSimConfig::default()
    })
    .await;
    let app = spawn_app_env(&sim.kie_env()).await;
    let ids = app.generate_many(1, json!({"priority": 3})).await;
    assert_eq!(
        app.wait_final(&ids[0], Duration::from_secs(20)).await["status"],
        "failed"
    );
    let (code, retried) = app
        .post_json(&format!("/api/tasks/{}/retry", ids[0]), &json!({}))
        .await;
    assert_eq!(code, 200, "{retried}");
    let new_id = retried["taskId"].as_str().unwrap();
    assert_ne!(new_id, ids[0]);
    assert_eq!(retried["retryOf"], ids[0].as_str());
    assert_eq!(retried["priority"], 3);
    assert_eq!(
        app.wait_final(new_id, Duration::from_secs(20)).await["status"],
        "failed"
    );
    // The first task stays failed: a finished task never changes state.
    let (_, first) = app.get_json(&format!("/api/tasks/{}", ids[0])).await;
    assert_eq!(first["state"], "failed");
    // Only failed or expired tasks can be retried.
    let (code, body) = app
        .post_json(&format!("/api/tasks/{new_id}/cancel"), &json!({}))
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (409, Some("task_state_conflict"))
    );
    assert_eq!(sim.sim.stats().created, 2);
}
