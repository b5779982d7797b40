//! The outside views of a task: what `GET /api/tasks/{id}`, the task list, streams and
//! outbound webhooks show ([`TaskView`]), the original service's status answer
//! ([`compat_status`]), the archive record in the bucket ([`task_record`]) and the event
//! of a state change ([`TaskEvent`]). Built from the stored row alone (no I/O), so every
//! layer that shows a task shows the same thing. `stats` folds the repository's aggregates
//! over many tasks into the answer of `GET /api/stats`, with today's credit budgets
//! (`budgets`).

pub mod budgets;
mod event;
mod record;
pub mod stats;
mod status_answer;

pub use event::TaskEvent;
pub use record::{TaskRecord, task_from_record, task_record};
pub use status_answer::{
    CompatStatusBody, FailoverView, Waiting, compat_status, failover_view, waiting,
};

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::task::CompatStatus;
use crate::domain::task_row::Task;
use crate::domain::time::iso_time;
use crate::domain::{TaskId, TaskState};

/// A task's error: a stable machine code and a sentence.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaskError {
    /// Stable, machine-readable (`provider_error`, `submit_unconfirmed`, `canceled`, …).
    pub code: String,
    pub message: Option<String>,
}

/// The full view of a task (never its token hash or lease).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub task_id: TaskId,
    pub state: TaskState,
    /// The original service's word for the state.
    pub status: CompatStatus,
    /// `kie` or `gemini`.
    pub provider: String,
    /// The provider's own id, once it answered the create.
    pub provider_task_id: Option<String>,
    pub model: String,
    pub prompt: String,
    /// What the request named as the source: an upload key or a URL.
    pub source_key: String,
    /// The source image's URL as handed to the provider.
    pub image_url: String,
    /// Every image sent with the task: the source first, then shared references.
    pub input_urls: Vec<String>,
    pub aspect_ratio: String,
    pub output_format: String,
    pub priority: i32,
    pub batch_id: Option<String>,
    /// Create attempts so far.
    pub attempts: u32,
    /// Tasks ahead of this one in the queue (detail view of a queued task only).
    pub queue_position: Option<u64>,
    /// Created at the provider with no answer: waiting for its callback.
    pub unconfirmed: bool,
    /// The results in your bucket (or `/files/…` links to them).
    pub result_urls: Vec<String>,
    /// Why it failed; on an unfinished task, why its last try did not go through.
    pub error: Option<TaskError>,
    /// Why an unfinished task is not moving yet and when it tries again: its last try's
    /// reason, or its provider's pause, outage or full create window.
    pub waiting: Option<Waiting>,
    /// Credits the provider charged.
    pub consume_credits: Option<i64>,
    pub cost_time_ms: Option<i64>,
    /// The failed or expired task this one retries.
    pub retry_of: Option<TaskId>,
    /// Whether it may move to another provider by the operator's failover policy: the
    /// request's `fallback`, `null` when it gave none (the operator's default applies).
    pub fallback: Option<bool>,
    /// Present when it moved to another provider: from which, to which, why and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverView>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub submitted_at: Option<String>,
    #[schema(format = DateTime)]
    pub completed_at: Option<String>,
}

/// The full view of a task (never its token hash or lease).
pub fn task_view(task: &Task, queue_position: Option<u64>) -> TaskView {
    TaskView {
        task_id: task.id.clone(),
        state: task.state,
        status: task.state.compat(),
        provider: task.provider.clone(),
        provider_task_id: task.provider_task_id.clone(),
        model: task.model.clone(),
        prompt: task.prompt.clone(),
        source_key: task.source.clone(),
        image_url: task.image_url.clone(),
        input_urls: task.input_urls.clone(),
        aspect_ratio: task.aspect_ratio.clone(),
        output_format: task.output_format.clone(),
        priority: task.priority,
        batch_id: task.batch_id.clone(),
        attempts: task.attempts,
        queue_position,
        unconfirmed: task.provider_task_id.is_none() && matches!(task.state, TaskState::Submitted),
        result_urls: task.result_urls.clone(),
        error: task.error_code.as_ref().map(|code| TaskError {
            code: code.clone(),
            message: task.error_message.clone(),
        }),
        waiting: waiting(task),
        consume_credits: task.credits,
        cost_time_ms: task.cost_time_ms,
        retry_of: task.retry_of.clone(),
        fallback: task.failover.allowed,
        failover: failover_view(task),
        created_at: iso_time(task.created_at),
        updated_at: iso_time(task.updated_at),
        submitted_at: task.submitted_at.map(iso_time),
        completed_at: task.completed_at.map(iso_time),
    }
}
