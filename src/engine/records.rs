//! The archive records in the bucket (`kie-tasks/{taskId}.json`), written behind the
//! engine: a state change hands its task over and goes on, without waiting for a PUT to
//! the bucket (on R2 a round trip over the internet, which a callback's answer or a
//! worker's next claim would otherwise wait for).
//!
//! Each task's records are written in order: a task always goes to the same lane, and a
//! lane writes one record at a time. A record waiting to be written is replaced by a newer
//! one of the same task (its state moved on meanwhile), so the bucket ends on the latest
//! state with at most one write per task in flight and one waiting; the waiting ones are
//! bounded by the tasks that changed, not by the changes. A task's first record is written
//! create-only: it never replaces a later one (another instance may have moved the task on
//! and written it first), and it never replaces a later one waiting here.
//!
//! The database is the source of truth; the records are what `darkroom reindex` rebuilds it
//! from after a loss. A write that fails is logged and not retried: the task's next change
//! writes its record again. [`Records::flush`] waits for every record handed over so far:
//! at shutdown, and where tests and tools drive the engine step by step.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::TaskId;
use crate::storage::keys;
use crate::storage::{BlobStore, Task};
use crate::views::task_record;

/// Records written at once (one per lane). A local bucket writes one in well under a
/// millisecond; R2 takes a round trip, so enough lanes keep up with a busy engine there.
const LANES: usize = 32;

pub(super) struct Records {
    blobs: BlobStore,
    lanes: Vec<Mutex<Lane>>,
    /// Which lane a task's records go to.
    hasher: RandomState,
    /// Records handed over and not yet written (or given up on).
    outstanding: AtomicUsize,
    /// Woken when `outstanding` reaches zero.
    idle: Notify,
}

#[derive(Default)]
struct Lane {
    /// Tasks with a record waiting, in the order they first asked.
    order: VecDeque<TaskId>,
    /// The record waiting for each task in `order`.
    waiting: HashMap<TaskId, Waiting>,
    /// Whether a writer is draining this lane.
    draining: bool,
}

struct Waiting {
    task: Task,
    /// A first record: written only if the task has none yet.
    create_only: bool,
}

