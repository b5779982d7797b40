//! Configuration: built-in defaults, then a TOML file, then the environment (including
//! `.env.local` / `.env`, and the original service's variable names), validated once at
//! start. Every key is documented in `darkroom.example.toml`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

/// A value that must never reach a log line or a debug dump.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {key} {problem}")]
    Invalid { key: String, problem: String },
    #[error("invalid configuration file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The provider a generation request gets when it names none: `kie` or `gemini`.
    pub default_provider: String,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub storage: StorageConfig,
    pub kie: KieConfig,
    pub simulator: SimulatorConfig,
    pub gemini: GeminiConfig,
    pub limits: LimitsConfig,
    pub engine: EngineConfig,
    pub fetch: FetchConfig,
    pub auth: AuthConfig,
    pub webhook: WebhookConfig,
    pub health: HealthConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How clients and the provider reach this server; default `http://{listen}`.
    pub public_url: Option<Url>,
    pub request_timeout_secs: u64,
    /// A client must finish sending a request's headers within this many seconds (idle
    /// keep-alive connections are closed after it too).
    pub header_timeout_secs: u64,
    /// A request body gets this many seconds, plus one second per `body_min_rate_bytes`
    /// received: a client trickling its body is cut off with 408.
    pub body_timeout_secs: u64,
    pub body_min_rate_bytes: u64,
    /// Origins (`scheme://host[:port]`) allowed to call the API from a browser. Empty: no
    /// CORS headers, so only same-origin pages can read answers.
    pub cors_origins: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Default `sqlite://{data_dir}/darkroom.db`.
    pub url: Option<String>,
    pub max_connections: u32,
    /// How hard SQLite syncs a commit: `normal` (survives a crash of darkroom; a power cut
    /// may lose the last commits) or `full` (every commit synced before it is answered).
    pub synchronous: Synchronous,
}

/// SQLite's `synchronous` setting (always in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Synchronous {
    #[default]
    Normal,
    Full,
}

impl Synchronous {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw.to_ascii_lowercase().as_str() {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            _ => Err(format!("= {raw:?} is not normal or full")),
        }
    }
}

/// What `/readyz` checks beyond "the files are open".
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Below this much free space on the disk of the database file or the local bucket,
    /// the instance reports itself not ready (MiB; 0 turns the check off).
    pub min_free_mb: u64,
    /// The bucket write probe (an object written and deleted) runs at most this often;
    /// between runs `/readyz` reports the last outcome (seconds; 0: every time).
    pub bucket_probe_secs: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            min_free_mb: 64,
            bucket_probe_secs: 30,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Local bucket directory; default `{data_dir}/bucket`. Used unless an S3 bucket is set.
    pub dir: Option<PathBuf>,
    /// S3-compatible bucket (Cloudflare R2 through the `R2_*` variables).
    pub s3: Option<S3Config>,
    /// When set, object URLs are `{public_base_url}/{key}` (the original's `R2_PUBLIC_BASE_URL`).
    pub public_base_url: Option<Url>,
    /// Without a public base URL: how `/files/{key}` answers (`proxy` streams the object,
    /// `presigned` redirects to a fresh presigned URL; S3 only).
    pub url_mode: UrlMode,
    /// Lifetime of the presigned URLs `/files/{key}` redirects to, seconds.
    pub presign_ttl_secs: u64,
    /// How input images reach the provider: `auto`, `public`, `presigned`, `proxy` or
    /// `kie-upload`.
    pub input_mode: InputMode,
    /// Lifetime of presigned input URLs handed to the provider, seconds.
    pub input_presign_ttl_secs: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UrlMode {
    #[default]
    Proxy,
    Presigned,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputMode {
    /// The public base URL when set; else presigned URLs on S3; else darkroom's own URL.
    #[default]
    Auto,
    Public,
    Presigned,
    Proxy,
    /// Push each input through KIE's file upload API and hand KIE that URL.
    KieUpload,
}

impl UrlMode {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "proxy" => Ok(Self::Proxy),
            "presigned" => Ok(Self::Presigned),
            _ => Err(format!("= {raw:?} must be proxy or presigned")),
        }
    }
}

