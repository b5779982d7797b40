//! Input images as bytes, for providers that take them inline (Gemini) rather than as URLs
//! they fetch themselves. A URL of darkroom's own bucket is read from the bucket, so uploads
//! work even when the bucket is not reachable from outside; any other URL is fetched through
//! the guarded client, never handed on. Every input is checked to be an image like uploads.

use bytes::Bytes;

use crate::domain::JobCode;
use crate::domain::image::{ImageKind, ImageLimits, inspect};
use crate::domain::size;
use crate::net::{FetchError, Fetcher};
use crate::storage::{BlobError, BlobStore, keys};

/// How much of a client's URL the pre-flight check reads: enough to tell an image's type.
const PROBE_BYTES: usize = 64;

/// One input image, ready to send inline.
#[derive(Clone, Debug, PartialEq)]
pub struct InputImage {
    pub kind: ImageKind,
    pub bytes: Bytes,
}

/// Why an input could not be read: a stable code (`input_not_found`, …), a sentence, and
/// whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub code: JobCode,
    pub message: String,
    pub retryable: bool,
}

impl InputError {
    fn permanent(code: JobCode, message: String) -> Self {
        Self {
            code,
            message,
            retryable: false,
        }
    }

    /// A fetch that failed, in input terms. A name that does not resolve, a 4xx and a refused
    /// URL are the input's own fault and final; 5xx, 408, 429 and transport trouble may pass.
    fn from_fetch(index: usize, e: &FetchError) -> Self {
        let message = format!("input image {index} could not be fetched: {e}");
        match e {
            FetchError::Unresolvable { .. } => Self::permanent(JobCode::InputUnreachable, message),
            _ if e.is_retryable() => Self {
                code: JobCode::InputUnavailable,
                message,
                retryable: true,
            },
            FetchError::Status { status, .. } if *status >= 400 => {
                Self::permanent(JobCode::InputNotFound, message)
            }
            _ => Self::permanent(JobCode::InputUnusable, message),
        }
    }

    fn not_an_image(index: usize, url: &str, what: &str) -> Self {
        let shown =
            url::Url::parse(url).map_or_else(|_| url.to_owned(), |u| crate::net::redact(&u));
        Self::permanent(
            JobCode::InputNotImage,
            format!("input image {index} ({shown}) is not an image: {what}"),
        )
    }
}

#[derive(Clone, Debug)]
pub struct InputLoader {
    blobs: BlobStore,
    fetcher: Fetcher,
    max_bytes: u64,
    limits: ImageLimits,
}

impl InputLoader {
    /// `max_bytes` caps each input (the upload limit is the natural choice).
    pub fn new(blobs: BlobStore, fetcher: Fetcher, max_bytes: u64, limits: ImageLimits) -> Self {
        Self {
            blobs,
            fetcher,
            max_bytes,
            limits,
        }
    }

    /// The bucket key behind `url` when it is one of darkroom's own object URLs.
    fn own_key(&self, url: &str) -> Option<String> {
        self.blobs
            .key_for_url(url)
            .filter(|key| keys::is_servable(key))
    }

    /// Reads input `index` (0 is the task's source) from `url`.
    pub async fn load(&self, index: usize, url: &str) -> Result<InputImage, InputError> {
        let bytes = match self.own_key(url) {
            Some(key) => self.blobs.get_bytes(&key).await.map_err(|e| match e {
                BlobError::NotFound(_) => InputError::permanent(
                    JobCode::InputNotFound,
                    format!("input image {index} ({key}) is no longer in the bucket"),
                ),
                other => InputError {
                    code: JobCode::InputUnavailable,
                    message: format!(
                        "input image {index} could not be read from the bucket: {other}"
                    ),
                    retryable: true,
                },
            })?,
            None => self
                .fetcher
                .get_bytes(url, self.max_bytes)
                .await
                .map_err(|e| InputError::from_fetch(index, &e))?,
        };
        if bytes.len() as u64 > self.max_bytes {
            return Err(InputError::permanent(
                JobCode::InputUnusable,
                format!(
                    "input image {index} is {}; at most {} are sent",
                    size::human(bytes.len() as u64),
                    size::human(self.max_bytes)
                ),
            ));
        }
        if ImageKind::sniff(&bytes).is_none() {
            return Err(InputError::not_an_image(
                index,
                url,
                "its bytes are not JPEG, PNG or WebP",
            ));
        }
        let info = inspect(&bytes, self.limits).map_err(|e| {
            InputError::permanent(
                JobCode::InputUnusable,
                format!("input image {index} is not a usable image: {e}"),
            )
        })?;
        Ok(InputImage {
            kind: info.kind,
            bytes,
        })
    }

