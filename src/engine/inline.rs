//! Ingest of images a synchronous provider returned inside its answer. They exist only in
//! this worker's memory, so the worker that received them stores them at once, holding the
//! task's lease throughout (the job's heartbeat extends it): the same checks, the same deterministic keys, the same events
//! and record as downloaded results. A storage hiccup is retried here, with the bytes at
//! hand; a bucket that refuses writes is waited out without spending the budget. A task
//! found `ingesting` by anyone else completes from the bucket if every image was stored
//! before its worker stopped, and otherwise has lost its images and fails saying so.

use std::time::Duration;

use bytes::Bytes;

use super::ingest::{INLINE_SOURCE, IngestFailure};
use super::job::{Outcome, Reason, RetryPolicy};
use super::{Engine, after, now_ms};
use crate::domain::{Event, JobCode};
use crate::providers::Generated;
use crate::storage::{RepoError, Task, TaskUpdate};

/// Storage retries for inline images get the same budget as downloads, with shorter waits
/// (4 s doubling to 32 s): the bytes are held in memory (and a provider slot is held)
/// meanwhile. The waits happen here, holding the lease, not in the queue: the images
/// exist nowhere else.
const STORE_RETRY: RetryPolicy =
    RetryPolicy::doubling(Duration::from_secs(4), Duration::from_secs(32), None);

impl Engine {
    /// The provider generated the images: the task moves to `ingesting` (keeping the lease,
    /// so no other worker looks for images it cannot have) and they are stored.
    pub(super) async fn completed_inline(
        &self,
        task: &Task,
        generated: Generated,
    ) -> Result<Outcome, RepoError> {
        let now = now_ms();
        // One source per image: how many to look for in the bucket if this worker stops.
        let sources = (0..generated.images.len())
            .map(|n| format!("{INLINE_SOURCE}{n}"))
            .collect();
        let update = TaskUpdate {
            result_source_urls: Some(sources),
            provider_task_id: generated.provider_task_id,
            credits: generated.credits,
            cost_time_ms: generated.cost_time_ms,
            submitted_at: Some(now),
            add_attempt: true,
            error: Some(None),
            // Not due for the ingest workers: this one stores the images (the job's
            // heartbeat keeps the lease), and only if it dies does the lease run out.
            run_at: Some(after(now, self.settings.lease)),
            ..TaskUpdate::default()
        };
        let Some(ingesting) = self
            .apply(task, Event::ProviderSucceeded, true, update)
            .await?
        else {
            return Ok(Outcome::Done);
        };
        self.store_inline(ingesting, generated.images).await?;
        Ok(Outcome::Done)
    }

    /// Stores the images, waiting in place between tries; settles the task itself, since
    /// it has moved on to `ingesting` since it was claimed.
    async fn store_inline(&self, mut task: Task, images: Vec<Bytes>) -> Result<(), RepoError> {
        let mut attempt = 0;
        let mut waits = 0;
        loop {
            waits += 1;
            let (failure, stored) = match self.store_images(&task, &images).await {
                Ok(stored) => return self.ingested(&task, stored).await,
                Err(failed) => failed,
            };
            // A bucket that refuses writes is the operator's to fix: the images are held
            // (and the task's provider slot with them) until it accepts them again.
            if !failure.storage {
                attempt += 1;
            }
            let give_up = !failure.retryable || self.download_retry().exhausted(attempt);
            tracing::warn!(task_id = %task.id, attempt, give_up, code = %failure.code, error = %failure.message, "storing inline results failed");
            if give_up {
                // The attempt was counted when the images came.
                let reason = Reason::free(failure.code, failure.message);
                if self
                    .settle(&task, Outcome::GiveUp(reason), true)
                    .await?
                    .is_some()
                {
                    self.remove_results(&task, &stored).await;
                }
                return Ok(());
            }
            let error = Some(Some((failure.code.as_str().to_owned(), failure.message)));
            let wait = STORE_RETRY.delay(waits).unwrap_or(STORE_RETRY.cap);
            // The lease stays (the heartbeat extends it); the error shows why it waits.
            let keep = TaskUpdate {
                error,
                run_at: Some(after(now_ms(), wait + self.settings.lease)),
                ..TaskUpdate::default()
            };
            match self.touch(&task, keep).await? {
                Some(current) => task = current,
                None => return Ok(()),
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Stores each image; on a failure, returns it with the keys stored before it.
    async fn store_images(
        &self,
        task: &Task,
        images: &[Bytes],
    ) -> Result<Vec<(String, String)>, (IngestFailure, Vec<String>)> {
        if images.is_empty() {
            let failure = IngestFailure::permanent(
                JobCode::NoResults,
                "the provider reported success without any image".to_owned(),
            );
            return Err((failure, Vec::new()));
        }
        let mut stored = Vec::with_capacity(images.len());
        for (index, bytes) in images.iter().enumerate() {
            match self.store_inline_result(task, index, bytes).await {
                Ok(result) => stored.push(result),
                Err(failure) => return Err((failure, stored.into_iter().map(|r| r.0).collect())),
            }
        }
        Ok(stored)
    }

    /// An `ingesting` task of a synchronous provider whose worker is gone (stopped, or its
    /// lease ran out mid-store). If it had stored every image before it stopped, the task
    /// completes from the bucket (ingest looks there first; the task's `inline:{n}` sources
    /// say how many images there were); otherwise the images went with it.
    pub(super) async fn inline_results_lost(&self, task: &Task) -> Result<Outcome, RepoError> {
        if task
            .result_source_urls
            .iter()
            .any(|source| source.starts_with(INLINE_SOURCE))
        {
            return self.ingest(task.clone()).await;
        }
        tracing::warn!(task_id = %task.id, provider = %task.provider, "inline results were lost before they were stored");
        Ok(Outcome::GiveUp(Reason::free(
            JobCode::ResultsLost,
            format!(
                "the images {} generated were lost before they were stored (darkroom stopped while storing them); generate again",
                task.provider
            ),
        )))
    }
}
