//! Submit throughput against the simulator's own createTask throughput, and memory with
//! 10,000 queued tasks. One side per process:
//!   cargo bench --bench submit -- <direct|darkroom|queued> [count]
//! `bench/submit.sh` alternates the sides and prints the ratios.

use std::sync::Arc;
use std::time::{Duration, Instant};

use darkroom::domain::TaskState;
use darkroom::providers::sim::KieSimConfig;
use darkroom::storage::{NewTask, TaskFilter};
use serde_json::json;
use tokio_util::sync::CancellationToken;

mod support;
use support::{build_app, cpu_seconds, new_task, positional_args, settings, start_sim, status_kib};

const CONCURRENCY: usize = 16;

/// The baseline: createTask hit directly with the same concurrency.
async fn direct(sim: &str, count: usize) -> Duration {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let body = json!({"model": "google/nano-banana-edit", "callBackUrl": "http://127.0.0.1:9/cb",
        "input": {"prompt": "bench", "image_urls": ["https://example.com/source.png"]}});
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..count {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let (http, body, url) = (
            http.clone(),
            body.clone(),
            format!("{sim}/api/v1/jobs/createTask"),
        );
        jobs.spawn(async move {
            let answer: serde_json::Value = http
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(answer["code"], 200);
            drop(permit);
        });
    }
    while jobs.join_next().await.is_some() {}
    started.elapsed()
}

/// darkroom with the submit path's limits lifted; `sim` is the provider, or the built-in one.
async fn app(sim: Option<&str>, dir: &std::path::Path) -> darkroom::App {
    let mut env = settings([
        ("DARKROOM_DATA_DIR", dir.display().to_string()),
        ("DARKROOM_DISPATCH_CONCURRENCY", CONCURRENCY.to_string()),
        ("DARKROOM_KIE_CREATES_PER_WINDOW", "0".to_owned()),
        ("DARKROOM_KIE_MAX_IN_FLIGHT", "0".to_owned()),
        ("DARKROOM_FIRST_POLL_MS", "600000".to_owned()),
    ]);
    if let Some(sim) = sim {
        env.insert("KIE_API_TOKEN".into(), "bench".into());
        env.insert("KIE_BASE_URL".into(), sim.to_owned());
    }
    build_app(env).await
}

/// darkroom: `count` queued tasks dispatched by the engine's own worker loops (as `serve`
/// runs them) until all are submitted.
async fn through_darkroom(sim: &str, count: usize, dir: &std::path::Path) -> Duration {
    let app = app(Some(sim), dir).await;
    let tasks: Vec<NewTask> = (0..count)
        .map(|_| new_task(chrono::Utc::now().timestamp_millis()))
        .collect();
    for chunk in tasks.chunks(500) {
        app.state.repo.insert(chunk).await.unwrap();
    }
    let mut events = app.state.engine.events().subscribe();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let workers = tokio::spawn(app.state.engine.clone().run(shutdown.clone()));
    let mut submitted = 0;
    while submitted < count {
        match events.recv().await {
            Ok(event) if event.state == TaskState::Submitted.as_str() => submitted += 1,
            Ok(_) => {}
            // Fell behind the bus: count from the database instead.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                submitted = submitted_count(&app, count).await;
            }
            Err(e) => panic!("event bus closed: {e}"),
        }
    }
    let took = started.elapsed();
    shutdown.cancel();
    workers.await.unwrap();
    assert_eq!(
        submitted_count(&app, count).await,
        count,
        "every task submitted"
    );
    took
}

async fn submitted_count(app: &darkroom::App, count: usize) -> usize {
    let filter = TaskFilter {
        states: vec![TaskState::Submitted],
        limit: count + 1,
        ..TaskFilter::default()
    };
    app.state.repo.list(&filter).await.unwrap().len()
}

#[tokio::main]
async fn main() {
    // BENCH_LOG=sqlx::query=debug prints every statement with its time, to find the
    // costly ones (the figures run slower with it).
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let args = positional_args();
    let mode = args.first().map_or("darkroom", String::as_str).to_owned();
    let count: usize = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(2000);
    let shutdown = CancellationToken::new();
    let dir = tempfile::tempdir().unwrap();
    match mode.as_str() {
        "queued" => {
            let app = app(None, dir.path()).await;
            let idle_kib = status_kib("VmRSS:");
            let tasks: Vec<NewTask> = (0..count)
                .map(|_| new_task(chrono::Utc::now().timestamp_millis()))
                .collect();
            for chunk in tasks.chunks(500) {
                app.state.repo.insert(chunk).await.unwrap();
            }
            // The queue as a polling client sees it: one status answer per task.
            for task in tasks.iter().step_by(10) {
                app.state.repo.queue_position(&task.id).await.unwrap();
            }
            println!(
                "RESULT mode=queued count={count} idle_rss_kib={idle_kib} rss_kib={} peak_rss_kib={}",
                status_kib("VmRSS:"),
                status_kib("VmHWM:")
            );
        }
        _ => {
            // No limit, and tasks that never finish during the run (no callbacks).
            let config = KieSimConfig {
                latency_ms: (600_000, 600_000),
                rate_limit: 0,
                ..KieSimConfig::default()
            };
            let sim = format!("http://{}", start_sim(config, &shutdown).await);
            let cpu_before = cpu_seconds();
            let took = match mode.as_str() {
                "direct" => direct(&sim, count).await,
                _ => through_darkroom(&sim, count, dir.path()).await,
            };
            let cpu = cpu_seconds() - cpu_before;
            println!(
                "RESULT mode={mode} count={count} seconds={:.3} per_second={:.1} cpu_us_per_task={:.0} peak_rss_kib={}",
                took.as_secs_f64(),
                count as f64 / took.as_secs_f64(),
                cpu * 1e6 / count as f64,
                status_kib("VmHWM:")
            );
        }
    }
    shutdown.cancel();
}
