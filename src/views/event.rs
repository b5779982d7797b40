//! A task's state change as streams (SSE, WebSocket, long-poll) and webhooks carry it.

use serde::Serialize;

use crate::domain::TaskId;
use crate::domain::task_row::Task;
use crate::domain::time::iso_time;

/// One state change of one task, as streams and webhooks carry it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    /// Increases by one per event in this process (0 in a resynchronising snapshot).
    pub seq: u64,
    pub task_id: TaskId,
    pub batch_id: Option<String>,
    #[serde(skip)]
    pub owner: Option<String>,
    #[schema(value_type = crate::domain::TaskState)]
    pub state: &'static str,
    /// The original's word for the state.
    #[schema(value_type = crate::domain::task::CompatStatus)]
    pub status: &'static str,
    /// The results in your bucket, once succeeded.
    pub result_urls: Vec<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    #[schema(format = DateTime)]
    pub at: String,
}

impl TaskEvent {
    /// Builds an event for the task as it is now (not numbered: `seq` is 0). Used when a
    /// stream resynchronises from the database.
    pub fn snapshot(task: &Task) -> Self {
        Self {
            seq: 0,
            task_id: task.id.clone(),
            batch_id: task.batch_id.clone(),
            owner: task.owner.clone(),
            state: task.state.as_str(),
            status: task.state.compat().as_str(),
            result_urls: task.result_urls.clone(),
            error: task.error_message.clone(),
            error_code: task.error_code.clone(),
            at: iso_time(task.updated_at),
        }
    }

    /// Whether the task reached a state it never leaves.
    pub fn is_terminal(&self) -> bool {
        matches!(self.state, "succeeded" | "failed" | "canceled" | "expired")
    }
}
