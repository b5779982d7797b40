//! The Google Gemini client (`models/{model}:generateContent`): the synchronous provider.
//!
//! One call generates the image, so `submit` answers with the image bytes (or with the reason
//! there are none) and there is nothing to ask about afterwards. Input images travel inline as
//! base64: Gemini cannot fetch darkroom's bucket or a client's URL, so they are read here
//! (see [`InputLoader`]). Every part of every candidate is scanned for `inlineData`; a blocked
//! prompt, a safety stop or a text-only reply is a task failure with Gemini's reason in plain
//! words, not a crash. HTTP 429/500/503/504 are retryable (the engine backs off), 400/403/404
//! are not. PROVIDERS.md ("Google Gemini") is the contract.

use std::io::Cursor;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use url::Url;

use super::inputs::{InputError, InputImage, InputLoader};
use super::{
    Delivery, Generated, Provider, ProviderError, RemoteStatus, Submission, SubmitRequest,
};
use crate::config::Secret;
use crate::domain::image::{ImageKind, ImageLimits, inspect};

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
/// How much of a text-only reply is quoted in the task's error.
const QUOTED_TEXT_CHARS: usize = 300;

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
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(settings.request_timeout)
            // The base URL is operator configuration; a proxy variable must not divert it.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("darkroom/", env!("CARGO_PKG_VERSION")))
            .build()?;
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
                            "the prompt and the first {} input image(s) come to more than {limit} bytes encoded, Gemini's inline limit",
                            images.len()
                        ),
                    }));
                }
            }
            Ok::<_, InputError>(Ok(images))
        };
        match tokio::time::timeout(self.settings.inputs_timeout, all).await {
            Err(_) => Err(ProviderError::Retryable {
                code: "input_timeout".to_owned(),
                message: format!(
                    "the input images could not be read within {} s",
                    self.settings.inputs_timeout.as_secs()
                ),
                retry_after: None,
            }),
            Ok(Ok(loaded)) => Ok(loaded),
            Ok(Err(e)) if e.retryable => Err(ProviderError::Retryable {
                code: "input_unavailable".to_owned(),
                message: e.message,
                retry_after: None,
            }),
            Ok(Err(e)) => Ok(Err(Submission::Failed {
                code: "input_unusable".to_owned(),
                message: e.message,
            })),
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
                    "the prompt and {} input image(s) come to {} bytes encoded; Gemini takes at most {} bytes inline",
                    images.len(),
                    body.len(),
                    self.settings.max_request_bytes
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
                        "Gemini's answer is larger than {} bytes",
                        self.settings.max_answer_bytes
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

/// The `generateContent` body: the prompt, then each input inline, and the aspect ratio
/// unless it is `auto`.
pub fn request_body(prompt: &str, images: &[InputImage], aspect_ratio: &str) -> Value {
    let mut parts = Vec::with_capacity(images.len() + 1);
    parts.push(json!({"text": prompt}));
    for image in images {
        parts.push(json!({"inline_data": {
            "mime_type": image.kind.content_type(),
            "data": BASE64.encode(&image.bytes),
        }}));
    }
    let mut generation_config = Map::new();
    generation_config.insert("responseModalities".into(), json!(["TEXT", "IMAGE"]));
    if aspect_ratio != "auto" && !aspect_ratio.is_empty() {
        generation_config.insert("imageConfig".into(), json!({"aspectRatio": aspect_ratio}));
    }
    json!({
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": generation_config,
    })
}

/// What a successful (HTTP 200) answer holds.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Images(Vec<Bytes>),
    /// No image, with a stable code and Gemini's reason in plain words.
    NoImage {
        code: &'static str,
        message: String,
    },
    /// Not an answer we can read (bad base64, wrong shapes).
    Malformed(String),
}

fn field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake))
}

