//! The task API: list, detail (with queue position), cancel, retry and delete.
//!
//! With API keys on, a caller sees and acts on its own tasks only ([`Caller`]): another
//! owner's task is the same 404 as a missing one, and listings are filtered by owner.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::path::PathParam;
use crate::AppState;
use crate::domain::ErrorCode;
use crate::domain::{TaskId, TaskState};
use crate::storage::{Task, TaskFilter};
pub use crate::views::{TaskView, task_view};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks))
        .routes(routes!(get_task, delete_task))
        .routes(routes!(cancel_task))
        .routes(routes!(retry_task))
}

/// A page of tasks, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<TaskId>,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Comma-separated states (`queued,failed`).
    #[param(
        pattern = "^(queued|submitting|submitted|running|ingesting|succeeded|failed|canceled|expired)(,(queued|submitting|submitted|running|ingesting|succeeded|failed|canceled|expired))*$"
    )]
    state: Option<String>,
    /// Only this batch's tasks.
    batch_id: Option<String>,
    /// Only this owner's tasks (API key name); a keyed caller sees only its own.
    owner: Option<String>,
    /// 1–200, default 50.
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    #[param(pattern = "^tsk_[0-9a-f]{32}$")]
    cursor: Option<String>,
}

/// The `{id}` path parameter of the task routes.
#[derive(Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TaskPath {
    /// A task id (`tsk_…`).
    pub id: String,
}

fn parse_id(raw: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(raw).ok_or_else(|| ApiError::new(ErrorCode::TaskNotFound, "no such task"))
}

/// List tasks, newest first.
#[utoipa::path(get, path = "/api/tasks", tag = "tasks", params(ListQuery), responses(
    (status = 200, description = "A page of tasks", body = TaskPage),
    (status = 400, description = "Invalid filter, limit or cursor", body = ErrorBody),
))]
async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TaskPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let states = match &query.state {
        None => Vec::new(),
        Some(raw) => raw
            .split(',')
            .map(|s| {
                s.trim().parse::<TaskState>().map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidState,
                        format!("state {s:?} is not one of queued, submitting, submitted, running, ingesting, succeeded, failed, canceled, expired"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            ErrorCode::InvalidLimit,
            format!("limit must be 1–{MAX_LIMIT}"),
        ));
    }
    let before = match &query.cursor {
        Some(cursor) => Some(TaskId::parse(cursor).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidCursor,
                "cursor must be a nextCursor value from an earlier page",
            )
        })?),
        None => None,
    };
    // A keyed caller lists its own tasks; asking for another owner's finds none.
    let owner = match (caller.owner(), query.owner.clone()) {
        (Some(me), Some(asked)) if asked != me => {
            return Ok(Json(TaskPage {
                tasks: Vec::new(),
                next_cursor: None,
            }));
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
    Ok(Json(TaskPage {
        tasks: tasks.iter().map(|t| live_view(&state, t, None)).collect(),
        next_cursor,
    }))
}

/// The task if `caller` may see it; another owner's is the same 404 as a missing one.
async fn visible_task(state: &AppState, caller: &Caller, id: &TaskId) -> Result<Task, ApiError> {
    caller
        .visible(state.repo.get(id).await?)
        .ok_or_else(|| ApiError::new(ErrorCode::TaskNotFound, "no such task"))
}

/// One task, with its queue position while queued.
#[utoipa::path(get, path = "/api/tasks/{id}", tag = "tasks", params(TaskPath), responses(
    (status = 200, description = "The task", body = TaskView),
    (status = 404, description = "No such task (or another key's)", body = ErrorBody),
))]
async fn get_task(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(TaskPath { id }): PathParam<TaskPath>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    let task = visible_task(&state, &caller, &id).await?;
    let position = if task.state == TaskState::Queued {
        state.repo.queue_position(&id).await?
    } else {
        None
    };
    Ok(Json(live_view(&state, &task, position)))
}

