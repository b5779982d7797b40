//! `darkroom reindex`: rebuilds the task rows from the bucket's archive records
//! (`kie-tasks/{taskId}.json`) after the database was lost. It only adds what is missing:
//! a task already stored (however old or new its row) is left as it is, so it is safe on a
//! live database and running it twice adds nothing the second time.
//!
//! Unfinished tasks come back as they were, with two safety rules (the engine takes them
//! up after the next start, as after a crash):
//! - `submitting`: whether the create reached the provider is unknown, so the task is
//!   restored as an *unconfirmed* create (a non-empty callback token hash that no token
//!   matches): the dispatcher waits for the provider instead of creating it again, and
//!   never bills twice.
//! - every task: no lease, and no callback token (it was a secret and is not in the
//!   record), so a per-task callback for a task in flight is refused; the reconciler polls
//!   the provider for it instead (`submitted`, `running`), and an `ingesting` task takes
//!   its results up again, from the bucket first.
//!
//! A batch row missing for a batch id the records name is rebuilt from its tasks' records
//! (owner, prompt, the earliest creation time, the number of its tasks found); a batch's
//! webhook URL is not in any record and does not come back.

use std::collections::BTreeMap;

use futures::StreamExt;

use crate::domain::TaskState;
use crate::domain::budget::{CreditDay, PriceTable, credits_used};
use crate::progress::Progress;
use crate::storage::{Batch, BlobStore, CreditReservation, Repo, RepoError, Task};
use crate::views::task_from_record;