impl InputMode {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "auto" => Ok(Self::Auto),
            "public" => Ok(Self::Public),
            "presigned" => Ok(Self::Presigned),
            "proxy" => Ok(Self::Proxy),
            "kie-upload" => Ok(Self::KieUpload),
            _ => Err(format!(
                "= {raw:?} must be auto, public, presigned, proxy or kie-upload"
            )),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Url,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KieConfig {
    /// Setting it switches the provider from the built-in simulator to KIE.
    pub api_token: Option<Secret>,
    pub base_url: Url,
    /// Where KIE should call back; darkroom appends `/{taskId}?token=…` per task.
    pub callback_url: Option<Url>,
    /// Take state and result URLs from `recordInfo` instead of the (unsigned) callback body.
    pub verify_callbacks: bool,
    /// KIE's file upload API (a different host from the jobs API).
    pub upload_base_url: Url,
    /// Creates allowed per window (KIE: 20 per 10 s per account); 0 means no limit.
    pub creates_per_window: usize,
    pub create_window_secs: u64,
    /// `recordInfo` queries per second (KIE allows 10); 0 means no limit.
    pub queries_per_second: usize,
    /// Tasks being created or waiting at KIE at once; 0 means no cap.
    pub max_in_flight: usize,
    /// How long a 402 (insufficient credits) pauses submission, seconds.
    pub credits_pause_secs: u64,
    pub request_timeout_secs: u64,
    /// KIE's webhook HMAC key (set in KIE's console). When set, callbacks must carry a valid
    /// `X-Webhook-Timestamp` / `X-Webhook-Signature`.
    pub webhook_hmac_key: Option<Secret>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Generation time of the built-in simulator, `MIN-MAX` milliseconds.
    pub latency_ms: String,
    pub fail_rate: f64,
    pub duplicate_rate: f64,
    /// Deliveries of a duplicated callback.
    pub duplicate_count: u32,
    pub drop_rate: f64,
    /// Share of tasks whose callback arrives before the create answer.
    pub early_callback_rate: f64,
    /// Share of tasks the simulator forgets right after accepting them: `recordInfo`
    /// answers 404 for them and no callback comes.
    pub forget_rate: f64,
    /// Creates the simulator accepts per 10 s, as KIE; 0 turns its limit off.
    pub rate_limit: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeminiConfig {
    /// Setting it switches Gemini from the built-in simulator to Google's API.
    pub api_key: Option<Secret>,
    pub base_url: Url,
    /// The model every Gemini task uses.
    pub model: String,
    /// One `generateContent` call, seconds: generation can take a minute.
    pub request_timeout_secs: u64,
    /// Gemini calls at once; other providers' tasks never wait for these slots.
    pub concurrency: usize,
    /// Gemini's inline request limit: the prompt plus the base64 input images, bytes.
    pub max_request_bytes: u64,
    pub simulator: GeminiSimulatorConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeminiSimulatorConfig {
    /// Generation time of the built-in Gemini simulator, `MIN-MAX` milliseconds.
    pub latency_ms: String,
    /// Share of prompts blocked (`promptFeedback.blockReason`).
    pub block_rate: f64,
    /// Share of answers stopped by `finishReason: IMAGE_SAFETY`.
    pub image_safety_rate: f64,
    /// Share of text-only answers.
    pub text_only_rate: f64,
    /// HTTP errors answered at these rates, `STATUS=RATE,…` (400 403 404 429 500 503 504).
    pub errors: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_upload_bytes: u64,
    pub max_upload_files: usize,
    pub max_result_bytes: u64,
    pub max_image_dimension: u32,
    pub max_image_pixels: u64,
    pub max_json_body_bytes: usize,
    pub max_callback_body_bytes: usize,
    /// Requests per second the callback routes take, all senders together.
    pub callback_rate_per_sec: u32,
    pub callback_rate_burst: u32,
    /// Remove EXIF, XMP, IPTC, comments and text chunks from stored uploads (the EXIF
    /// orientation is kept).
    pub strip_upload_metadata: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Whether this instance runs the background workers (dispatcher, poller, ingest).
    pub workers: bool,
    pub dispatch_concurrency: usize,
    pub ingest_concurrency: usize,
    pub max_attempts: u32,
    /// A submitted task with no result after this long becomes `expired`.
    pub task_deadline_secs: u64,
    pub lease_secs: u64,
    pub tick_ms: u64,
    /// When a submitted task is first asked about if no callback has come, milliseconds.
    pub first_poll_ms: u64,
    /// How long a create that got no answer waits for a callback, seconds.
    pub unconfirmed_window_secs: u64,
    /// After that window, submit again (the provider may bill twice) instead of failing.
    pub resubmit_unconfirmed: bool,
    /// A provider that cannot be reached (connection refused, its host name not resolving,
    /// connecting timing out) is probed after this long, milliseconds; the wait doubles
    /// after each failed probe, up to `unreachable_max_probe_ms`.
    pub unreachable_first_probe_ms: u64,
    pub unreachable_max_probe_ms: u64,
    /// "No such task" answers in a row (KIE `recordInfo` 404) after which a task the
    /// provider had accepted fails `provider_task_missing`.
    pub missing_task_answers: u32,
    /// How long in-flight work may take to finish at shutdown, seconds.
    pub shutdown_grace_secs: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchConfig {
    /// `host:port` pairs that may be fetched over plain http and on private addresses
    /// (a standalone simulator on loopback). Nothing else may.
    pub trusted_hosts: Vec<String>,
    pub connect_timeout_secs: u64,
    pub timeout_secs: u64,
    /// When not empty, results are downloaded only from these hosts (`example.com`, or
    /// `*.example.com` for its subdomains), on every redirect hop too.
    pub result_hosts: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `name:key` entries. Any key (here or made with `darkroom keys create`) turns
    /// authentication on for every client route.
    pub api_keys: Vec<Secret>,
    /// Requests per second per key, and the burst above it.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Unfinished tasks (queued or in flight) one key may have; more is a 429.
    pub max_pending_tasks: u64,
}

/// Outbound webhooks (Standard Webhooks): the signing secret and the retry pace.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `whsec_<base64>`: signs the webhooks of tasks without an owner (each API key has
    /// its own secret, in the database). Unset: generated once and kept in
    /// `<data_dir>/webhook_secret`.
    pub secret: Option<Secret>,
    /// The wait before the first retry, milliseconds; later retries follow the Standard
    /// Webhooks schedule (5 min, 30 min, 2 h, 5 h, 10 h, 10 h).
    pub first_retry_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            secret: None,
            first_retry_ms: 5000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `darkroom=debug,info`.
    pub filter: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            default_provider: crate::providers::kie::NAME.to_owned(),
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            storage: StorageConfig::default(),
            kie: KieConfig::default(),
            simulator: SimulatorConfig::default(),
            gemini: GeminiConfig::default(),
            limits: LimitsConfig::default(),
            engine: EngineConfig::default(),
            fetch: FetchConfig::default(),
            auth: AuthConfig::default(),
            webhook: WebhookConfig::default(),
            health: HealthConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            public_url: None,
            request_timeout_secs: 60,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            body_min_rate_bytes: 1024,
            cors_origins: Vec::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 8,
            synchronous: Synchronous::Normal,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: None,
            s3: None,
            public_base_url: None,
            url_mode: UrlMode::Proxy,
            presign_ttl_secs: 3600,
            input_mode: InputMode::Auto,
            input_presign_ttl_secs: 2 * 3600,
        }
    }
}

impl Default for KieConfig {
    fn default() -> Self {
        Self {
            api_token: None,
            base_url: Url::parse("https://api.kie.ai").expect("static URL"),
            callback_url: None,
            verify_callbacks: true,
            upload_base_url: Url::parse("https://kieai.redpandaai.co").expect("static URL"),
            creates_per_window: 20,
            create_window_secs: 10,
            queries_per_second: 9,
            max_in_flight: 200,
            credits_pause_secs: 300,
            request_timeout_secs: 30,
            webhook_hmac_key: None,
        }
    }
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            latency_ms: "1000-3000".to_owned(),
            fail_rate: 0.0,
            duplicate_rate: 0.0,
            duplicate_count: 2,
            drop_rate: 0.0,
            early_callback_rate: 0.0,
            forget_rate: 0.0,
            rate_limit: 20,
        }
    }
}

impl Default for GeminiConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: Url::parse(crate::providers::gemini::DEFAULT_BASE_URL).expect("static URL"),
            model: crate::providers::gemini::DEFAULT_MODEL.to_owned(),
            request_timeout_secs: 120,
            concurrency: 4,
            max_request_bytes: 20 * 1024 * 1024,
            simulator: GeminiSimulatorConfig::default(),
        }
    }
}

impl Default for GeminiSimulatorConfig {
    fn default() -> Self {
        Self {
            latency_ms: "2000-6000".to_owned(),
            block_rate: 0.0,
            image_safety_rate: 0.0,
            text_only_rate: 0.0,
            errors: String::new(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 10 * 1024 * 1024,
            max_upload_files: 10,
            max_result_bytes: 30 * 1024 * 1024,
            max_image_dimension: 10_000,
            max_image_pixels: 40_000_000,
            max_json_body_bytes: 256 * 1024,
            max_callback_body_bytes: 64 * 1024,
            callback_rate_per_sec: 50,
            callback_rate_burst: 200,
            strip_upload_metadata: true,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: true,
            dispatch_concurrency: 8,
            ingest_concurrency: 8,
            max_attempts: 6,
            task_deadline_secs: 15 * 60,
            lease_secs: 120,
            tick_ms: 500,
            first_poll_ms: 10_000,
            unconfirmed_window_secs: 600,
            resubmit_unconfirmed: false,
            unreachable_first_probe_ms: 5_000,
            unreachable_max_probe_ms: 60_000,
            missing_task_answers: 3,
            shutdown_grace_secs: 20,
        }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            trusted_hosts: Vec::new(),
            connect_timeout_secs: 10,
            timeout_secs: 60,
            result_hosts: Vec::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            rate_per_sec: 20,
            rate_burst: 100,
            max_pending_tasks: 1000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".to_owned(),
            format: "text".to_owned(),
        }
    }
}

/// Which provider serves KIE-style tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderMode {
    /// The built-in simulator, in this process (no `KIE_API_TOKEN`).
    Simulator,
    /// The KIE API at `kie.base_url`.
    Kie,
}

