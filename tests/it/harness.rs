//! Test harness: a real darkroom on 127.0.0.1:0 with a temporary data directory and the
//! in-process KIE simulator, driven over real HTTP.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use darkroom::App;
use darkroom::config::Config;
use darkroom::providers::sim::{GeminiSim, KieSim};
use darkroom::storage::BlobStore;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod outage;
mod postgres;
pub use outage::Outage;
pub use postgres::{PgDatabase, fresh_postgres};

pub struct TestApp {
    pub base: String,
    pub events: Arc<darkroom::events::EventBus>,
    pub engine: Arc<darkroom::engine::Engine>,
    /// The status board the status path answers from.
    pub board: Arc<darkroom::status::StatusBoard>,
    pub repo: Arc<dyn darkroom::storage::TaskRepo>,
    pub http: reqwest::Client,
    pub blobs: BlobStore,
    pub sim: Option<Arc<KieSim>>,
    pub gemini_sim: Option<Arc<GeminiSim>>,
    /// The SQLite repository behind `repo` (its size cap fills the database in tests).
    pub sqlite: Option<Arc<darkroom::storage::sqlite::SqliteRepo>>,
    /// The PostgreSQL repository behind `repo`, when the test chose one.
    pub postgres: Option<Arc<darkroom::storage::postgres::PgRepo>>,
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    served: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Settings that keep tests fast: a quick simulator and quick polling.
const FAST: &[(&str, &str)] = &[
    ("DARKROOM_SIM_LATENCY_MS", "20-60"),
    ("DARKROOM_GEMINI_SIM_LATENCY_MS", "20-60"),
    ("DARKROOM_TICK_MS", "50"),
    ("DARKROOM_FIRST_POLL_MS", "3000"),
    ("DARKROOM_LOG", "warn"),
    ("DARKROOM_READY_MIN_FREE_MB", "1"),
];

pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_in(tempfile::tempdir().expect("temp dir"), overrides).await
}

/// `spawn_app` on a data directory that may hold an earlier run's database and bucket.
pub async fn spawn_app_in(dir: tempfile::TempDir, overrides: &[(&str, &str)]) -> TestApp {
    // TEST_LOG=darkroom=debug shows the server's log while debugging a test.
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let mut env: HashMap<String, String> = FAST
        .iter()
        .chain(overrides)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.insert("DARKROOM_DATA_DIR".into(), dir.path().display().to_string());
    let config = Config::from_env(&env).expect("test configuration is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let app = App::build(config, addr).await.expect("app builds");
    let blobs = app.state.blobs.clone();
    let sim = app.simulator.clone();
    let events = app.state.engine.events().clone();
    let engine = app.state.engine.clone();
    let board = app.state.board.clone();
    let repo = app.state.repo.clone();
    let gemini_sim = app.gemini_simulator.clone();
    let sqlite = app.sqlite.clone();
    let postgres = app.postgres.clone();
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(app.serve(listener, shutdown.clone()));
    TestApp {
        base: format!("http://{addr}"),
        events,
        engine,
        board,
        repo,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
        blobs,
        sim,
        gemini_sim,
        sqlite,
        postgres,
        dir,
        shutdown,
        served: Some(served),
    }
}

impl TestApp {
    /// Stops this server (gracefully, as on SIGTERM) and starts a new one on the same data
    /// directory: a restart.
    pub async fn restart(self, overrides: &[(&str, &str)]) -> TestApp {
        let dir = self.stop().await;
        spawn_app_in(dir, overrides).await
    }

    /// Stops this server gracefully and hands back its data directory.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        if let Some(served) = self.served.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), served).await;
        }
        // Every connection closed: the next instance opens the file afresh (SQLite would
        // otherwise hand it this instance's still-open file descriptors).
        if let Some(sqlite) = &self.sqlite {
            sqlite.close().await;
        }
        if let Some(postgres) = &self.postgres {
            postgres.close().await;
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"))
    }
}

/// A KIE simulator of the test's own making, on a loopback port, for darkroom to use as
/// if it were KIE (`kie_env`). Its listener can be closed and opened again on the same port
/// (`stop_listening`, `listen_again`): a provider that cannot be reached for a while, whose
/// account and tasks in flight survive.
pub struct TestSim {
    pub sim: Arc<KieSim>,
    pub addr: std::net::SocketAddr,
    listening: Option<(
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
}

impl Drop for TestSim {
    fn drop(&mut self) {
        if let Some((stop, _)) = self.listening.take() {
            stop.cancel();
        }
        self.sim.abandon_work();
    }
}

pub async fn spawn_sim(config: darkroom::providers::sim::KieSimConfig) -> TestSim {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = KieSim::new(config, format!("http://{addr}"));
    let mut test_sim = TestSim {
        sim,
        addr,
        listening: None,
    };
    test_sim.serve(listener);
    test_sim
}

impl TestSim {
    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let serving = tokio::spawn(self.sim.clone().listen(listener, stop.clone()));
        self.listening = Some((stop, serving));
    }

