//! Staying inside a provider's limits: a sliding-window limiter for creates and queries
//! (a token bucket would allow a burst on top of the window's quota), a cap on tasks in
//! flight, a pause of the whole provider after a 429 or a 402 or while its credit balance is
//! below the floor (`credits.rs`), and the circuit that opens while the provider cannot be
//! reached (`circuit.rs`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::circuit::{Circuit, ProbeBackoff};
use super::credits::{CreditWatch, FLOOR_CODE};
use crate::clock::now_ms;
use crate::providers::Limits;
use crate::storage::{CreateLimits, Reserved, SharedPause};

/// How often a dispatcher reads the shared pause of a provider it claims from without
/// limits (a limited claim reads it in its transaction): a pause another instance set is
/// seen this late at most.
const PAUSE_REFRESH_MS: i64 = 500;

/// At most `max` events in any `window`, counted at the moment they are reserved.
#[derive(Debug)]
pub struct WindowLimiter {
    max: usize,
    window: Duration,
    sent: Mutex<VecDeque<Instant>>,
}

impl WindowLimiter {
    /// `max == 0` means no limit.
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            sent: Mutex::new(VecDeque::new()),
        }
    }

    /// Reserves up to `wanted` slots now and returns how many were granted.
    pub fn reserve(&self, wanted: usize) -> usize {
        if self.max == 0 {
            return wanted;
        }
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        while sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            sent.pop_front();
        }
        let granted = wanted.min(self.max.saturating_sub(sent.len()));
        sent.extend(std::iter::repeat_n(now, granted));
        granted
    }

    /// Gives back a reservation that was not used.
    pub fn release(&self, count: usize) {
        if self.max == 0 {
            return;
        }
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..count {
            sent.pop_back();
        }
    }

    /// Takes the window as the database holds it (every instance's reservations), read at
    /// `at_ms` on the wall clock.
    pub fn adopt(&self, at_ms: i64, reserved: &[Reserved]) {
        if self.max == 0 {
            return;
        }
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.clear();
        for r in reserved {
            let age = Duration::from_millis(u64::try_from(at_ms - r.at).unwrap_or(0));
            let at = now.checked_sub(age).unwrap_or(now);
            sent.extend(std::iter::repeat_n(at, r.slots));
        }
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Slots taken in the current window (0 without a limit).
    pub fn in_use(&self) -> usize {
        if self.max == 0 {
            return 0;
        }
        let now = Instant::now();
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter()
            .filter(|t| now.duration_since(**t) < self.window)
            .count()
    }

    /// Slots per window; 0 means no limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// When the next slot frees up, if the window is full.
    pub fn next_free_in(&self) -> Option<Duration> {
        if self.max == 0 {
            return None;
        }
        let now = Instant::now();
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.len() < self.max {
            return None;
        }
        sent.front()
            .map(|t| self.window.saturating_sub(now.duration_since(*t)))
    }
}

/// Why the provider is paused and until when (wall clock, ms: every instance reads the
/// same pause from the database).
pub type Pause = SharedPause;

/// What a pause's code says about the provider, to follow its name in a sentence.
pub fn pause_cause(code: &str) -> &'static str {
    match code {
        "402" => "reports insufficient credits",
        FLOOR_CODE => "has fewer credits left than the floor set for darkroom",
        super::failover::FAILING_CODE => "keeps failing to create tasks",
        _ => "is rate limiting",
    }
}

/// Everything that decides whether darkroom may talk to one provider right now.
#[derive(Debug)]
pub struct ProviderGate {
    pub creates: WindowLimiter,
    pub queries: WindowLimiter,
    /// Tasks submitting, submitted or running at once; 0 means no cap.
    pub max_in_flight: usize,
    /// Open while the provider cannot be reached at all.
    pub circuit: Circuit,
    /// Its credit balance and the floor held against it.
    pub credits: CreditWatch,
    /// Creates that failed in a row (5xx, 429) in this process, for failover.
    pub failed_creates: AtomicU32,
    /// This process's view of the provider's pause, shared through the database.
    pause: Mutex<Option<Pause>>,
    /// When the shared pause was last read (wall clock, ms).
    pause_read_at: AtomicI64,
}

impl ProviderGate {
    pub fn new(
        creates: WindowLimiter,
        queries: WindowLimiter,
        max_in_flight: usize,
        circuit: Circuit,
    ) -> Self {
        Self {
            creates,
            queries,
            max_in_flight,
            circuit,
            credits: CreditWatch::new(0, Duration::from_secs(300)),
            failed_creates: AtomicU32::new(0),
            pause: Mutex::new(None),
            pause_read_at: AtomicI64::new(0),
        }
    }

