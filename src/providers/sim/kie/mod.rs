//! KIE.ai-compatible simulator: the jobs API (`createTask`, `recordInfo`), callbacks in
//! KIE's exact body format (optionally HMAC-signed), result files over HTTP, and fault
//! injection (latency, failures, duplicate / lost / early callbacks, 429 bursts, tasks
//! forgotten after the create).
//!
//! It follows the workspace's provider notes (PROVIDERS.md beside the checkout, not in this
//! repository) including KIE's inconsistencies — `costTime` is seconds in callbacks but
//! milliseconds in `recordInfo`, `param` and `resultJson` are JSON *strings* — because
//! darkroom's KIE client has to cope with the real thing.
//!
//! This file owns the [`KieSim`] handle and its lifecycle (build, serve, listen, abandon);
//! each concern lives in a submodule below.

mod admission;
mod callbacks;
mod config;
mod files;
mod generation;
mod request;
mod routes;
mod stats;
mod store;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use config::KieSimConfig;
pub use stats::SimStats;

use routes::envelope;
use stats::Counters;
use store::Ledger;

use super::constant_time_eq;

/// A KIE.ai-compatible server. Build it with [`KieSim::new`], then mount
/// [`KieSim::router`] or run [`KieSim::serve`].
pub struct KieSim {
    config: KieSimConfig,
    /// `{base}/files/`, the prefix of every result URL.
    files_base: String,
    /// Building a client only fails when TLS cannot initialise; the simulator still
    /// answers then, and tasks fail with the reason instead of the process panicking.
    http: Result<reqwest::Client, String>,
    ledger: Mutex<Ledger>,
    counters: Counters,
    /// Stops in-flight generations and callback deliveries once `serve` returns.
    background: CancellationToken,
}

impl KieSim {
    /// Binds nothing: builds the state. `base_url` is where it is reachable (used for
    /// result URLs when `config.public_url` is `None`).
    pub fn new(config: KieSimConfig, base_url: String) -> Arc<KieSim> {
        let initial_credits = config.credits;
        let base = config.public_url.as_deref().unwrap_or(&base_url);
        let files_base = format!("{}/files/", base.trim_end_matches('/'));
        // Inputs and callback receivers in tests live on loopback; a proxy taken from
        // the environment would break that, and a simulator has no use for one.
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|err| err.to_string());
        if let Err(err) = &http {
            tracing::error!(error = %err, "kie-sim could not build its HTTP client; tasks will fail");
        }
        Arc::new(KieSim {
            config,
            files_base,
            http,
            ledger: Mutex::new(Ledger {
                initial_credits,
                ..Ledger::default()
            }),
            counters: Counters::default(),
            background: CancellationToken::new(),
        })
    }

    /// Serves on the listener until `shutdown` is cancelled, then abandons work still in
    /// flight (pending generations and callbacks).
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let result = Arc::clone(&self).listen(listener, shutdown).await;
        self.abandon_work();
        tracing::info!("kie-sim stopped");
        result
    }

    /// Serves on the listener until `stop` is cancelled, then closes it (new connections are
    /// refused) while tasks in flight go on. Listening again later on the same address
    /// makes a provider that was unreachable for a while, with its account intact.
    pub async fn listen(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, files_base = %self.files_base, "kie-sim listening");
        }
        axum::serve(listener, self.router())
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    }

    /// Abandons generations and callback deliveries in flight, for good.
    pub fn abandon_work(&self) {
        self.background.cancel();
    }

    pub fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    /// The callBackUrl the client registered for a sim task id (tests use it to replay
    /// callbacks), if any.
    pub fn callback_url(&self, task_id: &str) -> Option<String> {
        self.ledger()
            .tasks
            .get(task_id)
            .and_then(|task| task.callback_url.clone())
    }

    /// Sets the account's available balance to `credits` (as a top-up or spending
    /// elsewhere on the account would): `chat/credit` answers it, tasks in progress are
    /// still billed from it, and creates get 402 once it cannot pay for one more image.
    pub fn set_credits(&self, credits: u64) {
        let mut ledger = self.ledger();
        ledger.initial_credits = ledger
            .credits_used
            .saturating_add(ledger.credits_reserved)
            .saturating_add(credits);
        tracing::info!(credits, "kie-sim credit balance set");
    }

    /// The account's available balance, as `chat/credit` answers it: what is left less
    /// what tasks in progress will cost.
    pub fn credits(&self) -> u64 {
        self.ledger().available_credits()
    }

    /// Every task id created, in creation order.
    pub fn task_ids(&self) -> Vec<String> {
        self.ledger().order.clone()
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn http(&self) -> Result<&reqwest::Client, String> {
        self.http.as_ref().map_err(Clone::clone)
    }

    /// An error envelope; its HTTP status depends on `errors_in_body`.
    fn error(&self, code: u16, msg: &str) -> Response {
        let status = if self.config.errors_in_body {
            StatusCode::OK
        } else {
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        };
        envelope(status, code, msg, Value::Null)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.config.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .is_some_and(|presented| constant_time_eq(presented.as_bytes(), expected.as_bytes()))
    }
}

/// The host of a URL, for logs: full callback and input URLs can carry tokens.
fn url_host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|url| url.host_str().map(str::to_owned))
        .unwrap_or_default()
}
