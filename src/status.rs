//! The status board: the original service's status answer for each task, kept ready in
//! memory (every polling client asks for it every two seconds), and darkroom ids by
//! provider id. The answer itself is a view ([`crate::views::compat_status`]).

use std::sync::Arc;

use bytes::Bytes;
use quick_cache::sync::Cache;

use crate::domain::task_row::Task;
use crate::domain::{TaskId, TaskState};
use crate::views::{compat_status, waiting};

/// A ready status answer and the owner it may be shown to. The owner travels with the
/// answer so a cached answer is never handed out without the owner check. Shared, not
/// copied: a poll takes one reference count, however long the owner's name.
#[derive(Clone, Debug)]
pub struct StatusEntry {
    pub owner: Option<String>,
    pub body: Bytes,
    /// The provider of a queued task, whose own hold-ups (a pause, an outage, a full
    /// window) the answer adds when they are the reason it waits.
    pub queued_for: Option<String>,
    /// Whether the answer already says why the task waits, with a time still ahead.
    pub waiting_until: Option<i64>,
    /// The row's `updated_at` the answer was made from.
    pub updated_at: i64,
}

/// Ready-made status answers by darkroom id, and darkroom ids by provider id. Updated on
/// every transition this process makes; a miss is filled from the database.
pub struct StatusBoard {
    by_id: Cache<TaskId, Arc<StatusEntry>>,
    by_provider_id: Cache<(String, String), TaskId>,
}

impl StatusBoard {
    pub fn new(capacity: usize) -> Self {
        Self {
            by_id: Cache::new(capacity),
            by_provider_id: Cache::new(capacity),
        }
    }

    /// Keeps `task`'s answer ready and returns it.
    pub fn update(&self, task: &Task) -> Arc<StatusEntry> {
        let entry = Arc::new(StatusEntry {
            owner: task.owner.clone(),
            body: compat_status(task),
            queued_for: (task.state == TaskState::Queued).then(|| task.provider.clone()),
            waiting_until: waiting(task).map(|_| task.run_at),
            updated_at: task.updated_at,
        });
        self.by_id.insert(task.id.clone(), entry.clone());
        if let Some(pid) = &task.provider_task_id {
            self.by_provider_id
                .insert((task.provider.clone(), pid.clone()), task.id.clone());
        }
        entry
    }

    /// Keeps `task`'s answer ready unless the one kept was made from a newer row: for rows
    /// read after another instance's change, which a change made here may have overtaken.
    pub fn update_unless_newer(&self, task: &Task) {
        if self
            .by_id
            .get(&task.id)
            .is_some_and(|kept| kept.updated_at > task.updated_at)
        {
            return;
        }
        self.update(task);
    }

    /// Drops a task's answer: the next poll reads the database.
    pub fn drop_answer(&self, id: &TaskId) {
        self.by_id.remove(id);
    }

    /// Drops every answer (changes made elsewhere may have been missed).
    pub fn clear(&self) {
        self.by_id.clear();
    }

    /// The cached answer with its owner; callers check the owner before answering.
    pub fn get(&self, id: &TaskId) -> Option<Arc<StatusEntry>> {
        self.by_id.get(id)
    }

    /// Drops a deleted task's answer: the next poll asks the database, which knows no such
    /// task.
    pub fn forget(&self, id: &TaskId, provider: &str, provider_task_id: Option<&str>) {
        self.by_id.remove(id);
        if let Some(pid) = provider_task_id {
            self.by_provider_id
                .remove(&(provider.to_owned(), pid.to_owned()));
        }
    }

    pub fn id_for_provider_id(&self, provider: &str, provider_task_id: &str) -> Option<TaskId> {
        self.by_provider_id
            .get(&(provider.to_owned(), provider_task_id.to_owned()))
    }
}
