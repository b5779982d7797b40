//! The OpenAPI 3.1 description of the API, built here next to the routes it describes and
//! served at `/api/openapi.json`, with an offline docs page at `/api/docs` (rendered by
//! `assets/docs.js`, nothing fetched from another host). A committed copy,
//! `docs/openapi.json`, is compared with this by a test (`UPDATE_OPENAPI=1` rewrites it).

use axum::Json;
use axum::Router;
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(|| async { Json(document()) }))
        .route("/api/docs", get(docs))
}

async fn docs() -> Result<Response, ApiError> {
    super::ui::serve("docs.html")
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn json_body(name: &str) -> Value {
    json!({"content": {"application/json": {"schema": schema(name)}}})
}

fn ok(description: &str, name: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema(name)}}})
}

fn error(description: &str) -> Value {
    ok(description, "Error")
}

fn path_id(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": {"type": "string"}})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

/// The whole document.
pub fn document() -> Value {
    let task_id = path_id("id", "A task id (`tsk_…`)");
    let batch_id = path_id("id", "A batch id (`bat_…`)");
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "darkroom",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Asynchronous image-generation gateway: queue, provider callbacks, results into your own bucket. Errors are `{success: false, error, code}` with a stable `code`.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"}
        },
        "paths": {
            "/api/upload": {"post": {
                "summary": "Upload source images (multipart field `files`)",
                "requestBody": {"required": true, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "properties": {"files": {"type": "array", "items": {"type": "string", "contentMediaType": "application/octet-stream"}}}}}}},
                "responses": {"200": ok("Stored uploads and per-file errors", "UploadResponse"), "400": error("No usable file")}
            }},
            "/api/generate": {"post": {
                "summary": "Queue one task per source image",
                "requestBody": json_body("GenerateRequest"),
                "responses": {"200": ok("Tasks queued", "GenerateResponse"), "400": error("Invalid request")}
            }},
            "/api/task-status": {"get": {
                "summary": "The original service's status answer",
                "parameters": [{"name": "taskId", "in": "query", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": ok("Status", "CompatStatus"), "404": error("No such task")}
            }},
            "/api/tasks": {"get": {
                "summary": "List tasks, newest first",
                "parameters": [
                    query("state", "Comma-separated states", json!({"type": "string"})),
                    query("batchId", "Only this batch", json!({"type": "string"})),
                    query("limit", "1–200", json!({"type": "integer", "default": 50})),
                    query("cursor", "`nextCursor` of the previous page", json!({"type": "string"}))
                ],
                "responses": {"200": ok("A page of tasks", "TaskPage"), "400": error("Invalid filter")}
            }},
            "/api/tasks/{id}": {"get": {
                "summary": "One task", "parameters": [task_id],
                "responses": {"200": ok("The task", "Task"), "404": error("No such task")}
            }},
            "/api/tasks/{id}/cancel": {"post": {
                "summary": "Cancel an unfinished task", "parameters": [task_id],
                "responses": {"200": ok("The canceled task", "Task"), "404": error("No such task"), "409": error("Already finished")}
            }},
            "/api/tasks/{id}/retry": {"post": {
                "summary": "Retry a failed or expired task as a new task", "parameters": [task_id],
                "responses": {"200": ok("The new task", "Task"), "404": error("No such task"), "409": error("Not failed or expired")}
            }},
            "/api/tasks/{id}/wait": {"get": {
                "summary": "Long-poll until the task is final or the timeout passes",
                "parameters": [task_id, query("timeout", "Seconds, 0–120", json!({"type": "number", "default": 30}))],
                "responses": {"200": ok("The task, with `timedOut`", "Task"), "400": error("Invalid timeout"), "404": error("No such task")}
            }},
            "/api/events": {"get": {
                "summary": "Server-Sent Events: one `TaskEvent` per state change (`id: <epoch>-<seq>`); resume with `Last-Event-ID`",
                "parameters": [
                    query("taskIds", "Comma-separated task ids", json!({"type": "string"})),
                    query("batchId", "A batch id", json!({"type": "string"})),
                    query("lastEventId", "Resume after this id (the Last-Event-ID header wins)", json!({"type": "string"}))
                ],
                "responses": {"200": {"description": "An event stream; `data` is a TaskEvent, `event: resync` when history could not be replayed",
                    "content": {"text/event-stream": {"schema": schema("TaskEvent")}}}}
            }},
            "/api/ws": {"get": {
                "summary": "WebSocket: send `{type: subscribe|unsubscribe, taskIds, batchIds, all}`; receive `{type: event, id, event: TaskEvent}`",
                "responses": {"101": {"description": "Switching protocols"}}
            }},
            "/api/batches": {
                "post": {
                    "summary": "Queue a batch (the body of /api/generate without batchId)",
                    "requestBody": json_body("GenerateRequest"),
                    "responses": {"200": ok("The batch", "BatchCreated"), "400": error("Invalid request")}
                },
                "get": {
                    "summary": "List batches, newest first",
                    "parameters": [query("limit", "1–100", json!({"type": "integer", "default": 20})), query("cursor", "`nextCursor`", json!({"type": "string"}))],
                    "responses": {"200": ok("A page of batches", "BatchPage")}
                }
            },
            "/api/batches/{id}": {"get": {
                "summary": "A batch with counts per state, credits and its tasks", "parameters": [batch_id],
                "responses": {"200": ok("The batch", "Batch"), "404": error("No such batch")}
            }},
            "/api/batches/{id}/cancel": {"post": {
                "summary": "Cancel every unfinished task of the batch", "parameters": [batch_id],
                "responses": {"200": ok("The batch, with `canceled`", "Batch"), "404": error("No such batch")}
            }},
            "/api/batches/{id}/retry": {"post": {
                "summary": "Retry the batch's failed tasks (each once)", "parameters": [batch_id],
                "responses": {"200": ok("The batch, with `retried`", "Batch"), "404": error("No such batch")}
            }},
            "/api/batches/{id}/zip": {"get": {
                "summary": "The batch's results as a ZIP, streamed", "parameters": [batch_id],
                "responses": {"200": {"description": "application/zip", "content": {"application/zip": {"schema": {"type": "string", "contentMediaType": "application/zip"}}}}, "404": error("No such batch")}
            }},
            "/api/info": {"get": {"summary": "Providers, storage and simulator flags", "responses": {"200": {"description": "Service information"}}}},
            "/healthz": {"get": {"summary": "The process is alive", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Database and bucket answer", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/api/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        },
        "webhooks": {
            "taskFinished": {"post": {
                "summary": "A task of a request with `webhookUrl` is final (Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature v1)",
                "requestBody": json_body("WebhookPayload"),
                "responses": {"200": {"description": "Any 2xx acknowledges; anything else is retried"}}
            }}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["success", "error", "code"], "properties": {
                "success": {"const": false}, "error": {"type": "string"}, "code": {"type": "string"}}},
            "GenerateRequest": {"type": "object", "required": ["prompt"], "properties": {
                "prompt": {"type": "string", "maxLength": 5000},
                "uploads": {"type": "array", "items": {"type": "object", "properties": {"key": {"type": "string"}, "url": {"type": "string"}, "provider": {"type": "string"}}}},
                "imageUrls": {"type": "array", "items": {"type": "string", "format": "uri"}},
                "referenceImages": {"type": "array", "items": {}},
                "provider": {"enum": ["kie", "gemini"]},
                "model": {"type": "string"},
                "aspectRatio": {"type": "string", "default": "1:1"},
                "outputFormat": {"enum": ["png", "jpeg"]},
                "priority": {"type": "integer", "minimum": -1000, "maximum": 1000},
                "batchId": {"type": "string", "description": "/api/generate only"},
                "webhookUrl": {"type": "string", "format": "uri"}}},
            "GenerateResponse": {"type": "object", "properties": {
                "success": {"const": true}, "message": {"type": "string"},
                "taskIds": {"type": "array", "items": {"type": "string"}},
                "tasks": {"type": "array", "items": {"type": "object"}},
                "failures": {"type": "array", "items": {"type": "object"}}}},
            "UploadResponse": {"type": "object", "properties": {
                "uploaded": {"type": "array", "items": {"type": "object", "properties": {"key": {"type": "string"}, "url": {"type": "string"}, "filename": {"type": "string"}}}},
                "errors": {"type": "array", "items": {"type": "object"}}}},
            "CompatStatus": {"type": "object", "properties": {
                "status": {"enum": ["pending", "processing", "completed", "failed"]},
                "resultUrls": {"type": "array", "items": {"type": "string"}}}},
            "State": {"enum": ["queued", "submitting", "submitted", "running", "ingesting", "succeeded", "failed", "canceled", "expired"]},
            "Task": {"type": "object", "required": ["taskId", "state", "status"], "properties": {
                "taskId": {"type": "string"}, "state": schema("State"), "status": {"type": "string"},
                "provider": {"type": "string"}, "model": {"type": "string"}, "prompt": {"type": "string"},
                "batchId": {"type": ["string", "null"]}, "priority": {"type": "integer"},
                "resultUrls": {"type": "array", "items": {"type": "string"}},
                "error": {"type": ["object", "null"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}},
                "consumeCredits": {"type": ["integer", "null"]}, "retryOf": {"type": ["string", "null"]},
                "timedOut": {"type": "boolean", "description": "wait only"},
                "createdAt": {"type": "string", "format": "date-time"}, "updatedAt": {"type": "string", "format": "date-time"}}},
            "TaskPage": {"type": "object", "properties": {"tasks": {"type": "array", "items": schema("Task")}, "nextCursor": {"type": ["string", "null"]}}},
            "TaskEvent": {"type": "object", "required": ["seq", "taskId", "state", "status", "at"], "properties": {
                "seq": {"type": "integer"}, "taskId": {"type": "string"}, "batchId": {"type": ["string", "null"]},
                "state": schema("State"), "status": {"type": "string"},
                "resultUrls": {"type": "array", "items": {"type": "string"}},
                "error": {"type": ["string", "null"]}, "errorCode": {"type": ["string", "null"]},
                "at": {"type": "string", "format": "date-time"}}},
            "BatchCreated": {"type": "object", "properties": {"success": {"const": true}, "batchId": {"type": "string"}, "taskIds": {"type": "array", "items": {"type": "string"}}}},
            "Batch": {"type": "object", "required": ["batchId", "total", "counts", "credits"], "properties": {
                "batchId": {"type": "string"}, "total": {"type": "integer"}, "submitted": {"type": "integer"},
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "credits": {"type": "integer"}, "done": {"type": "boolean"},
                "prompt": {"type": "string"}, "webhookUrl": {"type": ["string", "null"]},
                "createdAt": {"type": "string", "format": "date-time"},
                "tasks": {"type": "array", "items": schema("Task")}}},
            "BatchPage": {"type": "object", "properties": {"batches": {"type": "array", "items": schema("Batch")}, "nextCursor": {"type": ["string", "null"]}}},
            "WebhookPayload": {"type": "object", "properties": {
                "type": {"enum": ["task.succeeded", "task.failed", "task.canceled", "task.expired"]},
                "timestamp": {"type": "string", "format": "date-time"}, "data": schema("Task")}}
        }}
    })
}
