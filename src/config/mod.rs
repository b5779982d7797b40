//! Configuration: built-in defaults, then a TOML file, then the environment (including
//! `.env.local` / `.env`, and the original service's variable names), validated once at
//! start. Every key is declared once, in [`keys::KEYS`]; `darkroom.example.toml`
//! documents each. Values are parsed into their types ([`types`]) at load.

mod api_keys;
mod env;
mod file;
pub mod keys;
pub mod types;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::domain::image::ImageLimits;
use crate::domain::request::ProviderName;
pub use api_keys::is_key_name;
pub use keys::{CLIENT_VARS, CONFIG_FILE_VAR, KEYS, Key};
use types::Raw;
pub use types::{
    BudgetPolicy, ErrorRates, FailoverChain, HostPattern, HostPort, InputMode, LatencyRange,
    LogFormat, Origin, Roles, Secret, Synchronous, UrlMode,
};

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

// The sections. Their `Default` is only a blank to fill: the built-in defaults are the
// `default` column of `keys::KEYS`, applied by `Config::default()`. Fields keep their
// keys' names, so `tick_ms` is a `Duration` written in milliseconds.

#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// The provider a generation request gets when it names none.
    pub default_provider: ProviderName,
    /// What this instance does: the API, the workers, or both.
    pub roles: Roles,
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
    pub metrics: MetricsConfig,
    pub retention: RetentionConfig,
    pub budget: BudgetConfig,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How clients and the provider reach this server; default `http://{listen}`.
    pub public_url: Option<Url>,
    pub request_timeout_secs: Duration,
    /// A client must finish sending a request's headers within this many seconds (idle
    /// keep-alive connections are closed after it too).
    pub header_timeout_secs: Duration,
    /// A request body gets this many seconds, plus one second per `body_min_rate_bytes`
    /// received: a client trickling its body is cut off with 408.
    pub body_timeout_secs: Duration,
    pub body_min_rate_bytes: u64,
    /// How long an `Idempotency-Key` and its answer are kept for replay.
    pub idempotency_ttl: Duration,
    /// Origins allowed to call the API from a browser. Empty: no CORS headers, so only
    /// same-origin pages can read answers.
    pub cors_origins: Vec<Origin>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            request_timeout_secs: Duration::ZERO,
            header_timeout_secs: Duration::ZERO,
            body_timeout_secs: Duration::ZERO,
            body_min_rate_bytes: 0,
            idempotency_ttl: Duration::ZERO,
            cors_origins: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DatabaseConfig {
    /// Default `sqlite://{data_dir}/darkroom.db`.
    pub url: Option<String>,
    pub max_connections: u32,
    /// How hard SQLite syncs a commit: `normal` (survives a crash of darkroom; a power cut
    /// may lose the last commits) or `full` (every commit synced before it is answered).
    pub synchronous: Synchronous,
}

