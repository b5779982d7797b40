//! Task changes told to every instance sharing the database, so each keeps its status
//! board true and hands every event to its own streams (SSE, WebSocket, long-poll)
//! whichever instance made the change.
//!
//! On PostgreSQL every insert of a task and every change of its state sends
//! `NOTIFY darkroom_events` from its own transaction (a trigger, migration
//! `0009_change_feed.sql`), carrying the instance that made it, the task id and its new
//! state; every instance's `LISTEN` connection turns the other instances' notifications
//! into [`FeedEvent`]s. The notification is delivered exactly when the change commits, so
//! an instance killed right after a change cannot keep it from the others. The task itself
//! is read from the database by whoever wants it, so the notification stays small and the
//! reader sees the committed row. SQLite is one process's file: no feed.

use std::str::FromStr;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::RepoError;
use super::repo::Task;

use crate::domain::{TaskId, TaskState};

/// A task moved to `state`, by the instance `origin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub origin: String,
    pub task_id: TaskId,
    pub state: TaskState,
}

impl Change {
    /// Reads a notification's payload, `origin task_id state`; `None` for anything else.
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split(' ');
        let (origin, task_id, state) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || origin.is_empty() {
            return None;
        }
        Some(Self {
            origin: origin.to_owned(),
            task_id: TaskId::parse(task_id)?,
            state: TaskState::from_str(state).ok()?,
        })
    }
}

/// What the feed delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    Changed(Change),
    /// Notifications may have been lost: the listener (re)connected, or a receiver lagged.
    /// `since` (ms) is when the listener lost its connection; the changes committed from
    /// then until now are read back with [`ChangeFeed::changed_since`]. `None`: nothing to
    /// read back (the first connection), or unknown (a lag): what is kept may be stale.
    Missed {
        since: Option<i64>,
    },
}

#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Every change another process committed, in commit order (this one's own are not
    /// delivered: it published them when it made them); `None` where one process owns the
    /// database.
    fn changes(&self) -> Option<broadcast::Receiver<FeedEvent>> {
        None
    }

    /// Up to `limit` tasks changed at or after `since` (their `updated_at`, ms), oldest
    /// change first: what a listener that lost its connection may have missed. Nothing where
    /// one process owns the database.
    async fn changed_since(&self, _since: i64, _limit: usize) -> Result<Vec<Task>, RepoError> {
        Ok(Vec::new())
    }
}

impl ChangeFeed for super::sqlite::SqliteRepo {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_junk_is_refused() {
        let task_id = TaskId::new();
        // As the trigger writes it.
        let payload = format!("origin-1 {task_id} succeeded");
        assert_eq!(
            Change::parse(&payload),
            Some(Change {
                origin: "origin-1".into(),
                task_id: task_id.clone(),
                state: TaskState::Succeeded,
            })
        );
        assert_eq!(
            Change::parse(&format!("- {task_id} queued")).map(|c| c.origin),
            Some("-".into())
        );
        assert_eq!(Change::parse("worker-1 nonsense succeeded"), None);
        assert_eq!(Change::parse("a b"), None);
        assert_eq!(Change::parse(""), None);
    }
}
