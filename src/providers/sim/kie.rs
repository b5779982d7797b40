//! KIE.ai-compatible simulator: the jobs API (`createTask`, `recordInfo`), callbacks in
//! KIE's exact body format (optionally HMAC-signed), result files over HTTP, and fault
//! injection (latency, failures, duplicate / lost / early callbacks, 429 bursts, tasks
//! forgotten after the create).
//!
//! It follows docs/PROVIDERS.md including KIE's inconsistencies — `costTime` is seconds
//! in callbacks but milliseconds in `recordInfo`, `param` and `resultJson` are JSON
//! *strings* — because darkroom's KIE client has to cope with the real thing.

use std::collections::{HashMap, VecDeque};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::render::{self, ASPECT_RATIOS, OutputFormat, Rendered};

const EDIT_MODEL: &str = "google/nano-banana-edit";
/// Text-only variant: same input minus `image_urls`.
const TEXT_MODEL: &str = "google/nano-banana";

const MAX_PROMPT_CHARS: usize = 5000;
const MAX_IMAGE_URLS: usize = 10;
const DEFAULT_ASPECT: &str = "1:1";

/// Every account starts with this balance; each successful image costs
/// `CREDITS_PER_IMAGE` (nano-banana's price on KIE).
const INITIAL_CREDITS: u64 = 100_000;
const CREDITS_PER_IMAGE: u64 = 4;

const INPUT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_INPUT_BYTES: usize = 20 * 1024 * 1024;
const MAX_INPUT_DIMENSION: u32 = 10_000;
/// Enough for a 10000×6000 RGBA decode; a decompression bomb fails instead of
/// taking the process down.
const MAX_DECODE_ALLOC_BYTES: u64 = 256 * 1024 * 1024;

/// KIE documents a 15 s callback timeout for its other APIs.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(15);

/// Generated files are kept in memory; past this total the oldest are forgotten (their
/// URLs then 404, like KIE's expiring result URLs) so a long-running demo stays bounded.
const FILE_STORE_CAP_BYTES: usize = 256 * 1024 * 1024;

const SUCCESS_CALLBACK_MSG: &str = "Playground task completed successfully.";
const FAILURE_CALLBACK_MSG: &str = "Playground task failed.";
const INTERNAL_ERROR_MSG: &str = "Internal server error";

const TIMESTAMP_HEADER: &str = "X-Webhook-Timestamp";
const SIGNATURE_HEADER: &str = "X-Webhook-Signature";

type HmacSha256 = Hmac<Sha256>;

/// Behaviour and fault knobs of the simulator. Rates are probabilities in `0..=1`
/// (values outside are clamped), rolled independently for every task.
#[derive(Clone, Debug)]
pub struct KieSimConfig {
    /// When set, every `/api/v1` request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Generation time in milliseconds, uniform in `[min, max]`.
    pub latency_ms: (u64, u64),
    /// Share of tasks that end in state `fail` with failCode `500`.
    pub fail_rate: f64,
    /// Share of callbacks delivered more than once.
    pub duplicate_rate: f64,
    /// Total deliveries of a duplicated callback, sent one after another.
    pub duplicate_count: u32,
    /// Share of callbacks never sent; `recordInfo` still answers.
    pub drop_rate: f64,
    /// Share of tasks generated and called back *before* `createTask` answers.
    pub early_callback_rate: f64,
    /// When set, callbacks carry KIE's `X-Webhook-Timestamp` / `X-Webhook-Signature`.
    pub hmac_key: Option<String>,
    /// Creates accepted per sliding window; the excess gets 429. 0 disables the limit.
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// KIE may report business errors as HTTP 200 with the code only in the body
    /// (unconfirmed); when true the simulator does that, otherwise HTTP status = code.
    pub errors_in_body: bool,
    /// Base of the result URLs handed out; defaults to the address given to [`KieSim::new`].
    pub public_url: Option<String>,
    /// Long side of generated images in pixels (clamped to 16..=4096).
    pub image_long_side: u32,
    /// Upper bound of deliveries of a duplicated callback: each duplicated callback is
    /// delivered a random number of times in `duplicate_count..=duplicate_count_max`.
    pub duplicate_count_max: u32,
    /// Deliver a duplicated callback's copies all at once instead of one after another.
    pub concurrent_duplicates: bool,
    /// Share of creates refused with 429 (and `Retry-After: 1`) whatever the window says.
    pub http_429_rate: f64,
    /// Share of creates refused with a 500 or a 455 (maintenance), alternately.
    pub server_error_rate: f64,
    /// Share of creates that make the task but answer only after `timeout_hang`, so the
    /// client times out not knowing the task exists.
    pub timeout_rate: f64,
    pub timeout_hang: Duration,
    /// Extra delay before a callback is delivered, uniform in `[min, max]` ms.
    pub late_callback_ms: (u64, u64),
    /// Delay before a result file is served, ms.
    pub download_delay_ms: u64,
    /// The account's credit balance at start. Creates are refused with 402 when the
    /// balance, less what tasks in progress will cost, cannot pay for one more.
    pub credits: u64,
    /// Share of tasks forgotten right after `createTask` accepted them: `recordInfo` answers
    /// 404 "not found" for them (in the body too with `errors_in_body`), nothing is generated
    /// and no callback comes.
    pub forget_rate: f64,
}

impl Default for KieSimConfig {
    fn default() -> Self {
        Self {
            token: None,
            latency_ms: (1000, 3000),
            fail_rate: 0.0,
            duplicate_rate: 0.0,
            duplicate_count: 2,
            drop_rate: 0.0,
            early_callback_rate: 0.0,
            hmac_key: None,
            rate_limit: 20,
            rate_window: Duration::from_secs(10),
            errors_in_body: false,
            public_url: None,
            image_long_side: 512,
            duplicate_count_max: 0,
            concurrent_duplicates: false,
            http_429_rate: 0.0,
            server_error_rate: 0.0,
            timeout_rate: 0.0,
            timeout_hang: Duration::from_secs(60),
            late_callback_ms: (0, 0),
            download_delay_ms: 0,
            credits: INITIAL_CREDITS,
            forget_rate: 0.0,
        }
    }
}

/// Counters exposed at `GET /sim/stats`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    pub created: u64,
    pub rate_limited: u64,
    pub rejected: u64,
    /// Every callback delivery attempt, duplicates included.
    pub callbacks_sent: u64,
    /// Deliveries that failed in transport or got a non-2xx answer.
    pub callback_failures: u64,
    /// Deliveries beyond the first for duplicated callbacks.
    pub duplicates_sent: u64,
    pub dropped: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub queries: u64,
    pub files_served: u64,
    /// Files received through the file upload API.
    pub uploads: u64,
    /// Creates refused by fault injection (429 bursts, 500, 455).
    pub injected_errors: u64,
    /// Creates that made the task but answered too late.
    pub timeouts: u64,
    /// Accepted creates for a callback URL (a client task) already seen: double billing.
    pub duplicate_creates: u64,
    /// The most creates accepted within any one rate window.
    pub max_creates_in_window: u64,
    /// Tasks accepted and then forgotten (fault injection).
    pub forgotten: u64,
    /// `recordInfo` answers of "not found".
    pub not_found: u64,
}

/// Lock-free twin of [`SimStats`], bumped from handlers and background tasks.
#[derive(Default)]
struct Counters {
    created: AtomicU64,
    rate_limited: AtomicU64,
    rejected: AtomicU64,
    callbacks_sent: AtomicU64,
    callback_failures: AtomicU64,
    duplicates_sent: AtomicU64,
    dropped: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    queries: AtomicU64,
    files_served: AtomicU64,
    uploads: AtomicU64,
    injected_errors: AtomicU64,
    timeouts: AtomicU64,
    duplicate_creates: AtomicU64,
    max_creates_in_window: AtomicU64,
    forgotten: AtomicU64,
    not_found: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SimStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SimStats {
            created: read(&self.created),
            rate_limited: read(&self.rate_limited),
            rejected: read(&self.rejected),
            callbacks_sent: read(&self.callbacks_sent),
            callback_failures: read(&self.callback_failures),
            duplicates_sent: read(&self.duplicates_sent),
            dropped: read(&self.dropped),
            succeeded: read(&self.succeeded),
            failed: read(&self.failed),
            queries: read(&self.queries),
            files_served: read(&self.files_served),
            uploads: read(&self.uploads),
            injected_errors: read(&self.injected_errors),
            timeouts: read(&self.timeouts),
            duplicate_creates: read(&self.duplicate_creates),
            max_creates_in_window: read(&self.max_creates_in_window),
            forgotten: read(&self.forgotten),
            not_found: read(&self.not_found),
        }
    }
}

/// A KIE.ai-compatible server. Build it with [`KieSim::new`], then mount
/// [`KieSim::router`] or run [`KieSim::serve`].
pub struct KieSim {
    config: KieSimConfig,
    /// `{base}/files/`, the prefix of every result URL.
    files_base: String,
    /// Building a client only fails when TLS cannot initialise; the simulator still
    /// answers then, and tasks fail with the reason instead of the process panicking.
    http: Result<reqwest::Client, String>,
    ledger: Mutex<Ledger>,
    counters: Counters,
    /// Stops in-flight generations and callback deliveries once `serve` returns.
    background: CancellationToken,
}

