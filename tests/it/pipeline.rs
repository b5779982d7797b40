//! The original service's path end to end over real HTTP against the simulator.

use std::time::Duration;

use crate::harness::{callbacks_answered, fresh_postgres, input_host, png, spawn_app, task_ids};
use darkroom::domain::TaskState;
use serde_json::json;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

const FINAL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn upload_generate_callback_completed_with_bytes_and_record_in_the_bucket() {
    let app = spawn_app(&[]).await;
    let ids = app
        .generate_from_upload(2, json!({"aspectRatio": "9:16", "outputFormat": "jpeg"}))
        .await;
    assert_eq!(ids.len(), 2);
    for id in &ids {
        assert!(id.starts_with("tsk_"), "{id}");
        let status = app.wait_final(id, FINAL).await;
        assert_eq!(status["status"], "completed", "{status}");
        assert_eq!(status["state"], "succeeded");
        assert_eq!(status["prompt"], "a person wearing a red dress");
        assert!(status["consumeCredits"].is_number(), "{status}");
        let urls = status["resultUrls"].as_array().unwrap();
        assert_eq!(urls.len(), 1);

        // The result opens over HTTP as the JPEG the simulator made, typed as such.
        let response = app
            .http
            .get(urls[0].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "image/jpeg");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let bytes = response.bytes().await.unwrap();
        let decoded = image::load_from_memory(&bytes).unwrap();
        assert!(decoded.height() > decoded.width(), "9:16 is portrait");

        // The bucket holds the result under its deterministic key and the task record.
        let stored = app.blobs.list("generated").await.unwrap();
        assert!(
            stored.contains(&format!("generated/kie-{id}-0.jpg")),
            "{stored:?}"
        );
        let record = app
            .blobs
            .get_bytes(&format!("kie-tasks/{id}.json"))
            .await
            .unwrap();
        let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
        assert_eq!(record["state"], "succeeded");
        assert_eq!(record["taskId"], id.as_str());
        assert!(
            !String::from_utf8_lossy(
                &app.blobs
                    .get_bytes(&format!("kie-tasks/{id}.json"))
                    .await
                    .unwrap()
            )
            .contains("token")
        );

        // The provider's id works as well as ours.
        let by_provider = app.status(status["providerTaskId"].as_str().unwrap()).await;
        assert_eq!(by_provider["taskId"], id.as_str());
    }
    assert_eq!(app.blobs.list("uploads").await.unwrap().len(), 2);
}

#[tokio::test]
async fn image_urls_are_accepted_as_sources() {
    let app = spawn_app(&[]).await;
    let (_, up) = app.upload(&[("a.png", png(20, 20))]).await;
    let url = up["uploaded"][0]["url"].as_str().unwrap().to_owned();
    let (code, answer) = app
        .post_json("/api/generate", &json!({"prompt": "p", "imageUrls": [url]}))
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["tasks"][0]["sourceKey"], url.as_str());
    assert_eq!(answer["message"], "Created 1 KIE task(s)");
    let id = answer["taskIds"][0].as_str().unwrap();
    assert_eq!(app.wait_final(id, FINAL).await["status"], "completed");
}

#[tokio::test]
async fn the_original_debugging_examples_get_clean_404s() {
    let app = spawn_app(&[]).await;
    let body = json!({"code": 200, "data": {"taskId": "test123", "state": "success",
        "resultJson": "{\"resultUrls\":[\"https://example.com/test.jpg\"]}"}});
    let (code, answer) = app.post_json("/api/callback", &body).await;
    assert_eq!(code, 404, "{answer}");
    assert_eq!(answer["success"], false);
    assert_eq!(answer["code"], "task_not_found");
    let (code, answer) = app.get_json("/api/task-status?taskId=test123").await;
    assert_eq!(code, 404, "{answer}");
    assert_eq!(answer["code"], "task_not_found");
}

