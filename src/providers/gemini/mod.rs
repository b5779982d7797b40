//! The Google Gemini client (`models/{model}:generateContent`): the synchronous provider.
//!
//! One call generates the image, so `submit` answers with the image bytes (or with the reason
//! there are none) and there is nothing to ask about afterwards. Input images travel inline as
//! base64: Gemini cannot fetch darkroom's bucket or a client's URL, so they are read here
//! (see [`InputLoader`]). Every part of every candidate is scanned for `inlineData`; a blocked
//! prompt, a safety stop or a text-only reply is a task failure with Gemini's reason in plain
//! words, not a crash. HTTP 429/500/503/504 are retryable (the engine backs off), 400/403/404
//! are not. PROVIDERS.md ("Google Gemini") is the contract.
//!
//! This file owns the client and its `Provider` implementation; building the request body,
//! reading the answer and classifying HTTP errors live in submodules.

mod answer;
mod errors;
mod request;

use std::io::Cursor;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use url::Url;

use super::inputs::{InputError, InputImage, InputLoader};
use super::{
    Delivery, Generated, Provider, ProviderError, RemoteStatus, Submission, SubmitRequest,
};
use crate::config::Secret;
use crate::domain::JobCode;
use crate::domain::image::{ImageKind, ImageLimits, inspect};
use crate::domain::size;

pub use answer::{Answer, read_answer};
pub use errors::classify_error;
use request::base64_len;
pub use request::request_body;

/// The provider name stored with Gemini tasks and used in result keys.
pub const NAME: &str = "gemini";

/// `gemini-2.5-flash-image` (the `-preview` name is retired).
pub const DEFAULT_MODEL: &str = "gemini-2.5-flash-image";

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";

