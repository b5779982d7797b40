//! Every configuration key, declared once: its TOML path, its environment variables (the
//! first one is the key's name in messages; the others, such as the original service's
//! `PORT`, are aliases it wins over), its built-in default, the field it is parsed into,
//! an optional check, and one line of documentation. Reading the TOML file and the
//! environment, the unknown-`DARKROOM_*` warning, the messages of invalid values and the
//! test of `darkroom.example.toml` all come from [`KEYS`].
//!
//! To add a key: add its field to the section struct in `mod.rs`, one `key!` line here,
//! and its commented entry in `darkroom.example.toml` (the test fails until it is there).

use std::fmt;

use super::Config;
use std::time::Duration;

use super::types::{Hours, Millis, Raw, Secret, Secs, Setting};

/// A check of a key's parsed value; the problem, for a message naming the key.
type Check = fn(&Config) -> Result<(), String>;

/// One configuration key.
pub struct Key {
    /// Its TOML path, e.g. `server.listen`.
    pub path: &'static str,
    /// Its environment variables: the name first, then aliases (which it wins over).
    pub env: &'static [&'static str],
    /// The built-in default in the text form of an environment variable; `None` for keys
    /// that are unset unless configured.
    pub default: Option<&'static str>,
    pub doc: &'static str,
    /// Parses one raw value into the field; the variable it came from, if any.
    pub(super) set: fn(&mut Config, Raw<'_>, Option<&str>) -> Result<(), String>,
    /// The field's current value as text (secrets stay redacted).
    pub show: fn(&Config) -> String,
    /// A check of the parsed value, run once every source is read.
    pub(super) check: Option<Check>,
}

impl Key {
    /// How messages name the key: `server.listen (DARKROOM_LISTEN)`.
    pub fn label(&self) -> String {
        format!("{} ({})", self.path, self.env[0])
    }
}

/// The key at `path`; a path not in the table is a bug in the caller.
pub(super) fn key(path: &str) -> &'static Key {
    KEYS.iter()
        .find(|k| k.path == path)
        .unwrap_or_else(|| panic!("no configuration key {path}"))
}

/// `key!("toml.path", ["ENV", "ALIAS"], default, field.path [as Secs|Millis|Hours] [, check fn]; "doc")`.
macro_rules! key {
    // A duration key: the field is a `Duration`, written in the unit `$unit` names.
    ($path:literal, [$($env:literal),+], $default:expr, $($field:ident).+ as $unit:ty $(, $check:path)?; $doc:literal) => {
        Key {
            path: $path,
            env: &[$($env),+],
            default: $default,
            doc: $doc,
            set: |c, raw, _| {
                c.$($field).+ = <$unit as Setting>::read(raw)?.0;
                Ok(())
            },
            show: |c| format!("{:?}", c.$($field).+),
            check: key!(@check [$($check)?] $($field).+),
        }
    };
    ($path:literal, [$($env:literal),+], $default:expr, $($field:ident).+ $(, $check:path)?; $doc:literal) => {
        Key {
            path: $path,
            env: &[$($env),+],
            default: $default,
            doc: $doc,
            set: |c, raw, _| {
                c.$($field).+ = Setting::read(raw)?;
                Ok(())
            },
            show: |c| format!("{:?}", c.$($field).+),
            check: key!(@check [$($check)?] $($field).+),
        }
    };
    (@check [$check:path] $($field:ident).+) => { Some(|c: &Config| $check(&c.$($field).+)) };
    (@check [] $($field:ident).+) => { None };
}

/// The variable naming the configuration file; not a key itself.
pub const CONFIG_FILE_VAR: &str = "DARKROOM_CONFIG";

/// Variables of the command-line client (`darkroom generate`, `tasks`, `batches`): the
/// server's URL and the API key it sends. The server does not read them, but they are
/// ours, so a shell that sets them does not make `serve` warn.
pub const CLIENT_VARS: [&str; 2] = ["DARKROOM_SERVER", "DARKROOM_KEY"];

/// `[storage.s3]` is read as a whole: from the file, or from the original's `R2_*`
/// variables as a group (see `env.rs`). Its fields and the variables that fill them.
pub const S3_KEYS: [(&str, &[&str]); 5] = [
    ("storage.s3.endpoint", &["R2_ENDPOINT", "R2_ACCOUNT_ID"]),
    ("storage.s3.region", &["R2_REGION"]),
    ("storage.s3.bucket", &["R2_BUCKET_NAME"]),
    ("storage.s3.access_key_id", &["R2_ACCESS_KEY_ID"]),
    ("storage.s3.secret_access_key", &["R2_SECRET_ACCESS_KEY"]),
];

