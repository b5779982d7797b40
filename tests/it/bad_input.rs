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
    // /api/info states the limits just enforced, so the page checks files on selection.
    let (_, info) = app.get_json("/api/info").await;
    assert_eq!(
        info["uploads"],
        json!({
            "contentTypes": ["image/png", "image/jpeg", "image/webp"],
            "maxFileBytes": 20000,
            "maxFiles": 10,
            "maxImageDimension": 10000,
            "maxImagePixels": 40000000
        })
    );
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
        .put(app.url("/api/tasks/tsk_00000000000000000000000000000000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD,DELETE");
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

// --- R10: every route of the router, keys off and on ---------------------------------------

const KEY: &str = "dk_fuzz_0123456789abcdef";

/// Routes the router serves that the OpenAPI document leaves out on purpose (the page, its
/// assets, the docs page and the document itself: `http/mod.rs`), listed here by hand; every
/// other route comes from the document, so a new route cannot be forgotten.
const PAGES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/assets/{path}"),
    ("GET", "/api/docs"),
    ("GET", "/api/docs/{path}"),
    ("GET", "/api/openapi.json"),
];

/// One operation: a method and a path template, with what the document says it reads.
struct Operation {
    method: reqwest::Method,
    template: String,
    query: Vec<String>,
    /// The JSON schema of the body, for routes that read JSON.
    body_schema: Option<Value>,
    /// Whether the route reads a body at all.
    reads_body: bool,
    /// A method the route does not take: it must answer 405 `method_not_allowed`.
    wrong_method: bool,
}

/// A request body: what it is (for failure messages), its content type (none: no header)
/// and its bytes.
#[derive(Clone)]
struct Body {
    label: String,
    content_type: Option<&'static str>,
    bytes: Vec<u8>,
}

impl Body {
    fn new(label: impl Into<String>, content_type: Option<&'static str>, bytes: Vec<u8>) -> Self {
        Self {
            label: label.into(),
            content_type,
            bytes,
        }
    }

    fn json(label: impl Into<String>, value: &Value) -> Self {
        Self::new(
            label,
            Some("application/json"),
            serde_json::to_vec(value).unwrap(),
        )
    }
}

/// One request to send, and what its answer must be besides "not a 5xx, and any error
/// carries a catalogued code".
struct Probe {
    keyed: bool,
    operation: usize,
    url_path: String,
    body: Body,
    auth: Option<String>,
    /// Nothing in it is acceptable: the answer must be a 4xx.
    must_refuse: bool,
}

