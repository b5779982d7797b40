//! Outbound webhooks: signed per Standard Webhooks (checked here with our own HMAC, not
//! darkroom's signer), retried after the receiver answers 500, one per task of a batch;
//! with API keys, signed with each key's own secret (`/api/webhook-secret`), and with both
//! secrets for a while after a rotation.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{TestApp, spawn_app};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::Connection;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ALICE: &str = "dk_alice_0123456789abcdef";
const BOB: &str = "dk_bob_0123456789abcdefgh";

#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    answered: u16,
}

/// A webhook receiver on loopback that fails the first `failures` requests with 500.
async fn receiver(failures: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let log: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = log.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap();
                let status = if seen.len() < failures { 500 } else { 204 };
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                seen.push(Received {
                    id: header("webhook-id"),
                    timestamp: header("webhook-timestamp"),
                    signature: header("webhook-signature"),
                    body: body.to_vec(),
                    answered: status,
                });
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("127.0.0.1:{}", addr.port()), log)
}

/// The receiver's side of Standard Webhooks: HMAC-SHA256 over "{id}.{timestamp}.{body}"
/// keyed with the base64-decoded secret.
fn expected_signature(received: &Received, secret: &str) -> String {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", received.id, received.timestamp).as_bytes());
    mac.update(&received.body);
    BASE64.encode(mac.finalize().into_bytes())
}

/// The `v1,` signatures of a delivery, in the order sent (space-separated).
fn signatures(received: &Received) -> Vec<&str> {
    received
        .signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .collect()
}

/// Whether any signature of the delivery verifies under `secret`.
fn verify_with(received: &Received, secret: &str) -> bool {
    let expected = expected_signature(received, secret);
    signatures(received).contains(&expected.as_str())
}

fn verify(received: &Received) -> bool {
    verify_with(received, SECRET)
}

