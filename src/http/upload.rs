//! `POST /api/upload`: reference images into `uploads/`, in the original's answer shape.
//!
//! Each file is spooled to disk (bounded by the per-file cap), identified by its bytes,
//! checked header-first against the dimension and pixel caps, walked whole for truncation
//! and polyglots, and, by default, stored without its metadata (EXIF/GPS, XMP, comments;
//! see [`crate::domain::sanitize`]). Memory stays bounded whatever a file declares.

use axum::Json;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::AppState;
use crate::config::Config;
use crate::domain::image::{ImageError, ImageInfo, ImageLimits, inspect_reader};
use crate::storage::keys;

const FIELD: &str = "files";

pub fn router(config: &Config) -> OpenApiRouter<AppState> {
    let limits = &config.limits;
    // Room for every allowed file at its cap, plus multipart framing.
    let body_limit = (limits.max_upload_bytes as usize)
        .saturating_mul(limits.max_upload_files)
        .saturating_add(1024 * 1024);
    let (schemas, paths, method_router) = routes!(upload);
    OpenApiRouter::new().routes((
        schemas,
        paths,
        method_router.layer(DefaultBodyLimit::max(body_limit)),
    ))
}

/// A 400 from `/api/upload`: the answer with every file's refusal when files were read,
/// the plain error when the body was not usable multipart.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the two answer shapes; each is built where it is sent
enum UploadRefused {
    Files(UploadAnswer),
    Request(ErrorBody),
}

/// The multipart form `/api/upload` reads.
#[derive(ToSchema)]
#[allow(dead_code)] // describes the wire format; the handler streams the fields itself
struct UploadForm {
    /// One or more images (PNG, JPEG or WebP), each within the size and pixel caps.
    #[schema(content_media_type = "application/octet-stream", min_items = 1)]
    files: Vec<Vec<u8>>,
}

/// A stored upload: pass `key` in `uploads` of `/api/generate`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Uploaded {
    key: String,
    url: String,
    filename: String,
    size: u64,
    content_type: &'static str,
}

/// A file that was refused, and why.
#[derive(Serialize, ToSchema)]
struct FileError {
    filename: String,
    code: &'static str,
    error: String,
}

/// `POST /api/upload`'s answer: the original's shape, with a code per refused file.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UploadAnswer {
    success: bool,
    uploaded: Vec<Uploaded>,
    total_count: usize,
    uploaded_count: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FileError>,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

fn multipart_error(e: impl std::fmt::Display, status: StatusCode) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "body_too_large",
            "the upload is larger than the server accepts",
        )
    } else {
        ApiError::bad_request(
            "invalid_multipart",
            format!("the multipart body could not be read: {e}"),
        )
    }
}

/// Spools one file field to a temporary file, up to `max` bytes. Past the cap the rest is
/// drained (so the next field can be read) and `None` is returned.
async fn spool_capped(
    field: &mut Field<'_>,
    max: u64,
) -> Result<Option<tempfile::NamedTempFile>, ApiError> {
    use std::io::Write;
    let spool = tempfile::NamedTempFile::new().map_err(ApiError::internal)?;
    let mut out = std::io::BufWriter::new(spool.reopen().map_err(ApiError::internal)?);
    let mut size = 0u64;
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multipart_error(&e, e.status()))?
    {
        size += chunk.len() as u64;
        if size <= max {
            out.write_all(&chunk).map_err(ApiError::internal)?;
        }
    }
    out.flush().map_err(ApiError::internal)?;
    Ok((size <= max).then_some(spool))
}

/// Inspects a spooled file and, when `strip`, makes its metadata-free copy. The outer error
/// is ours (500), the inner one the client's file (listed in `errors`).
fn check_file(
    spool: tempfile::NamedTempFile,
    limits: ImageLimits,
    strip: bool,
) -> Result<Result<(ImageInfo, tempfile::NamedTempFile), ImageError>, ApiError> {
    let reader = std::io::BufReader::new(spool.reopen().map_err(ApiError::internal)?);
    let info = match inspect_reader(reader, limits) {
        Ok(info) => info,
        Err(e) => return Ok(Err(e)),
    };
    let stored = if strip {
        strip_metadata(&spool, info.kind)?
    } else {
        spool
    };
    Ok(Ok((info, stored)))
}

