//! Who gets a task: the rate window, the credit balance, injected refusals (429 bursts,
//! 500, 455), and the fault dice rolled for every accepted task.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
use axum::response::Response;
use rand::Rng;

use super::super::chance;

use super::KieSim;
use super::request::CreateRequest;
use super::stats::Counters;
use super::store::{CREDITS_PER_IMAGE, Ledger, Task};

/// The dice rolled for one task at creation.
#[derive(Clone, Copy, Debug)]
pub(super) struct Faults {
    pub(super) latency: Duration,
    pub(super) fail: bool,
    pub(super) drop_callback: bool,
    pub(super) deliveries: u32,
    pub(super) early: bool,
    /// Extra wait before the callback.
    pub(super) late: Duration,
    /// The create answer is held back past the client's timeout.
    pub(super) hang: bool,
    /// The task is forgotten as soon as it is accepted.
    pub(super) forget: bool,
}

pub(super) enum Admission {
    RateLimited,
    NoCredits,
    Rejected(String),
    Accepted {
        task_id: String,
        request: CreateRequest,
        faults: Faults,
    },
}

impl KieSim {
    /// Rate limit, validation and registration, atomically: the limit is checked first
    /// and only accepted creates occupy the window, as on KIE.
    pub(super) fn admit(&self, request: Result<CreateRequest, String>) -> Admission {
        let now = Instant::now();
        let mut ledger = self.ledger();
        if self.window_is_full(&mut ledger.recent_creates, now) {
            Counters::bump(&self.counters.rate_limited);
            return Admission::RateLimited;
        }
        let request = match request {
            Ok(request) => request,
            Err(msg) => {
                Counters::bump(&self.counters.rejected);
                return Admission::Rejected(msg);
            }
        };
        if ledger.available_credits() < CREDITS_PER_IMAGE {
            Counters::bump(&self.counters.no_credits);
            return Admission::NoCredits;
        }
        ledger.credits_reserved += CREDITS_PER_IMAGE;
        ledger.recent_creates.push_back(now);
        self.count_accepted(&mut ledger, now, request.callback_url.as_deref());
        let task_id = uuid::Uuid::now_v7().simple().to_string();
        ledger
            .tasks
            .insert(task_id.clone(), Task::new(&request, now));
        ledger.order.push(task_id.clone());
        drop(ledger);
        Counters::bump(&self.counters.created);
        Admission::Accepted {
            task_id,
            request,
            faults: self.roll_faults(),
        }
    }

    /// Statistics every accepted create feeds: the busiest window, and double creates.
    pub(super) fn count_accepted(
        &self,
        ledger: &mut Ledger,
        now: Instant,
        callback_url: Option<&str>,
    ) {
        let window = self.config.rate_window;
        ledger.accepted_window.push_back(now);
        while ledger
            .accepted_window
            .front()
            .is_some_and(|&at| now.duration_since(at) >= window)
        {
            ledger.accepted_window.pop_front();
        }
        self.counters
            .max_creates_in_window
            .fetch_max(ledger.accepted_window.len() as u64, Ordering::Relaxed);
        if let Some(url) = callback_url {
            let key = url.split('?').next().unwrap_or(url).to_owned();
            let seen = ledger.creates_per_callback.entry(key).or_insert(0);
            *seen += 1;
            if *seen > 1 {
                Counters::bump(&self.counters.duplicate_creates);
            }
        }
    }

    /// A refusal injected before the create is looked at (429 burst, 500, 455).
    pub(super) fn injected_refusal(&self) -> Option<Response> {
        let mut rng = rand::rng();
        if chance(&mut rng, self.config.http_429_rate) {
            Counters::bump(&self.counters.injected_errors);
            let mut response = self.error(429, &self.rate_limit_message());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return Some(response);
        }
        if chance(&mut rng, self.config.server_error_rate) {
            let n = self
                .counters
                .injected_errors
                .fetch_add(1, Ordering::Relaxed);
            return Some(if n.is_multiple_of(2) {
                self.error(500, "Internal server error")
            } else {
                self.error(455, "Service under maintenance")
            });
        }
        None
    }

    /// Drops creates older than the window, then reports whether it is full.
    pub(super) fn window_is_full(&self, window: &mut VecDeque<Instant>, now: Instant) -> bool {
        if self.config.rate_limit == 0 {
            return false;
        }
        while window
            .front()
            .is_some_and(|&at| now.duration_since(at) >= self.config.rate_window)
        {
            window.pop_front();
        }
        window.len() >= self.config.rate_limit as usize
    }

    pub(super) fn rate_limit_message(&self) -> String {
        let window = self.config.rate_window;
        let span = if window.subsec_nanos() == 0 {
            format!("{} seconds", window.as_secs())
        } else {
            format!("{} milliseconds", window.as_millis())
        };
        format!(
            "Rate limited: {} requests per {span}",
            self.config.rate_limit
        )
    }

    pub(super) fn roll_faults(&self) -> Faults {
        let config = &self.config;
        let mut rng = rand::rng();
        let (low, high) = config.latency_ms;
        let latency_ms = rng.random_range(low.min(high)..=high.max(low));
        let duplicated = chance(&mut rng, config.duplicate_rate);
        let min_copies = config.duplicate_count.max(1);
        let copies = rng.random_range(min_copies..=config.duplicate_count_max.max(min_copies));
        let (late_low, late_high) = config.late_callback_ms;
        let late_ms = rng.random_range(late_low.min(late_high)..=late_high.max(late_low));
        Faults {
            latency: Duration::from_millis(latency_ms),
            fail: chance(&mut rng, config.fail_rate),
            drop_callback: chance(&mut rng, config.drop_rate),
            deliveries: if duplicated { copies } else { 1 },
            early: chance(&mut rng, config.early_callback_rate),
            late: Duration::from_millis(late_ms),
            hang: chance(&mut rng, config.timeout_rate),
            forget: chance(&mut rng, config.forget_rate),
        }
    }
}
