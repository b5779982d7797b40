//! Secrets never reach a log line or the bucket: callback tokens (which KIE echoes back in
//! `param`), API keys, webhook secrets and `/files` signatures, with every darkroom and request log at
//! TRACE. It runs alone in a process of its own (`harness::alone`) because it installs the global
//! log subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{alone, png, spawn_app};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const KEY: &str = "dk_logcheck_0123456789abcdef";

#[tokio::test]
async fn tokens_keys_and_signatures_are_never_logged_or_stored() {
    if !alone("no_secrets_in_logs::tokens_keys_and_signatures_are_never_logged_or_stored") {
        return;
    }
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("darkroom=trace,tower_http=trace,axum=trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let app = spawn_app(&[
        ("DARKROOM_API_KEYS", &format!("logcheck:{KEY}")),
        ("KIE_WEBHOOK_HMAC_KEY", "whk_logcheck"),
    ])
    .await;
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(png(20, 20)).file_name("a.png"),
    );
    let up: Value = app
        .http
        .post(app.url("/api/upload"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload = &up["uploaded"][0];
    let answer: Value = app
        .http
        .post(app.url("/api/generate"))
        .bearer_auth(KEY)
        .json(&json!({"prompt": "p", "uploads": [{"key": upload["key"], "url": upload["url"]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = answer["taskIds"][0].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status: Value = app
            .http
            .get(app.url(&format!("/api/task-status?taskId={id}")))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "completed" {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the task did not complete within 60 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = status["providerTaskId"].as_str().unwrap();
    let callback = app.sim.as_ref().unwrap().callback_url(pid).unwrap();
    let token = callback.split("token=").nth(1).unwrap().to_owned();
    // A forged callback with a wrong token and one with the right token but no signature.
    for url in [
        format!(
            "{}?token={}",
            callback.split('?').next().unwrap(),
            "f".repeat(64)
        ),
        callback.clone(),
    ] {
        let response = app
            .http
            .post(&url)
            .json(&json!({"data": {"taskId": pid, "param": format!("{{\"callBackUrl\":\"{callback}\"}}")}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    // The files open, so their signatures went through the request log too.
    let result_url = status["resultUrls"][0].as_str().unwrap();
    assert_eq!(app.http.get(result_url).send().await.unwrap().status(), 200);
    let signature = result_url.split("sig=").nth(1).unwrap().to_owned();

    // The key's webhook secret, read and rotated (the rotation is logged, by key name).
    let mut webhook_secrets = Vec::new();
    for (method, path) in [
        (reqwest::Method::GET, "/api/webhook-secret"),
        (reqwest::Method::POST, "/api/webhook-secret/rotate"),
    ] {
        let (_, answer) = app.send(method, path, Some(KEY), None).await;
        let secret = answer["secret"].as_str().unwrap();
        // The base64 part is the secret; the prefix alone proves nothing.
        webhook_secrets.push(secret.trim_start_matches("whsec_").to_owned());
    }

    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let record = app
        .blobs
        .get_bytes(&format!("kie-tasks/{id}.json"))
        .await
        .unwrap();
    let record = String::from_utf8(record.to_vec()).unwrap();
    let lines = logs.lines().count();
    let in_logs: usize = [
        token.as_str(),
        KEY,
        signature.as_str(),
        webhook_secrets[0].as_str(),
        webhook_secrets[1].as_str(),
    ]
    .iter()
    .map(|secret| logs.matches(secret).count())
    .sum();
    let in_record: usize = [token.as_str(), KEY]
        .iter()
        .map(|secret| record.matches(secret).count())
        .sum();
    println!(
        "secrets: {lines} log lines at TRACE searched for the callback token, the API key, a file signature and two webhook secrets: {in_logs} found; the task record searched for the token and the key: {in_record} found"
    );
    assert!(lines > 20, "the logs were captured: {lines} lines");
    assert!(
        logs.contains("path=/api/callback/"),
        "request spans are logged"
    );
    assert!(logs.contains(&id), "the task is logged by id");
    for (what, secret) in [
        ("callback token", token.as_str()),
        ("API key", KEY),
        ("file signature", signature.as_str()),
        ("webhook secret", webhook_secrets[0].as_str()),
        ("rotated webhook secret", webhook_secrets[1].as_str()),
    ] {
        assert!(!logs.contains(secret), "the {what} is in the log");
    }
    assert!(
        logs.contains("webhook secret rotated"),
        "the rotation is logged"
    );
    // The record keeps the task's own (signed) URLs, as the status answer does; never the
    // callback token or the key.
    for (what, secret) in [("callback token", token.as_str()), ("API key", KEY)] {
        assert!(!record.contains(secret), "the {what} is in the task record");
    }
}