/// Aspect ratios `gemini-2.5-flash-image` accepts in `imageConfig.aspectRatio`. KIE's `auto`
/// is not one: it is sent as no aspect ratio at all, which lets Gemini follow the input.
pub const ASPECT_RATIOS: [&str; 10] = [
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Headroom for work around the HTTP call (decoding, re-encoding) within a submit's budget.
const LOCAL_WORK_BUDGET: Duration = Duration::from_secs(30);
const JPEG_QUALITY: u8 = 90;

/// Knobs of the client, from configuration.
#[derive(Clone, Debug)]
pub struct GeminiSettings {
    pub base_url: Url,
    pub api_key: Secret,
    /// One `generateContent` call; generation can take a minute.
    pub request_timeout: Duration,
    /// Reading every input image (bucket or guarded download), together.
    pub inputs_timeout: Duration,
    /// Gemini's inline request limit (about 20 MB): the encoded inputs plus the prompt.
    pub max_request_bytes: u64,
    /// The largest answer read; base64 images make answers big.
    pub max_answer_bytes: u64,
    /// Caps checked before an image is re-encoded to the requested format.
    pub image_limits: ImageLimits,
}

pub struct GeminiClient {
    http: reqwest::Client,
    settings: GeminiSettings,
    inputs: InputLoader,
}

impl GeminiClient {
    pub fn new(settings: GeminiSettings, inputs: InputLoader) -> Result<Self, reqwest::Error> {
        let http = crate::net::client_builder(CONNECT_TIMEOUT, settings.request_timeout).build()?;
        Ok(Self {
            http,
            settings,
            inputs,
        })
    }

    /// The longest a `submit` may take: reading inputs, the call, re-encoding. The job's
    /// heartbeat keeps the task leased meanwhile; this bound keeps the job finite.
    fn max_submit_duration(&self) -> Duration {
        self.settings.inputs_timeout
            + CONNECT_TIMEOUT
            + self.settings.request_timeout
            + LOCAL_WORK_BUDGET
    }

    fn endpoint(&self, model: &str) -> String {
        format!(
            "{}/v1beta/models/{model}:generateContent",
            self.settings.base_url.as_str().trim_end_matches('/')
        )
    }

    /// Reads the inputs one after another within the inputs budget, stopping as soon as
    /// their encoded size passes Gemini's inline limit (so an oversized task never holds
    /// every input in memory at once).
    async fn load_inputs(
        &self,
        request: &SubmitRequest,
    ) -> Result<Result<Vec<InputImage>, Submission>, ProviderError> {
        let limit = self.settings.max_request_bytes;
        let all = async {
            let mut images = Vec::with_capacity(request.image_urls.len());
            let mut encoded = request.prompt.len() as u64;
            for (index, url) in request.image_urls.iter().enumerate() {
                let image = self.inputs.load(index, url).await?;
                encoded += base64_len(image.bytes.len());
                images.push(image);
                if encoded > limit {
                    return Ok(Err(Submission::Failed {
                        code: "inputs_too_large".to_owned(),
                        message: format!(
                            "the prompt and the first {} input image(s) come to more than {} encoded, Gemini's inline limit",
                            images.len(),
                            size::human(limit)
                        ),
                    }));
                }
            }
            Ok::<_, InputError>(Ok(images))
        };
        match tokio::time::timeout(self.settings.inputs_timeout, all).await {
            Err(_) => Err(ProviderError::Input(InputError {
                code: JobCode::InputUnavailable,
                message: format!(
                    "the input images could not be read within {} s",
                    self.settings.inputs_timeout.as_secs()
                ),
                retryable: true,
            })),
            Ok(Ok(loaded)) => Ok(loaded),
            Ok(Err(e)) => Err(ProviderError::Input(e)),
        }
    }

    async fn generate(&self, request: &SubmitRequest) -> Result<Submission, ProviderError> {
        let images = match self.load_inputs(request).await? {
            Ok(images) => images,
            Err(failed) => return Ok(failed),
        };
        let body = request_body(&request.prompt, &images, &request.aspect_ratio);
        let body = match serde_json::to_vec(&body) {
            Ok(body) => body,
            Err(e) => {
                return Ok(Submission::Failed {
                    code: "input_unusable".to_owned(),
                    message: format!("the request could not be encoded: {e}"),
                });
            }
        };
        if body.len() as u64 > self.settings.max_request_bytes {
            return Ok(Submission::Failed {
                code: "inputs_too_large".to_owned(),
                message: format!(
                    "the prompt and {} input image(s) come to {} encoded; Gemini takes at most {} inline",
                    images.len(),
                    size::human(body.len() as u64),
                    size::human(self.settings.max_request_bytes)
                ),
            });
        }
        drop(images);

        let started = Instant::now();
        let sent = self
            .http
            .post(self.endpoint(&request.model))
            .header("x-goog-api-key", self.settings.api_key.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = sent.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let header_retry_after = super::retry_after(response.headers());
        let answer = read_capped(response, self.settings.max_answer_bytes)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => ProviderError::Permanent {
                    code: "answer_too_large".to_owned(),
                    message: format!(
                        "Gemini's answer is larger than {}",
                        size::human(self.settings.max_answer_bytes)
                    ),
                },
                ReadError::Transport(e) => self.transport_error(e),
            })?;
        let cost_time_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let answer: Option<Value> = serde_json::from_slice(&answer).ok();
        if !status.is_success() {
            return Err(classify_error(
                status.as_u16(),
                answer.as_ref(),
                header_retry_after,
            ));
        }
        let Some(answer) = answer else {
            return Err(ProviderError::Retryable {
                code: "bad_answer".to_owned(),
                message: "Gemini answered HTTP 200 with something that is not JSON".to_owned(),
                retry_after: None,
            });
        };
        match read_answer(&answer) {
            Answer::Images(images) => {
                let images = self
                    .to_requested_format(images, &request.output_format)
                    .await;
                tracing::info!(
                    task_id = %request.task_id,
                    images = images.len(),
                    duration_ms = cost_time_ms,
                    "gemini generated"
                );
                Ok(Submission::Completed(Generated {
                    provider_task_id: answer
                        .get("responseId")
                        .and_then(Value::as_str)
                        .filter(|id| !id.is_empty())
                        .map(str::to_owned),
                    images,
                    credits: None,
                    cost_time_ms: Some(cost_time_ms),
                }))
            }
            Answer::NoImage { code, message } => {
                tracing::info!(task_id = %request.task_id, code, reason = %message, "gemini answered without an image");
                Ok(Submission::Failed {
                    code: code.to_owned(),
                    message,
                })
            }
            Answer::Malformed(message) => Err(ProviderError::Retryable {
                code: "bad_answer".to_owned(),
                message,
                retry_after: None,
            }),
        }
    }

    /// A call that never got an answer. Unlike KIE there is no task to wait for: a timed-out
    /// generation is lost either way, so asking again is the only way to an image.
    fn transport_error(&self, e: reqwest::Error) -> ProviderError {
        // A connection never made: Gemini is out of reach for every task, not just this one.
        if let Some(unreachable) = super::unreachable(&e) {
            return unreachable;
        }
        let timeout = e.is_timeout();
        let message = if timeout {
            format!(
                "Gemini gave no answer within {} s",
                self.settings.request_timeout.as_secs()
            )
        } else {
            e.without_url().to_string()
        };
        ProviderError::Retryable {
            code: if timeout { "timeout" } else { "transport" }.to_owned(),
            message,
            retry_after: None,
        }
    }

    /// Gemini decides the encoding (PNG for 2.5 Flash Image); the client asked for
    /// `output_format`, so the image is re-encoded when they differ. An image that does not
    /// decode is passed on as it is: ingest's checks refuse it with the reason.
    async fn to_requested_format(&self, images: Vec<Bytes>, output_format: &str) -> Vec<Bytes> {
        let Some(wanted) = ImageKind::from_extension(output_format) else {
            return images;
        };
        let limits = self.settings.image_limits;
        // `Bytes` clones share the buffer: the originals stay at hand if the work dies.
        let originals = images.clone();
        let work = tokio::task::spawn_blocking(move || {
            images
                .into_iter()
                .map(|bytes| reencode(&bytes, wanted, limits).unwrap_or(bytes))
                .collect::<Vec<_>>()
        });
        match work.await {
            Ok(images) => images,
            Err(e) => {
                tracing::error!(error = %e, "re-encoding a Gemini image failed; keeping Gemini's encoding");
                originals
            }
        }
    }
}

