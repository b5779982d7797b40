//! The batch API: queue many generations as one batch, follow its counts, cancel it, retry
//! its failed tasks and download its results as one ZIP streamed from the bucket.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, body_bytes, json_value};
use super::generate::{build_tasks, request_policy};
use super::idempotency::{self, Begin, Fingerprint, Held, IdempotencyKeyHeader};
use super::path::PathParam;
use super::tasks::{TaskView, task_view};
use super::zip::ZipWriter;
use crate::AppState;
use crate::clock::now_ms;
use crate::domain::ErrorCode;
use crate::domain::request::{GenerateBody, GenerateRequest};
use crate::domain::{TaskId, TaskState};
use crate::engine::EngineError;
use crate::storage::{Batch, Task, TaskFilter};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
/// Tasks read per page when walking a batch.
const PAGE: usize = 200;
/// Chunks buffered between the bucket reader and the client: bounds memory per download.
const ZIP_BUFFER_CHUNKS: usize = 4;

/// Every route here except the ZIP download (mounted outside the request timeout).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_batch, list_batches))
        .routes(routes!(get_batch))
        .routes(routes!(cancel_batch))
        .routes(routes!(retry_batch))
}

/// The ZIP download: a large batch takes longer than the request timeout to stream.
pub fn download_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download_zip))
}

/// The `{id}` path parameter of the batch routes.
#[derive(Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct BatchPath {
    /// A batch id (`bat_…`).
    id: String,
}

/// `POST /api/batches`'s answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct BatchCreated {
    success: bool,
    batch_id: String,
    task_ids: Vec<TaskId>,
}

/// A task a batch retry made, and the failed task it retries.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RetriedTask {
    retry_of: TaskId,
    task_id: TaskId,
}

/// A batch: counts per state and credits; its tasks in the detail view.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct BatchView {
    batch_id: String,
    prompt: String,
    webhook_url: Option<String>,
    /// Tasks the batch has now (retries included).
    total: i64,
    /// Tasks the batch was created with.
    submitted: i64,
    /// Tasks per state (`{"succeeded": 3, "failed": 1}`).
    counts: BTreeMap<&'static str, i64>,
    /// Credits its tasks consumed.
    credits: i64,
    /// Every task is final.
    done: bool,
    #[schema(format = DateTime)]
    created_at: String,
    /// Every task, newest first (`GET /api/batches/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    tasks: Option<Vec<TaskView>>,
    /// The tasks this call canceled (cancel only).
    #[serde(skip_serializing_if = "Option::is_none")]
    canceled: Option<Vec<TaskId>>,
    /// The tasks this call made (retry only).
    #[serde(skip_serializing_if = "Option::is_none")]
    retried: Option<Vec<RetriedTask>>,
}

/// A page of batches, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct BatchPage {
    batches: Vec<BatchView>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// `bat_` and a UUIDv7 (time-ordered, so listing by id is newest first).
fn new_batch_id() -> String {
    format!("bat_{}", uuid::Uuid::now_v7().simple())
}

fn batch_not_found() -> ApiError {
    ApiError::new(ErrorCode::BatchNotFound, "no such batch")
}

/// The batch if it exists and the caller may see it (its owner, when keys are on).
async fn load_batch(state: &AppState, caller: &Caller, id: &str) -> Result<Batch, ApiError> {
    let valid = id
        .strip_prefix("bat_")
        .is_some_and(|rest| rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(batch_not_found());
    }
    let batch = state
        .repo
        .get_batch(id)
        .await?
        .ok_or_else(batch_not_found)?;
    let owner = caller.owner().map(str::to_owned);
    if owner.is_some() && batch.owner != owner {
        return Err(batch_not_found());
    }
    Ok(batch)
}

/// Every task of a batch, newest first.
async fn batch_tasks(state: &AppState, id: &str) -> Result<Vec<Task>, ApiError> {
    let mut tasks = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .repo
            .list(&TaskFilter {
                batch_id: Some(id.to_owned()),
                before: before.clone(),
                limit: PAGE,
                ..TaskFilter::default()
            })
            .await?;
        let full = page.len() == PAGE;
        before = page.last().map(|t| t.id.clone());
        tasks.extend(page);
        if !full {
            return Ok(tasks);
        }
    }
}

