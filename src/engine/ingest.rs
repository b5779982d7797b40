//! Copying results from the provider into the bucket under deterministic keys. A task is
//! never `succeeded` without every one of its images stored. Each download is spooled to a
//! temporary file, so memory does not grow with result size.

use bytes::Bytes;

use super::{Engine, after, backoff, now_ms};
use crate::domain::Event;
use crate::domain::image::inspect_reader;
use crate::net::FetchError;
use crate::storage::keys;
use crate::storage::{RepoError, Task, TaskUpdate};

/// Why one result could not be stored, and whether trying again may help.
pub(super) struct IngestFailure {
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) retryable: bool,
}

impl From<FetchError> for IngestFailure {
    fn from(e: FetchError) -> Self {
        Self {
            code: "result_download_failed",
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

fn local_failure(e: std::io::Error) -> IngestFailure {
    IngestFailure {
        code: "spool_failed",
        message: format!("the temporary download file could not be used: {e}"),
        retryable: true,
    }
}

impl Engine {
    pub(super) async fn ingest(&self, task: Task) -> Result<(), RepoError> {
        match self.store_results(&task).await {
            Ok(stored) => {
                let (result_keys, result_urls): (Vec<_>, Vec<_>) = stored.into_iter().unzip();
                let update = TaskUpdate {
                    result_keys: Some(result_keys),
                    result_urls: Some(result_urls),
                    error: Some(None),
                    ..TaskUpdate::default()
                };
                self.apply(&task, Event::Ingested, true, update)
                    .await
                    .map(|_| ())
            }
            Err(failure) => {
                let attempts = task.attempts + 1;
                // Downloads get more tries than creates: the task is already paid for.
                let give_up = !failure.retryable || attempts >= self.settings.max_attempts * 2;
                tracing::warn!(task_id = %task.id, attempt = attempts, give_up, error = %failure.message, "storing results failed");
                let error = Some(Some((failure.code.to_owned(), failure.message)));
                if give_up {
                    let update = TaskUpdate {
                        error,
                        add_attempt: true,
                        ..TaskUpdate::default()
                    };
                    self.apply(&task, Event::IngestFailed, true, update)
                        .await
                        .map(|_| ())
                } else {
                    let update = TaskUpdate {
                        run_at: Some(after(now_ms(), backoff(attempts.min(6), None))),
                        release_lease: true,
                        add_attempt: true,
                        error,
                        ..TaskUpdate::default()
                    };
                    self.touch(&task, update).await.map(|_| ())
                }
            }
        }
    }

    /// Downloads, checks and stores each result; returns `(key, url)` per result in order.
    async fn store_results(&self, task: &Task) -> Result<Vec<(String, String)>, IngestFailure> {
        if task.result_source_urls.is_empty() {
            return Err(IngestFailure {
                code: "no_results",
                message: "the provider reported success without any result URL".to_owned(),
                retryable: false,
            });
        }
        let mut stored = Vec::with_capacity(task.result_source_urls.len());
        for (index, url) in task.result_source_urls.iter().enumerate() {
            stored.push(self.store_result(task, index, url).await?);
        }
        Ok(stored)
    }

    async fn store_result(
        &self,
        task: &Task,
        index: usize,
        url: &str,
    ) -> Result<(String, String), IngestFailure> {
        let started = std::time::Instant::now();
        // Removed when dropped, whatever happens below.
        let spool = tempfile::NamedTempFile::new().map_err(local_failure)?;
        let size = self
            .fetcher
            .download_to(url, self.settings.max_result_bytes, spool.path())
            .await?;
        self.store_spooled(task, index, &spool, size, started).await
    }

    /// A result a synchronous provider handed over inline takes the same path as a
    /// download from the moment it is in a spool file: the same checks, key and write.
    pub(super) async fn store_inline_result(
        &self,
        task: &Task,
        index: usize,
        bytes: &Bytes,
    ) -> Result<(String, String), IngestFailure> {
        let started = std::time::Instant::now();
        let size = bytes.len() as u64;
        if size > self.settings.max_result_bytes {
            return Err(IngestFailure {
                code: "result_too_large",
                message: format!(
                    "result {index} is larger than the {}-byte limit",
                    self.settings.max_result_bytes
                ),
                retryable: false,
            });
        }
        let spool = tempfile::NamedTempFile::new().map_err(local_failure)?;
        tokio::fs::write(spool.path(), bytes)
            .await
            .map_err(local_failure)?;
        self.store_spooled(task, index, &spool, size, started).await
    }

    /// Checks a spooled result is an image and writes it create-only under its
    /// deterministic key; returns `(key, url)`.
    async fn store_spooled(
        &self,
        task: &Task,
        index: usize,
        spool: &tempfile::NamedTempFile,
        size: u64,
        started: std::time::Instant,
    ) -> Result<(String, String), IngestFailure> {
        let reader = std::io::BufReader::new(spool.reopen().map_err(local_failure)?);
        let info =
            inspect_reader(reader, self.settings.image_limits).map_err(|e| IngestFailure {
                code: "result_not_an_image",
                message: format!("result {index} is not a usable image: {e}"),
                retryable: false,
            })?;
        let spec = keys::generated(&task.provider, &task.id, index, info.kind);
        let created = self
            .blobs
            .put_file(&spec, spool.path(), true)
            .await
            .map_err(|e| IngestFailure {
                code: "storage_failed",
                message: format!("writing {} failed: {e}", spec.key),
                retryable: true,
            })?;
        tracing::info!(
            task_id = %task.id,
            key = %spec.key,
            bytes = size,
            created = ?created,
            duration_ms = started.elapsed().as_millis() as u64,
            "result stored"
        );
        let public = self.blobs.url(&spec.key);
        Ok((spec.key, public))
    }
}
