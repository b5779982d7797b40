//! The counters behind `GET /sim/stats`: lock-free while the simulator runs, read as
//! one [`SimStats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters exposed at `GET /sim/stats`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    pub created: u64,
    pub rate_limited: u64,
    /// Creates refused with 402: the balance could not pay for one more image.
    pub no_credits: u64,
    pub rejected: u64,
    /// Every callback delivery attempt, duplicates included.
    pub callbacks_sent: u64,
    /// Deliveries that failed in transport or got a non-2xx answer.
    pub callback_failures: u64,
    /// Deliveries answered 2xx. With `callback_failures`, every delivery that has ended:
    /// when the two add up to `callbacks_sent`, none is in flight.
    pub callbacks_delivered: u64,
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
pub(super) struct Counters {
    pub(super) created: AtomicU64,
    pub(super) rate_limited: AtomicU64,
    pub(super) no_credits: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) callbacks_sent: AtomicU64,
    pub(super) callback_failures: AtomicU64,
    pub(super) callbacks_delivered: AtomicU64,
    pub(super) duplicates_sent: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) succeeded: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) queries: AtomicU64,
    pub(super) files_served: AtomicU64,
    pub(super) uploads: AtomicU64,
    pub(super) injected_errors: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) duplicate_creates: AtomicU64,
    pub(super) max_creates_in_window: AtomicU64,
    pub(super) forgotten: AtomicU64,
    pub(super) not_found: AtomicU64,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> SimStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SimStats {
            created: read(&self.created),
            rate_limited: read(&self.rate_limited),
            no_credits: read(&self.no_credits),
            rejected: read(&self.rejected),
            callbacks_sent: read(&self.callbacks_sent),
            callback_failures: read(&self.callback_failures),
            callbacks_delivered: read(&self.callbacks_delivered),
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
