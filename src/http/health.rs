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
use crate::domain::image::ImageKind;

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
    /// Why it is paused or out of reach: `429`, `402`, `credit_floor` (the balance read
    /// below `creditFloor`), `provider_unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// When a pause ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    resumes_in_secs: Option<u64>,
    /// When a pause ends, as a time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    resumes_at: Option<String>,
    /// Since when the provider cannot be reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    since: Option<String>,
    /// When darkroom next tries to reach it (a probe: one create or one status query).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_probe_in_secs: Option<u64>,
    /// The provider's credit balance as this instance last read it, for a provider that
    /// reports one (KIE), once read (instances with workers read it).
    #[serde(skip_serializing_if = "Option::is_none")]
    credits: Option<i64>,
    /// When `credits` was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    credits_read_at: Option<String>,
    /// The configured floor: submission pauses (`credit_floor`) while `credits` is below it.
    #[serde(skip_serializing_if = "Option::is_none")]
    credit_floor: Option<u64>,
}

impl ProviderHealth {
    fn of(engine: &crate::engine::Engine, name: &str) -> Self {
        let credits = engine.provider_credits(name);
        let reading = credits.and_then(crate::engine::credits::CreditWatch::last);
        let ok = Self {
            status: "ok",
            code: None,
            reason: None,
            resumes_in_secs: None,
            resumes_at: None,
            since: None,
            next_probe_in_secs: None,
            credits: reading.map(|r| r.balance),
            credits_read_at: reading.map(|r| crate::clock::iso_time(r.at_ms)),
            credit_floor: credits.and_then(crate::engine::credits::CreditWatch::floor),
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
            Some(pause) => {
                let left_ms = pause.until.saturating_sub(crate::clock::now_ms()).max(0);
                Self {
                    status: "paused",
                    code: Some(pause.code.clone()),
                    reason: Some(pause.reason.clone()),
                    resumes_in_secs: Some(u64::try_from(left_ms / 1000).unwrap_or(0)),
                    resumes_at: Some(crate::clock::iso_time(pause.until)),
                    ..ok
                }
            }
            None => ok,
        }
    }

    /// What this provider's state degrades, if anything.
    fn degraded(&self, name: &'static str) -> Option<Degraded> {
        let label = crate::engine::circuit::provider_label(name);
        let (message, until) = match self.status {
            // Not until a time: until a reading is back at the floor or above.
            "paused" if self.code.as_deref() == Some(crate::engine::credits::FLOOR_CODE) => (
                format!(
                    "{}; tasks wait in the queue",
                    self.reason
                        .as_deref()
                        .unwrap_or("the credit balance is below the floor")
                ),
                self.resumes_at.clone(),
            ),
            "paused" => {
                let why = crate::engine::limits::pause_cause(self.code.as_deref().unwrap_or(""));
                let until = self.resumes_at.clone();
                (
                    format!(
                        "{label} {why}: submission is paused until {} (in {} s); tasks wait in the queue",
                        until.as_deref().unwrap_or("soon"),
                        self.resumes_in_secs.unwrap_or(0)
                    ),
                    until,
                )
            }
            "unreachable" => (
                format!(
                    "{}; tasks wait in the queue, and the next check is in {} s",
                    self.reason.as_deref().unwrap_or("it cannot be reached"),
                    self.next_probe_in_secs.unwrap_or(0)
                ),
                None,
            ),
            _ => return None,
        };
        Some(Degraded {
            component: format!("provider:{name}"),
            status: self.status,
            code: self.code.clone(),
            message,
            since: self.since.clone(),
            until,
        })
    }
}

/// One part of the instance that is not working as it should, in words and in fields.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Degraded {
    /// `database`, `bucket`, `disk:database`, `disk:bucket` or `provider:<name>`.
    component: String,
    /// `paused`, `unreachable`, `full`, `read_only`, `unavailable` or `low`.
    status: &'static str,
    /// Why, as a code: `429`, `402` or `credit_floor` for a pause, `provider_unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    /// What is wrong and what it means, in one sentence.
    message: String,
    /// Since when (a provider out of reach).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    since: Option<String>,
    /// Until when (a provider's pause; a `credit_floor` pause lasts until a reading is back at
    /// the floor, and this is when it lapses if no reading renews it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    until: Option<String>,
}