/// A request as API key `key` (or without one).
/// Uploads an image as `key` and queues one task from it with `webhookUrl`; the task id.
async fn submit_as(app: &TestApp, key: &str, webhook_url: &str) -> String {
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(crate::harness::png(24, 16)).file_name("a.png"),
    );
    let response = app
        .http
        .post(app.url("/api/upload"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let up: Value = response.json().await.unwrap();
    let body = json!({
        "prompt": "p",
        "uploads": [{"key": up["uploaded"][0]["key"]}],
        "webhookUrl": webhook_url,
    });
    let (code, answer) = app
        .send(
            reqwest::Method::POST,
            "/api/generate",
            Some(key),
            Some(&body),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    answer["taskIds"][0].as_str().unwrap().to_owned()
}

/// `GET /api/webhook-secret` as `key`: the whole answer.
async fn secret_of(app: &TestApp, key: &str) -> Value {
    let (code, body) = app
        .send(reqwest::Method::GET, "/api/webhook-secret", Some(key), None)
        .await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The delivery of `task_id` among those received (waiting for it up to `timeout`).
async fn delivery_of(
    log: &Arc<Mutex<Vec<Received>>>,
    task_id: &str,
    timeout: Duration,
) -> Received {
    let start = Instant::now();
    loop {
        let found = log.lock().unwrap().iter().find_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).ok()?;
            (body["data"]["taskId"] == task_id).then(|| r.clone())
        });
        if let Some(found) = found {
            return found;
        }
        assert!(
            start.elapsed() < timeout,
            "no webhook for {task_id} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(
    log: &Arc<Mutex<Vec<Received>>>,
    count: usize,
    timeout: Duration,
) -> Vec<Received> {
    let start = Instant::now();
    loop {
        let seen = log.lock().unwrap().clone();
        if seen.len() >= count {
            return seen;
        }
        assert!(
            start.elapsed() < timeout,
            "only {} of {count} webhook calls after {timeout:?}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn webhook_is_signed_and_retried_after_500() {
    let (host, log) = receiver(2).await;
    let app = spawn_app(&[
        ("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str()),
        ("DARKROOM_WEBHOOK_SECRET", SECRET),
        ("DARKROOM_WEBHOOK_FIRST_RETRY_MS", "300"),
    ])
    .await;
    let start = Instant::now();
    let ids = app
        .generate_many(1, json!({"webhookUrl": format!("http://{host}/hook")}))
        .await;
    // Two 500s: the first retry after 300 ms, the second on the Standard Webhooks
    // schedule (5 minutes) — too long for a test, so check the first retry and the
    // durable state instead.
    let calls = wait_for(&log, 2, Duration::from_secs(30)).await;
    let took = start.elapsed();
    assert_eq!(calls[0].answered, 500);
    assert_eq!(calls[1].answered, 500);
    assert_eq!(
        calls[0].id, calls[1].id,
        "the same webhook-id on every attempt"
    );
    assert!(calls[0].id.starts_with("msg_"));
    for call in &calls {
        assert!(verify(call), "signature verifies: {call:?}");
        let ts: i64 = call.timestamp.parse().unwrap();
        assert!(
            (ts - chrono::Utc::now().timestamp()).abs() < 60,
            "timestamp is now"
        );
        let body: Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(body["type"], "task.succeeded", "{body}");
        assert_eq!(body["data"]["taskId"], ids[0].as_str());
        assert_eq!(body["data"]["state"], "succeeded");
        assert!(!body["data"]["resultUrls"].as_array().unwrap().is_empty());
    }
    // A tampered body or another secret does not verify.
    let mut tampered = calls[0].clone();
    tampered.body.push(b' ');
    assert!(!verify(&tampered));
    println!(
        "webhook_is_signed_and_retried_after_500: 2 attempts (500, 500) within {took:?}, same webhook-id {}, signatures verified with an independent HMAC; next retry scheduled per Standard Webhooks",
        calls[0].id
    );
}

#[tokio::test]
async fn webhook_delivered_after_one_failure_and_once_per_batch_task() {
    let (host, log) = receiver(1).await;
    let app = spawn_app(&[
        ("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str()),
        ("DARKROOM_WEBHOOK_SECRET", SECRET),
        ("DARKROOM_WEBHOOK_FIRST_RETRY_MS", "200"),
    ])
    .await;
    let (status, up) = app
        .upload(&[
            ("a.png", crate::harness::png(30, 20)),
            ("b.png", crate::harness::png(20, 30)),
        ])
        .await;
    assert_eq!(status, 200, "{up}");
    let uploads: Vec<Value> = up["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| json!({"key": u["key"], "url": u["url"]}))
        .collect();
    let (code, batch) = app
        .post_json(
            "/api/batches",
            &json!({"prompt": "p", "uploads": uploads, "webhookUrl": format!("http://{host}/hook")}),
        )
        .await;
    assert_eq!(code, 200, "{batch}");
    // One 500, then both delivered: three calls, two distinct ids, each finally 2xx.
    wait_for(&log, 3, Duration::from_secs(30)).await;
    // Both deliveries are recorded as done; then the server stops, finishing any attempt in
    // flight. Nothing can be sent after that, so the receiver's log is final, and the rows
    // say whether anything was left to send.
    let deliveries = |dir: std::path::PathBuf| async move {
        let db = dir.join("darkroom.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, attempts FROM webhook_deliveries ORDER BY id")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        rows
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while deliveries(app.dir.path().to_owned())
        .await
        .iter()
        .any(|(state, _)| state == "pending")
    {
        assert!(
            Instant::now() < deadline,
            "deliveries still pending after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let data = app.stop().await;
    let rows = deliveries(data.path().to_owned()).await;
    let calls_after = log.lock().unwrap().clone();
    let attempts: i64 = rows.iter().map(|(_, n)| n).sum();
    println!(
        "webhook per batch task: deliveries {rows:?} (state, attempts) after the server stopped; calls received {}",
        calls_after.len()
    );
    assert!(
        rows.iter().all(|(state, _)| state == "delivered"),
        "{rows:?}"
    );
    assert_eq!(
        calls_after.len() as i64,
        attempts,
        "each recorded attempt reached the receiver once: {calls_after:?}"
    );
    assert_eq!(
        calls_after.len(),
        3,
        "no delivery repeats after success: {calls_after:?}"
    );
    let mut delivered: Vec<String> = calls_after
        .iter()
        .filter(|c| c.answered == 204)
        .map(|c| {
            assert!(verify(c));
            let body: Value = serde_json::from_slice(&c.body).unwrap();
            assert_eq!(body["data"]["batchId"], batch["batchId"]);
            body["data"]["taskId"].as_str().unwrap().to_owned()
        })
        .collect();
    delivered.sort();
    let mut expected: Vec<String> = batch["taskIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    expected.sort();
    assert_eq!(delivered, expected, "one delivery per task of the batch");
}

#[tokio::test]
async fn run_pending_drives_deliveries_without_the_workers_or_real_time() {
    let (host, log) = receiver(1).await;
    let app = spawn_app(&[
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str()),
        ("DARKROOM_WEBHOOK_SECRET", SECRET),
        ("DARKROOM_WEBHOOK_FIRST_RETRY_MS", "0"),
    ])
    .await;
    let ids = app
        .generate_many(1, json!({"webhookUrl": format!("http://{host}/hook")}))
        .await;
    let (code, canceled) = app
        .post_json(&format!("/api/tasks/{}/cancel", ids[0]), &json!({}))
        .await;
    assert_eq!(code, 200, "{canceled}");
    // The webhook lane is stepped like the others: a 500, the retry due at once, a 204.
    app.engine.run_pending().await.unwrap();
    let calls = log.lock().unwrap().clone();
    let answers: Vec<u16> = calls.iter().map(|c| c.answered).collect();
    assert_eq!(answers, [500, 204], "{calls:?}");
    assert!(calls.iter().all(verify));
    assert_eq!(
        calls[0].id, calls[1].id,
        "the same webhook-id on every attempt"
    );
    let body: Value = serde_json::from_slice(&calls[1].body).unwrap();
    assert_eq!(body["type"], "task.canceled");
    app.engine.run_pending().await.unwrap();
    assert_eq!(log.lock().unwrap().len(), 2, "nothing is delivered twice");
}

#[tokio::test]
async fn webhook_to_a_private_address_is_refused_not_retried() {
    // Not in DARKROOM_TRUSTED_FETCH_HOSTS: loopback over http is refused by the guard.
    let (host, log) = receiver(0).await;
    let app = spawn_app(&[("DARKROOM_WEBHOOK_FIRST_RETRY_MS", "100")]).await;
    app.generate_many(1, json!({"webhookUrl": format!("http://{host}/hook")}))
        .await;
    // The delivery was attempted and given up at once (a refused URL does not change), and
    // the guarded client never connected.
    let db = app.dir.path().join("darkroom.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (state, attempts, error) = loop {
        let row: (String, i64, Option<String>) =
            sqlx::query_as("SELECT state, attempts, last_error FROM webhook_deliveries")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        if row.0 != "pending" {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "the delivery was never attempted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state, "failed", "refused, not retried");
    assert_eq!(attempts, 1, "one attempt, no retries");
    assert!(
        log.lock().unwrap().is_empty(),
        "the guarded client connected"
    );
    println!(
        "webhook to a private address: {state} after {attempts} attempt ({}); connections to the receiver: {}",
        error.unwrap_or_default(),
        log.lock().unwrap().len()
    );
}

/// Two keys: each key's deliveries verify under its own secret (as served by
/// `GET /api/webhook-secret`) and under neither the other key's nor the instance secret.
#[tokio::test]
async fn each_key_signs_its_webhooks_with_its_own_secret() {
    let (host, log) = receiver(0).await;
    let keys = format!("alice:{ALICE},bob:{BOB}");
    let app = spawn_app(&[
        ("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str()),
        ("DARKROOM_WEBHOOK_SECRET", SECRET),
        ("DARKROOM_API_KEYS", keys.as_str()),
    ])
    .await;
    let alice = secret_of(&app, ALICE).await;
    let bob = secret_of(&app, BOB).await;
    let (alice, bob) = (
        alice["secret"].as_str().unwrap().to_owned(),
        bob["secret"].as_str().unwrap().to_owned(),
    );
    for secret in [&alice, &bob] {
        assert!(secret.starts_with("whsec_"), "{secret}");
        let bytes = BASE64.decode(&secret["whsec_".len()..]).unwrap();
        assert_eq!(bytes.len(), 32);
    }
    assert_ne!(alice, bob);
    assert_ne!(alice, SECRET);
    // Asking again gives the same secret.
    assert_eq!(secret_of(&app, ALICE).await["secret"], alice.as_str());

    let url = format!("http://{host}/hook");
    let alice_task = submit_as(&app, ALICE, &url).await;
    let bob_task = submit_as(&app, BOB, &url).await;
    let alice_call = delivery_of(&log, &alice_task, Duration::from_secs(30)).await;
    let bob_call = delivery_of(&log, &bob_task, Duration::from_secs(30)).await;
    for (call, own, other) in [(&alice_call, &alice, &bob), (&bob_call, &bob, &alice)] {
        assert_eq!(signatures(call).len(), 1, "one signature: {call:?}");
        assert!(verify_with(call, own), "verifies under its key's secret");
        assert!(
            !verify_with(call, other),
            "not under the other key's secret"
        );
        assert!(!verify_with(call, SECRET), "not under the instance secret");
    }
    println!(
        "each_key_signs_its_webhooks_with_its_own_secret: {} and {} verified under their own keys' secrets only",
        alice_call.id, bob_call.id
    );
}

/// After `POST /api/webhook-secret/rotate` the next delivery carries two signatures: the
/// new secret's first, then the old one's.
#[tokio::test]
async fn after_a_rotation_deliveries_carry_both_signatures() {
    let (host, log) = receiver(0).await;
    let keys = format!("alice:{ALICE},bob:{BOB}");
    let app = spawn_app(&[
        ("DARKROOM_TRUSTED_FETCH_HOSTS", host.as_str()),
        ("DARKROOM_API_KEYS", keys.as_str()),
    ])
    .await;
    let url = format!("http://{host}/hook");
    let before = secret_of(&app, ALICE).await;
    assert_eq!(before["previousValidUntil"], Value::Null, "{before}");
    let old = before["secret"].as_str().unwrap().to_owned();
    let first_task = submit_as(&app, ALICE, &url).await;
    let first = delivery_of(&log, &first_task, Duration::from_secs(30)).await;
    assert_eq!(signatures(&first).len(), 1);
    assert!(verify_with(&first, &old));

    let (code, rotated) = app
        .send(
            reqwest::Method::POST,
            "/api/webhook-secret/rotate",
            Some(ALICE),
            None,
        )
        .await;
    assert_eq!(code, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{rotated}");
    let until =
        chrono::DateTime::parse_from_rfc3339(rotated["previousValidUntil"].as_str().unwrap())
            .unwrap();
    let hours = (until.timestamp() - chrono::Utc::now().timestamp()) as f64 / 3600.0;
    assert!((23.9..=24.0).contains(&hours), "{rotated}");
    let created =
        chrono::DateTime::parse_from_rfc3339(rotated["createdAt"].as_str().unwrap()).unwrap();
    assert!((chrono::Utc::now().timestamp() - created.timestamp()).abs() < 60);
    // GET now shows the new secret, and bob's is untouched.
    let after = secret_of(&app, ALICE).await;
    assert_eq!(after["secret"], new.as_str());
    assert_eq!(after["previousValidUntil"], rotated["previousValidUntil"]);
    let bob = secret_of(&app, BOB).await;
    assert_eq!(bob["previousValidUntil"], Value::Null);

    let second_task = submit_as(&app, ALICE, &url).await;
    let second = delivery_of(&log, &second_task, Duration::from_secs(30)).await;
    let sent = signatures(&second);
    assert_eq!(sent.len(), 2, "two signatures: {second:?}");
    assert_eq!(
        sent[0],
        expected_signature(&second, &new),
        "the new secret's first"
    );
    assert_eq!(
        sent[1],
        expected_signature(&second, &old),
        "then the old one's"
    );
    assert!(!verify_with(&second, bob["secret"].as_str().unwrap()));
    println!(
        "after_a_rotation_deliveries_carry_both_signatures: before one signature (old), after two (new, old); old valid {hours:.2} h more"
    );
}

/// The secret routes need a key when keys are on (401) and do not exist without keys (404
/// `api_keys_disabled`, pointing at the instance secret).
#[tokio::test]
async fn webhook_secret_routes_need_a_key() {
    let keys = format!("alice:{ALICE}");
    let keyed = spawn_app(&[
        ("DARKROOM_API_KEYS", keys.as_str()),
        ("DARKROOM_WORKERS", "false"),
    ])
    .await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/webhook-secret"),
        (reqwest::Method::POST, "/api/webhook-secret/rotate"),
    ] {
        let (code, body) = keyed.send(method.clone(), path, None, None).await;
        assert_eq!(code, 401, "{method} {path}: {body}");
        assert_eq!(body["code"], "api_key_required");
        let (code, body) = keyed
            .send(
                method.clone(),
                path,
                Some("dk_wrong_0123456789abcdef"),
                None,
            )
            .await;
        assert_eq!(code, 401, "{method} {path}: {body}");
    }
    // The answer is not kept by caches.
    let response = keyed
        .http
        .get(keyed.url("/api/webhook-secret"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");

    let open = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    for (method, path) in [
        (reqwest::Method::GET, "/api/webhook-secret"),
        (reqwest::Method::POST, "/api/webhook-secret/rotate"),
    ] {
        let (code, body) = open.send(method.clone(), path, None, None).await;
        assert_eq!(code, 404, "{method} {path}: {body}");
        assert_eq!(body["code"], "api_keys_disabled", "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("DARKROOM_WEBHOOK_SECRET") && message.contains("webhook_secret"),
            "{message}"
        );
    }
}
