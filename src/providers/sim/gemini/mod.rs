//! Gemini-compatible simulator: `POST /v1beta/models/{model}:generateContent` as
//! PROVIDERS.md describes it, answering synchronously with a real image made by the KIE
//! simulator's renderer from the first inline input (or from the prompt alone).
//!
//! Its faults are the ones darkroom's client must survive: latency; a blocked prompt
//! (HTTP 200, `promptFeedback.blockReason`, no candidates); an image safety stop
//! (`finishReason: IMAGE_SAFETY`, no image); a text-only reply; and HTTP errors in Google's
//! shape (`{"error": {code, message, status}}`, 429 with a `RetryInfo`) at configured rates.
//! Like the real API it takes the key from `x-goog-api-key` (or `?key=`), answers 403 without
//! one and 400 for a wrong one, 404 for a model it does not serve, and accepts camelCase or
//! snake_case fields. `GET /sim/stats` counts what happened.
//!
//! This file owns the [`GeminiSim`] handle, its knobs and counters, and the dice rolled per
//! request; the endpoint, request parsing and Google's error shapes live in submodules.

mod endpoint;
mod errors;
mod request;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::chance;
use crate::providers::gemini::DEFAULT_MODEL;
use endpoint::{generate_content, not_found, stats};

/// Google's documented inline request limit.
pub const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;

/// Requests remembered for [`GeminiSim::requests`].
const REQUEST_LOG_CAP: usize = 1000;

/// Behaviour and fault knobs. Rates are probabilities in `0..=1`, rolled per request.
#[derive(Clone, Debug)]
pub struct GeminiSimConfig {
    /// When set, requests must carry this key (`x-goog-api-key` or `?key=`).
    pub api_key: Option<String>,
    /// Models served; any other answers 404 like an unknown model.
    pub models: Vec<String>,
    /// Generation time in milliseconds, uniform in `[min, max]`.
    pub latency_ms: (u64, u64),
    /// Share of requests whose prompt is blocked (`promptFeedback.blockReason: SAFETY`).
    pub block_rate: f64,
    /// Share of requests that stop with `finishReason: IMAGE_SAFETY` and no image.
    pub image_safety_rate: f64,
    /// Share of requests answered with text only.
    pub text_only_rate: f64,
    /// `(HTTP status, rate)`: rolled in order before generating; the first hit answers that
    /// error at once. Statuses from `config::types::GEMINI_FAULT_STATUSES`.
    pub error_rates: Vec<(u16, f64)>,
    /// Long side of generated images in pixels (clamped to 16..=4096).
    pub image_long_side: u32,
}

impl Default for GeminiSimConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            models: vec![DEFAULT_MODEL.to_owned()],
            latency_ms: (2000, 6000),
            block_rate: 0.0,
            image_safety_rate: 0.0,
            text_only_rate: 0.0,
            error_rates: Vec::new(),
            image_long_side: 512,
        }
    }
}

/// Counters exposed at `GET /sim/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GeminiSimStats {
    /// Every `generateContent` request, refused ones included.
    pub requests: u64,
    /// Answers that carried an image.
    pub generated: u64,
    pub blocked: u64,
    pub image_safety: u64,
    pub text_only: u64,
    /// Injected errors by HTTP status.
    pub errors: BTreeMap<u16, u64>,
    /// Requests refused for a missing or wrong key.
    pub unauthorized: u64,
    /// Requests refused as invalid (bad body, unknown model, too large).
    pub rejected: u64,
    /// Requests being generated right now, and the most ever at once.
    pub in_flight: u64,
    pub max_in_flight: u64,
}

/// What one accepted request asked for, for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRequest {
    pub model: String,
    pub prompt: String,
    /// MIME types of the inline images, in order.
    pub image_types: Vec<String>,
    /// `None` when the request named no aspect ratio.
    pub aspect_ratio: Option<String>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    generated: AtomicU64,
    blocked: AtomicU64,
    image_safety: AtomicU64,
    text_only: AtomicU64,
    unauthorized: AtomicU64,
    rejected: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A Gemini-compatible server. Build with [`GeminiSim::new`], then [`GeminiSim::serve`].
pub struct GeminiSim {
    config: Mutex<GeminiSimConfig>,
    counters: Counters,
    errors: Mutex<BTreeMap<u16, u64>>,
    log: Mutex<VecDeque<SimRequest>>,
}

/// Lowers the in-flight gauge when a generation ends, however it ends.
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(counters: &'a Counters) -> Self {
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a request ends, rolled once it is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Error(u16),
    Blocked,
    ImageSafety,
    TextOnly,
    Image,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GeminiSim {
    pub fn new(config: GeminiSimConfig) -> Arc<Self> {
        Arc::new(Self {
            config: Mutex::new(config),
            counters: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
            log: Mutex::new(VecDeque::new()),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1beta/models/{target}", post(generate_content))
            .route("/sim/stats", get(stats))
            .fallback(not_found)
            // Oversized bodies get Google's 400, not axum's 413: the limit is checked by hand.
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES + 1))
            .with_state(Arc::clone(self))
    }

    /// Serves on the listener until `shutdown` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "gemini-sim listening");
        }
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        tracing::info!("gemini-sim stopped");
        result
    }

    pub fn stats(&self) -> GeminiSimStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        GeminiSimStats {
            requests: read(&c.requests),
            generated: read(&c.generated),
            blocked: read(&c.blocked),
            image_safety: read(&c.image_safety),
            text_only: read(&c.text_only),
            errors: lock(&self.errors).clone(),
            unauthorized: read(&c.unauthorized),
            rejected: read(&c.rejected),
            in_flight: read(&c.in_flight),
            max_in_flight: read(&c.max_in_flight),
        }
    }

    /// The most recent accepted requests, oldest first.
    pub fn requests(&self) -> Vec<SimRequest> {
        lock(&self.log).iter().cloned().collect()
    }

    /// Changes knobs while running (tests clear a fault this way).
    pub fn configure(&self, change: impl FnOnce(&mut GeminiSimConfig)) {
        change(&mut lock(&self.config));
    }

    fn config(&self) -> GeminiSimConfig {
        lock(&self.config).clone()
    }

    fn roll(config: &GeminiSimConfig) -> (Outcome, Duration) {
        let mut rng = rand::rng();
        let (low, high) = config.latency_ms;
        let latency = Duration::from_millis(rng.random_range(low.min(high)..=high.max(low)));
        for &(status, rate) in &config.error_rates {
            if chance(&mut rng, rate) {
                return (Outcome::Error(status), Duration::ZERO);
            }
        }
        let outcome = if chance(&mut rng, config.block_rate) {
            Outcome::Blocked
        } else if chance(&mut rng, config.image_safety_rate) {
            Outcome::ImageSafety
        } else if chance(&mut rng, config.text_only_rate) {
            Outcome::TextOnly
        } else {
            Outcome::Image
        };
        (outcome, latency)
    }
}
