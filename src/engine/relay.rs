//! Changes made by other instances sharing the database (PostgreSQL): every task change is
//! announced from the transaction that makes it ([`crate::storage::ChangeFeed`]), and each
//! instance follows everyone else's, reading the changed task from the database, so its
//! status board stays true and its own streams (SSE, WebSocket, long-poll) and webhook
//! sweeper see every change, whichever instance made it. Where one process owns the
//! database (SQLite) there is nothing to follow.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::domain::{TaskId, TaskState};
use crate::storage::{Change, FeedEvent, Task};

/// How far before the listener's cut the read-back starts.
const CATCH_UP_MARGIN_MS: i64 = 10_000;
/// At most this many changed tasks are read back after a cut.
const CATCH_UP_LIMIT: usize = 10_000;

impl Engine {
    /// Follows the changes other instances announce until `stop`; returns at once where
    /// one process owns the database. Runs in every instance, with or without workers.
    pub async fn follow_changes(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut changes) = self.repo.changes() else {
            return;
        };
        // The state each task read back after a cut was published in: its first
        // announcement after that may be the same change, not to be published twice.
        let mut caught_up: HashMap<TaskId, TaskState> = HashMap::new();
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return,
                event = changes.recv() => event,
            };
            match event {
                Ok(FeedEvent::Changed(change)) => {
                    if caught_up.remove(&change.task_id) == Some(change.state) {
                        continue;
                    }
                    self.adopt_change(&change).await;
                }
                Ok(FeedEvent::Missed { since: Some(since) }) => {
                    caught_up = self.catch_up(since).await;
                }
                // Answers kept from before may be stale: polls read the database again.
                Ok(FeedEvent::Missed { since: None }) | Err(RecvError::Lagged(_)) => {
                    self.board.clear();
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Another instance moved a task: its current row refreshes the board, and when the
    /// row is still in the announced state, the change is published here too (a change
    /// already overtaken is left to the later announcement).
    async fn adopt_change(&self, change: &Change) {
        let read = self.repo.get(&change.task_id).await;
        let _gate = self.enqueue_gate.write().await;
        match read {
            Ok(Some(task)) => {
                self.board.update_unless_newer(&task);
                if task.state == change.state {
                    self.publish_adopted(&task);
                }
            }
            Ok(None) => self.board.drop_answer(&change.task_id),
            Err(e) => {
                self.board.drop_answer(&change.task_id);
                tracing::warn!(task_id = %change.task_id, error = %e, "a change made by another instance could not be read; status polls read the database");
            }
        }
    }

    /// The listener was cut off from `since` until it listened again: every task changed
    /// meanwhile (and a little before: the instances' clocks differ, and a change stamped
    /// just before the cut may have been announced after it) is read back, and published
    /// here in its current state unless that is what this instance's streams last said of
    /// it. Returns the tasks published, with their state.
    async fn catch_up(&self, since: i64) -> HashMap<TaskId, TaskState> {
        let mut published = HashMap::new();
        let tasks = match self
            .repo
            .changed_since(since - CATCH_UP_MARGIN_MS, CATCH_UP_LIMIT)
            .await
        {
            Ok(tasks) if tasks.len() < CATCH_UP_LIMIT => tasks,
            Ok(_) => {
                self.board.clear();
                tracing::warn!(
                    limit = CATCH_UP_LIMIT,
                    "more tasks changed while the listener was cut off than are read back: status polls read the database, but this instance's streams miss some changes"
                );
                return published;
            }
            Err(e) => {
                self.board.clear();
                tracing::warn!(error = %e, "the changes made while the listener was cut off could not be read back: status polls read the database, but this instance's streams may miss some changes");
                return published;
            }
        };
        let _gate = self.enqueue_gate.write().await;
        let told = self.events.latest_states();
        for task in &tasks {
            self.board.update_unless_newer(task);
            if told.get(&task.id) != Some(&task.state.as_str()) {
                self.publish_adopted(task);
                published.insert(task.id.clone(), task.state);
            }
        }
        tracing::info!(
            read = tasks.len(),
            published = published.len(),
            "changes made while the listener was cut off were read back"
        );
        published
    }

    /// Publishes a change another instance made (under the enqueue gate: a task queued
    /// here and moved on at once by another instance has its `queued` event out here
    /// first).
    fn publish_adopted(&self, task: &Task) {
        self.events.publish(task);
        self.wake_webhook_if_due(task);
    }
}
