//! How times are shown: stored times are Unix milliseconds.

/// A stored time (Unix milliseconds) as RFC 3339 with milliseconds, UTC: how every
/// answer, record and event shows a time.
pub fn iso_time(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
