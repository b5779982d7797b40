//! Gemini, the synchronous provider, end to end over real HTTP: through the in-process
//! simulator (the embedded default), through a standalone `darkroom gemini-sim` with the real
//! client path (`GEMINI_API_KEY` set), every failure mode, retries, and Gemini and KIE tasks
//! side by side in one request.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Running, TestApp, free_port, input_host, png, spawn_app, task_ids};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const FINAL: Duration = Duration::from_secs(30);

/// Uploads `count` PNGs; returns their `{key, url}` entries.
async fn uploads(app: &TestApp, count: usize) -> Vec<Value> {
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| (format!("src{i}.png"), png(40 + i as u32, 24)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (status, up) = app.upload(&refs).await;
    assert_eq!(status, 200, "{up}");
    up["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| json!({"key": u["key"], "url": u["url"]}))
        .collect()
}

async fn generate(app: &TestApp, body: Value) -> Value {
    let (status, answer) = app.post_json("/api/generate", &body).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// One Gemini task from a fresh upload; returns its id.
async fn one_gemini_task(app: &TestApp) -> String {
    let up = uploads(app, 1).await;
    let answer = generate(
        app,
        json!({"prompt": "a red linen dress", "uploads": up, "provider": "gemini"}),
    )
    .await;
    task_ids(&answer).remove(0)
}

async fn record(app: &TestApp, id: &str) -> Value {
    let bytes = app
        .blobs
        .get_bytes(&format!("kie-tasks/{id}.json"))
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < FINAL, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn upload_then_gemini_generation_completes_with_bytes_and_record_in_the_bucket() {
    let app = spawn_app(&[]).await;
    let up = uploads(&app, 2).await;
    let answer = generate(
        &app,
        json!({"prompt": "a red linen dress", "uploads": up, "provider": "gemini",
               "aspectRatio": "9:16", "outputFormat": "jpeg"}),
    )
    .await;
    assert_eq!(answer["message"], "Created 2 Gemini task(s)");
    assert_eq!(answer["tasks"][0]["provider"], "gemini");
    let gemini = app
        .gemini_sim
        .clone()
        .expect("the in-process Gemini simulator");
    for id in task_ids(&answer) {
        let status = app.wait_final(&id, FINAL).await;
        assert_eq!(status["status"], "completed", "{status}");
        assert_eq!(status["state"], "succeeded");
        let urls = status["resultUrls"].as_array().unwrap();
        assert_eq!(urls.len(), 1);

        // Gemini answers PNG; the client asked for JPEG and gets JPEG, in the right shape.
        let response = app
            .http
            .get(urls[0].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["content-type"], "image/jpeg");
        let decoded = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
        assert!(decoded.height() > decoded.width(), "9:16 is portrait");

        let stored = app.blobs.list("generated").await.unwrap();
        assert!(
            stored.contains(&format!("generated/gemini-{id}-0.jpg")),
            "{stored:?}"
        );
        let record = record(&app, &id).await;
        assert_eq!(record["state"], "succeeded");
        assert_eq!(record["provider"], "gemini");
        assert_eq!(record["model"], "gemini-2.5-flash-image");
        assert_eq!(record["attempts"], 1);

        // Gemini's responseId is the provider id, accepted like KIE's.
        let pid = status["providerTaskId"].as_str().expect("responseId kept");
        assert_eq!(app.status(pid).await["taskId"], id.as_str());
    }
    // The inputs went inline (never as URLs), with the aspect ratio.
    let requests = gemini.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.image_types, ["image/png"]);
        assert_eq!(request.aspect_ratio.as_deref(), Some("9:16"));
        assert_eq!(request.model, "gemini-2.5-flash-image");
    }
    // KIE was never involved.
    assert_eq!(app.sim.as_ref().unwrap().stats().created, 0);
}

/// Serves one PNG at `/input.png` on loopback; returns `host:port`.
async fn input_server(stop: CancellationToken) -> String {
    let bytes = png(30, 60);
    let router = axum::Router::new().route(
        "/input.png",
        axum::routing::get(move || {
            let bytes = bytes.clone();
            async move { ([("content-type", "image/png")], bytes) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    addr.to_string()
}

#[tokio::test]
async fn url_inputs_are_read_by_darkroom_and_auto_sends_no_aspect_ratio() {
    let stop = CancellationToken::new();
    let host = input_server(stop.clone()).await;
    let app = spawn_app(&[("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str())]).await;
    let up = uploads(&app, 1).await;
    // The source is darkroom's own bucket URL (read from the bucket); the reference comes
    // from another host through the guarded client.
    let answer = generate(
        &app,
        json!({"prompt": "p", "provider": "gemini", "aspectRatio": "auto",
               "imageUrls": [up[0]["url"]],
               "referenceUrls": [format!("http://{host}/input.png")]}),
    )
    .await;
    let id = &task_ids(&answer)[0];
    let status = app.wait_final(id, FINAL).await;
    assert_eq!(status["status"], "completed", "{status}");
    let requests = app.gemini_sim.as_ref().unwrap().requests();
    assert_eq!(requests[0].image_types, ["image/png", "image/png"]);
    assert_eq!(
        requests[0].aspect_ratio, None,
        "auto is sent as no aspect ratio"
    );
    // Default output is PNG, stored under its real extension.
    let stored = app.blobs.list("generated").await.unwrap();
    assert_eq!(stored, [format!("generated/gemini-{id}-0.png")]);
    stop.cancel();
}

#[tokio::test]
async fn an_input_on_a_private_address_fails_the_task_before_gemini_is_called() {
    let app = spawn_app(&[]).await;
    let answer = generate(
        &app,
        json!({"prompt": "p", "provider": "gemini", "imageUrls": ["http://127.0.0.1:9/x.png"]}),
    )
    .await;
    let status = app.wait_final(&task_ids(&answer)[0], FINAL).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "input_unusable");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("input image 0 could not be fetched"),
        "{error}"
    );
    assert_eq!(app.gemini_sim.as_ref().unwrap().stats().requests, 0);
    assert!(app.blobs.list("generated").await.unwrap().is_empty());
}

#[tokio::test]
async fn inputs_over_the_inline_limit_fail_without_calling_gemini() {
    let (app, status) = final_status_with(&[("DARKROOM_GEMINI_MAX_REQUEST_BYTES", "100")]).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "inputs_too_large");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("Gemini's inline limit"), "{error}");
    assert_eq!(app.gemini_sim.as_ref().unwrap().stats().requests, 0);
}

/// Runs one Gemini task on an app with `knobs` and returns its final status.
async fn final_status_with(knobs: &[(&str, &str)]) -> (TestApp, Value) {
    let app = spawn_app(knobs).await;
    let id = one_gemini_task(&app).await;
    let status = app.wait_final(&id, FINAL).await;
    (app, status)
}

#[tokio::test]
async fn a_blocked_prompt_fails_with_the_block_reason() {
    let (app, status) = final_status_with(&[("DARKROOM_GEMINI_SIM_BLOCK_RATE", "1")]).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "prompt_blocked");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("Gemini blocked the prompt (blockReason SAFETY)"),
        "{error}"
    );
    assert_eq!(
        app.gemini_sim.as_ref().unwrap().stats().blocked,
        1,
        "not retried"
    );
    assert!(app.blobs.list("generated").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_image_safety_stop_fails_with_the_finish_reason() {
    let (app, status) = final_status_with(&[("DARKROOM_GEMINI_SIM_IMAGE_SAFETY_RATE", "1")]).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "image_blocked");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("finishReason IMAGE_SAFETY"), "{error}");
    assert!(error.contains("image safety filters"), "{error}");
    assert_eq!(app.gemini_sim.as_ref().unwrap().stats().image_safety, 1);
}

#[tokio::test]
async fn a_text_only_answer_fails_quoting_the_text() {
    let (app, status) = final_status_with(&[("DARKROOM_GEMINI_SIM_TEXT_ONLY_RATE", "1")]).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "text_only");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("Gemini answered with text only"), "{error}");
    assert!(error.contains("not able to create that image"), "{error}");
    assert_eq!(app.gemini_sim.as_ref().unwrap().stats().text_only, 1);
}

#[tokio::test]
async fn http_400_403_404_fail_at_once_with_geminis_message() {
    for (code, grpc) in [
        ("400", "INVALID_ARGUMENT"),
        ("403", "PERMISSION_DENIED"),
        ("404", "NOT_FOUND"),
    ] {
        let errors = format!("{code}=1");
        let (app, status) =
            final_status_with(&[("DARKROOM_GEMINI_SIM_ERRORS", errors.as_str())]).await;
        assert_eq!(status["status"], "failed", "{code}: {status}");
        assert_eq!(status["errorCode"], format!("provider_{code}"));
        let error = status["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("Gemini answered HTTP {code} {grpc}")),
            "{error}"
        );
        let stats = app.gemini_sim.as_ref().unwrap().stats();
        let code: u16 = code.parse().unwrap();
        assert_eq!(stats.errors.get(&code), Some(&1), "asked once, not retried");
    }
}

/// The simulator answers `status` until the first one has been seen, then recovers; the
/// task is retried through the engine's backoff and completes.
async fn retried_until_the_fault_clears(status_code: u16) {
    let errors = format!("{status_code}=1");
    let app = spawn_app(&[("DARKROOM_GEMINI_SIM_ERRORS", errors.as_str())]).await;
    let gemini = app.gemini_sim.clone().unwrap();
    let id = one_gemini_task(&app).await;
    wait_until("the first error", || {
        gemini.stats().errors.get(&status_code) == Some(&1)
    })
    .await;
    let pending = app.status(&id).await;
    assert_eq!(pending["status"], "pending", "waiting to retry: {pending}");
    gemini.configure(|c| c.error_rates.clear());
    let status = app.wait_final(&id, FINAL).await;
    assert_eq!(status["status"], "completed", "{status_code}: {status}");
    // A 429 is about the account: Gemini pauses (for its RetryInfo delay) and the task
    // waits its turn without spending an attempt. A 5xx spends one.
    let attempts = if status_code == 429 { 1 } else { 2 };
    assert_eq!(record(&app, &id).await["attempts"], attempts);
    assert_eq!(gemini.stats().generated, 1);
}

#[tokio::test]
async fn http_429_is_retried_then_completes() {
    retried_until_the_fault_clears(429).await;
}

#[tokio::test]
async fn http_500_is_retried_then_completes() {
    retried_until_the_fault_clears(500).await;
}

#[tokio::test]
async fn http_503_is_retried_then_completes() {
    retried_until_the_fault_clears(503).await;
}

#[tokio::test]
async fn a_fault_that_does_not_clear_fails_after_max_attempts() {
    let (app, status) = final_status_with(&[
        ("DARKROOM_GEMINI_SIM_ERRORS", "503=1"),
        ("DARKROOM_MAX_ATTEMPTS", "2"),
    ])
    .await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "provider_unavailable");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("gave up after 2 attempts"), "{error}");
    assert!(error.contains("503"), "{error}");
    assert_eq!(
        app.gemini_sim.as_ref().unwrap().stats().errors.get(&503),
        Some(&2)
    );
}