#[async_trait]
impl Provider for GeminiClient {
    fn name(&self) -> &'static str {
        NAME
    }

    fn delivery(&self) -> Delivery {
        Delivery::Inline
    }

    fn takes_inline_inputs(&self) -> bool {
        true
    }

    async fn submit(&self, request: &SubmitRequest) -> Result<Submission, ProviderError> {
        // A bound on the whole call, inputs included, whatever the individual timeouts do.
        let budget = self.max_submit_duration();
        match tokio::time::timeout(budget, self.generate(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ProviderError::Retryable {
                code: "timeout".to_owned(),
                message: format!(
                    "the Gemini call did not finish within {} s",
                    budget.as_secs()
                ),
                retry_after: None,
            }),
        }
    }

    async fn query(&self, _provider_task_id: &str) -> Result<RemoteStatus, ProviderError> {
        // Never called: the engine asks only providers whose results come later.
        Err(ProviderError::Permanent {
            code: "unsupported".to_owned(),
            message: "Gemini answers inline and has no task status to ask about".to_owned(),
        })
    }
}

enum ReadError {
    TooLarge,
    Transport(reqwest::Error),
}

async fn read_capped(mut response: reqwest::Response, max: u64) -> Result<Vec<u8>, ReadError> {
    if response.content_length().is_some_and(|len| len > max) {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(ReadError::Transport)? {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Re-encodes `bytes` as `wanted`; `None` when it already is, or cannot be decoded safely.
fn reencode(bytes: &[u8], wanted: ImageKind, limits: ImageLimits) -> Option<Bytes> {
    let info = inspect(bytes, limits).ok()?;
    if info.kind == wanted {
        return None;
    }
    let decoded = image::load_from_memory(bytes).ok()?;
    let mut out = Cursor::new(Vec::new());
    match wanted {
        ImageKind::Jpeg => {
            // JPEG has no alpha channel.
            let rgb = image::DynamicImage::ImageRgb8(decoded.to_rgb8());
            let encoder =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY);
            rgb.write_with_encoder(encoder).ok()?;
        }
        ImageKind::Png => decoded.write_to(&mut out, image::ImageFormat::Png).ok()?,
        ImageKind::Webp => decoded.write_to(&mut out, image::ImageFormat::WebP).ok()?,
    }
    Some(Bytes::from(out.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::image::tiny_png;

    #[test]
    fn images_are_reencoded_to_the_requested_format() {
        let png = tiny_png(5, 4);
        let jpeg = reencode(&png, ImageKind::Jpeg, ImageLimits::default()).unwrap();
        assert_eq!(ImageKind::sniff(&jpeg), Some(ImageKind::Jpeg));
        assert!(reencode(&png, ImageKind::Png, ImageLimits::default()).is_none());
        assert!(reencode(b"junk", ImageKind::Jpeg, ImageLimits::default()).is_none());
    }
}