impl Degraded {
    fn storage(component: &str, check: &super::readiness::Check) -> Option<Self> {
        Some(Self {
            component: component.to_owned(),
            status: check.status,
            code: None,
            message: check.problem.clone()?,
            since: None,
            until: None,
        })
    }
}

/// Everything degraded now: the database and the bucket (from `checks`), low disks and
/// each provider.
fn degraded(
    state: &AppState,
    database: &super::readiness::Check,
    bucket: &super::readiness::Check,
    disks: &[DiskSpace],
) -> Vec<Degraded> {
    let mut all: Vec<Degraded> = [("database", database), ("bucket", bucket)]
        .into_iter()
        .filter_map(|(component, check)| Degraded::storage(component, check))
        .collect();
    all.extend(
        disks
            .iter()
            .filter(|d| d.status == "low")
            .map(|d| Degraded {
                component: format!("disk:{}", d.holds),
                status: "low",
                code: None,
                message: format!(
                    "the disk holding the {} has {} MiB free, below the floor of {} MiB",
                    d.holds,
                    d.free_bytes / (1024 * 1024),
                    d.min_free_bytes / (1024 * 1024)
                ),
                since: None,
                until: None,
            }),
    );
    all.extend(
        state
            .engine
            .provider_names()
            .into_iter()
            .filter_map(|name| ProviderHealth::of(&state.engine, name).degraded(name)),
    );
    all
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
    /// What is degraded, each in words and fields: the database or the bucket refusing
    /// writes, a disk low on space, a provider paused (until when) or out of reach. A
    /// provider's trouble is listed here but does not make the instance unready.
    degraded: Vec<Degraded>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ProviderInfo {
    name: &'static str,
    model: String,
    /// Served by darkroom's built-in simulator, not the real provider.
    simulator: bool,
}

/// What `POST /api/upload` accepts, so a client (the page) can check files before sending
/// them. The same settings the upload enforces.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UploadLimits {
    /// The image types accepted (told apart by a file's bytes, not its name).
    content_types: Vec<&'static str>,
    /// Largest file, bytes.
    max_file_bytes: u64,
    /// Most files in one request.
    max_files: usize,
    /// Largest width or height, pixels.
    max_image_dimension: u32,
    /// Largest width × height.
    max_image_pixels: u64,
}

impl UploadLimits {
    fn of(limits: &crate::config::LimitsConfig) -> Self {
        Self {
            content_types: ImageKind::ALL.iter().map(|k| k.content_type()).collect(),
            max_file_bytes: limits.max_upload_bytes,
            max_files: limits.max_upload_files,
            max_image_dimension: limits.max_image_dimension,
            max_image_pixels: limits.max_image_pixels,
        }
    }
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
    /// What an upload may be.
    uploads: UploadLimits,
    /// What is degraded now, as in `/readyz` (the database's and the bucket's last checks,
    /// at most a few seconds old); empty when all is well.
    degraded: Vec<Degraded>,
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
    let degraded = degraded(&state, &database, &bucket, &disks);
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
        degraded,
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Providers, storage, whether keys are required, what an upload may be and what is
/// degraded: what the page shows and checks.
#[utoipa::path(get, path = "/api/info", tag = "operations",
    responses((status = 200, description = "This instance", body = Info)))]
async fn info(State(state): State<AppState>) -> Json<Info> {
    let (database, bucket) =
        tokio::join!(state.readiness.database_recent(), state.readiness.bucket());
    let (disks, _) = state.readiness.disks();
    let degraded = degraded(&state, &database, &bucket, &disks);
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
        uploads: UploadLimits::of(&state.config.limits),
        degraded,
    })
}