/// Everything mutable, behind one lock that is only ever held briefly.
#[derive(Default)]
struct Ledger {
    /// Accepted creates in the last rate window, for `max_creates_in_window` (kept even
    /// when the limit is off).
    accepted_window: VecDeque<Instant>,
    /// Accepted creates per callback URL (without its query), to spot double creates.
    creates_per_callback: HashMap<String, u32>,
    tasks: HashMap<String, Task>,
    order: Vec<String>,
    recent_creates: VecDeque<Instant>,
    files: HashMap<String, StoredFile>,
    file_order: VecDeque<String>,
    file_bytes: usize,
    credits_used: u64,
    /// Tasks accepted and not finished, whose credits are spoken for.
    credits_reserved: u64,
    initial_credits: u64,
}

struct StoredFile {
    bytes: Bytes,
    content_type: &'static str,
}

struct Task {
    model: &'static str,
    param: String,
    callback_url: Option<String>,
    state: TaskState,
    started: Instant,
    create_time_ms: i64,
    update_time_ms: i64,
    complete_time_ms: Option<i64>,
    cost: Option<Duration>,
    result_urls: Vec<String>,
    failure: Option<Failure>,
    credits: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    Waiting,
    Generating,
    Success,
    Fail,
}

impl TaskState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Generating => "generating",
            Self::Success => "success",
            Self::Fail => "fail",
        }
    }
}

/// Why a task failed, as KIE reports it (`failCode` is a string there).
#[derive(Clone, Debug)]
struct Failure {
    code: &'static str,
    message: String,
}

impl Failure {
    fn internal() -> Self {
        Self {
            code: "500",
            message: INTERNAL_ERROR_MSG.to_owned(),
        }
    }

    fn bad_input(error: &InputError) -> Self {
        Self {
            code: "400",
            message: error.to_string(),
        }
    }
}

/// A validated `createTask` body.
#[derive(Debug)]
struct CreateRequest {
    model: &'static str,
    callback_url: Option<String>,
    prompt: String,
    image_urls: Vec<String>,
    output_format: OutputFormat,
    aspect: String,
    /// The request body re-serialised, reported back as `param`.
    param: String,
}

/// The dice rolled for one task at creation.
#[derive(Clone, Copy, Debug)]
struct Faults {
    latency: Duration,
    fail: bool,
    drop_callback: bool,
    deliveries: u32,
    early: bool,
    /// Extra wait before the callback.
    late: Duration,
    /// The create answer is held back past the client's timeout.
    hang: bool,
    /// The task is forgotten as soon as it is accepted.
    forget: bool,
}

enum Admission {
    RateLimited,
    NoCredits,
    Rejected(String),
    Accepted {
        task_id: String,
        request: CreateRequest,
        faults: Faults,
    },
}

/// Why an input image could not be used; becomes failCode `400`.
#[derive(Debug, thiserror::Error)]
enum InputError {
    #[error("Input image could not be fetched: the simulator has no HTTP client ({0})")]
    NoClient(String),
    #[error("Input image could not be fetched: {0}")]
    Transport(String),
    #[error("Input image could not be fetched: its URL answered HTTP {0}")]
    Status(u16),
    #[error("Input image is larger than {} MiB", MAX_INPUT_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("Input image is not a JPEG, PNG or WebP file")]
    UnsupportedFormat,
    #[error("Input image could not be decoded: {0}")]
    Decode(String),
}

/// Which reading of a task is being built: KIE reports `costTime` in seconds in
/// callbacks and in milliseconds in `recordInfo`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Callback,
    Query,
}

impl KieSim {
    /// Binds nothing: builds the state. `base_url` is where it is reachable (used for
    /// result URLs when `config.public_url` is `None`).
    pub fn new(config: KieSimConfig, base_url: String) -> Arc<KieSim> {
        let initial_credits = config.credits;
        let base = config.public_url.as_deref().unwrap_or(&base_url);
        let files_base = format!("{}/files/", base.trim_end_matches('/'));
        // Inputs and callback receivers in tests live on loopback; a proxy taken from
        // the environment would break that, and a simulator has no use for one.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|err| err.to_string());
        if let Err(err) = &http {
            tracing::error!(error = %err, "kie-sim could not build its HTTP client; tasks will fail");
        }
        Arc::new(KieSim {
            config,
            files_base,
            http,
            ledger: Mutex::new(Ledger {
                initial_credits,
                ..Ledger::default()
            }),
            counters: Counters::default(),
            background: CancellationToken::new(),
        })
    }

