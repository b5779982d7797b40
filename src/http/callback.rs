//! Provider callbacks: the per-task form darkroom registers
//! (`/api/callback/{taskId}?token=…`) and the original path (`/api/callback`, resolved by
//! the provider's task id). Both answer at once; ingest runs after the answer.
//!
//! Authentication comes before anything is changed: the per-task token (hashed,
//! constant-time), then KIE's HMAC when `KIE_WEBHOOK_HMAC_KEY` is set (both routes). The
//! body is only a hint; by default the outcome is read from KIE's `recordInfo`. The token
//! lives in the query string, which is never logged (the request span records the path
//! only), and the body, whose `param` echoes the callback URL and so the token, is never
//! stored or logged.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::HeaderMap;
use axum::middleware;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::limit_callbacks;
use super::error::{ApiError, ErrorBody, parse_json};
use super::path::PathParam;
use crate::AppState;
use crate::domain::ErrorCode;
use crate::domain::TaskId;
use crate::domain::webhook::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::engine::token_matches;
use crate::storage::Task;

pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(original_callback))
        .routes(routes!(task_callback))
        .layer(DefaultBodyLimit::max(
            state.config.limits.max_callback_body_bytes,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            limit_callbacks,
        ))
}

/// KIE's HMAC, when a key is configured: over KIE's task id from the body and the
/// timestamp header. Nothing has been changed when this refuses.
fn check_signature(state: &AppState, headers: &HeaderMap, body: &Value) -> Result<(), ApiError> {
    let Some(key) = &state.config.kie.webhook_hmac_key else {
        return Ok(());
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let data = body.get("data").unwrap_or(&Value::Null);
    let provider_task_id = ["taskId", "task_id"]
        .iter()
        .find_map(|k| data.get(*k).and_then(Value::as_str));
    webhook::verify(
        key.expose().as_bytes(),
        provider_task_id,
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        chrono::Utc::now().timestamp(),
    )
    .map_err(|e| {
        tracing::warn!(reason = %e, "callback refused: webhook signature");
        ApiError::new(ErrorCode::InvalidWebhookSignature, e.to_string())
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TokenQuery {
    /// The per-task token darkroom put in the callback URL it registered.
    token: Option<String>,
}

/// KIE's callback body, as far as darkroom reads it; everything else is allowed and
/// ignored. Only a hint: the outcome is read from `recordInfo`.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the wire format; the handler reads the JSON itself
struct KieCallback {
    /// 200 on success; 400, 500 or 501 on failure.
    code: Option<i64>,
    msg: Option<String>,
    data: KieCallbackData,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct KieCallbackData {
    /// KIE's task id (some senders spell it `task_id`).
    #[schema(rename = "taskId", min_length = 1)]
    task_id: String,
    /// `success` or `fail`.
    state: Option<String>,
}

/// The task a callback was accepted for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CallbackAck {
    success: bool,
    task_id: TaskId,
}

fn unknown_task() -> ApiError {
    ApiError::new(ErrorCode::TaskNotFound, "no such task")
}

/// The provider's callback for one task, at the URL darkroom registered with it.
#[utoipa::path(post, path = "/api/callback/{task_id}", tag = "provider callbacks",
    params(("task_id" = String, Path, description = "darkroom's task id"), TokenQuery),
    request_body(content = serde_json::Value, description = "KIE's callback body (only a hint: the outcome is read from recordInfo)"),
    responses(
        (status = 200, description = "Accepted (also for a repeated callback)", body = CallbackAck),
        (status = 401, description = "Wrong or missing token, or bad KIE signature", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 429, description = "Too many callbacks", body = ErrorBody),
    ))]
async fn task_callback(
    State(state): State<AppState>,
    PathParam(task_id): PathParam<String>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CallbackAck>, ApiError> {
    let id = TaskId::parse(&task_id).ok_or_else(unknown_task)?;
    let task = state.repo.get(&id).await?.ok_or_else(unknown_task)?;
    let token = query.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    if !token_matches(&token, &task.callback_token_hash) {
        tracing::warn!(task_id = %id, "callback refused: wrong or missing token");
        return Err(ApiError::new(
            ErrorCode::InvalidCallbackToken,
            "the callback token is missing or wrong",
        ));
    }
    let body = parse_json(body, state.config.limits.max_callback_body_bytes)?;
    check_signature(&state, &headers, &body)?;
    accept(&state, &task, &body, true).await
}

/// The original service's callback path: the task is found by KIE's task id.
#[utoipa::path(post, path = "/api/callback", tag = "provider callbacks",
    request_body(content = KieCallback, description = "KIE's callback body (only a hint: the outcome is read from recordInfo)"),
    responses(
        (status = 200, description = "Accepted (also for a repeated callback)", body = CallbackAck),
        (status = 400, description = "No data.taskId", body = ErrorBody),
        (status = 401, description = "Bad KIE signature (when KIE_WEBHOOK_HMAC_KEY is set)", body = ErrorBody),
        (status = 404, description = "No such task", body = ErrorBody),
    ))]
async fn original_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<CallbackAck>, ApiError> {
    let body = parse_json(body, state.config.limits.max_callback_body_bytes)?;
    check_signature(&state, &headers, &body)?;
    let data = body.get("data").unwrap_or(&Value::Null);
    let provider_task_id = ["taskId", "task_id"]
        .iter()
        .find_map(|k| data.get(*k).and_then(Value::as_str))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::TaskIdRequired,
                "the callback body has no data.taskId",
            )
        })?;
    let task = state
        .repo
        // KIE's callback format: only KIE tasks are looked up by its id.
        .get_by_provider_id(
            crate::domain::request::ProviderName::Kie.as_str(),
            provider_task_id,
        )
        .await?
        .ok_or_else(unknown_task)?;
    // No token on this path: the body is only a hint to look the task up at the provider.
    accept(&state, &task, &body, false).await
}

async fn accept(
    state: &AppState,
    task: &Task,
    body: &Value,
    authenticated: bool,
) -> Result<Json<CallbackAck>, ApiError> {
    state
        .engine
        .accept_callback(task, body, authenticated)
        .await?;
    Ok(Json(CallbackAck {
        success: true,
        task_id: task.id.clone(),
    }))
}
