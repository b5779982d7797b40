//! End-to-end tests of the KIE simulator over real HTTP: a running simulator plus a peer
//! that serves input images and receives callbacks, both on loopback.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use image::{DynamicImage, ImageFormat};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::callbacks::{HmacSha256, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::generation::MAX_INPUT_BYTES;
use super::request::{EDIT_MODEL, TEXT_MODEL};
use super::store::{CREDITS_PER_IMAGE, INITIAL_CREDITS};
use super::{KieSim, KieSimConfig, SimStats};
use image::{Rgb, RgbImage};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

/// One callback as the receiver saw it.
struct Delivery {
    headers: HeaderMap,
    body: Value,
}

/// A running simulator plus a peer server that serves input images and receives
/// callbacks, both on loopback.
struct Harness {
    sim: Arc<KieSim>,
    base: String,
    peer: String,
    hooks: mpsc::UnboundedReceiver<Delivery>,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn fast() -> KieSimConfig {
    KieSimConfig {
        latency_ms: (0, 5),
        image_long_side: 64,
        ..KieSimConfig::default()
    }
}

fn sample_png() -> Vec<u8> {
    let picture = RgbImage::from_fn(48, 32, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, 90]));
    let mut bytes = Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(picture)
        .write_to(&mut bytes, ImageFormat::Png)
        .expect("encode sample");
    bytes.into_inner()
}

async fn spawn(config: KieSimConfig) -> Harness {
    let shutdown = CancellationToken::new();

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
    let base = format!("http://{}", listener.local_addr().expect("sim addr"));
    let sim = KieSim::new(config, base.clone());
    tokio::spawn(Arc::clone(&sim).serve(listener, shutdown.clone()));

    let (tx, hooks) = mpsc::unbounded_channel();
    let receive = move |headers: HeaderMap, body: Bytes| {
        let tx = tx.clone();
        async move {
            let body = serde_json::from_slice(&body).expect("callback body is JSON");
            let _ = tx.send(Delivery { headers, body });
            StatusCode::OK
        }
    };
    let png = Bytes::from(sample_png());
    let peer_router = Router::new()
        .route("/hook", post(receive))
        .route(
            "/hook-fails",
            post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route(
            "/input.png",
            get(move || async move { ([(header::CONTENT_TYPE, "image/png")], png) }),
        )
        .route("/text.png", get(|| async { "definitely not an image" }))
        .route(
            "/huge.png",
            get(|| async { vec![0u8; MAX_INPUT_BYTES + 1] }),
        );
    let peer_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind peer");
    let peer = format!("http://{}", peer_listener.local_addr().expect("peer addr"));
    let token = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(peer_listener, peer_router)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });

    Harness {
        sim,
        base,
        peer,
        hooks,
        client: reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client"),
        shutdown,
    }
}

impl Harness {
    fn body(&self, input: Value) -> Value {
        json!({
            "model": EDIT_MODEL,
            "callBackUrl": format!("{}/hook?token=abc", self.peer),
            "input": input,
        })
    }