#[tokio::test]
async fn mixed_kie_and_gemini_tasks_in_one_request_each_complete_through_their_own_path() {
    let app = spawn_app(&[]).await;
    let up = uploads(&app, 3).await;
    let answer = generate(
        &app,
        json!({"prompt": "a red linen dress", "uploads": [
            {"key": up[0]["key"], "provider": "gemini"},
            {"key": up[1]["key"]},
            {"key": up[2]["key"], "provider": "gemini"}]}),
    )
    .await;
    assert_eq!(answer["message"], "Created 3 task(s): 1 KIE, 2 Gemini");
    let providers: Vec<&str> = answer["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["provider"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["gemini", "kie", "gemini"]);
    let ids = task_ids(&answer);
    for id in &ids {
        let status = app.wait_final(id, FINAL).await;
        assert_eq!(status["status"], "completed", "{status}");
    }
    let stored: HashSet<String> = app
        .blobs
        .list("generated")
        .await
        .unwrap()
        .into_iter()
        .collect();
    let expected: HashSet<String> = [
        format!("generated/gemini-{}-0.png", ids[0]),
        format!("generated/kie-{}-0.png", ids[1]),
        format!("generated/gemini-{}-0.png", ids[2]),
    ]
    .into();
    assert_eq!(stored, expected);
    // KIE's path: one createTask and its callback; Gemini's: two inline generations.
    let kie = app.sim.as_ref().unwrap().stats();
    assert_eq!(kie.created, 1, "{kie:?}");
    assert!(kie.callbacks_sent >= 1, "{kie:?}");
    let gemini = app.gemini_sim.as_ref().unwrap().stats();
    assert_eq!(gemini.generated, 2, "{gemini:?}");
    assert_eq!(record(&app, &ids[1]).await["provider"], "kie");
    assert_eq!(record(&app, &ids[2]).await["provider"], "gemini");
}

/// Gemini calls that would take an hour: KIE tasks complete meanwhile (none of the Gemini
/// tasks can have, whatever the machine's speed), at most `DARKROOM_GEMINI_CONCURRENCY` calls
/// run at once, and each is cut at `DARKROOM_GEMINI_TIMEOUT_SECS` and retried; once the
/// simulator is quick again every Gemini task completes.
#[tokio::test]
async fn slow_gemini_calls_are_bounded_and_do_not_hold_up_kie_tasks() {
    let app = spawn_app(&[
        ("DARKROOM_GEMINI_SIM_LATENCY_MS", "3600000"),
        ("DARKROOM_GEMINI_CONCURRENCY", "2"),
        ("DARKROOM_GEMINI_TIMEOUT_SECS", "2"),
    ])
    .await;
    let gemini = app.gemini_sim.clone().unwrap();
    let up = uploads(&app, 8).await;
    let sources: Vec<Value> = up
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"key": u["key"], "provider": if i < 5 { "gemini" } else { "kie" }}))
        .collect();
    let answer = generate(&app, json!({"prompt": "p", "uploads": sources})).await;
    let ids = task_ids(&answer);
    let (gemini_ids, kie_ids) = ids.split_at(5);
    let started = Instant::now();
    for id in kie_ids {
        assert_eq!(app.wait_final(id, FINAL).await["status"], "completed");
    }
    let kie_done = started.elapsed();
    // Every KIE task is done while Gemini's two slots are taken by calls that cannot end.
    wait_until("both Gemini slots in use", || gemini.stats().in_flight == 2).await;
    let mut completed = 0;
    for id in gemini_ids {
        if app.status(id).await["status"] == "completed" {
            completed += 1;
        }
    }
    let held = gemini.stats();
    assert_eq!(completed, 0, "a Gemini call that takes an hour completed");
    assert_eq!(held.generated, 0, "{held:?}");
    assert_eq!(held.max_in_flight, 2, "{held:?}");

    // The calls are cut at the timeout and retried; answered quickly now, all complete.
    gemini.configure(|c| c.latency_ms = (20, 60));
    for id in gemini_ids {
        assert_eq!(app.wait_final(id, FINAL).await["status"], "completed");
    }
    let all_done = started.elapsed();
    let stats = gemini.stats();
    let mut retried = 0;
    for id in gemini_ids {
        if record(&app, id).await["attempts"].as_u64() > Some(1) {
            retried += 1;
        }
    }
    println!(
        "slow_gemini_calls: {} KIE tasks completed {:.2} s after the request while the Gemini calls hung ({} in flight, at most {} at once, {completed} of {} Gemini tasks completed); cut at the timeout, {retried} were retried; {} generated after {:.2} s from {} Gemini requests, at most {} at once",
        kie_ids.len(),
        kie_done.as_secs_f64(),
        held.in_flight,
        held.max_in_flight,
        gemini_ids.len(),
        stats.generated,
        all_done.as_secs_f64(),
        stats.requests,
        stats.max_in_flight,
    );
    assert_eq!(stats.generated, 5);
    assert_eq!(stats.max_in_flight, 2, "{stats:?}");
    assert!(
        retried >= 2,
        "the hour-long calls were cut and retried: {retried}"
    );
}

