//! Bad input on every route gets a 4xx with a stable code, never a 5xx.

use crate::harness::{jpeg, png, spawn_app};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[tokio::test]
async fn upload_refuses_bad_files_one_by_one_and_keeps_the_good_ones() {
    let app = spawn_app(&[("DARKROOM_MAX_UPLOAD_BYTES", "20000")]).await;
    let mut truncated = png(40, 40);
    truncated.truncate(20);
    let (code, body) = app
        .upload(&[
            ("good.png", png(30, 20)),
            ("good.jpg", jpeg(30, 20)),
            ("text.png", b"this is not an image".to_vec()),
            ("empty.png", Vec::new()),
            ("trunc.png", truncated),
            ("big.png", vec![0x89; 30_000]),
            (
                "page.png",
                b"<html><script>alert(1)</script></html>".to_vec(),
            ),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["totalCount"], 7);
    assert_eq!(body["uploadedCount"], 2);
    let codes: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "unsupported_image_type",
            "empty_file",
            "corrupt_image",
            "file_too_large",
            "unsupported_image_type"
        ]
    );
    for uploaded in body["uploaded"].as_array().unwrap() {
        let key = uploaded["key"].as_str().unwrap();
        assert!(
            key.starts_with("uploads/") && !key.contains("good"),
            "generated keys only: {key}"
        );
    }
    assert_eq!(body["uploaded"][1]["contentType"], "image/jpeg");
}

