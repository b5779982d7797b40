//! The in-process event bus: every task state change is published once, in order, with a
//! sequence number. Streams (SSE, WebSocket, long-poll) and tests subscribe to it.
//!
//! Resuming a stream (`Last-Event-ID`) needs history beyond the broadcast channel, so the
//! bus also keeps the most recent events in a bounded ring. Publishing, numbering, pushing
//! into the ring and broadcasting all happen under one lock, so a subscriber that takes the
//! ring snapshot and its receiver under the same lock sees every event exactly once.
//! Event ids carry a per-process epoch: an id from an earlier process (seq restarted) or
//! one older than the ring is reported as a gap, and the stream resynchronises from the
//! database instead of silently skipping events.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

use crate::domain::task_row::Task;
pub use crate::views::TaskEvent;

/// Events kept in the broadcast channel for slow subscribers before they lag.
const CAPACITY: usize = 4096;
/// Events kept for resuming streams.
pub const HISTORY: usize = 10_000;

/// Where a resuming subscriber stands relative to the history.
#[derive(Debug)]
pub enum Replay {
    /// Every event after the given id, in order (possibly none).
    Events(Vec<Arc<TaskEvent>>),
    /// The id is from another process or older than the history: some events are gone.
    Gap,
}

pub struct EventBus {
    sender: broadcast::Sender<Arc<TaskEvent>>,
    /// Identifies this process in event ids, so ids from a previous run are not trusted.
    epoch: u64,
    seq: AtomicU64,
    history: Mutex<VecDeque<Arc<TaskEvent>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(CAPACITY);
        let epoch = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or_default(),
        )
        .unwrap_or_default();
        Self {
            sender,
            epoch,
            seq: AtomicU64::new(0),
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }

    pub fn publish(&self, task: &Task) -> Arc<TaskEvent> {
        // A panic elsewhere while holding the lock leaves the ring consistent (every
        // mutation is a single push/pop), so a poisoned lock is still usable.
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let mut event = TaskEvent::snapshot(task);
        event.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let event = Arc::new(event);
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(event.clone());
        // No subscriber is not an error: nobody is listening right now.
        let _ = self.sender.send(event.clone());
        event
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TaskEvent>> {
        self.sender.subscribe()
    }

    /// A receiver for future events plus the sequence number of the last event already
    /// published (everything after it arrives on the receiver).
    pub fn subscribe_at(&self) -> (broadcast::Receiver<Arc<TaskEvent>>, u64) {
        let _history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        (self.sender.subscribe(), self.seq.load(Ordering::Relaxed))
    }

    /// A receiver for future events plus every kept event after `after` (a sequence
    /// number of this process), taken atomically: nothing is missed or seen twice.
    pub fn resume(&self, after: u64) -> (broadcast::Receiver<Arc<TaskEvent>>, Replay) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = self.sender.subscribe();
        (
            receiver,
            Self::replay_locked(&history, after, self.seq.load(Ordering::Relaxed)),
        )
    }

    /// Every kept event after `after`, for a subscriber that lagged behind the channel.
    pub fn since(&self, after: u64) -> Replay {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        Self::replay_locked(&history, after, self.seq.load(Ordering::Relaxed))
    }

    fn replay_locked(history: &VecDeque<Arc<TaskEvent>>, after: u64, last: u64) -> Replay {
        if after > last {
            return Replay::Gap;
        }
        let oldest = history.front().map_or(last + 1, |e| e.seq);
        // Events after `after` start at after + 1; they must all still be kept.
        if after + 1 < oldest {
            return Replay::Gap;
        }
        Replay::Events(history.iter().filter(|e| e.seq > after).cloned().collect())
    }

    /// The state each task's latest kept event told (what a stream that saw every kept
    /// event last heard of it).
    pub fn latest_states(&self) -> std::collections::HashMap<crate::domain::TaskId, &'static str> {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        history
            .iter()
            .map(|event| (event.task_id.clone(), event.state))
            .collect()
    }

    /// The id written on the wire for an event: `<epoch>-<seq>`.
    pub fn wire_id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// Reads a wire id back: the sequence number if it is from this process.
    pub fn parse_wire_id(&self, raw: &str) -> Option<u64> {
        let (epoch, seq) = raw.trim().split_once('-')?;
        (epoch.parse::<u64>().ok()? == self.epoch)
            .then(|| seq.parse().ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskId;

    #[test]
    fn wire_ids_round_trip_only_within_this_process() {
        let bus = EventBus::new();
        assert_eq!(bus.parse_wire_id(&bus.wire_id(42)), Some(42));
        assert_eq!(bus.parse_wire_id("1-42"), None);
        assert_eq!(bus.parse_wire_id("junk"), None);
    }

    #[test]
    fn replay_reports_gaps() {
        let mut history = VecDeque::new();
        for seq in 5..=9 {
            history.push_back(Arc::new(TaskEvent {
                seq,
                task_id: TaskId::new(),
                batch_id: None,
                owner: None,
                state: "queued",
                status: "pending",
                result_urls: Vec::new(),
                error: None,
                error_code: None,
                at: String::new(),
            }));
        }
        assert!(
            matches!(EventBus::replay_locked(&history, 4, 9), Replay::Events(e) if e.len() == 5)
        );
        assert!(
            matches!(EventBus::replay_locked(&history, 7, 9), Replay::Events(e) if e.len() == 2)
        );
        assert!(
            matches!(EventBus::replay_locked(&history, 9, 9), Replay::Events(e) if e.is_empty())
        );
        assert!(matches!(
            EventBus::replay_locked(&history, 3, 9),
            Replay::Gap
        ));
        assert!(matches!(
            EventBus::replay_locked(&history, 10, 9),
            Replay::Gap
        ));
        assert!(
            matches!(EventBus::replay_locked(&VecDeque::new(), 0, 0), Replay::Events(e) if e.is_empty())
        );
    }
}
