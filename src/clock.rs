//! The clock: wall-clock time as Unix milliseconds, the unit every stored time uses, and
//! deadlines counted from it. One place, so a test clock could replace it.

use std::time::Duration;

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `delay` after `now` (both in the clock's milliseconds), saturating.
pub fn after(now: i64, delay: Duration) -> i64 {
    now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
}

pub use crate::domain::time::iso_time;
