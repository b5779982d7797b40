//! `GET /files/{key}`: objects of darkroom's own layout, streamed from the bucket with
//! their content type, so results and uploads open in a browser and the provider (or the
//! simulator) can fetch inputs when the bucket has no public URL. With presigned URLs
//! configured it redirects to a fresh one instead of streaming.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use crate::AppState;
use crate::config::UrlMode;
use crate::storage::BlobError;
use crate::storage::keys::{is_servable, serving_metadata};

pub fn router() -> Router<AppState> {
    Router::new().route("/files/{*key}", get(serve_file))
}

async fn serve_file(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found("file_not_found", "no such file");
    if !is_servable(&key) {
        return Err(not_found());
    }
    let (content_type, cache_control) = serving_metadata(&key).ok_or_else(not_found)?;
    if state.blobs.url_mode() == UrlMode::Presigned {
        // The bucket serves the bytes; the URL clients hold stays stable.
        let url = state
            .blobs
            .presigned_get(&key, state.blobs.presign_ttl())
            .await?;
        return Ok((
            StatusCode::FOUND,
            [
                (header::LOCATION, url.to_string()),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response());
    }
    let object = match state.blobs.get(&key).await {
        Ok(object) => object,
        Err(BlobError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let size = object.meta.size;
    let body = Body::from_stream(object.into_stream());
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CACHE_CONTROL, cache_control.to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}