    /// All routes, with the state applied.
    pub fn router(self: &Arc<Self>) -> Router {
        let api = Router::new()
            .route("/api/v1/jobs/createTask", post(create_task))
            .route("/api/v1/jobs/recordInfo", get(record_info))
            .route("/api/v1/common/download-url", post(download_url))
            .route("/api/v1/chat/credit", get(credit))
            // KIE serves these from another host; one simulator answers both.
            .route("/api/file-stream-upload", post(file_stream_upload))
            .route("/api/file-base64-upload", post(file_base64_upload))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(self),
                require_token,
            ));
        Router::new()
            .merge(api)
            .route("/files/{name}", get(serve_file))
            .route("/sim/stats", get(stats))
            .fallback(not_found)
            .with_state(Arc::clone(self))
    }

    /// Serves on the listener until `shutdown` is cancelled, then abandons work still in
    /// flight (pending generations and callbacks).
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let result = Arc::clone(&self).listen(listener, shutdown).await;
        self.abandon_work();
        tracing::info!("kie-sim stopped");
        result
    }

    /// Serves on the listener until `stop` is cancelled, then closes it (new connections are
    /// refused) while tasks in flight go on. Listening again later on the same address
    /// makes a provider that was unreachable for a while, with its account intact.
    pub async fn listen(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, files_base = %self.files_base, "kie-sim listening");
        }
        axum::serve(listener, self.router())
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    }

    /// Abandons generations and callback deliveries in flight, for good.
    pub fn abandon_work(&self) {
        self.background.cancel();
    }

    pub fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    /// The callBackUrl the client registered for a sim task id (tests use it to replay
    /// callbacks), if any.
    pub fn callback_url(&self, task_id: &str) -> Option<String> {
        self.ledger()
            .tasks
            .get(task_id)
            .and_then(|task| task.callback_url.clone())
    }

    /// Every task id created, in creation order.
    pub fn task_ids(&self) -> Vec<String> {
        self.ledger().order.clone()
    }

    /// Expires every file URL handed out so far (results and uploaded inputs), as KIE's do
    /// after a while: they answer 404 from now on, while `recordInfo` still lists them.
    /// Returns how many files expired.
    pub fn expire_results(&self) -> usize {
        let mut ledger = self.ledger();
        let expired = ledger.files.len();
        ledger.files.clear();
        ledger.file_order.clear();
        ledger.file_bytes = 0;
        expired
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        self.http.as_ref().map_err(Clone::clone)
    }

    // ----- envelopes -------------------------------------------------------------

    /// An error envelope; its HTTP status depends on `errors_in_body`.
    fn error(&self, code: u16, msg: &str) -> Response {
        let status = if self.config.errors_in_body {
            StatusCode::OK
        } else {
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        };
        envelope(status, code, msg, Value::Null)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.config.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|presented| constant_time_eq(presented.as_bytes(), expected.as_bytes()))
    }

    // ----- createTask ------------------------------------------------------------

    /// Rate limit, validation and registration, atomically: the limit is checked first
    /// and only accepted creates occupy the window, as on KIE.
    fn admit(&self, request: Result<CreateRequest, String>) -> Admission {
        let now = Instant::now();
        let mut ledger = self.ledger();
        if self.window_is_full(&mut ledger.recent_creates, now) {
            Counters::bump(&self.counters.rate_limited);
            return Admission::RateLimited;
        }
        let request = match request {
            Ok(request) => request,
            Err(msg) => {
                Counters::bump(&self.counters.rejected);
                return Admission::Rejected(msg);
            }
        };
        if ledger
            .remaining_credits()
            .saturating_sub(ledger.credits_reserved)
            < CREDITS_PER_IMAGE
        {
            return Admission::NoCredits;
        }
        ledger.credits_reserved += CREDITS_PER_IMAGE;
        ledger.recent_creates.push_back(now);
        self.count_accepted(&mut ledger, now, request.callback_url.as_deref());
        let task_id = uuid::Uuid::now_v7().simple().to_string();
        ledger
            .tasks
            .insert(task_id.clone(), Task::new(&request, now));
        ledger.order.push(task_id.clone());
        drop(ledger);
        Counters::bump(&self.counters.created);
        Admission::Accepted {
            task_id,
            request,
            faults: self.roll_faults(),
        }
    }

    /// Statistics every accepted create feeds: the busiest window, and double creates.
    fn count_accepted(&self, ledger: &mut Ledger, now: Instant, callback_url: Option<&str>) {
        let window = self.config.rate_window;
        ledger.accepted_window.push_back(now);
        while ledger
            .accepted_window
            .front()
            .is_some_and(|&at| now.duration_since(at) >= window)
        {
            ledger.accepted_window.pop_front();
        }
        self.counters
            .max_creates_in_window
            .fetch_max(ledger.accepted_window.len() as u64, Ordering::Relaxed);
        if let Some(url) = callback_url {
            let key = url.split('?').next().unwrap_or(url).to_owned();
            let seen = ledger.creates_per_callback.entry(key).or_insert(0);
            *seen += 1;
            if *seen > 1 {
                Counters::bump(&self.counters.duplicate_creates);
            }
        }
    }

    /// A refusal injected before the create is looked at (429 burst, 500, 455).
    fn injected_refusal(&self) -> Option<Response> {
        let mut rng = rand::rng();
        if chance(&mut rng, self.config.http_429_rate) {
            Counters::bump(&self.counters.injected_errors);
            let mut response = self.error(429, &self.rate_limit_message());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Some(response);
        }
        if chance(&mut rng, self.config.server_error_rate) {
            let n = self
                .counters
                .injected_errors
                .fetch_add(1, Ordering::Relaxed);
            return Some(if n.is_multiple_of(2) {
                self.error(500, "Internal server error")
            } else {
                self.error(455, "Service under maintenance")
            });
        }
        None
    }

    /// Drops creates older than the window, then reports whether it is full.
    fn window_is_full(&self, window: &mut VecDeque<Instant>, now: Instant) -> bool {
        if self.config.rate_limit == 0 {
            return false;
        }
        while window
            .front()
            .is_some_and(|&at| now.duration_since(at) >= self.config.rate_window)
        {
            window.pop_front();
        }
        window.len() >= self.config.rate_limit as usize
    }

    fn rate_limit_message(&self) -> String {
        let window = self.config.rate_window;
        let span = if window.subsec_nanos() == 0 {
            format!("{} seconds", window.as_secs())
        } else {
            format!("{} milliseconds", window.as_millis())
        };
        format!(
            "Rate limited: {} requests per {span}",
            self.config.rate_limit
        )
    }

    fn roll_faults(&self) -> Faults {
        let config = &self.config;
        let mut rng = rand::rng();
        let (low, high) = config.latency_ms;
        let latency_ms = rng.random_range(low.min(high)..=high.max(low));
        let duplicated = chance(&mut rng, config.duplicate_rate);
        let min_copies = config.duplicate_count.max(1);
        let copies = rng.random_range(min_copies..=config.duplicate_count_max.max(min_copies));
        let (late_low, late_high) = config.late_callback_ms;
        let late_ms = rng.random_range(late_low.min(late_high)..=late_high.max(late_low));
        Faults {
            latency: Duration::from_millis(latency_ms),
            fail: chance(&mut rng, config.fail_rate),
            drop_callback: chance(&mut rng, config.drop_rate),
            deliveries: if duplicated { copies } else { 1 },
            early: chance(&mut rng, config.early_callback_rate),
            late: Duration::from_millis(late_ms),
            hang: chance(&mut rng, config.timeout_rate),
            forget: chance(&mut rng, config.forget_rate),
        }
    }

    // ----- generation ------------------------------------------------------------

    fn spawn_task(self: &Arc<Self>, task_id: String, request: CreateRequest, faults: Faults) {
        tokio::spawn(Arc::clone(self).run_task(task_id, request, faults));
    }

    /// Generates, records the outcome and delivers the callback, unless shut down first.
    async fn run_task(self: Arc<Self>, task_id: String, request: CreateRequest, faults: Faults) {
        let work = async {
            let outcome = self.generate(&task_id, &request, faults).await;
            let payload = self.finish(&task_id, outcome);
            match (&request.callback_url, payload) {
                (Some(url), Some(payload)) => {
                    self.deliver_callbacks(&task_id, url, &payload, faults)
                        .await;
                }
                _ => tracing::debug!(task_id = %task_id, "no callback registered"),
            }
        };
        tokio::select! {
            () = work => {}
            () = self.background.cancelled() => {
                tracing::info!(task_id = %task_id, "kie-sim task abandoned at shutdown");
            }
        }
    }

    /// Waits out the simulated queue and generation time, then produces the image.
    async fn generate(
        &self,
        task_id: &str,
        request: &CreateRequest,
        faults: Faults,
    ) -> Result<Rendered, Failure> {
        // KIE shows `waiting` for a while before `generating`; spend a quarter there.
        let queued = faults.latency / 4;
        tokio::time::sleep(queued).await;
        self.set_state(task_id, TaskState::Generating);
        tokio::time::sleep(faults.latency.saturating_sub(queued)).await;
        if faults.fail {
            return Err(Failure::internal());
        }
        let input = match request.image_urls.first() {
            Some(url) => Some(self.fetch_input(url).await.map_err(|err| {
                tracing::info!(task_id = %task_id, host = %url_host(url), error = %err, "kie-sim input unusable");
                Failure::bad_input(&err)
            })?),
            None => None,
        };
        let prompt = request.prompt.clone();
        let aspect = request.aspect.clone();
        let format = request.output_format;
        let long_side = self.config.image_long_side;
        // Decoding and encoding are CPU-bound; keep them off the async workers.
        let rendered = tokio::task::spawn_blocking(move || {
            let source = match input {
                Some(bytes) => decode_input(&bytes).map_err(|err| Failure::bad_input(&err))?,
                None => render::canvas(&prompt),
            };
            render::render(&source, &prompt, &aspect, format, long_side).map_err(|err| {
                tracing::error!(error = %err, "kie-sim could not render a result");
                Failure::internal()
            })
        })
        .await;
        rendered.unwrap_or_else(|err| {
            tracing::error!(task_id = %task_id, error = %err, "kie-sim render task died");
            Err(Failure::internal())
        })
    }

    /// Downloads an input image: 10 s for the whole exchange, at most 20 MiB.
    async fn fetch_input(&self, url: &str) -> Result<Bytes, InputError> {
        let client = self.http().map_err(InputError::NoClient)?;
        // The URL may be presigned; keep it out of error texts that end up in failMsg.
        let transport = |err: reqwest::Error| InputError::Transport(err.without_url().to_string());
        let mut response = client
            .get(url)
            .timeout(INPUT_FETCH_TIMEOUT)
            .send()
            .await
            .map_err(transport)?;
        if !response.status().is_success() {
            return Err(InputError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_INPUT_BYTES as u64)
        {
            return Err(InputError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_INPUT_BYTES {
                return Err(InputError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }

    /// Loses a task it has just accepted: its reserved credits go back, and from now on
    /// `recordInfo` does not know it.
    fn forget(&self, task_id: &str) {
        let mut ledger = self.ledger();
        if ledger.tasks.remove(task_id).is_some() {
            ledger.credits_reserved = ledger.credits_reserved.saturating_sub(CREDITS_PER_IMAGE);
        }
        drop(ledger);
        Counters::bump(&self.counters.forgotten);
    }

    fn set_state(&self, task_id: &str, state: TaskState) {
        if let Some(task) = self.ledger().tasks.get_mut(task_id) {
            task.state = state;
            task.update_time_ms = now_ms();
        }
    }

    /// Records the outcome (storing the result file) and returns the callback body.
    fn finish(&self, task_id: &str, outcome: Result<Rendered, Failure>) -> Option<Value> {
        let now = now_ms();
        let mut ledger = self.ledger();
        ledger.credits_reserved = ledger.credits_reserved.saturating_sub(CREDITS_PER_IMAGE);
        let (state, result_urls, failure, credits) = match outcome {
            Ok(rendered) => {
                let name = format!("{task_id}-0.{}", rendered.extension);
                let url = format!("{}{name}", self.files_base);
                ledger.store_file(
                    name,
                    StoredFile {
                        bytes: Bytes::from(rendered.bytes),
                        content_type: rendered.content_type,
                    },
                );
                ledger.credits_used += CREDITS_PER_IMAGE;
                (TaskState::Success, vec![url], None, CREDITS_PER_IMAGE)
            }
            Err(failure) => (TaskState::Fail, Vec::new(), Some(failure), 0),
        };
        let remained = ledger.remaining_credits();
        let task = ledger.tasks.get_mut(task_id)?;
        task.state = state;
        task.result_urls = result_urls;
        task.failure = failure;
        task.credits = credits;
        task.update_time_ms = now;
        task.complete_time_ms = Some(now);
        let cost = task.started.elapsed();
        task.cost = Some(cost);
        let counter = match state {
            TaskState::Success => &self.counters.succeeded,
            _ => &self.counters.failed,
        };
        Counters::bump(counter);
        tracing::info!(
            task_id = %task_id,
            state = state.as_str(),
            fail_code = task.failure.as_ref().map(|failure| failure.code),
            fail_msg = task.failure.as_ref().map(|failure| failure.message.as_str()),
            cost_ms = u64::try_from(cost.as_millis()).unwrap_or(u64::MAX),
            "kie-sim task finished"
        );
        Some(callback_body(task_id, task, remained))
    }

    // ----- callbacks -------------------------------------------------------------

    async fn deliver_callbacks(&self, task_id: &str, url: &str, payload: &Value, faults: Faults) {
        if faults.drop_callback {
            Counters::bump(&self.counters.dropped);
            tracing::info!(task_id = %task_id, "kie-sim callback dropped (fault injection)");
            return;
        }
        let body = match serde_json::to_vec(payload) {
            Ok(body) => Bytes::from(body),
            Err(err) => {
                tracing::error!(task_id = %task_id, error = %err, "kie-sim could not serialise a callback");
                return;
            }
        };
        if !faults.late.is_zero() {
            tokio::time::sleep(faults.late).await;
        }
        let duplicates = u64::from(faults.deliveries.saturating_sub(1));
        self.counters
            .duplicates_sent
            .fetch_add(duplicates, Ordering::Relaxed);
        self.counters
            .callbacks_sent
            .fetch_add(u64::from(faults.deliveries), Ordering::Relaxed);
        if self.config.concurrent_duplicates {
            let deliveries = (1..=faults.deliveries)
                .map(|delivery| self.post_callback(task_id, url, body.clone(), delivery));
            futures::future::join_all(deliveries).await;
        } else {
            // One after another: a duplicate racing its original is the other mode.
            for delivery in 1..=faults.deliveries {
                self.post_callback(task_id, url, body.clone(), delivery)
                    .await;
            }
        }
    }

    async fn post_callback(&self, task_id: &str, url: &str, body: Bytes, delivery: u32) {
        let host = url_host(url);
        let client = match self.http() {
            Ok(client) => client,
            Err(err) => {
                Counters::bump(&self.counters.callback_failures);
                tracing::warn!(task_id = %task_id, error = %err, "kie-sim callback not sent");
                return;
            }
        };
        let mut request = client
            .post(url)
            .timeout(CALLBACK_TIMEOUT)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.config.hmac_key {
            let timestamp = chrono::Utc::now().timestamp();
            request = request
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, webhook_signature(key, task_id, timestamp));
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                tracing::debug!(task_id = %task_id, %host, delivery, "kie-sim callback delivered");
            }
            Ok(response) => {
                Counters::bump(&self.counters.callback_failures);
                tracing::warn!(task_id = %task_id, %host, delivery, status = response.status().as_u16(), "kie-sim callback rejected");
            }
            Err(err) => {
                Counters::bump(&self.counters.callback_failures);
                tracing::warn!(task_id = %task_id, %host, delivery, error = %err.without_url(), "kie-sim callback failed");
            }
        }
    }

    // ----- queries and files -----------------------------------------------------

    fn task_view(&self, task_id: &str) -> Option<Value> {
        let ledger = self.ledger();
        let task = ledger.tasks.get(task_id)?;
        Some(task_data(
            task_id,
            task,
            ledger.remaining_credits(),
            View::Query,
        ))
    }

    fn file(&self, name: &str) -> Option<(Bytes, &'static str)> {
        self.ledger()
            .files
            .get(name)
            .map(|file| (file.bytes.clone(), file.content_type))
    }

    /// Whether `url` is a result URL this simulator handed out and still serves.
    fn is_own_file_url(&self, url: &str) -> bool {
        url.strip_prefix(&self.files_base)
            .is_some_and(|name| self.ledger().files.contains_key(name))
    }
}

impl Ledger {
    fn remaining_credits(&self) -> u64 {
        self.initial_credits.saturating_sub(self.credits_used)
    }

    fn store_file(&mut self, name: String, file: StoredFile) {
        self.file_bytes += file.bytes.len();
        self.file_order.push_back(name.clone());
        if let Some(replaced) = self.files.insert(name, file) {
            self.file_bytes -= replaced.bytes.len();
        }
        while self.file_bytes > FILE_STORE_CAP_BYTES {
            let Some(oldest) = self.file_order.pop_front() else {
                break;
            };
            if let Some(evicted) = self.files.remove(&oldest) {
                self.file_bytes -= evicted.bytes.len();
            }
        }
    }
}

impl Task {
    fn new(request: &CreateRequest, started: Instant) -> Self {
        let now = now_ms();
        Self {
            model: request.model,
            param: request.param.clone(),
            callback_url: request.callback_url.clone(),
            state: TaskState::Waiting,
            started,
            create_time_ms: now,
            update_time_ms: now,
            complete_time_ms: None,
            cost: None,
            result_urls: Vec::new(),
            failure: None,
            credits: 0,
        }
    }
}

// ----- handlers ------------------------------------------------------------------

async fn require_token(State(sim): State<Arc<KieSim>>, request: Request, next: Next) -> Response {
    if sim.authorized(request.headers()) {
        next.run(request).await
    } else {
        tracing::info!(path = %request.uri().path(), "kie-sim rejected a request without a valid token");
        sim.error(401, "Unauthorized: missing or invalid API key")
    }
}

async fn create_task(
    State(sim): State<Arc<KieSim>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(refusal) = sim.injected_refusal() {
        tracing::info!("kie-sim refused a create (fault injection)");
        return refusal;
    }
    let request = body
        .map_err(|err| format!("Request body could not be read: {err}"))
        .and_then(|body| parse_create_request(&body));
    match sim.admit(request) {
        Admission::RateLimited => {
            tracing::info!("kie-sim rate limited a create");
            sim.error(429, &sim.rate_limit_message())
        }
        Admission::NoCredits => {
            tracing::info!("kie-sim refused a create: insufficient credits");
            sim.error(402, "Insufficient credits")
        }
        Admission::Rejected(msg) => {
            tracing::info!(reason = %msg, "kie-sim rejected a create");
            sim.error(422, &msg)
        }
        Admission::Accepted {
            task_id,
            request,
            faults,
        } => {
            tracing::info!(
                task_id = %task_id,
                model = request.model,
                latency_ms = u64::try_from(faults.latency.as_millis()).unwrap_or(u64::MAX),
                fail = faults.fail,
                drop_callback = faults.drop_callback,
                deliveries = faults.deliveries,
                early = faults.early,
                "kie-sim task created"
            );
            let answer = success(json!({ "taskId": task_id }));
            if faults.forget {
                tracing::info!(task_id = %task_id, "kie-sim forgot a task it accepted (fault injection)");
                sim.forget(&task_id);
                return answer;
            }
            if faults.early {
                // The callback must reach the client before this answer does.
                Arc::clone(&sim).run_task(task_id, request, faults).await;
            } else {
                sim.spawn_task(task_id, request, faults);
            }
            if faults.hang {
                // The task exists and runs; the client just never hears so in time.
                Counters::bump(&sim.counters.timeouts);
                tokio::select! {
                    () = tokio::time::sleep(sim.config.timeout_hang) => {}
                    () = sim.background.cancelled() => {}
                }
            }
            answer
        }
    }
}

#[derive(Deserialize)]
struct RecordInfoQuery {
    #[serde(rename = "taskId")]
    task_id: Option<String>,
}

async fn record_info(
    State(sim): State<Arc<KieSim>>,
    query: Result<Query<RecordInfoQuery>, QueryRejection>,
) -> Response {
    Counters::bump(&sim.counters.queries);
    let task_id = match query {
        Ok(Query(RecordInfoQuery {
            task_id: Some(task_id),
        })) if !task_id.is_empty() => task_id,
        _ => return sim.error(422, "taskId is required"),
    };
    match sim.task_view(&task_id) {
        Some(data) => success(data),
        None => {
            Counters::bump(&sim.counters.not_found);
            sim.error(404, "Task not found")
        }
    }
}

async fn download_url(
    State(sim): State<Arc<KieSim>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let url = body
        .ok()
        .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
        .and_then(|value| value.get("url").and_then(Value::as_str).map(str::to_owned));
    match url {
        Some(url) if sim.is_own_file_url(&url) => success(Value::String(url)),
        Some(_) => sim.error(422, "url must be a result URL generated by this service"),
        None => sim.error(422, "url is required"),
    }
}

async fn credit(State(sim): State<Arc<KieSim>>) -> Response {
    let remaining = sim.ledger().remaining_credits();
    success(json!(remaining))
}

async fn serve_file(State(sim): State<Arc<KieSim>>, Path(name): Path<String>) -> Response {
    if sim.config.download_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.config.download_delay_ms)).await;
    }
    let Some((bytes, content_type)) = sim.file(&name) else {
        return (StatusCode::NOT_FOUND, "Not found").into_response();
    };
    Counters::bump(&sim.counters.files_served);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        bytes,
    )
        .into_response()
}