/// The folder of the archive records.
const RECORDS: &str = "kie-tasks";
/// Records read at once (S3 answers each read in a round trip).
const READS_AT_ONCE: usize = 16;
/// The callback token hash of a restored `submitting` task: not empty, so the dispatcher
/// treats its create as possibly sent; matched by no token.
pub const UNCONFIRMED_TOKEN_HASH: &str = "restored-by-reindex";

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub records: u64,
    pub added: u64,
    pub present: u64,
    /// Records that are not a task record, with the reason.
    pub unreadable: Vec<(String, String)>,
    /// Records whose provider id another stored task already has, with that task's key.
    pub conflicts: Vec<String>,
    /// Batch rows rebuilt from their tasks' records.
    pub batches_added: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReindexError {
    #[error("listing the bucket's {RECORDS}/ failed: {0}")]
    List(crate::storage::BlobError),
    #[error("writing to the database failed: {0}")]
    Database(#[from] RepoError),
}

/// The row to write for a task read from its record (see the module's rules).
pub fn row_to_restore(mut task: Task) -> Task {
    task.lease_owner = None;
    task.lease_until = None;
    if task.state == TaskState::Submitting {
        task.callback_token_hash = UNCONFIRMED_TOKEN_HASH.to_owned();
    }
    task
}

/// Reads every record under `kie-tasks/` and adds the tasks `repo` does not have.
/// `show_progress` draws progress on stderr.
///
/// A restored task sent to its provider today counts against today's credit budgets again
/// (at its price in `prices`, then what it used once finished), as it
/// did before the database was lost.
pub async fn reindex(
    blobs: &BlobStore,
    repo: &dyn Repo,
    prices: &PriceTable,
    show_progress: bool,
) -> Result<Summary, ReindexError> {
    let today = CreditDay::of(crate::clock::now_ms());
    let keys: Vec<String> = blobs
        .list(RECORDS)
        .await
        .map_err(ReindexError::List)?
        .into_iter()
        .filter(|key| is_record_key(key))
        .collect();
    let mut summary = Summary::default();
    let mut batches: BTreeMap<String, Batch> = BTreeMap::new();
    let mut progress = Progress::new("reindex", "records read", keys.len() as u64, show_progress);
    let mut reads = futures::stream::iter(keys)
        .map(|key| async move {
            let read = blobs.get_bytes(&key).await;
            (key, read)
        })
        .buffered(READS_AT_ONCE);
    while let Some((key, read)) = reads.next().await {
        summary.records += 1;
        let task = match read {
            Ok(bytes) => task_from_record(&bytes),
            Err(e) => Err(format!("cannot be read: {e}")),
        };
        match task {
            Err(reason) => summary.unreadable.push((key, reason)),
            Ok(task) => {
                note_batch(&mut batches, &task);
                let id = task.id.clone();
                let restored = row_to_restore(task);
                if repo.restore(&restored).await? {
                    summary.added += 1;
                    recount_credits(repo, &restored, prices, &today).await?;
                } else if repo.get(&id).await?.is_some() {
                    summary.present += 1;
                } else {
                    summary.conflicts.push(key);
                }
            }
        }
        progress.advance(
            1,
            &format!("{} added, {} present", summary.added, summary.present),
        );
    }
    progress.finish();
    for batch in batches.into_values() {
        if repo.get_batch(&batch.id).await?.is_none() {
            repo.insert_batch(&batch, &[]).await?;
            summary.batches_added += 1;
        }
    }
    Ok(summary)
}

/// Counts a restored task sent today against today's budgets, as the engine did: its
/// estimate (never refused: the credits were spent), settled if the task is finished.
async fn recount_credits(
    repo: &dyn Repo,
    task: &Task,
    prices: &PriceTable,
    today: &CreditDay,
) -> Result<(), RepoError> {
    let sent_today = task
        .submitted_at
        .is_some_and(|at| CreditDay::of(at).name == today.name);
    if !sent_today {
        return Ok(());
    }
    let reservation = CreditReservation {
        task: &task.id,
        owner: task.owner.as_deref(),
        day: today,
        credits: prices.price_of(&task.provider),
        global_limit: 0,
        check_budgets: false,
        now: crate::clock::now_ms(),
    };
    repo.reserve_credits(&reservation).await?;
    if task.state.is_terminal() {
        repo.settle_credits(&task.id, credits_used(task)).await?;
    }
    Ok(())
}

/// Adds `task` to the batch it belongs to, as far as the records tell.
fn note_batch(batches: &mut BTreeMap<String, Batch>, task: &Task) {
    let Some(id) = &task.batch_id else {
        return;
    };
    let batch = batches.entry(id.clone()).or_insert_with(|| Batch {
        id: id.clone(),
        owner: task.owner.clone(),
        prompt: task.prompt.clone(),
        webhook_url: None,
        total: 0,
        created_at: task.created_at,
    });
    batch.total += 1;
    batch.created_at = batch.created_at.min(task.created_at);
}

/// `kie-tasks/{name}.json` directly in the folder.
fn is_record_key(key: &str) -> bool {
    key.strip_prefix(RECORDS)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| name.ends_with(".json") && !name.contains('/'))
}

impl Summary {
    /// The report printed at the end, one fact a line.
    pub fn report(&self) -> String {
        let mut out = format!(
            "records read: {}\ntasks added: {}\nalready present: {}\nbatches added: {}\nunreadable records: {}\n",
            self.records,
            self.added,
            self.present,
            self.batches_added,
            self.unreadable.len()
        );
        for (key, reason) in &self.unreadable {
            out.push_str(&format!("  {key}: {reason}\n"));
        }
        if !self.conflicts.is_empty() {
            out.push_str(&format!(
                "skipped, provider id held by another stored task: {}\n",
                self.conflicts.len()
            ));
            for key in &self.conflicts {
                out.push_str(&format!("  {key}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_directly_in_the_folder_count() {
        assert!(is_record_key("kie-tasks/tsk_1.json"));
        assert!(!is_record_key("kie-tasks/x/tsk_1.json"));
        assert!(!is_record_key("kie-tasks/tsk_1.txt"));
        assert!(!is_record_key("kie-tasks-old/tsk_1.json"));
        assert!(!is_record_key("generated/kie-tasks/tsk_1.json"));
    }
}