/// `PORT` (the original's) sets the port and keeps the host; `DARKROOM_LISTEN` sets both.
fn set_listen(c: &mut Config, raw: Raw<'_>, var: Option<&str>) -> Result<(), String> {
    match (var, raw) {
        (Some("PORT"), Raw::Text(v)) => {
            let port: u16 = v
                .parse()
                .map_err(|_| format!("= {v:?} is not a port number"))?;
            c.server.listen.set_port(port);
        }
        _ => c.server.listen = Setting::read(raw)?,
    }
    Ok(())
}

#[rustfmt::skip]
pub static KEYS: &[Key] = &[
    key!("data_dir", ["DARKROOM_DATA_DIR"], Some("./data"), data_dir;
        "Where the SQLite database and the local bucket live."),
    key!("default_provider", ["DARKROOM_DEFAULT_PROVIDER"], Some("kie"), default_provider;
        "The provider of requests and sources that name none: kie or gemini."),
    key!("roles", ["DARKROOM_ROLES"], Some("api,workers"), roles;
        "What this instance does: api (the API, the page, callbacks, files), workers (the queue), or both."),
    Key {
        path: "server.listen",
        env: &["DARKROOM_LISTEN", "PORT"],
        default: Some("127.0.0.1:3000"),
        doc: "Address to listen on (PORT: the port only, keeping the host).",
        set: set_listen,
        show: |c| format!("{:?}", c.server.listen),
        check: None,
    },
    key!("server.public_url", ["DARKROOM_PUBLIC_URL"], None, server.public_url;
        "How clients and the provider reach this server; default http://{listen}."),
    key!("server.request_timeout_secs", ["DARKROOM_REQUEST_TIMEOUT_SECS"], Some("60"), server.request_timeout_secs as Secs;
        "Whole-request timeout, seconds."),
    key!("server.header_timeout_secs", ["DARKROOM_HEADER_TIMEOUT_SECS"], Some("10"), server.header_timeout_secs as Secs, nonzero;
        "Time to send a request's headers, seconds; idle connections close after it."),
    key!("server.body_timeout_secs", ["DARKROOM_BODY_TIMEOUT_SECS"], Some("10"), server.body_timeout_secs as Secs, nonzero;
        "A request body gets this many seconds, plus one per body_min_rate_bytes received."),
    key!("server.body_min_rate_bytes", ["DARKROOM_BODY_MIN_RATE_BYTES"], Some("1024"), server.body_min_rate_bytes, positive;
        "Bytes of body that earn one more second."),
    key!("server.idempotency_ttl_hours", ["DARKROOM_IDEMPOTENCY_TTL_HOURS"], Some("24"), server.idempotency_ttl as Hours, nonzero;
        "How long an Idempotency-Key and its answer are kept, hours (fractions allowed)."),
    key!("server.cors_origins", ["DARKROOM_CORS_ORIGINS"], Some(""), server.cors_origins;
        "Browser origins allowed to call the API; empty: no CORS headers."),

    key!("database.url", ["DARKROOM_DATABASE_URL"], None, database.url, database_url;
        "The database: sqlite://… or postgres://…; default sqlite://{data_dir}/darkroom.db."),
    key!("database.max_connections", ["DARKROOM_DATABASE_MAX_CONNECTIONS"], Some("8"), database.max_connections, positive;
        "Connection pool size."),
    key!("database.synchronous", ["DARKROOM_SQLITE_SYNCHRONOUS"], Some("normal"), database.synchronous;
        "SQLite durability: normal or full."),

    key!("storage.dir", ["DARKROOM_BUCKET_DIR"], None, storage.dir;
        "Local bucket directory; default {data_dir}/bucket."),
    key!("storage.public_base_url", ["R2_PUBLIC_BASE_URL"], None, storage.public_base_url;
        "Objects are public at {public_base_url}/{key}."),
    key!("storage.url_mode", ["DARKROOM_URL_MODE"], Some("proxy"), storage.url_mode;
        "Without a public base URL, /files/{key} streams (proxy) or redirects (presigned)."),
    key!("storage.presign_ttl_secs", ["DARKROOM_PRESIGN_TTL_SECS"], Some("3600"), storage.presign_ttl_secs as Secs, s3_ttl;
        "Lifetime of presigned /files URLs, seconds."),
    key!("storage.input_mode", ["DARKROOM_INPUT_MODE"], Some("auto"), storage.input_mode;
        "How input images reach the provider: auto, public, presigned, proxy, kie-upload."),
    key!("storage.input_presign_ttl_secs", ["DARKROOM_INPUT_PRESIGN_TTL_SECS"], Some("7200"), storage.input_presign_ttl_secs as Secs, s3_ttl;
        "Lifetime of presigned input URLs, seconds."),
    key!("storage.request_timeout_secs", ["DARKROOM_BUCKET_REQUEST_TIMEOUT_SECS"], Some("120"), storage.request_timeout_secs as Secs, nonzero;
        "How long one request to an S3 bucket may take (an upload's part included), seconds."),

    key!("kie.api_token", ["KIE_API_TOKEN"], None, kie.api_token;
        "KIE's key; setting it turns the built-in simulator off."),
    key!("kie.base_url", ["KIE_BASE_URL"], Some("https://api.kie.ai"), kie.base_url;
        "KIE API base URL."),
    key!("kie.callback_url", ["KIE_CALLBACK_URL"], None, kie.callback_url;
        "Where KIE calls back; default {public_url}/api/callback."),
    key!("kie.upload_base_url", ["KIE_UPLOAD_BASE_URL"], Some("https://kieai.redpandaai.co"), kie.upload_base_url;
        "KIE's file upload API."),
    key!("kie.creates_per_window", ["DARKROOM_KIE_CREATES_PER_WINDOW"], Some("20"), kie.creates_per_window;
        "Creates per window (KIE: 20 per 10 s); 0: no limit."),
    key!("kie.create_window_secs", ["DARKROOM_KIE_CREATE_WINDOW_SECS"], Some("10"), kie.create_window_secs as Secs;
        "The create window, seconds."),
    key!("kie.queries_per_second", ["DARKROOM_KIE_QUERIES_PER_SECOND"], Some("9"), kie.queries_per_second;
        "recordInfo queries per second; 0: no limit."),
    key!("kie.max_in_flight", ["DARKROOM_KIE_MAX_IN_FLIGHT"], Some("200"), kie.max_in_flight;
        "Tasks being created or waiting at KIE at once; 0: no cap."),
    key!("kie.credits_pause_secs", ["DARKROOM_KIE_CREDITS_PAUSE_SECS"], Some("300"), kie.credits_pause_secs as Secs;
        "How long a 402 pauses submission, seconds."),
    key!("kie.credit_floor", ["DARKROOM_KIE_CREDIT_FLOOR"], Some("0"), kie.credit_floor;
        "Pause KIE submission while its credit balance is below this; 0: off."),
    key!("kie.credit_check_secs", ["DARKROOM_KIE_CREDIT_CHECK_SECS"], Some("300"), kie.credit_check_secs as Secs, nonzero;
        "How often KIE's credit balance is read, seconds."),
    key!("kie.verify_callbacks", ["DARKROOM_KIE_VERIFY_CALLBACKS"], Some("true"), kie.verify_callbacks;
        "Take a callback's outcome from recordInfo, not from its unsigned body."),
    key!("kie.request_timeout_secs", ["DARKROOM_KIE_TIMEOUT_SECS"], Some("30"), kie.request_timeout_secs as Secs;
        "Timeout of one KIE API call, seconds."),
    key!("kie.webhook_hmac_key", ["KIE_WEBHOOK_HMAC_KEY"], None, kie.webhook_hmac_key, not_blank;
        "KIE's webhook HMAC key; when set, callbacks must be signed."),

    key!("simulator.latency_ms", ["DARKROOM_SIM_LATENCY_MS"], Some("1000-3000"), simulator.latency_ms;
        "Generation time of the built-in KIE simulator, MIN-MAX milliseconds."),
    key!("simulator.fail_rate", ["DARKROOM_SIM_FAIL_RATE"], Some("0"), simulator.fail_rate, rate;
        "Share of simulated tasks that fail."),
    key!("simulator.duplicate_rate", ["DARKROOM_SIM_DUPLICATE_RATE"], Some("0"), simulator.duplicate_rate, rate;
        "Share of simulated callbacks delivered more than once."),
    key!("simulator.duplicate_count", ["DARKROOM_SIM_DUPLICATE_COUNT"], Some("2"), simulator.duplicate_count, positive;
        "Deliveries of a duplicated callback."),
    key!("simulator.drop_rate", ["DARKROOM_SIM_DROP_RATE"], Some("0"), simulator.drop_rate, rate;
        "Share of simulated callbacks never sent."),
    key!("simulator.early_callback_rate", ["DARKROOM_SIM_EARLY_CALLBACK_RATE"], Some("0"), simulator.early_callback_rate, rate;
        "Share of simulated tasks called back before the create answer."),
    key!("simulator.forget_rate", ["DARKROOM_SIM_FORGET_RATE"], Some("0"), simulator.forget_rate, rate;
        "Share of simulated tasks forgotten right after being accepted."),
    key!("simulator.rate_limit", ["DARKROOM_SIM_RATE_LIMIT"], Some("20"), simulator.rate_limit;
        "Creates the simulator accepts per 10 s; 0: no limit."),

    key!("gemini.api_key", ["GEMINI_API_KEY"], None, gemini.api_key;
        "Gemini's key; setting it turns the built-in Gemini simulator off."),
    key!("gemini.base_url", ["GEMINI_BASE_URL"], Some("https://generativelanguage.googleapis.com"), gemini.base_url;
        "Gemini API base URL."),
    key!("gemini.model", ["DARKROOM_GEMINI_MODEL"], Some("gemini-2.5-flash-image"), gemini.model, model_name;
        "The model every Gemini task uses."),
    key!("gemini.request_timeout_secs", ["DARKROOM_GEMINI_TIMEOUT_SECS"], Some("120"), gemini.request_timeout_secs as Secs, nonzero;
        "Timeout of one generateContent call, seconds."),
    key!("gemini.concurrency", ["DARKROOM_GEMINI_CONCURRENCY"], Some("4"), gemini.concurrency, positive;
        "Gemini calls at once."),
    key!("gemini.max_request_bytes", ["DARKROOM_GEMINI_MAX_REQUEST_BYTES"], Some("20971520"), gemini.max_request_bytes, positive;
        "Gemini's inline request limit (prompt plus base64 inputs), bytes."),
    key!("gemini.simulator.latency_ms", ["DARKROOM_GEMINI_SIM_LATENCY_MS"], Some("2000-6000"), gemini.simulator.latency_ms;
        "Generation time of the built-in Gemini simulator, MIN-MAX milliseconds."),
    key!("gemini.simulator.block_rate", ["DARKROOM_GEMINI_SIM_BLOCK_RATE"], Some("0"), gemini.simulator.block_rate, rate;
        "Share of prompts the Gemini simulator blocks."),
    key!("gemini.simulator.image_safety_rate", ["DARKROOM_GEMINI_SIM_IMAGE_SAFETY_RATE"], Some("0"), gemini.simulator.image_safety_rate, rate;
        "Share of Gemini simulator answers stopped by IMAGE_SAFETY."),
    key!("gemini.simulator.text_only_rate", ["DARKROOM_GEMINI_SIM_TEXT_ONLY_RATE"], Some("0"), gemini.simulator.text_only_rate, rate;
        "Share of text-only Gemini simulator answers."),
    key!("gemini.simulator.errors", ["DARKROOM_GEMINI_SIM_ERRORS"], Some(""), gemini.simulator.errors;
        "HTTP errors the Gemini simulator answers, STATUS=RATE,..."),

    key!("limits.max_upload_bytes", ["DARKROOM_MAX_UPLOAD_BYTES"], Some("10485760"), limits.max_upload_bytes, positive;
        "Per uploaded file, bytes."),
    key!("limits.max_upload_files", ["DARKROOM_MAX_UPLOAD_FILES"], Some("10"), limits.max_upload_files, positive;
        "Files per upload request."),
    key!("limits.max_result_bytes", ["DARKROOM_MAX_RESULT_BYTES"], Some("31457280"), limits.max_result_bytes, positive;
        "Per downloaded result, bytes."),
    key!("limits.max_image_dimension", ["DARKROOM_MAX_IMAGE_DIMENSION"], Some("10000"), limits.max_image_dimension;
        "Largest width or height accepted, pixels."),
    key!("limits.max_image_pixels", ["DARKROOM_MAX_IMAGE_PIXELS"], Some("40000000"), limits.max_image_pixels;
        "Largest pixel count accepted."),
    key!("limits.max_json_body_bytes", ["DARKROOM_MAX_JSON_BODY_BYTES"], Some("262144"), limits.max_json_body_bytes;
        "JSON request bodies, bytes."),
    key!("limits.max_callback_body_bytes", ["DARKROOM_MAX_CALLBACK_BODY_BYTES"], Some("65536"), limits.max_callback_body_bytes;
        "Provider callback bodies, bytes."),
    key!("limits.callback_rate_per_sec", ["DARKROOM_CALLBACK_RATE_PER_SEC"], Some("50"), limits.callback_rate_per_sec, positive;
        "Callbacks accepted per second, all senders together."),
    key!("limits.callback_rate_burst", ["DARKROOM_CALLBACK_RATE_BURST"], Some("200"), limits.callback_rate_burst, positive;
        "The callback burst above that rate."),
    key!("limits.strip_upload_metadata", ["DARKROOM_STRIP_UPLOAD_METADATA"], Some("true"), limits.strip_upload_metadata;
        "Remove EXIF, XMP, IPTC, comments and text chunks from stored uploads."),

    key!("engine.workers", ["DARKROOM_WORKERS"], Some("true"), engine.workers;
        "Run the background workers in this instance (false is the same as DARKROOM_ROLES=api)."),
    key!("engine.dispatch_concurrency", ["DARKROOM_DISPATCH_CONCURRENCY"], Some("8"), engine.dispatch_concurrency, positive;
        "Concurrent create calls, and concurrent status queries."),
    key!("engine.ingest_concurrency", ["DARKROOM_INGEST_CONCURRENCY"], Some("8"), engine.ingest_concurrency, positive;
        "Concurrent result downloads."),
    key!("engine.max_attempts", ["DARKROOM_MAX_ATTEMPTS"], Some("6"), engine.max_attempts, positive;
        "Create attempts per task before it fails."),
    key!("engine.task_deadline_secs", ["DARKROOM_TASK_DEADLINE_SECS"], Some("900"), engine.task_deadline_secs as Secs, nonzero;
        "A submitted task with no result after this long expires, seconds."),
    key!("engine.lease_secs", ["DARKROOM_LEASE_SECS"], Some("120"), engine.lease_secs as Secs, nonzero;
        "How long a worker's claim on a task lasts, seconds."),
    key!("engine.tick_ms", ["DARKROOM_TICK_MS"], Some("500"), engine.tick_ms as Millis, nonzero;
        "How often idle workers look for due work, milliseconds."),
    key!("engine.first_poll_ms", ["DARKROOM_FIRST_POLL_MS"], Some("10000"), engine.first_poll_ms as Millis, nonzero;
        "When a submitted task is first looked up without a callback, milliseconds."),
    key!("engine.unconfirmed_window_secs", ["DARKROOM_UNCONFIRMED_WINDOW_SECS"], Some("600"), engine.unconfirmed_window_secs as Secs;
        "How long an unanswered create waits for a callback, seconds."),
    key!("engine.resubmit_unconfirmed", ["DARKROOM_RESUBMIT_UNCONFIRMED"], Some("false"), engine.resubmit_unconfirmed;
        "After that window, submit again instead of failing."),
    key!("engine.check_client_inputs", ["DARKROOM_CHECK_CLIENT_INPUTS"], Some("false"), engine.check_client_inputs;
        "Before a KIE create, read the first bytes of each image URL a client gave."),
    key!("engine.unreachable_first_probe_ms", ["DARKROOM_UNREACHABLE_FIRST_PROBE_MS"], Some("5000"), engine.unreachable_first_probe_ms as Millis, nonzero;
        "First probe of an unreachable provider, milliseconds."),
    key!("engine.unreachable_max_probe_ms", ["DARKROOM_UNREACHABLE_MAX_PROBE_MS"], Some("60000"), engine.unreachable_max_probe_ms as Millis;
        "Longest wait between two probes, milliseconds."),
    key!("engine.missing_task_answers", ["DARKROOM_MISSING_TASK_ANSWERS"], Some("3"), engine.missing_task_answers, positive;
        "\"No such task\" answers in a row before provider_task_missing."),
    key!("engine.shutdown_grace_secs", ["DARKROOM_SHUTDOWN_GRACE_SECS"], Some("20"), engine.shutdown_grace_secs as Secs;
        "How long in-flight work may take to finish at shutdown, seconds."),
    key!("engine.failover", ["DARKROOM_FAILOVER"], Some(""), engine.failover;
        "Provider failover: queued tasks move along this chain, like kie:gemini; empty: off."),
    key!("engine.failover_by_default", ["DARKROOM_FAILOVER_BY_DEFAULT"], Some("true"), engine.failover_by_default;
        "Whether a task whose request does not say fallback may move."),
    key!("engine.failover_after_failures", ["DARKROOM_FAILOVER_AFTER_FAILURES"], Some("5"), engine.failover_after_failures;
        "Failed creates in a row (5xx, 429) that pause a provider as failing and move its tasks; 0: never."),
    key!("engine.failover_pause_secs", ["DARKROOM_FAILOVER_PAUSE_SECS"], Some("60"), engine.failover_pause_secs as Secs, nonzero;
        "How long a failing provider is paused, seconds."),

    key!("fetch.trusted_hosts", ["DARKROOM_TRUSTED_FETCH_HOSTS"], Some(""), fetch.trusted_hosts;
        "host:port pairs that may be fetched over http and on private addresses."),
    key!("fetch.connect_timeout_secs", ["DARKROOM_FETCH_CONNECT_TIMEOUT_SECS"], Some("10"), fetch.connect_timeout_secs as Secs;
        "Connect timeout of fetches, seconds."),
    key!("fetch.timeout_secs", ["DARKROOM_FETCH_TIMEOUT_SECS"], Some("60"), fetch.timeout_secs as Secs;
        "Whole-download timeout, seconds."),
    key!("fetch.result_hosts", ["DARKROOM_RESULT_HOSTS"], Some(""), fetch.result_hosts;
        "When set, results are downloaded only from these hosts."),

    key!("auth.api_keys", ["DARKROOM_API_KEYS"], Some(""), auth.api_keys, api_keys;
        "API keys as name:key; any key turns authentication on."),
    key!("auth.rate_per_sec", ["DARKROOM_KEY_RATE_PER_SEC"], Some("20"), auth.rate_per_sec, positive;
        "Requests per second per key."),
    key!("auth.rate_burst", ["DARKROOM_KEY_RATE_BURST"], Some("100"), auth.rate_burst, positive;
        "The burst above that rate."),
    key!("auth.max_pending_tasks", ["DARKROOM_KEY_MAX_PENDING_TASKS"], Some("1000"), auth.max_pending_tasks, positive;
        "Unfinished tasks one key may have."),
    key!("auth.admin_keys", ["DARKROOM_ADMIN_KEYS"], Some(""), auth.admin_keys, key_names;
        "Names of API keys that see every key's statistics."),

    key!("webhook.secret", ["DARKROOM_WEBHOOK_SECRET"], None, webhook.secret, whsec;
        "whsec_ secret signing webhooks of tasks without an owner; default generated."),
    key!("webhook.first_retry_ms", ["DARKROOM_WEBHOOK_FIRST_RETRY_MS"], Some("5000"), webhook.first_retry_ms as Millis;
        "Wait before a failed webhook's first retry, milliseconds."),

    key!("health.min_free_mb", ["DARKROOM_READY_MIN_FREE_MB"], Some("64"), health.min_free_mb;
        "/readyz fails below this much free disk, MiB; 0: no check."),
    key!("health.bucket_probe_secs", ["DARKROOM_READY_BUCKET_PROBE_SECS"], Some("30"), health.bucket_probe_secs as Secs;
        "The bucket write probe runs at most this often, seconds."),

    key!("log.filter", ["DARKROOM_LOG"], Some("info"), log.filter;
        "A tracing filter (RUST_LOG overrides)."),
    key!("log.format", ["DARKROOM_LOG_FORMAT"], Some("text"), log.format;
        "text or json."),

    key!("metrics.enabled", ["DARKROOM_METRICS"], Some("true"), metrics.enabled;
        "Serve /metrics and record every HTTP request in it; false only to measure their cost."),
    key!("metrics.token", ["DARKROOM_METRICS_TOKEN"], None, metrics.token, not_blank;
        "When set, GET /metrics needs Authorization: Bearer <token>."),
    key!("metrics.listen", ["DARKROOM_METRICS_LISTEN"], None, metrics.listen;
        "When set, /metrics is served on this address only (not on the main listener)."),

    key!("retention.days", ["DARKROOM_RETENTION_DAYS"], None, retention.days, some_positive;
        "Finished tasks older than this many days are deleted with their objects; unset: never."),
    key!("retention.interval_secs", ["DARKROOM_RETENTION_INTERVAL_SECS"], Some("3600"), retention.interval_secs as Secs, nonzero;
        "How often serve runs the retention sweep, seconds."),

    key!("budget.daily_credits", ["DARKROOM_DAILY_CREDIT_BUDGET"], Some("0"), budget.daily_credits;
        "Credits all tasks together may use per UTC day; 0: no global budget."),
    key!("budget.policy", ["DARKROOM_BUDGET_POLICY"], Some("wait"), budget.policy;
        "A task that would exceed a budget: wait (until the next UTC day) or fail."),
    key!("budget.kie_credits_per_task", ["DARKROOM_KIE_CREDITS_PER_TASK"], Some("4"), budget.kie_credits_per_task;
        "Credits a KIE task is estimated at before it is sent (nano-banana: 4)."),
    key!("budget.gemini_credits_per_task", ["DARKROOM_GEMINI_CREDITS_PER_TASK"], Some("0"), budget.gemini_credits_per_task;
        "Credits a Gemini task is counted at against budgets (Gemini bills money, not credits)."),
];

