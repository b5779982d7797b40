//! `POST /api/upload`: reference images into `uploads/`, in the original's answer shape.
//!
//! Each file is spooled to disk (bounded by the per-file cap), identified by its bytes,
//! checked header-first against the dimension and pixel caps, walked whole for truncation
//! and polyglots, and, by default, stored without its metadata (EXIF/GPS, XMP, comments;
//! see [`crate::domain::sanitize`]). Memory stays bounded whatever a file declares.
//!
//! Every file gets its own outcome. A file storage refused (the bucket, the database
//! record of its owner, or the local spool: full, read-only, failing) is an entry in
//! `errors` like a bad image, and the files stored before it stay reported; an object
//! whose record failed is removed, and a request that ends without its answer removes what
//! it stored. No object is left that no client knows about.

use axum::Json;
use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::idempotency::{self, Begin, Fingerprint, IdempotencyKeyHeader};
use crate::AppState;
use crate::config::Config;
use crate::domain::ErrorCode;
use crate::domain::image::{ImageError, ImageInfo, ImageLimits, inspect_reader};
use crate::domain::size;
use crate::storage::{StorageFault, keys};

const FIELD: &str = "files";

pub fn router(config: &Config) -> OpenApiRouter<AppState> {
    let body_limit = body_limit(config);
    let (schemas, paths, method_router) = routes!(upload);
    OpenApiRouter::new().routes((
        schemas,
        paths,
        method_router.layer(DefaultBodyLimit::max(body_limit)),
    ))
}

/// Room for every allowed file at its cap, plus multipart framing.
fn body_limit(config: &Config) -> usize {
    let limits = &config.limits;
    (limits.max_upload_bytes as usize)
        .saturating_mul(limits.max_upload_files)
        .saturating_add(1024 * 1024)
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
        ApiError::with_status(
            status,
            ErrorCode::BodyTooLarge,
            "the upload is larger than the server accepts",
        )
    } else {
        ApiError::new(
            ErrorCode::InvalidMultipart,
            format!("the multipart body could not be read: {e}"),
        )
    }
}

/// What spooling one file field came to.
enum Spool {
    Ready(tempfile::NamedTempFile),
    /// Larger than the per-file cap (the rest of the field was drained).
    TooLarge,
    /// The temporary file could not be written (the rest of the field was drained).
    NotStored(ApiError),
}

/// A local temporary file that could not be made or written: a storage fault of the
/// server's temporary space when it is one.
fn spool_error(e: std::io::Error) -> ApiError {
    match StorageFault::of_io(&e) {
        Some(fault) => ApiError::storage(
            fault,
            "the server's temporary space",
            format!("upload spool file: {e}"),
        ),
        None => ApiError::internal(format!("upload spool file: {e}")),
    }
}

/// Spools one file field to a temporary file, up to `max` bytes. Past the cap, or once the
/// file cannot be written, the rest is drained (so the next field can be read). Only a
/// body that cannot be read is an error of the whole request.
async fn spool_capped(
    field: &mut Field<'_>,
    max: u64,
    fingerprint: &mut Fingerprint,
) -> Result<Spool, ApiError> {
    use std::io::Write;
    let opened = tempfile::NamedTempFile::new().and_then(|spool| {
        let out = std::io::BufWriter::new(spool.reopen()?);
        Ok((spool, out))
    });
    let (spool, mut out) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            drain(field, fingerprint).await?;
            return Ok(Spool::NotStored(spool_error(e)));
        }
    };
    let mut size = 0u64;
    let mut failed = None;
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multipart_error(&e, e.status()))?
    {
        fingerprint.update(&chunk);
        size += chunk.len() as u64;
        if size <= max && failed.is_none() {
            failed = out.write_all(&chunk).err();
        }
    }
    if failed.is_none() {
        failed = out.flush().err();
    }
    // `spool` is removed when dropped, on every path that does not return it.
    Ok(match failed {
        Some(e) => Spool::NotStored(spool_error(e)),
        None if size > max => Spool::TooLarge,
        None => Spool::Ready(spool),
    })
}

/// Why a file was not stored: its bytes (the client's, listed with the image's code) or
/// our side (storage or internal, listed with the code an [`ApiError`] carries).
enum Refused {
    Image(ImageError),
    NotStored(ApiError),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Self::NotStored(e)
    }
}