#[tokio::test]
async fn gemini_as_default_provider_and_info_lists_both_simulators() {
    let app = spawn_app(&[("DARKROOM_DEFAULT_PROVIDER", "gemini")]).await;
    let (_, info) = app.get_json("/api/info").await;
    assert_eq!(info["provider"], "gemini", "{info}");
    assert_eq!(info["defaultProvider"], "gemini");
    assert_eq!(info["simulator"], true);
    assert_eq!(
        info["providers"],
        json!([
            {"name": "kie", "model": "google/nano-banana-edit", "simulator": true},
            {"name": "gemini", "model": "gemini-2.5-flash-image", "simulator": true}
        ])
    );
    let up = uploads(&app, 1).await;
    let answer = generate(&app, json!({"prompt": "p", "uploads": up})).await;
    assert_eq!(answer["message"], "Created 1 Gemini task(s)");
    let status = app.wait_final(&task_ids(&answer)[0], FINAL).await;
    assert_eq!(status["status"], "completed", "{status}");
}

#[tokio::test]
async fn gemini_tasks_take_no_callbacks() {
    let app = spawn_app(&[]).await;
    let id = one_gemini_task(&app).await;
    let status = app.wait_final(&id, FINAL).await;
    assert_eq!(status["status"], "completed", "{status}");
    let body = json!({"code": 200, "data": {"taskId": status["providerTaskId"], "state": "success",
        "resultJson": "{\"resultUrls\":[\"https://example.com/x.png\"]}"}});
    // No token was ever issued for a Gemini task, and KIE's callback path knows only KIE ids.
    let (code, _) = app
        .post_json(&format!("/api/callback/{id}?token=anything"), &body)
        .await;
    assert_eq!(code, 401);
    let (code, _) = app.post_json("/api/callback", &body).await;
    assert_eq!(code, 404);
    assert_eq!(app.status(&id).await["resultUrls"], status["resultUrls"]);
}

