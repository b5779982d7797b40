//! Liveness, readiness and what this instance is running with.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::readiness::DiskSpace;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(info))
}

#[derive(Debug, Serialize, ToSchema)]
struct Alive {
    /// Always `ok`.
    status: &'static str,
}

/// A provider's state: `ok`; `paused` with why and for how long; or `unreachable` with why
/// and since when.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct ProviderHealth {
    /// `ok`, `paused` or `unreachable`.
    status: &'static str,
    /// Why it is paused or out of reach: `429`, `402`, `provider_unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// When a pause ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    resumes_in_secs: Option<u64>,
    /// Since when the provider cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    since: Option<String>,
    /// When darkroom next tries to reach it (a probe: one create or one status query).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_probe_in_secs: Option<u64>,
}

impl ProviderHealth {
    fn of(engine: &crate::engine::Engine, name: &str) -> Self {
        let ok = Self {
            status: "ok",
            code: None,
            reason: None,
            resumes_in_secs: None,
            since: None,
            next_probe_in_secs: None,
        };
        let now = std::time::Instant::now();
        if let Some(outage) = engine.provider_outage(name) {
            return Self {
                status: "unreachable",
                code: Some(
                    crate::domain::JobCode::ProviderUnreachable
                        .as_str()
                        .to_owned(),
                ),
                reason: Some(format!(
                    "{} cannot be reached: {}",
                    crate::engine::circuit::provider_label(name),
                    outage.reason
                )),
                since: Some(crate::clock::iso_time(outage.since_ms)),
                next_probe_in_secs: Some(
                    outage.next_probe.saturating_duration_since(now).as_secs(),
                ),
                ..ok
            };
        }
        match engine.provider_pause(name) {
            Some(pause) => Self {
                status: "paused",
                code: Some(pause.code.clone()),
                reason: Some(pause.reason.clone()),
                resumes_in_secs: Some(pause.until.saturating_duration_since(now).as_secs()),
                ..ok
            },
            None => ok,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    /// Whether the database accepts a write now: `ok`, `full`, `read_only` or `unavailable`.
    database: &'static str,
    /// Whether the bucket accepts a write: `ok`, `full`, `read_only` or `unavailable`.
    bucket: &'static str,
    /// Free space on the disks holding the database file and the local bucket.
    disks: Vec<DiskSpace>,
    /// What keeps the instance from being ready, one sentence each; empty when ready.
    problems: Vec<String>,
    /// The default provider.
    provider: ProviderHealth,
    /// Every provider a request may name.
    providers: BTreeMap<&'static str, ProviderHealth>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ProviderInfo {
    name: &'static str,
    model: String,
    /// Served by darkroom's built-in simulator, not the real provider.
    simulator: bool,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Info {
    name: &'static str,
    version: &'static str,
    /// The default provider (what the page shows).
    provider: &'static str,
    /// Whether the default provider is the built-in simulator.
    simulator: bool,
    default_provider: &'static str,
    /// Every provider a request may name, simulated or not.
    providers: Vec<ProviderInfo>,
    /// `local`, `s3` or `memory`.
    storage: &'static str,
    /// Requests need `Authorization: Bearer <key>`.
    api_keys_required: bool,
}

/// The process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Alive)))]
async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// The database and the bucket accept writes and the local disks have room. A paused
/// provider (429 storm, no credits) or one that cannot be reached does not make the
/// instance unready: it still queues work, which runs when the provider is back.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "The database or the bucket refuses writes, or a disk is low on space; `problems` says which", body = Readiness),
))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let (database, bucket) = tokio::join!(state.readiness.database(), state.readiness.bucket());
    let (disks, low_space) = state.readiness.disks();
    let problems: Vec<String> = [&database, &bucket]
        .into_iter()
        .filter_map(|check| check.problem.clone())
        .chain(low_space)
        .collect();
    let ready = problems.is_empty();
    for problem in &problems {
        if let Some(repeated) = crate::log_throttle::errors().admit(problem) {
            tracing::warn!(problem = %problem, repeated, "not ready");
        }
    }
    // Reported, not hidden: the default provider as `provider`, every one in `providers`.
    let pause_status = |name: &str| ProviderHealth::of(&state.engine, name);
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" },
        database: database.status,
        bucket: bucket.status,
        disks,
        problems,
        provider: pause_status(state.info.provider),
        providers: state
            .engine
            .provider_names()
            .into_iter()
            .map(|name| (name, pause_status(name)))
            .collect(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Providers, storage and whether keys are required: what the page shows.
#[utoipa::path(get, path = "/api/info", tag = "operations",
    responses((status = 200, description = "This instance", body = Info)))]
async fn info(State(state): State<AppState>) -> Json<Info> {
    Json(Info {
        name: "darkroom",
        version: env!("CARGO_PKG_VERSION"),
        provider: state.info.provider,
        simulator: state.info.simulator,
        default_provider: state.info.provider,
        providers: state
            .info
            .providers
            .iter()
            .map(|p| ProviderInfo {
                name: p.name,
                model: p.model.clone(),
                simulator: p.simulator,
            })
            .collect(),
        storage: state.info.storage,
        api_keys_required: state.auth.required(),
    })
}
