//! One error type for every handler: a stable code and a sentence for the client, an opaque
//! 500 (with the cause logged once, by a middleware) for everything internal.

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::ErrorCode;
use crate::domain::request::InputError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For internal errors: what went wrong, for the log only.
    cause: Option<String>,
}

/// What every error answers: the original service's shape (`success: false`, `error`) with
/// a stable machine code added.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)] // documented as additionalProperties: false
pub struct ErrorBody {
    /// Always false.
    pub success: bool,
    /// A sentence for a person.
    pub error: String,
    /// Stable and machine-readable (`task_not_found`, `invalid_prompt`, `rate_limited`, …).
    pub code: &'static str,
}

/// Carries an internal error's cause from the response to the logging middleware.
#[derive(Clone, Debug)]
struct InternalCause(String);

impl ApiError {
    /// An answer with `code` from the catalogue, at the status the catalogue gives it.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::with_status(
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message,
        )
    }

    /// An answer with `code` at another status than the catalogue's (a body rejection
    /// carries its own, 413 or 400).
    pub fn with_status(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.as_str(),
            message: message.into(),
            cause: None,
        }
    }

    /// Storage refused a write (disk full, read-only): 503 with a stable code and a
    /// sentence, and the cause for the log. `what` names the store.
    pub fn storage(
        fault: crate::storage::StorageFault,
        what: &str,
        cause: impl std::fmt::Display,
    ) -> Self {
        Self {
            cause: Some(cause.to_string()),
            ..Self::new(fault.error_code(), fault.sentence(what))
        }
    }

    /// What went wrong, for the log (storage and internal errors only).
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            cause: Some(cause.to_string()),
            ..Self::new(
                ErrorCode::InternalError,
                "something went wrong on our side; it has been logged",
            )
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        // The domain's validation codes are in the catalogue too: a code missing from it
        // fails every test that sends such input.
        debug_assert!(
            ErrorCode::parse(e.code).is_some(),
            "{} is not in the error code catalogue",
            e.code
        );
        Self {
            status: StatusCode::BAD_REQUEST,
            code: e.code,
            message: e.message,
            cause: None,
        }
    }
}

impl From<crate::storage::RepoError> for ApiError {
    fn from(e: crate::storage::RepoError) -> Self {
        match e.fault() {
            Some(fault) => Self::storage(fault, "the database", e),
            None => Self::internal(e),
        }
    }
}

impl From<crate::storage::BlobError> for ApiError {
    fn from(e: crate::storage::BlobError) -> Self {
        match e.fault() {
            Some(fault) => Self::storage(fault, "the bucket", e),
            None => Self::internal(e),
        }
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        match e {
            E::NotFound(_) => Self::new(ErrorCode::TaskNotFound, "no such task"),
            E::Conflict { .. } => Self::new(ErrorCode::TaskStateConflict, e.to_string()),
            E::MalformedCallback => Self::new(
                ErrorCode::InvalidCallback,
                "the callback body must be KIE's envelope with a data object",
            ),
            E::ProviderIdMismatch { .. } => Self::new(ErrorCode::TaskMismatch, e.to_string()),
            E::Repo(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The original service's error shape, with a stable code added.
        let body = ErrorBody {
            success: false,
            error: self.message,
            code: self.code,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(InternalCause(cause));
        }
        response
    }
}

/// Logs the cause of every internal error, with the route it happened on. The same cause
/// repeating (a full disk fails every write alike) is logged once a minute with a count.
pub async fn log_internal_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(InternalCause(cause)) = response.extensions().get::<InternalCause>()
        && let Some(repeated) = crate::log_throttle::errors().admit(cause)
    {
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(%method, %path, error = %cause, repeated, "storage refused a write");
        } else {
            tracing::error!(%method, %path, error = %cause, repeated, "internal error");
        }
    }
    response
}

/// The 413 of a body over `limit` bytes, stating the limit.
pub fn body_too_large(what: &str, limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::BodyTooLarge,
        format!(
            "{what} is larger than the {} this route accepts",
            crate::domain::size::human(limit)
        ),
    )
}

/// Parses a JSON body already read as bytes; `limit` is the route's body limit (applied
/// before this), named when the body passed it.
pub fn parse_json(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<serde_json::Value, ApiError> {
    json_value(&body_bytes(body, limit)?)
}

/// A body read as bytes, or the error of one that could not be (over `limit`, cut off).
pub fn body_bytes(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            body_too_large("the request body", limit as u64)
        } else {
            ApiError::with_status(status, ErrorCode::UnreadableBody, rejection.body_text())
        }
    })
}

/// Parses a JSON body read whole.
pub fn json_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidJson,
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}