/// R10 over the whole router. The operations are read from the served OpenAPI document
/// (plus the few pages it leaves out), each sent to an app with API keys off and one with
/// keys on (a good key, and no key, a wrong key, junk `Authorization` headers): path
/// parameters filled with a well-formed id of nothing and with garbage; documented query
/// parameters with malformed values; bodies of malformed JSON, JSON of the wrong shape, every
/// field of the documented body schema given a wrong type or an oversized value, near-valid
/// multipart, and seeded random bytes. No answer may be a 5xx; every error answer must be
/// JSON with `success: false`, a sentence and a `code` from the catalogue
/// (`darkroom::domain::ErrorCode`); a request with a path id of nothing or a body that is
/// wrong must be refused with a 4xx, not accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_bad_input_with_a_catalogued_code_and_never_a_5xx() {
    use darkroom::domain::ErrorCode;
    use futures::StreamExt;
    use std::collections::BTreeMap;

    let common = [
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_CALLBACK_RATE_PER_SEC", "100000"),
        ("DARKROOM_KEY_RATE_PER_SEC", "100000"),
    ];
    let open = spawn_app(&common).await;
    let keys = format!("fuzz:{KEY}");
    let mut keyed_env = common.to_vec();
    keyed_env.extend([
        ("DARKROOM_API_KEYS", keys.as_str()),
        ("KIE_WEBHOOK_HMAC_KEY", "whk_fuzz"),
    ]);
    let keyed = spawn_app(&keyed_env).await;

    let (code, doc) = open.get_json("/api/openapi.json").await;
    assert_eq!(code, 200);
    let operations = operations(&doc);
    let (_, keyed_doc) = keyed
        .send(reqwest::Method::GET, "/api/openapi.json", Some(KEY), None)
        .await;
    assert_eq!(
        keyed_doc["paths"], doc["paths"],
        "both apps document the same routes"
    );
    let templates: Vec<String> = operations
        .iter()
        .map(|op| format!("{} {}", op.method, op.template))
        .collect();
    for must in [
        "POST /api/upload",
        "GET /api/batches",
        "POST /api/batches/{id}/retry",
        "GET /api/batches/{id}/zip",
        "POST /api/tasks/{id}/cancel",
        "GET /api/tasks/{id}/wait",
        "GET /api/events",
        "GET /api/ws",
        "GET /files/{key}",
    ] {
        assert!(
            templates.iter().any(|t| t == must),
            "{must} is read from the document: {templates:?}"
        );
    }

    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut probes = Vec::new();
    for (index, op) in operations.iter().enumerate() {
        let bodies = bodies_for(&doc, op, &mut rng);
        if op.wrong_method {
            let path = path_fills(&op.template).remove(0);
            for body in &bodies[..3] {
                for (keyed, auth) in [
                    (false, None),
                    (true, Some(format!("Bearer {KEY}"))),
                    (true, None),
                ] {
                    probes.push(Probe {
                        keyed,
                        operation: index,
                        url_path: path.clone(),
                        body: body.clone(),
                        auth,
                        must_refuse: true,
                    });
                }
            }
            continue;
        }
        let mut paths: Vec<(String, bool)> = path_fills(&op.template)
            .into_iter()
            .map(|p| (p, op.template.contains('{')))
            .collect();
        // Documented query parameters, one malformed value at a time, on the first fill.
        let first = paths[0].0.clone();
        for name in &op.query {
            for value in QUERY_JUNK {
                let value = value.replace("{long}", &"x".repeat(4000));
                paths.push((format!("{first}?{name}={value}"), op.template.contains('{')));
            }
        }
        paths.push((
            format!("{first}?zzz=%FF&zzz=1&limit=-1&timeout=abc&taskId=%00"),
            op.template.contains('{'),
        ));
        for (path, has_id) in &paths {
            let query_only = path.contains('?');
            // Query variants carry one body each; path fills carry every body.
            let chosen: Vec<&Body> = if query_only {
                vec![&bodies[rng.random_range(0..bodies.len())]]
            } else {
                bodies.iter().collect()
            };
            for body in chosen {
                let must_refuse = *has_id || (op.reads_body && !query_only);
                probes.push(Probe {
                    keyed: false,
                    operation: index,
                    url_path: path.clone(),
                    body: body.clone(),
                    auth: None,
                    must_refuse,
                });
                probes.push(Probe {
                    keyed: true,
                    operation: index,
                    url_path: path.clone(),
                    body: body.clone(),
                    auth: Some(format!("Bearer {KEY}")),
                    must_refuse,
                });
            }
            // The key check comes before anything is read: one body per bad header.
            let mut bad_auth = vec![
                None,
                Some("Bearer dk_wrong_0123456789abcdef".to_owned()),
                Some(format!("Bearer {}", "x".repeat(3000))),
                Some(format!("Basic {KEY}")),
                Some(
                    (0..24)
                        .map(|_| char::from(rng.random_range(32..127u8)))
                        .collect(),
                ),
            ];
            if query_only {
                bad_auth.truncate(1);
            }
            for auth in bad_auth {
                let body = bodies[rng.random_range(0..bodies.len())].clone();
                // Open routes (health, page, callbacks, files) answer without a key.
                probes.push(Probe {
                    keyed: true,
                    operation: index,
                    url_path: path.clone(),
                    body,
                    auth,
                    must_refuse: *has_id || op.reads_body,
                });
                probes.push(Probe {
                    keyed: false,
                    operation: index,
                    url_path: path.clone(),
                    body: bodies[rng.random_range(0..bodies.len())].clone(),
                    auth: Some(format!("Bearer {}", "y".repeat(40))),
                    must_refuse: *has_id || op.reads_body,
                });
            }
        }
    }

    // A fresh connection per request: a connection the server closed after refusing a
    // body it did not read cannot be reused by the next request, so any request that gets
    // no answer at all was dropped by the server, and is counted as such.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let operations = &operations;
    let (open, keyed, http) = (&open, &keyed, &http);
    let outcomes: Vec<(usize, bool, u16, Option<String>)> = futures::stream::iter(probes)
        .map(|probe| async move {
            let op = &operations[probe.operation];
            let app = if probe.keyed { keyed } else { open };
            let mut request = http
                .request(op.method.clone(), app.url(&probe.url_path))
                .body(probe.body.bytes.clone());
            if let Some(content_type) = probe.body.content_type {
                request = request.header("content-type", content_type);
            }
            if let Some(auth) = &probe.auth {
                request = request.header("authorization", auth.as_str());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) => {
                    let problem = format!(
                        "{} {} ({}) with {}: no answer: {e}",
                        op.method,
                        probe.url_path.chars().take(160).collect::<String>(),
                        if probe.keyed { "keys on" } else { "keys off" },
                        probe.body.label
                    );
                    return (probe.operation, probe.keyed, 0, Some(problem));
                }
            };
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let what = || {
                format!(
                    "{} {} ({}, auth {:?}) with {} -> {status}",
                    op.method,
                    probe.url_path.chars().take(160).collect::<String>(),
                    if probe.keyed { "keys on" } else { "keys off" },
                    probe
                        .auth
                        .as_deref()
                        .map(|a| a.chars().take(30).collect::<String>()),
                    probe.body.label,
                )
            };
            // A stream that opened (the SSE stream with no filter) is closed unread.
            if content_type.starts_with("text/event-stream") {
                let problem = probe
                    .must_refuse
                    .then(|| format!("{}: a stream opened for bad input", what()));
                return (probe.operation, probe.keyed, status, problem);
            }
            let text = response.text().await.unwrap_or_default();
            let problem = if status >= 500 {
                Some(format!("{}: a 5xx: {text:.200}", what()))
            } else if status >= 400 {
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let code = body["code"].as_str().and_then(ErrorCode::parse);
                if !content_type.starts_with("application/json") || code.is_none() {
                    Some(format!(
                        "{}: an error without a catalogued code ({content_type}): {text:.200}",
                        what()
                    ))
                } else if op.wrong_method && status != 401 && body["code"] != "method_not_allowed" {
                    Some(format!("{}: not a 405 method_not_allowed: {body}", what()))
                } else if body["success"] != false
                    || body["error"].as_str().is_none_or(str::is_empty)
                {
                    Some(format!("{}: an error without its sentence: {body}", what()))
                } else {
                    None
                }
            } else if probe.must_refuse || status < 200 {
                Some(format!("{}: accepted: {text:.200}", what()))
            } else {
                None
            };
            (probe.operation, probe.keyed, status, problem)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut per_operation: BTreeMap<(bool, String, String), BTreeMap<String, usize>> =
        BTreeMap::new();
    let mut wrong_methods: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for (index, keyed, status, problem) in &outcomes {
        let op = &operations[*index];
        let counts = per_operation
            .entry((op.wrong_method, op.template.clone(), op.method.to_string()))
            .or_default();
        *counts
            .entry(if *keyed { "keys on" } else { "keys off" }.to_owned())
            .or_default() += 1;
        *counts.entry(format!("{}xx", status / 100)).or_default() += 1;
        if op.wrong_method {
            *wrong_methods.entry(status.to_string()).or_default() += 1;
        }
        problems.extend(problem.clone());
    }
    for ((wrong, template, method), counts) in &per_operation {
        if !wrong {
            let total = counts["keys off"] + counts["keys on"];
            println!("R10: {method} {template}: {total} requests {counts:?}");
        }
    }
    let documented = operations.iter().filter(|op| !op.wrong_method).count();
    println!(
        "R10: {} methods the routes do not take (route by route): {} requests, by status {wrong_methods:?}",
        operations.len() - documented,
        wrong_methods.values().sum::<usize>(),
    );
    println!(
        "R10: {} requests on {} operations ({} from the OpenAPI document, {} pages, {} methods not taken) in {:.1} s; {} refused with a catalogued code, {} 5xx, {} problems",
        outcomes.len(),
        per_operation.len(),
        documented - PAGES.len(),
        PAGES.len(),
        operations.len() - documented,
        elapsed.as_secs_f64(),
        outcomes
            .iter()
            .filter(|o| (400..500).contains(&o.2) && o.3.is_none())
            .count(),
        outcomes.iter().filter(|o| o.2 >= 500).count(),
        problems.len(),
    );
    assert_eq!(
        per_operation.len(),
        operations.len(),
        "every operation was sent requests"
    );
    for counts in per_operation.values() {
        assert!(counts.get("keys off").is_some_and(|n| *n > 0));
        assert!(counts.get("keys on").is_some_and(|n| *n > 0));
    }
    // The wrong fields were wrong on top of bodies the routes that create tasks accept as
    // they are: each refusal above was for the one field changed.
    for op in operations.iter().filter(|op| op.body_schema.is_some()) {
        let mut statuses = Vec::new();
        for base in Shape::of(&doc, op.body_schema.as_ref().unwrap()).near_valid(&doc) {
            let (status, answer) = open
                .send(op.method.clone(), &op.template, None, Some(&base))
                .await;
            statuses.push(format!(
                "{base} -> {status} {}",
                answer["code"].as_str().unwrap_or("")
            ));
        }
        println!(
            "R10: the near-valid bodies of {} {}: {}",
            op.method,
            op.template,
            statuses.join("; ")
        );
        if ["/api/generate", "/api/batches"].contains(&op.template.as_str()) {
            assert!(
                statuses.iter().any(|s| s.contains("-> 200")),
                "{} {} accepts one of its near-valid bodies: {statuses:?}",
                op.method,
                op.template
            );
        }
    }
    assert!(
        problems.is_empty(),
        "{} answers broke the rules; the first:\n{}",
        problems.len(),
        problems
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Malformed values for a query parameter (percent-encoded as they go on the wire).
const QUERY_JUNK: &[&str] = &[
    "",
    "%FF%FE",
    "-1",
    "0",
    "1e999",
    "99999999999999999999999",
    "{long}",
    "a,,b,%00",
    "tsk_0123456789abcdef0123456789abcdef,bat_0123456789abcdef0123456789abcdef",
    "%5B%5D",
];

/// Every operation of the document, then the pages it leaves out.
fn operations(doc: &Value) -> Vec<Operation> {
    let mut out = Vec::new();
    for (template, item) in doc["paths"].as_object().expect("the document has paths") {
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<reqwest::Method>() else {
                continue;
            };
            if !op.is_object() || op.get("responses").is_none() {
                continue;
            }
            let query = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "query")
                        .map(|p| p["name"].as_str().unwrap().to_owned())
                        .collect()
                })
                .unwrap_or_default();
            let content = &op["requestBody"]["content"];
            out.push(Operation {
                method,
                template: template.clone(),
                query,
                body_schema: content.get("application/json").map(|c| c["schema"].clone()),
                reads_body: content.is_object(),
                wrong_method: false,
            });
        }
    }
    assert!(
        out.len() >= 24,
        "the document lists {} operations",
        out.len()
    );
    for (method, template) in PAGES {
        out.push(Operation {
            method: method.parse().unwrap(),
            template: (*template).to_owned(),
            query: Vec::new(),
            body_schema: None,
            reads_body: false,
            wrong_method: false,
        });
    }
    // Each route with each method it does not take.
    let templates: std::collections::BTreeSet<String> =
        out.iter().map(|op| op.template.clone()).collect();
    let mut wrong = Vec::new();
    for template in templates {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let method: reqwest::Method = method.parse().unwrap();
            if out
                .iter()
                .any(|op| op.template == template && op.method == method)
            {
                continue;
            }
            wrong.push(Operation {
                method,
                template: template.clone(),
                query: Vec::new(),
                body_schema: None,
                reads_body: false,
                wrong_method: true,
            });
        }
    }
    out.extend(wrong);
    out
}

