//! `GET /api/task-status?taskId=…`: the original's polling endpoint, answered from the
//! in-memory status board (filled from the database on a miss). Polls the board can
//! answer at once never reach this handler: [`super::status_polls`] answers them first,
//! alike.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::AppState;
use crate::domain::ErrorCode;
use crate::domain::TaskId;
use crate::status::StatusEntry;
use crate::views::CompatStatusBody;

/// The route's path (its `#[utoipa::path]` spells it too); [`super::status_polls`] answers
/// most polls before the router.
pub(super) const STATUS_ROUTE: &str = "/api/task-status";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(task_status))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    /// darkroom's task id, or the provider's.
    #[serde(rename = "taskId")]
    #[param(required = true, min_length = 1, max_length = 200)]
    task_id: Option<String>,
}

/// The original service's polling endpoint, answered from memory.
#[utoipa::path(get, path = "/api/task-status", tag = "generation", params(StatusQuery), responses(
    (status = 200, description = "The task's status", body = CompatStatusBody),
    (status = 400, description = "No taskId", body = ErrorBody),
    (status = 404, description = "No such task (or another key's)", body = ErrorBody),
))]
async fn task_status(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let task_id = query
        .ok()
        .and_then(|Query(q)| q.task_id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ApiError::new(ErrorCode::TaskIdRequired, "taskId is required"))?;
    let not_found = || ApiError::new(ErrorCode::TaskNotFound, format!("no task {task_id}"));
    if task_id.len() > 200 {
        return Err(not_found());
    }
    // A provider's id may belong to any provider (KIE's task id, Gemini's response id).
    let providers = state.engine.provider_names();
    let id = match TaskId::parse(&task_id) {
        Some(id) => Some(id),
        None => providers
            .iter()
            .find_map(|p| state.board.id_for_provider_id(p, &task_id)),
    };
    // Another owner's task is answered exactly like a missing one, cached or not.
    if let Some(entry) = id.as_ref().and_then(|id| state.board.get(id)) {
        if !caller.may_see(entry.owner.as_deref()) {
            return Err(not_found());
        }
        return Ok(json_response(with_hold(&state, &entry)));
    }
    let task = match &id {
        Some(id) => state.repo.get(id).await?,
        None => {
            let mut found = None;
            for provider in &providers {
                found = state.repo.get_by_provider_id(provider, &task_id).await?;
                if found.is_some() {
                    break;
                }
            }
            found
        }
    };
    let task = caller.visible(task).ok_or_else(not_found)?;
    let entry = state.board.update(&task);
    Ok(json_response(with_hold(&state, &entry)))
}

/// The ready answer, plus `waiting` from the task's provider when a queued task is held
/// back by it (a pause, an outage, a full create window) and has no reason of its own
/// still ahead. Only then is the answer rebuilt; otherwise it goes out as it was cached.
pub(super) fn with_hold(state: &AppState, entry: &StatusEntry) -> bytes::Bytes {
    let Some(provider) = &entry.queued_for else {
        return entry.body.clone();
    };
    if entry
        .waiting_until
        .is_some_and(|until| until > crate::clock::now_ms())
    {
        return entry.body.clone();
    }
    let Some(hold) = state.engine.provider_hold(provider) else {
        return entry.body.clone();
    };
    let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&entry.body) else {
        return entry.body.clone();
    };
    if let (Some(fields), Ok(waiting)) = (body.as_object_mut(), serde_json::to_value(hold)) {
        fields.insert("waiting".to_owned(), waiting);
    }
    serde_json::to_vec(&body).map_or_else(|_| entry.body.clone(), bytes::Bytes::from)
}

pub(super) fn json_response(body: bytes::Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
