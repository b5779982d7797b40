//! R7 (forged callbacks change nothing), R12 (owner isolation), API keys, limits, CORS and
//! the page's security headers, over real HTTP.

use std::time::{Duration, Instant};

use crate::harness::{TestApp, png, spawn_app};
use darkroom::domain::TaskId;
use darkroom::domain::webhook::sign;
use serde_json::{Value, json};

const HMAC_KEY: &str = "whk_test_0123456789";
const ALICE: &str = "dk_alice_0123456789abcdef";
const BOB: &str = "dk_bob_0123456789abcdefgh";

fn keys_env() -> String {
    format!("alice:{ALICE},bob:{BOB}")
}

async fn upload_as(app: &TestApp, key: Option<&str>, bytes: Vec<u8>) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(bytes).file_name("a.png"),
    );
    let mut request = app.http.post(app.url("/api/upload")).multipart(form);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Uploads one image as `key` and queues one task from it; returns (task id, upload).
async fn task_of(app: &TestApp, key: Option<&str>) -> (String, Value) {
    let (code, up) = upload_as(app, key, png(24, 16)).await;
    assert_eq!(code, 200, "{up}");
    let upload = up["uploaded"][0].clone();
    let body = json!({"prompt": "p", "uploads": [{"key": upload["key"], "url": upload["url"]}]});
    let (code, answer) = app
        .send(reqwest::Method::POST, "/api/generate", key, Some(&body))
        .await;
    assert_eq!(code, 200, "{answer}");
    (answer["taskIds"][0].as_str().unwrap().to_owned(), upload)
}

