//! Every stable error code an API answer can carry, with its HTTP status and what it means:
//! one catalogue, so no handler spells a code by hand, and docs/API.md and the OpenAPI
//! document list exactly these. Codes on a task (`error.code` of a failed task) are not
//! here: they describe how a task ended, not why a request was refused.

macro_rules! catalogue {
    ($($variant:ident = $code:literal, $status:literal, $meaning:literal;)*) => {
        /// A stable, machine-readable reason a request was refused.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in catalogue order.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as clients see it (`task_not_found`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)*
                }
            }

            /// The HTTP status an answer with this code has (a code refused per file
            /// inside an upload's `errors` shares the upload's answer instead).
            pub fn status(self) -> u16 {
                match self {
                    $(Self::$variant => $status,)*
                }
            }

            /// One line saying what it means.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant => $meaning,)*
                }
            }

            /// The code named `code`, if it is one.
            pub fn parse(code: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|c| c.as_str() == code)
            }
        }
    };
}

catalogue! {
    // Request bodies and queries.
    InvalidJson = "invalid_json", 400, "the body is not JSON, or not the JSON object the route reads";
    InvalidBody = "invalid_body", 400, "the body is not the object the route reads";
    InvalidField = "invalid_field", 400, "a field has the wrong type, or is misplaced";
    UnknownField = "unknown_field", 400, "a field the route does not know (the message names the right spelling of a near miss)";
    UnreadableBody = "unreadable_body", 400, "the body could not be read";
    BodyTooLarge = "body_too_large", 413, "the body is larger than the route accepts";
    BodyTimeout = "body_timeout", 408, "the body arrived too slowly";
    InvalidQuery = "invalid_query", 400, "a query parameter is malformed or unknown";
    InvalidLimit = "invalid_limit", 400, "`limit` is not a number in range";
    InvalidCursor = "invalid_cursor", 400, "`before` is not a cursor this server issued";
    InvalidState = "invalid_state", 400, "`state` is not a task state";
    InvalidTimeout = "invalid_timeout", 400, "`timeout` is not a number of seconds in range";
    InvalidWindow = "invalid_window", 400, "`window` is not 1h, 24h, 7d or 30d";
    TooManyIds = "too_many_ids", 400, "more ids than one request may name";
    TaskIdRequired = "task_id_required", 400, "the request names no task id";
    UnsupportedField = "unsupported_field", 400, "a field this route does not accept";
    // Generation requests.
    PromptRequired = "prompt_required", 400, "`prompt` is missing or empty";
    PromptTooLong = "prompt_too_long", 400, "`prompt` is longer than the provider accepts";
    ImagesRequired = "images_required", 400, "no source image (uploads or imageUrls)";
    TooManyImages = "too_many_images", 400, "more images than a task takes";
    InvalidImageUrl = "invalid_image_url", 400, "an image URL is not an absolute http(s) URL";
    InvalidUploadKey = "invalid_upload_key", 400, "an upload key is not one this server issues";
    UploadNotFound = "upload_not_found", 400, "an upload key or URL names nothing in the bucket (or not the caller's)";
    InvalidAspectRatio = "invalid_aspect_ratio", 400, "`aspectRatio` is not one the provider accepts";
    InvalidOutputFormat = "invalid_output_format", 400, "`outputFormat` is not png or jpeg";
    InvalidPriority = "invalid_priority", 400, "`priority` is not an integer in range";
    InvalidBatchId = "invalid_batch_id", 400, "`batchId` is malformed";
    InvalidWebhookUrl = "invalid_webhook_url", 400, "`webhookUrl` is not an absolute http(s) URL";
    UnsupportedProvider = "unsupported_provider", 400, "the provider named is not configured here";
    UnsupportedModel = "unsupported_model", 400, "the model named is not the provider's configured model";
    // Uploads (per file in `errors`, or the whole answer when no file was stored).
    InvalidMultipart = "invalid_multipart", 400, "the body is not multipart/form-data the server can read";
    NoFiles = "no_files", 400, "the request carries no file in the `files` field";
    NoValidFiles = "no_valid_files", 400, "no file of the request was an acceptable image";
    UnexpectedField = "unexpected_field", 400, "a multipart field other than `files` (per file)";
    TooManyFiles = "too_many_files", 400, "more files than one request may carry (per file)";
    FileTooLarge = "file_too_large", 400, "a file is larger than the upload limit (per file)";
    EmptyFile = "empty_file", 400, "a file is empty (per file)";
    UnsupportedImageType = "unsupported_image_type", 400, "a file is not jpeg, png or webp by its bytes (per file)";
    CorruptImage = "corrupt_image", 400, "a file is truncated or does not decode (per file)";
    ImageTooLarge = "image_too_large", 400, "a file's dimensions or pixel count are over the limit (per file)";
    PolyglotImage = "polyglot_image", 400, "a file is also another kind of document (per file)";
    // Tasks, batches, files.
    TaskNotFound = "task_not_found", 404, "no such task (or not the caller's)";
    BatchNotFound = "batch_not_found", 404, "no such batch (or not the caller's)";
    FileNotFound = "file_not_found", 404, "no such object, or the URL's signature is wrong";
    AssetNotFound = "asset_not_found", 404, "no such asset of the page";
    RouteNotFound = "route_not_found", 404, "no such route";
    NotAnApiInstance = "not_an_api_instance", 503, "this instance runs the workers only (`DARKROOM_ROLES=workers`): send API requests to an instance with the `api` role";
    MethodNotAllowed = "method_not_allowed", 405, "the route does not take this method (the Allow header lists those it takes)";
    TaskStateConflict = "task_state_conflict", 409, "the task's state does not allow this (cancel a finished task, retry a running one)";
    TaskNotFinished = "task_not_finished", 409, "the task is not final: cancel it or wait for it to finish before deleting it";
    TaskInUse = "task_in_use", 409, "a result of the task is an input of an unfinished task (the message names it); delete the task once that one is final";
    BatchNotFinished = "batch_not_finished", 409, "the batch has unfinished tasks (the message counts them); ask again with `?wait=true` to wait";
    TaskMismatch = "task_mismatch", 409, "the callback names another provider task than the one this task has";
    // Idempotency-Key (on /api/generate, /api/batches and /api/upload).
    InvalidIdempotencyKey = "invalid_idempotency_key", 400, "the Idempotency-Key header is not 1–255 printable ASCII characters";
    IdempotencyKeyInFlight = "idempotency_key_in_flight", 409, "a request with this Idempotency-Key is still being processed; retry after it ends";
    IdempotencyKeyReused = "idempotency_key_reused", 422, "this Idempotency-Key was already used with a different request (method, path or body) while it is kept";
    // Callbacks.
    InvalidCallback = "invalid_callback", 400, "the callback body is not the provider's envelope";
    InvalidCallbackToken = "invalid_callback_token", 401, "the callback's per-task token is missing or wrong";
    InvalidWebhookSignature = "invalid_webhook_signature", 401, "the callback's HMAC signature or timestamp is missing or wrong";
    // Keys and limits.
    ApiKeyRequired = "api_key_required", 401, "API keys are on and the request carries none";
    InvalidApiKey = "invalid_api_key", 401, "the API key is unknown or revoked";
    ApiKeysDisabled = "api_keys_disabled", 404, "this route needs API keys, which are off";
    InvalidMetricsToken = "invalid_metrics_token", 401, "`DARKROOM_METRICS_TOKEN` is set and the request to /metrics does not carry it as a bearer token";
    RateLimited = "rate_limited", 429, "too many requests; wait as Retry-After says";
    TooManyPendingTasks = "too_many_pending_tasks", 429, "the key has as many unfinished tasks as it may";
    // Live streams (WebSocket messages).
    WebsocketUpgradeRequired = "websocket_upgrade_required", 400, "`/api/ws` was asked without the headers of a WebSocket handshake";
    InvalidMessage = "invalid_message", 400, "a WebSocket message is not JSON of a known shape";
    UnknownMessageType = "unknown_message_type", 400, "a WebSocket message's `type` is not subscribe or unsubscribe";
    // Storage and internal faults.
    StorageFull = "storage_full", 503, "the database or the bucket is full; nothing was stored";
    StorageReadOnly = "storage_read_only", 503, "the database or the bucket is read-only; nothing was stored";
    StorageUnavailable = "storage_unavailable", 503, "the database or the bucket reports I/O errors; nothing was stored";
    InternalError = "internal_error", 500, "something went wrong on the server; the cause is logged";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_with_a_status_and_a_meaning() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} is listed twice");
            assert!(
                s.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{s} is not snake_case"
            );
            assert!((400..600).contains(&code.status()), "{s}");
            assert!(!code.meaning().is_empty(), "{s}");
            assert_eq!(ErrorCode::parse(s), Some(*code));
        }
    }
}