/// What `/readyz` checks beyond "the files are open".
#[derive(Clone, Debug, Default)]
pub struct HealthConfig {
    /// Below this much free space on the disk of the database file or the local bucket,
    /// the instance reports itself not ready (MiB; 0 turns the check off).
    pub min_free_mb: u64,
    /// The bucket write probe (an object written and deleted) runs at most this often;
    /// between runs `/readyz` reports the last outcome (seconds; 0: every time).
    pub bucket_probe_secs: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct StorageConfig {
    /// Local bucket directory; default `{data_dir}/bucket`. Used unless an S3 bucket is set.
    pub dir: Option<PathBuf>,
    /// S3-compatible bucket (Cloudflare R2 through the `R2_*` variables).
    pub s3: Option<S3Config>,
    /// When set, object URLs are `{public_base_url}/{key}` (the original's `R2_PUBLIC_BASE_URL`).
    pub public_base_url: Option<Url>,
    /// Without a public base URL: how `/files/{key}` answers.
    pub url_mode: UrlMode,
    /// Lifetime of the presigned URLs `/files/{key}` redirects to, seconds.
    pub presign_ttl_secs: Duration,
    /// How input images reach the provider.
    pub input_mode: InputMode,
    /// Lifetime of presigned input URLs handed to the provider, seconds.
    pub input_presign_ttl_secs: Duration,
    /// How long one request to an S3 bucket may take (a part of an upload included).
    pub request_timeout_secs: Duration,
}

#[derive(Clone, Debug)]
pub struct S3Config {
    pub endpoint: Url,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

#[derive(Clone, Debug)]
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
    pub create_window_secs: Duration,
    /// `recordInfo` queries per second (KIE allows 10); 0 means no limit.
    pub queries_per_second: usize,
    /// Tasks being created or waiting at KIE at once; 0 means no cap.
    pub max_in_flight: usize,
    /// How long a 402 (insufficient credits) pauses submission, seconds.
    pub credits_pause_secs: Duration,
    /// Submission pauses while KIE's credit balance is below this; 0 turns the floor off.
    pub credit_floor: u64,
    /// How often workers read KIE's credit balance (also read at once after a 402).
    pub credit_check_secs: Duration,
    pub request_timeout_secs: Duration,
    /// KIE's webhook HMAC key (set in KIE's console). When set, callbacks must carry a valid
    /// `X-Webhook-Timestamp` / `X-Webhook-Signature`.
    pub webhook_hmac_key: Option<Secret>,
}

impl Default for KieConfig {
    fn default() -> Self {
        Self {
            api_token: None,
            base_url: blank_url(),
            callback_url: None,
            verify_callbacks: false,
            upload_base_url: blank_url(),
            creates_per_window: 0,
            create_window_secs: Duration::ZERO,
            queries_per_second: 0,
            max_in_flight: 0,
            credits_pause_secs: Duration::ZERO,
            credit_floor: 0,
            credit_check_secs: Duration::ZERO,
            request_timeout_secs: Duration::ZERO,
            webhook_hmac_key: None,
        }
    }
}

/// The built-in KIE simulator's knobs.
#[derive(Clone, Debug, Default)]
pub struct SimulatorConfig {
    pub latency_ms: LatencyRange,
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

#[derive(Clone, Debug)]
pub struct GeminiConfig {
    /// Setting it switches Gemini from the built-in simulator to Google's API.
    pub api_key: Option<Secret>,
    pub base_url: Url,
    /// The model every Gemini task uses.
    pub model: String,
    /// One `generateContent` call, seconds: generation can take a minute.
    pub request_timeout_secs: Duration,
    /// Gemini calls at once; other providers' tasks never wait for these slots.
    pub concurrency: usize,
    /// Gemini's inline request limit: the prompt plus the base64 input images, bytes.
    pub max_request_bytes: u64,
    pub simulator: GeminiSimulatorConfig,
}

impl Default for GeminiConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: blank_url(),
            model: String::new(),
            request_timeout_secs: Duration::ZERO,
            concurrency: 0,
            max_request_bytes: 0,
            simulator: GeminiSimulatorConfig::default(),
        }
    }
}

/// The built-in Gemini simulator's knobs.
#[derive(Clone, Debug, Default)]
pub struct GeminiSimulatorConfig {
    pub latency_ms: LatencyRange,
    /// Share of prompts blocked (`promptFeedback.blockReason`).
    pub block_rate: f64,
    /// Share of answers stopped by `finishReason: IMAGE_SAFETY`.
    pub image_safety_rate: f64,
    /// Share of text-only answers.
    pub text_only_rate: f64,
    /// HTTP errors answered at these rates.
    pub errors: ErrorRates,
}

#[derive(Clone, Debug, Default)]
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

