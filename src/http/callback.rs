//! Provider callbacks: the per-task form darkroom registers
//! (`/api/callback/{taskId}?token=…`) and the original path (`/api/callback`, resolved by
//! the provider's task id). Both answer at once; ingest runs after the answer.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, parse_json};
use crate::AppState;
use crate::config::Config;
use crate::domain::TaskId;
use crate::engine::token_matches;
use crate::storage::Task;

pub fn router(config: &Config) -> Router<AppState> {
    Router::new()
        .route("/api/callback", post(original_callback))
        .route("/api/callback/{task_id}", post(task_callback))
        .layer(DefaultBodyLimit::max(config.limits.max_callback_body_bytes))
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
    Query(query): Query<TokenQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = TaskId::parse(&task_id).ok_or_else(unknown_task)?;
    let task = state.repo.get(&id).await?.ok_or_else(unknown_task)?;
    let token = query.token.unwrap_or_default();
    if !token_matches(&token, &task.callback_token_hash) {
        tracing::warn!(task_id = %id, "callback refused: wrong or missing token");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_callback_token",
            "the callback token is missing or wrong",
        ));
    }
    let body = parse_json(body)?;
    accept(&state, &task, &body, true).await
}

async fn original_callback(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = parse_json(body)?;
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
