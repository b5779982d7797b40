//! Changes made by other instances sharing the database (PostgreSQL): each instance
//! announces its task changes ([`crate::storage::ChangeFeed`]) and follows everyone
//! else's, reading the changed task from the database, so its status board stays true and
//! its own streams (SSE, WebSocket, long-poll) and webhook sweeper see every change,
//! whichever instance made it. Where one process owns the database (SQLite) there is
//! nothing to announce or follow.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::storage::{Change, FeedEvent, Task};

impl Engine {
    /// Tells the other instances that `task` changed. A failure is logged and never fails
    /// the work: their status answers are read from the database once their board drops
    /// the task, and their streams resynchronise from it.
    pub(super) async fn announce(&self, task: &Task) {
        let change = Change {
            origin: self.settings.worker_id.clone(),
            task_id: task.id.clone(),
            state: task.state,
        };
        if let Err(e) = self.repo.announce(&change).await {
            let message =
                format!("a task change could not be announced to the other instances: {e}");
            if let Some(repeated) = crate::log_throttle::errors().admit(&message) {
                tracing::warn!(task_id = %task.id, error = %message, repeated, "other instances see this change late");
            }
        }
    }

    /// Follows the changes other instances announce until `stop`; returns at once where
    /// one process owns the database. Runs in every instance, with or without workers.
    pub async fn follow_changes(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut changes) = self.repo.changes() else {
            return;
        };
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = changes.recv() => event,
            };
            match event {
                Ok(FeedEvent::Changed(change)) if change.origin != self.settings.worker_id => {
                    self.adopt_change(&change).await;
                }
                Ok(FeedEvent::Changed(_)) => {}
                // Answers kept from before may be stale: polls read the database again.
                Ok(FeedEvent::Missed) | Err(RecvError::Lagged(_)) => self.board.clear(),
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Another instance moved a task: its current row refreshes the board, and when the
    /// row is still in the announced state, the change is published here too (a change
    /// already overtaken is left to the later announcement). Published under the enqueue
    /// gate: a task queued here and moved on at once by another instance has its `queued`
    /// event out here first.
    async fn adopt_change(&self, change: &Change) {
        let read = self.repo.get(&change.task_id).await;
        let _gate = self.enqueue_gate.write().await;
        match read {
            Ok(Some(task)) => {
                self.board.update_unless_newer(&task);
                if task.state == change.state {
                    self.events.publish(&task);
                    if task.state.is_terminal() {
                        self.webhook_wake.notify_one();
                    }
                }
            }
            Ok(None) => self.board.drop_answer(&change.task_id),
            Err(e) => {
                self.board.drop_answer(&change.task_id);
                tracing::warn!(task_id = %change.task_id, error = %e, "a change made by another instance could not be read; status polls read the database");
            }
        }
    }
}