// Checks a key can name. Each returns the problem; the caller names the key.

trait Number: Copy + fmt::Display {
    fn is_zero(self) -> bool;
    fn as_f64(self) -> f64;
}

macro_rules! number {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn is_zero(self) -> bool {
                self == 0 as $t
            }
            #[allow(clippy::cast_precision_loss)]
            fn as_f64(self) -> f64 {
                self as f64
            }
        }
    )*};
}
number!(u32, u64, u128, usize, f64);

fn positive<T: Number>(v: &T) -> Result<(), String> {
    if v.is_zero() {
        return Err("must be greater than 0".to_owned());
    }
    Ok(())
}

fn some_positive<T: Number>(v: &Option<T>) -> Result<(), String> {
    v.as_ref().map_or(Ok(()), positive)
}

fn rate<T: Number>(v: &T) -> Result<(), String> {
    if !(0.0..=1.0).contains(&v.as_f64()) {
        return Err(format!("= {v} must be between 0 and 1"));
    }
    Ok(())
}

fn nonzero(v: &Duration) -> Result<(), String> {
    positive(&v.as_millis())
}

/// Seven days is the longest an S3 signature may live.
fn s3_ttl(ttl: &Duration) -> Result<(), String> {
    let ttl = ttl.as_secs();
    if ttl > 7 * 24 * 3600 {
        return Err(format!(
            "= {ttl} is longer than S3's limit of 604800 seconds"
        ));
    }
    Ok(())
}

