//! Copying results from the provider into the bucket under deterministic keys. A task is
//! never `succeeded` without every one of its images stored. Each download is spooled to a
//! temporary file, so memory does not grow with result size.
//!
//! Before downloading result n, ingest looks for it in the bucket: an earlier ingest that
//! stored it and stopped before recording it (a restart, a database that refused the
//! write) left it there, complete, and the provider's URL may have expired since. A bucket
//! that refuses writes (full, read-only, failing) is the operator's to fix, not the task's
//! fault: the task waits for it without spending an attempt.

use bytes::Bytes;
use futures::StreamExt;

use std::time::Duration;

use super::Engine;
use super::job::{Outcome, Reason, RetryPolicy};
use crate::domain::image::ImageKind;
use crate::domain::{Event, JobCode};
use crate::net::FetchError;
use crate::spool::{SpoolWriter, Spooled};
use crate::storage::blob::Created;
use crate::storage::keys::{self, ObjectSpec};
use crate::storage::{BlobError, RepoError, StorageFault, Task, TaskUpdate};

/// A task whose result the bucket refused tries again after 8 s (± 20 %), however long it
/// takes: soon enough that recovery shows within seconds, and no attempt is spent meanwhile.
pub(super) const BUCKET_WAIT: RetryPolicy =
    RetryPolicy::doubling(Duration::from_secs(8), Duration::from_secs(8), None);

/// Stands for image n of a synchronous provider's answer among a task's result sources
/// (`inline:{n}`): there is nothing to download, but their number tells an ingest after a
/// restart how many images to look for in the bucket.
pub(super) const INLINE_SOURCE: &str = "inline:";

/// Why one result could not be stored, and whether trying again may help.
pub(super) struct IngestFailure {
    pub(super) code: JobCode,
    pub(super) message: String,
    pub(super) retryable: bool,
    /// The bucket refused: waited out without spending an attempt.
    pub(super) storage: bool,
}

impl IngestFailure {
    pub(super) fn permanent(code: JobCode, message: String) -> Self {
        Self {
            code,
            message,
            retryable: false,
            storage: false,
        }
    }

    /// The bucket refused `what`: its fault's stable code (`storage_full`, …), and
    /// `storage_unavailable` for an error that names no fault (a remote bucket answering
    /// 5xx, a dropped connection).
    fn bucket(what: &str, e: &BlobError) -> Self {
        let fault = e.fault().unwrap_or(StorageFault::Failing);
        Self {
            code: fault.job_code(),
            message: format!(
                "the bucket refused {what}: {e}; the task waits for it to accept writes again, without spending an attempt"
            ),
            retryable: true,
            storage: true,
        }
    }
}

impl From<FetchError> for IngestFailure {
    fn from(e: FetchError) -> Self {
        Self {
            code: JobCode::ResultDownloadFailed,
            retryable: e.is_retryable(),
            message: e.to_string(),
            storage: false,
        }
    }
}

fn local_failure(e: std::io::Error) -> IngestFailure {
    IngestFailure {
        code: JobCode::SpoolFailed,
        message: format!("the temporary download file could not be used: {e}"),
        retryable: true,
        storage: false,
    }
}

/// The bucket refused a result: the task is due again shortly, its lease handed back, no
/// attempt spent, and the reason on the task. Logged once a minute with a count.
fn wait_for_bucket(task: &Task, failure: IngestFailure) -> Outcome {
    let summary = format!("ingest: the bucket refuses results ({})", failure.code);
    if let Some(repeated) = crate::log_throttle::errors().admit(&summary) {
        tracing::warn!(task_id = %task.id, code = %failure.code, error = %failure.message, repeated, "the bucket refused a result; the task waits without spending an attempt");
    }
    Outcome::RetryIn {
        delay: BUCKET_WAIT.delay(1).unwrap_or(BUCKET_WAIT.cap),
        reason: Reason::free(failure.code, failure.message),
    }
}