/// `{batchId, total, counts, credits, done, …}`; with `tasks` when given.
async fn batch_view(
    state: &AppState,
    batch: &Batch,
    tasks: Option<&[Task]>,
) -> Result<BatchView, ApiError> {
    let counts = state.repo.batch_counts(&batch.id).await?;
    let total: i64 = counts.iter().map(|c| c.count).sum();
    let credits: i64 = counts.iter().map(|c| c.credits).sum();
    let done = counts.iter().all(|c| c.state.is_terminal());
    Ok(BatchView {
        batch_id: batch.id.clone(),
        prompt: batch.prompt.clone(),
        webhook_url: batch.webhook_url.clone(),
        total,
        submitted: batch.total,
        counts: counts.iter().map(|c| (c.state.as_str(), c.count)).collect(),
        credits,
        done,
        created_at: crate::clock::iso_time(batch.created_at),
        tasks: tasks.map(|tasks| tasks.iter().map(|t| task_view(t, None)).collect()),
        canceled: None,
        retried: None,
    })
}

/// Queue a batch: one task per source image, under one new batch id. With an
/// `Idempotency-Key`, a retry of the same request gets the first answer again.
#[utoipa::path(post, path = "/api/batches", tag = "batches",
    request_body(content = GenerateBody, description = "The body of /api/generate, without batchId"),
    params(IdempotencyKeyHeader),
    responses(
        (status = 200, description = "The batch and its tasks (or, with `Idempotent-Replayed: true`, the answer the key's first request got)", body = BatchCreated,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer is a replay"))),
        (status = 400, description = "Invalid request (the code names the field), or an invalid `Idempotency-Key`", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still being processed (`idempotency_key_in_flight`)", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was used with a different request (`idempotency_key_reused`)", body = ErrorBody),
        (status = 429, description = "Rate limit or the key's cap on unfinished tasks", body = ErrorBody),
    ))]
async fn create_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.limits.max_json_body_bytes)?;
    let fingerprint = Fingerprint::of("POST /api/batches", &body);
    let mut held = match idempotency::begin(&state, &caller, &headers, &fingerprint).await? {
        Begin::Proceed(held) => held,
        Begin::Answered(response) => return Ok(response),
    };
    let answer = queue_batch(&state, &caller, &body, held.as_mut()).await;
    Ok(idempotency::finish(held, answer.into_response()).await)
}

async fn queue_batch(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
    held: Option<&mut Held>,
) -> Result<Response, ApiError> {
    let request = GenerateRequest::from_json(&json_value(body)?, &request_policy(state))?;
    if request.batch_id.is_some() {
        return Err(ApiError::new(
            ErrorCode::UnsupportedField,
            "batchId is assigned by the server for /api/batches; leave it out",
        ));
    }
    let owner = caller.owner().map(str::to_owned);
    let id = new_batch_id();
    let tasks = build_tasks(state, caller, &request, Some(id.clone())).await?;
    // Held until the rows are written: the per-key cap cannot be passed by racing requests.
    let reservation = state.auth.reserve_tasks(caller, tasks.len()).await?;
    let batch = Batch {
        id: id.clone(),
        owner,
        prompt: request.prompt.as_str().to_owned(),
        webhook_url: request.webhook_url.clone(),
        total: i64::try_from(tasks.len()).unwrap_or(i64::MAX),
        // Its tasks' instant: a batch rebuilt from their records (reindex) is the same.
        created_at: tasks.first().map_or_else(now_ms, |t| t.created_at),
    };
    let answer = BatchCreated {
        success: true,
        batch_id: id.clone(),
        task_ids: tasks.iter().map(|t| t.id.clone()).collect(),
    };
    let response =
        idempotency::queue_and_answer(state, held, Some(&batch), &tasks, &answer).await?;
    drop(reservation);
    tracing::info!(batch_id = %id, count = tasks.len(), "batch queued");
    Ok(response)
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// 1–100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// List batches, newest first.
#[utoipa::path(get, path = "/api/batches", tag = "batches", params(ListQuery), responses(
    (status = 200, description = "A page of batches", body = BatchPage),
    (status = 400, description = "Invalid limit", body = ErrorBody),
))]
async fn list_batches(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::new(
            ErrorCode::InvalidLimit,
            format!("limit must be 1–{MAX_LIMIT}"),
        ));
    }
    let owner = caller.owner().map(|o| Some(o.to_owned()));
    let mut batches = state
        .repo
        .list_batches(owner, query.cursor, limit + 1)
        .await?;
    let more = batches.len() > limit;
    batches.truncate(limit);
    let next_cursor = more.then(|| batches.last().map(|b| b.id.clone())).flatten();
    let mut views = Vec::with_capacity(batches.len());
    for batch in &batches {
        views.push(batch_view(&state, batch, None).await?);
    }
    Ok(Json(BatchPage {
        batches: views,
        next_cursor,
    }))
}

/// A batch with counts per state, credits and every task.
#[utoipa::path(get, path = "/api/batches/{id}", tag = "batches", params(BatchPath), responses(
    (status = 200, description = "The batch", body = BatchView),
    (status = 404, description = "No such batch (or another key's)", body = ErrorBody),
))]
async fn get_batch(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(BatchPath { id }): PathParam<BatchPath>,
) -> Result<Json<BatchView>, ApiError> {
    let batch = load_batch(&state, &caller, &id).await?;
    let tasks = batch_tasks(&state, &batch.id).await?;
    Ok(Json(batch_view(&state, &batch, Some(&tasks)).await?))
}