fn str_field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a str> {
    field(value, camel, snake)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Reads a `generateContent` answer: every part of every candidate is looked at; thought
/// parts (interim images some models send while reasoning) are skipped.
pub fn read_answer(answer: &Value) -> Answer {
    if let Some(feedback) = field(answer, "promptFeedback", "prompt_feedback")
        && let Some(reason) = str_field(feedback, "blockReason", "block_reason")
        && reason != "BLOCK_REASON_UNSPECIFIED"
    {
        let detail = str_field(feedback, "blockReasonMessage", "block_reason_message")
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        return Answer::NoImage {
            code: "prompt_blocked",
            message: format!(
                "Gemini blocked the prompt (blockReason {reason}): {}{detail}; nothing was generated",
                block_reason_words(reason)
            ),
        };
    }
    let candidates = answer
        .get("candidates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut images = Vec::new();
    let mut texts: Vec<&str> = Vec::new();
    for candidate in candidates {
        let parts = candidate
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for part in parts {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                texts.push(text);
            }
            let Some(inline) = field(part, "inlineData", "inline_data") else {
                continue;
            };
            let mime = str_field(inline, "mimeType", "mime_type").unwrap_or_default();
            if !mime.starts_with("image/") {
                tracing::debug!(mime, "skipping a non-image inline part in Gemini's answer");
                continue;
            }
            let Some(data) = inline.get("data").and_then(Value::as_str) else {
                return Answer::Malformed("an inlineData part has no data".to_owned());
            };
            match BASE64.decode(data) {
                Ok(bytes) => images.push(Bytes::from(bytes)),
                Err(e) => {
                    return Answer::Malformed(format!(
                        "an inlineData part is not valid base64: {e}"
                    ));
                }
            }
        }
    }
    if !images.is_empty() {
        return Answer::Images(images);
    }
    let finish = candidates
        .iter()
        .find_map(|c| str_field(c, "finishReason", "finish_reason"));
    let finish_message = candidates
        .iter()
        .find_map(|c| str_field(c, "finishMessage", "finish_message"))
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    let text = texts.join(" ");
    let text = text.trim();
    match finish {
        Some(reason) if reason != "STOP" && reason != "FINISH_REASON_UNSPECIFIED" => {
            let (code, words) = finish_reason_words(reason);
            let quoted = if text.is_empty() {
                String::new()
            } else {
                format!("; it said: \"{}\"", quote(text))
            };
            Answer::NoImage {
                code,
                message: format!(
                    "Gemini stopped without an image (finishReason {reason}): {words}{finish_message}{quoted}"
                ),
            }
        }
        _ if !text.is_empty() => Answer::NoImage {
            code: "text_only",
            message: format!(
                "Gemini answered with text only and no image: \"{}\"",
                quote(text)
            ),
        },
        _ if candidates.is_empty() => Answer::NoImage {
            code: "no_image",
            message: "Gemini answered without any candidate and without a block reason".to_owned(),
        },
        _ => Answer::NoImage {
            code: "no_image",
            message: format!("Gemini finished without an image or any text{finish_message}"),
        },
    }
}

/// Length of `n` bytes in padded base64.
fn base64_len(n: usize) -> u64 {
    (n as u64).div_ceil(3) * 4
}

fn quote(text: &str) -> String {
    let mut quoted: String = text.chars().take(QUOTED_TEXT_CHARS).collect();
    if text.chars().count() > QUOTED_TEXT_CHARS {
        quoted.push('…');
    }
    quoted
}

fn block_reason_words(reason: &str) -> &'static str {
    match reason {
        "SAFETY" => "Gemini's safety filters flagged it",
        "PROHIBITED_CONTENT" => "it asks for prohibited content",
        "BLOCKLIST" => "it contains terms on Gemini's blocklist",
        "IMAGE_SAFETY" => "an input image was flagged by Gemini's safety filters",
        _ => "Gemini did not say why",
    }
}

