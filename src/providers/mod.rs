//! Image-generation providers behind one trait, and their simulators.
//!
//! Two shapes fit the same trait. KIE is asynchronous: `submit` returns the provider's task
//! id and the outcome arrives later by callback or by `query`. Gemini is synchronous: the
//! images come back in the answer to `submit`. The engine tells them apart only by the
//! [`Submission`] a call returns and the [`Delivery`] a provider declares, never by name.
//! [`build()`] makes every provider from the configuration.

mod build;
pub mod gemini;
pub mod inputs;
pub mod kie;
pub mod sim;

pub use build::{BuiltProvider, BuiltProviders, Limits, build};

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::domain::TaskId;

/// What the dispatcher hands a provider.
#[derive(Clone, Debug)]
pub struct SubmitRequest {
    /// darkroom's id, for the provider's logs; never sent upstream.
    pub task_id: TaskId,
    pub model: String,
    pub prompt: String,
    /// The source image first, then shared references. Uploads appear as their bucket URL.
    pub image_urls: Vec<String>,
    pub aspect_ratio: String,
    pub output_format: String,
    /// Where the provider should report back; carries the task's secret token. `None` for
    /// providers that answer inline, which never call back.
    pub callback_url: Option<String>,
}

/// How a provider's results reach darkroom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Later: a callback, or a `query` when the callback is overdue (KIE).
    Later,
    /// Inside the answer to `submit` (Gemini). Nothing arrives afterwards.
    Inline,
}

/// Images a synchronous provider generated inside the call.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The provider's id for the answer, when it gives one (Gemini's `responseId`).
    pub provider_task_id: Option<String>,
    /// Encoded images, in the provider's order. Checked and stored by ingest like downloads.
    pub images: Vec<Bytes>,
    pub credits: Option<i64>,
    pub cost_time_ms: Option<i64>,
}

/// What the provider said to a submission.
#[derive(Clone, Debug, PartialEq)]
pub enum Submission {
    /// Taken; the outcome comes later (callback or query).
    Accepted { provider_task_id: String },
    /// Generated at once.
    Completed(Generated),
    /// The provider answered, and the answer is that this task produces no image (a blocked
    /// prompt, a safety stop, a text-only reply). Retrying the same input will not help.
    Failed { code: String, message: String },
}

/// The provider's own view of a task.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteStatus {
    /// Accepted, not started (`waiting`, `queuing`).
    Waiting,
    /// Generating, or a state we do not know (treated as in progress).
    Generating,
    Succeeded {
        result_urls: Vec<String>,
        credits: Option<i64>,
        cost_time_ms: Option<i64>,
    },
    Failed {
        code: String,
        message: String,
    },
    /// The provider answered that it has no such task (KIE: `recordInfo` code 404). One such
    /// answer may be the provider catching up; several in a row mean the task is gone.
    Missing {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// May pass: rate limits, maintenance, 5xx, other transport errors of a request that
    /// cannot have created anything.
    #[error("provider temporarily unavailable ({code}): {message}")]
    Retryable {
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Will not pass by retrying: validation, authentication, disabled features.
    #[error("provider refused ({code}): {message}")]
    Permanent { code: String, message: String },
    /// The request may have reached the provider (timeout or reset after sending).
    #[error("no answer from the provider after sending: {0}")]
    Ambiguous(String),
    /// The provider was not reached at all: the connection was refused, its host name did
    /// not resolve, or connecting timed out. Nothing was sent, so nothing can have been
    /// created or billed.
    #[error("the provider could not be reached: {0}")]
    Unreachable(String),
    /// An input image could not be read, so nothing went to the provider: the input's
    /// fault (`input_not_found`, …), final or worth another try as it says.
    #[error("{0}")]
    Input(inputs::InputError),
}

impl ProviderError {
    pub fn code(&self) -> &str {
        match self {
            Self::Retryable { code, .. } | Self::Permanent { code, .. } => code,
            Self::Ambiguous(_) => "ambiguous",
            Self::Unreachable(_) => "unreachable",
            Self::Input(e) => e.code.as_str(),
        }
    }
}

/// A connection to the provider that was never made (refused, its host name did not
/// resolve, connecting timed out) as [`ProviderError::Unreachable`]; `None` for any other
/// transport error, which may have happened after the request was sent.
pub(crate) fn unreachable(e: &reqwest::Error) -> Option<ProviderError> {
    if !e.is_connect() {
        return None;
    }
    if e.is_timeout() {
        return Some(ProviderError::Unreachable(
            "connecting timed out".to_owned(),
        ));
    }
    // reqwest's own text is "error sending request"; the cause is further down the chain
    // ("tcp connect error: Connection refused", "dns error: failed to lookup address …").
    let causes: Vec<String> = std::iter::successors(std::error::Error::source(e), |s| s.source())
        .map(ToString::to_string)
        .filter(|cause| !cause.starts_with("client error"))
        .collect();
    let reason = if causes.is_empty() {
        "the connection could not be made".to_owned()
    } else {
        causes.join(": ")
    };
    Some(ProviderError::Unreachable(reason))
}

/// A provider's `Retry-After` in seconds (the form KIE and Google send), capped at an hour.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// What a provider's callback says, read by the provider that sent it.
#[derive(Clone, Debug)]
pub struct CallbackReport {
    /// The provider's id of the task, when the body names it.
    pub provider_task_id: Option<String>,
    /// The provider's own word for the state, for the log.
    pub state: String,
    pub status: RemoteStatus,
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Short name stored with each task and used in keys and ids (`kie`, `gemini`).
    fn name(&self) -> &'static str;

    /// Whether results come later or inline.
    fn delivery(&self) -> Delivery;

    /// Whether the provider sends input images inline, reading them itself from the URLs in
    /// the request (darkroom's own bucket URLs are read from the bucket). Otherwise it is
    /// handed URLs it can fetch, by the configured input route.
    fn takes_inline_inputs(&self) -> bool {
        false
    }

    /// Hands the task to the provider.
    async fn submit(&self, request: &SubmitRequest) -> Result<Submission, ProviderError>;

    /// Asks the provider where a task stands. Only providers with [`Delivery::Later`] are
    /// ever asked.
    async fn query(&self, provider_task_id: &str) -> Result<RemoteStatus, ProviderError>;

    /// Reads a callback body this provider sent: its task id, its state word and what it
    /// says happened. `None` when the body is not this provider's envelope (or the provider
    /// answers inside the call and sends no callbacks).
    fn parse_callback(&self, body: &serde_json::Value) -> Option<CallbackReport> {
        let _ = body;
        None
    }

    /// The account's remaining credit balance, for providers that report one (KIE's
    /// `chat/credit`); `None` for providers without such an API.
    async fn credits(&self) -> Option<Result<i64, ProviderError>> {
        None
    }

    /// Hands an input file to the provider's own file storage and returns the URL it can
    /// fetch it from. Providers without such an API refuse.
    async fn upload_input(
        &self,
        file: &std::path::Path,
        file_name: &str,
        content_type: &str,
    ) -> Result<String, ProviderError> {
        let _ = (file, file_name, content_type);
        Err(ProviderError::Permanent {
            code: "unsupported".to_owned(),
            message: format!("{} has no file upload API", self.name()),
        })
    }
}
