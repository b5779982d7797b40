//! The status poll's short way (`http::status_polls`): a poll the status board can answer is
//! answered before the router, and must be answered exactly as the full way answers it.
//! Each check asks the same thing both ways: with the task's answer on the board, and after
//! it was dropped from the board (the full way reads the database, and fills the board for
//! the caller who may see the task).

use std::time::{Duration, Instant};

use crate::harness::{TestApp, serve_png, spawn_app};
use darkroom::domain::TaskId;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const ALICE: &str = "dk_polls_alice_0123456789abcdef";
const BOB: &str = "dk_polls_bob_0123456789abcdefgh";
const ORIGIN: &str = "https://app.example.com";

fn keys() -> String {
    format!("alice:{ALICE},bob:{BOB}")
}

/// One poll: the status, the headers (but `date`, which differs between any two answers)
/// and the JSON body.
async fn poll(
    app: &TestApp,
    id: &str,
    key: Option<&str>,
    origin: Option<&str>,
) -> (u16, HeaderMap, Value) {
    let mut request = app
        .http
        .get(app.url(&format!("/api/task-status?taskId={id}")));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let mut headers = response.headers().clone();
    headers.remove("date");
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// Queues a task of `key`'s; its id.
async fn queue(app: &TestApp, key: &str) -> String {
    let input = serve_png().await;
    let (code, answer) = app
        .send(
            reqwest::Method::POST,
            "/api/generate",
            Some(key),
            Some(&json!({"prompt": "poll", "imageUrls": [input]})),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    answer["taskIds"][0].as_str().unwrap().to_owned()
}

/// How many `GET /api/task-status` answered `status` this instance counted in `/metrics`.
async fn counted_polls(app: &TestApp, key: &str, status: u16) -> u64 {
    let text = app.metrics_text_as(Some(key)).await;
    text.lines()
        .filter(|line| {
            line.starts_with("darkroom_http_requests_total{")
                && line.contains("route=\"/api/task-status\"")
                && line.contains("method=\"GET\"")
                && line.contains(&format!("status=\"{status}\""))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test]
async fn a_poll_answered_from_the_board_is_the_full_way_s_answer() {
    let app = spawn_app(&[
        ("DARKROOM_API_KEYS", &keys()),
        ("DARKROOM_CORS_ORIGINS", ORIGIN),
    ])
    .await;
    let id = queue(&app, ALICE).await;
    let task_id = TaskId::parse(&id).unwrap();
    let mut polls_200 = 0;
    let started = Instant::now();
    loop {
        let (code, _, body) = poll(&app, &id, Some(ALICE), None).await;
        assert_eq!(code, 200, "{body}");
        polls_200 += 1;
        if body["status"] == "completed" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The owner: the same answer, whole, both ways.
    assert!(
        app.board.get(&task_id).is_some(),
        "a finished task's answer is on the board"
    );
    let short = poll(&app, &id, Some(ALICE), None).await;
    app.board.drop_answer(&task_id);
    let full = poll(&app, &id, Some(ALICE), None).await;
    polls_200 += 2;
    assert!(
        app.board.get(&task_id).is_some(),
        "the full way put the answer back"
    );
    assert_eq!(short.0, 200, "{}", short.2);
    assert_eq!(
        short, full,
        "the short way's answer differs from the full way's"
    );
    assert_eq!(short.1["content-type"], "application/json");
    assert_eq!(short.1["cache-control"], "no-store");
    assert_eq!(short.1["x-content-type-options"], "nosniff");
    assert_eq!(short.2["imageUrl"].as_str().map(str::is_empty), Some(false));

    // Another key: Alice's task is "no task", both ways alike.
    let short = poll(&app, &id, Some(BOB), None).await;
    app.board.drop_answer(&task_id);
    let full = poll(&app, &id, Some(BOB), None).await;
    assert_eq!(short.0, 404, "{}", short.2);
    assert_eq!(short, full);
    assert_eq!(short.2["code"], "task_not_found");
    assert!(
        app.board.get(&task_id).is_none(),
        "Bob's poll filled nothing"
    );
    let (code, _, _) = poll(&app, &id, Some(ALICE), None).await;
    assert_eq!(code, 200);
    polls_200 += 1;

    // No key, and a key nobody issued: refused with the challenge, whatever the board holds.
    for key in [None, Some("dk_nobody_0123456789abcdef")] {
        let (code, headers, body) = poll(&app, &id, key, None).await;
        assert_eq!(code, 401, "{body}");
        assert_eq!(headers["www-authenticate"], "Bearer");
    }

    // A page on an allowed origin reads the answer: the CORS headers are there.
    let (code, headers, body) = poll(&app, &id, Some(ALICE), Some(ORIGIN)).await;
    polls_200 += 1;
    assert_eq!(code, 200, "{body}");
    assert_eq!(headers["access-control-allow-origin"], ORIGIN);
    assert_eq!(body["status"], "completed");

    // Every poll counted once, by its route, whichever way it took.
    assert_eq!(counted_polls(&app, ALICE, 200).await, polls_200);
    assert_eq!(counted_polls(&app, ALICE, 404).await, 2);
    println!(
        "status polls: {polls_200} answered 200 (short way and full way alike, CORS included), \
         2 of another key's answered 404 both ways, 2 without a valid key 401; /metrics counted each once"
    );
}

#[tokio::test]
async fn the_key_rate_limit_holds_for_polls_answered_from_the_board() {
    const PER_SEC: u64 = 1;
    const BURST: u64 = 8;
    let app = spawn_app(&[
        ("DARKROOM_API_KEYS", &keys()),
        ("DARKROOM_KEY_RATE_PER_SEC", &PER_SEC.to_string()),
        ("DARKROOM_KEY_RATE_BURST", &BURST.to_string()),
    ])
    .await;
    let start = Instant::now();
    let id = queue(&app, ALICE).await;
    let mut passed = 1u64;
    let task_id = TaskId::parse(&id).unwrap();
    assert!(
        app.board.get(&task_id).is_some(),
        "a queued task's answer is on the board"
    );
    let refused = loop {
        let (code, headers, body) = poll(&app, &id, Some(ALICE), None).await;
        if code == 429 {
            break (headers, body);
        }
        assert_eq!(code, 200, "{body}");
        passed += 1;
        let limit = BURST + (start.elapsed().as_secs_f64() * PER_SEC as f64).floor() as u64;
        assert!(
            passed <= limit,
            "{passed} requests passed in {:?}",
            start.elapsed()
        );
    };
    assert!(passed >= BURST, "limited after {passed} requests");
    assert_eq!(refused.1["code"], "rate_limited", "{}", refused.1);
    assert!(refused.0.contains_key("retry-after"));
    let (code, _, _) = poll(&app, &id, Some(BOB), None).await;
    assert_eq!(code, 404, "Bob's key is not limited by Alice's polls");
    println!(
        "status polls from the board: {passed} of Alice's requests passed in {:.2} s (burst {BURST}, {PER_SEC}/s), then 429 rate_limited with Retry-After",
        start.elapsed().as_secs_f64()
    );
}
