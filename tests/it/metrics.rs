//! `GET /metrics` (issue 12): after a scripted run against the KIE simulator — successes,
//! failures with several codes, a 429 burst, a retry — the exposition is read by
//! Prometheus' own parser (`prometheus_client` from PyPI, in the test venv that
//! `scripts/test.sh` makes; its python is `DARKROOM_TEST_PROMETHEUS_PARSER`) and every
//! counter is compared with what the run did, as the database and the simulator saw it.
//! Also: the route label is the template, the token is enforced, a listener of its own,
//! and two apps in one process count apart.

use std::collections::HashMap;
use std::time::Duration;

use darkroom::providers::sim::KieSimConfig;
use darkroom::storage::TaskFilter;
use darkroom::telemetry::names;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::{
    TestApp, free_port, input_host, quick_sim, spawn_app, spawn_app_env, spawn_sim, task_ids,
};

/// One sample: its name, labels and value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// What the parser read: families by name (type, help) and every sample.
struct Exposition {
    families: HashMap<String, (String, String)>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The sum of the samples named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

/// The parser's python, or `None` (outside CI, loudly) when it is not there.
fn parser() -> Option<String> {
    match std::env::var("DARKROOM_TEST_PROMETHEUS_PARSER") {
        Ok(python) if !python.is_empty() => Some(python),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "DARKROOM_TEST_PROMETHEUS_PARSER is not set: scripts/test.sh installs prometheus_client into .venv and sets it"
            );
            print!(
                "\n!!! SKIPPED: DARKROOM_TEST_PROMETHEUS_PARSER is not set; run through scripts/test.sh (it installs prometheus_client) to check /metrics with Prometheus' parser !!!\n\n"
            );
            None
        }
    }
}

/// Parses `text` with `prometheus_client`'s parser.
fn parse(python: &str, text: &str) -> Exposition {
    use std::io::Write;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/parse_metrics.py"
    );
    let mut child = std::process::Command::new(python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running the Prometheus parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut families = HashMap::new();
    let mut samples = Vec::new();
    for family in parsed["families"].as_array().unwrap() {
        families.insert(
            family["name"].as_str().unwrap().to_owned(),
            (
                family["type"].as_str().unwrap().to_owned(),
                family["help"].as_str().unwrap().to_owned(),
            ),
        );
        for s in family["samples"].as_array().unwrap() {
            samples.push(Sample {
                name: s["name"].as_str().unwrap().to_owned(),
                labels: serde_json::from_value(s["labels"].clone()).unwrap(),
                value: s["value"].as_f64().unwrap_or(f64::NAN),
            });
        }
    }
    Exposition { families, samples }
}

