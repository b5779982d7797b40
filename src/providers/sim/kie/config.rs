//! The simulator's behaviour and fault-injection knobs ([`KieSimConfig`]).

use std::time::Duration;

use super::store::INITIAL_CREDITS;

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