/// Inspects a spooled file and, when `strip`, makes its metadata-free copy.
fn check_file(
    spool: tempfile::NamedTempFile,
    limits: ImageLimits,
    strip: bool,
) -> Result<(ImageInfo, tempfile::NamedTempFile), Refused> {
    let reader = std::io::BufReader::new(spool.reopen().map_err(spool_error)?);
    let info = inspect_reader(reader, limits).map_err(Refused::Image)?;
    let stored = if strip {
        strip_metadata(&spool, info.kind)?
    } else {
        spool
    };
    Ok((info, stored))
}

/// A copy of `spool` without metadata. The file was already walked whole by
/// `inspect_reader`, so a failure here is ours, not the client's.
fn strip_metadata(
    spool: &tempfile::NamedTempFile,
    kind: crate::domain::image::ImageKind,
) -> Result<tempfile::NamedTempFile, ApiError> {
    use std::io::Write;
    let stripped = tempfile::NamedTempFile::new().map_err(spool_error)?;
    let mut input = std::io::BufReader::new(spool.reopen().map_err(spool_error)?);
    let mut output = std::io::BufWriter::new(stripped.reopen().map_err(spool_error)?);
    let report = crate::domain::sanitize::strip_metadata(kind, &mut input, &mut output)
        .map_err(ApiError::internal)?;
    output.flush().map_err(spool_error)?;
    if report.removed_bytes > 0 {
        tracing::debug!(
            removed_bytes = report.removed_bytes,
            "upload metadata removed"
        );
    }
    Ok(stripped)
}

/// The uploads this request has stored (or is storing). Unless the answer that reports them
/// is sent, they are removed, record and object: a request that fails midway (its body cut
/// off or too large) or is dropped (the client went away) leaves nothing behind that no
/// client knows about.
struct StoredUploads {
    state: AppState,
    keys: Vec<String>,
}

impl StoredUploads {
    /// The answer reports them: they stay.
    fn keep(mut self) {
        self.keys.clear();
    }
}

impl Drop for StoredUploads {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.keys);
        let state = self.state.clone();
        tracing::warn!(
            uploads = keys.len(),
            "upload request ended before its answer; removing the files it stored"
        );
        match tokio::runtime::Handle::try_current() {
            // Drop cannot wait: the removal runs on its own.
            Ok(runtime) => drop(runtime.spawn(async move {
                for key in keys {
                    if let Err(e) = state.access.forget_upload(&key).await {
                        tracing::error!(key = %key, error = %e, "removing the record of an unreported upload failed");
                    }
                    remove_object(&state, &key).await;
                }
            })),
            Err(_) => tracing::error!(
                uploads = keys.len(),
                "no runtime to remove unreported uploads; their objects are left behind"
            ),
        }
    }
}

/// Removes an object nobody may use; a failure is logged (the object is left behind).
async fn remove_object(state: &AppState, key: &str) {
    if let Err(e) = state.blobs.delete(key).await {
        tracing::error!(key = %key, error = %e, "removing an upload that could not be recorded failed; the object is left behind");
    }
}

/// Checks one spooled file and stores it: the object, then the record of its owner. A
/// record that fails takes the object with it, so a stored upload always has both.
async fn store_file(
    state: &AppState,
    owner: Option<&str>,
    spool: tempfile::NamedTempFile,
    stored: &mut StoredUploads,
) -> Result<(String, ImageInfo, u64), Refused> {
    let image_limits = state.config.image_limits();
    let strip = state.config.limits.strip_upload_metadata;
    // Reading the whole file is blocking work: off the async workers.
    let (info, file) = tokio::task::spawn_blocking(move || check_file(spool, image_limits, strip))
        .await
        .map_err(ApiError::internal)??;
    let spec = keys::upload(info.kind);
    let size = file.as_file().metadata().map_err(spool_error)?.len();
    // Listed before the write, so a request dropped mid-write still removes it.
    stored.keys.push(spec.key.clone());
    if let Err(e) = state.blobs.put_file(&spec, file.path(), false).await {
        // A refused write leaves nothing under the key (object_store removes its staging
        // file; an aborted multipart upload leaves no object).
        stored.keys.pop();
        return Err(ApiError::from(e).into());
    }
    // The owner is recorded after the object is written: a row never names a missing object.
    if let Err(e) = state
        .access
        .record_upload(&spec.key, owner, crate::clock::now_ms())
        .await
    {
        // ... and an object whose record failed is removed: no key could use it.
        stored.keys.pop();
        remove_object(state, &spec.key).await;
        return Err(ApiError::from(e).into());
    }
    tracing::info!(key = %spec.key, bytes = size, width = info.width, height = info.height, "upload stored");
    Ok((spec.key, info, size))
}

