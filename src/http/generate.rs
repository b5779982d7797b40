//! `POST /api/generate`: validates, queues one task per source image in one transaction,
//! and answers at once. Each task carries its provider (the source's `provider`, else the
//! request's, else the operator's default); no provider is called inside the request, not
//! even the synchronous one.
//!
//! Every task records its owner (the API key's name; none when keys are off). A caller may
//! use only its own uploads and results as inputs: anyone else's is refused exactly like a
//! missing one.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody, body_bytes, json_value};
use super::idempotency::{self, Begin, Fingerprint, Held, IdempotencyKeyHeader};
use crate::AppState;
use crate::clock::now_ms;
use crate::domain::ErrorCode;
use crate::domain::TaskId;
use crate::domain::request::{
    GenerateBody, GenerateRequest, ProviderName, RequestPolicy, Source, parse_upload_key,
};
use crate::storage::NewTask;
use crate::storage::keys;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(generate))
}

/// A queued task and the source it was made for.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct QueuedTask {
    task_id: TaskId,
    /// The upload key or URL of its source image.
    source_key: String,
    provider: String,
}

/// A source the request named that got no task (always empty: a bad source refuses the
/// whole request with 400; kept because the original's clients read it).
#[derive(Debug, Serialize, ToSchema)]
struct Failure {
    source: String,
    error: String,
}

/// `POST /api/generate`'s answer: the original's shape, plus `taskIds`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct GenerateAnswer {
    success: bool,
    /// "Created N KIE task(s)".
    message: String,
    tasks: Vec<QueuedTask>,
    task_ids: Vec<TaskId>,
    failures: Vec<Failure>,
}

/// How this instance reads generation requests.
pub(super) fn request_policy(state: &AppState) -> RequestPolicy {
    RequestPolicy {
        default_provider: state.config.default_provider,
        gemini_model: state.config.gemini.model.clone(),
    }
}

/// One new task per source of a validated request, owned by the caller (uploads must exist
/// and be the caller's own).
pub(super) async fn build_tasks(
    state: &AppState,
    caller: &Caller,
    request: &GenerateRequest,
    batch_id: Option<String>,
) -> Result<Vec<NewTask>, ApiError> {
    let mut references = Vec::with_capacity(request.references.len());
    for reference in &request.references {
        references.push(input_url(state, caller, reference).await?);
    }
    let now = now_ms();
    let mut tasks = Vec::with_capacity(request.sources.len());
    for task_source in &request.sources {
        let (source, provider) = (&task_source.source, task_source.provider);
        if !state.engine.has_provider(provider.as_str()) {
            return Err(ApiError::new(
                ErrorCode::UnsupportedProvider,
                format!(
                    "provider {:?} is not configured on this server",
                    provider.as_str()
                ),
            ));
        }
        let image_url = input_url(state, caller, source).await?;
        let mut input_urls = vec![image_url.clone()];
        input_urls.extend(references.iter().cloned());
        tasks.push(NewTask {
            id: TaskId::new(),
            provider: provider.as_str().to_owned(),
            model: request.model_for(provider).to_owned(),
            prompt: request.prompt.as_str().to_owned(),
            source: source.label().to_owned(),
            image_url,
            input_urls,
            aspect_ratio: request.aspect_ratio.as_str().to_owned(),
            output_format: request.output_format.as_str().to_owned(),
            priority: request.priority,
            batch_id: batch_id.clone(),
            owner: caller.owner().map(str::to_owned),
            // No token exists until the dispatcher issues one with the create call.
            callback_token_hash: String::new(),
            created_at: now,
            retry_of: None,
            webhook_url: request.webhook_url.clone(),
            fallback: request.fallback,
        });
    }
    Ok(tasks)
}

/// The URL the provider fetches an input from. Uploads must exist and belong to the
/// caller; a URL of one of our own objects is treated as that object (so an unsigned or
/// someone else's URL cannot smuggle another owner's image into a task).
async fn input_url(state: &AppState, caller: &Caller, source: &Source) -> Result<String, ApiError> {
    match source {
        Source::Url { url } => match state.blobs.key_for_url(url) {
            Some(key) => own_object_url(state, caller, &key, url).await,
            None => Ok(url.clone()),
        },
        Source::Upload { key } => own_object_url(state, caller, key, key).await,
    }
}