/// Largest file the upload API takes (KIE documents images up to 10 MB; leave headroom).
const MAX_UPLOAD_BYTES: usize = 30 * 1024 * 1024;

impl KieSim {
    /// Keeps an uploaded file and answers as KIE's file upload API does.
    fn accept_upload(&self, bytes: Bytes, upload_path: &str, file_name: Option<&str>) -> Response {
        if bytes.is_empty() {
            return self.error(422, "file is required");
        }
        if bytes.len() > MAX_UPLOAD_BYTES {
            return self.error(422, "file is too large");
        }
        let (content_type, ext) = match image::guess_format(&bytes) {
            Ok(ImageFormat::Png) => ("image/png", "png"),
            Ok(ImageFormat::Jpeg) => ("image/jpeg", "jpg"),
            Ok(ImageFormat::WebP) => ("image/webp", "webp"),
            _ => ("application/octet-stream", "bin"),
        };
        let name = format!("upload-{}.{ext}", uuid::Uuid::now_v7().simple());
        let size = bytes.len();
        self.ledger().store_file(
            name.clone(),
            StoredFile {
                bytes,
                content_type,
            },
        );
        Counters::bump(&self.counters.uploads);
        let download_url = format!("{}{name}", self.files_base);
        let file_name = file_name.unwrap_or(&name);
        success(json!({
            "fileName": file_name,
            "filePath": format!("{}/{file_name}", upload_path.trim_end_matches('/')),
            "downloadUrl": download_url,
            "fileSize": size,
            "mimeType": content_type,
        }))
    }
}

