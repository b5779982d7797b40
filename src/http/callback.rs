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

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::limit_callbacks;
use super::error::{ApiError, parse_json};
use crate::AppState;
use crate::domain::TaskId;
use crate::domain::webhook::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::engine::token_matches;
use crate::storage::Task;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/api/callback", post(original_callback))
        .route("/api/callback/{task_id}", post(task_callback))
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
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_webhook_signature",
            e.to_string(),
        )
    })
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn unknown_task() -> ApiError {
    ApiError::not_found("task_not_found", "no such task")
}

async fn task_callback(
    State(state): State<AppState>,
    Path(task_id): Path<String>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = TaskId::parse(&task_id).ok_or_else(unknown_task)?;
    let task = state.repo.get(&id).await?.ok_or_else(unknown_task)?;
    let token = query.ok().and_then(|Query(q)| q.token).unwrap_or_default();
    if !token_matches(&token, &task.callback_token_hash) {
        tracing::warn!(task_id = %id, "callback refused: wrong or missing token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_callback_token",
            "the callback token is missing or wrong",
        ));
    }
    let body = parse_json(body)?;
    check_signature(&state, &headers, &body)?;
    accept(&state, &task, &body, true).await
}

async fn original_callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = parse_json(body)?;
    check_signature(&state, &headers, &body)?;
    let data = body.get("data").unwrap_or(&Value::Null);
    let provider_task_id = ["taskId", "task_id"]
        .iter()
        .find_map(|k| data.get(*k).and_then(Value::as_str))
        .ok_or_else(|| {
            ApiError::bad_request("task_id_required", "the callback body has no data.taskId")
        })?;
    let task = state
        .repo
        // KIE's callback format: only KIE tasks are looked up by its id.
        .get_by_provider_id(crate::providers::kie::NAME, provider_task_id)
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
) -> Result<Json<Value>, ApiError> {
    state
        .engine
        .accept_callback(task, body, authenticated)
        .await?;
    Ok(Json(json!({"success": true, "taskId": task.id})))
}
