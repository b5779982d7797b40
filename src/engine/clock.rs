//! The engine's clock: wall-clock milliseconds, deadlines from now, and retry backoff.

use std::time::Duration;

use rand::Rng;

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(super) fn after(now: i64, delay: Duration) -> i64 {
    now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
}

/// Capped exponential backoff with ±20 % jitter; a provider's `Retry-After` is a floor.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let base_ms = 2_000u64
        .saturating_mul(1u64 << attempt.min(16))
        .min(300_000);
    let jitter = rand::rng().random_range(0.8..1.2);
    let delay = Duration::from_millis((base_ms as f64 * jitter) as u64);
    retry_after.map_or(delay, |floor| delay.max(floor))
}
