//! Metrics: one Prometheus recorder per darkroom instance ([`Metrics`]), and the names of
//! everything it records ([`names`]). The recorder belongs to the app, not to the process
//! (no global `metrics` recorder is installed), so two instances in one process (the test
//! suite runs many) keep separate counts. Callers record through the typed methods here;
//! label values are bounded by construction (provider names, stable codes, route
//! templates), never task ids or owners.
//!
//! Handles are looked up in the recorder's registry by key; on the request path
//! ([`Metrics::http_request`]) they are cached per route, method and status, so recording a
//! request is two atomic operations and no allocation once a route has been seen.

pub mod names;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::Method;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use names::{CATALOGUE, Kind};

const METADATA: Metadata<'static> = Metadata::new("darkroom", Level::INFO, None);

/// Buckets of request latencies (seconds): the status path answers in well under 1 ms.
const HTTP_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Buckets of a provider call or one stored result (seconds).
const CALL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Buckets of a task's stages (seconds): from under a second to an hour.
const STAGE_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Buckets of a result's size (bytes): 16 KiB to 64 MiB.
const BYTE_BUCKETS: &[f64] = &[
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// Request handles of one route, method and status.
#[derive(Clone)]
struct RequestHandles {
    method: &'static str,
    status: u16,
    count: Counter,
    latency: Histogram,
}

/// One darkroom's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    started: Instant,
    /// Request handles by route template, then method and status (a short list).
    routes: RwLock<HashMap<Box<str>, Vec<RequestHandles>>>,
    live: [Gauge; 2],
    /// Off (`DARKROOM_METRICS=false`): HTTP requests are not recorded.
    record_requests: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A live-stream transport, for [`Metrics::live_client`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    WebSocket,
}

/// Counts a live client while it is held.
#[must_use]
pub struct LiveClient(Gauge);

impl Drop for LiveClient {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let builder = [
            (names::HTTP_REQUEST_SECONDS, HTTP_BUCKETS),
            (names::PROVIDER_REQUEST_SECONDS, CALL_BUCKETS),
            (names::INGEST_SECONDS, CALL_BUCKETS),
            (names::TASK_STAGE_SECONDS, STAGE_BUCKETS),
            (names::INGEST_BYTES, BYTE_BUCKETS),
        ]
        .into_iter()
        .fold(PrometheusBuilder::new(), |builder, (name, buckets)| {
            builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                .expect("the bucket lists are not empty")
        });
        let recorder = builder.build_recorder();
        for m in CATALOGUE {
            let help = SharedString::const_str(m.help);
            let name = m.name.into();
            match m.kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => recorder.describe_histogram(name, None, help),
            }
        }
        let handle = recorder.handle();
        let live = ["sse", "websocket"].map(|transport| {
            let gauge = recorder.register_gauge(
                &Key::from_parts(
                    names::LIVE_CLIENTS,
                    vec![Label::from_static_parts("transport", transport)],
                ),
                &METADATA,
            );
            gauge.set(0.0);
            gauge
        });
        let metrics = Self {
            recorder,
            handle,
            started: Instant::now(),
            routes: RwLock::new(HashMap::new()),
            live,
            record_requests: std::sync::atomic::AtomicBool::new(true),
        };
        metrics
            .gauge(
                names::BUILD_INFO,
                vec![Label::from_static_parts(
                    "version",
                    env!("CARGO_PKG_VERSION"),
                )],
            )
            .set(1.0);
        metrics
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    fn histogram(&self, name: &'static str, labels: Vec<Label>) -> Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels), &METADATA)
    }

    /// The exposition text; the caller sets the gauges read at scrape time first.
    pub fn render(&self) -> String {
        self.gauge(names::UPTIME_SECONDS, Vec::new())
            .set(self.started.elapsed().as_secs_f64());
        self.handle.render()
    }

    /// Folds recorded histogram samples into their buckets, so memory stays flat between
    /// scrapes (or with no scraper at all). Run every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Runs [`Metrics::run_upkeep`] every `period` until the last other handle is gone.
    pub fn spawn_upkeep(self: &Arc<Self>, period: Duration) {
        let metrics = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match metrics.upgrade() {
                    Some(metrics) => metrics.run_upkeep(),
                    None => return,
                }
            }
        });
    }

    /// The backends this instance runs on.
    pub fn backends(&self, database: &'static str, bucket: &'static str) {
        self.gauge(
            names::BACKEND_INFO,
            vec![
                Label::from_static_parts("database", database),
                Label::from_static_parts("bucket", bucket),
            ],
        )
        .set(1.0);
    }

    /// Stops recording HTTP requests (`DARKROOM_METRICS=false`, to measure their cost).
    pub fn stop_recording_requests(&self) {
        self.record_requests
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// An HTTP request answered: `route` is the matched template (`None`: no route matched,
    /// counted as `unmatched`).
    pub fn http_request(
        &self,
        route: Option<&str>,
        method: &Method,
        status: u16,
        latency: Duration,
    ) {
        if !self
            .record_requests
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let route = route.unwrap_or("unmatched");
        let method = method_label(method);
        let cached = {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            routes.get(route).and_then(|handles| {
                handles
                    .iter()
                    .find(|h| h.status == status && h.method == method)
                    .cloned()
            })
        };
        let handles = match cached {
            Some(handles) => handles,
            None => {
                let labels = || {
                    vec![
                        Label::new("route", route.to_owned()),
                        Label::from_static_parts("method", method),
                    ]
                };
                let mut with_status = labels();
                with_status.push(Label::new("status", status.to_string()));
                let handles = RequestHandles {
                    method,
                    status,
                    count: self.counter(names::HTTP_REQUESTS, with_status),
                    latency: self.histogram(names::HTTP_REQUEST_SECONDS, labels()),
                };
                let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
                routes
                    .entry(route.into())
                    .or_default()
                    .push(handles.clone());
                handles
            }
        };
        handles.count.increment(1);
        handles.latency.record(latency.as_secs_f64());
    }

    /// Counts a live-stream client until the returned guard drops.
    pub fn live_client(&self, transport: Transport) -> LiveClient {
        let gauge = self.live[transport as usize].clone();
        gauge.increment(1.0);
        LiveClient(gauge)
    }

    /// A task reached a final state (`outcome` is the state's name).
    pub fn task_finished(&self, provider: &str, outcome: &'static str, failure: Option<&str>) {
        let p = || Label::new("provider", provider.to_owned());
        self.counter(
            names::TASKS_FINISHED,
            vec![p(), Label::from_static_parts("outcome", outcome)],
        )
        .increment(1);
        if let Some(code) = failure {
            self.counter(
                names::TASK_FAILURES,
                vec![p(), Label::new("code", code.to_owned())],
            )
            .increment(1);
        }
        if outcome == "expired" {
            self.counter(names::TASKS_EXPIRED, vec![p()]).increment(1);
        }
    }

    /// Time a task spent in one stage (see [`names::stage`]).
    pub fn task_stage(&self, provider: &str, stage: &'static str, took: Duration) {
        self.histogram(
            names::TASK_STAGE_SECONDS,
            vec![
                Label::new("provider", provider.to_owned()),
                Label::from_static_parts("stage", stage),
            ],
        )
        .record(took.as_secs_f64());
    }

    pub fn credits(&self, provider: &str, credits: u64) {
        self.counter(
            names::CREDITS,
            vec![Label::new("provider", provider.to_owned())],
        )
        .increment(credits);
    }

    /// A create held back by a spent budget (`global` or `key`).
    pub fn budget_refused(&self, scope: &'static str) {
        self.counter(
            names::BUDGET_REFUSALS,
            vec![Label::from_static_parts("scope", scope)],
        )
        .increment(1);
    }

    /// Sets an unlabelled gauge read at scrape time.
    pub fn plain_gauge(&self, name: &'static str, value: f64) {
        self.gauge(name, vec![]).set(value);
    }

    /// A request to a provider and how it ended (see [`names::PROVIDER_REQUESTS`]).
    pub fn provider_request(
        &self,
        provider: &'static str,
        operation: &'static str,
        status: &'static str,
        took: Duration,
    ) {
        let p = Label::from_static_parts("provider", provider);
        let op = Label::from_static_parts("operation", operation);
        self.counter(
            names::PROVIDER_REQUESTS,
            vec![
                p.clone(),
                op.clone(),
                Label::from_static_parts("status", status),
            ],
        )
        .increment(1);
        self.histogram(names::PROVIDER_REQUEST_SECONDS, vec![p, op])
            .record(took.as_secs_f64());
        if status == "429" {
            self.provider_counter(names::PROVIDER_RATE_LIMITED, provider)
                .increment(1);
        }
    }

    /// `name`'s counter for one provider.
    pub fn provider_counter(&self, name: &'static str, provider: &str) -> Counter {
        self.counter(name, vec![Label::new("provider", provider.to_owned())])
    }

    /// A task moved from provider `from` to `to` by the failover policy, for `reason`.
    pub fn provider_failover(&self, from: &str, to: &str, reason: &'static str) {
        self.counter(
            names::PROVIDER_FAILOVERS,
            vec![
                Label::new("from", from.to_owned()),
                Label::new("to", to.to_owned()),
                Label::from_static_parts("reason", reason),
            ],
        )
        .increment(1);
    }

    /// Submission to `provider` paused for `code` (`429`, `402`, `credit_floor`, `failing`).
    pub fn provider_paused(&self, provider: &str, code: &'static str) {
        self.counter(
            names::PROVIDER_PAUSES,
            vec![
                Label::new("provider", provider.to_owned()),
                Label::from_static_parts("code", code),
            ],
        )
        .increment(1);
    }

    /// One result image stored.
    pub fn ingested(&self, provider: &str, bytes: u64, took: Duration) {
        let p = || vec![Label::new("provider", provider.to_owned())];
        #[allow(clippy::cast_precision_loss)]
        self.histogram(names::INGEST_BYTES, p())
            .record(bytes as f64);
        self.histogram(names::INGEST_SECONDS, p())
            .record(took.as_secs_f64());
    }

    /// A webhook attempt's outcome: `delivered`, `retry` or `gave_up`.
    pub fn webhook(&self, outcome: &'static str) {
        self.counter(
            names::WEBHOOKS,
            vec![Label::from_static_parts("outcome", outcome)],
        )
        .increment(1);
    }

    /// Sets a per-provider gauge read at scrape time.
    pub fn provider_gauge(&self, name: &'static str, provider: &'static str, value: f64) {
        self.gauge(name, vec![Label::from_static_parts("provider", provider)])
            .set(value);
    }

    /// Sets the unfinished-task gauge of one provider and state.
    pub fn queue(&self, provider: &str, state: &'static str, count: u64) {
        #[allow(clippy::cast_precision_loss)]
        self.gauge(
            names::TASKS,
            vec![
                Label::new("provider", provider.to_owned()),
                Label::from_static_parts("state", state),
            ],
        )
        .set(count as f64);
    }
}

/// An HTTP method as a static label value (a bounded set).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