#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// Whether this instance runs the background workers (dispatcher, poller, ingest).
    pub workers: bool,
    pub dispatch_concurrency: usize,
    pub ingest_concurrency: usize,
    pub max_attempts: u32,
    /// A submitted task with no result after this long becomes `expired`.
    pub task_deadline_secs: Duration,
    pub lease_secs: Duration,
    pub tick_ms: Duration,
    /// When a submitted task is first asked about if no callback has come, milliseconds.
    pub first_poll_ms: Duration,
    /// How long a create that got no answer waits for a callback, seconds.
    pub unconfirmed_window_secs: Duration,
    /// After that window, submit again (the provider may bill twice) instead of failing.
    pub resubmit_unconfirmed: bool,
    /// Before a create for a provider that fetches inputs itself (KIE), read the first
    /// bytes of each image URL a client gave, so a URL that cannot work (no such host, a 4xx,
    /// not an image) fails the task before the provider is paid to find out. One outbound
    /// request per such URL and task; off by default (KIE refuses such URLs itself).
    pub check_client_inputs: bool,
    /// A provider that cannot be reached is probed after this long, milliseconds; the wait
    /// doubles after each failed probe, up to `unreachable_max_probe_ms`.
    pub unreachable_first_probe_ms: Duration,
    pub unreachable_max_probe_ms: Duration,
    /// "No such task" answers in a row (KIE `recordInfo` 404) after which a task the
    /// provider had accepted fails `provider_task_missing`.
    pub missing_task_answers: u32,
    /// How long in-flight work may take to finish at shutdown, seconds.
    pub shutdown_grace_secs: Duration,
    /// Provider failover: the providers a queued task may move along, in order.
    pub failover: FailoverChain,
    /// Whether a task whose request does not say `fallback` may move.
    pub failover_by_default: bool,
    /// Failed creates in a row (5xx, 429) after which a provider pauses as `failing` and its
    /// queued tasks move (with failover on); 0: never.
    pub failover_after_failures: u32,
    pub failover_pause_secs: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct FetchConfig {
    /// Hosts that may be fetched over plain http and on private addresses (a standalone
    /// simulator on loopback). Nothing else may.
    pub trusted_hosts: Vec<HostPort>,
    pub connect_timeout_secs: Duration,
    pub timeout_secs: Duration,
    /// When not empty, results are downloaded only from these hosts, on every redirect hop.
    pub result_hosts: Vec<HostPattern>,
}

#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// `name:key` entries. Any key (here or made with `darkroom keys create`) turns
    /// authentication on for every client route.
    pub api_keys: Vec<Secret>,
    /// Requests per second per key, and the burst above it.
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Unfinished tasks (queued or in flight) one key may have; more is a 429.
    pub max_pending_tasks: u64,
    /// Names of keys that are administrators: `GET /api/stats` shows them every key's
    /// tasks, with a row per key. Other keys see their own.
    pub admin_keys: Vec<String>,
}

/// Outbound webhooks (Standard Webhooks): the signing secret and the retry pace.
#[derive(Clone, Debug, Default)]
pub struct WebhookConfig {
    /// `whsec_<base64>`: signs the webhooks of tasks without an owner. Unset: generated
    /// once and kept in `<data_dir>/webhook_secret`.
    pub secret: Option<Secret>,
    /// The wait before the first retry, milliseconds.
    pub first_retry_ms: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `darkroom=debug,info`.
    pub filter: String,
    pub format: LogFormat,
}

/// `GET /metrics`: who may read it, and where.
#[derive(Clone, Debug, Default)]
pub struct MetricsConfig {
    /// Serve `/metrics` and record every request; off only to measure what they cost.
    pub enabled: bool,
    /// When set, `/metrics` needs `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// When set, `/metrics` is served on this address only, not on the main listener.
    pub listen: Option<SocketAddr>,
}

/// Retention: `darkroom gc` and `serve`'s background sweep.
#[derive(Clone, Debug, Default)]
pub struct RetentionConfig {
    /// Finished tasks older than this many days go, with their objects; `None`: never.
    pub days: Option<u32>,
    /// How often `serve` sweeps when `days` is set.
    pub interval_secs: Duration,
}

/// Daily credit budgets (per key in the database, and this global one) and the price table
/// tasks are estimated with before they are sent.
#[derive(Clone, Debug, Default)]
pub struct BudgetConfig {
    /// Credits all tasks together may use per UTC day; 0: no global budget.
    pub daily_credits: u64,
    /// What a task that would exceed a budget does: wait for the next day, or fail.
    pub policy: BudgetPolicy,
    /// Credits a KIE task is estimated at before it is sent.
    pub kie_credits_per_task: u64,
    /// Credits a Gemini task is estimated at before it is sent.
    pub gemini_credits_per_task: u64,
}

fn blank_url() -> Url {
    Url::parse("http://unset.invalid").expect("static URL")
}