    /// A pre-flight look at input `index`, a URL a client gave, for a provider that fetches
    /// inputs itself (KIE): the same verdicts Gemini's inputs get, before the provider is
    /// paid to find out. Only what is certain fails: the name does not resolve, the URL
    /// answers 4xx, or its first bytes are not an image. Anything the guarded client may
    /// not open (plain http, a private address, hosts outside `DARKROOM_RESULT_HOSTS`) or
    /// cannot open right now is left to the provider, as before.
    pub async fn probe(&self, index: usize, url: &str) -> Result<(), InputError> {
        if self.own_key(url).is_some() {
            return Ok(());
        }
        match self.fetcher.get_prefix(url, PROBE_BYTES).await {
            Ok(prefix) if ImageKind::sniff(&prefix).is_some() => Ok(()),
            Ok(_) => Err(InputError::not_an_image(
                index,
                url,
                "its first bytes are not JPEG, PNG or WebP",
            )),
            Err(e) => {
                let verdict = InputError::from_fetch(index, &e);
                let certain = matches!(
                    verdict.code,
                    JobCode::InputUnreachable | JobCode::InputNotFound
                );
                if certain { Err(verdict) } else { Ok(()) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::image::tiny_png;
    use crate::storage::keys::ObjectSpec;

    fn loader() -> InputLoader {
        let blobs = BlobStore::memory(url::Url::parse("http://127.0.0.1:3000").unwrap());
        let fetcher = Fetcher::new([], Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        InputLoader::new(blobs, fetcher, 1024 * 1024, ImageLimits::default())
    }

    #[tokio::test]
    async fn own_bucket_urls_are_read_from_the_bucket() {
        let loader = loader();
        let spec = keys::upload(ImageKind::Png);
        loader
            .blobs
            .put(&spec, Bytes::from(tiny_png(4, 3)))
            .await
            .unwrap();
        let url = loader.blobs.url(&spec.key);
        assert!(url.starts_with("http://127.0.0.1:3000/files/uploads/"));
        let image = loader.load(0, &url).await.unwrap();
        assert_eq!(image.kind, ImageKind::Png);
    }

    #[tokio::test]
    async fn missing_uploads_and_non_images_are_permanent() {
        let loader = loader();
        let gone = loader.blobs.url("uploads/0000.png");
        let err = loader.load(0, &gone).await.unwrap_err();
        assert!(!err.retryable && err.message.contains("no longer"), "{err}");

        let spec = ObjectSpec {
            key: "uploads/fake.png".to_owned(),
            content_type: "image/png",
            cache_control: "no-cache",
        };
        loader
            .blobs
            .put(&spec, Bytes::from_static(b"<html>"))
            .await
            .unwrap();
        let err = loader
            .load(1, &loader.blobs.url(&spec.key))
            .await
            .unwrap_err();
        assert!(
            !err.retryable && err.message.contains("input image 1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_final_at_once() {
        let started = std::time::Instant::now();
        let err = loader()
            .load(0, "https://i.invalid/x.png")
            .await
            .unwrap_err();
        assert_eq!(err.code, JobCode::InputUnreachable, "{err}");
        assert!(
            !err.retryable && err.message.contains("does not resolve"),
            "{err}"
        );
        let err = loader()
            .probe(1, "https://i.invalid/x.png")
            .await
            .unwrap_err();
        assert_eq!(err.code, JobCode::InputUnreachable, "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "no lookup was made"
        );
    }

    #[tokio::test]
    async fn the_probe_leaves_what_it_may_not_open_to_the_provider() {
        // Plain http to loopback: the guarded client may not open it, the provider may.
        assert_eq!(loader().probe(0, "http://127.0.0.1:9/x.png").await, Ok(()));
    }

    #[tokio::test]
    async fn other_urls_go_through_the_guarded_client() {
        // Loopback is not public and not trusted: refused before any connection.
        let err = loader()
            .load(0, "http://127.0.0.1:9/x.png")
            .await
            .unwrap_err();
        assert!(!err.retryable, "{err}");
        assert!(err.message.contains("could not be fetched"), "{err}");
        // A darkroom-looking path on another host is not ours.
        let err = loader()
            .load(0, "https://127.0.0.2/files/uploads/a.png")
            .await
            .unwrap_err();
        assert!(err.message.contains("could not be fetched"), "{err}");
    }
}