/// Environment variables darkroom reads, for the unknown-variable warning.
const KNOWN_DARKROOM_VARS: &[&str] = &[
    "DARKROOM_CONFIG",
    "DARKROOM_DATA_DIR",
    "DARKROOM_LISTEN",
    "DARKROOM_PUBLIC_URL",
    "DARKROOM_REQUEST_TIMEOUT_SECS",
    "DARKROOM_HEADER_TIMEOUT_SECS",
    "DARKROOM_BODY_TIMEOUT_SECS",
    "DARKROOM_BODY_MIN_RATE_BYTES",
    "DARKROOM_CORS_ORIGINS",
    "DARKROOM_DATABASE_URL",
    "DARKROOM_DATABASE_MAX_CONNECTIONS",
    "DARKROOM_SQLITE_SYNCHRONOUS",
    "DARKROOM_READY_MIN_FREE_MB",
    "DARKROOM_READY_BUCKET_PROBE_SECS",
    "DARKROOM_BUCKET_DIR",
    "DARKROOM_URL_MODE",
    "DARKROOM_PRESIGN_TTL_SECS",
    "DARKROOM_INPUT_MODE",
    "DARKROOM_INPUT_PRESIGN_TTL_SECS",
    "DARKROOM_KIE_VERIFY_CALLBACKS",
    "DARKROOM_KIE_TIMEOUT_SECS",
    "DARKROOM_SIM_LATENCY_MS",
    "DARKROOM_SIM_FAIL_RATE",
    "DARKROOM_SIM_DUPLICATE_RATE",
    "DARKROOM_SIM_DROP_RATE",
    "DARKROOM_SIM_DUPLICATE_COUNT",
    "DARKROOM_SIM_EARLY_CALLBACK_RATE",
    "DARKROOM_SIM_FORGET_RATE",
    "DARKROOM_DEFAULT_PROVIDER",
    "DARKROOM_GEMINI_MODEL",
    "DARKROOM_GEMINI_TIMEOUT_SECS",
    "DARKROOM_GEMINI_CONCURRENCY",
    "DARKROOM_GEMINI_MAX_REQUEST_BYTES",
    "DARKROOM_GEMINI_SIM_LATENCY_MS",
    "DARKROOM_GEMINI_SIM_BLOCK_RATE",
    "DARKROOM_GEMINI_SIM_IMAGE_SAFETY_RATE",
    "DARKROOM_GEMINI_SIM_TEXT_ONLY_RATE",
    "DARKROOM_GEMINI_SIM_ERRORS",
    "DARKROOM_MAX_UPLOAD_BYTES",
    "DARKROOM_MAX_UPLOAD_FILES",
    "DARKROOM_MAX_RESULT_BYTES",
    "DARKROOM_MAX_IMAGE_DIMENSION",
    "DARKROOM_MAX_IMAGE_PIXELS",
    "DARKROOM_MAX_JSON_BODY_BYTES",
    "DARKROOM_MAX_CALLBACK_BODY_BYTES",
    "DARKROOM_CALLBACK_RATE_PER_SEC",
    "DARKROOM_CALLBACK_RATE_BURST",
    "DARKROOM_STRIP_UPLOAD_METADATA",
    "DARKROOM_WORKERS",
    "DARKROOM_DISPATCH_CONCURRENCY",
    "DARKROOM_INGEST_CONCURRENCY",
    "DARKROOM_MAX_ATTEMPTS",
    "DARKROOM_TASK_DEADLINE_SECS",
    "DARKROOM_LEASE_SECS",
    "DARKROOM_TICK_MS",
    "DARKROOM_FIRST_POLL_MS",
    "DARKROOM_UNCONFIRMED_WINDOW_SECS",
    "DARKROOM_RESUBMIT_UNCONFIRMED",
    "DARKROOM_UNREACHABLE_FIRST_PROBE_MS",
    "DARKROOM_UNREACHABLE_MAX_PROBE_MS",
    "DARKROOM_MISSING_TASK_ANSWERS",
    "DARKROOM_SHUTDOWN_GRACE_SECS",
    "DARKROOM_KIE_CREATES_PER_WINDOW",
    "DARKROOM_KIE_CREATE_WINDOW_SECS",
    "DARKROOM_KIE_QUERIES_PER_SECOND",
    "DARKROOM_KIE_MAX_IN_FLIGHT",
    "DARKROOM_KIE_CREDITS_PAUSE_SECS",
    "DARKROOM_SIM_RATE_LIMIT",
    "DARKROOM_TRUSTED_FETCH_HOSTS",
    "DARKROOM_FETCH_CONNECT_TIMEOUT_SECS",
    "DARKROOM_FETCH_TIMEOUT_SECS",
    "DARKROOM_RESULT_HOSTS",
    "DARKROOM_API_KEYS",
    "DARKROOM_KEY_RATE_PER_SEC",
    "DARKROOM_KEY_RATE_BURST",
    "DARKROOM_KEY_MAX_PENDING_TASKS",
    "DARKROOM_WEBHOOK_SECRET",
    "DARKROOM_WEBHOOK_FIRST_RETRY_MS",
    "DARKROOM_LOG",
    "DARKROOM_LOG_FORMAT",
];

/// Reads one variable at a time and remembers the problem with the first bad one.
struct EnvReader<'a> {
    env: &'a HashMap<String, String>,
}

impl EnvReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.env
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn set<T>(
        &self,
        key: &str,
        target: &mut T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<(), ConfigError> {
        if let Some(raw) = self.get(key) {
            *target = parse(raw).map_err(|problem| invalid(key, problem))?;
        }
        Ok(())
    }

    fn number<T: std::str::FromStr>(&self, key: &str, target: &mut T) -> Result<(), ConfigError> {
        self.set(key, target, |raw| {
            raw.parse()
                .map_err(|_| format!("= {raw:?} is not a valid number"))
        })
    }

    fn flag(&self, key: &str, target: &mut bool) -> Result<(), ConfigError> {
        self.set(key, target, |raw| match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(format!("= {raw:?} is not true or false")),
        })
    }

    /// A comma-separated list; empty entries are dropped.
    fn list(&self, key: &str, target: &mut Vec<String>) -> Result<(), ConfigError> {
        self.set(key, target, |v| Ok(split_list(v)))
    }

    fn url(&self, key: &str, target: &mut Url) -> Result<(), ConfigError> {
        self.set(key, target, parse_http_url)
    }

    fn opt_url(&self, key: &str, target: &mut Option<Url>) -> Result<(), ConfigError> {
        self.set(key, target, |raw| parse_http_url(raw).map(Some))
    }
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

fn parse_http_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|_| format!("= {raw:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("= {raw:?} must be an http(s) URL with a host"));
    }
    Ok(url)
}

