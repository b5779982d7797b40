//! Task changes told to every instance sharing the database, so each keeps its status
//! board true and hands every event to its own streams (SSE, WebSocket, long-poll)
//! whichever instance made the change.
//!
//! On PostgreSQL a change is announced with `NOTIFY darkroom_events` carrying the instance
//! that made it, the task id and its new state; every instance's `LISTEN` connection turns
//! the notifications into [`FeedEvent`]s. The task itself is read from the database by
//! whoever wants it, so the notification stays small and the reader sees the committed row.
//! SQLite is one process's file: nothing to announce, and no feed.

use std::str::FromStr;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::RepoError;
use crate::domain::{TaskId, TaskState};

/// A task moved to `state`, by the instance `origin`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub origin: String,
    pub task_id: TaskId,
    pub state: TaskState,
}

impl Change {
    /// `origin task_id state`: the notification's payload.
    pub fn payload(&self) -> String {
        format!("{} {} {}", self.origin, self.task_id, self.state.as_str())
    }

    /// Reads a payload back; `None` for anything else.
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
    /// Notifications may have been lost (the listener reconnected, or a receiver lagged):
    /// anything kept from earlier changes may be stale.
    Missed,
}

#[async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// Tells the other instances that a task changed. Nothing to do where one process owns
    /// the database.
    async fn announce(&self, _change: &Change) -> Result<(), RepoError> {
        Ok(())
    }

    /// Every announced change, this instance's own included (skip your own `origin`);
    /// `None` where one process owns the database.
    fn changes(&self) -> Option<broadcast::Receiver<FeedEvent>> {
        None
    }
}

impl ChangeFeed for super::sqlite::SqliteRepo {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_junk_is_refused() {
        let change = Change {
            origin: "worker-1".into(),
            task_id: TaskId::new(),
            state: TaskState::Succeeded,
        };
        assert_eq!(Change::parse(&change.payload()), Some(change));
        assert_eq!(Change::parse("worker-1 nonsense succeeded"), None);
        assert_eq!(Change::parse("a b"), None);
        assert_eq!(Change::parse(""), None);
    }
}
