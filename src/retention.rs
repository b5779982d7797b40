//! Retention: deleting finished tasks and their objects, by age (`darkroom gc`, and
//! `serve`'s background sweep when `DARKROOM_RETENTION_DAYS` is set) or one at a time at
//! its owner's request (`DELETE /api/tasks/{id}`).
//!
//! What goes, for a task *expired* at the cutoff (final, finished before it, its webhook
//! not waiting; see `storage::retention`): its results, its `kie-tasks/{taskId}.json`
//! record, its row with its webhook delivery, and its batch's row once the batch has no
//! task left. Uploads go separately: an upload recorded before the cutoff that no kept
//! task names as an input. Unfinished and recent tasks, and everything they name, stay:
//! an expired task one of whose results a kept task names as an input is kept too (with
//! its own inputs), until that task expires as well.
//!
//! Order: a task's objects first, its row last. A crash in between leaves a row whose
//! objects are (partly) gone, which the next sweep finds again and finishes; the other
//! order would leave objects no row names, which nothing would ever find. `darkroom
//! reindex` cannot bring a deleted task back either: its record went before its row.
//!
//! Work goes in rounds of [`SweepOptions::batch`] tasks (or uploads): read a page, delete
//! its objects (a few at once), then its rows in one transaction.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::domain::TaskId;
use crate::status::StatusBoard;
use crate::storage::keys::{self, named_object};
use crate::storage::{BlobError, BlobStore, ExpiredTask, Repo, RepoError, Task, Users};

/// Objects deleted (or sized, on a dry run) at once.
const OBJECTS_AT_ONCE: usize = 16;
/// Kept tasks' inputs read per query.
const INPUTS_PAGE: usize = 1000;
/// A task is written with its creation time a moment before its row commits, and clocks of
/// instances sharing a database differ a little: each refresh of the kept tasks' inputs
/// reads back this far before the previous one began.
const REFRESH_OVERLAP_MS: i64 = 5 * 60 * 1000;
/// Object failures named in a report (all are counted).
const FAILURES_NAMED: usize = 20;
/// The background sweep's first run comes at most this long after the start.
const FIRST_SWEEP_MAX: Duration = Duration::from_secs(60);

/// One sweep's settings.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Tasks that finished before this time (Unix milliseconds), and uploads recorded
    /// before it, go.
    pub cutoff: i64,
    /// Count what would go; delete nothing.
    pub dry_run: bool,
    /// Tasks (or uploads) per round.
    pub batch: usize,
}

/// The default round size.
pub const BATCH: usize = 500;

impl SweepOptions {
    /// Everything older than `days` days before `now`.
    pub fn days(days: u32, now: i64, dry_run: bool) -> Self {
        Self {
            cutoff: now - i64::from(days) * 86_400_000,
            dry_run,
            batch: BATCH,
        }
    }
}

/// Objects and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, size: Option<u64>) {
        if let Some(size) = size {
            self.count += 1;
            self.bytes += size;
        }
    }

    fn plus(&mut self, other: Tally) {
        self.count += other.count;
        self.bytes += other.bytes;
    }
}

/// What a sweep deleted, or on a dry run would delete. Objects already missing are not
/// counted.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub dry_run: bool,
    pub cutoff: i64,
    pub tasks: u64,
    /// Batch rows left without tasks.
    pub batches: u64,
    pub results: Tally,
    pub records: Tally,
    pub uploads: Tally,
    /// Expired tasks kept because a kept task names one of their results as an input.
    pub kept_in_use: u64,
    /// Objects that could not be deleted (their tasks stay for the next sweep).
    pub failed: u64,
    /// The first few of them, with the error.
    pub failures: Vec<(String, String)>,
}

impl Report {
    fn fail(&mut self, key: String, error: &BlobError) {
        self.failed += 1;
        if self.failures.len() < FAILURES_NAMED {
            self.failures.push((key, error.to_string()));
        }
    }

    pub fn bytes(&self) -> u64 {
        self.results.bytes + self.records.bytes + self.uploads.bytes
    }

    /// Whether the sweep found anything to delete.
    pub fn found_any(&self) -> bool {
        self.tasks + self.batches + self.uploads.count + self.kept_in_use + self.failed > 0
    }