/// Parses `MIN-MAX` or a single number of milliseconds.
pub fn parse_latency_ms(raw: &str) -> Result<(u64, u64), String> {
    let bad =
        || format!("= {raw:?} must be milliseconds as MIN-MAX (e.g. 1000-3000) or one number");
    let (min, max) = match raw.split_once('-') {
        Some((a, b)) => (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        ),
        None => {
            let v = raw.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    if min > max {
        return Err(bad());
    }
    Ok((min, max))
}

impl Config {
    /// Loads from the process environment, after reading `.env.local` and `.env` from the
    /// working directory (variables already set win, as with the original Next.js app).
    pub fn load() -> Result<Self, ConfigError> {
        for file in [".env.local", ".env"] {
            if Path::new(file).exists()
                && let Err(e) = dotenvy::from_filename(file)
            {
                return Err(ConfigError::File {
                    path: PathBuf::from(file),
                    message: e.to_string(),
                });
            }
        }
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::from_env(&env)
    }

    /// Defaults, then the TOML file named by `DARKROOM_CONFIG` (or `./darkroom.toml` when it
    /// exists), then the variables in `env`.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let file = match env.get("DARKROOM_CONFIG").filter(|p| !p.is_empty()) {
            Some(path) => Some(PathBuf::from(path)),
            None => Some(PathBuf::from("darkroom.toml")).filter(|p| p.exists()),
        };
        let mut config = match file {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        toml::from_str(&text).map_err(|e| file_error(e.to_string()))
    }

    fn apply_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let r = EnvReader { env };
        r.set("DARKROOM_DATA_DIR", &mut self.data_dir, |v| {
            Ok(PathBuf::from(v))
        })?;

        // PORT alone keeps the host; DARKROOM_LISTEN names both.
        let host = self.server.listen.ip();
        r.set("PORT", &mut self.server.listen, |v| {
            let port: u16 = v
                .parse()
                .map_err(|_| format!("= {v:?} is not a port number"))?;
            Ok(SocketAddr::new(host, port))
        })?;
        r.set("DARKROOM_LISTEN", &mut self.server.listen, |v| {
            v.parse()
                .map_err(|_| format!("= {v:?} is not an address like 127.0.0.1:3000"))
        })?;
        r.opt_url("DARKROOM_PUBLIC_URL", &mut self.server.public_url)?;
        r.number(
            "DARKROOM_REQUEST_TIMEOUT_SECS",
            &mut self.server.request_timeout_secs,
        )?;
        r.number(
            "DARKROOM_HEADER_TIMEOUT_SECS",
            &mut self.server.header_timeout_secs,
        )?;
        r.number(
            "DARKROOM_BODY_TIMEOUT_SECS",
            &mut self.server.body_timeout_secs,
        )?;
        r.number(
            "DARKROOM_BODY_MIN_RATE_BYTES",
            &mut self.server.body_min_rate_bytes,
        )?;
        r.list("DARKROOM_CORS_ORIGINS", &mut self.server.cors_origins)?;

        r.set("DARKROOM_DATABASE_URL", &mut self.database.url, |v| {
            Ok(Some(v.to_owned()))
        })?;
        r.number(
            "DARKROOM_DATABASE_MAX_CONNECTIONS",
            &mut self.database.max_connections,
        )?;
        r.set(
            "DARKROOM_SQLITE_SYNCHRONOUS",
            &mut self.database.synchronous,
            Synchronous::parse,
        )?;
        r.number("DARKROOM_READY_MIN_FREE_MB", &mut self.health.min_free_mb)?;
        r.number(
            "DARKROOM_READY_BUCKET_PROBE_SECS",
            &mut self.health.bucket_probe_secs,
        )?;

        r.set("DARKROOM_BUCKET_DIR", &mut self.storage.dir, |v| {
            Ok(Some(PathBuf::from(v)))
        })?;
        r.opt_url("R2_PUBLIC_BASE_URL", &mut self.storage.public_base_url)?;
        r.set(
            "DARKROOM_URL_MODE",
            &mut self.storage.url_mode,
            UrlMode::parse,
        )?;
        r.number(
            "DARKROOM_PRESIGN_TTL_SECS",
            &mut self.storage.presign_ttl_secs,
        )?;
        r.set(
            "DARKROOM_INPUT_MODE",
            &mut self.storage.input_mode,
            InputMode::parse,
        )?;
        r.number(
            "DARKROOM_INPUT_PRESIGN_TTL_SECS",
            &mut self.storage.input_presign_ttl_secs,
        )?;
        self.apply_r2_env(&r)?;

        r.set("KIE_API_TOKEN", &mut self.kie.api_token, |v| {
            Ok(Some(Secret::new(v)))
        })?;
        r.url("KIE_BASE_URL", &mut self.kie.base_url)?;
        r.opt_url("KIE_CALLBACK_URL", &mut self.kie.callback_url)?;
        r.url("KIE_UPLOAD_BASE_URL", &mut self.kie.upload_base_url)?;
        r.flag(
            "DARKROOM_KIE_VERIFY_CALLBACKS",
            &mut self.kie.verify_callbacks,
        )?;
        r.number(
            "DARKROOM_KIE_TIMEOUT_SECS",
            &mut self.kie.request_timeout_secs,
        )?;
        r.set(
            "KIE_WEBHOOK_HMAC_KEY",
            &mut self.kie.webhook_hmac_key,
            |v| Ok(Some(Secret::new(v))),
        )?;
        let k = &mut self.kie;
        r.number("DARKROOM_KIE_CREATES_PER_WINDOW", &mut k.creates_per_window)?;
        r.number("DARKROOM_KIE_CREATE_WINDOW_SECS", &mut k.create_window_secs)?;
        r.number("DARKROOM_KIE_QUERIES_PER_SECOND", &mut k.queries_per_second)?;
        r.number("DARKROOM_KIE_MAX_IN_FLIGHT", &mut k.max_in_flight)?;
        r.number("DARKROOM_KIE_CREDITS_PAUSE_SECS", &mut k.credits_pause_secs)?;
        r.number("DARKROOM_SIM_RATE_LIMIT", &mut self.simulator.rate_limit)?;

        r.set(
            "DARKROOM_SIM_LATENCY_MS",
            &mut self.simulator.latency_ms,
            |v| parse_latency_ms(v).map(|_| v.to_owned()),
        )?;
        r.number("DARKROOM_SIM_FAIL_RATE", &mut self.simulator.fail_rate)?;
        r.number(
            "DARKROOM_SIM_DUPLICATE_RATE",
            &mut self.simulator.duplicate_rate,
        )?;
        r.number("DARKROOM_SIM_DROP_RATE", &mut self.simulator.drop_rate)?;
        r.number(
            "DARKROOM_SIM_DUPLICATE_COUNT",
            &mut self.simulator.duplicate_count,
        )?;
        r.number(
            "DARKROOM_SIM_EARLY_CALLBACK_RATE",
            &mut self.simulator.early_callback_rate,
        )?;
        r.number("DARKROOM_SIM_FORGET_RATE", &mut self.simulator.forget_rate)?;
        self.apply_gemini_env(&r)?;

        let l = &mut self.limits;
        r.number("DARKROOM_MAX_UPLOAD_BYTES", &mut l.max_upload_bytes)?;
        r.number("DARKROOM_MAX_UPLOAD_FILES", &mut l.max_upload_files)?;
        r.number("DARKROOM_MAX_RESULT_BYTES", &mut l.max_result_bytes)?;
        r.number("DARKROOM_MAX_IMAGE_DIMENSION", &mut l.max_image_dimension)?;
        r.number("DARKROOM_MAX_IMAGE_PIXELS", &mut l.max_image_pixels)?;
        r.number("DARKROOM_MAX_JSON_BODY_BYTES", &mut l.max_json_body_bytes)?;
        r.number(
            "DARKROOM_MAX_CALLBACK_BODY_BYTES",
            &mut l.max_callback_body_bytes,
        )?;
        r.number(
            "DARKROOM_CALLBACK_RATE_PER_SEC",
            &mut l.callback_rate_per_sec,
        )?;
        r.number("DARKROOM_CALLBACK_RATE_BURST", &mut l.callback_rate_burst)?;
        r.flag(
            "DARKROOM_STRIP_UPLOAD_METADATA",
            &mut l.strip_upload_metadata,
        )?;

        let e = &mut self.engine;
        r.flag("DARKROOM_WORKERS", &mut e.workers)?;
        r.number("DARKROOM_DISPATCH_CONCURRENCY", &mut e.dispatch_concurrency)?;
        r.number("DARKROOM_INGEST_CONCURRENCY", &mut e.ingest_concurrency)?;
        r.number("DARKROOM_MAX_ATTEMPTS", &mut e.max_attempts)?;
        r.number("DARKROOM_TASK_DEADLINE_SECS", &mut e.task_deadline_secs)?;
        r.number("DARKROOM_LEASE_SECS", &mut e.lease_secs)?;
        r.number("DARKROOM_TICK_MS", &mut e.tick_ms)?;
        r.number("DARKROOM_FIRST_POLL_MS", &mut e.first_poll_ms)?;
        r.number(
            "DARKROOM_UNCONFIRMED_WINDOW_SECS",
            &mut e.unconfirmed_window_secs,
        )?;
        r.flag("DARKROOM_RESUBMIT_UNCONFIRMED", &mut e.resubmit_unconfirmed)?;
        r.number(
            "DARKROOM_UNREACHABLE_FIRST_PROBE_MS",
            &mut e.unreachable_first_probe_ms,
        )?;
        r.number(
            "DARKROOM_UNREACHABLE_MAX_PROBE_MS",
            &mut e.unreachable_max_probe_ms,
        )?;
        r.number("DARKROOM_MISSING_TASK_ANSWERS", &mut e.missing_task_answers)?;
        r.number("DARKROOM_SHUTDOWN_GRACE_SECS", &mut e.shutdown_grace_secs)?;

        r.list(
            "DARKROOM_TRUSTED_FETCH_HOSTS",
            &mut self.fetch.trusted_hosts,
        )?;
        r.list("DARKROOM_RESULT_HOSTS", &mut self.fetch.result_hosts)?;
        r.set("DARKROOM_API_KEYS", &mut self.auth.api_keys, |v| {
            Ok(split_list(v).into_iter().map(Secret::new).collect())
        })?;
        r.number("DARKROOM_KEY_RATE_PER_SEC", &mut self.auth.rate_per_sec)?;
        r.number("DARKROOM_KEY_RATE_BURST", &mut self.auth.rate_burst)?;
        r.number(
            "DARKROOM_KEY_MAX_PENDING_TASKS",
            &mut self.auth.max_pending_tasks,
        )?;
        r.number(
            "DARKROOM_FETCH_CONNECT_TIMEOUT_SECS",
            &mut self.fetch.connect_timeout_secs,
        )?;
        r.number("DARKROOM_FETCH_TIMEOUT_SECS", &mut self.fetch.timeout_secs)?;

        r.set("DARKROOM_WEBHOOK_SECRET", &mut self.webhook.secret, |v| {
            crate::webhooks::parse_secret(v)?;
            Ok(Some(Secret::new(v)))
        })?;
        r.number(
            "DARKROOM_WEBHOOK_FIRST_RETRY_MS",
            &mut self.webhook.first_retry_ms,
        )?;

        r.set("DARKROOM_LOG", &mut self.log.filter, |v| Ok(v.to_owned()))?;
        r.set("DARKROOM_LOG_FORMAT", &mut self.log.format, |v| {
            Ok(v.to_owned())
        })?;
        Ok(())
    }

    /// Provider choice and the Gemini client and simulator.
    fn apply_gemini_env(&mut self, r: &EnvReader<'_>) -> Result<(), ConfigError> {
        r.set(
            "DARKROOM_DEFAULT_PROVIDER",
            &mut self.default_provider,
            |v| Ok(v.to_ascii_lowercase()),
        )?;
        let g = &mut self.gemini;
        r.set("GEMINI_API_KEY", &mut g.api_key, |v| {
            Ok(Some(Secret::new(v)))
        })?;
        r.url("GEMINI_BASE_URL", &mut g.base_url)?;
        r.set("DARKROOM_GEMINI_MODEL", &mut g.model, |v| Ok(v.to_owned()))?;
        r.number("DARKROOM_GEMINI_TIMEOUT_SECS", &mut g.request_timeout_secs)?;
        r.number("DARKROOM_GEMINI_CONCURRENCY", &mut g.concurrency)?;
        r.number(
            "DARKROOM_GEMINI_MAX_REQUEST_BYTES",
            &mut g.max_request_bytes,
        )?;
        let s = &mut g.simulator;
        r.set("DARKROOM_GEMINI_SIM_LATENCY_MS", &mut s.latency_ms, |v| {
            parse_latency_ms(v).map(|_| v.to_owned())
        })?;
        r.number("DARKROOM_GEMINI_SIM_BLOCK_RATE", &mut s.block_rate)?;
        r.number(
            "DARKROOM_GEMINI_SIM_IMAGE_SAFETY_RATE",
            &mut s.image_safety_rate,
        )?;
        r.number("DARKROOM_GEMINI_SIM_TEXT_ONLY_RATE", &mut s.text_only_rate)?;
        r.set("DARKROOM_GEMINI_SIM_ERRORS", &mut s.errors, |v| {
            crate::providers::sim::gemini::parse_error_rates(v).map(|_| v.to_owned())
        })?;
        Ok(())
    }

    /// Checks the provider and Gemini keys (the model name goes into a URL path).
    fn validate_gemini(&self) -> Result<(), ConfigError> {
        let providers = [crate::providers::kie::NAME, crate::providers::gemini::NAME];
        if !providers.contains(&self.default_provider.as_str()) {
            return Err(invalid(
                "default_provider (DARKROOM_DEFAULT_PROVIDER)",
                format!(
                    "= {:?} must be one of {}",
                    self.default_provider,
                    providers.join(", ")
                ),
            ));
        }
        let model = &self.gemini.model;
        let model_ok = !model.is_empty()
            && model.len() <= 100
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !model_ok {
            return Err(invalid(
                "gemini.model (DARKROOM_GEMINI_MODEL)",
                format!("= {model:?} must be a model name like gemini-2.5-flash-image"),
            ));
        }
        let sim = &self.gemini.simulator;
        parse_latency_ms(&sim.latency_ms).map_err(|p| {
            invalid(
                "gemini.simulator.latency_ms (DARKROOM_GEMINI_SIM_LATENCY_MS)",
                p,
            )
        })?;
        crate::providers::sim::gemini::parse_error_rates(&sim.errors).map_err(|p| {
            invalid(
                "gemini.simulator.errors (DARKROOM_GEMINI_SIM_ERRORS)",
                format!("= {:?}: {p}", sim.errors),
            )
        })?;
        for (key, rate) in [
            (
                "gemini.simulator.block_rate (DARKROOM_GEMINI_SIM_BLOCK_RATE)",
                sim.block_rate,
            ),
            (
                "gemini.simulator.image_safety_rate (DARKROOM_GEMINI_SIM_IMAGE_SAFETY_RATE)",
                sim.image_safety_rate,
            ),
            (
                "gemini.simulator.text_only_rate (DARKROOM_GEMINI_SIM_TEXT_ONLY_RATE)",
                sim.text_only_rate,
            ),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid(key, format!("= {rate} must be between 0 and 1")));
            }
        }
        for (key, value) in [
            (
                "gemini.request_timeout_secs (DARKROOM_GEMINI_TIMEOUT_SECS)",
                self.gemini.request_timeout_secs,
            ),
            (
                "gemini.concurrency (DARKROOM_GEMINI_CONCURRENCY)",
                self.gemini.concurrency as u64,
            ),
            (
                "gemini.max_request_bytes (DARKROOM_GEMINI_MAX_REQUEST_BYTES)",
                self.gemini.max_request_bytes,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        Ok(())
    }

    /// Whether Gemini is served by the built-in simulator (no `GEMINI_API_KEY`).
    pub fn gemini_simulated(&self) -> bool {
        self.gemini.api_key.is_none()
    }

    /// The original service's R2 variables: an account id gives Cloudflare's endpoint;
    /// `R2_ENDPOINT` points the same variables at any S3-compatible server.
    fn apply_r2_env(&mut self, r: &EnvReader<'_>) -> Result<(), ConfigError> {
        const R2_KEYS: [&str; 5] = [
            "R2_ACCOUNT_ID",
            "R2_ENDPOINT",
            "R2_ACCESS_KEY_ID",
            "R2_SECRET_ACCESS_KEY",
            "R2_BUCKET_NAME",
        ];
        if R2_KEYS.iter().all(|k| r.get(k).is_none()) {
            return Ok(());
        }
        let endpoint = match (r.get("R2_ENDPOINT"), r.get("R2_ACCOUNT_ID")) {
            (Some(endpoint), _) => {
                parse_http_url(endpoint).map_err(|p| invalid("R2_ENDPOINT", p))?
            }
            (None, Some(account)) => {
                let ok = account.bytes().all(|b| b.is_ascii_alphanumeric());
                if !ok {
                    return Err(invalid(
                        "R2_ACCOUNT_ID",
                        format!("= {account:?} is not a Cloudflare account id"),
                    ));
                }
                Url::parse(&format!("https://{account}.r2.cloudflarestorage.com"))
                    .map_err(|e| invalid("R2_ACCOUNT_ID", e.to_string()))?
            }
            (None, None) => {
                return Err(invalid(
                    "R2_ACCOUNT_ID",
                    "is not set; set it (or R2_ENDPOINT) together with the other R2_* variables",
                ));
            }
        };
        let required = |key: &str| {
            r.get(key)
                .map(str::to_owned)
                .ok_or_else(|| invalid(key, "is not set, but other R2_* variables are"))
        };
        self.storage.s3 = Some(S3Config {
            endpoint,
            region: r.get("R2_REGION").unwrap_or("auto").to_owned(),
            bucket: required("R2_BUCKET_NAME")?,
            access_key_id: required("R2_ACCESS_KEY_ID")?,
            secret_access_key: Secret::new(required("R2_SECRET_ACCESS_KEY")?),
        });
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_gemini()?;
        if let Some(secret) = &self.webhook.secret {
            crate::webhooks::parse_secret(secret.expose())
                .map_err(|p| invalid("webhook.secret (DARKROOM_WEBHOOK_SECRET)", p))?;
        }
        parse_latency_ms(&self.simulator.latency_ms)
            .map_err(|p| invalid("simulator.latency_ms (DARKROOM_SIM_LATENCY_MS)", p))?;
        for (key, rate) in [
            (
                "simulator.fail_rate (DARKROOM_SIM_FAIL_RATE)",
                self.simulator.fail_rate,
            ),
            (
                "simulator.duplicate_rate (DARKROOM_SIM_DUPLICATE_RATE)",
                self.simulator.duplicate_rate,
            ),
            (
                "simulator.drop_rate (DARKROOM_SIM_DROP_RATE)",
                self.simulator.drop_rate,
            ),
            (
                "simulator.early_callback_rate (DARKROOM_SIM_EARLY_CALLBACK_RATE)",
                self.simulator.early_callback_rate,
            ),
            (
                "simulator.forget_rate (DARKROOM_SIM_FORGET_RATE)",
                self.simulator.forget_rate,
            ),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid(key, format!("= {rate} must be between 0 and 1")));
            }
        }
        for (key, value) in [
            (
                "limits.max_upload_bytes (DARKROOM_MAX_UPLOAD_BYTES)",
                self.limits.max_upload_bytes,
            ),
            (
                "limits.max_result_bytes (DARKROOM_MAX_RESULT_BYTES)",
                self.limits.max_result_bytes,
            ),
            (
                "limits.max_upload_files (DARKROOM_MAX_UPLOAD_FILES)",
                self.limits.max_upload_files as u64,
            ),
            (
                "engine.dispatch_concurrency (DARKROOM_DISPATCH_CONCURRENCY)",
                self.engine.dispatch_concurrency as u64,
            ),
            (
                "engine.ingest_concurrency (DARKROOM_INGEST_CONCURRENCY)",
                self.engine.ingest_concurrency as u64,
            ),
            (
                "engine.max_attempts (DARKROOM_MAX_ATTEMPTS)",
                u64::from(self.engine.max_attempts),
            ),
            (
                "engine.lease_secs (DARKROOM_LEASE_SECS)",
                self.engine.lease_secs,
            ),
            ("engine.tick_ms (DARKROOM_TICK_MS)", self.engine.tick_ms),
            (
                "engine.first_poll_ms (DARKROOM_FIRST_POLL_MS)",
                self.engine.first_poll_ms,
            ),
            (
                "simulator.duplicate_count (DARKROOM_SIM_DUPLICATE_COUNT)",
                u64::from(self.simulator.duplicate_count),
            ),
            (
                "engine.task_deadline_secs (DARKROOM_TASK_DEADLINE_SECS)",
                self.engine.task_deadline_secs,
            ),
            (
                "engine.unreachable_first_probe_ms (DARKROOM_UNREACHABLE_FIRST_PROBE_MS)",
                self.engine.unreachable_first_probe_ms,
            ),
            (
                "engine.missing_task_answers (DARKROOM_MISSING_TASK_ANSWERS)",
                u64::from(self.engine.missing_task_answers),
            ),
            (
                "database.max_connections (DARKROOM_DATABASE_MAX_CONNECTIONS)",
                u64::from(self.database.max_connections),
            ),
            (
                "server.header_timeout_secs (DARKROOM_HEADER_TIMEOUT_SECS)",
                self.server.header_timeout_secs,
            ),
            (
                "server.body_timeout_secs (DARKROOM_BODY_TIMEOUT_SECS)",
                self.server.body_timeout_secs,
            ),
            (
                "server.body_min_rate_bytes (DARKROOM_BODY_MIN_RATE_BYTES)",
                self.server.body_min_rate_bytes,
            ),
            (
                "limits.callback_rate_per_sec (DARKROOM_CALLBACK_RATE_PER_SEC)",
                u64::from(self.limits.callback_rate_per_sec),
            ),
            (
                "limits.callback_rate_burst (DARKROOM_CALLBACK_RATE_BURST)",
                u64::from(self.limits.callback_rate_burst),
            ),
            (
                "auth.rate_per_sec (DARKROOM_KEY_RATE_PER_SEC)",
                u64::from(self.auth.rate_per_sec),
            ),
            (
                "auth.rate_burst (DARKROOM_KEY_RATE_BURST)",
                u64::from(self.auth.rate_burst),
            ),
            (
                "auth.max_pending_tasks (DARKROOM_KEY_MAX_PENDING_TASKS)",
                self.auth.max_pending_tasks,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.engine.unreachable_max_probe_ms < self.engine.unreachable_first_probe_ms {
            return Err(invalid(
                "engine.unreachable_max_probe_ms (DARKROOM_UNREACHABLE_MAX_PROBE_MS)",
                format!(
                    "= {} must not be below engine.unreachable_first_probe_ms ({})",
                    self.engine.unreachable_max_probe_ms, self.engine.unreachable_first_probe_ms
                ),
            ));
        }
        for host in &self.fetch.trusted_hosts {
            parse_host_port(host)
                .map_err(|p| invalid("fetch.trusted_hosts (DARKROOM_TRUSTED_FETCH_HOSTS)", p))?;
        }
        for origin in &self.server.cors_origins {
            parse_origin(origin)
                .map_err(|p| invalid("server.cors_origins (DARKROOM_CORS_ORIGINS)", p))?;
        }
        for host in &self.fetch.result_hosts {
            parse_host_pattern(host)
                .map_err(|p| invalid("fetch.result_hosts (DARKROOM_RESULT_HOSTS)", p))?;
        }
        self.configured_api_keys()?;
        if self
            .kie
            .webhook_hmac_key
            .as_ref()
            .is_some_and(|k| k.expose().trim().is_empty())
        {
            return Err(invalid(
                "kie.webhook_hmac_key (KIE_WEBHOOK_HMAC_KEY)",
                "is empty",
            ));
        }
        let s3 = self.storage.s3.is_some();
        if self.storage.url_mode == UrlMode::Presigned && !s3 {
            return Err(invalid(
                "storage.url_mode (DARKROOM_URL_MODE)",
                "= presigned needs an S3-compatible bucket (R2_* variables)",
            ));
        }
        if self.storage.input_mode == InputMode::Presigned && !s3 {
            return Err(invalid(
                "storage.input_mode (DARKROOM_INPUT_MODE)",
                "= presigned needs an S3-compatible bucket (R2_* variables)",
            ));
        }
        if self.storage.input_mode == InputMode::Public && self.storage.public_base_url.is_none() {
            return Err(invalid(
                "storage.input_mode (DARKROOM_INPUT_MODE)",
                "= public needs R2_PUBLIC_BASE_URL",
            ));
        }
        // Seven days is the longest an S3 signature may live.
        for (key, ttl) in [
            (
                "storage.presign_ttl_secs (DARKROOM_PRESIGN_TTL_SECS)",
                self.storage.presign_ttl_secs,
            ),
            (
                "storage.input_presign_ttl_secs (DARKROOM_INPUT_PRESIGN_TTL_SECS)",
                self.storage.input_presign_ttl_secs,
            ),
        ] {
            if ttl > 7 * 24 * 3600 {
                return Err(invalid(
                    key,
                    format!("= {ttl} is longer than S3's limit of 604800 seconds"),
                ));
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(invalid(
                "log.format (DARKROOM_LOG_FORMAT)",
                format!("= {:?} must be text or json", self.log.format),
            ));
        }
        if let Some(url) = &self.database.url
            && !url.starts_with("sqlite:")
        {
            return Err(invalid(
                "database.url (DARKROOM_DATABASE_URL)",
                format!("= {url:?}: only sqlite: URLs are supported in this version"),
            ));
        }
        Ok(())
    }

    pub fn provider_mode(&self) -> ProviderMode {
        if self.kie.api_token.is_some() {
            ProviderMode::Kie
        } else {
            ProviderMode::Simulator
        }
    }

    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("darkroom.db").display()))
    }

    pub fn bucket_dir(&self) -> PathBuf {
        self.storage
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("bucket"))
    }

    /// Variables that look like ours but are not read: a typo should not pass silently.
    pub fn unknown_darkroom_vars(env: &HashMap<String, String>) -> Vec<String> {
        let mut unknown: Vec<String> = env
            .keys()
            .filter(|k| k.starts_with("DARKROOM_") && !KNOWN_DARKROOM_VARS.contains(&k.as_str()))
            .cloned()
            .collect();
        unknown.sort();
        unknown
    }

    /// The `name:key` pairs of `auth.api_keys`, checked: names are 1–64 letters, digits,
    /// `-`, `_` or `.`, unique; keys are at least 16 characters.
    pub fn configured_api_keys(&self) -> Result<Vec<(String, Secret)>, ConfigError> {
        const KEY: &str = "auth.api_keys (DARKROOM_API_KEYS)";
        let mut pairs: Vec<(String, Secret)> = Vec::with_capacity(self.auth.api_keys.len());
        for (i, entry) in self.auth.api_keys.iter().enumerate() {
            // The key itself must not reach the error message.
            let Some((name, key)) = entry.expose().split_once(':') else {
                return Err(invalid(KEY, format!("entry {} must be name:key", i + 1)));
            };
            let name = name.trim();
            if !is_key_name(name) {
                return Err(invalid(
                    KEY,
                    format!(
                        "entry {}: the name must be 1-64 letters, digits, '-', '_' or '.'",
                        i + 1
                    ),
                ));
            }
            if key.trim().len() < 16 {
                return Err(invalid(
                    KEY,
                    format!("the key of {name:?} is shorter than 16 characters"),
                ));
            }
            if pairs.iter().any(|(n, _)| n == name) {
                return Err(invalid(KEY, format!("the name {name:?} appears twice")));
            }
            pairs.push((name.to_owned(), Secret::new(key.trim())));
        }
        Ok(pairs)
    }

    pub fn fetch_timeouts(&self) -> (Duration, Duration) {
        (
            Duration::from_secs(self.fetch.connect_timeout_secs),
            Duration::from_secs(self.fetch.timeout_secs),
        )
    }
}