impl Records {
    pub(super) fn new(blobs: BlobStore) -> Self {
        Self {
            blobs,
            lanes: (0..LANES).map(|_| Mutex::new(Lane::default())).collect(),
            hasher: RandomState::new(),
            outstanding: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Hands over `task`'s record as it is now, to be written after any of its earlier ones.
    pub(super) fn write(self: &Arc<Self>, task: &Task) {
        self.hand_over(task, false);
    }

    /// Hands over a new task's first record: written only if the bucket has none for it
    /// and no later one of it is waiting.
    pub(super) fn write_first(self: &Arc<Self>, task: &Task) {
        self.hand_over(task, true);
    }

    fn hand_over(self: &Arc<Self>, task: &Task, create_only: bool) {
        let index = (self.hasher.hash_one(&task.id) % LANES as u64) as usize;
        let start_writer = {
            let mut lane = self.lanes[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match lane.waiting.entry(task.id.clone()) {
                Entry::Occupied(mut waiting) => {
                    // A later state replaces the one waiting; a first record never does.
                    if !create_only {
                        waiting.insert(Waiting {
                            task: task.clone(),
                            create_only: false,
                        });
                    }
                }
                Entry::Vacant(slot) => {
                    slot.insert(Waiting {
                        task: task.clone(),
                        create_only,
                    });
                    lane.order.push_back(task.id.clone());
                    self.outstanding.fetch_add(1, Ordering::AcqRel);
                }
            }
            !std::mem::replace(&mut lane.draining, true)
        };
        if start_writer {
            tokio::spawn(self.clone().drain(index));
        }
    }

    /// Writes the lane's records one after another until none is waiting.
    async fn drain(self: Arc<Self>, index: usize) {
        loop {
            let next = {
                let mut lane = self.lanes[index]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let next = lane
                    .order
                    .pop_front()
                    .and_then(|id| lane.waiting.remove(&id));
                if next.is_none() {
                    lane.draining = false;
                }
                next
            };
            let Some(waiting) = next else {
                return;
            };
            write_record(&self.blobs, &waiting.task, waiting.create_only).await;
            if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.idle.notify_waiters();
            }
        }
    }

    /// Waits until every record handed over so far is written, at most `within`. Whether
    /// they all were.
    pub(super) async fn flush(&self, within: Duration) -> bool {
        let all_written = async {
            loop {
                let idle = self.idle.notified();
                tokio::pin!(idle);
                idle.as_mut().enable();
                if self.outstanding.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        tokio::time::timeout(within, all_written).await.is_ok()
    }

    /// Records handed over and not yet written.
    pub(super) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }
}

/// Writes `task`'s record now (create-only: unless one is there already).
pub(super) async fn write_record(blobs: &BlobStore, task: &Task, create_only: bool) {
    let spec = keys::task_record(&task.id);
    let bytes = task_record(task);
    let written = if create_only {
        blobs.put_create(&spec, bytes).await.map(|_| ())
    } else {
        blobs.put(&spec, bytes).await
    };
    if let Err(e) = written {
        // The database is the source of truth; the next change rewrites the record.
        tracing::warn!(task_id = %task.id, key = %spec.key, error = %e, "writing the task record failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TaskState;
    use crate::storage::TaskRepo;
    use crate::storage::sqlite::SqliteRepo;
    use crate::views::task_from_record;

    async fn queued_task() -> Task {
        let repo = SqliteRepo::in_memory().await.unwrap();
        let new = crate::storage::contract::new_task(None, 0, 1);
        repo.insert(std::slice::from_ref(&new)).await.unwrap();
        repo.get(&new.id).await.unwrap().unwrap()
    }

    fn blobs() -> BlobStore {
        BlobStore::memory("http://127.0.0.1:1/".parse().unwrap())
    }

    async fn record_of(blobs: &BlobStore, task: &Task) -> Task {
        let key = keys::task_record(&task.id).key;
        task_from_record(&blobs.get_bytes(&key).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_first_record_never_replaces_a_later_one() {
        let queued = queued_task().await;
        let submitted = Task {
            state: TaskState::Submitted,
            provider_task_id: Some("kie-1".into()),
            ..queued.clone()
        };
        let blobs = blobs();

        // The later state's record is out first; the queued one arrives late.
        write_record(&blobs, &submitted, false).await;
        write_record(&blobs, &queued, true).await;
        assert_eq!(record_of(&blobs, &queued).await.state, TaskState::Submitted);

        // Handed over in the wrong order, the same.
        let blobs = self::blobs();
        let records = Arc::new(Records::new(blobs.clone()));
        records.write(&submitted);
        records.write_first(&queued);
        assert!(records.flush(Duration::from_secs(5)).await);
        assert_eq!(record_of(&blobs, &queued).await.state, TaskState::Submitted);
    }

    #[tokio::test]
    async fn each_task_ends_on_its_latest_state_and_flush_waits_for_every_record() {
        let first = queued_task().await;
        let blobs = blobs();
        let records = Arc::new(Records::new(blobs.clone()));
        let states = [
            TaskState::Submitting,
            TaskState::Submitted,
            TaskState::Ingesting,
            TaskState::Succeeded,
        ];
        let mut tasks = Vec::new();
        for n in 0..200 {
            let mut task = first.clone();
            task.id = TaskId::new();
            task.prompt = format!("task {n}");
            records.write_first(&task);
            for state in states {
                task.state = state;
                records.write(&task);
            }
            tasks.push(task);
        }
        assert!(records.flush(Duration::from_secs(10)).await);
        assert_eq!(records.outstanding(), 0);
        for task in &tasks {
            let kept = record_of(&blobs, task).await;
            assert_eq!(kept.state, TaskState::Succeeded, "{}", task.prompt);
            assert_eq!(kept.prompt, task.prompt);
        }
        assert_eq!(blobs.list("kie-tasks").await.unwrap().len(), tasks.len());
        // Nothing handed over: flush returns at once.
        assert!(records.flush(Duration::from_millis(1)).await);
    }
}