/// The stable (signed, when keys are on) URL of our own object `key`, if the caller may use
/// it as an input: its own upload, or a result of its own task.
async fn own_object_url(
    state: &AppState,
    caller: &Caller,
    key: &str,
    named: &str,
) -> Result<String, ApiError> {
    let missing = || {
        ApiError::new(
            ErrorCode::UploadNotFound,
            format!("{named} is not in the bucket; upload it with /api/upload first"),
        )
    };
    let owner_ok = if let Ok(key) = parse_upload_key(key) {
        match caller.owner() {
            // Keys off: every upload is everyone's, including those made before the
            // uploads table existed; the bucket is the truth.
            None => true,
            Some(_) => match state.access.upload_owner(&key).await? {
                Some(owner) => caller.may_see(owner.as_deref()),
                None => false,
            },
        }
    } else if let Some(task_id) = keys::task_of_generated(key) {
        let task = state.repo.get(&task_id).await?;
        caller.visible(task).is_some()
    } else {
        false
    };
    if !owner_ok || !state.blobs.exists(key).await? {
        return Err(missing());
    }
    Ok(state.blobs.url(key))
}

/// Queue one task per source image. Nothing talks to a provider inside the request.
/// With an `Idempotency-Key`, a retry of the same request gets the first answer again.
#[utoipa::path(post, path = "/api/generate", tag = "generation", request_body = GenerateBody,
    params(IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Tasks queued (or, with `Idempotent-Replayed: true`, the answer the key's first request got)", body = GenerateAnswer,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer is a replay"))),
        (status = 400, description = "Invalid request (the code names the field), or an invalid `Idempotency-Key`", body = ErrorBody),
        (status = 409, description = "A request with this `Idempotency-Key` is still being processed (`idempotency_key_in_flight`)", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was used with a different request (`idempotency_key_reused`)", body = ErrorBody),
        (status = 429, description = "Rate limit or the key's cap on unfinished tasks", body = ErrorBody),
    ))]
async fn generate(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, state.config.limits.max_json_body_bytes)?;
    let fingerprint = Fingerprint::of("POST /api/generate", &body);
    let mut held = match idempotency::begin(&state, &caller, &headers, &fingerprint).await? {
        Begin::Proceed(held) => held,
        Begin::Answered(response) => return Ok(response),
    };
    let answer = queue_generation(&state, &caller, &body, held.as_mut()).await;
    Ok(idempotency::finish(held, answer.into_response()).await)
}

async fn queue_generation(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
    held: Option<&mut Held>,
) -> Result<Response, ApiError> {
    let request = GenerateRequest::from_json(&json_value(body)?, &request_policy(state))?;
    let tasks = build_tasks(state, caller, &request, request.batch_id.clone()).await?;
    let answer = GenerateAnswer {
        success: true,
        message: created_message(&request),
        tasks: tasks
            .iter()
            .map(|t| QueuedTask {
                task_id: t.id.clone(),
                source_key: t.source.clone(),
                provider: t.provider.clone(),
            })
            .collect(),
        task_ids: tasks.iter().map(|t| t.id.clone()).collect(),
        failures: Vec::new(),
    };
    // Held until the rows are written: the per-key cap cannot be passed by racing requests.
    let reservation = state.auth.reserve_tasks(caller, tasks.len()).await?;
    let response = idempotency::queue_and_answer(state, held, None, &tasks, &answer).await?;
    drop(reservation);
    tracing::info!(
        count = tasks.len(),
        owner = caller.owner().unwrap_or("-"),
        "tasks queued"
    );
    Ok(response)
}

/// The original said "Created N KIE task(s)"; that wording stays for one-provider requests.
fn created_message(request: &GenerateRequest) -> String {
    let count = |p: ProviderName| request.sources.iter().filter(|s| s.provider == p).count();
    let counts: Vec<(ProviderName, usize)> = ProviderName::ALL
        .into_iter()
        .map(|p| (p, count(p)))
        .filter(|(_, n)| *n > 0)
        .collect();
    match counts.as_slice() {
        [(provider, n)] => format!("Created {n} {} task(s)", provider.label()),
        _ => {
            let parts: Vec<String> = counts
                .iter()
                .map(|(p, n)| format!("{n} {}", p.label()))
                .collect();
            format!(
                "Created {} task(s): {}",
                request.sources.len(),
                parts.join(", ")
            )
        }
    }
}