/// Reads and discards the rest of a field (into the request's fingerprint).
async fn drain(field: &mut Field<'_>, fingerprint: &mut Fingerprint) -> Result<(), ApiError> {
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| multipart_error(&e, e.status()))?
    {
        fingerprint.update(&chunk);
    }
    Ok(())
}

/// What the files of one request came to.
#[derive(Default)]
struct Outcome {
    uploaded: Vec<Uploaded>,
    errors: Vec<FileError>,
    total: usize,
    /// The first file kept out by our side, preferring a storage fault (503) to an internal
    /// error (500): the request's status and code when no file was stored.
    server_error: Option<ApiError>,
}

impl Outcome {
    fn refused(&mut self, filename: String, code: &'static str, error: String) {
        self.errors.push(FileError {
            filename,
            code,
            error,
        });
    }

    /// A file our side could not store: an entry in `errors` with the stable code and
    /// sentence, and its cause logged (once a minute with a count when it repeats, as a
    /// full disk makes it do).
    fn not_stored(&mut self, filename: String, e: ApiError) {
        if let Some(cause) = e.cause()
            && let Some(repeated) = crate::log_throttle::errors().admit(cause)
        {
            tracing::error!(code = e.code, error = %cause, repeated, "an upload could not be stored");
        }
        self.refused(filename, e.code, e.message.clone());
        let storage = e.status == StatusCode::SERVICE_UNAVAILABLE;
        match &self.server_error {
            Some(first) if first.status == StatusCode::SERVICE_UNAVAILABLE || !storage => {}
            _ => self.server_error = Some(e),
        }
    }

    /// 200 when at least one file was stored (the others in `errors`, as the original did);
    /// with none stored, 503 and the storage code when storage kept a file out (trying
    /// again later may work), 500 when an internal error did, else 400 `no_valid_files`.
    fn into_response(self) -> Response {
        let uploaded_count = self.uploaded.len();
        let message = format!("Uploaded {uploaded_count} of {} file(s)", self.total);
        let (status, error, code) = match (uploaded_count, self.server_error) {
            (0, Some(e)) => (e.status, Some(e.message), Some(e.code)),
            (0, None) => (
                StatusCode::BAD_REQUEST,
                Some("no file was accepted; see errors".to_owned()),
                Some(ErrorCode::NoValidFiles.as_str()),
            ),
            _ => (StatusCode::OK, None, None),
        };
        let answer = UploadAnswer {
            success: uploaded_count > 0,
            uploaded: self.uploaded,
            total_count: self.total,
            uploaded_count,
            errors: self.errors,
            message,
            error,
            code,
        };
        (status, Json(answer)).into_response()
    }
}

/// Upload reference images (multipart field `files`, one or many) into `uploads/`.
/// Each file is identified by its bytes, checked whole and stored without its metadata.
/// Every file gets its own outcome: stored (in `uploaded`) or refused (in `errors`, with a
/// code), whether the file was bad or storage refused it; files stored are never lost
/// behind an error of the whole request.
#[utoipa::path(post, path = "/api/upload", tag = "generation",
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    params(IdempotencyKeyHeader),
    responses(
        (status = 200, description = "At least one file stored; any file refused (bad image, or storage refused it: `storage_full`, `storage_read_only`, `storage_unavailable`, `internal_error`) is in `errors`. With `Idempotent-Replayed: true`, the answer the key's first request got", body = UploadAnswer,
            headers(("Idempotent-Replayed" = String, description = "`true` when this answer is a replay"))),
        (status = 400, description = "Every file refused for what it is (`UploadAnswer` with `errors` and code `no_valid_files`), or no usable multipart body or an invalid `Idempotency-Key` (`ErrorBody`)", body = UploadRefused),
        (status = 409, description = "A request with this `Idempotency-Key` is still being processed (`idempotency_key_in_flight`)", body = ErrorBody),
        (status = 422, description = "This `Idempotency-Key` was used with a different request (`idempotency_key_reused`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the server accepts; nothing is kept", body = ErrorBody),
        (status = 500, description = "No file stored because of an internal error (`UploadAnswer` with code `internal_error`); the cause is logged", body = UploadAnswer),
        (status = 503, description = "No file stored because storage refused it: the bucket, the database or the server's temporary space is full, read-only or failing (`UploadAnswer` with code `storage_full`, `storage_read_only` or `storage_unavailable`, and each file in `errors`); try again later", body = UploadAnswer),
    ))]