#[tokio::test]
async fn a_model_of_the_other_provider_is_refused() {
    let app = spawn_app(&[]).await;
    let up = uploads(&app, 1).await;
    let (code, answer) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "p", "uploads": up, "provider": "gemini", "model": "google/nano-banana-edit"}),
        )
        .await;
    assert_eq!(code, 400, "{answer}");
    assert_eq!(answer["code"], "unsupported_model");
}

#[tokio::test]
async fn with_the_bucket_on_s3_gemini_reads_inputs_from_it_and_stores_results_there() {
    let bucket = crate::harness::new_s3_bucket().await;
    let mut env = crate::harness::s3_env(&bucket);
    // Presigned URLs are how KIE would get the inputs; Gemini reads the bucket instead.
    env.push(("DARKROOM_INPUT_MODE", "presigned".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app(&env).await;
    let id = one_gemini_task(&app).await;
    let status = app.wait_final(&id, FINAL).await;
    assert_eq!(status["status"], "completed", "{status}");
    let requests = app.gemini_sim.as_ref().unwrap().requests();
    assert_eq!(requests[0].image_types, ["image/png"]);
    let all = app.blobs.list("").await.unwrap();
    assert!(
        all.contains(&format!("generated/gemini-{id}-0.png")),
        "{all:?}"
    );
    assert!(all.contains(&format!("kie-tasks/{id}.json")), "{all:?}");
    assert!(!app.dir.path().join("bucket").exists());
}

// ----- the standalone simulator and the real client path ---------------------------------

async fn start_gemini_sim(extra: &[&str]) -> (Running, String) {
    let port = free_port();
    let child = Command::new(BIN)
        .args([
            "gemini-sim",
            "--port",
            &port.to_string(),
            "--latency-ms",
            "10-30",
            "--api-key",
            "sim-key",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("darkroom gemini-sim starts");
    let running = Running(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{base}/sim/stats")).send().await
            && r.status() == 200
        {
            return (running, base);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gemini-sim did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sim_stats(app: &TestApp, base: &str) -> Value {
    app.http
        .get(format!("{base}/sim/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_standalone_gemini_sim_serves_the_real_client() {
    let (_sim, base) = start_gemini_sim(&[]).await;
    let app = spawn_app(&[
        ("GEMINI_API_KEY", "sim-key"),
        ("GEMINI_BASE_URL", base.as_str()),
    ])
    .await;
    assert!(
        app.gemini_sim.is_none(),
        "GEMINI_API_KEY switches the simulator off"
    );
    let (_, info) = app.get_json("/api/info").await;
    assert_eq!(info["providers"][1]["simulator"], false, "{info}");
    let id = one_gemini_task(&app).await;
    let status = app.wait_final(&id, FINAL).await;
    assert_eq!(status["status"], "completed", "{status}");
    let stats = sim_stats(&app, &base).await;
    assert_eq!(stats["generated"], 1, "{stats}");
    assert_eq!(stats["unauthorized"], 0, "{stats}");
}

#[tokio::test]
async fn a_wrong_key_or_an_unknown_model_fails_with_geminis_reason() {
    let (_sim, base) = start_gemini_sim(&[]).await;
    let app = spawn_app(&[
        ("GEMINI_API_KEY", "wrong-key"),
        ("GEMINI_BASE_URL", base.as_str()),
    ])
    .await;
    let status = app.wait_final(&one_gemini_task(&app).await, FINAL).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "provider_400");
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("API key not valid"), "{error}");

    let app = spawn_app(&[
        ("GEMINI_API_KEY", "sim-key"),
        ("GEMINI_BASE_URL", base.as_str()),
        ("DARKROOM_GEMINI_MODEL", "gemini-0-unknown"),
    ])
    .await;
    let status = app.wait_final(&one_gemini_task(&app).await, FINAL).await;
    assert_eq!(status["status"], "failed", "{status}");
    assert_eq!(status["errorCode"], "provider_404");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("models/gemini-0-unknown is not found"),
        "{error}"
    );
}

/// Inputs that cannot be had fail the task at once with the input's own code, not as
/// provider trouble after minutes of retries: a host name that does not exist (`.invalid`,
/// RFC 6761: refused without a lookup), a 404, an HTML page where an image should be.
/// Gemini is never called.
#[tokio::test]
async fn unreadable_inputs_fail_at_once_with_the_inputs_code() {
    let stop = CancellationToken::new();
    let host = input_host(stop.clone()).await;
    let app = spawn_app(&[("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str())]).await;
    let cases = [
        (
            "https://example.invalid/i.png".to_owned(),
            "input_unreachable",
            "does not resolve",
        ),
        (
            format!("http://{host}/missing.png"),
            "input_not_found",
            "answered HTTP 404",
        ),
        (
            format!("http://{host}/page.png"),
            "input_not_image",
            "is not an image",
        ),
    ];
    for (url, code, words) in cases {
        let started = Instant::now();
        let answer = generate(
            &app,
            json!({"prompt": "p", "provider": "gemini", "imageUrls": [url]}),
        )
        .await;
        let id = &task_ids(&answer)[0];
        let status = app.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(status["status"], "failed", "{url}: {status}");
        assert_eq!(status["errorCode"], code, "{url}: {status}");
        let error = status["error"].as_str().unwrap();
        assert!(error.contains(words), "{url}: {error}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url} took {:?}",
            started.elapsed()
        );
        let (_, task) = app.get_json(&format!("/api/tasks/{id}")).await;
        assert_eq!(task["error"]["code"], code, "{task}");
        assert_eq!(
            task["waiting"],
            Value::Null,
            "a failed task waits for nothing"
        );
    }
    assert_eq!(app.gemini_sim.as_ref().unwrap().stats().requests, 0);
    stop.cancel();
}

/// An input that may come back (its host answers 503) is tried again later, and while the
/// task waits both views say why and until when.
#[tokio::test]
async fn a_waiting_task_says_why_and_until_when() {
    let stop = CancellationToken::new();
    let host = input_host(stop.clone()).await;
    let app = spawn_app(&[("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str())]).await;
    let answer = generate(
        &app,
        json!({"prompt": "p", "provider": "gemini", "imageUrls": [format!("http://{host}/busy.png")]}),
    )
    .await;
    let id = task_ids(&answer)[0].clone();
    let task = {
        let started = Instant::now();
        loop {
            let (_, task) = app.get_json(&format!("/api/tasks/{id}")).await;
            if task["attempts"].as_u64() >= Some(1) {
                break task;
            }
            assert!(started.elapsed() < FINAL, "no attempt made: {task}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(task["state"], "queued", "{task}");
    assert_eq!(task["waiting"]["code"], "input_unavailable", "{task}");
    let message = task["waiting"]["message"].as_str().unwrap();
    assert!(message.contains("answered HTTP 503"), "{message}");
    let until = chrono::DateTime::parse_from_rfc3339(task["waiting"]["until"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let now = chrono::Utc::now().timestamp_millis();
    // The first retry is 4 s ±20 % after the attempt.
    assert!(
        until > now && until < now + 6_000,
        "until {until}, now {now}"
    );
    let status = app.status(&id).await;
    assert_eq!(status["status"], "pending", "{status}");
    assert_eq!(status["waiting"], task["waiting"], "{status}");
    assert_eq!(
        status["error"],
        Value::Null,
        "error is for failed tasks: {status}"
    );
    let (code, _) = app
        .post_json(&format!("/api/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 200);
    stop.cancel();
}