/// The image type a result URL's name suggests, if any.
fn kind_of_source(source: &str) -> Option<ImageKind> {
    let path = url::Url::parse(source).ok()?.path().to_owned();
    let (_, ext) = path.rsplit_once('.')?;
    ImageKind::from_extension(ext)
}

impl Engine {
    /// Downloads (4 s doubling to about 2 min, ±20 %) get twice the attempts of creates:
    /// the task is already paid for. The count is the task's, creates included.
    pub(super) fn download_retry(&self) -> RetryPolicy {
        RetryPolicy::doubling(
            Duration::from_secs(4),
            Duration::from_secs(128),
            Some(self.settings.max_attempts * 2),
        )
    }

    pub(super) async fn ingest(&self, task: Task) -> Result<Outcome, RepoError> {
        let (failure, stored) = match self.store_results(&task).await {
            Ok(stored) => {
                self.ingested(&task, stored).await?;
                return Ok(Outcome::Done);
            }
            Err(failed) => failed,
        };
        if failure.storage {
            return Ok(wait_for_bucket(&task, failure));
        }
        let attempts = task.attempts + 1;
        let delay = if failure.retryable {
            self.download_retry().delay(attempts)
        } else {
            None
        };
        tracing::warn!(task_id = %task.id, attempt = attempts, give_up = delay.is_none(), error = %failure.message, "storing results failed");
        let reason = Reason::spent(failure.code, failure.message);
        if let Some(delay) = delay {
            return Ok(Outcome::RetryIn { delay, reason });
        }
        // Settled here, not by the worker: once the task has failed, the results it had
        // stored go with it.
        if self
            .settle(&task, Outcome::GiveUp(reason), true)
            .await?
            .is_some()
        {
            self.remove_results(&task, &stored).await;
        }
        Ok(Outcome::Done)
    }

    /// Every result is stored: the task succeeds with their keys and URLs.
    pub(super) async fn ingested(
        &self,
        task: &Task,
        stored: Vec<(String, String)>,
    ) -> Result<(), RepoError> {
        let (result_keys, result_urls): (Vec<_>, Vec<_>) = stored.into_iter().unzip();
        let update = TaskUpdate {
            result_keys: Some(result_keys),
            result_urls: Some(result_urls),
            error: Some(None),
            ..TaskUpdate::default()
        };
        self.apply(task, Event::Ingested, true, update)
            .await
            .map(|_| ())
    }

    /// Removes the results a task that failed had stored: no object outlives its task's
    /// failure unannounced. A removal that fails is logged.
    pub(super) async fn remove_results(&self, task: &Task, keys: &[String]) {
        for key in keys {
            if let Err(e) = self.blobs.delete(key).await {
                tracing::warn!(task_id = %task.id, key = %key, error = %e, "removing a result of a failed task failed; the object is left behind");
            }
        }
    }

    /// Stores each result (or finds it stored); returns `(key, url)` per result in order,
    /// or the first failure with the keys stored before it.
    async fn store_results(
        &self,
        task: &Task,
    ) -> Result<Vec<(String, String)>, (IngestFailure, Vec<String>)> {
        if task.result_source_urls.is_empty() {
            let failure = IngestFailure::permanent(
                JobCode::NoResults,
                "the provider reported success without any result URL".to_owned(),
            );
            return Err((failure, Vec::new()));
        }
        let mut stored = Vec::with_capacity(task.result_source_urls.len());
        for (index, source) in task.result_source_urls.iter().enumerate() {
            match self.store_result(task, index, source).await {
                Ok(result) => stored.push(result),
                Err(failure) => return Err((failure, stored.into_iter().map(|r| r.0).collect())),
            }
        }
        Ok(stored)
    }

