//! `POST /api/generate`: validates, queues one task per source image in one transaction,
//! and answers at once. Each task carries its provider (the source's `provider`, else the
//! request's, else the operator's default); no provider is called inside the request, not
//! even the synchronous one.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::{ApiError, parse_json};
use crate::AppState;
use crate::domain::TaskId;
use crate::domain::request::{GenerateRequest, ProviderName, RequestPolicy, Source};
use crate::engine::now_ms;
use crate::storage::NewTask;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/generate", post(generate))
}

/// How this instance reads generation requests.
pub(super) fn request_policy(state: &AppState) -> RequestPolicy {
    RequestPolicy {
        default_provider: ProviderName::parse(&state.config.default_provider)
            .unwrap_or(ProviderName::Kie),
        gemini_model: state.config.gemini.model.clone(),
    }
}

/// One new task per source of a validated request (uploads must exist in the bucket).
pub(super) async fn build_tasks(
    state: &AppState,
    request: &GenerateRequest,
    batch_id: Option<String>,
    owner: Option<String>,
) -> Result<Vec<NewTask>, ApiError> {
    let mut references = Vec::with_capacity(request.references.len());
    for reference in &request.references {
        references.push(input_url(state, reference).await?);
    }
    let now = now_ms();
    let mut tasks = Vec::with_capacity(request.sources.len());
    for task_source in &request.sources {
        let (source, provider) = (&task_source.source, task_source.provider);
        if !state.engine.has_provider(provider.as_str()) {
            return Err(ApiError::bad_request(
                "unsupported_provider",
                format!(
                    "provider {:?} is not configured on this server",
                    provider.as_str()
                ),
            ));
        }
        let image_url = input_url(state, source).await?;
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
            owner: owner.clone(),
            // No token exists until the dispatcher issues one with the create call.
            callback_token_hash: String::new(),
            created_at: now,
            retry_of: None,
            webhook_url: request.webhook_url.clone(),
        });
    }
    Ok(tasks)
}

/// The URL the provider fetches an input from; uploads must exist in the bucket.
async fn input_url(state: &AppState, source: &Source) -> Result<String, ApiError> {
    match source {
        Source::Url { url } => Ok(url.clone()),
        Source::Upload { key } => {
            if !state.blobs.exists(key).await? {
                return Err(ApiError::bad_request(
                    "upload_not_found",
                    format!("{key} is not in the bucket; upload it with /api/upload first"),
                ));
            }
            Ok(state.blobs.url(key))
        }
    }
}

async fn generate(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let request = GenerateRequest::from_json(&parse_json(body)?, &request_policy(&state))?;
    let tasks = build_tasks(&state, &request, request.batch_id.clone(), None).await?;
    state.engine.enqueue(&tasks).await?;
    tracing::info!(count = tasks.len(), "tasks queued");

    let listed: Vec<Value> = tasks
        .iter()
        .map(|t| json!({"taskId": t.id, "sourceKey": t.source, "provider": t.provider}))
        .collect();
    let ids: Vec<&TaskId> = tasks.iter().map(|t| &t.id).collect();
    Ok(Json(json!({
        "success": true,
        "message": created_message(&request),
        "tasks": listed,
        "taskIds": ids,
        "failures": [],
    })))
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
