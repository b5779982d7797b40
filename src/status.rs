//! The task views the outside world reads: the original service's status answer (kept
//! ready in memory, since every polling client asks for it every two seconds) and the
//! `kie-tasks/{taskId}.json` record in the bucket.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use quick_cache::sync::Cache;
use serde_json::{Map, Value, json};

use crate::domain::TaskId;
use crate::storage::Task;

/// A ready status answer and the owner it may be shown to. The owner travels with the
/// answer so a cached answer is never handed out without the owner check.
#[derive(Clone, Debug)]
pub struct StatusEntry {
    pub owner: Option<String>,
    pub body: Bytes,
}

/// Ready-made status answers by darkroom id, and darkroom ids by provider id. Updated on
/// every transition this process makes; a miss is filled from the database.
pub struct StatusBoard {
    by_id: Cache<TaskId, StatusEntry>,
    by_provider_id: Cache<(String, String), TaskId>,
}

impl StatusBoard {
    pub fn new(capacity: usize) -> Self {
        Self {
            by_id: Cache::new(capacity),
            by_provider_id: Cache::new(capacity),
        }
    }

    pub fn update(&self, task: &Task) {
        let entry = StatusEntry {
            owner: task.owner.clone(),
            body: compat_status(task),
        };
        self.by_id.insert(task.id.clone(), entry);
        if let Some(pid) = &task.provider_task_id {
            self.by_provider_id
                .insert((task.provider.clone(), pid.clone()), task.id.clone());
        }
    }

    /// The cached answer with its owner; callers check the owner before answering.
    pub fn get(&self, id: &TaskId) -> Option<StatusEntry> {
        self.by_id.get(id)
    }

    pub fn id_for_provider_id(&self, provider: &str, provider_task_id: &str) -> Option<TaskId> {
        self.by_provider_id
            .get(&(provider.to_owned(), provider_task_id.to_owned()))
    }
}

pub fn iso_time(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn error_text(task: &Task) -> Option<String> {
    match (&task.error_code, &task.error_message) {
        (_, Some(message)) => Some(message.clone()),
        (Some(code), None) => Some(code.clone()),
        (None, None) => None,
    }
}

/// `GET /api/task-status`: the original's shape and vocabulary, plus darkroom's richer
/// `state`, the provider's id and a machine-readable `errorCode`.
pub fn compat_status(task: &Task) -> Bytes {
    let mut body = Map::new();
    body.insert("success".into(), Value::Bool(true));
    body.insert("taskId".into(), json!(task.id));
    body.insert("status".into(), json!(task.state.compat().as_str()));
    body.insert("state".into(), json!(task.state.as_str()));
    body.insert("prompt".into(), json!(task.prompt));
    body.insert("imageUrl".into(), json!(task.image_url));
    body.insert("createdAt".into(), json!(iso_time(task.created_at)));
    body.insert("updatedAt".into(), json!(iso_time(task.updated_at)));
    body.insert("resultUrls".into(), json!(task.result_urls));
    if task.state.compat().as_str() == "failed"
        && let Some(error) = error_text(task)
    {
        body.insert("error".into(), json!(error));
        body.insert("errorCode".into(), json!(task.error_code));
    }
    if let Some(credits) = task.credits {
        body.insert("consumeCredits".into(), json!(credits));
    }
    if let Some(ms) = task.cost_time_ms {
        // The original reported the callback's costTime, which KIE gives in seconds.
        body.insert("costTime".into(), json!(ms / 1000));
    }
    if let Some(pid) = &task.provider_task_id {
        body.insert("providerTaskId".into(), json!(pid));
    }
    Bytes::from(Value::Object(body).to_string())
}

/// The archive copy in `kie-tasks/{taskId}.json`: everything but secrets and leases.
pub fn task_record(task: &Task) -> Bytes {
    let record = json!({
        "taskId": task.id,
        "provider": task.provider,
        "providerTaskId": task.provider_task_id,
        "model": task.model,
        "state": task.state.as_str(),
        "status": task.state.compat().as_str(),
        "prompt": task.prompt,
        "sourceKey": task.source,
        "imageUrl": task.image_url,
        "inputUrls": task.input_urls,
        "aspectRatio": task.aspect_ratio,
        "outputFormat": task.output_format,
        "priority": task.priority,
        "batchId": task.batch_id,
        "attempts": task.attempts,
        "resultKeys": task.result_keys,
        "resultUrls": task.result_urls,
        "error": error_text(task),
        "errorCode": task.error_code,
        "consumeCredits": task.credits,
        "costTimeMs": task.cost_time_ms,
        "createdAt": iso_time(task.created_at),
        "updatedAt": iso_time(task.updated_at),
        "submittedAt": task.submitted_at.map(iso_time),
        "completedAt": task.completed_at.map(iso_time),
    });
    Bytes::from(serde_json::to_vec_pretty(&record).unwrap_or_default())
}