    /// The limits a claim must keep, as data for the database.
    pub fn create_limits(&self) -> CreateLimits {
        CreateLimits {
            creates: self.creates.max(),
            window_ms: i64::try_from(self.creates.window().as_millis()).unwrap_or(i64::MAX),
            max_in_flight: self.max_in_flight,
        }
    }

    /// The gate for the limits a provider was built with, with a circuit of its own.
    pub fn for_limits(provider: &'static str, limits: Limits, probes: ProbeBackoff) -> Self {
        Self {
            credits: CreditWatch::new(limits.credit_floor, limits.credit_check),
            ..Self::new(
                WindowLimiter::new(limits.creates, limits.create_window),
                WindowLimiter::new(limits.queries_per_second, Duration::from_secs(1)),
                limits.max_in_flight,
                Circuit::new(provider, probes),
            )
        }
    }

    /// Stops submissions for `duration` (extends, never shortens, a running pause); the
    /// pause to share with the other instances when this started or extended it.
    pub fn pause(&self, duration: Duration, code: &str, reason: &str) -> Option<Pause> {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let until = now_ms().saturating_add(millis);
        let mut pause = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if pause.as_ref().is_none_or(|p| p.until < until) {
            tracing::warn!(
                code,
                reason,
                pause_secs = duration.as_secs(),
                "provider paused"
            );
            let started = Pause {
                until,
                code: code.to_owned(),
                reason: reason.to_owned(),
            };
            *pause = Some(started.clone());
            return Some(started);
        }
        None
    }

    /// Holds a pause that lasts while a condition does (the credit floor): starts it, or
    /// renews it for `duration` from now with the latest `reason`, quietly. The pause to
    /// share, and whether it started here (no pause of `code` was running); `None` when a
    /// longer pause of another code already holds.
    pub fn hold_pause(
        &self,
        duration: Duration,
        code: &str,
        reason: &str,
    ) -> Option<(Pause, bool)> {
        let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let until = now.saturating_add(millis);
        let mut pause = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        let running = pause.as_ref().filter(|p| p.until > now);
        let started = running.is_none_or(|p| p.code != code);
        if running.is_some_and(|p| p.code != code && p.until >= until) {
            return None;
        }
        let held = Pause {
            until,
            code: code.to_owned(),
            reason: reason.to_owned(),
        };
        *pause = Some(held.clone());
        Some((held, started))
    }

    /// Ends the running pause if its code is `code`; whether it did.
    pub fn lift_pause(&self, code: &str) -> bool {
        let mut pause = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if pause.as_ref().is_some_and(|p| p.code == code) {
            *pause = None;
            return true;
        }
        false
    }

    /// Takes a pause read from the database (another instance's, or one that outlived a
    /// restart) when it lasts longer than the one known here.
    pub fn adopt_pause(&self, now: i64, shared: Option<Pause>) {
        self.pause_read_at.store(now, Ordering::Relaxed);
        let Some(shared) = shared else {
            return;
        };
        let mut pause = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if pause.as_ref().is_none_or(|p| p.until < shared.until) {
            tracing::warn!(
                code = %shared.code,
                reason = %shared.reason,
                until = %crate::clock::iso_time(shared.until),
                "provider paused (seen in the database)"
            );
            *pause = Some(shared);
        }
    }

    /// Whether the shared pause should be read again before claiming without limits.
    pub fn pause_read_due(&self, now: i64) -> bool {
        now - self.pause_read_at.load(Ordering::Relaxed) >= PAUSE_REFRESH_MS
    }