async fn wait_submitted(app: &TestApp, id: &str) -> darkroom::storage::Task {
    let id = TaskId::parse(id).unwrap();
    let start = Instant::now();
    loop {
        let task = app.repo.get(&id).await.unwrap().unwrap();
        if task.provider_task_id.is_some() && task.state.as_str() == "submitted" {
            return task;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not submitted: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn wait_status(app: &TestApp, id: &str, key: Option<&str>) -> Value {
    let start = Instant::now();
    loop {
        let (code, body) = app
            .send(
                reqwest::Method::GET,
                &format!("/api/task-status?taskId={id}"),
                key,
                None,
            )
            .await;
        assert_eq!(code, 200, "{body}");
        if matches!(body["status"].as_str(), Some("completed" | "failed")) {
            return body;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn success_body(provider_id: &str) -> Value {
    json!({"code": 200, "msg": "Playground task completed successfully.", "data": {
        "taskId": provider_id, "state": "success", "consumeCredits": 4, "costTime": 8,
        "resultJson": "{\"resultUrls\":[\"https://example.com/forged.png\"]}"}})
}

/// R7: every forged callback is refused and the task row is exactly as before; then the
/// real, signed callback is accepted and the task completes.
#[tokio::test]
async fn forged_callbacks_are_refused_and_change_nothing() {
    let app = spawn_app(&[
        ("KIE_WEBHOOK_HMAC_KEY", HMAC_KEY),
        ("DARKROOM_SIM_DROP_RATE", "1"),
        ("DARKROOM_FIRST_POLL_MS", "600000"),
    ])
    .await;
    let sim = app.sim.clone().unwrap();
    let (id, _) = task_of(&app, None).await;
    let (other_id, _) = task_of(&app, None).await;
    let before = wait_submitted(&app, &id).await;
    let other = wait_submitted(&app, &other_id).await;
    let pid = before.provider_task_id.clone().unwrap();
    let good_url = sim.callback_url(&pid).unwrap();
    let good_token = good_url.split("token=").nth(1).unwrap().to_owned();
    let other_token = sim
        .callback_url(other.provider_task_id.as_ref().unwrap())
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap()
        .to_owned();
    let per_task = |token: Option<&str>| match token {
        Some(t) => app.url(&format!("/api/callback/{id}?token={t}")),
        None => app.url(&format!("/api/callback/{id}")),
    };
    let now = chrono::Utc::now().timestamp();
    let good_sig = sign(HMAC_KEY.as_bytes(), &pid, now);
    let ts = now.to_string();
    let signed = |ts: &str, sig: &str| {
        vec![
            ("x-webhook-timestamp", ts.to_owned()),
            ("x-webhook-signature", sig.to_owned()),
        ]
    };
    let body = success_body(&pid);
    let wrong_token = "0".repeat(64);
    type Headers<'a> = Vec<(&'a str, String)>;
    let cases: Vec<(&str, String, Headers)> = vec![
        ("no token", per_task(None), signed(&ts, &good_sig)),
        (
            "wrong token",
            per_task(Some(&wrong_token)),
            signed(&ts, &good_sig),
        ),
        (
            "another task's token",
            per_task(Some(&other_token)),
            signed(&ts, &good_sig),
        ),
        ("empty token", per_task(Some("")), signed(&ts, &good_sig)),
        ("no HMAC headers", per_task(Some(&good_token)), vec![]),
        (
            "missing timestamp",
            per_task(Some(&good_token)),
            vec![("x-webhook-signature", good_sig.clone())],
        ),
        (
            "old timestamp",
            per_task(Some(&good_token)),
            signed(
                &(now - 310).to_string(),
                &sign(HMAC_KEY.as_bytes(), &pid, now - 310),
            ),
        ),
        (
            "future timestamp",
            per_task(Some(&good_token)),
            signed(
                &(now + 310).to_string(),
                &sign(HMAC_KEY.as_bytes(), &pid, now + 310),
            ),
        ),
        (
            "timestamp in ms",
            per_task(Some(&good_token)),
            signed(
                &(now * 1000).to_string(),
                &sign(HMAC_KEY.as_bytes(), &pid, now * 1000),
            ),
        ),
        (
            "bad timestamp",
            per_task(Some(&good_token)),
            signed("yesterday", &good_sig),
        ),
        (
            "empty signature",
            per_task(Some(&good_token)),
            signed(&ts, ""),
        ),
        (
            "v1, signature",
            per_task(Some(&good_token)),
            signed(&ts, "v1,"),
        ),
        (
            "v1,-prefixed signature",
            per_task(Some(&good_token)),
            signed(&ts, &format!("v1,{good_sig}")),
        ),
        (
            "truncated signature",
            per_task(Some(&good_token)),
            signed(&ts, &good_sig[..good_sig.len() - 4]),
        ),
        (
            "one-byte signature",
            per_task(Some(&good_token)),
            signed(&ts, "AA=="),
        ),
        (
            "wrong key",
            per_task(Some(&good_token)),
            signed(&ts, &sign(b"not-the-key", &pid, now)),
        ),
        (
            "other task id signed",
            per_task(Some(&good_token)),
            signed(&ts, &sign(HMAC_KEY.as_bytes(), "another", now)),
        ),
        ("original path, no HMAC", app.url("/api/callback"), vec![]),
        (
            "original path, truncated",
            app.url("/api/callback"),
            signed(&ts, &good_sig[..10]),
        ),
        (
            "original path, old",
            app.url("/api/callback"),
            signed(
                &(now - 400).to_string(),
                &sign(HMAC_KEY.as_bytes(), &pid, now - 400),
            ),
        ),
    ];
    for (name, url, headers) in &cases {
        let mut request = app.http.post(url).json(&body);
        for (header, value) in headers {
            request = request.header(*header, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status == 401, "{name}: expected 401, got {status} {answer}");
    }
    let after = app.repo.get(&before.id).await.unwrap().unwrap();
    println!(
        "R7: {} forged callbacks sent, each answered 401; task row changed: {}",
        cases.len(),
        after != before
    );
    assert_eq!(after, before, "a refused callback changed the task");

    // The genuine article: right token, fresh signature.
    let response = app
        .http
        .post(&good_url)
        .header("x-webhook-timestamp", &ts)
        .header("x-webhook-signature", &good_sig)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let status = wait_status(&app, &id, None).await;
    assert_eq!(status["status"], "completed", "{status}");
    // The result came from recordInfo, not the forged URL in the body.
    assert!(!status.to_string().contains("forged.png"), "{status}");
}

/// With the key configured, the in-process simulator signs as KIE does, and the whole
/// path works.
#[tokio::test]
async fn signed_callbacks_from_the_simulator_complete_tasks() {
    let app = spawn_app(&[("KIE_WEBHOOK_HMAC_KEY", HMAC_KEY)]).await;
    let ids = app.generate_from_upload(2, json!({})).await;
    for id in ids {
        let status = app.wait_final(&id, Duration::from_secs(30)).await;
        assert_eq!(status["status"], "completed", "{status}");
    }
    assert_eq!(app.sim.as_ref().unwrap().stats().callback_failures, 0);
}

/// R12: key B cannot see, use or open anything of key A's; every attempt is the same
/// answer as for something that does not exist.
#[tokio::test]
async fn owners_are_isolated() {
    let app = spawn_app(&[("DARKROOM_API_KEYS", &keys_env())]).await;
    let (id, upload) = task_of(&app, Some(ALICE)).await;
    let done = wait_status(&app, &id, Some(ALICE)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let pid = done["providerTaskId"].as_str().unwrap().to_owned();
    let result_url = done["resultUrls"][0].as_str().unwrap().to_owned();
    let upload_url = upload["url"].as_str().unwrap().to_owned();
    assert!(upload_url.contains("?sig="), "{upload_url}");

    let missing = TaskId::new().to_string();
    let (code, missing_answer) = app
        .send(
            reqwest::Method::GET,
            &format!("/api/task-status?taskId={missing}"),
            Some(BOB),
            None,
        )
        .await;
    assert_eq!(code, 404);

    let mut probes = 0;
    // Reads of A's task by id and by provider id (cached by A's poll just before).
    for task_ref in [&id, &pid] {
        let (code, body) = app
            .send(
                reqwest::Method::GET,
                &format!("/api/task-status?taskId={task_ref}"),
                Some(BOB),
                None,
            )
            .await;
        assert_eq!(code, 404, "{body}");
        assert_eq!(body["code"], missing_answer["code"]);
        probes += 1;
    }
    // The task API: read, cancel, retry by id; listings (also asking for A by name).
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/tasks/{id}")),
        (reqwest::Method::POST, format!("/api/tasks/{id}/cancel")),
        (reqwest::Method::POST, format!("/api/tasks/{id}/retry")),
    ] {
        let (code, body) = app.send(method.clone(), &path, Some(BOB), None).await;
        assert_eq!(code, 404, "{method} {path}: {body}");
        assert_eq!(body["code"], "task_not_found");
        probes += 1;
    }
    for path in [
        "/api/tasks",
        "/api/tasks?owner=alice",
        "/api/tasks?state=succeeded",
    ] {
        let (code, body) = app.send(reqwest::Method::GET, path, Some(BOB), None).await;
        assert_eq!(code, 200, "{body}");
        // Bob has no task yet: his listings are empty, whatever they ask for.
        assert_eq!(body["tasks"], json!([]), "{path}: {body}");
        probes += 1;
    }
    // A's upload as B's input, by key and by URL (signed and unsigned), and A's result.
    let unsigned_upload = upload_url.split('?').next().unwrap().to_owned();
    for body in [
        json!({"prompt": "p", "uploads": [{"key": upload["key"]}]}),
        json!({"prompt": "p", "imageUrls": [upload_url]}),
        json!({"prompt": "p", "imageUrls": [unsigned_upload]}),
        json!({"prompt": "p", "imageUrls": [result_url]}),
        json!({"prompt": "p", "imageUrls": ["https://example.com/a.png"], "referenceUploads": [{"key": upload["key"]}]}),
    ] {
        let (code, answer) = app
            .send(
                reqwest::Method::POST,
                "/api/generate",
                Some(BOB),
                Some(&body),
            )
            .await;
        assert_eq!(
            (code, answer["code"].as_str()),
            (400, Some("upload_not_found")),
            "{body}: {answer}"
        );
        probes += 1;
    }
    // Files: only the exact signed URL opens, with no header at all (an <img>).
    let record = format!("/files/kie-tasks/{id}.json");
    let tampered = format!("{}x", &upload_url[..upload_url.len() - 1]);
    let resigned = upload_url.replace(
        upload["key"].as_str().unwrap(),
        result_url
            .split("/files/")
            .nth(1)
            .unwrap()
            .split('?')
            .next()
            .unwrap(),
    );
    for url in [
        unsigned_upload.clone(),
        tampered,
        resigned,
        result_url.split('?').next().unwrap().to_owned(),
        app.url(&record),
        format!("{}?sig=", unsigned_upload),
    ] {
        let response = app.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 404, "{url}");
        probes += 1;
    }
    // Nothing of B's own changes: B's task is B's.
    let (bob_task, _) = task_of(&app, Some(BOB)).await;
    let (code, _) = app
        .send(
            reqwest::Method::GET,
            &format!("/api/task-status?taskId={bob_task}"),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(code, 404);
    probes += 1;
    println!(
        "R12: {probes} requests across owners (status by id and provider id; task read, cancel, retry and listings; inputs by key and URL; files unsigned/tampered/re-signed), each answered as for something missing"
    );

    // The owner sees its own task in the task API.
    let (code, body) = app
        .send(
            reqwest::Method::GET,
            &format!("/api/tasks/{id}"),
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(
        (code, body["taskId"].as_str()),
        (200, Some(id.as_str())),
        "{body}"
    );
    let (code, body) = app
        .send(reqwest::Method::GET, "/api/tasks", Some(ALICE), None)
        .await;
    assert_eq!(code, 200);
    assert!(
        body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["taskId"] == id.as_str())
    );

    // The owner's own URLs open without any header.
    for url in [&upload_url, &result_url] {
        let response = app.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert!(
            response.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("sandbox")
        );
    }
}

#[tokio::test]
async fn keys_are_required_on_client_routes_only() {
    let app = spawn_app(&[("DARKROOM_API_KEYS", &keys_env())]).await;
    let (code, info) = app
        .send(reqwest::Method::GET, "/api/info", None, None)
        .await;
    assert_eq!((code, info["apiKeysRequired"].as_bool()), (200, Some(true)));
    for path in ["/", "/healthz", "/readyz", "/assets/app.js"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    for (method, path) in [
        (reqwest::Method::POST, "/api/generate"),
        (reqwest::Method::GET, "/api/task-status?taskId=x"),
        (reqwest::Method::POST, "/api/upload"),
        (reqwest::Method::GET, "/api/tasks"),
        (reqwest::Method::GET, "/no-such-route"),
    ] {
        for key in [None, Some("dk_wrong_0123456789abcdef"), Some("")] {
            let mut request = app.http.request(method.clone(), app.url(path));
            if let Some(key) = key {
                request = request.header("authorization", format!("Bearer {key}"));
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{method} {path} {key:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert!(
                matches!(
                    body["code"].as_str(),
                    Some("api_key_required" | "invalid_api_key")
                ),
                "{body}"
            );
        }
    }
    // Keys off (the embedded default): the same routes answer without one.
    let open = spawn_app(&[]).await;
    let (code, info) = open
        .send(reqwest::Method::GET, "/api/info", None, None)
        .await;
    assert_eq!(
        (code, info["apiKeysRequired"].as_bool()),
        (200, Some(false))
    );
    let (code, _) = open
        .send(
            reqwest::Method::GET,
            "/api/task-status?taskId=x",
            None,
            None,
        )
        .await;
    assert_eq!(code, 404);
}

/// Whether `passed` requests may have passed a bucket of `burst` refilled at `per_sec` within
/// `elapsed`, which starts before the first of them was sent and ends after the last was
/// answered: at most the burst plus what refilled meanwhile, however slow the machine.
fn within_limit(passed: u64, burst: u64, per_sec: u64, elapsed: Duration) -> bool {
    passed <= burst + (elapsed.as_secs_f64() * per_sec as f64).floor() as u64
}

#[tokio::test]
async fn per_key_rate_limit_and_pending_task_cap() {
    const PER_SEC: u64 = 1;
    const BURST: u64 = 8;
    let app = spawn_app(&[
        ("DARKROOM_API_KEYS", &keys_env()),
        ("DARKROOM_KEY_RATE_PER_SEC", &PER_SEC.to_string()),
        ("DARKROOM_KEY_RATE_BURST", &BURST.to_string()),
        ("DARKROOM_KEY_MAX_PENDING_TASKS", "2"),
        ("DARKROOM_SIM_DROP_RATE", "1"),
        ("DARKROOM_FIRST_POLL_MS", "600000"),
    ])
    .await;
    // Every request of Alice's goes through her key's bucket first; it starts full.
    let start = Instant::now();
    let mut passed = 0u64;
    // Two tasks fit under the cap; the third is refused while they are unfinished.
    for _ in 0..2 {
        task_of(&app, Some(ALICE)).await;
        passed += 2; // an upload and a generate, both answered 200
    }
    let (code, up) = upload_as(&app, Some(ALICE), png(8, 8)).await;
    assert_eq!(code, 200, "{up}");
    passed += 1;
    let body = json!({"prompt": "p", "uploads": [{"key": up["uploaded"][0]["key"]}]});
    let (code, answer) = app
        .send(
            reqwest::Method::POST,
            "/api/generate",
            Some(ALICE),
            Some(&body),
        )
        .await;
    assert_eq!(
        (code, answer["code"].as_str()),
        (429, Some("too_many_pending_tasks")),
        "{answer}"
    );
    passed += 1;
    // Alice goes on until her key is limited. However the requests are spread in time, no
    // more pass than the burst plus the refill, and none is refused before the burst is used.
    loop {
        let response = app
            .http
            .get(app.url("/api/task-status?taskId=x"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        if code == 429 {
            assert!(response.headers().contains_key("retry-after"));
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited", "{body}");
            break;
        }
        assert_eq!(code, 404);
        passed += 1;
        assert!(
            within_limit(passed, BURST, PER_SEC, start.elapsed()),
            "{passed} requests passed in {:?}",
            start.elapsed()
        );
    }
    let elapsed = start.elapsed();
    assert!(passed >= BURST, "limited after {passed} requests");
    let (code, _) = app
        .send(
            reqwest::Method::GET,
            "/api/task-status?taskId=x",
            Some(BOB),
            None,
        )
        .await;
    assert_eq!(code, 404, "the other key is not limited");
    println!(
        "per-key limits: a generate over the pending-task cap -> 429 too_many_pending_tasks; {passed} of Alice's requests passed in {:.2} s before the first 429 rate_limited; Bob's next request -> {code}",
        elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn callback_routes_have_their_own_rate_limit() {
    const PER_SEC: u64 = 1;
    const BURST: u64 = 3;
    let app = spawn_app(&[
        ("DARKROOM_CALLBACK_RATE_PER_SEC", &PER_SEC.to_string()),
        ("DARKROOM_CALLBACK_RATE_BURST", &BURST.to_string()),
    ])
    .await;
    // The bucket starts full: callbacks pass (404, no such task) until it is empty, then
    // one refill at a time. Call until one is refused, checking the count against the time.
    let start = Instant::now();
    let mut passed = 0u64;
    loop {
        let response = app
            .http
            .post(app.url("/api/callback"))
            .json(&json!({"data": {"taskId": "nope"}}))
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        if code == 429 {
            assert!(response.headers().contains_key("retry-after"));
            break;
        }
        assert_eq!(code, 404);
        passed += 1;
        assert!(
            within_limit(passed, BURST, PER_SEC, start.elapsed()),
            "{passed} callbacks passed in {:?}",
            start.elapsed()
        );
    }
    let elapsed = start.elapsed();
    assert!(passed >= BURST, "limited after {passed} callbacks");
    // Client routes are not affected.
    let (code, _) = app.get_json("/api/task-status?taskId=x").await;
    assert_eq!(code, 404);
    println!(
        "callback limit: {passed} callbacks passed in {:.3} s before the first 429; a client route then -> {code}",
        elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn cors_only_for_listed_origins_and_page_headers() {
    let app = spawn_app(&[("DARKROOM_CORS_ORIGINS", "https://app.example.com")]).await;
    for (origin, allowed) in [
        ("https://app.example.com", true),
        ("https://evil.example", false),
    ] {
        let response = app
            .http
            .request(reqwest::Method::OPTIONS, app.url("/api/generate"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        let allow = response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            allow.as_deref() == Some(origin),
            allowed,
            "{origin}: {allow:?}"
        );
    }
    let plain = spawn_app(&[]).await;
    let response = plain
        .http
        .get(plain.url("/api/info"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("access-control-allow-origin")
    );

    let page = app.http.get(app.url("/")).send().await.unwrap();
    let headers = page.headers();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
}

/// `darkroom keys create` stores only a hash; the printed key works against a server on
/// that database; `keys list` never shows it again.
#[tokio::test]
async fn keys_made_with_the_cli_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/keys.db", dir.path().display());
    // Each command's output, with how long it took in its stderr. The command is awaited,
    // never waited for blocking: the server runs on this test's runtime, and a blocked
    // runtime leaves a transaction the server has open stuck, so the command's write waits
    // out SQLite's busy timeout and fails with "database is locked".
    let run = async |args: &[&str]| {
        let started = Instant::now();
        let mut output = tokio::process::Command::new(env!("CARGO_BIN_EXE_darkroom"))
            .args(args)
            .env("DARKROOM_DATABASE_URL", &db)
            .env("DARKROOM_DATA_DIR", dir.path())
            .env("DARKROOM_LOG", "warn")
            .output()
            .await
            .unwrap();
        output
            .stderr
            .extend(format!("[took {:?}]", started.elapsed()).into_bytes());
        output
    };
    let created = run(&["keys", "create", "carol"]).await;
    assert!(created.status.success(), "{created:?}");
    let stdout = String::from_utf8(created.stdout).unwrap();
    let key = stdout
        .lines()
        .find(|l| l.starts_with("dk_"))
        .expect("the key is printed")
        .to_owned();
    let again = run(&["keys", "create", "carol"]).await;
    assert!(!again.status.success());
    let listed = String::from_utf8(run(&["keys", "list"]).await.stdout).unwrap();
    assert!(
        listed.contains("carol") && !listed.contains(&key),
        "{listed}"
    );
    let database = std::fs::read(dir.path().join("keys.db")).unwrap();
    assert!(!database.windows(key.len()).any(|w| w == key.as_bytes()));

    let app = spawn_app(&[("DARKROOM_DATABASE_URL", &db)]).await;
    let (code, info) = app
        .send(reqwest::Method::GET, "/api/info", None, None)
        .await;
    assert_eq!((code, info["apiKeysRequired"].as_bool()), (200, Some(true)));
    let (code, _) = app
        .send(
            reqwest::Method::GET,
            "/api/task-status?taskId=x",
            None,
            None,
        )
        .await;
    assert_eq!(code, 401);
    let (code, _) = app
        .send(
            reqwest::Method::GET,
            "/api/task-status?taskId=x",
            Some(&key),
            None,
        )
        .await;
    assert_eq!(code, 404);
    let revoked = run(&["keys", "revoke", "carol"]).await;
    assert!(revoked.status.success(), "{revoked:?}");
    // docs/SECURITY.md ("API keys"): a revoked key stops working within 30 s on running servers (its cached
    // lookup lives that long); this server saw the key a moment ago. `since` is taken after
    // `keys revoke` has returned, so a request sent 30 s after it must be refused.
    let since = Instant::now();
    let mut last_accepted = None;
    let refused_at = loop {
        let sent = since.elapsed();
        let (code, _) = app
            .send(
                reqwest::Method::GET,
                "/api/task-status?taskId=x",
                Some(&key),
                None,
            )
            .await;
        if code == 401 {
            break sent;
        }
        assert_eq!(code, 404, "the key still works until it is refused");
        assert!(
            sent < Duration::from_secs(30),
            "the revoked key still worked for a request sent {sent:?} after `keys revoke`"
        );
        last_accepted = Some(sent);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "a revoked key: last accepted on a request sent {} after `keys revoke`, refused on one sent {:.2} s after it",
        last_accepted.map_or("never".to_owned(), |t| format!("{:.2} s", t.as_secs_f64())),
        refused_at.as_secs_f64()
    );
}

/// R12 for what arrived with live progress: batches, the long-poll and the event stream.
#[tokio::test]
async fn owners_are_isolated_on_batches_waits_and_streams() {
    // Workers off: Alice's task waits in the queue until the streams are open.
    let app = spawn_app(&[
        ("DARKROOM_API_KEYS", &keys_env()),
        ("DARKROOM_WORKERS", "false"),
    ])
    .await;
    let (_, up) = upload_as(&app, Some(ALICE), png(12, 12)).await;
    let body = json!({"prompt": "p", "uploads": [{"key": up["uploaded"][0]["key"]}]});
    let (code, batch) = app
        .send(
            reqwest::Method::POST,
            "/api/batches",
            Some(ALICE),
            Some(&body),
        )
        .await;
    assert_eq!(code, 200, "{batch}");
    let batch_id = batch["batchId"].as_str().unwrap().to_owned();
    let task_id = batch["taskIds"][0].as_str().unwrap().to_owned();

    let mut probes = 0;
    for (method, path) in [
        (reqwest::Method::GET, format!("/api/batches/{batch_id}")),
        (
            reqwest::Method::POST,
            format!("/api/batches/{batch_id}/cancel"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/batches/{batch_id}/retry"),
        ),
        (reqwest::Method::GET, format!("/api/batches/{batch_id}/zip")),
        (
            reqwest::Method::GET,
            format!("/api/tasks/{task_id}/wait?timeout=0"),
        ),
    ] {
        let (code, answer) = app.send(method.clone(), &path, Some(BOB), None).await;
        assert_eq!(code, 404, "{method} {path} as another key: {answer}");
        probes += 1;
    }
    let (_, listed) = app
        .send(reqwest::Method::GET, "/api/batches", Some(BOB), None)
        .await;
    assert!(
        listed["batches"]
            .as_array()
            .expect("a list of batches")
            .is_empty(),
        "{listed}"
    );

    // Bob's stream asks for Alice's task, and for a batch label of his own (the barrier
    // below); Alice's stream for her task (the control). Both are subscribed once answered.
    const BARRIER: &str = "bobs-barrier";
    let stream = |key: &str, filter: String| {
        let url = app.url(&format!("/api/events?{filter}&access_token={key}"));
        app.http.get(url).send()
    };
    let mut bob_stream = stream(BOB, format!("taskIds={task_id}&batchId={BARRIER}"))
        .await
        .unwrap();
    assert_eq!(bob_stream.status(), 200);
    let mut alice_stream = stream(ALICE, format!("taskIds={task_id}")).await.unwrap();
    assert_eq!(alice_stream.status(), 200);
    // Now Alice's task runs to the end, publishing each step.
    let tasks = app
        .step_until_final(std::slice::from_ref(&task_id), Duration::from_secs(30))
        .await;
    assert_eq!(tasks[0].state.as_str(), "succeeded", "{:?}", tasks[0]);
    // The control: Alice's stream carries her task's events, up to its success.
    let alice_seen = read_until(&mut alice_stream, "\"succeeded\"").await;
    // The barrier: Bob queues a task in his batch. Its event is published after every event
    // of Alice's task and a stream delivers in order, so once Bob's stream shows it, any of
    // Alice's events it were to carry would be in what was read.
    let (code, bob_up) = upload_as(&app, Some(BOB), png(10, 10)).await;
    assert_eq!(code, 200, "{bob_up}");
    let body = json!({"prompt": "p", "batchId": BARRIER,
        "uploads": [{"key": bob_up["uploaded"][0]["key"]}]});
    let (code, bobs) = app
        .send(
            reqwest::Method::POST,
            "/api/generate",
            Some(BOB),
            Some(&body),
        )
        .await;
    assert_eq!(code, 200, "{bobs}");
    let bob_task = bobs["taskIds"][0].as_str().unwrap().to_owned();
    let seen = read_until(&mut bob_stream, &bob_task).await;
    assert!(
        !seen.contains(&task_id),
        "another owner's events leaked: {seen}"
    );
    // And without a key the stream is refused.
    let response = app.http.get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    println!(
        "R12 (live): {probes} requests by another key on a batch, its ZIP and a long-poll -> 404; Alice's stream carried {} events of her task, Bob's {} of them (read up to his own later event)",
        alice_seen.matches(&task_id).count(),
        seen.matches(&task_id).count()
    );
}

/// Reads an event stream until `marker` appears (failing after 30 s); all that was read.
async fn read_until(stream: &mut reqwest::Response, marker: &str) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains(marker) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("{marker} not in the stream ({other:?}): {seen}"),
        }
    }
    seen
}
