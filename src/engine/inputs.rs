//! How a task's input images reach the provider. Inputs are stored as darkroom's own
//! stable URLs; what the provider is handed is decided at dispatch time, so presigned URLs
//! are fresh when the provider fetches them, however long the task waited in the queue.
//! A client's own URL is passed on as it is, after a look at its first bytes.

use std::time::Duration;

use super::Engine;
use crate::providers::{Provider, ProviderError};
use crate::storage::Task;
use crate::storage::keys::serving_metadata;

/// The route chosen at start from `storage.input_mode` and the bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputRoute {
    /// `{R2_PUBLIC_BASE_URL}/{key}`.
    Public,
    /// A presigned GET URL valid this long.
    Presigned(Duration),
    /// darkroom's own `{public_url}/files/{key}`.
    Proxy,
    /// Pushed through the provider's file upload API.
    ProviderUpload,
}

impl InputRoute {
    /// The `storage.input_mode` value that names this route (`proxy`, `kie-upload`).
    pub fn mode(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Presigned(_) => "presigned",
            Self::Proxy => "proxy",
            Self::ProviderUpload => "kie-upload",
        }
    }
}

impl std::fmt::Display for InputRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Public => f.write_str("the bucket's public URLs"),
            Self::Presigned(ttl) => write!(f, "presigned URLs valid {} s", ttl.as_secs()),
            Self::Proxy => f.write_str("darkroom's own /files URLs"),
            Self::ProviderUpload => f.write_str("the provider's file upload API"),
        }
    }
}

fn retryable(code: &str, message: String) -> ProviderError {
    ProviderError::Retryable {
        code: code.to_owned(),
        message,
        retry_after: None,
    }
}

impl Engine {
    /// The URLs to hand the provider for `task`'s inputs, in order. URLs a client gave are
    /// passed as they are; our own objects go by the configured route.
    pub(super) async fn provider_inputs(
        &self,
        task: &Task,
        provider: &dyn Provider,
    ) -> Result<Vec<String>, ProviderError> {
        let mut urls = Vec::with_capacity(task.input_urls.len());
        for (index, url) in task.input_urls.iter().enumerate() {
            let Some(key) = self.blobs.key_for_url(url) else {
                // A client's URL: when the operator asked for it, what is certainly wrong
                // with it (no such host, a 4xx, not an image) fails the task here, with the
                // codes Gemini's inputs get.
                if self.settings.check_client_inputs {
                    self.inputs
                        .probe(index, url)
                        .await
                        .map_err(ProviderError::Input)?;
                }
                urls.push(url.clone());
                continue;
            };
            let resolved = match self.settings.input_route {
                InputRoute::Public | InputRoute::Proxy => url.clone(),
                InputRoute::Presigned(ttl) => self
                    .blobs
                    .presigned_get(&key, ttl)
                    .await
                    .map_err(|e| {
                        retryable("presign_failed", format!("presigning {key} failed: {e}"))
                    })?
                    .to_string(),
                InputRoute::ProviderUpload => self.upload_input(provider, &key).await?,
            };
            urls.push(resolved);
        }
        Ok(urls)
    }

    async fn upload_input(
        &self,
        provider: &dyn Provider,
        key: &str,
    ) -> Result<String, ProviderError> {
        let spool = tempfile::NamedTempFile::new()
            .map_err(|e| retryable("local_io", format!("no temporary file for {key}: {e}")))?;
        self.blobs
            .get_to_file(key, spool.path())
            .await
            .map_err(|e| retryable("storage_failed", format!("reading {key} failed: {e}")))?;
        let (content_type, _) = serving_metadata(key).unwrap_or(("application/octet-stream", ""));
        let file_name = key.rsplit('/').next().unwrap_or(key);
        let url = provider
            .upload_input(spool.path(), file_name, content_type)
            .await?;
        tracing::info!(key, "input pushed through the provider's file upload API");
        Ok(url)
    }
}
