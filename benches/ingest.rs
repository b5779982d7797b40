//! Result ingest throughput and memory, against the floor of a plain download-and-write.
//!
//! One process measures one side, so peak RSS belongs to it:
//!   cargo bench --bench ingest -- <floor|darkroom> <local|s3> [count]
//! `bench/ingest.sh` runs both sides alternately on both backends and prints the ratios.
//! For s3 the S3 endpoint comes from DARKROOM_TEST_S3_URL (the script starts moto).
//!
//! With `BENCH_RESULT_URL` set, every task's result is that URL, served by another process
//! (no simulator in this one, so the peak RSS printed is darkroom's and the runtime's
//! alone), and `BENCH_CONCURRENCY` results are ingested at once (default 8):
//! `bench/ingest_peak.sh` measures 100 concurrent 10 MB results this way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use darkroom::config::{S3Config, Secret};
use darkroom::domain::TaskState;
use darkroom::providers::sim::KieSimConfig;
use darkroom::storage::keys::ObjectSpec;
use darkroom::storage::{BlobStore, NewTask, TaskUpdate};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

mod support;
use support::{build_app, cpu_seconds, new_task, positional_args, settings, start_sim, status_kib};

/// Results ingested at once unless `BENCH_CONCURRENCY` says otherwise.
const CONCURRENCY: usize = 8;

fn concurrency() -> usize {
    std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CONCURRENCY)
}