    /// The report printed by `darkroom gc`, one fact a line.
    pub fn text(&self) -> String {
        let verb = if self.dry_run {
            "would be deleted"
        } else {
            "deleted"
        };
        let tally = |t: Tally| format!("{} ({} bytes)", t.count, t.bytes);
        let mut out = format!(
            "finished before: {}\ntasks {verb}: {}\nbatches {verb}: {}\nresults {verb}: {}\nrecords {verb}: {}\nuploads {verb}: {}\nbytes {verb}: {}\nkept, results used by newer tasks: {}\nfailed objects: {}\n",
            crate::clock::iso_time(self.cutoff),
            self.tasks,
            self.batches,
            tally(self.results),
            tally(self.records),
            tally(self.uploads),
            self.bytes(),
            self.kept_in_use,
            self.failed,
        );
        for (key, error) in &self.failures {
            out.push_str(&format!("  {key}: {error}\n"));
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("the database failed: {0}")]
    Database(#[from] RepoError),
}

/// The objects kept tasks name as inputs, as hashes of their keys (a few bytes each,
/// however many tasks are kept; a collision only keeps an object longer).
struct KeptInputs {
    hashes: HashSet<u64>,
    /// The next refresh reads tasks created from here on.
    next_since: i64,
}

fn key_hash(key: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

impl KeptInputs {
    /// Every kept task's inputs.
    async fn load(repo: &dyn Repo, cutoff: i64) -> Result<Self, RepoError> {
        let mut kept = Self {
            hashes: HashSet::new(),
            next_since: i64::MIN,
        };
        kept.refresh(repo, cutoff).await?;
        Ok(kept)
    }

    /// Adds the inputs of tasks made since the last reading: a task queued during the
    /// sweep with an old upload keeps it.
    async fn refresh(&mut self, repo: &dyn Repo, cutoff: i64) -> Result<(), RepoError> {
        let started = now_ms();
        let mut after = None;
        loop {
            let page = repo
                .kept_task_inputs(cutoff, self.next_since, after.as_ref(), INPUTS_PAGE)
                .await?;
            for task in &page {
                self.add(&task.source, &task.input_urls);
            }
            match page.last() {
                Some(last) if page.len() == INPUTS_PAGE => {
                    after = Some((last.created_at, last.id.clone()));
                }
                _ => break,
            }
        }
        self.next_since = started - REFRESH_OVERLAP_MS;
        Ok(())
    }

    /// Adds what a task names: its source and input URLs.
    fn add(&mut self, source: &str, input_urls: &[String]) {
        let named = std::iter::once(source).chain(input_urls.iter().map(String::as_str));
        self.hashes
            .extend(named.filter_map(named_object).map(key_hash));
    }

    fn names(&self, key: &str) -> bool {
        self.hashes.contains(&key_hash(key))
    }
}

/// Deletes (or, on a dry run, sizes) one object: its size, `None` when it was not there.
async fn remove(blobs: &BlobStore, key: &str, dry_run: bool) -> Result<Option<u64>, BlobError> {
    let size = blobs.size(key).await?;
    if size.is_some() && !dry_run {
        blobs.delete(key).await?;
    }
    Ok(size)
}

/// A task's results and record; the first object that could not be deleted.
async fn remove_task_objects(
    blobs: &BlobStore,
    task: &ExpiredTask,
    dry_run: bool,
) -> Result<(Tally, Tally), (String, BlobError)> {
    let mut results = Tally::default();
    for key in &task.result_keys {
        results.add(
            remove(blobs, key, dry_run)
                .await
                .map_err(|e| (key.clone(), e))?,
        );
    }
    let record = keys::task_record(&task.id).key;
    let mut records = Tally::default();
    records.add(
        remove(blobs, &record, dry_run)
            .await
            .map_err(|e| (record, e))?,
    );
    Ok((results, records))
}

/// Runs `work` [`OBJECTS_AT_ONCE`] at a time; the outcomes in order.
async fn at_once<F: std::future::Future>(work: Vec<F>) -> Vec<F::Output> {
    futures::stream::iter(work)
        .buffered(OBJECTS_AT_ONCE)
        .collect()
        .await
}

/// One sweep: expired tasks, then old uploads no kept task names. `board` (the serving
/// process's) forgets the deleted tasks' answers.
pub async fn sweep(
    blobs: &BlobStore,
    repo: &dyn Repo,
    options: &SweepOptions,
    board: Option<&StatusBoard>,
) -> Result<Report, RetentionError> {
    let mut report = Report {
        dry_run: options.dry_run,
        cutoff: options.cutoff,
        ..Report::default()
    };
    let mut kept = KeptInputs::load(repo, options.cutoff).await?;
    sweep_tasks(blobs, repo, options, board, &mut kept, &mut report).await?;
    sweep_uploads(blobs, repo, options, &mut kept, &mut report).await?;
    Ok(report)
}

async fn sweep_tasks(
    blobs: &BlobStore,
    repo: &dyn Repo,
    options: &SweepOptions,
    board: Option<&StatusBoard>,
    kept: &mut KeptInputs,
    report: &mut Report,
) -> Result<(), RetentionError> {
    let batch = options.batch.max(1);
    let mut after: Option<TaskId> = None;
    // Dry run: the batches whose every task would go.
    let mut batch_tasks: HashMap<String, i64> = HashMap::new();
    loop {
        let page = repo
            .expired_tasks(options.cutoff, after.as_ref(), batch)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let full = page.len() == batch;
        kept.refresh(repo, options.cutoff).await?;
        let (doomed, in_use): (Vec<ExpiredTask>, Vec<ExpiredTask>) = page
            .into_iter()
            .partition(|t| !t.result_keys.iter().any(|k| kept.names(k)));
        report.kept_in_use += in_use.len() as u64;
        // A task that stays keeps its inputs too.
        for task in &in_use {
            kept.add(&task.source, &task.input_urls);
        }
        let removals: Vec<_> = doomed
            .iter()
            .map(|task| remove_task_objects(blobs, task, options.dry_run))
            .collect();
        let outcomes = at_once(removals).await;
        let mut gone = Vec::with_capacity(doomed.len());
        for (task, outcome) in doomed.iter().zip(outcomes) {
            match outcome {
                Ok((results, records)) => {
                    report.results.plus(results);
                    report.records.plus(records);
                    gone.push(task);
                }
                Err((key, e)) => {
                    report.fail(key, &e);
                    kept.add(&task.source, &task.input_urls);
                }
            }
        }
        if options.dry_run {
            report.tasks += gone.len() as u64;
            for batch_id in gone.iter().filter_map(|t| t.batch_id.clone()) {
                *batch_tasks.entry(batch_id).or_default() += 1;
            }
        } else {
            let ids: Vec<TaskId> = gone.iter().map(|t| t.id.clone()).collect();
            let rows = repo.delete_final_tasks(&ids).await?;
            report.tasks += rows.tasks.len() as u64;
            report.batches += rows.batches.len() as u64;
            if let Some(board) = board {
                for task in &gone {
                    board.forget(&task.id, &task.provider, task.provider_task_id.as_deref());
                }
            }
        }
        if !full {
            break;
        }
    }
    for (batch_id, going) in batch_tasks {
        let total: i64 = repo
            .batch_counts(&batch_id)
            .await?
            .iter()
            .map(|c| c.count)
            .sum();
        if total == going {
            report.batches += 1;
        }
    }
    Ok(())
}

async fn sweep_uploads(
    blobs: &BlobStore,
    repo: &dyn Repo,
    options: &SweepOptions,
    kept: &mut KeptInputs,
    report: &mut Report,
) -> Result<(), RetentionError> {
    let batch = options.batch.max(1);
    let mut after: Option<String> = None;
    loop {
        let page = repo
            .uploads_before(options.cutoff, after.as_deref(), batch)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.key.clone());
        let full = page.len() == batch;
        kept.refresh(repo, options.cutoff).await?;
        let unused: Vec<&str> = page
            .iter()
            .map(|u| u.key.as_str())
            .filter(|k| !kept.names(k))
            .collect();
        let removals: Vec<_> = unused
            .iter()
            .map(|key| remove(blobs, key, options.dry_run))
            .collect();
        let outcomes = at_once(removals).await;
        let mut gone = Vec::with_capacity(unused.len());
        for (key, outcome) in unused.iter().zip(outcomes) {
            match outcome {
                Ok(size) => {
                    report.uploads.add(size);
                    gone.push((*key).to_owned());
                }
                Err(e) => report.fail((*key).to_owned(), &e),
            }
        }
        if !options.dry_run {
            repo.delete_uploads(&gone).await?;
        }
        if !full {
            break;
        }
    }
    Ok(())
}

/// Runs [`sweep`] every `interval` (the first one sooner) until `shutdown`, deleting what
/// finished more than `days` days before each run; logs what each run deleted.
pub fn spawn_sweeps(
    repo: Arc<dyn Repo>,
    blobs: BlobStore,
    board: Arc<StatusBoard>,
    days: u32,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(
            retention_days = days,
            interval_secs = interval.as_secs(),
            "retention on: finished tasks and their objects are deleted after the retention period"
        );
        let mut wait = interval.min(FIRST_SWEEP_MAX);
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            wait = interval;
            let options = SweepOptions::days(days, now_ms(), false);
            // Stopping mid-sweep is safe: every step can be taken again (module docs).
            let done = tokio::select! {
                done = sweep(&blobs, repo.as_ref(), &options, Some(&board)) => done,
                () = shutdown.cancelled() => return,
            };
            log_sweep(done);
        }
    })
}

