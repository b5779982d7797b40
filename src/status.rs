//! The task views the outside world reads: the original service's status answer (kept
//! ready in memory, since every polling client asks for it every two seconds) and the
//! `kie-tasks/{taskId}.json` record in the bucket.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use quick_cache::sync::Cache;
use serde::Serialize;
use serde_json::json;

use crate::domain::task::CompatStatus;
use crate::domain::task_row::Task;
use crate::domain::{TaskId, TaskState};

/// A ready status answer and the owner it may be shown to. The owner travels with the
/// answer so a cached answer is never handed out without the owner check.
#[derive(Clone, Debug)]
pub struct StatusEntry {
    pub owner: Option<String>,
    pub body: Bytes,
    /// The provider of a queued task, whose own hold-ups (a pause, an outage, a full
    /// window) the answer adds when they are the reason it waits.
    pub queued_for: Option<String>,
    /// Whether the answer already says why the task waits, with a time still ahead.
    pub waiting_until: Option<i64>,
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
            queued_for: (task.state == TaskState::Queued).then(|| task.provider.clone()),
            waiting_until: waiting(task).map(|_| task.run_at),
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

/// Why an unfinished task is not moving yet, and when it is due to try again.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    /// Stable, machine-readable (`provider_retrying`, `provider_paused`,
    /// `provider_unreachable`, `rate_window_full`, `input_unavailable`, `storage_full`, …).
    pub code: String,
    /// A sentence for a person.
    pub message: String,
    /// When the next attempt is due (or the next check, for a provider out of reach).
    #[schema(format = DateTime)]
    pub until: String,
}

/// Why `task` waits, from its own row: an unfinished task carrying a reason (its last try
/// ended in a retry, a pause or a wait for storage) is due again at `run_at`.
pub fn waiting(task: &Task) -> Option<Waiting> {
    // A task being submitted is being worked on, not waiting (its reason is the last
    // try's until the create answers).
    if task.state.is_terminal() || task.state == TaskState::Submitting {
        return None;
    }
    let code = task.error_code.clone()?;
    Some(Waiting {
        code,
        message: task.error_message.clone().unwrap_or_default(),
        until: iso_time(task.run_at),
    })
}

/// `GET /api/task-status`'s answer: the original's shape and vocabulary, plus darkroom's
/// richer `state`, the provider's id and a machine-readable `errorCode`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompatStatusBody {
    pub success: bool,
    pub task_id: TaskId,
    /// The original's word: pending, processing, completed or failed.
    pub status: CompatStatus,
    pub state: TaskState,
    pub prompt: String,
    /// The source image.
    pub image_url: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    pub result_urls: Vec<String>,
    /// Why it failed (failed, canceled and expired tasks only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consume_credits: Option<i64>,
    /// Seconds, as the provider reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_task_id: Option<String>,
    /// Why a pending or processing task is not moving yet, and when it tries again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<Waiting>,
}

/// The status answer, serialized once per change and kept ready.
pub fn compat_status(task: &Task) -> Bytes {
    let failed = task.state.compat() == CompatStatus::Failed;
    let error = if failed { error_text(task) } else { None };
    let body = CompatStatusBody {
        success: true,
        task_id: task.id.clone(),
        status: task.state.compat(),
        state: task.state,
        prompt: task.prompt.clone(),
        image_url: task.image_url.clone(),
        created_at: iso_time(task.created_at),
        updated_at: iso_time(task.updated_at),
        result_urls: task.result_urls.clone(),
        error_code: error.as_ref().and(task.error_code.clone()),
        error,
        consume_credits: task.credits,
        // The original reported the callback's costTime, which KIE gives in seconds.
        cost_time: task.cost_time_ms.map(|ms| ms / 1000),
        provider_task_id: task.provider_task_id.clone(),
        waiting: waiting(task),
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
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