/// A noisy source image, so the simulator's PNG results weigh about 1 MB each.
fn noisy_png(side: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [a, b, c, _] = state.to_le_bytes();
        image::Rgb([a, b, c])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Starts the KIE simulator and a source server, has the simulator make `count` results,
/// and returns their URLs.
async fn prepare_results(count: usize, shutdown: &CancellationToken) -> (Vec<String>, String) {
    let source = Bytes::from(noisy_png(600));
    let source_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source_addr = source_listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/source.png",
        axum::routing::get(move || {
            let source = source.clone();
            async move { ([("content-type", "image/png")], source) }
        }),
    );
    tokio::spawn(async move { axum::serve(source_listener, app).await });

    let config = KieSimConfig {
        latency_ms: (0, 0),
        rate_limit: 0,
        drop_rate: 1.0,
        image_long_side: 600,
        ..KieSimConfig::default()
    };
    let sim_addr = start_sim(config, shutdown).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = format!("http://{sim_addr}");
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let body = json!({"model": "google/nano-banana-edit",
            "input": {"prompt": "bench", "image_urls": [format!("http://{source_addr}/source.png")]}});
        let answer: Value = http
            .post(format!("{base}/api/v1/jobs/createTask"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(answer["data"]["taskId"].as_str().unwrap().to_owned());
    }
    let mut urls = Vec::with_capacity(count);
    for id in ids {
        loop {
            let answer: Value = http
                .get(format!("{base}/api/v1/jobs/recordInfo?taskId={id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if answer["data"]["state"] == "success" {
                let result: Value =
                    serde_json::from_str(answer["data"]["resultJson"].as_str().unwrap()).unwrap();
                urls.push(result["resultUrls"][0].as_str().unwrap().to_owned());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (urls, sim_addr)
}

fn s3_config() -> S3Config {
    S3Config {
        endpoint: Url::parse(&std::env::var("DARKROOM_TEST_S3_URL").expect("DARKROOM_TEST_S3_URL"))
            .unwrap(),
        region: "us-east-1".to_owned(),
        bucket: std::env::var("BENCH_BUCKET").expect("BENCH_BUCKET"),
        access_key_id: "testing".to_owned(),
        secret_access_key: Secret::new("testing"),
    }
}

/// The floor: GET each URL and write the bytes, nothing else.
async fn floor(urls: &[String], backend: &str, dir: &std::path::Path) -> Duration {
    let server = Url::parse("http://127.0.0.1:9/").unwrap();
    let blobs = match backend {
        "s3" => BlobStore::s3_bucket(&s3_config(), server).unwrap(),
        _ => BlobStore::local(&dir.join("floor"), server).unwrap(),
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency()));
    let mut jobs = tokio::task::JoinSet::new();
    for (n, url) in urls.iter().enumerate() {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let (http, blobs, url) = (http.clone(), blobs.clone(), url.clone());
        jobs.spawn(async move {
            let bytes = http.get(&url).send().await.unwrap().bytes().await.unwrap();
            let spec = ObjectSpec {
                key: format!("generated/floor-{n}.png"),
                content_type: "image/png",
                cache_control: "no-cache",
            };
            blobs.put(&spec, bytes).await.unwrap();
            drop(permit);
        });
    }
    while let Some(result) = jobs.join_next().await {
        result.unwrap();
    }
    started.elapsed()
}

/// The simulator and the host of every result URL: fetched over http on loopback.
fn trusted_hosts(sim_addr: &str, urls: &[String]) -> String {
    let mut hosts = vec![sim_addr.to_owned()];
    for url in urls {
        let host = Url::parse(url).unwrap().authority().to_owned();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    hosts.join(",")
}

/// darkroom: tasks waiting in `ingesting` with these result URLs, run through the engine.
async fn darkroom(
    urls: &[String],
    backend: &str,
    dir: &std::path::Path,
    sim_addr: &str,
) -> Duration {
    let mut env = settings([
        ("DARKROOM_DATA_DIR", dir.display().to_string()),
        ("DARKROOM_INGEST_CONCURRENCY", concurrency().to_string()),
        ("KIE_API_TOKEN", "bench".to_owned()),
        ("KIE_BASE_URL", format!("http://{sim_addr}")),
        (
            "DARKROOM_TRUSTED_FETCH_HOSTS",
            trusted_hosts(sim_addr, urls),
        ),
    ]);
    if backend == "s3" {
        let s3 = s3_config();
        env.insert("R2_ENDPOINT".into(), s3.endpoint.to_string());
        env.insert("R2_REGION".into(), s3.region);
        env.insert("R2_BUCKET_NAME".into(), s3.bucket);
        env.insert("R2_ACCESS_KEY_ID".into(), "testing".into());
        env.insert("R2_SECRET_ACCESS_KEY".into(), "testing".into());
    }
    let app = build_app(env).await;
    let repo = app.state.repo.clone();
    let now = chrono::Utc::now().timestamp_millis();
    let tasks: Vec<NewTask> = urls
        .iter()
        .map(|_| NewTask {
            source: "bench".into(),
            ..new_task(now)
        })
        .collect();
    repo.insert(&tasks).await.unwrap();
    for (task, url) in tasks.iter().zip(urls) {
        let update = TaskUpdate {
            state: Some(TaskState::Ingesting),
            result_source_urls: Some(vec![url.clone()]),
            ..TaskUpdate::default()
        };
        repo.update(&task.id, TaskState::Queued, None, &update, now)
            .await
            .unwrap()
            .unwrap();
    }
    let started = Instant::now();
    app.state.engine.run_pending().await.unwrap();
    let took = started.elapsed();
    for task in &tasks {
        let stored = repo.get(&task.id).await.unwrap().unwrap();
        assert_eq!(
            stored.state,
            TaskState::Succeeded,
            "{:?}",
            stored.error_message
        );
    }
    took
}

#[tokio::main]
async fn main() {
    let args = positional_args();
    let mode = args.first().map_or("darkroom", String::as_str).to_owned();
    let backend = args.get(1).map_or("local", String::as_str).to_owned();
    let count: usize = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(200);
    let shutdown = CancellationToken::new();
    let (urls, sim_addr) = match std::env::var("BENCH_RESULT_URL") {
        // The simulator still answers darkroom's provider calls; results come from afar.
        Ok(url) => {
            let config = KieSimConfig {
                rate_limit: 0,
                drop_rate: 1.0,
                ..KieSimConfig::default()
            };
            let sim_addr = start_sim(config, &shutdown).await;
            (vec![url; count], sim_addr)
        }
        Err(_) => prepare_results(count, &shutdown).await,
    };
    let dir = tempfile::tempdir().unwrap();
    let before = status_kib("VmHWM:");
    let cpu_before = cpu_seconds();
    let took = match mode.as_str() {
        "floor" => floor(&urls, &backend, dir.path()).await,
        _ => darkroom(&urls, &backend, dir.path(), &sim_addr).await,
    };
    // The process's CPU time over the measured part: the side's own work and the
    // simulator serving the downloads (the same for both sides).
    let cpu = cpu_seconds() - cpu_before;
    let rate = count as f64 / took.as_secs_f64();
    // One line, machine-readable, for bench/ingest.sh.
    println!(
        "RESULT mode={mode} backend={backend} count={count} seconds={:.3} per_second={rate:.1} cpu_us_per_task={:.0} peak_rss_kib={} rss_before_kib={before}",
        took.as_secs_f64(),
        cpu * 1e6 / count as f64,
        status_kib("VmHWM:")
    );
    shutdown.cancel();
}