    /// Closes the listener: from now on connections to the simulator are refused. Requests
    /// already under way are answered first; work at the simulator goes on.
    pub async fn stop_listening(&mut self) {
        if let Some((stop, serving)) = self.listening.take() {
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(10), serving)
                .await
                .expect("the simulator's listener closes")
                .expect("the listener task ends")
                .expect("the listener ends cleanly");
        }
    }

    /// Listens again on the same address.
    pub async fn listen_again(&mut self) {
        assert!(self.listening.is_none(), "already listening");
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                // The port may take a moment to come free.
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Environment that makes darkroom use this simulator as KIE.
    pub fn kie_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KIE_API_TOKEN", "test-token".to_owned()),
            ("KIE_BASE_URL", format!("http://{}", self.addr)),
            ("KIE_UPLOAD_BASE_URL", format!("http://{}", self.addr)),
            ("DARKROOM_TRUSTED_FETCH_HOSTS", self.addr.to_string()),
        ]
    }
}

/// Waits until the simulator has started the callbacks of `tasks` tasks and darkroom has
/// answered every delivery (2xx or not), failing after `timeout`: from then on no callback
/// of theirs is in flight, so what darkroom does with them has been done. Returns the
/// simulator's figures at that point.
pub async fn callbacks_answered(
    sim: &KieSim,
    tasks: u64,
    timeout: Duration,
) -> darkroom::providers::sim::SimStats {
    let start = Instant::now();
    loop {
        // One snapshot reads `callbacks_sent` before the counters bumped after it.
        let stats = sim.stats();
        let started = stats.callbacks_sent.saturating_sub(stats.duplicates_sent);
        if started >= tasks
            && stats.callbacks_delivered + stats.callback_failures == stats.callbacks_sent
        {
            return stats;
        }
        assert!(
            start.elapsed() < timeout,
            "callbacks not all answered after {timeout:?}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fast KIE simulator with no rate limit of its own.
pub fn quick_sim() -> darkroom::providers::sim::KieSimConfig {
    darkroom::providers::sim::KieSimConfig {
        latency_ms: (0, 20),
        rate_limit: 0,
        image_long_side: 48,
        ..darkroom::providers::sim::KieSimConfig::default()
    }
}

/// Darkroom pointed at `sim` with its own provider limits off, `concurrency` dispatch and
/// ingest slots, and `extra` on top.
pub fn unthrottled_env(
    sim: &TestSim,
    concurrency: usize,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = sim.kie_env();
    env.extend([
        ("DARKROOM_KIE_CREATES_PER_WINDOW", "0".to_owned()),
        ("DARKROOM_KIE_QUERIES_PER_SECOND", "0".to_owned()),
        ("DARKROOM_KIE_MAX_IN_FLIGHT", "0".to_owned()),
        ("DARKROOM_DISPATCH_CONCURRENCY", concurrency.to_string()),
        ("DARKROOM_INGEST_CONCURRENCY", concurrency.to_string()),
    ]);
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

/// `spawn_app` with owned values, for environments built at run time.
pub async fn spawn_app_env(env: &[(&str, String)]) -> TestApp {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app(&env).await
}

/// The S3 server the test command started (moto). Missing means the suite was not run
/// through `./scripts/test.sh`: that is a failure, not a skip.
pub fn s3_url() -> String {
    std::env::var("DARKROOM_TEST_S3_URL").expect(
        "DARKROOM_TEST_S3_URL is not set: run the suite with ./scripts/test.sh, which starts an S3 server",
    )
}

/// Creates a fresh bucket on the test S3 server and returns its name.
pub async fn new_s3_bucket() -> String {
    let name = format!("darkroom-test-{}", uuid::Uuid::now_v7().simple());
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .put(format!("{}/{name}", s3_url()))
        .send()
        .await
        .expect("the test S3 server answers");
    assert!(
        response.status().is_success(),
        "creating bucket {name}: {}",
        response.status()
    );
    name
}

/// Environment that puts the bucket on the test S3 server through the original's variables.
pub fn s3_env(bucket: &str) -> Vec<(&'static str, String)> {
    vec![
        ("R2_ENDPOINT", s3_url()),
        ("R2_REGION", "us-east-1".to_owned()),
        ("R2_ACCESS_KEY_ID", "testing".to_owned()),
        ("R2_SECRET_ACCESS_KEY", "testing".to_owned()),
        ("R2_BUCKET_NAME", bucket.to_owned()),
    ]
}

/// The `taskIds` of a generate or batch answer.
pub fn task_ids(answer: &Value) -> Vec<String> {
    answer["taskIds"]
        .as_array()
        .unwrap_or_else(|| panic!("no taskIds in {answer}"))
        .iter()
        .map(|v| v.as_str().expect("a task id").to_owned())
        .collect()
}

/// A loopback host serving input images the way the internet may: `/input.png` an image,
/// `/missing.png` a 404, `/page.png` an HTML page, `/busy.png` a 503. Returns `host:port`
/// (trust it with `DARKROOM_TRUSTED_FETCH_HOSTS`: loopback is refused otherwise).
pub async fn input_host(stop: CancellationToken) -> String {
    use axum::http::StatusCode;
    use axum::routing::get;
    let image = png(30, 60);
    let router = axum::Router::new()
        .route(
            "/input.png",
            get(move || {
                let image = image.clone();
                async move { ([("content-type", "image/png")], image) }
            }),
        )
        .route(
            "/missing.png",
            get(|| async { (StatusCode::NOT_FOUND, "no such file") }),
        )
        .route(
            "/page.png",
            get(|| async {
                (
                    [("content-type", "text/html")],
                    "<!doctype html><title>Sign in</title><p>Please sign in to see this image.",
                )
            }),
        )
        .route(
            "/busy.png",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "try later") }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    addr.to_string()
}

/// A server of the test's own that serves one PNG at the returned URL, up whatever happens
/// to darkroom (until the test ends).
pub async fn serve_png() -> String {
    let source = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = source.local_addr().unwrap();
    let body = bytes::Bytes::from(png(40, 30));
    let app = axum::Router::new().route(
        "/source.png",
        axum::routing::get(move || {
            let body = body.clone();
            async move { ([("content-type", "image/png")], body) }
        }),
    );
    tokio::spawn(async move { axum::serve(source, app).await });
    format!("http://{addr}/source.png")
}

pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, 120])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG of noise, which does not compress: about `3 × side²` bytes.
pub fn noisy_png(side: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let [a, b, c, _] = state.to_le_bytes();
        image::Rgb([a, b, c])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, _| image::Rgb([(x * 3) as u8, 90, 200]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `method path_or_url` (a path on this app, or a whole URL) with an optional
    /// bearer key and JSON body; the status and the JSON answer (null when not JSON).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path_or_url: &str,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            self.url(path_or_url)
        };
        let mut request = self.http.request(method, url);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Uploads files (name, bytes) in the `files` field; returns (status, body).
    pub async fn upload(&self, files: &[(&str, Vec<u8>)]) -> (u16, Value) {
        let mut form = reqwest::multipart::Form::new();
        for (name, bytes) in files {
            form = form.part(
                "files",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
            );
        }
        let response = self
            .http
            .post(self.url("/api/upload"))
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Uploads one PNG and asks for `count` generations of it; returns the task ids.
    pub async fn generate_from_upload(&self, count: usize, extra: Value) -> Vec<String> {
        let files: Vec<(String, Vec<u8>)> = (0..count)
            .map(|i| (format!("src{i}.png"), png(32 + i as u32, 24)))
            .collect();
        let refs: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        let (status, up) = self.upload(&refs).await;
        assert_eq!(status, 200, "{up}");
        let uploads: Vec<Value> = up["uploaded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| json!({"key": u["key"], "url": u["url"]}))
            .collect();
        let mut body = json!({"prompt": "a person wearing a red dress", "uploads": uploads});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, answer) = self.post_json("/api/generate", &body).await;
        assert_eq!(status, 200, "{answer}");
        task_ids(&answer)
    }

    /// `GET /api/tasks/{id}` of each task, in order.
    pub async fn task_views(&self, ids: &[String]) -> Vec<Value> {
        let mut all = Vec::with_capacity(ids.len());
        for id in ids {
            let (code, task) = self.get_json(&format!("/api/tasks/{id}")).await;
            assert_eq!(code, 200, "{task}");
            all.push(task);
        }
        all
    }

    /// The text of `GET /metrics`.
    pub async fn metrics_text(&self) -> String {
        self.metrics_text_as(None).await
    }

    /// The text of `GET /metrics`, asked with `key` when given (API keys on).
    pub async fn metrics_text_as(&self, key: Option<&str>) -> String {
        let mut request = self.http.get(self.url("/metrics"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().await.unwrap().text().await.unwrap()
    }

    pub async fn status(&self, task_id: &str) -> Value {
        let (code, body) = self
            .get_json(&format!("/api/task-status?taskId={task_id}"))
            .await;
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Queues `count` tasks from one uploaded image, up to ten per request.
    pub async fn generate_many(&self, count: usize, extra: Value) -> Vec<String> {
        let (status, up) = self.upload(&[("source.png", png(48, 32))]).await;
        assert_eq!(status, 200, "{up}");
        let url = up["uploaded"][0]["url"].as_str().unwrap().to_owned();
        let mut ids = Vec::with_capacity(count);
        while ids.len() < count {
            let n = (count - ids.len()).min(10);
            let mut body = json!({"prompt": "p", "imageUrls": vec![url.clone(); n]});
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            let (code, answer) = self.post_json("/api/generate", &body).await;
            assert_eq!(code, 200, "{answer}");
            ids.extend(
                answer["taskIds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned()),
            );
        }
        ids
    }

    /// Waits until every task is final; returns how many ended in each compatible status.
    pub async fn wait_all_final(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> HashMap<String, usize> {
        let start = Instant::now();
        let mut counts = HashMap::new();
        for id in ids {
            let left = timeout.saturating_sub(start.elapsed());
            let status = self
                .wait_final(id, left.max(Duration::from_millis(1)))
                .await;
            *counts
                .entry(status["status"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        counts
    }

    /// With workers off (`DARKROOM_WORKERS=false`): steps the engine until every task is
    /// final, failing after `timeout`; their rows, in order. Reads the repository, so it
    /// works with API keys on too.
    pub async fn step_until_final(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> Vec<darkroom::storage::Task> {
        let ids: Vec<darkroom::domain::TaskId> = ids
            .iter()
            .map(|id| darkroom::domain::TaskId::parse(id).expect("a task id"))
            .collect();
        let start = Instant::now();
        loop {
            self.engine
                .run_pending()
                .await
                .expect("stepping the engine");
            let mut tasks = Vec::with_capacity(ids.len());
            for id in &ids {
                tasks.push(self.repo.get(id).await.unwrap().expect("the task exists"));
            }
            if tasks.iter().all(|t| t.state.is_terminal()) {
                return tasks;
            }
            assert!(
                start.elapsed() < timeout,
                "not all final after {timeout:?}: {tasks:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the task reaches a final compatible status.
    pub async fn wait_final(&self, task_id: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let body = self.status(task_id).await;
            if matches!(body["status"].as_str(), Some("completed" | "failed")) {
                // The bucket record of the change is written behind it: tests that read
                // records next find them written.
                assert!(
                    self.engine.flush_records(Duration::from_secs(10)).await,
                    "task records not written within 10 s"
                );
                return body;
            }
            assert!(
                start.elapsed() < timeout,
                "task {task_id} not final after {timeout:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// --- Processes: ports, child processes, this process's memory ----------------------------

/// The `darkroom` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_darkroom");

/// A loopback port free at the moment of asking (for child processes that bind by number).
pub fn free_port() -> u16 {
    // Below Linux's ephemeral range (32768-60999): a port drawn from it can be taken by an
    // outgoing connection of another test between this check and the server's bind.
    for _ in 0..200 {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a loopback port")
        .local_addr()
        .expect("its address")
        .port()
}

/// A child process that is killed and reaped when the guard is dropped, so a failing test
/// never leaves a server running.
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `url` answers 2xx, failing the test after 30 s.
pub async fn wait_for_http(http: &reqwest::Client, url: &str) {
    let start = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{url} did not come up within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `kB` field of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in KiB.
pub fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("/proc/self/status has no {field}"))
}

/// Resets the process's peak-RSS counter (`VmHWM`; Linux ≥ 4.0).
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
}

/// The variable that marks a child process running one test alone.
const ALONE: &str = "DARKROOM_IT_ALONE";

/// Runs the test named `path` (`module::function`) alone, in a child process of this test
/// binary with one test thread, so what it measures of the whole process (peak memory, the
/// global log subscriber) is its own. Returns `true` inside that child, where the test body
/// runs; in the parent it waits for the child, prints its output, fails when it failed, and
/// returns `false`. Use it as the first line: `if !alone(...) { return; }`.
pub fn alone(path: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([path, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .expect("running the test binary again");
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    print!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{path}, run alone, failed ({})",
        output.status
    );
    assert!(
        stdout.contains("1 passed"),
        "{path}, run alone, did not run exactly one test: is the name right?"
    );
    false
}