/// The task's view, and for a queued task that is due (or has no reason of its own), its
/// provider's hold-up as the reason it waits: a pause, an outage, a full create window.
pub(super) fn live_view(state: &AppState, task: &Task, position: Option<u64>) -> TaskView {
    let mut view = task_view(task, position);
    let own_reason_ahead = view.waiting.is_some() && task.run_at > crate::clock::now_ms();
    if task.state == TaskState::Queued
        && !own_reason_ahead
        && let Some(hold) = state.engine.provider_hold(&task.provider)
    {
        view.waiting = Some(hold);
    }
    view
}

/// Cancel an unfinished task. A task already at the provider may still be billed there.
#[utoipa::path(post, path = "/api/tasks/{id}/cancel", tag = "tasks", params(TaskPath), responses(
    (status = 200, description = "The canceled task", body = TaskView),
    (status = 404, description = "No such task", body = ErrorBody),
    (status = 409, description = "The task is already final", body = ErrorBody),
))]
async fn cancel_task(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(TaskPath { id }): PathParam<TaskPath>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    visible_task(&state, &caller, &id).await?;
    let task = state.engine.cancel(&id).await?;
    Ok(Json(task_view(&task, None)))
}

/// Retry a failed or expired task as a new task (`retryOf` names the old one).
#[utoipa::path(post, path = "/api/tasks/{id}/retry", tag = "tasks", params(TaskPath), responses(
    (status = 200, description = "The new task", body = TaskView),
    (status = 404, description = "No such task", body = ErrorBody),
    (status = 409, description = "The task is not failed or expired", body = ErrorBody),
    (status = 429, description = "The key's cap on unfinished tasks is reached", body = ErrorBody),
))]
async fn retry_task(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(TaskPath { id }): PathParam<TaskPath>,
) -> Result<Json<TaskView>, ApiError> {
    let id = parse_id(&id)?;
    visible_task(&state, &caller, &id).await?;
    // A retry is a new task: it counts against the key's cap like any other.
    let reservation = state.auth.reserve_tasks(&caller, 1).await?;
    let task = state.engine.retry(&id).await?;
    drop(reservation);
    Ok(Json(task_view(&task, None)))
}

/// Delete a finished task: its results, its record in the bucket, its rows (its batch's
/// too once the batch has no task left) and the uploads it used that no other task uses.
/// Afterwards the task is unknown everywhere (`404 task_not_found`).
#[utoipa::path(delete, path = "/api/tasks/{id}", tag = "tasks", params(TaskPath), responses(
    (status = 204, description = "The task and its objects are deleted"),
    (status = 404, description = "No such task (or another key's)", body = ErrorBody),
    (status = 409, description = "The task is not final (`task_not_finished`), or one of its results is an input of an unfinished task (`task_in_use`)", body = ErrorBody),
))]
async fn delete_task(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(TaskPath { id }): PathParam<TaskPath>,
) -> Result<StatusCode, ApiError> {
    use crate::retention::DeleteError;
    let id = parse_id(&id)?;
    let task = visible_task(&state, &caller, &id).await?;
    let deleted =
        crate::retention::delete_task(&state.blobs, state.repo.as_ref(), &state.board, &task).await;
    match deleted {
        Ok(()) => {
            tracing::info!(task_id = %id, owner = caller.owner().unwrap_or("-"), "task deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(DeleteError::NotFinished) => Err(ApiError::new(
            ErrorCode::TaskNotFinished,
            format!(
                "task {id} is {}; cancel it or wait for it to finish before deleting it",
                task.state
            ),
        )),
        Err(DeleteError::InUse(key)) => Err(ApiError::new(
            ErrorCode::TaskInUse,
            format!(
                "{key} is an input of an unfinished task; delete this task once that one is final"
            ),
        )),
        Err(DeleteError::Database(e)) => Err(e.into()),
        Err(DeleteError::Bucket(e)) => Err(e.into()),
    }
}
