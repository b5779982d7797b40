//! The original service's status answer (`GET /api/task-status`), byte for byte what
//! its front ends parse, plus darkroom's richer fields.

use bytes::Bytes;
use serde::Serialize;

use crate::domain::task::CompatStatus;
use crate::domain::task_row::Task;
use crate::domain::time::iso_time;
use crate::domain::{TaskId, TaskState};

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

/// A task that moved to another provider (failover): from which, to which (the one that
/// runs it), why and when it last moved.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverView {
    /// The provider it left last.
    pub from: String,
    /// The provider it moved to, which runs it.
    pub to: String,
    /// Why: `credits` (the provider reported no credits, 402), `credit_floor` (its balance
    /// fell below the configured floor), `failing` (too many failed creates in a row: 5xx or
    /// 429) or `attempts` (this task's create attempts were used up on retryable errors).
    pub reason: String,
    #[schema(format = DateTime)]
    pub at: String,
    /// Every provider it left, in order (more than one only along a longer chain).
    pub providers_left: Vec<String>,
}

/// How `task` moved, if it did.
pub fn failover_view(task: &Task) -> Option<FailoverView> {
    let from = task.failover.left.last()?;
    Some(FailoverView {
        from: from.clone(),
        to: task.provider.clone(),
        reason: task.failover.reason.clone().unwrap_or_default(),
        at: iso_time(task.failover.moved_at.unwrap_or(task.updated_at)),
        providers_left: task.failover.left.clone(),
    })
}

/// The sentence shown for a task's error: its message, else its code.
pub(super) fn error_text(task: &Task) -> Option<String> {
    match (&task.error_code, &task.error_message) {
        (_, Some(message)) => Some(message.clone()),
        (Some(code), None) => Some(code.clone()),
        (None, None) => None,
    }
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
    /// Present when the task moved to another provider (failover): from which, to which,
    /// why and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverView>,
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
        failover: failover_view(task),
    };
    // Kept on the status board for as long as the task is asked about: held at its length,
    // not at the capacity the serializer grew to (up to twice as much).
    let mut json = serde_json::to_vec(&body).unwrap_or_default();
    json.shrink_to_fit();
    Bytes::from(json)
}