/// A stable code and plain words for each `finishReason` that ends without an image.
fn finish_reason_words(reason: &str) -> (&'static str, &'static str) {
    match reason {
        "SAFETY" => (
            "image_blocked",
            "Gemini's safety filters blocked the result",
        ),
        "IMAGE_SAFETY" => (
            "image_blocked",
            "Gemini's image safety filters blocked the generated image",
        ),
        "PROHIBITED_CONTENT" | "IMAGE_PROHIBITED_CONTENT" => (
            "image_blocked",
            "the request was judged to ask for prohibited content",
        ),
        "BLOCKLIST" => ("image_blocked", "the request contains blocklisted terms"),
        "SPII" => (
            "image_blocked",
            "the request may contain sensitive personal information",
        ),
        "RECITATION" | "IMAGE_RECITATION" => (
            "image_blocked",
            "the result would have reproduced protected material",
        ),
        "NO_IMAGE" => ("no_image", "the model produced no image for this request"),
        "MAX_TOKENS" => (
            "no_image",
            "the answer reached its token limit before an image",
        ),
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => {
            ("no_image", "the model answered with a tool call")
        }
        _ => (
            "no_image",
            "the model stopped for a reason darkroom does not know",
        ),
    }
}

/// PROVIDERS.md: retry 429/500/503/504, not 400/403/404. Other 5xx (and 408) are treated as
/// passing, other 4xx as permanent.
pub fn classify_error(
    status: u16,
    answer: Option<&Value>,
    header_retry_after: Option<Duration>,
) -> ProviderError {
    let error = answer.and_then(|a| a.get("error"));
    let detail = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("no message");
    let message = match error.and_then(|e| e.get("status")).and_then(Value::as_str) {
        Some(grpc_status) => format!("Gemini answered HTTP {status} {grpc_status}: {detail}"),
        None => format!("Gemini answered HTTP {status}: {detail}"),
    };
    let retryable = matches!(status, 408 | 429 | 500 | 502 | 503 | 504);
    if retryable {
        ProviderError::Retryable {
            code: status.to_string(),
            message,
            retry_after: header_retry_after.or_else(|| error.and_then(retry_info_delay)),
        }
    } else {
        ProviderError::Permanent {
            code: status.to_string(),
            message,
        }
    }
}