/// The template with its parameters filled: first with a well-formed id of nothing, then
/// with garbage (percent-encoded as it goes on the wire).
fn path_fills(template: &str) -> Vec<String> {
    let Some(start) = template.find('{') else {
        return vec![template.to_owned()];
    };
    let end = start + template[start..].find('}').unwrap();
    let name = &template[start + 1..end];
    let missing = if name == "task_id" || template.starts_with("/api/tasks/") {
        "tsk_0123456789abcdef0123456789abcdef".to_owned()
    } else if template.starts_with("/api/batches/") {
        "bat_0123456789abcdef0123456789abcdef".to_owned()
    } else if template.starts_with("/files/") {
        "uploads/0190f2a4c8e37b5a9d1e2f3a4b5c6d7e.png".to_owned()
    } else {
        "missing.js".to_owned()
    };
    let prefix = &missing[..4];
    let garbage = [
        "%FF%FE".to_owned(),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
        "%00".to_owned(),
        "a".repeat(3000),
        format!("{prefix}{}", "Z".repeat(32)),
        "%E2%98%83%F0%9F%92%A5".to_owned(),
        "%7B%22id%22%3A1%7D".to_owned(),
        "1%20OR%201%3D1".to_owned(),
    ];
    std::iter::once(missing)
        .chain(garbage)
        .map(|fill| {
            let filled = format!("{}{fill}{}", &template[..start], &template[end + 1..]);
            // More than one parameter: fill the rest the same way (none today).
            if filled.contains('{') {
                path_fills(&filled).remove(0)
            } else {
                filled
            }
        })
        .collect()
}