#[tokio::test]
async fn upload_without_files_or_without_any_good_file_is_a_400() {
    let app = spawn_app(&[]).await;
    let (code, body) = app.upload(&[]).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["code"], "invalid_multipart",
        "an empty form is not multipart: {body}"
    );

    let form = reqwest::multipart::Form::new().text("other", "x");
    let response = app
        .http
        .post(app.url("/api/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "no_files");

    let (code, body) = app.upload(&[("a.txt", b"hello".to_vec())]).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["code"], "no_valid_files");
    assert_eq!(body["errors"][0]["code"], "unsupported_image_type");

    let response = app
        .http
        .post(app.url("/api/upload"))
        .json(&json!({"files": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_multipart");
}

#[tokio::test]
async fn generate_refuses_bad_requests_with_stable_codes() {
    let app = spawn_app(&[]).await;
    let cases = [
        (json!({}), "prompt_required"),
        (json!({"prompt": ""}), "prompt_required"),
        (json!({"prompt": 12}), "invalid_field"),
        (
            json!({"prompt": "x".repeat(5001), "imageUrls": ["https://e.com/a.png"]}),
            "prompt_too_long",
        ),
        (json!({"prompt": "p"}), "images_required"),
        (
            json!({"prompt": "p", "uploads": "uploads/a.png"}),
            "invalid_field",
        ),
        (
            json!({"prompt": "p", "uploads": [{"url": "x"}]}),
            "invalid_field",
        ),
        (
            json!({"prompt": "p", "uploads": [{"key": "uploads/missing.png"}]}),
            "upload_not_found",
        ),
        (
            json!({"prompt": "p", "uploads": [{"key": "../../etc/passwd"}]}),
            "invalid_upload_key",
        ),
        (
            json!({"prompt": "p", "imageUrls": ["javascript:alert(1)"]}),
            "invalid_image_url",
        ),
        (
            json!({"prompt": "p", "imageUrls": ["https://e.com/a.png"], "aspectRatio": "2:1"}),
            "invalid_aspect_ratio",
        ),
        (
            json!({"prompt": "p", "imageUrls": ["https://e.com/a.png"], "outputFormat": "gif"}),
            "invalid_output_format",
        ),
        (
            json!({"prompt": "p", "imageUrls": ["https://e.com/a.png"], "model": "dall-e"}),
            "unsupported_model",
        ),
        (
            json!({"prompt": "p", "imageUrls": ["https://e.com/a.png"], "priority": "high"}),
            "invalid_priority",
        ),
        (
            json!({"prompt": "p", "imageUrls": ["https://e.com/a.png"], "webhookUrl": "ftp://e.com/h"}),
            "invalid_webhook_url",
        ),
        (json!(["prompt"]), "invalid_body"),
    ];
    for (body, expected) in cases {
        let (code, answer) = app.post_json("/api/generate", &body).await;
        assert_eq!(code, 400, "{body} -> {answer}");
        assert_eq!(answer["code"], expected, "{body} -> {answer}");
        assert_eq!(answer["success"], false);
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let eleven: Vec<String> = (0..11).map(|i| format!("https://e.com/{i}.png")).collect();
    let (code, answer) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "p", "imageUrls": eleven}),
        )
        .await;
    assert_eq!(
        (code, answer["code"].as_str()),
        (400, Some("too_many_images"))
    );

    for raw in ["", "{", "not json", "{\"prompt\": }"] {
        let response = app
            .http
            .post(app.url("/api/generate"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{raw:?}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["code"], "invalid_json", "{raw:?}");
    }
    let huge = format!("{{\"prompt\": \"{}\"}}", "x".repeat(300 * 1024));
    let response = app
        .http
        .post(app.url("/api/generate"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["code"], "body_too_large", "{answer}");
    assert_eq!(
        answer["error"],
        "the request body is larger than the 256 KiB this route accepts"
    );
    // Nothing was queued by any of it.
    assert!(app.blobs.list("kie-tasks").await.unwrap().is_empty());
}

#[tokio::test]
async fn callbacks_status_and_files_refuse_bad_input() {
    let app = spawn_app(&[]).await;
    let (code, answer) = app.post_json("/api/callback", &json!({"code": 200})).await;
    assert_eq!(
        (code, answer["code"].as_str()),
        (400, Some("task_id_required"))
    );
    let response = app
        .http
        .post(app.url("/api/callback"))
        .body("{{{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let big = json!({"data": {"taskId": "x", "pad": "y".repeat(70 * 1024)}});
    let (code, answer) = app.post_json("/api/callback", &big).await;
    assert_eq!(
        (code, answer["code"].as_str()),
        (413, Some("body_too_large"))
    );
    assert_eq!(
        answer["error"],
        "the request body is larger than the 64 KiB this route accepts"
    );
    let (code, _) = app
        .post_json("/api/callback/not-a-task?token=x", &json!({}))
        .await;
    assert_eq!(code, 404);

    let (code, answer) = app.get_json("/api/task-status").await;
    assert_eq!(
        (code, answer["code"].as_str()),
        (400, Some("task_id_required"))
    );
    let (code, _) = app.get_json("/api/task-status?taskId=").await;
    assert_eq!(code, 400);
    let (code, _) = app
        .get_json(&format!("/api/task-status?taskId={}", "a".repeat(5000)))
        .await;
    assert_eq!(code, 404);

    for path in [
        "/files/../Cargo.toml",
        "/files/uploads/none.png",
        "/files/.darkroom-probe",
        "/files/kie-tasks/x.txt",
        "/nope",
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
}

/// A misspelled field is refused with its name and the right spelling, not dropped (a
/// 16:9 JPEG asked as `aspect_ratio`/`output_format` must not become a 1:1 PNG), on both
/// generation routes; the one extra field the original's front end sends
/// (`uploads[].url`) is still accepted.
#[tokio::test]
async fn unknown_fields_are_refused_with_the_right_spelling() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (_, up) = app.upload(&[("a.png", png(20, 20))]).await;
    let key = up["uploaded"][0]["key"].clone();
    let url = up["uploaded"][0]["url"].clone();
    let cases = [
        (
            json!({"prompt": "p", "uploads": [{"key": key}], "aspect_ratio": "16:9", "output_format": "jpeg"}),
            "unknown field \"aspect_ratio\": did you mean \"aspectRatio\"?",
        ),
        (
            json!({"prompt": "p", "uploads": [{"key": key}], "OutputFormat": "jpeg"}),
            "unknown field \"OutputFormat\": did you mean \"outputFormat\"?",
        ),
        (
            json!({"prompt": "p", "image_urls": ["https://e.com/a.png"]}),
            "unknown field \"image_urls\": did you mean \"imageUrls\"?",
        ),
        (
            json!({"prompt": "p", "imageUrls": [{"url": "https://e.com/a.png", "provder": "kie"}]}),
            "unknown field \"imageUrls[0].provder\": did you mean \"imageUrls[0].provider\"?",
        ),
    ];
    for route in ["/api/generate", "/api/batches"] {
        for (body, message) in &cases {
            let (code, answer) = app.post_json(route, body).await;
            assert_eq!(code, 400, "{route} {body} -> {answer}");
            assert_eq!(
                answer["code"], "unknown_field",
                "{route} {body} -> {answer}"
            );
            assert_eq!(answer["error"], *message, "{route} {body}");
        }
        let (code, answer) = app
            .post_json(
                route,
                &json!({"prompt": "p", "uploads": [{"key": key}], "seed": 7}),
            )
            .await;
        assert_eq!(
            (code, answer["code"].as_str()),
            (400, Some("unknown_field"))
        );
        assert!(
            answer["error"].as_str().unwrap().starts_with(
                "unknown field \"seed\"; the fields here are prompt, uploads, imageUrls"
            ),
            "{answer}"
        );
    }
    let all = darkroom::storage::TaskFilter {
        limit: 10,
        ..Default::default()
    };
    assert!(
        app.repo.list(&all).await.unwrap().is_empty(),
        "nothing queued"
    );
    // What the original's front end sends: uploads with their URL.
    let (code, answer) = app
        .post_json(
            "/api/generate",
            &json!({"prompt": "p", "uploads": [{"key": key, "url": url}], "aspectRatio": "16:9", "outputFormat": "jpeg"}),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    let (_, task) = app
        .get_json(&format!(
            "/api/tasks/{}",
            answer["taskIds"][0].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (task["aspectRatio"].as_str(), task["outputFormat"].as_str()),
        (Some("16:9"), Some("jpeg"))
    );
}

/// Requests the router itself refuses (a method a route does not take, a path no route
/// has) answer like every other error: JSON with a code and a sentence.
#[tokio::test]
async fn the_router_refuses_in_json() {
    let app = spawn_app(&[]).await;
    let response = app.http.get(app.url("/api/generate")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["code"], "method_not_allowed", "{answer}");
    assert_eq!(answer["success"], false);
    assert_eq!(
        answer["error"],
        "/api/generate does not take GET; the Allow header lists the methods it takes"
    );
    let response = app
        .http
        .delete(app.url("/api/tasks/tsk_00000000000000000000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["code"], "method_not_allowed", "{answer}");

    for path in ["/nope", "/api/nope", "/api/tasks/x/y/z"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["code"], "route_not_found", "{path}: {answer}");
        assert_eq!(
            answer["error"],
            format!("no such route: GET {path}; the API is described at /api/openapi.json")
        );
    }
}

/// Random bodies of every kind on every route, with API keys off and on (with a good key,
/// a wrong one and junk `Authorization` headers): nothing may answer 5xx (R10).
#[tokio::test]
async fn no_bad_input_produces_a_5xx() {
    use futures::StreamExt;
    const KEY: &str = "dk_fuzz_0123456789abcdef";
    let open = spawn_app(&[("DARKROOM_CALLBACK_RATE_PER_SEC", "100000")]).await;
    let keyed = spawn_app(&[
        ("DARKROOM_CALLBACK_RATE_PER_SEC", "100000"),
        ("DARKROOM_API_KEYS", &format!("fuzz:{KEY}")),
        ("DARKROOM_KEY_RATE_PER_SEC", "100000"),
        ("KIE_WEBHOOK_HMAC_KEY", "whk_fuzz"),
    ])
    .await;
    let routes = [
        ("POST", "/api/upload".to_owned()),
        ("POST", "/api/generate".to_owned()),
        ("POST", "/api/callback".to_owned()),
        (
            "POST",
            "/api/callback/tsk_0123456789abcdef0123456789abcdef?token=x".to_owned(),
        ),
        ("GET", "/api/task-status?taskId=%00%ff".to_owned()),
        (
            "GET",
            "/api/task-status?taskId=tsk_0123456789abcdef0123456789abcdef&x=%zz".to_owned(),
        ),
        ("GET", "/files/%2e%2e/%2e%2e/etc/passwd".to_owned()),
        ("GET", "/files/uploads/a.png?sig=%ff%00".to_owned()),
        ("POST", "/api/task-status".to_owned()),
        ("GET", "/api/info".to_owned()),
        ("GET", "/healthz".to_owned()),
        ("GET", "/readyz".to_owned()),
        ("GET", "/".to_owned()),
        ("GET", "/assets/..%2f..%2fCargo.toml".to_owned()),
        ("POST", "/api/tasks".to_owned()),
        ("GET", "/api/webhook-secret".to_owned()),
        ("POST", "/api/webhook-secret/rotate".to_owned()),
    ];
    const ROUNDS: usize = 1000;
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut requests = Vec::new();
    for round in 0..ROUNDS {
        for (method, path) in &routes {
            let (content_type, body) = junk(&mut rng, round);
            let auth = match round % 5 {
                0 => None,
                1 => Some(format!("Bearer {KEY}")),
                2 => Some("Bearer dk_wrong".to_owned()),
                3 => Some(format!("Bearer {}", "x".repeat(rng.random_range(0..2000)))),
                _ => Some(
                    String::from_utf8_lossy(
                        &(0..16)
                            .map(|_| rng.random_range(32..127u8))
                            .collect::<Vec<u8>>(),
                    )
                    .into_owned(),
                ),
            };
            let app = if round % 2 == 0 { &open } else { &keyed };
            requests.push((app, *method, path.clone(), content_type, body, auth));
        }
    }
    let total = requests.len();
    let answered = futures::stream::iter(requests)
        .map(|(app, method, path, content_type, body, auth)| async move {
            let mut request = match method {
                "POST" => app.http.post(app.url(&path)),
                _ => app.http.get(app.url(&path)),
            };
            request = request
                .header("content-type", content_type)
                .body(body.clone());
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            assert!(
                status < 500,
                "{method} {path} with {content_type} {:?} -> {status}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        })
        .buffer_unordered(8)
        .count()
        .await;
    assert_eq!(answered, total);
    println!(
        "R10: {answered} malformed requests ({ROUNDS} on each of {} routes, keys off and on) answered without a 5xx",
        routes.len()
    );
}

fn junk(rng: &mut StdRng, round: usize) -> (&'static str, Vec<u8>) {
    let json_values = [
        json!(null),
        json!(1),
        json!("s"),
        json!([]),
        json!({"prompt": null}),
        json!({"prompt": "p", "uploads": [{"key": {"k": 1}}]}),
        json!({"prompt": "p", "imageUrls": [1, 2]}),
        json!({"code": "x", "data": []}),
        json!({"data": {"taskId": 5}}),
        json!({"data": {"taskId": "x", "state": "success", "resultJson": "{bad"}}),
        json!({"prompt": "p", "imageUrls": ["https://e.com/a"], "priority": 1e300}),
    ];
    match round % 4 {
        0 => ("application/json", serde_json::to_vec(&json_values[rng.random_range(0..json_values.len())]).unwrap()),
        1 => {
            let len = rng.random_range(0..512);
            ("application/json", (0..len).map(|_| rng.random()).collect())
        }
        2 => ("multipart/form-data; boundary=XYZ", b"--XYZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n\x89PNG\r\n--XY".to_vec()),
        _ => ("multipart/form-data", (0..64).map(|_| rng.random()).collect()),
    }
}