    /// The running pause, if any; a pause that has ended is cleared.
    pub fn paused(&self) -> Option<Pause> {
        let mut pause = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if pause.as_ref().is_some_and(|p| p.until <= now_ms()) {
            tracing::info!("provider pause ended; submitting again");
            *pause = None;
        }
        pause.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_never_grants_more_than_its_quota() {
        let limiter = WindowLimiter::new(20, Duration::from_secs(10));
        assert_eq!(limiter.reserve(15), 15);
        assert_eq!(limiter.reserve(15), 5);
        assert_eq!(limiter.reserve(1), 0);
        assert!(limiter.next_free_in().is_some());
        limiter.release(3);
        assert_eq!(limiter.reserve(10), 3);
    }

    #[test]
    fn slots_come_back_when_the_window_slides() {
        let limiter = WindowLimiter::new(2, Duration::from_millis(50));
        assert_eq!(limiter.reserve(5), 2);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(limiter.reserve(5), 2);
    }

    #[test]
    fn zero_means_unlimited() {
        assert_eq!(
            WindowLimiter::new(0, Duration::from_secs(1)).reserve(1000),
            1000
        );
    }

    #[test]
    fn an_adopted_window_counts_every_instances_reservations() {
        let limiter = WindowLimiter::new(20, Duration::from_secs(10));
        let now = now_ms();
        limiter.adopt(
            now,
            &[
                Reserved {
                    at: now - 9_000,
                    slots: 5,
                },
                Reserved {
                    at: now - 1_000,
                    slots: 15,
                },
            ],
        );
        assert_eq!(limiter.in_use(), 20);
        let left = limiter.next_free_in().unwrap();
        assert!(left <= Duration::from_millis(1_000), "{left:?}");
    }

    #[test]
    fn a_longer_shared_pause_is_adopted_and_a_shorter_one_is_not() {
        let gate = ProviderGate::new(
            WindowLimiter::new(0, Duration::from_secs(1)),
            WindowLimiter::new(0, Duration::from_secs(1)),
            0,
            Circuit::new("test", super::super::circuit::ProbeBackoff::default()),
        );
        let now = now_ms();
        assert!(gate.pause(Duration::from_secs(5), "429", "here").is_some());
        gate.adopt_pause(
            now,
            Some(Pause {
                until: now + 1_000,
                code: "429".into(),
                reason: "shorter".into(),
            }),
        );
        assert_eq!(gate.paused().unwrap().reason, "here");
        gate.adopt_pause(
            now,
            Some(Pause {
                until: now + 60_000,
                code: "402".into(),
                reason: "elsewhere".into(),
            }),
        );
        assert_eq!(gate.paused().unwrap().code, "402");
        assert!(!gate.pause_read_due(now + 10));
        assert!(gate.pause_read_due(now + PAUSE_REFRESH_MS));
    }

    #[test]
    fn a_held_pause_renews_quietly_lifts_by_code_and_yields_to_a_longer_one() {
        let gate = ProviderGate::new(
            WindowLimiter::new(0, Duration::from_secs(1)),
            WindowLimiter::new(0, Duration::from_secs(1)),
            0,
            Circuit::new("test", super::super::circuit::ProbeBackoff::default()),
        );
        let (first, started) = gate
            .hold_pause(Duration::from_secs(60), FLOOR_CODE, "balance 36")
            .unwrap();
        assert!(started);
        let (renewed, started) = gate
            .hold_pause(Duration::from_secs(60), FLOOR_CODE, "balance 30")
            .unwrap();
        assert!(!started, "a renewal is not a new pause");
        assert!(renewed.until >= first.until);
        assert_eq!(gate.paused().unwrap().reason, "balance 30");
        assert!(
            !gate.lift_pause("402"),
            "only a pause of its own code is lifted"
        );
        assert!(gate.lift_pause(FLOOR_CODE));
        assert!(gate.paused().is_none());
        // A longer pause of another code is not shortened by a floor pause.
        gate.pause(Duration::from_secs(600), "402", "no credits");
        assert!(
            gate.hold_pause(Duration::from_secs(60), FLOOR_CODE, "balance 3")
                .is_none()
        );
        assert_eq!(gate.paused().unwrap().code, "402");
        assert!(!gate.lift_pause(FLOOR_CODE));
        // A shorter one is taken over, and the floor pause then counts as started.
        let gate_429 = ProviderGate::new(
            WindowLimiter::new(0, Duration::from_secs(1)),
            WindowLimiter::new(0, Duration::from_secs(1)),
            0,
            Circuit::new("test", super::super::circuit::ProbeBackoff::default()),
        );
        gate_429.pause(Duration::from_secs(5), "429", "rate limited");
        let (_, started) = gate_429
            .hold_pause(Duration::from_secs(60), FLOOR_CODE, "balance 3")
            .unwrap();
        assert!(started);
        assert_eq!(gate_429.paused().unwrap().code, FLOOR_CODE);
    }

    #[test]
    fn pauses_extend_and_expire() {
        let gate = ProviderGate::new(
            WindowLimiter::new(0, Duration::from_secs(1)),
            WindowLimiter::new(0, Duration::from_secs(1)),
            0,
            Circuit::new("test", super::super::circuit::ProbeBackoff::default()),
        );
        gate.pause(Duration::from_millis(30), "429", "rate limited");
        gate.pause(Duration::from_millis(10), "429", "shorter is ignored");
        assert_eq!(gate.paused().unwrap().reason, "rate limited");
        std::thread::sleep(Duration::from_millis(40));
        assert!(gate.paused().is_none());
    }
}