impl Default for Config {
    /// Every key at its built-in default.
    fn default() -> Self {
        let mut config = Config {
            data_dir: PathBuf::new(),
            default_provider: ProviderName::Kie,
            roles: Roles::default(),
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
            metrics: MetricsConfig::default(),
            retention: RetentionConfig::default(),
            budget: BudgetConfig::default(),
        };
        for key in KEYS {
            if let Some(default) = key.default {
                (key.set)(&mut config, Raw::Text(default), None)
                    .unwrap_or_else(|p| panic!("the default of {} {p}", key.path));
            }
        }
        config
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

impl Config {
    /// Loads from the process environment, after reading `.env.local` and `.env` from the
    /// working directory (variables already set win, as with the original Next.js app).
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_with(&[])
    }

    /// [`load`](Self::load) with `overrides` winning over the environment: `serve`'s flags
    /// (`--listen` is `DARKROOM_LISTEN`, `--data-dir` is `DARKROOM_DATA_DIR`, …).
    pub fn load_with(overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
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
        let mut env: HashMap<String, String> = std::env::vars().collect();
        for (var, value) in overrides {
            env.insert((*var).to_owned(), value.clone());
        }
        Self::from_env(&env)
    }

    /// Defaults, then the TOML file named by `DARKROOM_CONFIG` (or `./darkroom.toml` when it
    /// exists), then the variables in `env`.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let file = match env.get(keys::CONFIG_FILE_VAR).filter(|p| !p.is_empty()) {
            Some(path) => Some(PathBuf::from(path)),
            None => Some(PathBuf::from("darkroom.toml")).filter(|p| p.exists()),
        };
        let mut config = match file {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        env::apply(&mut config, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Defaults, then the TOML file at `path` (not validated across keys yet).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |message: String| ConfigError::File {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let mut config = Self::default();
        file::apply(&mut config, &text).map_err(file_error)?;
        Ok(config)
    }

    /// Variables that look like ours but are not read: a typo should not pass silently.
    pub fn unknown_darkroom_vars(env: &HashMap<String, String>) -> Vec<String> {
        env::unknown_darkroom_vars(env)
    }

    /// Each key's check, then the rules that span keys. Messages name `path (VARIABLE)`.
    fn validate(&self) -> Result<(), ConfigError> {
        for key in KEYS {
            if let Some(check) = key.check {
                check(self).map_err(|p| invalid(&key.label(), p))?;
            }
        }
        let label = |path: &str| keys::key(path).label();
        let engine = &self.engine;
        if engine.unreachable_max_probe_ms < engine.unreachable_first_probe_ms {
            return Err(invalid(
                &label("engine.unreachable_max_probe_ms"),
                format!(
                    "= {} must not be below engine.unreachable_first_probe_ms ({})",
                    engine.unreachable_max_probe_ms.as_millis(),
                    engine.unreachable_first_probe_ms.as_millis()
                ),
            ));
        }
        let s3 = self.storage.s3.is_some();
        let needs_s3 = "= presigned needs an S3-compatible bucket (R2_* variables)";
        if self.storage.url_mode == UrlMode::Presigned && !s3 {
            return Err(invalid(&label("storage.url_mode"), needs_s3));
        }
        if self.storage.input_mode == InputMode::Presigned && !s3 {
            return Err(invalid(&label("storage.input_mode"), needs_s3));
        }
        if self.storage.input_mode == InputMode::Public && self.storage.public_base_url.is_none() {
            return Err(invalid(
                &label("storage.input_mode"),
                "= public needs R2_PUBLIC_BASE_URL",
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

    /// Whether Gemini is served by the built-in simulator (no `GEMINI_API_KEY`).
    pub fn gemini_simulated(&self) -> bool {
        self.gemini.api_key.is_none()
    }

    /// Whether this instance runs the workers: the `workers` role, and not switched off
    /// by `DARKROOM_WORKERS=false`.
    pub fn runs_workers(&self) -> bool {
        self.roles.workers && self.engine.workers
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

    pub fn fetch_timeouts(&self) -> (Duration, Duration) {
        (self.fetch.connect_timeout_secs, self.fetch.timeout_secs)
    }

    /// The bounds every image darkroom reads must keep (uploads, inputs, results).
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits {
            max_dimension: self.limits.max_image_dimension,
            max_pixels: self.limits.max_image_pixels,
        }
    }
}

#[cfg(test)]
mod tests;
