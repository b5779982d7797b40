//! Retry backoff (the clock itself is `crate::clock`).

use std::time::Duration;

use rand::Rng;

/// Capped exponential backoff with ±20 % jitter; a provider's `Retry-After` is a floor.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let base_ms = 2_000u64
        .saturating_mul(1u64 << attempt.min(16))
        .min(300_000);
    let jitter = rand::rng().random_range(0.8..1.2);
    let delay = Duration::from_millis((base_ms as f64 * jitter) as u64);
    retry_after.map_or(delay, |floor| delay.max(floor))
}