async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidMultipart,
            format!(
                "send multipart/form-data with the images in the field \"{FIELD}\" ({})",
                e.body_text()
            ),
        )
    })?;
    let mut held =
        match idempotency::begin_upload(&state, &caller, &headers, &mut multipart).await? {
            Begin::Proceed(held) => held,
            Begin::Answered(response) => return Ok(response),
        };
    let mut fingerprint = Fingerprint::new(held.is_some(), idempotency::UPLOAD);
    let answer = upload_files(&state, &caller, &mut multipart, &mut fingerprint).await;
    if let Some(held) = &mut held {
        // None when the body was not read to its end: the key is released, not kept.
        held.request_hash = fingerprint.finish();
    }
    Ok(idempotency::finish(held, answer.into_response()).await)
}

async fn upload_files(
    state: &AppState,
    caller: &Caller,
    multipart: &mut Multipart,
    fingerprint: &mut Fingerprint,
) -> Result<Response, ApiError> {
    let mut outcome = Outcome::default();
    let mut stored = StoredUploads {
        state: state.clone(),
        keys: Vec::new(),
    };
    // An error here ends the request; `stored` then removes what it had stored.
    let read = read_files(
        state,
        caller.owner(),
        multipart,
        &mut outcome,
        &mut stored,
        fingerprint,
    );
    read.await.map_err(|e| {
        // Said here, where the limit is known: how much a request may carry.
        if e.code == ErrorCode::BodyTooLarge.as_str() {
            let limits = &state.config.limits;
            let mut e =
                super::error::body_too_large("the upload", body_limit(&state.config) as u64);
            e.message = format!(
                "{} ({} files of at most {} each)",
                e.message,
                limits.max_upload_files,
                size::human(limits.max_upload_bytes)
            );
            e
        } else {
            e
        }
    })?;
    if outcome.total == 0 {
        return Err(ApiError::new(
            ErrorCode::NoFiles,
            format!(
                "no files were sent; send one or more images in the multipart field \"{FIELD}\""
            ),
        ));
    }
    stored.keep();
    Ok(outcome.into_response())
}

/// Reads every field: each file is stored or listed in `errors`. Only a body that cannot be
/// read any further is an error of the whole request.
async fn read_files(
    state: &AppState,
    owner: Option<&str>,
    multipart: &mut Multipart,
    outcome: &mut Outcome,
    stored: &mut StoredUploads,
    fingerprint: &mut Fingerprint,
) -> Result<(), ApiError> {
    let limits = &state.config.limits;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e, e.status()))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        fingerprint.part(&name, field.file_name());
        let filename = field
            .file_name()
            .unwrap_or("(unnamed)")
            .chars()
            .take(255)
            .collect::<String>();
        if name != FIELD {
            // Drain it, but say so: nothing the client sent is dropped silently.
            drain(&mut field, fingerprint).await?;
            outcome.refused(
                name.clone(),
                ErrorCode::UnexpectedField.as_str(),
                format!("field {name:?} is not read; send images in the field \"{FIELD}\""),
            );
            continue;
        }
        outcome.total += 1;
        if outcome.total > limits.max_upload_files {
            drain(&mut field, fingerprint).await?;
            outcome.refused(
                filename,
                ErrorCode::TooManyFiles.as_str(),
                format!("at most {} files per request", limits.max_upload_files),
            );
            continue;
        }
        let spool = match spool_capped(&mut field, limits.max_upload_bytes, fingerprint).await? {
            Spool::Ready(spool) => spool,
            Spool::TooLarge => {
                outcome.refused(
                    filename,
                    ErrorCode::FileTooLarge.as_str(),
                    format!(
                        "the file is larger than {}, the upload limit",
                        size::human(limits.max_upload_bytes)
                    ),
                );
                continue;
            }
            Spool::NotStored(e) => {
                outcome.not_stored(filename, e);
                continue;
            }
        };
        match store_file(state, owner, spool, stored).await {
            Ok((key, info, size)) => outcome.uploaded.push(Uploaded {
                url: state.blobs.url(&key),
                key,
                filename,
                size,
                content_type: info.kind.content_type(),
            }),
            Err(Refused::Image(e)) => outcome.refused(filename, e.code(), e.to_string()),
            Err(Refused::NotStored(e)) => outcome.not_stored(filename, e),
        }
    }
    fingerprint.end();
    Ok(())
}