/// What to send an operation: malformed JSON, JSON of the wrong shape, near-valid multipart
/// and random bytes to every route; for a route with a JSON body schema, also each field
/// of it (nested fields included) with a wrong type or an oversized value, on top of a
/// near-valid body.
fn bodies_for(doc: &Value, op: &Operation, rng: &mut StdRng) -> Vec<Body> {
    let mut bodies = vec![Body::new("no body", None, Vec::new())];
    for raw in [
        "",
        "{",
        "not json",
        "{\"prompt\": }",
        "[1,2",
        "{\"a\":1}{\"b\":2}",
        "1e999999",
        "{\"prompt\":\"p\",\"prompt\":\"q\",\"prompt\":7}",
    ] {
        bodies.push(Body::new(
            format!("malformed JSON {raw:?}"),
            Some("application/json"),
            raw.as_bytes().to_vec(),
        ));
    }
    bodies.push(Body::new(
        "JSON with invalid UTF-8",
        Some("application/json"),
        b"{\"prompt\":\"\xff\xfe\"}".to_vec(),
    ));
    bodies.push(Body::new(
        "JSON with a raw NUL",
        Some("application/json"),
        b"{\"prompt\":\"a\x00b\"}".to_vec(),
    ));
    bodies.push(Body::new(
        "JSON nested 100000 deep",
        Some("application/json"),
        "[".repeat(100_000).into_bytes(),
    ));
    for value in [
        json!(null),
        json!(1),
        json!("s"),
        json!([]),
        json!(true),
        json!([{"prompt": "p"}]),
    ] {
        bodies.push(Body::json(format!("JSON {value}"), &value));
    }
    bodies.push(Body::new(
        "a 400 KiB JSON body",
        Some("application/json"),
        serde_json::to_vec(&json!({"prompt": "p", "pad": "x".repeat(400 * 1024)})).unwrap(),
    ));
    bodies.extend(multipart_bodies());
    for i in 0..4 {
        let len = rng.random_range(0..768);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let content_type = if i % 2 == 0 {
            "application/json"
        } else {
            "multipart/form-data; boundary=XYZ"
        };
        bodies.push(Body::new(
            format!("{len} random bytes as {content_type}"),
            Some(content_type),
            bytes,
        ));
    }
    let Some(schema) = &op.body_schema else {
        return bodies;
    };
    let shape = Shape::of(doc, schema);
    for base in shape.near_valid(doc) {
        bodies.push(Body::new(
            format!("near-valid body {base} as form data"),
            Some("application/x-www-form-urlencoded"),
            b"prompt=p&imageUrls=https%3A%2F%2Fexample.com%2Fa.png".to_vec(),
        ));
        for (label, value) in shape.wrong_values(doc, &base, 0) {
            bodies.push(Body::json(label, &value));
        }
    }
    bodies
}

