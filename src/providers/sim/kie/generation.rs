//! Running an accepted task: the simulated wait, fetching and decoding the input image,
//! rendering the result, and recording the outcome.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use serde_json::Value;

use super::super::render::{self, Rendered};
use super::admission::Faults;
use super::callbacks::callback_body;
use super::request::CreateRequest;
use super::stats::Counters;
use super::store::{CREDITS_PER_IMAGE, Failure, StoredFile, TaskState, now_ms};
use super::{KieSim, url_host};

pub(super) const INPUT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const MAX_INPUT_BYTES: usize = 20 * 1024 * 1024;
pub(super) const MAX_INPUT_DIMENSION: u32 = 10_000;
/// Enough for a 10000×6000 RGBA decode; a decompression bomb fails instead of
/// taking the process down.
pub(super) const MAX_DECODE_ALLOC_BYTES: u64 = 256 * 1024 * 1024;

/// Why an input image could not be used; becomes failCode `400`.
#[derive(Debug, thiserror::Error)]
pub(super) enum InputError {
    #[error("Input image could not be fetched: the simulator has no HTTP client ({0})")]
    NoClient(String),
    #[error("Input image could not be fetched: {0}")]
    Transport(String),
    #[error("Input image could not be fetched: its URL answered HTTP {0}")]
    Status(u16),
    #[error("Input image is larger than {} MiB", MAX_INPUT_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("Input image is not a JPEG, PNG or WebP file")]
    UnsupportedFormat,
    #[error("Input image could not be decoded: {0}")]
    Decode(String),
}

impl KieSim {
    pub(super) fn spawn_task(
        self: &Arc<Self>,
        task_id: String,
        request: CreateRequest,
        faults: Faults,
    ) {
        tokio::spawn(Arc::clone(self).run_task(task_id, request, faults));
    }

    /// Generates, records the outcome and delivers the callback, unless shut down first.
    pub(super) async fn run_task(
        self: Arc<Self>,
        task_id: String,
        request: CreateRequest,
        faults: Faults,
    ) {
        let work = async {
            let outcome = self.generate(&task_id, &request, faults).await;
            let payload = self.finish(&task_id, outcome);
            match (&request.callback_url, payload) {
                (Some(url), Some(payload)) => {
                    self.deliver_callbacks(&task_id, url, &payload, faults)
                        .await;
                }
                _ => tracing::debug!(task_id = %task_id, "no callback registered"),
            }
        };
        tokio::select! {
            () = work => {}
            () = self.background.cancelled() => {
                tracing::info!(task_id = %task_id, "kie-sim task abandoned at shutdown");
            }
        }
    }

    /// Waits out the simulated queue and generation time, then produces the image.
    pub(super) async fn generate(
        &self,
        task_id: &str,
        request: &CreateRequest,
        faults: Faults,
    ) -> Result<Rendered, Failure> {
        // KIE shows `waiting` for a while before `generating`; spend a quarter there.
        let queued = faults.latency / 4;
        tokio::time::sleep(queued).await;
        self.set_state(task_id, TaskState::Generating);
        tokio::time::sleep(faults.latency.saturating_sub(queued)).await;
        if faults.fail {
            return Err(Failure::internal());
        }
        let input = match request.image_urls.first() {
            Some(url) => Some(self.fetch_input(url).await.map_err(|err| {
                tracing::info!(task_id = %task_id, host = %url_host(url), error = %err, "kie-sim input unusable");
                Failure::bad_input(&err)
            })?),
            None => None,
        };
        let prompt = request.prompt.clone();
        let aspect = request.aspect.clone();
        let format = request.output_format;
        let long_side = self.config.image_long_side;
        // Decoding and encoding are CPU-bound; keep them off the async workers.
        let rendered = tokio::task::spawn_blocking(move || {
            let source = match input {
                Some(bytes) => decode_input(&bytes).map_err(|err| Failure::bad_input(&err))?,
                None => render::canvas(&prompt),
            };
            render::render(&source, &prompt, &aspect, format, long_side).map_err(|err| {
                tracing::error!(error = %err, "kie-sim could not render a result");
                Failure::internal()
            })
        })
        .await;
        rendered.unwrap_or_else(|err| {
            tracing::error!(task_id = %task_id, error = %err, "kie-sim render task died");
            Err(Failure::internal())
        })
    }