    fn edit_body(&self) -> Value {
        self.body(json!({
            "prompt": "a lighthouse at dusk",
            "image_urls": [format!("{}/input.png", self.peer)],
        }))
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.expect("JSON answer"))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.expect("JSON answer"))
    }

    async fn create(&self, body: &Value) -> (StatusCode, Value) {
        self.post("/api/v1/jobs/createTask", body.to_string()).await
    }

    async fn create_ok(&self, body: &Value) -> String {
        let (status, answer) = self.create(body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["code"], 200, "{answer}");
        answer["data"]["taskId"]
            .as_str()
            .expect("taskId")
            .to_owned()
    }

    async fn record(&self, task_id: &str) -> Value {
        let (status, answer) = self
            .get(&format!("/api/v1/jobs/recordInfo?taskId={task_id}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["code"], 200);
        answer["data"].clone()
    }

    async fn wait_terminal(&self, task_id: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let data = self.record(task_id).await;
            if matches!(data["state"].as_str(), Some("success" | "fail")) {
                return data;
            }
            assert!(Instant::now() < deadline, "task never finished: {data}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn next_hook(&mut self) -> Delivery {
        tokio::time::timeout(WAIT, self.hooks.recv())
            .await
            .expect("callback in time")
            .expect("hook channel open")
    }

    async fn assert_no_hook_within(&mut self, wait: Duration) {
        let extra = tokio::time::timeout(wait, self.hooks.recv()).await;
        assert!(extra.is_err(), "unexpected callback");
    }

    /// Waits until background counters settle on `done`, so stats asserts do not race.
    async fn wait_for(&self, done: impl Fn(&SimStats) -> bool) -> SimStats {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = self.sim.stats();
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "stats never settled: {stats:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn result_urls(data: &Value) -> Vec<String> {
    let result_json = data["resultJson"].as_str().expect("resultJson is a string");
    let result: Value = serde_json::from_str(result_json).expect("resultJson parses");
    serde_json::from_value(result["resultUrls"].clone()).expect("resultUrls")
}

#[tokio::test]
async fn create_then_record_info_reaches_success_and_serves_the_image() {
    let h = spawn(fast()).await;
    let body = h.edit_body();
    let task_id = h.create_ok(&body).await;
    assert_eq!(task_id.len(), 32);
    assert!(task_id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));

    let data = h.wait_terminal(&task_id).await;
    assert_eq!(data["state"], "success", "{data}");
    assert_eq!(data["taskId"], task_id.as_str());
    assert_eq!(data["model"], EDIT_MODEL);
    assert_eq!(
        (data["failCode"].as_str(), data["failMsg"].as_str()),
        (Some(""), Some(""))
    );
    assert!(data["costTime"].is_u64() && data["completeTime"].is_i64());
    assert_eq!(data["consumeCredits"], CREDITS_PER_IMAGE);
    let param: Value =
        serde_json::from_str(data["param"].as_str().expect("param string")).expect("param parses");
    assert_eq!(param, body);

    let urls = result_urls(&data);
    assert_eq!(urls, [format!("{}/files/{task_id}-0.png", h.base)]);
    let response = h.client.get(&urls[0]).send().await.expect("file");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "image/png");
    let bytes = response.bytes().await.expect("file bytes");
    let picture = image::load_from_memory(&bytes).expect("result decodes");
    assert_eq!((picture.width(), picture.height()), (64, 64));

    let stats = h.sim.stats();
    assert_eq!(
        (stats.created, stats.succeeded, stats.files_served),
        (1, 1, 1)
    );
    assert!(stats.queries >= 1);
    assert_eq!(h.sim.task_ids(), std::slice::from_ref(&task_id));
    assert_eq!(
        h.sim.callback_url(&task_id),
        Some(format!("{}/hook?token=abc", h.peer))
    );
    assert_eq!(h.sim.callback_url("nope"), None);
}

#[tokio::test]
async fn state_moves_from_waiting_through_generating_to_success() {
    let h = spawn(KieSimConfig {
        // A quarter of the latency is spent waiting: wide enough to observe reliably.
        latency_ms: (1000, 1000),
        ..fast()
    })
    .await;
    let task_id = h.create_ok(&h.edit_body()).await;
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.last().is_none_or(|s| s != "success") {
        assert!(Instant::now() < deadline, "stuck after {seen:?}");
        let data = h.record(&task_id).await;
        let state = data["state"].as_str().expect("state").to_owned();
        if state != "success" {
            assert!(data["completeTime"].is_null() && data["costTime"].is_null());
            assert!(data.get("resultJson").is_none());
        }
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seen, ["waiting", "generating", "success"]);
}

#[tokio::test]
async fn success_callback_has_kie_exact_shape() {
    // Over a second of latency, so seconds and milliseconds tell apart.
    let mut h = spawn(KieSimConfig {
        latency_ms: (1100, 1100),
        ..fast()
    })
    .await;
    let task_id = h.create_ok(&h.edit_body()).await;
    let hook = h.next_hook().await;
    assert_eq!(hook.body["code"], 200);
    assert_eq!(hook.body["msg"], "Playground task completed successfully.");
    let data = &hook.body["data"];
    assert_eq!(
        keys(data),
        [
            "completeTime",
            "consumeCredits",
            "costTime",
            "createTime",
            "model",
            "param",
            "remainedCredits",
            "resultJson",
            "state",
            "taskId",
            "updateTime"
        ]
    );
    assert_eq!(data["taskId"], task_id.as_str());
    assert_eq!(data["state"], "success");
    assert!(data["param"].is_string());
    let cost_s = data["costTime"].as_u64().expect("costTime");
    assert!(
        (1..=3).contains(&cost_s),
        "callback costTime is in seconds: {cost_s}"
    );
    assert_eq!(data["consumeCredits"], CREDITS_PER_IMAGE);
    assert_eq!(data["remainedCredits"], INITIAL_CREDITS - CREDITS_PER_IMAGE);
    assert_eq!(result_urls(data).len(), 1);
    assert!(hook.headers.get(SIGNATURE_HEADER).is_none());

    let record = h.record(&task_id).await;
    assert!(
        record["costTime"].as_u64().expect("ms") >= 1100,
        "recordInfo costTime is in ms"
    );
    assert_eq!(record["resultJson"], data["resultJson"]);
}

#[tokio::test]
async fn callbacks_are_signed_when_a_key_is_set() {
    let key = "whk_secret";
    let mut h = spawn(KieSimConfig {
        hmac_key: Some(key.to_owned()),
        ..fast()
    })
    .await;
    let task_id = h.create_ok(&h.edit_body()).await;
    let hook = h.next_hook().await;
    let timestamp: i64 = hook.headers[TIMESTAMP_HEADER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("unix seconds");
    assert!((chrono::Utc::now().timestamp() - timestamp).abs() <= 5);
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("key");
    mac.update(format!("{task_id}.{timestamp}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(
        hook.headers[SIGNATURE_HEADER].to_str().expect("ascii"),
        expected
    );
}

#[tokio::test]
async fn the_twenty_first_create_in_a_window_is_rate_limited() {
    let h = spawn(fast()).await;
    let body = h.edit_body();
    for _ in 0..20 {
        h.create_ok(&body).await;
    }
    let (status, answer) = h.create(&body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        answer,
        json!({"code": 429, "msg": "Rate limited: 20 requests per 10 seconds", "data": null})
    );
    let stats = h.sim.stats();
    assert_eq!((stats.created, stats.rate_limited), (20, 1));
    assert_eq!(h.sim.task_ids().len(), 20);
}

#[tokio::test]
async fn errors_in_body_answers_http_200_with_the_code_inside() {
    let h = spawn(KieSimConfig {
        rate_limit: 1,
        errors_in_body: true,
        ..fast()
    })
    .await;
    let body = h.edit_body();
    h.create_ok(&body).await;
    let (status, answer) = h.create(&body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["code"], 429);
    let (status, answer) = h.get("/api/v1/jobs/recordInfo?taskId=unknown").await;
    assert_eq!(
        (status, answer["code"].as_u64()),
        (StatusCode::OK, Some(404))
    );
}

#[tokio::test]
async fn the_window_slides_and_rejected_creates_take_no_slot() {
    let h = spawn(KieSimConfig {
        rate_limit: 2,
        rate_window: Duration::from_millis(1500),
        ..fast()
    })
    .await;
    let body = h.edit_body();
    let (status, _) = h.create(&json!({"model": "nope"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    h.create_ok(&body).await;
    h.create_ok(&body).await;
    let (status, answer) = h.create(&body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        answer["msg"],
        "Rate limited: 2 requests per 1500 milliseconds"
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    h.create_ok(&body).await;
}

#[tokio::test]
async fn fail_rate_one_gives_a_fail_callback() {
    let mut h = spawn(KieSimConfig {
        fail_rate: 1.0,
        ..fast()
    })
    .await;
    let task_id = h.create_ok(&h.edit_body()).await;
    let hook = h.next_hook().await;
    assert_eq!(hook.body["code"], 501);
    assert_eq!(hook.body["msg"], "Playground task failed.");
    let data = &hook.body["data"];
    assert_eq!(data["state"], "fail");
    assert_eq!(data["failCode"], "500");
    assert_eq!(data["failMsg"], "Internal server error");
    assert_eq!(data["consumeCredits"], 0);
    assert!(data.get("resultJson").is_none());

    let record = h.record(&task_id).await;
    assert_eq!(
        (record["state"].as_str(), record["failCode"].as_str()),
        (Some("fail"), Some("500"))
    );
    assert!(record.get("resultJson").is_none());
    h.wait_for(|s| s.failed == 1).await;
    let (_, credit) = h.get("/api/v1/chat/credit").await;
    assert_eq!(credit["data"], INITIAL_CREDITS, "failures are free");
}

#[tokio::test]
async fn unusable_inputs_fail_with_code_400() {
    let mut h = spawn(fast()).await;
    for (path, reason) in [
        ("/missing.png", "HTTP 404"),
        ("/huge.png", "larger than 20 MiB"),
        ("/text.png", "not a JPEG, PNG or WebP"),
    ] {
        let body = h.body(json!({
            "prompt": "p",
            "image_urls": [format!("{}{path}", h.peer)],
        }));
        h.create_ok(&body).await;
        let data = h.next_hook().await.body["data"].clone();
        assert_eq!(data["state"], "fail");
        assert_eq!(data["failCode"], "400");
        let msg = data["failMsg"].as_str().expect("failMsg");
        assert!(msg.contains(reason), "{msg}");
    }
}

#[tokio::test]
async fn duplicated_callbacks_arrive_duplicate_count_times() {
    let mut h = spawn(KieSimConfig {
        duplicate_rate: 1.0,
        duplicate_count: 3,
        ..fast()
    })
    .await;
    let task_id = h.create_ok(&h.edit_body()).await;
    for _ in 0..3 {
        let hook = h.next_hook().await;
        assert_eq!(hook.body["data"]["taskId"], task_id.as_str());
    }
    h.assert_no_hook_within(Duration::from_millis(200)).await;
    let stats = h.sim.stats();
    assert_eq!(
        (
            stats.callbacks_sent,
            stats.duplicates_sent,
            stats.callback_failures
        ),
        (3, 2, 0)
    );
}

#[tokio::test]
async fn dropped_callbacks_are_never_sent_but_record_info_succeeds() {
    let mut h = spawn(KieSimConfig {
        drop_rate: 1.0,
        ..fast()
    })
    .await;
    let task_id = h.create_ok(&h.edit_body()).await;
    assert_eq!(h.wait_terminal(&task_id).await["state"], "success");
    h.wait_for(|s| s.dropped == 1).await;
    h.assert_no_hook_within(Duration::from_millis(200)).await;
    assert_eq!(h.sim.stats().callbacks_sent, 0);
}

#[tokio::test]
async fn forgotten_tasks_are_not_found_and_never_called_back() {
    for errors_in_body in [false, true] {
        let mut h = spawn(KieSimConfig {
            forget_rate: 1.0,
            errors_in_body,
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        let (status, answer) = h
            .get(&format!("/api/v1/jobs/recordInfo?taskId={task_id}"))
            .await;
        let expected = if errors_in_body {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(
            (status, answer["code"].as_u64()),
            (expected, Some(404)),
            "{answer}"
        );
        h.assert_no_hook_within(Duration::from_millis(200)).await;
        let stats = h.sim.stats();
        assert_eq!(
            (
                stats.created,
                stats.forgotten,
                stats.not_found,
                stats.succeeded
            ),
            (1, 1, 1, 0)
        );
        // Its credits were only reserved, and went back.
        let (_, credit) = h.get("/api/v1/chat/credit").await;
        assert_eq!(credit["data"], INITIAL_CREDITS);
    }
}

#[tokio::test]
async fn early_callbacks_arrive_before_the_create_answer() {
    let mut h = spawn(KieSimConfig {
        early_callback_rate: 1.0,
        ..fast()
    })
    .await;
    let task_id = h.create_ok(&h.edit_body()).await;
    // The simulator awaited the receiver's answer before answering the create.
    let hook = h.hooks.try_recv().expect("callback already delivered");
    assert_eq!(hook.body["data"]["taskId"], task_id.as_str());
    assert_eq!(hook.body["data"]["state"], "success");
}

#[tokio::test]
async fn failing_receivers_are_counted() {
    let h = spawn(fast()).await;
    let body = json!({
        "model": EDIT_MODEL,
        "callBackUrl": format!("{}/hook-fails", h.peer),
        "input": {"prompt": "p", "image_urls": [format!("{}/input.png", h.peer)]},
    });
    h.create_ok(&body).await;
    let stats = h.wait_for(|s| s.callback_failures == 1).await;
    assert_eq!(stats.callbacks_sent, 1);
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    let h = spawn(KieSimConfig {
        token: Some("kie_key".to_owned()),
        ..fast()
    })
    .await;
    let body = h.edit_body().to_string();
    let url = format!("{}/api/v1/jobs/createTask", h.base);
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("kie_key"),
        Some("Bearer kie_key2"),
    ] {
        let mut request = h.client.post(&url).body(body.clone());
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        let answer: Value = response.json().await.expect("envelope");
        assert_eq!(answer["code"], 401);
    }
    let response = h
        .client
        .post(&url)
        .bearer_auth("kie_key")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    // The simulator's own endpoints are open.
    let (status, _) = h.get("/sim/stats").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_json_is_a_422_envelope() {
    let h = spawn(fast()).await;
    for body in ["{not json", "", "[1,2]", "null"] {
        let (status, answer) = h.post("/api/v1/jobs/createTask", body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
        assert_eq!(answer["code"], 422);
        assert!(answer["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(h.sim.stats().rejected, 4);
}

#[tokio::test]
async fn validation_names_the_offending_field() {
    let h = spawn(fast()).await;
    let image = format!("{}/input.png", h.peer);
    let with_input = |input: Value| json!({"model": EDIT_MODEL, "input": input});
    let cases = [
        (json!({"input": {"prompt": "p"}}), "model"),
        (json!({"model": "google/imagen", "input": {}}), "model"),
        (json!({"model": EDIT_MODEL}), "input"),
        (
            json!({"model": EDIT_MODEL, "callBackUrl": "ftp://x", "input": {}}),
            "callBackUrl",
        ),
        (with_input(json!({"image_urls": [image]})), "prompt"),
        (
            with_input(json!({"prompt": "  ", "image_urls": [image]})),
            "prompt",
        ),
        (
            with_input(json!({"prompt": "x".repeat(5001), "image_urls": [image]})),
            "prompt",
        ),
        (
            with_input(json!({"prompt": 5, "image_urls": [image]})),
            "prompt",
        ),
        (with_input(json!({"prompt": "p"})), "image_urls"),
        (
            with_input(json!({"prompt": "p", "image_urls": []})),
            "image_urls",
        ),
        (
            with_input(json!({"prompt": "p", "image_urls": vec![image.clone(); 11]})),
            "image_urls",
        ),
        (
            with_input(json!({"prompt": "p", "image_urls": ["file:///etc/passwd"]})),
            "image_urls[0]",
        ),
        (
            with_input(json!({"prompt": "p", "image_urls": [image, 3]})),
            "image_urls[1]",
        ),
        (
            with_input(json!({"prompt": "p", "image_urls": [image], "output_format": "gif"})),
            "output_format",
        ),
        (
            with_input(json!({"prompt": "p", "image_urls": [image], "image_size": "7:5"})),
            "image_size",
        ),
        (
            with_input(json!({"prompt": "p", "image_urls": [image], "aspect_ratio": "wide"})),
            "aspect_ratio",
        ),
    ];
    for (body, field) in &cases {
        let (status, answer) = h.create(body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let msg = answer["msg"].as_str().expect("msg");
        assert!(msg.contains(field), "{msg:?} should name {field}");
    }
    assert_eq!(h.sim.stats().rejected, cases.len() as u64);
    assert_eq!(h.sim.stats().created, 0);

    // Limits are inclusive: 5000 characters and 10 URLs are fine.
    h.create_ok(&with_input(json!({
        "prompt": "é".repeat(5000),
        "image_urls": vec![image.clone(); 10],
    })))
    .await;
}

#[tokio::test]
async fn aspect_ratio_alias_and_jpeg_output_are_honoured() {
    let h = spawn(fast()).await;
    let body = h.body(json!({
        "prompt": "p",
        "image_urls": [format!("{}/input.png", h.peer)],
        "aspect_ratio": "16:9",
        "output_format": "jpeg",
    }));
    let task_id = h.create_ok(&body).await;
    let data = h.wait_terminal(&task_id).await;
    let urls = result_urls(&data);
    assert!(urls[0].ends_with(&format!("{task_id}-0.jpg")), "{urls:?}");
    let response = h.client.get(&urls[0]).send().await.expect("file");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "image/jpeg");
    let picture = image::load_from_memory(&response.bytes().await.expect("bytes")).expect("jpeg");
    assert_eq!((picture.width(), picture.height()), (64, 36));
}

#[tokio::test]
async fn the_text_only_model_needs_no_image() {
    let mut h = spawn(fast()).await;
    let body = json!({
        "model": TEXT_MODEL,
        "callBackUrl": format!("{}/hook", h.peer),
        "input": {"prompt": "a paper boat", "image_size": "9:16"},
    });
    let task_id = h.create_ok(&body).await;
    let hook = h.next_hook().await;
    assert_eq!(hook.body["data"]["state"], "success");
    assert_eq!(hook.body["data"]["model"], TEXT_MODEL);
    let urls = result_urls(&h.record(&task_id).await);
    let bytes = h
        .client
        .get(&urls[0])
        .send()
        .await
        .expect("file")
        .bytes()
        .await
        .expect("bytes");
    let picture = image::load_from_memory(&bytes).expect("png");
    assert_eq!((picture.width(), picture.height()), (36, 64));
}

#[tokio::test]
async fn record_info_needs_a_known_task_id() {
    let h = spawn(fast()).await;
    let (status, answer) = h.get("/api/v1/jobs/recordInfo?taskId=0123").await;
    assert_eq!(
        (status, answer["code"].as_u64()),
        (StatusCode::NOT_FOUND, Some(404))
    );
    let (status, answer) = h.get("/api/v1/jobs/recordInfo").await;
    assert_eq!(
        (status, answer["code"].as_u64()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some(422))
    );
    assert_eq!(h.sim.stats().queries, 2);
}

#[tokio::test]
async fn download_url_credit_files_and_stats() {
    let h = spawn(fast()).await;
    let task_id = h.create_ok(&h.edit_body()).await;
    let url = result_urls(&h.wait_terminal(&task_id).await).remove(0);

    let (status, answer) = h
        .post(
            "/api/v1/common/download-url",
            json!({"url": url}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["data"], url.as_str());
    for body in [
        json!({"url": "https://example.com/a.png"}),
        json!({"url": format!("{}/files/unknown.png", h.base)}),
        json!({}),
    ] {
        let (status, _) = h
            .post("/api/v1/common/download-url", body.to_string())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }

    let (_, credit) = h.get("/api/v1/chat/credit").await;
    assert_eq!(
        credit,
        json!({"code": 200, "msg": "success", "data": INITIAL_CREDITS - CREDITS_PER_IMAGE})
    );

    let response = h
        .client
        .get(format!("{}/files/nope.png", h.base))
        .send()
        .await
        .expect("file");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let (status, stats) = h.get("/sim/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["created"], 1);
    assert_eq!(stats["succeeded"], 1);
    assert!(stats.get("callbacksSent").is_some() && stats.get("filesServed").is_some());
}

#[tokio::test]
async fn public_url_overrides_the_result_base() {
    let h = spawn(KieSimConfig {
        public_url: Some("https://sim.example/".to_owned()),
        ..fast()
    })
    .await;
    let task_id = h.create_ok(&h.edit_body()).await;
    let urls = result_urls(&h.wait_terminal(&task_id).await);
    assert_eq!(urls, [format!("https://sim.example/files/{task_id}-0.png")]);
}

#[tokio::test]
async fn many_concurrent_tasks_all_finish_when_unlimited() {
    let h = spawn(KieSimConfig {
        rate_limit: 0,
        ..fast()
    })
    .await;
    let body = h.edit_body();
    let creates = (0..50).map(|_| h.create_ok(&body));
    let mut ids = futures::future::join_all(creates).await;
    let stats = h.wait_for(|s| s.succeeded == 50).await;
    assert_eq!(
        (stats.created, stats.failed, stats.rate_limited),
        (50, 0, 0)
    );
    let mut listed = h.sim.task_ids();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
}

#[tokio::test]
async fn serve_returns_once_shutdown_is_cancelled() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let sim = KieSim::new(fast(), base);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(Arc::clone(&sim).serve(listener, shutdown.clone()));
    shutdown.cancel();
    let result = tokio::time::timeout(WAIT, server)
        .await
        .expect("stops in time");
    assert!(matches!(result, Ok(Ok(()))));
    assert!(sim.background.is_cancelled());
}

#[tokio::test]
async fn the_balance_is_settable_while_running() {
    let h = spawn(KieSimConfig {
        credits: 10,
        ..fast()
    })
    .await;
    let (_, credit) = h.get("/api/v1/chat/credit").await;
    assert_eq!(credit["data"], 10);
    let task_id = h.create_ok(&h.edit_body()).await;
    h.wait_terminal(&task_id).await;
    let (status, balance) = h.get("/sim/credits").await;
    assert_eq!(
        (status, &balance),
        (StatusCode::OK, &json!({"credits": 10 - CREDITS_PER_IMAGE}))
    );

    // Spent elsewhere on the account: creates get 402 at once.
    let (status, set) = h
        .post("/sim/credits", json!({"credits": 3}).to_string())
        .await;
    assert_eq!((status, &set), (StatusCode::OK, &json!({"credits": 3})));
    let (_, credit) = h.get("/api/v1/chat/credit").await;
    assert_eq!(credit["data"], 3);
    let (status, refused) = h.create(&h.edit_body()).await;
    assert_eq!(
        (status, refused["code"].as_u64()),
        (StatusCode::PAYMENT_REQUIRED, Some(402))
    );
    assert_eq!(h.sim.stats().no_credits, 1);

    // Topped up: creates are accepted again and charged from the new balance.
    let (status, _) = h
        .post("/sim/credits", json!({"credits": 100}).to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let task_id = h.create_ok(&h.edit_body()).await;
    h.wait_terminal(&task_id).await;
    assert_eq!(h.sim.credits(), 100 - CREDITS_PER_IMAGE);

    for bad in [
        "{}",
        r#"{"credits": -1}"#,
        r#"{"credits": "many"}"#,
        "not json",
    ] {
        let (status, answer) = h.post("/sim/credits", bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {answer}");
    }
    assert_eq!(h.sim.credits(), 100 - CREDITS_PER_IMAGE);
}