/// The object a JSON schema describes: its fields (through `$ref` and `allOf`) and the sets
/// of required fields it accepts (one per `anyOf` alternative).
struct Shape {
    properties: serde_json::Map<String, Value>,
    required: Vec<Vec<String>>,
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/schemas/")
                .expect("a local $ref");
            resolve(doc, &doc["components"]["schemas"][name])
        }
        None => schema,
    }
}

/// The JSON types a schema allows (`integer` counts as `number`); empty means any.
fn json_types(doc: &Value, schema: &Value) -> Vec<&'static str> {
    let schema = resolve(doc, schema);
    let mut types = Vec::new();
    let mut add = |t: &str| {
        let t = match t {
            "integer" | "number" => "number",
            "string" => "string",
            "boolean" => "boolean",
            "array" => "array",
            "object" => "object",
            _ => "null",
        };
        if !types.contains(&t) {
            types.push(t);
        }
    };
    match &schema["type"] {
        Value::String(t) => add(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).for_each(&mut add),
        _ => {}
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for branch in schema[key].as_array().into_iter().flatten() {
            json_types(doc, branch).into_iter().for_each(&mut add);
        }
    }
    if schema.get("properties").is_some() {
        add("object");
    }
    types
}

impl Shape {
    fn of(doc: &Value, schema: &Value) -> Self {
        let schema = resolve(doc, schema);
        let mut shape = Shape {
            properties: schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
            required: vec![
                schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ],
        };
        for part in schema["allOf"].as_array().into_iter().flatten() {
            let inner = Shape::of(doc, part);
            for (k, v) in inner.properties {
                shape.properties.entry(k).or_insert(v);
            }
            shape.required = shape
                .required
                .iter()
                .flat_map(|mine| {
                    inner.required.iter().map(move |theirs| {
                        let mut both = mine.clone();
                        both.extend(theirs.iter().cloned());
                        both
                    })
                })
                .collect();
        }
        if let Some(alternatives) = schema["anyOf"].as_array().or(schema["oneOf"].as_array())
            && alternatives
                .iter()
                .all(|a| resolve(doc, a)["required"].is_array())
        {
            shape.required = shape
                .required
                .iter()
                .flat_map(|mine| {
                    alternatives.iter().map(move |alternative| {
                        let mut both = mine.clone();
                        both.extend(
                            resolve(doc, alternative)["required"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .filter_map(|v| v.as_str().map(str::to_owned)),
                        );
                        both
                    })
                })
                .collect();
        }
        shape
    }

    /// One near-valid body per set of required fields: each required field with a
    /// plausible value of its type.
    fn near_valid(&self, doc: &Value) -> Vec<Value> {
        self.required
            .iter()
            .map(|names| {
                let mut body = serde_json::Map::new();
                for name in names {
                    if let Some(schema) = self.properties.get(name) {
                        body.insert(name.clone(), sample(doc, schema, name));
                    }
                }
                Value::Object(body)
            })
            .collect()
    }

    /// `base` with one field (any documented field, and the fields of objects nested in it)
    /// given a value of a type the schema does not allow, a value outside its enum, or an
    /// oversized value.
    fn wrong_values(&self, doc: &Value, base: &Value, depth: usize) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (name, schema) in &self.properties {
            let types = json_types(doc, schema);
            let mut wrong: Vec<(String, Value)> = [
                ("number", json!(12345)),
                ("string", json!("zz")),
                ("boolean", json!(true)),
                ("array", json!([1, {"k": null}])),
                ("object", json!({"k": [1]})),
            ]
            .into_iter()
            .filter(|(t, _)| !types.is_empty() && !types.contains(t))
            .map(|(t, v)| (format!("{name} as a {t}"), v))
            .collect();
            let resolved = resolve(doc, schema);
            if types.contains(&"string") {
                wrong.push((
                    format!("{name} of 70000 characters"),
                    json!("x".repeat(70_000)),
                ));
                if resolved.get("enum").is_some() || resolved.get("oneOf").is_some() {
                    wrong.push((format!("{name} outside its enum"), json!("nope")));
                }
            }
            if types.contains(&"array") {
                let item = sample(doc, &resolved["items"], name);
                wrong.push((format!("{name} with 1000 items"), json!(vec![item; 1000])));
            }
            if types.contains(&"number") {
                wrong.push((format!("{name} of 1e300"), json!(1e300)));
                wrong.push((format!("{name} of -2^63"), json!(i64::MIN)));
            }
            for (label, value) in wrong {
                let mut body = base.clone();
                body[name.as_str()] = value;
                out.push((format!("{label} in {base:.100}"), body));
            }
            // Fields nested in an object field, or in the objects of an array field.
            if depth < 2 {
                let (inner_schema, in_array) = if types.contains(&"array") {
                    (&resolved["items"], true)
                } else {
                    (schema, false)
                };
                let inner_types = json_types(doc, inner_schema);
                let inner_resolved = resolve(doc, inner_schema);
                let object_branch = inner_resolved["oneOf"]
                    .as_array()
                    .and_then(|bs| {
                        bs.iter()
                            .find(|b| resolve(doc, b)["properties"].is_object())
                    })
                    .unwrap_or(inner_resolved);
                if inner_types.contains(&"object")
                    && resolve(doc, object_branch)["properties"].is_object()
                {
                    let inner = Shape::of(doc, object_branch);
                    for inner_base in inner.near_valid(doc) {
                        for (label, value) in inner.wrong_values(doc, &inner_base, depth + 1) {
                            let mut body = base.clone();
                            body[name.as_str()] = if in_array { json!([value]) } else { value };
                            out.push((format!("{name}: {label}"), body));
                        }
                    }
                }
            }
        }
        out
    }
}

