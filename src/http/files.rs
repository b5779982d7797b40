//! `GET /files/{key}`: objects of darkroom's own layout, streamed from the bucket with
//! their content type, so results and uploads open in a browser and the provider (or the
//! simulator) can fetch inputs when the bucket has no public URL. With presigned URLs
//! configured it redirects to a fresh one instead of streaming.
//!
//! With API keys on, the URLs darkroom hands out are signed (`?sig=…`, see
//! [`crate::storage::BlobStore::url`]) and only they are served: another owner's object,
//! an unsigned or a tampered URL are all the same 404 as a missing object. Browsers open
//! these URLs from `<img>` without headers, which is why a signature and not the bearer key
//! guards them.

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use super::path::PathParam;
use crate::AppState;
use crate::config::UrlMode;
use crate::domain::ErrorCode;
use crate::storage::BlobError;
use crate::storage::keys::{is_servable, serving_metadata};

/// Served objects are never documents: even a file a browser might sniff as HTML runs no
/// script and loads nothing.
const FILE_CSP: &str = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox";

pub fn router() -> Router<AppState> {
    Router::new().route("/files/{*key}", get(serve_file))
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct FileQuery {
    /// The signature darkroom put in the URL it handed out (when API keys are on).
    sig: Option<String>,
}

/// An object of darkroom's layout (`uploads/…`, `generated/…`, `kie-tasks/…`), streamed
/// from the bucket, or a redirect to a presigned URL in `presigned` URL mode.
#[utoipa::path(get, path = "/files/{key}", tag = "files",
    params(("key" = String, Path, description = "The object key, slashes included"), FileQuery),
    responses(
        (status = 200, description = "The object", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 302, description = "A presigned URL of the object (presigned URL mode)"),
        (status = 404, description = "No such file, or the signature is missing or wrong", body = super::error::ErrorBody),
    ))]
async fn serve_file(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    query: Result<Query<FileQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::new(ErrorCode::FileNotFound, "no such file");
    if !is_servable(&key) {
        return Err(not_found());
    }
    let sig = query.ok().and_then(|Query(q)| q.sig);
    if !state.blobs.file_access_ok(&key, sig.as_deref()) {
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
            (header::CONTENT_SECURITY_POLICY, FILE_CSP.to_owned()),
        ],
        body,
    )
        .into_response())
}