    /// Downloads result `index` and stores it. An earlier attempt may have stored it
    /// already (darkroom stopped between the write and the record of it): the create-only
    /// write finds that object under the same key and keeps it once it is checked whole.
    /// The bucket is searched before anything else only where the download cannot help:
    /// an inline result (its bytes were only ever in memory) and a download that failed
    /// (the provider's URL may have expired since).
    async fn store_result(
        &self,
        task: &Task,
        index: usize,
        source: &str,
    ) -> Result<(String, String), IngestFailure> {
        let started = std::time::Instant::now();
        if source.starts_with(INLINE_SOURCE) {
            if let Some(found) = self.stored_earlier(task, index, None).await? {
                tracing::info!(task_id = %task.id, key = %found.0, "result found in the bucket");
                return Ok(found);
            }
            return Err(IngestFailure::permanent(
                JobCode::ResultsLost,
                format!(
                    "the images {} generated were lost before they were stored (darkroom stopped while storing them); generate again",
                    task.provider
                ),
            ));
        }
        // A temporary file, if any, is removed when dropped, whatever happens below.
        let spooled = match self
            .fetcher
            .download_spooled(source, self.settings.max_result_bytes)
            .await
        {
            Ok(spooled) => spooled,
            Err(e) => {
                let failure = IngestFailure::from(e);
                if let Some(found) = self
                    .stored_earlier(task, index, kind_of_source(source))
                    .await?
                {
                    tracing::info!(task_id = %task.id, key = %found.0, error = %failure.message, "the download failed, but an earlier attempt stored the result: kept");
                    return Ok(found);
                }
                return Err(failure);
            }
        };
        self.store_spooled(task, index, &spooled, started).await
    }