/// A plausible value for a field: a URL for URL fields, a short string, 1, true, one item.
fn sample(doc: &Value, schema: &Value, name: &str) -> Value {
    let schema = resolve(doc, schema);
    if let Some(value) = schema["enum"]
        .as_array()
        .and_then(|e| e.iter().find(|v| !v.is_null()))
    {
        return value.clone();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(branch) = schema[key]
            .as_array()
            .and_then(|bs| bs.iter().find(|b| resolve(doc, b)["type"] != "null"))
        {
            return sample(doc, branch, name);
        }
    }
    let types = json_types(doc, schema);
    if types.contains(&"object") {
        let shape = Shape::of(doc, schema);
        return shape.near_valid(doc).remove(0);
    }
    if types.contains(&"array") {
        return json!([sample(doc, &schema["items"], name)]);
    }
    if types.contains(&"string") || types.is_empty() {
        let url = schema["format"] == "uri" || name.to_lowercase().contains("url");
        return if url {
            json!("https://example.com/a.png")
        } else {
            json!("p")
        };
    }
    if types.contains(&"number") {
        return json!(1);
    }
    json!(true)
}

/// Multipart bodies that are almost right: cut short, without or with the wrong boundary,
/// the wrong field, a file that is not an image, hundreds of parts, a huge file name.
fn multipart_bodies() -> Vec<Body> {
    const CT: &str = "multipart/form-data; boundary=XYZ";
    let part = |name: &str, filename: &str, bytes: &[u8]| {
        let mut out = format!(
            "--XYZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
        out
    };
    let closed = |mut parts: Vec<u8>| {
        parts.extend_from_slice(b"--XYZ--\r\n");
        parts
    };
    let png_header =
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x7f\xff\xff\xff\x7f\xff\xff\xff\x08\x02";
    let many: Vec<u8> = (0..300)
        .flat_map(|i| part("files", &format!("{i}.png"), b"x"))
        .collect();
    vec![
        Body::new(
            "multipart cut short",
            Some(CT),
            b"--XYZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n\x89PNG\r\n--XY".to_vec(),
        ),
        Body::new(
            "multipart without a boundary",
            Some("multipart/form-data"),
            closed(part("files", "a.png", png_header)),
        ),
        Body::new(
            "multipart with another boundary",
            Some("multipart/form-data; boundary=ABC"),
            closed(part("files", "a.png", png_header)),
        ),
        Body::new(
            "multipart with a 200-character boundary",
            Some("multipart/form-data; boundary=BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"),
            closed(part("files", "a.png", png_header)),
        ),
        Body::new("multipart, empty", Some(CT), Vec::new()),
        Body::new(
            "multipart with the field `file`",
            Some(CT),
            closed(part("file", "a.png", png_header)),
        ),
        Body::new(
            "multipart with a PNG header declaring 2^31 pixels a side",
            Some(CT),
            closed(part("files", "a.png", png_header)),
        ),
        Body::new(
            "multipart without a closing boundary",
            Some(CT),
            part("files", "a.png", b"\x89PNG"),
        ),
        Body::new(
            "multipart with a 10 KiB file name",
            Some(CT),
            closed(part("files", &"n".repeat(10 * 1024), png_header)),
        ),
        Body::new("multipart with 300 parts", Some(CT), closed(many)),
        Body::new(
            "multipart part headers without their blank line",
            Some(CT),
            b"--XYZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\x89PNG--XYZ--\r\n".to_vec(),
        ),
        Body::new(
            "multipart part without Content-Disposition",
            Some(CT),
            b"--XYZ\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--XYZ--\r\n".to_vec(),
        ),
        Body::new(
            "multipart text field only",
            Some(CT),
            b"--XYZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\np\r\n--XYZ--\r\n".to_vec(),
        ),
    ]
}
