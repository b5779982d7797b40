//! The task API: list, detail (with queue position), cancel and retry.
//!
//! With API keys on, a caller sees and acts on its own tasks only ([`Caller`]): another
//! owner's task is the same 404 as a missing one, and listings are filtered by owner.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use crate::AppState;
use crate::domain::{TaskId, TaskState};
use crate::status::iso_time;
use crate::storage::{Task, TaskFilter};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tasks", get(list_tasks))
        .route("/api/tasks/{id}", get(get_task))
        .route("/api/tasks/{id}/cancel", post(cancel_task))
        .route("/api/tasks/{id}/retry", post(retry_task))
}

/// The full view of a task (never its token hash or lease).
pub fn task_view(task: &Task, queue_position: Option<u64>) -> Value {
    json!({
        "taskId": task.id,
        "state": task.state.as_str(),
        "status": task.state.compat().as_str(),
        "provider": task.provider,
        "providerTaskId": task.provider_task_id,
        "model": task.model,
        "prompt": task.prompt,
        "sourceKey": task.source,
        "imageUrl": task.image_url,
        "inputUrls": task.input_urls,
        "aspectRatio": task.aspect_ratio,
        "outputFormat": task.output_format,
        "priority": task.priority,
        "batchId": task.batch_id,
        "attempts": task.attempts,
        "queuePosition": queue_position,
        // Created at the provider with no answer: waiting for its callback.
        "unconfirmed": task.provider_task_id.is_none()
            && matches!(task.state, TaskState::Submitted),
        "resultUrls": task.result_urls,
        "error": task.error_code.as_ref().map(|code| json!({"code": code, "message": task.error_message})),
        "consumeCredits": task.credits,
        "costTimeMs": task.cost_time_ms,
        "retryOf": task.retry_of,
        "createdAt": iso_time(task.created_at),
        "updatedAt": iso_time(task.updated_at),
        "submittedAt": task.submitted_at.map(iso_time),
        "completedAt": task.completed_at.map(iso_time),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    state: Option<String>,
    batch_id: Option<String>,
    owner: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn parse_id(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(raw).ok_or_else(|| ApiError::not_found("task_not_found", "no such task"))
}

async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let states = match &query.state {
        None => Vec::new(),
        Some(raw) => raw
            .split(',')
            .map(|s| {
                s.trim().parse::<TaskState>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_state",
                        format!("state {s:?} is not one of queued, submitting, submitted, running, ingesting, succeeded, failed, canceled, expired"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be 1–{MAX_LIMIT}"),
        ));
    }
    let before = match &query.cursor {
        Some(cursor) => Some(TaskId::parse(cursor).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor must be a nextCursor value from an earlier page",
            )
        })?),
        None => None,
    };
    // A keyed caller lists its own tasks; asking for another owner's finds none.
    let owner = match (caller.owner(), query.owner.clone()) {
        (Some(me), Some(asked)) if asked != me => {
            return Ok(Json(json!({"tasks": [], "nextCursor": null})));
        }
        (Some(me), _) => Some(me.to_owned()),
        (None, asked) => asked,
    };
    let filter = TaskFilter {
        states,
        batch_id: query.batch_id.clone(),
        owner: owner.map(Some),
        before,
        limit: limit + 1,
    };
    let mut tasks = state.repo.list(&filter).await?;
    let more = tasks.len() > limit;
    tasks.truncate(limit);
    let next_cursor = more.then(|| tasks.last().map(|t| t.id.clone())).flatten();
    let views: Vec<Value> = tasks.iter().map(|t| task_view(t, None)).collect();
    Ok(Json(json!({"tasks": views, "nextCursor": next_cursor})))
}

/// The task if `caller` may see it; another owner's is the same 404 as a missing one.
async fn visible_task(state: &AppState, caller: &Caller, id: &TaskId) -> Result<Task, ApiError> {
    caller
        .visible(state.repo.get(id).await?)
        .ok_or_else(|| ApiError::not_found("task_not_found", "no such task"))
}

async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let task = visible_task(&state, &caller, &id).await?;
    let position = if task.state == TaskState::Queued {
        state.repo.queue_position(&id).await?
    } else {
        None
    };
    Ok(Json(task_view(&task, position)))
}

async fn cancel_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    visible_task(&state, &caller, &id).await?;
    let task = state.engine.cancel(&id).await?;
    Ok(Json(task_view(&task, None)))
}

async fn retry_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    visible_task(&state, &caller, &id).await?;
    // A retry is a new task: it counts against the key's cap like any other.
    let reservation = state.auth.reserve_tasks(&caller, 1).await?;
    let task = state.engine.retry(&id).await?;
    drop(reservation);
    Ok(Json(task_view(&task, None)))
}