/// Cancel every unfinished task of the batch.
#[utoipa::path(post, path = "/api/batches/{id}/cancel", tag = "batches", params(BatchPath), responses(
    (status = 200, description = "The batch, with `canceled`", body = BatchView),
    (status = 404, description = "No such batch", body = ErrorBody),
))]
async fn cancel_batch(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(BatchPath { id }): PathParam<BatchPath>,
) -> Result<Json<BatchView>, ApiError> {
    let batch = load_batch(&state, &caller, &id).await?;
    let mut canceled = Vec::new();
    for task in batch_tasks(&state, &batch.id).await? {
        if task.state.is_terminal() {
            continue;
        }
        match state.engine.cancel(&task.id).await {
            Ok(task) => canceled.push(task.id),
            // It finished (or was canceled) between the read and the cancel: nothing to do.
            Err(EngineError::Conflict { .. } | EngineError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(batch_id = %batch.id, count = canceled.len(), "batch canceled");
    let mut view = batch_view(&state, &batch, None).await?;
    view.canceled = Some(canceled);
    Ok(Json(view))
}

/// Retry the batch's failed and expired tasks, each once.
#[utoipa::path(post, path = "/api/batches/{id}/retry", tag = "batches", params(BatchPath), responses(
    (status = 200, description = "The batch, with `retried`", body = BatchView),
    (status = 404, description = "No such batch", body = ErrorBody),
))]
async fn retry_batch(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(BatchPath { id }): PathParam<BatchPath>,
) -> Result<Json<BatchView>, ApiError> {
    let batch = load_batch(&state, &caller, &id).await?;
    let tasks = batch_tasks(&state, &batch.id).await?;
    // A failed task already retried (by an earlier call) is not retried twice.
    let retried_before: HashSet<&str> = tasks
        .iter()
        .filter_map(|t| t.retry_of.as_ref().map(|r| r.as_str()))
        .collect();
    let mut retried = Vec::new();
    for task in &tasks {
        let failed = matches!(task.state, TaskState::Failed | TaskState::Expired);
        if !failed || retried_before.contains(task.id.as_str()) {
            continue;
        }
        match state.engine.retry(&task.id).await {
            Ok(new) => retried.push(RetriedTask {
                retry_of: task.id.clone(),
                task_id: new.id,
            }),
            Err(EngineError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    tracing::info!(batch_id = %batch.id, count = retried.len(), "batch failures retried");
    let mut view = batch_view(&state, &batch, None).await?;
    view.retried = Some(retried);
    Ok(Json(view))
}

/// The name of a result in the archive: its name in the bucket
/// (`{provider}-{taskId}-{n}.{ext}`, `n` from 0), so the two can be matched.
fn entry_name(task: &Task, index: usize, key: &str) -> String {
    match key.rsplit_once('/') {
        Some((_, name)) if !name.is_empty() => name.to_owned(),
        _ => format!("{}-{index}", task.id),
    }
}

/// One result in the archive: its name, its key, and when its task completed.
struct ZipEntry {
    name: String,
    key: String,
    modified_ms: i64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ZipQuery {
    /// Wait (up to 120 s) for an unfinished batch to finish instead of answering 409.
    wait: Option<bool>,
}

/// The longest `?wait=true` holds the request: the long-poll's bound.
const ZIP_WAIT: Duration = Duration::from_secs(120);

/// Unfinished and total tasks of the batch, and the counts as a phrase
/// (`2 succeeded, 1 running`).
async fn unfinished(state: &AppState, batch: &Batch) -> Result<(i64, i64, String), ApiError> {
    let counts = state.repo.batch_counts(&batch.id).await?;
    let total = counts.iter().map(|c| c.count).sum();
    let open = counts
        .iter()
        .filter(|c| !c.state.is_terminal())
        .map(|c| c.count)
        .sum();
    let phrase = counts
        .iter()
        .filter(|c| c.count > 0)
        .map(|c| format!("{} {}", c.count, c.state.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok((open, total, phrase))
}

/// Answers once every task of the batch is final; with `wait`, first waits up to
/// [`ZIP_WAIT`] for the last one (on the same event bus as the task long-poll), otherwise
/// (or when the wait runs out) refuses with the counts.
async fn ensure_finished(state: &AppState, batch: &Batch, wait: bool) -> Result<(), ApiError> {
    // Subscribe before counting, so a task ending between the two is not missed.
    let (mut receiver, _) = state.engine.events().subscribe_at();
    let deadline = tokio::time::Instant::now() + ZIP_WAIT;
    loop {
        let (open, total, phrase) = unfinished(state, batch).await?;
        if open == 0 {
            return Ok(());
        }
        let waited = wait && tokio::time::Instant::now() < deadline;
        let event_came = waited
            && loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break false,
                    () = state.streams_closing.cancelled() => break false,
                    received = receiver.recv() => match received {
                        Ok(event) if event.batch_id.as_deref() == Some(batch.id.as_str())
                            && event.is_terminal() => break true,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => break true,
                        Err(RecvError::Closed) => break false,
                    },
                }
            };
        if !event_came {
            let advice = if wait {
                format!(
                    "it did not finish within {} s of waiting; ask again",
                    ZIP_WAIT.as_secs()
                )
            } else {
                format!(
                    "ask again when it is, or with ?wait=true to wait up to {} s",
                    ZIP_WAIT.as_secs()
                )
            };
            return Err(ApiError::new(
                ErrorCode::BatchNotFinished,
                format!(
                    "batch {} is not finished: {open} of its {total} tasks are not final yet ({phrase}); {advice}",
                    batch.id
                ),
            ));
        }
    }
}

/// The batch's results as one ZIP, streamed from the bucket: each result under its bucket
/// name, dated when its task completed. Only a finished batch (409 otherwise, or wait
/// with `?wait=true`).
#[utoipa::path(get, path = "/api/batches/{id}/zip", tag = "batches", params(BatchPath, ZipQuery), responses(
    (status = 200, description = "The archive", content_type = "application/zip", body = Vec<u8>),
    (status = 400, description = "Invalid query", body = ErrorBody),
    (status = 404, description = "No such batch", body = ErrorBody),
    (status = 409, description = "The batch has unfinished tasks (the message counts them)", body = ErrorBody),
))]
async fn download_zip(
    State(state): State<AppState>,
    caller: Caller,
    PathParam(BatchPath { id }): PathParam<BatchPath>,
    query: Result<Query<ZipQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let batch = load_batch(&state, &caller, &id).await?;
    ensure_finished(&state, &batch, query.wait.unwrap_or(false)).await?;
    let mut tasks = batch_tasks(&state, &batch.id).await?;
    tasks.reverse(); // oldest first: the archive lists results in submission order
    let entries: Vec<ZipEntry> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Succeeded)
        .flat_map(|t| {
            let modified_ms = t.completed_at.unwrap_or(t.updated_at);
            t.result_keys
                .iter()
                .enumerate()
                .map(move |(i, key)| ZipEntry {
                    name: entry_name(t, i, key),
                    key: key.clone(),
                    modified_ms,
                })
        })
        .collect();
    tracing::info!(batch_id = %batch.id, entries = entries.len(), "streaming batch ZIP");
    let (sender, receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(ZIP_BUFFER_CHUNKS);
    let blobs = state.blobs.clone();
    let batch_id = batch.id.clone();
    tokio::spawn(async move {
        if let Err(e) = write_zip(&blobs, &entries, &sender).await {
            // Headers are gone already: the only way to tell the client is to break the
            // stream, so a truncated archive is never mistaken for a whole one.
            tracing::error!(batch_id = %batch_id, error = %e, "batch ZIP aborted");
            let _ = sender.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    let body = Body::from_stream(tokio_stream_from(receiver));
    let disposition = format!("attachment; filename=\"{}.zip\"", batch.id);
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

fn tokio_stream_from<T: Send + 'static>(
    receiver: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    })
}

#[derive(Debug, thiserror::Error)]
enum ZipError {
    #[error(transparent)]
    TooLarge(#[from] super::zip::TooLarge),
    #[error("reading {key} from the bucket: {message}")]
    Read { key: String, message: String },
    #[error("the client went away")]
    Gone,
}

/// Writes the archive into `sender`, one bucket chunk at a time.
async fn write_zip(
    blobs: &crate::storage::BlobStore,
    entries: &[ZipEntry],
    sender: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), ZipError> {
    let send =
        |chunk: Bytes| async move { sender.send(Ok(chunk)).await.map_err(|_| ZipError::Gone) };
    let mut zip = ZipWriter::new();
    for entry in entries {
        let key = &entry.key;
        let read_error = |message: String| ZipError::Read {
            key: key.clone(),
            message,
        };
        let object = blobs
            .get(key)
            .await
            .map_err(|e| read_error(e.to_string()))?;
        send(zip.start(&entry.name, entry.modified_ms)?).await?;
        let mut stream = object.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| read_error(e.to_string()))?;
            zip.data(&chunk)?;
            send(chunk).await?;
        }
        send(zip.finish_entry()?).await?;
    }
    send(zip.finish()?).await?;
    Ok(())
}
