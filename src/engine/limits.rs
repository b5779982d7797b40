//! Staying inside a provider's limits: a sliding-window limiter for creates and queries
//! (a token bucket would allow a burst on top of the window's quota), a cap on tasks in
//! flight, a pause of the whole provider after a 429 or a 402, and the circuit that opens
//! while the provider cannot be reached (`circuit.rs`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::circuit::{Circuit, ProbeBackoff};
use crate::providers::Limits;

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

/// Why the provider is paused and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    pub until: Instant,
    pub code: String,
    pub reason: String,
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
    pause: Mutex<Option<Pause>>,
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
            pause: Mutex::new(None),
        }
    }

    /// The gate for the limits a provider was built with, with a circuit of its own.
    pub fn for_limits(provider: &'static str, limits: Limits, probes: ProbeBackoff) -> Self {
        Self::new(
            WindowLimiter::new(limits.creates, limits.create_window),
            WindowLimiter::new(limits.queries_per_second, Duration::from_secs(1)),
            limits.max_in_flight,
            Circuit::new(provider, probes),
        )
    }

    /// Stops submissions until `until` (extends, never shortens, a running pause).
    pub fn pause(&self, duration: Duration, code: &str, reason: &str) {
        let until = Instant::now() + duration;
        let mut pause = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if pause.as_ref().is_none_or(|p| p.until < until) {
            tracing::warn!(
                code,
                reason,
                pause_secs = duration.as_secs(),
                "provider paused"
            );
            *pause = Some(Pause {
                until,
                code: code.to_owned(),
                reason: reason.to_owned(),
            });
        }
    }

    /// The running pause, if any; a pause that has ended is cleared.
    pub fn paused(&self) -> Option<Pause> {
        let mut pause = self.pause.lock().unwrap_or_else(|p| p.into_inner());
        if pause.as_ref().is_some_and(|p| p.until <= Instant::now()) {
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
