//! One error type for every handler: a stable code and a sentence for the client, an opaque
//! 500 (with the cause logged once, by a middleware) for everything internal.

use axum::Json;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

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
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            cause: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// Storage refused a write (disk full, read-only): 503 with a stable code and a
    /// sentence, and the cause for the log. `what` names the store.
    pub fn storage(
        fault: crate::storage::StorageFault,
        what: &str,
        cause: impl std::fmt::Display,
    ) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: fault.code(),
            message: fault.sentence(what),
            cause: Some(cause.to_string()),
        }
    }

    /// What went wrong, for the log (storage and internal errors only).
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error",
            message: "something went wrong on our side; it has been logged".to_owned(),
            cause: Some(cause.to_string()),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        Self::bad_request(e.code, e.message)
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
            E::NotFound(_) => Self::not_found("task_not_found", "no such task"),
            E::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "task_state_conflict", e.to_string())
            }
            E::MalformedCallback => Self::bad_request(
                "invalid_callback",
                "the callback body must be KIE's envelope with a data object",
            ),
            E::ProviderIdMismatch { .. } => {
                Self::new(StatusCode::CONFLICT, "task_mismatch", e.to_string())
            }
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

/// Parses a JSON body already read as bytes (size limits apply before this).
pub fn parse_json(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<serde_json::Value, ApiError> {
    let bytes = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "body_too_large",
                "the request body is larger than this route accepts",
            )
        } else {
            ApiError::new(status, "unreadable_body", rejection.body_text())
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })
}