    /// Result `index` of `task`, if an earlier ingest stored it under its deterministic key.
    /// The key's extension comes from the bytes, so each image type's key is asked about
    /// (at once: one round trip), the declared type's first. Writes are create-only and
    /// published whole — the local directory writes a staging file and links it into place,
    /// S3 shows an object only once its PUT or multipart upload completes — so an object
    /// there was written completely; it is still read whole and checked like a download
    /// (someone else may have put it there). One that is not a usable image of its key's
    /// type is removed, and the result is downloaded again.
    async fn stored_earlier(
        &self,
        task: &Task,
        index: usize,
        hint: Option<ImageKind>,
    ) -> Result<Option<(String, String)>, IngestFailure> {
        let declared = ImageKind::from_extension(&task.output_format);
        let mut kinds: Vec<ImageKind> = Vec::with_capacity(3);
        for kind in [declared, hint].into_iter().flatten().chain([
            ImageKind::Png,
            ImageKind::Jpeg,
            ImageKind::Webp,
        ]) {
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        let specs: Vec<(ObjectSpec, ImageKind)> = kinds
            .into_iter()
            .map(|kind| (keys::generated(&task.provider, &task.id, index, kind), kind))
            .collect();
        let found =
            futures::future::join_all(specs.iter().map(|(spec, _)| self.blobs.exists(&spec.key)))
                .await;
        for ((spec, kind), exists) in specs.into_iter().zip(found) {
            match exists {
                Ok(false) => {}
                Ok(true) => {
                    if self.complete_in_bucket(task, &spec, kind).await? {
                        let url = self.blobs.url(&spec.key);
                        return Ok(Some((spec.key, url)));
                    }
                }
                Err(e) => {
                    return Err(IngestFailure::bucket(
                        &format!("a lookup of {}", spec.key),
                        &e,
                    ));
                }
            }
        }
        Ok(None)
    }

    /// Whether the object under `spec` is a usable image of `kind`, read whole (spooled, so
    /// memory stays bounded); one that is not is removed.
    async fn complete_in_bucket(
        &self,
        task: &Task,
        spec: &ObjectSpec,
        kind: ImageKind,
    ) -> Result<bool, IngestFailure> {
        let reading = |e: &BlobError| IngestFailure::bucket(&format!("reading {}", spec.key), e);
        let object = match self.blobs.get(&spec.key).await {
            Ok(object) => object,
            Err(BlobError::NotFound(_)) => return Ok(false),
            Err(e) => return Err(reading(&e)),
        };
        let size = object.meta.size;
        let problem = if size == 0 {
            "it is empty".to_owned()
        } else if size > self.settings.max_result_bytes {
            format!(
                "it is larger than the {} limit",
                crate::domain::size::human(self.settings.max_result_bytes)
            )
        } else {
            let mut spool = SpoolWriter::expecting(Some(size));
            let mut stream = object.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| reading(&BlobError::from(e)))?;
                spool.write(&chunk).map_err(local_failure)?;
            }
            let spooled = spool.finish().map_err(local_failure)?;
            match spooled
                .inspect(self.settings.image_limits)
                .map_err(local_failure)?
            {
                Ok(info) if info.kind == kind => return Ok(true),
                Ok(info) => format!("it holds a {:?} image", info.kind),
                Err(e) => e.to_string(),
            }
        };
        tracing::warn!(task_id = %task.id, key = %spec.key, bytes = size, problem = %problem, "an object under a result's key is not a usable image; removing it and downloading the result again");
        self.blobs
            .delete(&spec.key)
            .await
            .map_err(|e| IngestFailure::bucket(&format!("removing {}", spec.key), &e))?;
        Ok(false)
    }

    /// A result a synchronous provider handed over inline takes the same path as a
    /// download from the moment it is spooled: the same checks, key and write.
    pub(super) async fn store_inline_result(
        &self,
        task: &Task,
        index: usize,
        bytes: &Bytes,
    ) -> Result<(String, String), IngestFailure> {
        let started = std::time::Instant::now();
        if bytes.len() as u64 > self.settings.max_result_bytes {
            return Err(IngestFailure::permanent(
                JobCode::ResultTooLarge,
                format!(
                    "result {index} is larger than the {} limit",
                    crate::domain::size::human(self.settings.max_result_bytes)
                ),
            ));
        }
        self.store_spooled(task, index, &Spooled::Memory(bytes.clone()), started)
            .await
    }

    /// Checks a spooled result is an image and writes it create-only under its
    /// deterministic key; returns `(key, url)`.
    async fn store_spooled(
        &self,
        task: &Task,
        index: usize,
        spooled: &Spooled,
        started: std::time::Instant,
    ) -> Result<(String, String), IngestFailure> {
        let size = spooled.len().map_err(local_failure)?;
        let checked = spooled
            .inspect(self.settings.image_limits)
            .map_err(local_failure)?;
        let info = checked.map_err(|e| {
            IngestFailure::permanent(
                JobCode::ResultNotAnImage,
                format!("result {index} is not a usable image: {e}"),
            )
        })?;
        let spec = keys::generated(&task.provider, &task.id, index, info.kind);
        let write = || async {
            self.blobs
                .put_spooled(&spec, spooled, true)
                .await
                .map_err(|e| IngestFailure::bucket(&format!("writing {}", spec.key), &e))
        };
        let mut created = write().await?;
        // An object already there is an earlier attempt's, kept if it is whole; one that
        // is not a usable image is removed and this one written in its place.
        if created == Created::AlreadyExisted
            && !self.complete_in_bucket(task, &spec, info.kind).await?
        {
            created = write().await?;
        }
        self.metrics
            .ingested(&task.provider, size, started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_url_suggests_its_type_by_its_name_only() {
        assert_eq!(
            kind_of_source("https://files.example/r/abc-0.jpeg?sig=x"),
            Some(ImageKind::Jpeg)
        );
        assert_eq!(
            kind_of_source("http://127.0.0.1:9/files/abc-0.png"),
            Some(ImageKind::Png)
        );
        assert_eq!(kind_of_source("https://files.example/r/abc"), None);
        assert_eq!(kind_of_source("inline:0"), None);
    }
}