async fn file_stream_upload(
    State(sim): State<Arc<KieSim>>,
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let Ok(mut multipart) = multipart else {
        return sim.error(422, "send multipart/form-data with file and uploadPath");
    };
    let (mut file, mut upload_path, mut file_name) = (None, None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(_) => return sim.error(422, "the multipart body could not be read"),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let Ok(value) = field.bytes().await else {
            return sim.error(422, "the multipart body could not be read");
        };
        match name.as_str() {
            "file" => file = Some(value),
            "uploadPath" => upload_path = Some(String::from_utf8_lossy(&value).into_owned()),
            "fileName" => file_name = Some(String::from_utf8_lossy(&value).into_owned()),
            _ => {}
        }
    }
    let (Some(file), Some(upload_path)) = (file, upload_path) else {
        return sim.error(422, "file and uploadPath are required");
    };
    sim.accept_upload(file, &upload_path, file_name.as_deref())
}

async fn file_base64_upload(
    State(sim): State<Arc<KieSim>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(value) = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return sim.error(422, "the body must be JSON");
    };
    let (Some(data), Some(upload_path)) = (
        value.get("base64Data").and_then(Value::as_str),
        value.get("uploadPath").and_then(Value::as_str),
    ) else {
        return sim.error(422, "base64Data and uploadPath are required");
    };
    // KIE accepts a bare payload or a data URL.
    let payload = data.split_once(";base64,").map_or(data, |(_, b64)| b64);
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(payload) else {
        return sim.error(422, "base64Data is not valid base64");
    };
    let file_name = value.get("fileName").and_then(Value::as_str);
    sim.accept_upload(Bytes::from(bytes), upload_path, file_name)
}

async fn stats(State(sim): State<Arc<KieSim>>) -> Json<SimStats> {
    Json(sim.stats())
}

async fn not_found() -> Response {
    envelope(StatusCode::NOT_FOUND, 404, "Not found", Value::Null)
}

// ----- request parsing -----------------------------------------------------------

/// Validates a `createTask` body the way KIE does for the nano-banana models. The
/// error is the `msg` of a 422 answer and names the offending field.
fn parse_create_request(body: &[u8]) -> Result<CreateRequest, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| format!("Request body is not valid JSON: {err}"))?;
    let root = value
        .as_object()
        .ok_or("Request body must be a JSON object")?;
    let model = match optional_str(root, "model")? {
        Some(EDIT_MODEL) => EDIT_MODEL,
        Some(TEXT_MODEL) => TEXT_MODEL,
        Some(other) => return Err(format!("model: unsupported model \"{other}\"")),
        None => return Err("model is required".to_owned()),
    };
    let callback_url = match optional_str(root, "callBackUrl")? {
        Some(url) if is_http_url(url) => Some(url.to_owned()),
        Some(_) => return Err("callBackUrl must be an http(s) URL".to_owned()),
        None => None,
    };
    let input = match root.get("input") {
        Some(Value::Object(input)) => input,
        Some(_) => return Err("input must be an object".to_owned()),
        None => return Err("input is required".to_owned()),
    };
    let prompt = parse_prompt(input)?;
    // The text-only model has no image input; anything sent there is ignored.
    let image_urls = if model == EDIT_MODEL {
        parse_image_urls(input)?
    } else {
        Vec::new()
    };
    let output_format = match optional_str(input, "output_format")? {
        Some(format) => OutputFormat::parse(format)
            .ok_or_else(|| format!("output_format must be png or jpeg, not \"{format}\""))?,
        None => OutputFormat::Png,
    };
    let aspect = parse_aspect(input)?;
    Ok(CreateRequest {
        model,
        callback_url,
        prompt,
        image_urls,
        output_format,
        aspect,
        param: value.to_string(),
    })
}

fn parse_prompt(input: &Map<String, Value>) -> Result<String, String> {
    let prompt = optional_str(input, "prompt")?.unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err("prompt is required".to_owned());
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(format!(
            "prompt must be at most {MAX_PROMPT_CHARS} characters"
        ));
    }
    Ok(prompt.to_owned())
}

fn parse_image_urls(input: &Map<String, Value>) -> Result<Vec<String>, String> {
    let urls = match input.get("image_urls") {
        Some(Value::Array(urls)) => urls,
        None | Some(Value::Null) => return Err("image_urls is required".to_owned()),
        Some(_) => return Err("image_urls must be an array of URLs".to_owned()),
    };
    if urls.is_empty() || urls.len() > MAX_IMAGE_URLS {
        return Err(format!(
            "image_urls must hold 1 to {MAX_IMAGE_URLS} URLs, not {}",
            urls.len()
        ));
    }
    urls.iter()
        .enumerate()
        .map(|(index, url)| match url.as_str() {
            Some(url) if is_http_url(url) => Ok(url.to_owned()),
            _ => Err(format!("image_urls[{index}] must be an http(s) URL")),
        })
        .collect()
}

/// `image_size`, or its newer name `aspect_ratio`; KIE accepts either.
fn parse_aspect(input: &Map<String, Value>) -> Result<String, String> {
    for field in ["image_size", "aspect_ratio"] {
        if let Some(aspect) = optional_str(input, field)? {
            if ASPECT_RATIOS.contains(&aspect) {
                return Ok(aspect.to_owned());
            }
            return Err(format!(
                "{field} must be one of {}, not \"{aspect}\"",
                ASPECT_RATIOS.join(", ")
            ));
        }
    }
    Ok(DEFAULT_ASPECT.to_owned())
}

/// A string field that may be absent or null, but not of another type.
fn optional_str<'a>(
    object: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

fn is_http_url(value: &str) -> bool {
    reqwest::Url::parse(value)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
}

// ----- payloads ------------------------------------------------------------------

fn success(data: Value) -> Response {
    envelope(StatusCode::OK, 200, "success", data)
}

fn envelope(status: StatusCode, code: u16, msg: &str, data: Value) -> Response {
    (
        status,
        Json(json!({ "code": code, "msg": msg, "data": data })),
    )
        .into_response()
}

/// A callback body in KIE's exact shape.
fn callback_body(task_id: &str, task: &Task, remained_credits: u64) -> Value {
    let (code, msg) = if task.state == TaskState::Success {
        (200, SUCCESS_CALLBACK_MSG)
    } else {
        (501, FAILURE_CALLBACK_MSG)
    };
    json!({
        "code": code,
        "msg": msg,
        "data": task_data(task_id, task, remained_credits, View::Callback),
    })
}

/// The task record as KIE reports it. `completeTime` and `costTime` are null until the
/// task ends; `resultJson` appears only on success; `recordInfo` always carries
/// `failCode`/`failMsg` (empty strings when none), callbacks only on failure.
fn task_data(task_id: &str, task: &Task, remained_credits: u64, view: View) -> Value {
    let cost_time = task.cost.map(|cost| match view {
        View::Callback => (cost.as_millis() + 500) / 1000,
        View::Query => cost.as_millis(),
    });
    let mut data = Map::new();
    data.insert("taskId".into(), json!(task_id));
    data.insert("model".into(), json!(task.model));
    data.insert("state".into(), json!(task.state.as_str()));
    data.insert("param".into(), json!(task.param));
    data.insert("createTime".into(), json!(task.create_time_ms));
    data.insert("updateTime".into(), json!(task.update_time_ms));
    data.insert("completeTime".into(), json!(task.complete_time_ms));
    data.insert("costTime".into(), json!(cost_time));
    data.insert("consumeCredits".into(), json!(task.credits));
    data.insert("remainedCredits".into(), json!(remained_credits));
    if task.state == TaskState::Success {
        let result = json!({ "resultUrls": task.result_urls });
        data.insert("resultJson".into(), json!(result.to_string()));
    }
    if view == View::Query || task.failure.is_some() {
        let (code, msg) = task
            .failure
            .as_ref()
            .map_or(("", ""), |failure| (failure.code, failure.message.as_str()));
        data.insert("failCode".into(), json!(code));
        data.insert("failMsg".into(), json!(msg));
    }
    Value::Object(data)
}