#[tokio::test]
async fn a_callback_delivered_five_times_stores_one_result_set() {
    // Workers off: the engine moves only when the test steps it.
    let app = spawn_app(&[
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_SIM_DUPLICATE_RATE", "1"),
        ("DARKROOM_SIM_DUPLICATE_COUNT", "5"),
    ])
    .await;
    let ids = app.generate_from_upload(3, json!({})).await;
    for task in app.step_until_final(&ids, FINAL).await {
        assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    }
    // Every delivery of the simulator's own has been answered and what it made due has run.
    let sim = app.sim.clone().unwrap();
    callbacks_answered(&sim, ids.len() as u64, FINAL).await;
    app.engine.run_pending().await.unwrap();
    // Replay each callback five more times at once after completion.
    let (served_before, queries_before) = (sim.stats().files_served, sim.stats().queries);
    let mut events = app.events.subscribe();
    for id in &ids {
        let pid = app.status(id).await["providerTaskId"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = sim
            .callback_url(&pid)
            .expect("the simulator knows the callback URL");
        let body = json!({"code": 200, "msg": "Playground task completed successfully.",
            "data": {"taskId": pid, "state": "success", "resultJson": "{\"resultUrls\":[\"https://example.com/x.png\"]}"}});
        let replays = (0..5).map(|_| app.http.post(&url).json(&body).send());
        for response in futures::future::join_all(replays).await {
            assert_eq!(response.unwrap().status(), 200);
        }
    }
    // Result keys are deterministic, so counting objects cannot see a second ingest;
    // downloads of results and state changes can. Every replay has been answered; now all
    // the work they made due runs, and only then is it counted.
    let ran = app.engine.run_pending().await.unwrap();
    let downloads = sim.stats().files_served - served_before;
    let mut changes = 0;
    while events.try_recv().is_ok() {
        changes += 1;
    }
    println!(
        "replayed callbacks after completion: {ran} jobs ran, {} recordInfo queries, {downloads} result downloads, {changes} state changes",
        sim.stats().queries - queries_before
    );
    assert_eq!(
        downloads, 0,
        "a replayed callback downloaded a result again"
    );
    assert_eq!(changes, 0, "a replayed callback changed a finished task");
    let stored = app.blobs.list("generated").await.unwrap();
    assert_eq!(stored.len(), ids.len(), "one result per task: {stored:?}");
    for id in &ids {
        let status = app.status(id).await;
        assert_eq!(status["resultUrls"].as_array().unwrap().len(), 1);
        assert_eq!(status["status"], "completed");
    }
    assert!(sim.stats().duplicates_sent >= 4 * ids.len() as u64);
}

/// A reconcile job that finds the results ready stores them itself, under its lease, while
/// an ingest slot is free, and leaves the task to the ingest lane when none is. One slot
/// and three tasks reconciled at once take both ways; each result is still downloaded and
/// stored exactly once and every task succeeds.
#[tokio::test]
async fn results_are_stored_once_by_the_reconcile_job_or_the_ingest_lane() {
    let app = spawn_app(&[
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_INGEST_CONCURRENCY", "1"),
    ])
    .await;
    let ids = app.generate_from_upload(3, json!({})).await;
    for task in app.step_until_final(&ids, FINAL).await {
        assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
        assert_eq!(task.result_keys.len(), 1, "{task:?}");
        assert!(
            task.lease_owner.is_none(),
            "a finished task keeps no lease: {task:?}"
        );
    }
    let sim = app.sim.clone().unwrap();
    assert_eq!(
        sim.stats().files_served,
        ids.len() as u64,
        "each result downloaded once"
    );
    let stored = app.blobs.list("generated").await.unwrap();
    assert_eq!(stored.len(), ids.len(), "one result per task: {stored:?}");
}

#[tokio::test]
async fn a_callback_before_the_create_answer_still_completes() {
    let app = spawn_app(&[("DARKROOM_SIM_EARLY_CALLBACK_RATE", "1")]).await;
    let ids = app.generate_from_upload(3, json!({})).await;
    for id in &ids {
        let status = app.wait_final(id, FINAL).await;
        assert_eq!(status["status"], "completed", "{status}");
    }
}

#[tokio::test]
async fn a_failure_callback_fails_the_task_with_the_providers_reason() {
    let app = spawn_app(&[("DARKROOM_SIM_FAIL_RATE", "1")]).await;
    let ids = app.generate_from_upload(1, json!({})).await;
    let status = app.wait_final(&ids[0], FINAL).await;
    assert_eq!(status["status"], "failed", "{status}");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("500") && error.contains("Internal server error"),
        "{error}"
    );
    assert_eq!(status["errorCode"], "provider_failed");
    assert!(app.blobs.list("generated").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_dropped_callback_is_healed_by_polling_record_info() {
    let app = spawn_app(&[
        ("DARKROOM_SIM_DROP_RATE", "1"),
        ("DARKROOM_FIRST_POLL_MS", "200"),
    ])
    .await;
    let ids = app.generate_from_upload(2, json!({})).await;
    for id in &ids {
        assert_eq!(app.wait_final(id, FINAL).await["status"], "completed");
    }
    let stats = app.sim.clone().unwrap().stats();
    assert_eq!(stats.callbacks_sent, 0);
    assert!(stats.dropped >= 2);
}

#[tokio::test]
async fn forged_callbacks_change_nothing() {
    // Workers off: the engine moves only when the test steps it. The simulator's own
    // callback is dropped, so only the ones sent here arrive.
    let app = spawn_app(&[
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_SIM_DROP_RATE", "1"),
        ("DARKROOM_FIRST_POLL_MS", "600000"),
    ])
    .await;
    let sim = app.sim.clone().unwrap();
    let ids = app.generate_from_upload(1, json!({})).await;
    let id = &ids[0];
    app.engine.run_pending().await.unwrap();
    let before = app.status(id).await;
    let pid = before["providerTaskId"]
        .as_str()
        .expect("submitted")
        .to_owned();
    // The provider has finished (its callback dropped): a callback taken for real would
    // now lead to a result.
    let start = std::time::Instant::now();
    while sim.stats().dropped == 0 {
        assert!(start.elapsed() < FINAL, "the simulator never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = json!({"code": 200, "data": {"taskId": pid, "state": "success",
        "resultJson": "{\"resultUrls\":[\"https://example.com/x.png\"]}"}});
    let mut forged = 0;
    for query in [
        "",
        "?token=",
        "?token=wrong",
        "?token=0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let (code, answer) = app
            .post_json(&format!("/api/callback/{id}{query}"), &body)
            .await;
        assert_eq!(code, 401, "{query}: {answer}");
        assert_eq!(answer["code"], "invalid_callback_token");
        forged += 1;
    }
    let (code, _) = app
        .post_json(
            "/api/callback/tsk_0000000000000000000000000000000a?token=x",
            &body,
        )
        .await;
    assert_eq!(code, 404);
    forged += 1;
    // Every forged callback has been answered; run whatever they made due, then judge.
    let ran = app.engine.run_pending().await.unwrap();
    let after = app.status(id).await;
    let queries = sim.stats().queries;
    let stored = app.blobs.list("generated").await.unwrap();
    println!(
        "forged callbacks: {forged} refused; then {ran} jobs ran, {queries} recordInfo queries, {} objects stored, state {} -> {}",
        stored.len(),
        before["state"],
        after["state"]
    );
    assert_eq!(after["state"], before["state"]);
    assert_eq!(
        queries, 0,
        "a forged callback made darkroom ask the provider"
    );
    assert!(stored.is_empty(), "{stored:?}");
    // The control: the genuine callback, with the task's token, completes it.
    let genuine = sim.callback_url(&pid).expect("the callback URL");
    let response = app.http.post(&genuine).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let tasks = app.step_until_final(&ids, FINAL).await;
    assert_eq!(tasks[0].state, TaskState::Succeeded, "{:?}", tasks[0]);
}

/// The same path with `DARKROOM_DATABASE_URL` naming PostgreSQL: upload, generate, the
/// simulator's callback, completed with its result in the bucket; a restart on the same
/// database keeps the task.
#[tokio::test]
async fn the_original_path_runs_on_postgres() {
    let db = fresh_postgres().await;
    let app = spawn_app(&[("DARKROOM_DATABASE_URL", db.url.as_str())]).await;
    assert!(app.sqlite.is_none() && app.postgres.is_some());
    let ids = app
        .generate_from_upload(2, json!({"aspectRatio": "1:1"}))
        .await;
    assert_eq!(ids.len(), 2);
    for id in &ids {
        let status = app.wait_final(id, FINAL).await;
        assert_eq!(status["status"], "completed", "{status}");
        assert_eq!(status["state"], "succeeded");
        let stored = app.blobs.list("generated").await.unwrap();
        assert!(
            stored.contains(&format!("generated/kie-{id}-0.png")),
            "{stored:?}"
        );
        let by_provider = app.status(status["providerTaskId"].as_str().unwrap()).await;
        assert_eq!(by_provider["taskId"], id.as_str());
    }
    let (code, ready) = app.get_json("/readyz").await;
    assert_eq!(code, 200, "{ready}");
    let app = app
        .restart(&[("DARKROOM_DATABASE_URL", db.url.as_str())])
        .await;
    let status = app.status(&ids[0]).await;
    assert_eq!(status["status"], "completed", "after a restart: {status}");
    app.stop().await;
}

/// KIE fetches inputs itself, but a client's URL that certainly cannot work (no such host,
/// a 404, not an image) fails the task before KIE is asked (and paid), with the codes
/// Gemini's inputs get; a good one goes through.
#[tokio::test]
async fn kie_inputs_that_cannot_work_fail_before_kie_is_asked() {
    let stop = CancellationToken::new();
    let host = input_host(stop.clone()).await;
    let app = spawn_app(&[
        ("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str()),
        ("DARKROOM_CHECK_CLIENT_INPUTS", "true"),
    ])
    .await;
    let cases = [
        (
            "https://example.invalid/i.png".to_owned(),
            "input_unreachable",
        ),
        (format!("http://{host}/missing.png"), "input_not_found"),
        (format!("http://{host}/page.png"), "input_not_image"),
    ];
    for (url, code) in cases {
        let started = Instant::now();
        let (status, answer) = app
            .post_json("/api/generate", &json!({"prompt": "p", "imageUrls": [url]}))
            .await;
        assert_eq!(status, 200, "{answer}");
        let id = &task_ids(&answer)[0];
        let body = app.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(body["status"], "failed", "{url}: {body}");
        assert_eq!(body["errorCode"], code, "{url}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        app.sim.as_ref().unwrap().stats().created,
        0,
        "KIE was never asked"
    );
    let (_, answer) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "p", "imageUrls": [format!("http://{host}/input.png")]}),
        )
        .await;
    let body = app.wait_final(&task_ids(&answer)[0], FINAL).await;
    assert_eq!(body["status"], "completed", "{body}");
    stop.cancel();
}