    /// Downloads an input image: 10 s for the whole exchange, at most 20 MiB.
    pub(super) async fn fetch_input(&self, url: &str) -> Result<Bytes, InputError> {
        let client = self.http().map_err(InputError::NoClient)?;
        // The URL may be presigned; keep it out of error texts that end up in failMsg.
        let transport = |err: reqwest::Error| InputError::Transport(err.without_url().to_string());
        let mut response = client
            .get(url)
            .timeout(INPUT_FETCH_TIMEOUT)
            .send()
            .await
            .map_err(transport)?;
        if !response.status().is_success() {
            return Err(InputError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_INPUT_BYTES as u64)
        {
            return Err(InputError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_INPUT_BYTES {
                return Err(InputError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }

    /// Loses a task it has just accepted: its reserved credits go back, and from now on
    /// `recordInfo` does not know it.
    pub(super) fn forget(&self, task_id: &str) {
        let mut ledger = self.ledger();
        if ledger.tasks.remove(task_id).is_some() {
            ledger.credits_reserved = ledger.credits_reserved.saturating_sub(CREDITS_PER_IMAGE);
        }
        drop(ledger);
        Counters::bump(&self.counters.forgotten);
    }

    pub(super) fn set_state(&self, task_id: &str, state: TaskState) {
        if let Some(task) = self.ledger().tasks.get_mut(task_id) {
            task.state = state;
            task.update_time_ms = now_ms();
        }
    }

    /// Records the outcome (storing the result file) and returns the callback body.
    pub(super) fn finish(
        &self,
        task_id: &str,
        outcome: Result<Rendered, Failure>,
    ) -> Option<Value> {
        let now = now_ms();
        let mut ledger = self.ledger();
        ledger.credits_reserved = ledger.credits_reserved.saturating_sub(CREDITS_PER_IMAGE);
        let (state, result_urls, failure, credits) = match outcome {
            Ok(rendered) => {
                let name = format!("{task_id}-0.{}", rendered.extension);
                let url = format!("{}{name}", self.files_base);
                ledger.store_file(
                    name,
                    StoredFile {
                        bytes: Bytes::from(rendered.bytes),
                        content_type: rendered.content_type,
                    },
                );
                ledger.credits_used += CREDITS_PER_IMAGE;
                (TaskState::Success, vec![url], None, CREDITS_PER_IMAGE)
            }
            Err(failure) => (TaskState::Fail, Vec::new(), Some(failure), 0),
        };
        let remained = ledger.remaining_credits();
        let task = ledger.tasks.get_mut(task_id)?;
        task.state = state;
        task.result_urls = result_urls;
        task.failure = failure;
        task.credits = credits;
        task.update_time_ms = now;
        task.complete_time_ms = Some(now);
        let cost = task.started.elapsed();
        task.cost = Some(cost);
        let counter = match state {
            TaskState::Success => &self.counters.succeeded,
            _ => &self.counters.failed,
        };
        Counters::bump(counter);
        tracing::info!(
            task_id = %task_id,
            state = state.as_str(),
            fail_code = task.failure.as_ref().map(|failure| failure.code),
            fail_msg = task.failure.as_ref().map(|failure| failure.message.as_str()),
            cost_ms = u64::try_from(cost.as_millis()).unwrap_or(u64::MAX),
            "kie-sim task finished"
        );
        Some(callback_body(task_id, task, remained))
    }
}

fn decode_input(bytes: &[u8]) -> Result<DynamicImage, InputError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|err| InputError::Decode(err.to_string()))?;
    if !matches!(
        reader.format(),
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)
    ) {
        return Err(InputError::UnsupportedFormat);
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_DIMENSION);
    limits.max_image_height = Some(MAX_INPUT_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC_BYTES);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|err| InputError::Decode(err.to_string()))
}