/// An API key's name: what tasks record as their owner.
pub fn is_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A browser origin, `scheme://host[:port]` with nothing after it. `*` is refused: the
/// allowlist is explicit.
pub fn parse_origin(raw: &str) -> Result<String, String> {
    let bad = || format!("{raw:?} must be an origin like https://app.example.com");
    let url = Url::parse(raw).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none()
        || url.path() != "/"
        || url.query().is_some()
        || raw.trim_end_matches('/').len() < raw.len().saturating_sub(1)
    {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

/// A result host pattern: `example.com` (that host) or `*.example.com` (its subdomains).
pub fn parse_host_pattern(raw: &str) -> Result<String, String> {
    let host = raw.strip_prefix("*.").unwrap_or(raw);
    let ok = !host.is_empty()
        && host.contains('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    if ok {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(format!(
            "{raw:?} must be a host name like tempfile.example.com or *.example.com"
        ))
    }
}

/// `host:port`, as used by the trusted fetch list.
pub fn parse_host_port(raw: &str) -> Result<(String, u16), String> {
    let bad = || format!("{raw:?} must be host:port");
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn zero_configuration_is_the_embedded_default() {
        let config = Config::from_env(&env(&[])).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(config.provider_mode(), ProviderMode::Simulator);
        assert_eq!(config.database_url(), "sqlite://./data/darkroom.db");
        assert_eq!(config.bucket_dir(), PathBuf::from("./data/bucket"));
    }

    #[test]
    fn seed_variables_are_read_as_they_are() {
        let config = Config::from_env(&env(&[
            ("KIE_API_TOKEN", "secret-token"),
            ("KIE_CALLBACK_URL", "https://example.com/api/callback"),
            ("PORT", "8080"),
            ("DARKROOM_DATA_DIR", "/tmp/dr"),
            ("R2_ACCOUNT_ID", "abc123"),
            ("R2_ACCESS_KEY_ID", "id"),
            ("R2_SECRET_ACCESS_KEY", "s3cret"),
            ("R2_BUCKET_NAME", "images"),
        ]))
        .unwrap();
        assert_eq!(config.provider_mode(), ProviderMode::Kie);
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.bucket_dir(), PathBuf::from("/tmp/dr/bucket"));
        let s3 = config.storage.s3.as_ref().unwrap();
        assert_eq!(
            s3.endpoint.as_str(),
            "https://abc123.r2.cloudflarestorage.com/"
        );
        assert_eq!(s3.region, "auto");
        assert!(!format!("{config:?}").contains("s3cret"));
        assert!(!format!("{config:?}").contains("secret-token"));
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (key, value) in [
            ("PORT", "eighty"),
            ("DARKROOM_LISTEN", "nowhere"),
            ("KIE_BASE_URL", "ftp://x"),
            ("DARKROOM_SIM_FAIL_RATE", "2"),
            ("DARKROOM_TRUSTED_FETCH_HOSTS", "localhost"),
            ("DARKROOM_MAX_UPLOAD_BYTES", "0"),
        ] {
            let err = Config::from_env(&env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            let short = key.trim_start_matches("DARKROOM_").to_ascii_lowercase();
            assert!(
                err.contains(key) || err.to_ascii_lowercase().contains(&short),
                "{key}: {err}"
            );
        }
        let err = Config::from_env(&env(&[("R2_BUCKET_NAME", "b")])).unwrap_err();
        assert!(err.to_string().contains("R2_ACCOUNT_ID"), "{err}");
    }

    #[test]
    fn security_settings_are_checked_without_echoing_keys() {
        let config = Config::from_env(&env(&[
            (
                "DARKROOM_API_KEYS",
                "alice:alice-key-0123456789, bob:bob-key-0123456789",
            ),
            (
                "DARKROOM_CORS_ORIGINS",
                "https://app.example.com,http://localhost:5173",
            ),
            ("DARKROOM_RESULT_HOSTS", "tempfile.example.com,*.kie.ai"),
            ("KIE_WEBHOOK_HMAC_KEY", "whk-secret"),
        ]))
        .unwrap();
        let keys = config.configured_api_keys().unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].0, "bob");
        let dump = format!("{config:?}");
        assert!(
            !dump.contains("alice-key") && !dump.contains("whk-secret"),
            "{dump}"
        );
        for bad in [
            "alice",
            "alice:short",
            "a b:0123456789abcdef",
            "alice:0123456789abcdef,alice:fedcba9876543210",
        ] {
            let err = Config::from_env(&env(&[("DARKROOM_API_KEYS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("DARKROOM_API_KEYS"), "{err}");
            assert!(!err.contains("0123456789abcdef"), "the key leaked: {err}");
        }
        for (key, value) in [
            ("DARKROOM_CORS_ORIGINS", "*"),
            ("DARKROOM_CORS_ORIGINS", "https://app.example.com/path"),
            ("DARKROOM_RESULT_HOSTS", "http://x.com"),
            ("DARKROOM_HEADER_TIMEOUT_SECS", "0"),
        ] {
            let err = Config::from_env(&env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            let short = key.trim_start_matches("DARKROOM_").to_ascii_lowercase();
            assert!(
                err.contains(key) || err.to_ascii_lowercase().contains(&short),
                "{err}"
            );
        }
    }

    #[test]
    fn gemini_is_simulated_until_a_key_is_set() {
        let config = Config::from_env(&env(&[])).unwrap();
        assert!(config.gemini_simulated());
        assert_eq!(config.default_provider, "kie");
        assert_eq!(config.gemini.model, "gemini-2.5-flash-image");
        let config = Config::from_env(&env(&[
            ("GEMINI_API_KEY", "g-secret"),
            ("GEMINI_BASE_URL", "http://127.0.0.1:9091"),
            ("DARKROOM_DEFAULT_PROVIDER", "Gemini"),
            ("DARKROOM_GEMINI_SIM_ERRORS", "429=0.5,503=0.1"),
        ]))
        .unwrap();
        assert!(!config.gemini_simulated());
        assert_eq!(config.default_provider, "gemini");
        assert!(!format!("{config:?}").contains("g-secret"));
        for (key, value) in [
            ("DARKROOM_DEFAULT_PROVIDER", "openai"),
            ("DARKROOM_GEMINI_MODEL", "../x"),
            ("DARKROOM_GEMINI_SIM_ERRORS", "418=1"),
            ("DARKROOM_GEMINI_SIM_BLOCK_RATE", "1.5"),
            ("DARKROOM_GEMINI_CONCURRENCY", "0"),
            ("GEMINI_BASE_URL", "nowhere"),
        ] {
            let err = Config::from_env(&env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_darkroom_variables_are_reported() {
        let unknown = Config::unknown_darkroom_vars(&env(&[
            ("DARKROOM_LISTN", "x"),
            ("DARKROOM_LISTEN", "y"),
        ]));
        assert_eq!(unknown, vec!["DARKROOM_LISTN".to_owned()]);
    }

    #[test]
    fn every_documented_variable_is_read() {
        // Each variable set to a value no parser accepts must stop the start, naming it:
        // a documented variable that is never read fails here. Free-text ones are skipped.
        for var in KNOWN_DARKROOM_VARS {
            if matches!(
                *var,
                "DARKROOM_CONFIG"
                    | "DARKROOM_LOG"
                    | "DARKROOM_DATA_DIR"
                    | "DARKROOM_BUCKET_DIR"
                    | "DARKROOM_DATABASE_URL"
            ) {
                continue;
            }
            let env: HashMap<String, String> =
                [(var.to_string(), "\u{1}not valid\u{1}".to_owned())].into();
            let result = Config::from_env(&env);
            assert!(
                result.is_err(),
                "{var} is documented but not read (or accepts anything)"
            );
            assert!(
                result.unwrap_err().to_string().contains(var),
                "{var}: the error names another key"
            );
        }
    }

    #[test]
    fn the_example_file_parses_and_lists_every_variable() {
        let example = include_str!("../darkroom.example.toml");
        let _: Config = toml::from_str(example).unwrap();
        for var in KNOWN_DARKROOM_VARS {
            assert!(
                example.contains(var),
                "darkroom.example.toml does not document {var}"
            );
        }
    }
}