/// `base64(HMAC-SHA256(key, taskId + "." + timestamp))`, as KIE signs callbacks.
fn webhook_signature(key: &str, task_id: &str, timestamp: i64) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(format!("{task_id}.{timestamp}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

// ----- helpers -------------------------------------------------------------------

fn decode_input(bytes: &[u8]) -> Result<DynamicImage, InputError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| InputError::Decode(err.to_string()))?;
    if !matches!(
        reader.format(),
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)
    ) {
        return Err(InputError::UnsupportedFormat);
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_DIMENSION);
    limits.max_image_height = Some(MAX_INPUT_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC_BYTES);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|err| InputError::Decode(err.to_string()))
}

/// `p` as a probability; NaN and values ≤ 0 never happen, values ≥ 1 always do.
fn chance(rng: &mut impl Rng, p: f64) -> bool {
    if p.is_nan() || p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(p)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret here; the contents are compared without early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The host of a URL, for logs: full callback and input URLs can carry tokens.
fn url_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(10);

    /// One callback as the receiver saw it.
    struct Delivery {
        headers: HeaderMap,
        body: Value,
    }

    /// A running simulator plus a peer server that serves input images and receives
    /// callbacks, both on loopback.
    struct Harness {
        sim: Arc<KieSim>,
        base: String,
        peer: String,
        hooks: mpsc::UnboundedReceiver<Delivery>,
        client: reqwest::Client,
        shutdown: CancellationToken,
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    fn fast() -> KieSimConfig {
        KieSimConfig {
            latency_ms: (0, 5),
            image_long_side: 64,
            ..KieSimConfig::default()
        }
    }

    fn sample_png() -> Vec<u8> {
        let picture = RgbImage::from_fn(48, 32, |x, y| Rgb([(x * 5) as u8, (y * 7) as u8, 90]));
        let mut bytes = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(picture)
            .write_to(&mut bytes, ImageFormat::Png)
            .expect("encode sample");
        bytes.into_inner()
    }

    async fn spawn(config: KieSimConfig) -> Harness {
        let shutdown = CancellationToken::new();

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
        let base = format!("http://{}", listener.local_addr().expect("sim addr"));
        let sim = KieSim::new(config, base.clone());
        tokio::spawn(Arc::clone(&sim).serve(listener, shutdown.clone()));

        let (tx, hooks) = mpsc::unbounded_channel();
        let receive = move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let body = serde_json::from_slice(&body).expect("callback body is JSON");
                let _ = tx.send(Delivery { headers, body });
                StatusCode::OK
            }
        };
        let png = Bytes::from(sample_png());
        let peer_router = Router::new()
            .route("/hook", post(receive))
            .route(
                "/hook-fails",
                post(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .route(
                "/input.png",
                get(move || async move { ([(header::CONTENT_TYPE, "image/png")], png) }),
            )
            .route("/text.png", get(|| async { "definitely not an image" }))
            .route(
                "/huge.png",
                get(|| async { vec![0u8; MAX_INPUT_BYTES + 1] }),
            );
        let peer_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind peer");
        let peer = format!("http://{}", peer_listener.local_addr().expect("peer addr"));
        let token = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(peer_listener, peer_router)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        });

        Harness {
            sim,
            base,
            peer,
            hooks,
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
            shutdown,
        }
    }

    impl Harness {
        fn body(&self, input: Value) -> Value {
            json!({
                "model": EDIT_MODEL,
                "callBackUrl": format!("{}/hook?token=abc", self.peer),
                "input": input,
            })
        }

        fn edit_body(&self) -> Value {
            self.body(json!({
                "prompt": "a lighthouse at dusk",
                "image_urls": [format!("{}/input.png", self.peer)],
            }))
        }

        async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
            let response = self
                .client
                .post(format!("{}{path}", self.base))
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .expect("request");
            let status = response.status();
            (status, response.json().await.expect("JSON answer"))
        }

        async fn get(&self, path: &str) -> (StatusCode, Value) {
            let response = self
                .client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("request");
            let status = response.status();
            (status, response.json().await.expect("JSON answer"))
        }

        async fn create(&self, body: &Value) -> (StatusCode, Value) {
            self.post("/api/v1/jobs/createTask", body.to_string()).await
        }

        async fn create_ok(&self, body: &Value) -> String {
            let (status, answer) = self.create(body).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["code"], 200, "{answer}");
            answer["data"]["taskId"]
                .as_str()
                .expect("taskId")
                .to_owned()
        }

        async fn record(&self, task_id: &str) -> Value {
            let (status, answer) = self
                .get(&format!("/api/v1/jobs/recordInfo?taskId={task_id}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["code"], 200);
            answer["data"].clone()
        }

        async fn wait_terminal(&self, task_id: &str) -> Value {
            let deadline = Instant::now() + WAIT;
            loop {
                let data = self.record(task_id).await;
                if matches!(data["state"].as_str(), Some("success" | "fail")) {
                    return data;
                }
                assert!(Instant::now() < deadline, "task never finished: {data}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        async fn next_hook(&mut self) -> Delivery {
            tokio::time::timeout(WAIT, self.hooks.recv())
                .await
                .expect("callback in time")
                .expect("hook channel open")
        }

        async fn assert_no_hook_within(&mut self, wait: Duration) {
            let extra = tokio::time::timeout(wait, self.hooks.recv()).await;
            assert!(extra.is_err(), "unexpected callback");
        }

        /// Waits until background counters settle on `done`, so stats asserts do not race.
        async fn wait_for(&self, done: impl Fn(&SimStats) -> bool) -> SimStats {
            let deadline = Instant::now() + WAIT;
            loop {
                let stats = self.sim.stats();
                if done(&stats) {
                    return stats;
                }
                assert!(Instant::now() < deadline, "stats never settled: {stats:?}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    fn keys(value: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    }

    fn result_urls(data: &Value) -> Vec<String> {
        let result_json = data["resultJson"].as_str().expect("resultJson is a string");
        let result: Value = serde_json::from_str(result_json).expect("resultJson parses");
        serde_json::from_value(result["resultUrls"].clone()).expect("resultUrls")
    }

    #[tokio::test]
    async fn create_then_record_info_reaches_success_and_serves_the_image() {
        let h = spawn(fast()).await;
        let body = h.edit_body();
        let task_id = h.create_ok(&body).await;
        assert_eq!(task_id.len(), 32);
        assert!(task_id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));

        let data = h.wait_terminal(&task_id).await;
        assert_eq!(data["state"], "success", "{data}");
        assert_eq!(data["taskId"], task_id.as_str());
        assert_eq!(data["model"], EDIT_MODEL);
        assert_eq!(
            (data["failCode"].as_str(), data["failMsg"].as_str()),
            (Some(""), Some(""))
        );
        assert!(data["costTime"].is_u64() && data["completeTime"].is_i64());
        assert_eq!(data["consumeCredits"], CREDITS_PER_IMAGE);
        let param: Value = serde_json::from_str(data["param"].as_str().expect("param string"))
            .expect("param parses");
        assert_eq!(param, body);

        let urls = result_urls(&data);
        assert_eq!(urls, [format!("{}/files/{task_id}-0.png", h.base)]);
        let response = h.client.get(&urls[0]).send().await.expect("file");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "image/png");
        let bytes = response.bytes().await.expect("file bytes");
        let picture = image::load_from_memory(&bytes).expect("result decodes");
        assert_eq!((picture.width(), picture.height()), (64, 64));

        let stats = h.sim.stats();
        assert_eq!(
            (stats.created, stats.succeeded, stats.files_served),
            (1, 1, 1)
        );
        assert!(stats.queries >= 1);
        assert_eq!(h.sim.task_ids(), std::slice::from_ref(&task_id));
        assert_eq!(
            h.sim.callback_url(&task_id),
            Some(format!("{}/hook?token=abc", h.peer))
        );
        assert_eq!(h.sim.callback_url("nope"), None);
    }

    #[tokio::test]
    async fn state_moves_from_waiting_through_generating_to_success() {
        let h = spawn(KieSimConfig {
            // A quarter of the latency is spent waiting: wide enough to observe reliably.
            latency_ms: (1000, 1000),
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        let mut seen = Vec::new();
        let deadline = Instant::now() + WAIT;
        while seen.last().is_none_or(|s| s != "success") {
            assert!(Instant::now() < deadline, "stuck after {seen:?}");
            let data = h.record(&task_id).await;
            let state = data["state"].as_str().expect("state").to_owned();
            if state != "success" {
                assert!(data["completeTime"].is_null() && data["costTime"].is_null());
                assert!(data.get("resultJson").is_none());
            }
            if seen.last() != Some(&state) {
                seen.push(state);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(seen, ["waiting", "generating", "success"]);
    }

    #[tokio::test]
    async fn success_callback_has_kie_exact_shape() {
        // Over a second of latency, so seconds and milliseconds tell apart.
        let mut h = spawn(KieSimConfig {
            latency_ms: (1100, 1100),
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        let hook = h.next_hook().await;
        assert_eq!(hook.body["code"], 200);
        assert_eq!(hook.body["msg"], "Playground task completed successfully.");
        let data = &hook.body["data"];
        assert_eq!(
            keys(data),
            [
                "completeTime",
                "consumeCredits",
                "costTime",
                "createTime",
                "model",
                "param",
                "remainedCredits",
                "resultJson",
                "state",
                "taskId",
                "updateTime"
            ]
        );
        assert_eq!(data["taskId"], task_id.as_str());
        assert_eq!(data["state"], "success");
        assert!(data["param"].is_string());
        let cost_s = data["costTime"].as_u64().expect("costTime");
        assert!(
            (1..=3).contains(&cost_s),
            "callback costTime is in seconds: {cost_s}"
        );
        assert_eq!(data["consumeCredits"], CREDITS_PER_IMAGE);
        assert_eq!(data["remainedCredits"], INITIAL_CREDITS - CREDITS_PER_IMAGE);
        assert_eq!(result_urls(data).len(), 1);
        assert!(hook.headers.get(SIGNATURE_HEADER).is_none());

        let record = h.record(&task_id).await;
        assert!(
            record["costTime"].as_u64().expect("ms") >= 1100,
            "recordInfo costTime is in ms"
        );
        assert_eq!(record["resultJson"], data["resultJson"]);
    }

    #[tokio::test]
    async fn callbacks_are_signed_when_a_key_is_set() {
        let key = "whk_secret";
        let mut h = spawn(KieSimConfig {
            hmac_key: Some(key.to_owned()),
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        let hook = h.next_hook().await;
        let timestamp: i64 = hook.headers[TIMESTAMP_HEADER]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("unix seconds");
        assert!((chrono::Utc::now().timestamp() - timestamp).abs() <= 5);
        let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("key");
        mac.update(format!("{task_id}.{timestamp}").as_bytes());
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(
            hook.headers[SIGNATURE_HEADER].to_str().expect("ascii"),
            expected
        );
    }

    #[tokio::test]
    async fn the_twenty_first_create_in_a_window_is_rate_limited() {
        let h = spawn(fast()).await;
        let body = h.edit_body();
        for _ in 0..20 {
            h.create_ok(&body).await;
        }
        let (status, answer) = h.create(&body).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            answer,
            json!({"code": 429, "msg": "Rate limited: 20 requests per 10 seconds", "data": null})
        );
        let stats = h.sim.stats();
        assert_eq!((stats.created, stats.rate_limited), (20, 1));
        assert_eq!(h.sim.task_ids().len(), 20);
    }

    #[tokio::test]
    async fn errors_in_body_answers_http_200_with_the_code_inside() {
        let h = spawn(KieSimConfig {
            rate_limit: 1,
            errors_in_body: true,
            ..fast()
        })
        .await;
        let body = h.edit_body();
        h.create_ok(&body).await;
        let (status, answer) = h.create(&body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["code"], 429);
        let (status, answer) = h.get("/api/v1/jobs/recordInfo?taskId=unknown").await;
        assert_eq!(
            (status, answer["code"].as_u64()),
            (StatusCode::OK, Some(404))
        );
    }

    #[tokio::test]
    async fn the_window_slides_and_rejected_creates_take_no_slot() {
        let h = spawn(KieSimConfig {
            rate_limit: 2,
            rate_window: Duration::from_millis(1500),
            ..fast()
        })
        .await;
        let body = h.edit_body();
        let (status, _) = h.create(&json!({"model": "nope"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        h.create_ok(&body).await;
        h.create_ok(&body).await;
        let (status, answer) = h.create(&body).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            answer["msg"],
            "Rate limited: 2 requests per 1500 milliseconds"
        );
        tokio::time::sleep(Duration::from_millis(1600)).await;
        h.create_ok(&body).await;
    }

    #[tokio::test]
    async fn fail_rate_one_gives_a_fail_callback() {
        let mut h = spawn(KieSimConfig {
            fail_rate: 1.0,
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        let hook = h.next_hook().await;
        assert_eq!(hook.body["code"], 501);
        assert_eq!(hook.body["msg"], "Playground task failed.");
        let data = &hook.body["data"];
        assert_eq!(data["state"], "fail");
        assert_eq!(data["failCode"], "500");
        assert_eq!(data["failMsg"], "Internal server error");
        assert_eq!(data["consumeCredits"], 0);
        assert!(data.get("resultJson").is_none());

        let record = h.record(&task_id).await;
        assert_eq!(
            (record["state"].as_str(), record["failCode"].as_str()),
            (Some("fail"), Some("500"))
        );
        assert!(record.get("resultJson").is_none());
        h.wait_for(|s| s.failed == 1).await;
        let (_, credit) = h.get("/api/v1/chat/credit").await;
        assert_eq!(credit["data"], INITIAL_CREDITS, "failures are free");
    }

    #[tokio::test]
    async fn unusable_inputs_fail_with_code_400() {
        let mut h = spawn(fast()).await;
        for (path, reason) in [
            ("/missing.png", "HTTP 404"),
            ("/huge.png", "larger than 20 MiB"),
            ("/text.png", "not a JPEG, PNG or WebP"),
        ] {
            let body = h.body(json!({
                "prompt": "p",
                "image_urls": [format!("{}{path}", h.peer)],
            }));
            h.create_ok(&body).await;
            let data = h.next_hook().await.body["data"].clone();
            assert_eq!(data["state"], "fail");
            assert_eq!(data["failCode"], "400");
            let msg = data["failMsg"].as_str().expect("failMsg");
            assert!(msg.contains(reason), "{msg}");
        }
    }

    #[tokio::test]
    async fn duplicated_callbacks_arrive_duplicate_count_times() {
        let mut h = spawn(KieSimConfig {
            duplicate_rate: 1.0,
            duplicate_count: 3,
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        for _ in 0..3 {
            let hook = h.next_hook().await;
            assert_eq!(hook.body["data"]["taskId"], task_id.as_str());
        }
        h.assert_no_hook_within(Duration::from_millis(200)).await;
        let stats = h.sim.stats();
        assert_eq!(
            (
                stats.callbacks_sent,
                stats.duplicates_sent,
                stats.callback_failures
            ),
            (3, 2, 0)
        );
    }

    #[tokio::test]
    async fn dropped_callbacks_are_never_sent_but_record_info_succeeds() {
        let mut h = spawn(KieSimConfig {
            drop_rate: 1.0,
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        assert_eq!(h.wait_terminal(&task_id).await["state"], "success");
        h.wait_for(|s| s.dropped == 1).await;
        h.assert_no_hook_within(Duration::from_millis(200)).await;
        assert_eq!(h.sim.stats().callbacks_sent, 0);
    }

    #[tokio::test]
    async fn forgotten_tasks_are_not_found_and_never_called_back() {
        for errors_in_body in [false, true] {
            let mut h = spawn(KieSimConfig {
                forget_rate: 1.0,
                errors_in_body,
                ..fast()
            })
            .await;
            let task_id = h.create_ok(&h.edit_body()).await;
            let (status, answer) = h
                .get(&format!("/api/v1/jobs/recordInfo?taskId={task_id}"))
                .await;
            let expected = if errors_in_body {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            assert_eq!(
                (status, answer["code"].as_u64()),
                (expected, Some(404)),
                "{answer}"
            );
            h.assert_no_hook_within(Duration::from_millis(200)).await;
            let stats = h.sim.stats();
            assert_eq!(
                (
                    stats.created,
                    stats.forgotten,
                    stats.not_found,
                    stats.succeeded
                ),
                (1, 1, 1, 0)
            );
            // Its credits were only reserved, and went back.
            let (_, credit) = h.get("/api/v1/chat/credit").await;
            assert_eq!(credit["data"], INITIAL_CREDITS);
        }
    }

    #[tokio::test]
    async fn early_callbacks_arrive_before_the_create_answer() {
        let mut h = spawn(KieSimConfig {
            early_callback_rate: 1.0,
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        // The simulator awaited the receiver's answer before answering the create.
        let hook = h.hooks.try_recv().expect("callback already delivered");
        assert_eq!(hook.body["data"]["taskId"], task_id.as_str());
        assert_eq!(hook.body["data"]["state"], "success");
    }

    #[tokio::test]
    async fn failing_receivers_are_counted() {
        let h = spawn(fast()).await;
        let body = json!({
            "model": EDIT_MODEL,
            "callBackUrl": format!("{}/hook-fails", h.peer),
            "input": {"prompt": "p", "image_urls": [format!("{}/input.png", h.peer)]},
        });
        h.create_ok(&body).await;
        let stats = h.wait_for(|s| s.callback_failures == 1).await;
        assert_eq!(stats.callbacks_sent, 1);
    }

    #[tokio::test]
    async fn a_token_is_required_when_configured() {
        let h = spawn(KieSimConfig {
            token: Some("kie_key".to_owned()),
            ..fast()
        })
        .await;
        let body = h.edit_body().to_string();
        let url = format!("{}/api/v1/jobs/createTask", h.base);
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("kie_key"),
            Some("Bearer kie_key2"),
        ] {
            let mut request = h.client.post(&url).body(body.clone());
            if let Some(auth) = auth {
                request = request.header(header::AUTHORIZATION, auth);
            }
            let response = request.send().await.expect("request");
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
            let answer: Value = response.json().await.expect("envelope");
            assert_eq!(answer["code"], 401);
        }
        let response = h
            .client
            .post(&url)
            .bearer_auth("kie_key")
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        // The simulator's own endpoints are open.
        let (status, _) = h.get("/sim/stats").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn malformed_json_is_a_422_envelope() {
        let h = spawn(fast()).await;
        for body in ["{not json", "", "[1,2]", "null"] {
            let (status, answer) = h.post("/api/v1/jobs/createTask", body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body:?}");
            assert_eq!(answer["code"], 422);
            assert!(answer["msg"].as_str().is_some_and(|m| !m.is_empty()));
        }
        assert_eq!(h.sim.stats().rejected, 4);
    }

    #[tokio::test]
    async fn validation_names_the_offending_field() {
        let h = spawn(fast()).await;
        let image = format!("{}/input.png", h.peer);
        let with_input = |input: Value| json!({"model": EDIT_MODEL, "input": input});
        let cases = [
            (json!({"input": {"prompt": "p"}}), "model"),
            (json!({"model": "google/imagen", "input": {}}), "model"),
            (json!({"model": EDIT_MODEL}), "input"),
            (
                json!({"model": EDIT_MODEL, "callBackUrl": "ftp://x", "input": {}}),
                "callBackUrl",
            ),
            (with_input(json!({"image_urls": [image]})), "prompt"),
            (
                with_input(json!({"prompt": "  ", "image_urls": [image]})),
                "prompt",
            ),
            (
                with_input(json!({"prompt": "x".repeat(5001), "image_urls": [image]})),
                "prompt",
            ),
            (
                with_input(json!({"prompt": 5, "image_urls": [image]})),
                "prompt",
            ),
            (with_input(json!({"prompt": "p"})), "image_urls"),
            (
                with_input(json!({"prompt": "p", "image_urls": []})),
                "image_urls",
            ),
            (
                with_input(json!({"prompt": "p", "image_urls": vec![image.clone(); 11]})),
                "image_urls",
            ),
            (
                with_input(json!({"prompt": "p", "image_urls": ["file:///etc/passwd"]})),
                "image_urls[0]",
            ),
            (
                with_input(json!({"prompt": "p", "image_urls": [image, 3]})),
                "image_urls[1]",
            ),
            (
                with_input(json!({"prompt": "p", "image_urls": [image], "output_format": "gif"})),
                "output_format",
            ),
            (
                with_input(json!({"prompt": "p", "image_urls": [image], "image_size": "7:5"})),
                "image_size",
            ),
            (
                with_input(json!({"prompt": "p", "image_urls": [image], "aspect_ratio": "wide"})),
                "aspect_ratio",
            ),
        ];
        for (body, field) in &cases {
            let (status, answer) = h.create(body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            let msg = answer["msg"].as_str().expect("msg");
            assert!(msg.contains(field), "{msg:?} should name {field}");
        }
        assert_eq!(h.sim.stats().rejected, cases.len() as u64);
        assert_eq!(h.sim.stats().created, 0);

        // Limits are inclusive: 5000 characters and 10 URLs are fine.
        h.create_ok(&with_input(json!({
            "prompt": "é".repeat(5000),
            "image_urls": vec![image.clone(); 10],
        })))
        .await;
    }

    #[tokio::test]
    async fn aspect_ratio_alias_and_jpeg_output_are_honoured() {
        let h = spawn(fast()).await;
        let body = h.body(json!({
            "prompt": "p",
            "image_urls": [format!("{}/input.png", h.peer)],
            "aspect_ratio": "16:9",
            "output_format": "jpeg",
        }));
        let task_id = h.create_ok(&body).await;
        let data = h.wait_terminal(&task_id).await;
        let urls = result_urls(&data);
        assert!(urls[0].ends_with(&format!("{task_id}-0.jpg")), "{urls:?}");
        let response = h.client.get(&urls[0]).send().await.expect("file");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "image/jpeg");
        let picture =
            image::load_from_memory(&response.bytes().await.expect("bytes")).expect("jpeg");
        assert_eq!((picture.width(), picture.height()), (64, 36));
    }

    #[tokio::test]
    async fn the_text_only_model_needs_no_image() {
        let mut h = spawn(fast()).await;
        let body = json!({
            "model": TEXT_MODEL,
            "callBackUrl": format!("{}/hook", h.peer),
            "input": {"prompt": "a paper boat", "image_size": "9:16"},
        });
        let task_id = h.create_ok(&body).await;
        let hook = h.next_hook().await;
        assert_eq!(hook.body["data"]["state"], "success");
        assert_eq!(hook.body["data"]["model"], TEXT_MODEL);
        let urls = result_urls(&h.record(&task_id).await);
        let bytes = h
            .client
            .get(&urls[0])
            .send()
            .await
            .expect("file")
            .bytes()
            .await
            .expect("bytes");
        let picture = image::load_from_memory(&bytes).expect("png");
        assert_eq!((picture.width(), picture.height()), (36, 64));
    }

    #[tokio::test]
    async fn record_info_needs_a_known_task_id() {
        let h = spawn(fast()).await;
        let (status, answer) = h.get("/api/v1/jobs/recordInfo?taskId=0123").await;
        assert_eq!(
            (status, answer["code"].as_u64()),
            (StatusCode::NOT_FOUND, Some(404))
        );
        let (status, answer) = h.get("/api/v1/jobs/recordInfo").await;
        assert_eq!(
            (status, answer["code"].as_u64()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(422))
        );
        assert_eq!(h.sim.stats().queries, 2);
    }

    #[tokio::test]
    async fn download_url_credit_files_and_stats() {
        let h = spawn(fast()).await;
        let task_id = h.create_ok(&h.edit_body()).await;
        let url = result_urls(&h.wait_terminal(&task_id).await).remove(0);

        let (status, answer) = h
            .post(
                "/api/v1/common/download-url",
                json!({"url": url}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["data"], url.as_str());
        for body in [
            json!({"url": "https://example.com/a.png"}),
            json!({"url": format!("{}/files/unknown.png", h.base)}),
            json!({}),
        ] {
            let (status, _) = h
                .post("/api/v1/common/download-url", body.to_string())
                .await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        }

        let (_, credit) = h.get("/api/v1/chat/credit").await;
        assert_eq!(
            credit,
            json!({"code": 200, "msg": "success", "data": INITIAL_CREDITS - CREDITS_PER_IMAGE})
        );

        let response = h
            .client
            .get(format!("{}/files/nope.png", h.base))
            .send()
            .await
            .expect("file");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);

        let (status, stats) = h.get("/sim/stats").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(stats["created"], 1);
        assert_eq!(stats["succeeded"], 1);
        assert!(stats.get("callbacksSent").is_some() && stats.get("filesServed").is_some());
    }

    #[tokio::test]
    async fn public_url_overrides_the_result_base() {
        let h = spawn(KieSimConfig {
            public_url: Some("https://sim.example/".to_owned()),
            ..fast()
        })
        .await;
        let task_id = h.create_ok(&h.edit_body()).await;
        let urls = result_urls(&h.wait_terminal(&task_id).await);
        assert_eq!(urls, [format!("https://sim.example/files/{task_id}-0.png")]);
    }

    #[tokio::test]
    async fn many_concurrent_tasks_all_finish_when_unlimited() {
        let h = spawn(KieSimConfig {
            rate_limit: 0,
            ..fast()
        })
        .await;
        let body = h.edit_body();
        let creates = (0..50).map(|_| h.create_ok(&body));
        let mut ids = futures::future::join_all(creates).await;
        let stats = h.wait_for(|s| s.succeeded == 50).await;
        assert_eq!(
            (stats.created, stats.failed, stats.rate_limited),
            (50, 0, 0)
        );
        let mut listed = h.sim.task_ids();
        listed.sort();
        ids.sort();
        assert_eq!(listed, ids);
    }

    #[tokio::test]
    async fn serve_returns_once_shutdown_is_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let sim = KieSim::new(fast(), base);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(Arc::clone(&sim).serve(listener, shutdown.clone()));
        shutdown.cancel();
        let result = tokio::time::timeout(WAIT, server)
            .await
            .expect("stops in time");
        assert!(matches!(result, Ok(Ok(()))));
        assert!(sim.background.is_cancelled());
    }

    #[test]
    fn probabilities_outside_the_unit_interval_are_clamped() {
        let mut rng = rand::rng();
        assert!(!chance(&mut rng, f64::NAN));
        assert!(!chance(&mut rng, -1.0));
        assert!(chance(&mut rng, 7.0));
    }

    #[test]
    fn token_comparison_needs_equal_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
