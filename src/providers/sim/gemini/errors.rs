//! Errors in Google's shape: `{"error": {code, message, status}}` with the canonical gRPC
//! status and message, and a `RetryInfo` on 429.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What the sim asks a rate-limited client to wait, as Gemini does in `RetryInfo`.
pub(super) const RETRY_DELAY: &str = "1s";

fn grpc_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

pub(super) fn fault_message(code: u16) -> &'static str {
    match code {
        400 => "Request contains an invalid argument.",
        403 => "The caller does not have permission.",
        404 => "Requested entity was not found.",
        429 => "Resource has been exhausted (e.g. check quota).",
        503 => "The model is overloaded. Please try again later.",
        504 => "Deadline expired before operation could complete.",
        _ => {
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        }
    }
}

/// `{"error": {code, message, status}}`, with a `RetryInfo` on 429 as Gemini sends.
pub(super) fn google_error(code: u16, message: &str) -> Response {
    let mut error = json!({"code": code, "message": message, "status": grpc_status(code)});
    if code == 429 {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": RETRY_DELAY,
        }]);
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"error": error}))).into_response()
}