/// A copy of `spool` without metadata. The file was already walked whole by
/// `inspect_reader`, so a failure here is ours, not the client's.
fn strip_metadata(
    spool: &tempfile::NamedTempFile,
    kind: crate::domain::image::ImageKind,
) -> Result<tempfile::NamedTempFile, ApiError> {
    use std::io::Write;
    let stripped = tempfile::NamedTempFile::new().map_err(ApiError::internal)?;
    let mut input = std::io::BufReader::new(spool.reopen().map_err(ApiError::internal)?);
    let mut output = std::io::BufWriter::new(stripped.reopen().map_err(ApiError::internal)?);
    let report = crate::domain::sanitize::strip_metadata(kind, &mut input, &mut output)
        .map_err(ApiError::internal)?;
    output.flush().map_err(ApiError::internal)?;
    if report.removed_bytes > 0 {
        tracing::debug!(
            removed_bytes = report.removed_bytes,
            "upload metadata removed"
        );
    }
    Ok(stripped)
}

/// Reads and discards the rest of a field.
async fn drain(field: &mut Field<'_>) -> Result<(), ApiError> {
    while field
        .chunk()
        .await
        .map_err(|e| multipart_error(&e, e.status()))?
        .is_some()
    {}
    Ok(())
}

/// Upload reference images (multipart field `files`, one or many) into `uploads/`.
/// Each file is identified by its bytes, checked whole and stored without its metadata.
#[utoipa::path(post, path = "/api/upload", tag = "generation",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "Stored files, and any refused ones in `errors`", body = UploadAnswer),
        (status = 400, description = "Every file refused (`UploadAnswer` with `errors`), or no usable multipart body (`ErrorBody`)", body = UploadRefused),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorBody),
    ))]
async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(
            "invalid_multipart",
            format!(
                "send multipart/form-data with the images in the field \"{FIELD}\" ({})",
                e.body_text()
            ),
        )
    })?;
    let limits = &state.config.limits;
    let image_limits = ImageLimits {
        max_dimension: limits.max_image_dimension,
        max_pixels: limits.max_image_pixels,
    };
    let mut uploaded = Vec::new();
    let mut errors = Vec::new();
    let mut total = 0usize;

    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, e.status()))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        let filename = field
            .file_name()
            .unwrap_or("(unnamed)")
            .chars()
            .take(255)
            .collect::<String>();
        if name != FIELD {
            // Drain it, but say so: nothing the client sent is dropped silently.
            drain(&mut field).await?;
            errors.push(FileError {
                filename: name.clone(),
                code: "unexpected_field",
                error: format!("field {name:?} is not read; send images in the field \"{FIELD}\""),
            });
            continue;
        }
        total += 1;
        if total > limits.max_upload_files {
            drain(&mut field).await?;
            errors.push(FileError {
                filename,
                code: "too_many_files",
                error: format!("at most {} files per request", limits.max_upload_files),
            });
            continue;
        }
        let Some(spool) = spool_capped(&mut field, limits.max_upload_bytes).await? else {
            errors.push(FileError {
                filename,
                code: "file_too_large",
                error: format!("the file is larger than {} bytes", limits.max_upload_bytes),
            });
            continue;
        };
        // Reading the whole file is blocking work: off the async workers.
        let strip = limits.strip_upload_metadata;
        let checked = tokio::task::spawn_blocking(move || check_file(spool, image_limits, strip))
            .await
            .map_err(ApiError::internal)??;
        let (info, stored) = match checked {
            Ok(checked) => checked,
            Err(e) => {
                errors.push(FileError {
                    filename,
                    code: e.code(),
                    error: e.to_string(),
                });
                continue;
            }
        };
        let spec = keys::upload(info.kind);
        let size = stored
            .as_file()
            .metadata()
            .map_err(ApiError::internal)?
            .len();
        state.blobs.put_file(&spec, stored.path(), false).await?;
        // The owner is recorded after the object is written: a row never names a missing
        // object, and an object without a row is usable by no key.
        state
            .access
            .record_upload(&spec.key, caller.owner(), crate::engine::now_ms())
            .await?;
        tracing::info!(key = %spec.key, bytes = size, width = info.width, height = info.height, "upload stored");
        uploaded.push(Uploaded {
            url: state.blobs.url(&spec.key),
            key: spec.key,
            filename,
            size,
            content_type: info.kind.content_type(),
        });
    }

    if total == 0 {
        return Err(ApiError::bad_request(
            "no_files",
            format!(
                "no files were sent; send one or more images in the multipart field \"{FIELD}\""
            ),
        ));
    }
    let uploaded_count = uploaded.len();
    let message = format!("Uploaded {uploaded_count} of {total} file(s)");
    let (status, error, code) = if uploaded_count == 0 {
        (
            StatusCode::BAD_REQUEST,
            Some("no file was accepted; see errors".to_owned()),
            Some("no_valid_files"),
        )
    } else {
        (StatusCode::OK, None, None)
    };
    let answer = UploadAnswer {
        success: uploaded_count > 0,
        uploaded,
        total_count: total,
        uploaded_count,
        errors,
        message,
        error,
        code,
    };
    Ok((status, Json(answer)).into_response())
}