async fn scrape(app: &TestApp, token: Option<&str>) -> (u16, String) {
    let mut request = app.http.get(app.url("/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[allow(clippy::cast_precision_loss)]
fn f(n: usize) -> f64 {
    n as f64
}

#[tokio::test]
async fn metrics_count_what_a_scripted_run_did() {
    let Some(python) = parser() else { return };
    // The simulator takes 3 creates a second; darkroom sends up to 6: bursts of 429s.
    let sim = spawn_sim(KieSimConfig {
        rate_limit: 3,
        rate_window: Duration::from_secs(1),
        fail_rate: 0.3,
        ..quick_sim()
    })
    .await;
    let stop = CancellationToken::new();
    let inputs = input_host(stop.clone()).await;
    let (hooks, received) = webhook_receiver(stop.clone()).await;
    let mut env: Vec<(&str, String)> = sim
        .kie_env()
        .into_iter()
        .filter(|(k, _)| *k != "DARKROOM_TRUSTED_FETCH_HOSTS")
        .collect();
    env.extend([
        (
            "DARKROOM_TRUSTED_FETCH_HOSTS",
            format!("{},{inputs},{hooks}", sim.addr),
        ),
        ("DARKROOM_WEBHOOK_FIRST_RETRY_MS", "200".to_owned()),
        ("DARKROOM_KIE_CREATES_PER_WINDOW", "6".to_owned()),
        ("DARKROOM_KIE_CREATE_WINDOW_SECS", "1".to_owned()),
        ("DARKROOM_CHECK_CLIENT_INPUTS", "true".to_owned()),
        ("DARKROOM_FIRST_POLL_MS", "300".to_owned()),
    ]);
    let app = spawn_app_env(&env).await;

    // A live client while the run goes on.
    let sse = app.http.get(app.url("/api/events")).send().await.unwrap();
    assert_eq!(sse.status(), 200);

    // Successes (and the simulator's failures), then inputs that fail two ways.
    let webhook = format!("http://{hooks}/hook");
    let mut ids = app
        .generate_many(12, json!({ "webhookUrl": webhook }))
        .await;
    for input in ["missing.png", "page.png"] {
        let body = json!({"prompt": "p", "imageUrls": [format!("http://{inputs}/{input}")]});
        let (code, answer) = app.post_json("/api/generate", &body).await;
        assert_eq!(code, 200, "{answer}");
        ids.extend(task_ids(&answer));
    }
    app.wait_all_final(&ids, Duration::from_secs(90)).await;
    // A retry of a failed task: a new task (it fails again, its input still missing).
    let failed = ids.last().unwrap().clone();
    let missing = ids[ids.len() - 2].clone();
    let (code, retried) = app
        .post_json(&format!("/api/tasks/{missing}/retry"), &json!({}))
        .await;
    assert_eq!(code, 200, "{retried}");
    let retried = retried["taskId"]
        .as_str()
        .or(retried["id"].as_str())
        .expect("the new task's id")
        .to_owned();
    app.wait_final(&retried, Duration::from_secs(30)).await;
    let (code, _) = app.get_json(&format!("/api/tasks/{failed}")).await;
    assert_eq!(code, 200);
    let (code, _) = app.get_json("/no/such/route").await;
    assert_eq!(code, 404);

    // Every webhook answered (the receiver refuses each first attempt) and recorded.
    let start = std::time::Instant::now();
    let m = loop {
        let (status, text) = scrape(&app, None).await;
        assert_eq!(status, 200, "{text}");
        let m = parse(&python, &text);
        if m.sum(names::WEBHOOKS, &[("outcome", "delivered")]) >= 12.0 {
            break m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "webhooks not delivered: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let posts = received.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(m.sum(names::WEBHOOKS, &[("outcome", "delivered")]), 12.0);
    assert_eq!(m.sum(names::WEBHOOKS, &[("outcome", "retry")]), 12.0);
    assert_eq!(m.sum(names::WEBHOOKS, &[("outcome", "gave_up")]), 0.0);
    assert_eq!(posts, 24, "one refused and one delivered attempt per task");

    // What the run did, from the database and the simulator.
    let tasks = app
        .repo
        .list(&TaskFilter {
            limit: 1000,
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(tasks.len(), 15, "12 + 2 + the retry");
    let stats = sim.sim.stats();
    let mut by_state: HashMap<&str, usize> = HashMap::new();
    let mut by_code: HashMap<String, usize> = HashMap::new();
    let (mut credits, mut results) = (0i64, 0usize);
    for task in &tasks {
        assert!(task.state.is_terminal(), "{task:?}");
        *by_state.entry(task.state.as_str()).or_default() += 1;
        if matches!(task.state.as_str(), "failed" | "expired") {
            *by_code
                .entry(task.error_code.clone().unwrap_or_default())
                .or_default() += 1;
        }
        if task.state.as_str() == "succeeded" {
            credits += task.credits.unwrap_or(0);
            results += task.result_keys.len();
        }
    }
    let succeeded = by_state.get("succeeded").copied().unwrap_or(0);
    println!(
        "run: {by_state:?}, failures {by_code:?}; simulator: {} created, {} rate limited, {} queries",
        stats.created, stats.rate_limited, stats.queries
    );
    assert!(succeeded >= 1, "{by_state:?}");
    assert_eq!(by_code.get("input_not_found"), Some(&2), "{by_code:?}");
    assert_eq!(by_code.get("input_not_image"), Some(&1), "{by_code:?}");
    assert!(stats.rate_limited >= 1, "the run met no 429: {stats:?}");

    let kie = ("provider", "kie");
    for state in ["succeeded", "failed", "canceled", "expired"] {
        assert_eq!(
            m.sum(names::TASKS_FINISHED, &[kie, ("outcome", state)]),
            f(by_state.get(state).copied().unwrap_or(0)),
            "finished {state}"
        );
    }
    for (code, n) in &by_code {
        assert_eq!(
            m.sum(names::TASK_FAILURES, &[kie, ("code", code)]),
            f(*n),
            "failures {code}"
        );
    }
    assert_eq!(
        m.sum(names::TASK_FAILURES, &[]),
        f(by_code.values().sum()),
        "no failure counted that the database does not show"
    );
    assert_eq!(m.sum(names::TASKS_EXPIRED, &[]), 0.0);
    // Provider requests: every create the simulator answered, by class.
    let create = ("operation", "create");
    assert_eq!(
        m.sum(names::PROVIDER_REQUESTS, &[kie, create, ("status", "2xx")]),
        stats.created as f64
    );
    assert_eq!(
        m.sum(names::PROVIDER_REQUESTS, &[kie, create, ("status", "429")]),
        stats.rate_limited as f64
    );
    assert_eq!(
        m.sum(names::PROVIDER_REQUESTS, &[kie, create]),
        (stats.created + stats.rate_limited + stats.rejected) as f64
    );
    assert_eq!(
        m.sum(names::PROVIDER_RATE_LIMITED, &[kie]),
        stats.rate_limited as f64
    );
    let pauses = m.sum(names::PROVIDER_PAUSES, &[kie, ("code", "429")]);
    assert!(
        pauses >= 1.0 && pauses <= stats.rate_limited as f64,
        "{pauses} pauses for {} 429s",
        stats.rate_limited
    );
    let query = ("operation", "query");
    assert_eq!(
        m.sum(names::PROVIDER_REQUESTS, &[kie, query]),
        stats.queries as f64
    );
    assert_eq!(m.sum(names::RECONCILER_POLLS, &[kie]), stats.queries as f64);
    assert_eq!(
        m.sum(
            &format!("{}_count", names::PROVIDER_REQUEST_SECONDS),
            &[kie]
        ),
        (stats.created + stats.rate_limited + stats.rejected + stats.queries) as f64
    );
    assert_eq!(m.sum(names::UNCONFIRMED_CREATES, &[]), 0.0);
    assert_eq!(m.sum(names::CREDITS, &[kie]), credits as f64);
    // Stages and ingest.
    let stage = |s: &'static str| {
        m.sum(
            &format!("{}_count", names::TASK_STAGE_SECONDS),
            &[kie, ("stage", s)],
        )
    };
    assert_eq!(stage("queued_to_submitted"), stats.created as f64);
    assert_eq!(stage("submitted_to_answer"), f(succeeded));
    assert_eq!(stage("answer_to_stored"), f(succeeded));
    assert_eq!(stage("end_to_end"), f(succeeded));
    assert_eq!(
        m.sum(&format!("{}_count", names::INGEST_BYTES), &[kie]),
        f(results)
    );
    assert_eq!(
        m.sum(&format!("{}_count", names::INGEST_SECONDS), &[kie]),
        f(results)
    );
    assert!(m.sum(&format!("{}_sum", names::INGEST_BYTES), &[kie]) > 0.0);
    // HTTP by route template, never the raw path.
    let route = |r: &'static str, method: &'static str, status: &'static str| {
        m.sum(
            names::HTTP_REQUESTS,
            &[("route", r), ("method", method), ("status", status)],
        )
    };
    assert_eq!(route("/api/upload", "POST", "200"), 1.0);
    assert_eq!(route("/api/generate", "POST", "200"), 4.0, "2 + 2 requests");
    assert_eq!(route("/api/tasks/{id}/retry", "POST", "200"), 1.0);
    assert_eq!(route("/api/tasks/{id}", "GET", "200"), 1.0);
    assert_eq!(route("/api/events", "GET", "200"), 1.0);
    assert_eq!(route("unmatched", "GET", "404"), 1.0);
    for sample in &m.samples {
        for value in sample.labels.values() {
            assert!(
                !value.contains("tsk_") && !value.contains('?'),
                "a raw path or query in a label: {sample:?}"
            );
        }
    }
    // Gauges: the queue is empty, the live client counted, the process described.
    for state in names::UNFINISHED_STATES {
        assert_eq!(
            m.sum(names::TASKS, &[kie, ("state", state)]),
            0.0,
            "{state}"
        );
    }
    assert_eq!(m.matching(names::TASKS, &[kie]).count(), 5);
    assert_eq!(m.sum(names::LIVE_CLIENTS, &[("transport", "sse")]), 1.0);
    assert_eq!(
        m.sum(names::LIVE_CLIENTS, &[("transport", "websocket")]),
        0.0
    );
    assert_eq!(m.sum(names::PROVIDER_PAUSED, &[kie]), 0.0);
    assert_eq!(m.sum(names::PROVIDER_UNREACHABLE, &[kie]), 0.0);
    assert_eq!(m.sum(names::PROVIDER_CREATE_SLOTS, &[kie]), 6.0);
    assert_eq!(
        m.sum(names::BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert_eq!(
        m.sum(
            names::BACKEND_INFO,
            &[("database", "sqlite"), ("bucket", "local")]
        ),
        1.0
    );
    assert!(m.sum(names::UPTIME_SECONDS, &[]) > 0.0);
    // Each family is typed and described as the catalogue says.
    for described in names::CATALOGUE {
        let family = described.name.trim_end_matches("_total");
        let Some((kind, help)) = m.families.get(family) else {
            continue;
        };
        let want = match described.kind {
            names::Kind::Counter => "counter",
            names::Kind::Gauge => "gauge",
            names::Kind::Histogram => "histogram",
        };
        assert_eq!(kind, want, "{}", described.name);
        assert_eq!(help, described.help, "{}", described.name);
    }
    drop(sse);
    stop.cancel();
}

/// A webhook receiver on loopback that refuses the first attempt of each task's webhook
/// (503) and takes the second; returns `host:port` and the count of POSTs.
async fn webhook_receiver(
    stop: CancellationToken,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let posts = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let counted = posts.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            counted.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let task = body["data"]["taskId"].as_str().unwrap_or("").to_owned();
                if seen.lock().unwrap().insert(task) {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (addr.to_string(), posts)
}

#[tokio::test]
async fn the_metrics_token_is_enforced() {
    let token = "metrics-token-0123456789";
    let app = spawn_app(&[
        ("DARKROOM_METRICS_TOKEN", token),
        ("DARKROOM_API_KEYS", "ci:dk_metricstestkey0123456789"),
    ])
    .await;
    for presented in [
        None,
        Some("wrong-token-0123456789ab"),
        Some("metrics-token"),
    ] {
        let (status, body) = scrape(&app, presented).await;
        assert_eq!(status, 401, "{presented:?}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "invalid_metrics_token", "{body}");
    }
    // An API key is not the metrics token.
    let (status, _) = scrape(&app, Some("dk_metricstestkey0123456789")).await;
    assert_eq!(status, 401);
    let (status, text) = scrape(&app, Some(token)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(names::BUILD_INFO), "{text}");
    // The refusals were counted under the route's template.
    assert!(
        text.contains(
            r#"darkroom_http_requests_total{route="/metrics",method="GET",status="401"} 4"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn without_a_token_metrics_need_an_api_key_when_keys_are_on() {
    let key = "dk_metricstestkey0123456789";
    let app = spawn_app(&[("DARKROOM_API_KEYS", &format!("ci:{key}"))]).await;
    let (status, _) = scrape(&app, None).await;
    assert_eq!(status, 401);
    let (status, text) = scrape(&app, Some(key)).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn metrics_can_have_a_listener_of_their_own() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let app = spawn_app(&[("DARKROOM_METRICS_LISTEN", &listen)]).await;
    let (status, _) = scrape(&app, None).await;
    assert_eq!(status, 404, "not on the main listener");
    let url = format!("http://{listen}/metrics");
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(response) = app.http.get(&url).send().await {
            answer = Some((response.status().as_u16(), response.text().await.unwrap()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, text) = answer.expect("the metrics listener answers");
    assert_eq!(status, 200);
    assert!(text.contains(names::UPTIME_SECONDS), "{text}");
}

#[tokio::test]
async fn two_apps_in_one_process_count_apart() {
    let one = spawn_app(&[]).await;
    let two = spawn_app(&[]).await;
    for _ in 0..3 {
        let (code, info) = one.get_json("/api/info").await;
        assert_eq!(code, 200);
        assert_eq!(info["degraded"], json!([]), "nothing is degraded: {info}");
    }
    assert_eq!(two.get_json("/api/info").await.0, 200);
    let line = |text: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(
                    r#"darkroom_http_requests_total{route="/api/info",method="GET",status="200"}"#,
                )
            })
            .map(str::to_owned)
    };
    let (_, text_one) = scrape(&one, None).await;
    let (_, text_two) = scrape(&two, None).await;
    assert!(
        line(&text_one).is_some_and(|l| l.ends_with(" 3")),
        "{text_one}"
    );
    assert!(
        line(&text_two).is_some_and(|l| l.ends_with(" 1")),
        "{text_two}"
    );
}

/// `DARKROOM_METRICS=false` (for measuring their cost): no `/metrics`, and requests are
/// not recorded; everything else answers as before.
#[tokio::test]
async fn metrics_can_be_turned_off() {
    let app = crate::harness::spawn_app(&[("DARKROOM_METRICS", "false")]).await;
    let (code, body) = app.get_json("/healthz").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = app.get_json("/metrics").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("route_not_found")),
        "{body}"
    );
    let (code, document) = app.get_json("/api/openapi.json").await;
    assert_eq!(code, 200);
    assert!(
        document["paths"].get("/metrics").is_none(),
        "the document follows the routes"
    );
}