fn log_sweep(done: Result<Report, RetentionError>) {
    match done {
        Ok(report) if report.found_any() => {
            tracing::info!(
                tasks = report.tasks,
                batches = report.batches,
                results = report.results.count,
                records = report.records.count,
                uploads = report.uploads.count,
                bytes = report.bytes(),
                kept_in_use = report.kept_in_use,
                failed_objects = report.failed,
                "retention sweep deleted finished tasks and their objects"
            );
            for (key, error) in &report.failures {
                tracing::warn!(key = %key, error = %error, "retention sweep could not delete an object; its task is kept for the next sweep");
            }
        }
        Ok(_) => tracing::debug!("retention sweep found nothing to delete"),
        Err(e) => tracing::warn!(error = %e, "retention sweep failed; the next one takes it up"),
    }
}

/// Why one task could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error("the task is not finished")]
    NotFinished,
    #[error("{0} is an input of an unfinished task")]
    InUse(String),
    #[error(transparent)]
    Database(#[from] RepoError),
    #[error(transparent)]
    Bucket(#[from] BlobError),
}

/// Deletes one finished task at its owner's request: its results (unless an unfinished
/// task uses one as an input: [`DeleteError::InUse`]), its record, its rows, and the
/// uploads it named that no other task names.
pub async fn delete_task(
    blobs: &BlobStore,
    repo: &dyn Repo,
    board: &StatusBoard,
    task: &Task,
) -> Result<(), DeleteError> {
    if !task.state.is_terminal() {
        return Err(DeleteError::NotFinished);
    }
    let in_use = repo
        .objects_in_use(
            &task.result_keys,
            task.created_at,
            &task.id,
            Users::Unfinished,
        )
        .await?;
    if let Some(key) = in_use.into_iter().next() {
        return Err(DeleteError::InUse(key));
    }
    for key in &task.result_keys {
        blobs.delete(key).await?;
    }
    let record = keys::task_record(&task.id).key;
    blobs.delete(&record).await?;
    repo.delete_final_tasks(std::slice::from_ref(&task.id))
        .await?;
    // The engine writes a record after the row changes: one for the task's last change may
    // have landed just now. Without its row nothing rewrites it again.
    blobs.delete(&record).await?;
    board.forget(&task.id, &task.provider, task.provider_task_id.as_deref());
    // The task is gone; its uploads are a tidy-up after it: a failure there is logged, and
    // the retention sweep takes them later.
    if let Err(e) = delete_unused_uploads(blobs, repo, task).await {
        tracing::warn!(task_id = %task.id, error = %e, "deleting a deleted task's uploads failed");
    }
    Ok(())
}

/// The uploads `task` named that no other task names.
async fn delete_unused_uploads(
    blobs: &BlobStore,
    repo: &dyn Repo,
    task: &Task,
) -> Result<(), DeleteError> {
    let mut uploads: Vec<String> = std::iter::once(&task.source)
        .chain(&task.input_urls)
        .filter_map(|t| named_object(t))
        .filter(|k| k.starts_with("uploads/"))
        .map(str::to_owned)
        .collect();
    uploads.sort();
    uploads.dedup();
    let used = repo
        .objects_in_use(&uploads, 0, &task.id, Users::Any)
        .await?;
    uploads.retain(|k| !used.contains(k));
    for key in &uploads {
        blobs.delete(key).await?;
    }
    repo.delete_uploads(&uploads).await?;
    Ok(())
}
