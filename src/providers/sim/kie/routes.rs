//! The HTTP surface: the routes, the token check, and the jobs API handlers
//! (`createTask`, `recordInfo`, download URLs, credit, stats, the settable balance).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admission::Admission;
use super::files::{file_base64_upload, file_stream_upload, serve_file};
use super::request::parse_create_request;
use super::stats::Counters;
use super::{KieSim, SimStats};

impl KieSim {
    /// All routes, with the state applied.
    pub fn router(self: &Arc<Self>) -> Router {
        let api = Router::new()
            .route("/api/v1/jobs/createTask", post(create_task))
            .route("/api/v1/jobs/recordInfo", get(record_info))
            .route("/api/v1/common/download-url", post(download_url))
            .route("/api/v1/chat/credit", get(credit))
            // KIE serves these from another host; one simulator answers both.
            .route("/api/file-stream-upload", post(file_stream_upload))
            .route("/api/file-base64-upload", post(file_base64_upload))
            .route_layer(middleware::from_fn_with_state(
                Arc::clone(self),
                require_token,
            ));
        Router::new()
            .merge(api)
            .route("/files/{name}", get(serve_file))
            .route("/sim/stats", get(stats))
            .route("/sim/credits", get(sim_credits).post(set_credits))
            .fallback(not_found)
            .with_state(Arc::clone(self))
    }
}

async fn require_token(State(sim): State<Arc<KieSim>>, request: Request, next: Next) -> Response {
    if sim.authorized(request.headers()) {
        next.run(request).await
    } else {
        tracing::info!(path = %request.uri().path(), "kie-sim rejected a request without a valid token");
        sim.error(401, "Unauthorized: missing or invalid API key")
    }
}

async fn create_task(
    State(sim): State<Arc<KieSim>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(refusal) = sim.injected_refusal() {
        tracing::info!("kie-sim refused a create (fault injection)");
        return refusal;
    }
    let request = body
        .map_err(|err| format!("Request body could not be read: {err}"))
        .and_then(|body| parse_create_request(&body));
    match sim.admit(request) {
        Admission::RateLimited => {
            tracing::info!("kie-sim rate limited a create");
            sim.error(429, &sim.rate_limit_message())
        }
        Admission::NoCredits => {
            tracing::info!("kie-sim refused a create: insufficient credits");
            sim.error(402, "Insufficient credits")
        }
        Admission::Rejected(msg) => {
            tracing::info!(reason = %msg, "kie-sim rejected a create");
            sim.error(422, &msg)
        }
        Admission::Accepted {
            task_id,
            request,
            faults,
        } => {
            tracing::info!(
                task_id = %task_id,
                model = request.model,
                latency_ms = u64::try_from(faults.latency.as_millis()).unwrap_or(u64::MAX),
                fail = faults.fail,
                drop_callback = faults.drop_callback,
                deliveries = faults.deliveries,
                early = faults.early,
                "kie-sim task created"
            );
            let answer = success(json!({ "taskId": task_id }));
            if faults.forget {
                tracing::info!(task_id = %task_id, "kie-sim forgot a task it accepted (fault injection)");
                sim.forget(&task_id);
                return answer;
            }
            if faults.early {
                // The callback must reach the client before this answer does.
                Arc::clone(&sim).run_task(task_id, request, faults).await;
            } else {
                sim.spawn_task(task_id, request, faults);
            }
            if faults.hang {
                // The task exists and runs; the client just never hears so in time.
                Counters::bump(&sim.counters.timeouts);
                tokio::select! {
                    () = tokio::time::sleep(sim.config.timeout_hang) => {}
                    () = sim.background.cancelled() => {}
                }
            }
            answer
        }
    }
}

#[derive(Deserialize)]
struct RecordInfoQuery {
    #[serde(rename = "taskId")]
    task_id: Option<String>,
}

async fn record_info(
    State(sim): State<Arc<KieSim>>,
    query: Result<Query<RecordInfoQuery>, QueryRejection>,
) -> Response {
    Counters::bump(&sim.counters.queries);
    let task_id = match query {
        Ok(Query(RecordInfoQuery {
            task_id: Some(task_id),
        })) if !task_id.is_empty() => task_id,
        _ => return sim.error(422, "taskId is required"),
    };
    match sim.task_view(&task_id) {
        Some(data) => success(data),
        None => {
            Counters::bump(&sim.counters.not_found);
            sim.error(404, "Task not found")
        }
    }
}

async fn download_url(
    State(sim): State<Arc<KieSim>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let url = body
        .ok()
        .and_then(|body| serde_json::from_slice::<Value>(&body).ok())
        .and_then(|value| value.get("url").and_then(Value::as_str).map(str::to_owned));
    match url {
        Some(url) if sim.is_own_file_url(&url) => success(Value::String(url)),
        Some(_) => sim.error(422, "url must be a result URL generated by this service"),
        None => sim.error(422, "url is required"),
    }
}

async fn credit(State(sim): State<Arc<KieSim>>) -> Response {
    success(json!(sim.credits()))
}

#[derive(Deserialize)]
struct SetCredits {
    credits: u64,
}

/// `GET /sim/credits`: the balance, outside KIE's envelope and without the token.
async fn sim_credits(State(sim): State<Arc<KieSim>>) -> Json<Value> {
    Json(json!({ "credits": sim.credits() }))
}

/// `POST /sim/credits {"credits": N}`: sets the balance (a top-up, or spending elsewhere on
/// the account) while the simulator runs.
async fn set_credits(
    State(sim): State<Arc<KieSim>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = body
        .ok()
        .and_then(|body| serde_json::from_slice::<SetCredits>(&body).ok());
    match parsed {
        Some(SetCredits { credits }) => {
            sim.set_credits(credits);
            (StatusCode::OK, Json(json!({ "credits": sim.credits() }))).into_response()
        }
        None => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": "expected {\"credits\": N}, N a whole number of credits, 0 or more" })),
        )
            .into_response(),
    }
}

async fn stats(State(sim): State<Arc<KieSim>>) -> Json<SimStats> {
    Json(sim.stats())
}

async fn not_found() -> Response {
    envelope(StatusCode::NOT_FOUND, 404, "Not found", Value::Null)
}

pub(super) fn success(data: Value) -> Response {
    envelope(StatusCode::OK, 200, "success", data)
}

pub(super) fn envelope(status: StatusCode, code: u16, msg: &str, data: Value) -> Response {
    (
        status,
        Json(json!({ "code": code, "msg": msg, "data": data })),
    )
        .into_response()
}
