//! Input images as bytes, for providers that take them inline (Gemini) rather than as URLs
//! they fetch themselves. A URL of darkroom's own bucket is read from the bucket, so uploads
//! work even when the bucket is not reachable from outside; any other URL is fetched through
//! the guarded client, never handed on. Every input is checked to be an image like uploads.

use bytes::Bytes;

use crate::domain::image::{ImageKind, ImageLimits, inspect};
use crate::net::Fetcher;
use crate::storage::{BlobError, BlobStore, keys};

/// One input image, ready to send inline.
#[derive(Clone, Debug, PartialEq)]
pub struct InputImage {
    pub kind: ImageKind,
    pub bytes: Bytes,
}

/// Why an input could not be read, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub message: String,
    pub retryable: bool,
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
                BlobError::NotFound(_) => InputError {
                    message: format!("input image {index} ({key}) is no longer in the bucket"),
                    retryable: false,
                },
                other => InputError {
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
                .map_err(|e| InputError {
                    retryable: e.is_retryable(),
                    message: format!("input image {index} could not be fetched: {e}"),
                })?,
        };
        if bytes.len() as u64 > self.max_bytes {
            return Err(InputError {
                message: format!(
                    "input image {index} is {} bytes; at most {} are sent",
                    bytes.len(),
                    self.max_bytes
                ),
                retryable: false,
            });
        }
        let info = inspect(&bytes, self.limits).map_err(|e| InputError {
            message: format!("input image {index} is not a usable image: {e}"),
            retryable: false,
        })?;
        Ok(InputImage {
            kind: info.kind,
            bytes,
        })
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