/// `google.rpc.RetryInfo.retryDelay` (`"37s"`, `"1.5s"`) from an error's `details`.
fn retry_info_delay(error: &Value) -> Option<Duration> {
    error
        .get("details")?
        .as_array()?
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| {
            let raw = d.get("retryDelay")?.as_str()?.strip_suffix('s')?;
            let secs: f64 = raw.trim().parse().ok()?;
            (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
        })
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

    fn image_part(bytes: &[u8]) -> Value {
        json!({"inlineData": {"mimeType": "image/png", "data": BASE64.encode(bytes)}})
    }

    #[test]
    fn the_body_sends_inputs_inline_and_omits_auto() {
        let image = InputImage {
            kind: ImageKind::Png,
            bytes: Bytes::from(tiny_png(2, 2)),
        };
        let body = request_body("a red dress", std::slice::from_ref(&image), "9:16");
        let parts = &body["contents"][0]["parts"];
        assert_eq!(parts[0]["text"], "a red dress");
        assert_eq!(parts[1]["inline_data"]["mime_type"], "image/png");
        assert_eq!(
            BASE64
                .decode(parts[1]["inline_data"]["data"].as_str().unwrap())
                .unwrap(),
            image.bytes.to_vec()
        );
        assert_eq!(
            body["generationConfig"]["imageConfig"]["aspectRatio"],
            "9:16"
        );
        assert_eq!(
            body["generationConfig"]["responseModalities"],
            json!(["TEXT", "IMAGE"])
        );
        let auto = request_body("p", &[image], "auto");
        assert!(
            auto["generationConfig"].get("imageConfig").is_none(),
            "{auto}"
        );
    }

    #[test]
    fn every_part_of_every_candidate_is_scanned() {
        let png = tiny_png(3, 3);
        let answer = json!({"candidates": [
            {"content": {"parts": [{"text": "Here you go"}, {"thought": true, "inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}},
            {"content": {"parts": [{"text": "and"}, image_part(&png)]}, "finishReason": "STOP"}
        ]});
        assert_eq!(
            read_answer(&answer),
            Answer::Images(vec![Bytes::from(png.clone())])
        );
        // snake_case is accepted too.
        let snake = json!({"candidates": [{"content": {"parts": [
            {"inline_data": {"mime_type": "image/png", "data": BASE64.encode(&png)}}]}}]});
        assert!(matches!(read_answer(&snake), Answer::Images(v) if v.len() == 1));
    }

    #[test]
    fn a_blocked_prompt_is_a_failure_with_the_reason() {
        let answer = json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}});
        let Answer::NoImage { code, message } = read_answer(&answer) else {
            panic!("not a failure");
        };
        assert_eq!(code, "prompt_blocked");
        assert!(message.contains("blockReason SAFETY"), "{message}");
        assert!(message.contains("safety filters"), "{message}");
    }

    #[test]
    fn safety_finish_reasons_fail_in_plain_words() {
        for (reason, code, words) in [
            ("SAFETY", "image_blocked", "safety filters"),
            ("IMAGE_SAFETY", "image_blocked", "image safety filters"),
            ("PROHIBITED_CONTENT", "image_blocked", "prohibited content"),
            ("NO_IMAGE", "no_image", "produced no image"),
        ] {
            let answer =
                json!({"candidates": [{"finishReason": reason, "content": {"parts": []}}]});
            let Answer::NoImage { code: got, message } = read_answer(&answer) else {
                panic!("{reason}: not a failure");
            };
            assert_eq!(got, code, "{reason}");
            assert!(message.contains(reason), "{message}");
            assert!(message.contains(words), "{message}");
        }
    }

    #[test]
    fn a_text_only_reply_is_quoted() {
        let answer = json!({"candidates": [{"finishReason": "STOP",
            "content": {"parts": [{"text": "I can only describe this image."}]}}]});
        let Answer::NoImage { code, message } = read_answer(&answer) else {
            panic!("not a failure");
        };
        assert_eq!(code, "text_only");
        assert!(
            message.contains("I can only describe this image."),
            "{message}"
        );
        let long = "x".repeat(1000);
        let answer = json!({"candidates": [{"content": {"parts": [{"text": long}]}}]});
        let Answer::NoImage { message, .. } = read_answer(&answer) else {
            panic!("not a failure");
        };
        assert!(message.len() < 500, "{message}");
    }

    #[test]
    fn empty_and_broken_answers() {
        assert!(matches!(
            read_answer(&json!({})),
            Answer::NoImage {
                code: "no_image",
                ..
            }
        ));
        let broken = json!({"candidates": [{"content": {"parts": [
            {"inlineData": {"mimeType": "image/png", "data": "not base64!"}}]}}]});
        assert!(matches!(read_answer(&broken), Answer::Malformed(_)));
    }

    #[test]
    fn errors_are_classified_as_providers_md_says() {
        for status in [429, 500, 503, 504] {
            assert!(
                matches!(
                    classify_error(status, None, None),
                    ProviderError::Retryable { .. }
                ),
                "{status}"
            );
        }
        for status in [400, 403, 404] {
            assert!(
                matches!(
                    classify_error(status, None, None),
                    ProviderError::Permanent { .. }
                ),
                "{status}"
            );
        }
        let answer = json!({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}});
        let ProviderError::Permanent { code, message } = classify_error(400, Some(&answer), None)
        else {
            panic!("not permanent");
        };
        assert_eq!(code, "400");
        assert_eq!(
            message,
            "Gemini answered HTTP 400 INVALID_ARGUMENT: API key not valid."
        );
    }

    #[test]
    fn retry_info_sets_the_retry_floor() {
        let answer = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}});
        let ProviderError::Retryable { retry_after, .. } = classify_error(429, Some(&answer), None)
        else {
            panic!("not retryable");
        };
        assert_eq!(retry_after, Some(Duration::from_millis(1500)));
        let ProviderError::Retryable { retry_after, .. } =
            classify_error(429, Some(&answer), Some(Duration::from_secs(7)))
        else {
            panic!("not retryable");
        };
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn images_are_reencoded_to_the_requested_format() {
        let png = tiny_png(5, 4);
        let jpeg = reencode(&png, ImageKind::Jpeg, ImageLimits::default()).unwrap();
        assert_eq!(ImageKind::sniff(&jpeg), Some(ImageKind::Jpeg));
        assert!(reencode(&png, ImageKind::Png, ImageLimits::default()).is_none());
        assert!(reencode(b"junk", ImageKind::Jpeg, ImageLimits::default()).is_none());
    }
}
