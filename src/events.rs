//! The in-process event bus: every task state change is published once, in order, with a
//! sequence number. Streams (SSE, WebSocket) and tests subscribe to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::broadcast;

use crate::domain::TaskId;
use crate::status::iso_time;
use crate::storage::Task;

/// Events kept for slow subscribers before they start missing some.
const CAPACITY: usize = 4096;

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskEvent {
    /// Increases by one per event in this process.
    pub seq: u64,
    pub task_id: TaskId,
    pub batch_id: Option<String>,
    #[serde(skip)]
    pub owner: Option<String>,
    pub state: &'static str,
    /// The original's word for the state.
    pub status: &'static str,
    pub result_urls: Vec<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub at: String,
}

pub struct EventBus {
    sender: broadcast::Sender<Arc<TaskEvent>>,
    seq: AtomicU64,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CAPACITY);
        Self {
            sender,
            seq: AtomicU64::new(0),
        }
    }

    pub fn publish(&self, task: &Task) -> Arc<TaskEvent> {
        let event = Arc::new(TaskEvent {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            task_id: task.id.clone(),
            batch_id: task.batch_id.clone(),
            owner: task.owner.clone(),
            state: task.state.as_str(),
            status: task.state.compat().as_str(),
            result_urls: task.result_urls.clone(),
            error: task.error_message.clone(),
            error_code: task.error_code.clone(),
            at: iso_time(task.updated_at),
        });
        // No subscriber is not an error: nobody is listening right now.
        let _ = self.sender.send(event.clone());
        event
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TaskEvent>> {
        self.sender.subscribe()
    }
}