fn not_blank(secret: &Option<Secret>) -> Result<(), String> {
    if secret
        .as_ref()
        .is_some_and(|k| k.expose().trim().is_empty())
    {
        return Err("is empty".to_owned());
    }
    Ok(())
}

fn whsec(secret: &Option<Secret>) -> Result<(), String> {
    match secret {
        Some(secret) => crate::domain::whsec::parse_secret(secret.expose()).map(|_| ()),
        None => Ok(()),
    }
}

/// SQLite (the embedded default) or PostgreSQL. Only the scheme is named in the error: the
/// rest of a URL may hold a password.
fn database_url(url: &Option<String>) -> Result<(), String> {
    match url {
        Some(url)
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://")) =>
        {
            let scheme = url.split(':').next().unwrap_or_default();
            Err(format!(
                "has the scheme {scheme:?}: use sqlite://… (the default) or postgres://…"
            ))
        }
        _ => Ok(()),
    }
}

/// The model name goes into a URL path.
fn model_name(model: &str) -> Result<(), String> {
    let ok = !model.is_empty()
        && model.len() <= 100
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !ok {
        return Err(format!(
            "= {model:?} must be a model name like gemini-2.5-flash-image"
        ));
    }
    Ok(())
}

fn key_names(names: &[String]) -> Result<(), String> {
    match names.iter().find(|n| !super::is_key_name(n)) {
        Some(bad) => Err(format!(
            "lists {bad:?}, not a key's name (1-64 letters, digits, '-', '_' or '.')"
        )),
        None => Ok(()),
    }
}

fn api_keys(entries: &[Secret]) -> Result<(), String> {
    super::api_keys::api_key_pairs(entries).map(|_| ())
}