/// A queued task held back by its provider's limits says so, and until when: here KIE's
/// create window (one create a minute) is full.
#[tokio::test]
async fn a_task_held_by_the_create_window_says_so() {
    let app = spawn_app(&[
        ("DARKROOM_KIE_CREATES_PER_WINDOW", "1"),
        ("DARKROOM_KIE_CREATE_WINDOW_SECS", "60"),
    ])
    .await;
    let ids = app.generate_from_upload(2, json!({})).await;
    let started = Instant::now();
    let (first, second) = loop {
        let (_, a) = app.get_json(&format!("/api/tasks/{}", ids[0])).await;
        let (_, b) = app.get_json(&format!("/api/tasks/{}", ids[1])).await;
        if a["state"] != "queued" || b["state"] != "queued" {
            break if a["state"] == "queued" {
                (b, a)
            } else {
                (a, b)
            };
        }
        assert!(started.elapsed() < FINAL, "nothing submitted: {a} {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(first["state"], "queued", "{first}");
    assert_eq!(second["state"], "queued", "{second}");
    assert_eq!(second["waiting"]["code"], "rate_window_full", "{second}");
    let until = chrono::DateTime::parse_from_rfc3339(second["waiting"]["until"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        until > now + 50_000 && until <= now + 61_000,
        "until {until}, now {now}"
    );
    let id = second["taskId"].as_str().unwrap();
    let status = app.status(id).await;
    assert_eq!(status["status"], "pending", "{status}");
    assert_eq!(status["waiting"]["code"], "rate_window_full", "{status}");
}
