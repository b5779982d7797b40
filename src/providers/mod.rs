//! Image-generation providers behind one trait, and their simulators.

pub mod kie;
pub mod sim;

use std::time::Duration;

use async_trait::async_trait;

/// What the dispatcher hands a provider.
#[derive(Clone, Debug)]
pub struct SubmitRequest {
    pub model: String,
    pub prompt: String,
    pub image_urls: Vec<String>,
    pub aspect_ratio: String,
    pub output_format: String,
    /// Where the provider should report back; carries the task's secret token.
    pub callback_url: String,
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
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// May pass: rate limits, maintenance, 5xx, transport errors before the request was sent.
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
}

impl ProviderError {
    pub fn code(&self) -> &str {
        match self {
            Self::Retryable { code, .. } | Self::Permanent { code, .. } => code,
            Self::Ambiguous(_) => "ambiguous",
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Short name used in keys and ids (`kie`).
    fn name(&self) -> &'static str;

    /// Creates the task at the provider; returns the provider's task id.
    async fn submit(&self, request: &SubmitRequest) -> Result<String, ProviderError>;

    /// Asks the provider where a task stands.
    async fn query(&self, provider_task_id: &str) -> Result<RemoteStatus, ProviderError>;

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
