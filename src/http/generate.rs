//! `POST /api/generate`: validates, queues one task per source image in one transaction,
//! and answers at once. The provider is never called inside the request.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::{ApiError, parse_json};
use crate::AppState;
use crate::domain::TaskId;
use crate::domain::request::{GenerateRequest, Source};
use crate::engine::now_ms;
use crate::storage::NewTask;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/generate", post(generate))
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
    let request = GenerateRequest::from_json(&parse_json(body)?)?;
    let mut references = Vec::with_capacity(request.references.len());
    for reference in &request.references {
        references.push(input_url(&state, reference).await?);
    }
    let now = now_ms();
    let mut tasks = Vec::with_capacity(request.sources.len());
    for source in &request.sources {
        let image_url = input_url(&state, source).await?;
        let mut input_urls = vec![image_url.clone()];
        input_urls.extend(references.iter().cloned());
        tasks.push(NewTask {
            id: TaskId::new(),
            provider: state.engine.provider_name().to_owned(),
            model: request.model.as_str().to_owned(),
            prompt: request.prompt.as_str().to_owned(),
            source: source.label().to_owned(),
            image_url,
            input_urls,
            aspect_ratio: request.aspect_ratio.as_str().to_owned(),
            output_format: request.output_format.as_str().to_owned(),
            priority: request.priority,
            batch_id: request.batch_id.clone(),
            owner: None,
            // No token exists until the dispatcher issues one with the create call.
            callback_token_hash: String::new(),
            created_at: now,
            retry_of: None,
        });
    }
    state.engine.enqueue(&tasks).await?;
    tracing::info!(count = tasks.len(), "tasks queued");

    let listed: Vec<Value> = tasks
        .iter()
        .map(|t| json!({"taskId": t.id, "sourceKey": t.source}))
        .collect();
    let ids: Vec<&TaskId> = tasks.iter().map(|t| &t.id).collect();
    Ok(Json(json!({
        "success": true,
        "message": format!("Created {} KIE task(s)", tasks.len()),
        "tasks": listed,
        "taskIds": ids,
        "failures": [],
    })))
}
