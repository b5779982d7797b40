//! Ingest of images a synchronous provider returned inside its answer. They exist only in
//! this worker's memory, so the worker that received them stores them at once, holding the
//! task's lease throughout (the job's heartbeat extends it): the same checks, the same deterministic keys, the same events
//! and record as downloaded results. A storage hiccup is retried here, with the bytes at
//! hand; a task found `ingesting` by anyone else has lost its images and fails saying so.

use bytes::Bytes;

use super::ingest::IngestFailure;
use super::{Engine, after, backoff, now_ms};
use crate::domain::Event;
use crate::providers::Generated;
use crate::storage::{RepoError, Task, TaskUpdate};

/// Storage retries for inline images get the same budget as downloads, with shorter waits:
/// the bytes are held in memory (and a provider slot is held) meanwhile.
const MAX_STORE_BACKOFF_STEP: u32 = 4;

impl Engine {
    /// The provider generated the images: the task moves to `ingesting` (keeping the lease,
    /// so no other worker looks for images it cannot have) and they are stored.
    pub(super) async fn completed_inline(
        &self,
        task: &Task,
        generated: Generated,
    ) -> Result<(), RepoError> {
        let now = now_ms();
        let update = TaskUpdate {
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
            return Ok(());
        };
        self.store_inline(ingesting, generated.images).await
    }

    async fn store_inline(&self, mut task: Task, images: Vec<Bytes>) -> Result<(), RepoError> {
        let max_attempts = self.settings.max_attempts * 2;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.store_images(&task, &images).await {
                Ok(stored) => {
                    let (result_keys, result_urls): (Vec<_>, Vec<_>) = stored.into_iter().unzip();
                    let update = TaskUpdate {
                        result_keys: Some(result_keys),
                        result_urls: Some(result_urls),
                        error: Some(None),
                        ..TaskUpdate::default()
                    };
                    return self
                        .apply(&task, Event::Ingested, true, update)
                        .await
                        .map(|_| ());
                }
                Err(failure) => failure,
            };
            let give_up = !failure.retryable || attempt >= max_attempts;
            tracing::warn!(task_id = %task.id, attempt, give_up, error = %failure.message, "storing inline results failed");
            let error = Some(Some((failure.code.to_owned(), failure.message)));
            if give_up {
                let update = TaskUpdate {
                    error,
                    ..TaskUpdate::default()
                };
                return self
                    .apply(&task, Event::IngestFailed, true, update)
                    .await
                    .map(|_| ());
            }
            let wait = backoff(attempt.min(MAX_STORE_BACKOFF_STEP), None);
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

    async fn store_images(
        &self,
        task: &Task,
        images: &[Bytes],
    ) -> Result<Vec<(String, String)>, IngestFailure> {
        if images.is_empty() {
            return Err(IngestFailure {
                code: "no_results",
                message: "the provider reported success without any image".to_owned(),
                retryable: false,
            });
        }
        let mut stored = Vec::with_capacity(images.len());
        for (index, bytes) in images.iter().enumerate() {
            stored.push(self.store_inline_result(task, index, bytes).await?);
        }
        Ok(stored)
    }

    /// An `ingesting` task of a synchronous provider whose worker is gone (stopped, or its
    /// lease ran out mid-store): the images went with it.
    pub(super) async fn inline_results_lost(&self, task: &Task) -> Result<(), RepoError> {
        tracing::warn!(task_id = %task.id, provider = %task.provider, "inline results were lost before they were stored");
        let update = TaskUpdate {
            error: Some(Some((
                "results_lost".to_owned(),
                format!(
                    "the images {} generated were lost before they were stored (darkroom stopped while storing them); generate again",
                    task.provider
                ),
            ))),
            ..TaskUpdate::default()
        };
        self.apply(task, Event::IngestFailed, true, update)
            .await
            .map(|_| ())
    }
}
