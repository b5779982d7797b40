//! Gemini-compatible simulator: `POST /v1beta/models/{model}:generateContent` as
//! PROVIDERS.md describes it, answering synchronously with a real image made by the KIE
//! simulator's renderer from the first inline input (or from the prompt alone).
//!
//! Its faults are the ones darkroom's client must survive: latency; a blocked prompt
//! (HTTP 200, `promptFeedback.blockReason`, no candidates); an image safety stop
//! (`finishReason: IMAGE_SAFETY`, no image); a text-only reply; and HTTP errors in Google's
//! shape (`{"error": {code, message, status}}`, 429 with a `RetryInfo`) at configured rates.
//! Like the real API it takes the key from `x-goog-api-key` (or `?key=`), answers 403 without
//! one and 400 for a wrong one, 404 for a model it does not serve, and accepts camelCase or
//! snake_case fields. `GET /sim/stats` counts what happened.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::render::{self, OutputFormat};
use crate::providers::gemini::{ASPECT_RATIOS, DEFAULT_MODEL};

/// Google's documented inline request limit.
pub const MAX_REQUEST_BYTES: usize = 20 * 1024 * 1024;

const MAX_INPUT_DIMENSION: u32 = 10_000;
/// Enough for a 10000×6000 RGBA decode; a bomb fails instead of taking the process down.
const MAX_DECODE_ALLOC_BYTES: u64 = 256 * 1024 * 1024;
/// Requests remembered for [`GeminiSim::requests`].
const REQUEST_LOG_CAP: usize = 1000;
/// What the sim asks a rate-limited client to wait, as Gemini does in `RetryInfo`.
const RETRY_DELAY: &str = "1s";
/// Tokens Gemini bills for one generated image.
const IMAGE_TOKENS: u64 = 1290;

const TEXT_WITH_IMAGE: &str = "Here is the image you asked for.";
const TEXT_ONLY_REPLY: &str =
    "I can describe the scene you want, but I am not able to create that image right now.";

/// Behaviour and fault knobs. Rates are probabilities in `0..=1`, rolled per request.
#[derive(Clone, Debug)]
pub struct GeminiSimConfig {
    /// When set, requests must carry this key (`x-goog-api-key` or `?key=`).
    pub api_key: Option<String>,
    /// Models served; any other answers 404 like an unknown model.
    pub models: Vec<String>,
    /// Generation time in milliseconds, uniform in `[min, max]`.
    pub latency_ms: (u64, u64),
    /// Share of requests whose prompt is blocked (`promptFeedback.blockReason: SAFETY`).
    pub block_rate: f64,
    /// Share of requests that stop with `finishReason: IMAGE_SAFETY` and no image.
    pub image_safety_rate: f64,
    /// Share of requests answered with text only.
    pub text_only_rate: f64,
    /// `(HTTP status, rate)`: rolled in order before generating; the first hit answers that
    /// error at once. Statuses from `config::types::GEMINI_FAULT_STATUSES`.
    pub error_rates: Vec<(u16, f64)>,
    /// Long side of generated images in pixels (clamped to 16..=4096).
    pub image_long_side: u32,
}

impl Default for GeminiSimConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            models: vec![DEFAULT_MODEL.to_owned()],
            latency_ms: (2000, 6000),
            block_rate: 0.0,
            image_safety_rate: 0.0,
            text_only_rate: 0.0,
            error_rates: Vec::new(),
            image_long_side: 512,
        }
    }
}

/// Counters exposed at `GET /sim/stats`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GeminiSimStats {
    /// Every `generateContent` request, refused ones included.
    pub requests: u64,
    /// Answers that carried an image.
    pub generated: u64,
    pub blocked: u64,
    pub image_safety: u64,
    pub text_only: u64,
    /// Injected errors by HTTP status.
    pub errors: BTreeMap<u16, u64>,
    /// Requests refused for a missing or wrong key.
    pub unauthorized: u64,
    /// Requests refused as invalid (bad body, unknown model, too large).
    pub rejected: u64,
    /// Requests being generated right now, and the most ever at once.
    pub in_flight: u64,
    pub max_in_flight: u64,
}

/// What one accepted request asked for, for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRequest {
    pub model: String,
    pub prompt: String,
    /// MIME types of the inline images, in order.
    pub image_types: Vec<String>,
    /// `None` when the request named no aspect ratio.
    pub aspect_ratio: Option<String>,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    generated: AtomicU64,
    blocked: AtomicU64,
    image_safety: AtomicU64,
    text_only: AtomicU64,
    unauthorized: AtomicU64,
    rejected: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A Gemini-compatible server. Build with [`GeminiSim::new`], then [`GeminiSim::serve`].
pub struct GeminiSim {
    config: Mutex<GeminiSimConfig>,
    counters: Counters,
    errors: Mutex<BTreeMap<u16, u64>>,
    log: Mutex<VecDeque<SimRequest>>,
}

/// Lowers the in-flight gauge when a generation ends, however it ends.
struct InFlight<'a>(&'a Counters);

impl<'a> InFlight<'a> {
    fn enter(counters: &'a Counters) -> Self {
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(counters)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A validated request.
struct Parsed {
    prompt: String,
    images: Vec<(String, Vec<u8>)>,
    aspect_ratio: Option<String>,
}

/// How a request ends, rolled once it is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Error(u16),
    Blocked,
    ImageSafety,
    TextOnly,
    Image,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GeminiSim {
    pub fn new(config: GeminiSimConfig) -> Arc<Self> {
        Arc::new(Self {
            config: Mutex::new(config),
            counters: Counters::default(),
            errors: Mutex::new(BTreeMap::new()),
            log: Mutex::new(VecDeque::new()),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1beta/models/{target}", post(generate_content))
            .route("/sim/stats", get(stats))
            .fallback(not_found)
            // Oversized bodies get Google's 400, not axum's 413: the limit is checked by hand.
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES + 1))
            .with_state(Arc::clone(self))
    }

    /// Serves on the listener until `shutdown` is cancelled.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "gemini-sim listening");
        }
        let result = axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        tracing::info!("gemini-sim stopped");
        result
    }

    pub fn stats(&self) -> GeminiSimStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        GeminiSimStats {
            requests: read(&c.requests),
            generated: read(&c.generated),
            blocked: read(&c.blocked),
            image_safety: read(&c.image_safety),
            text_only: read(&c.text_only),
            errors: lock(&self.errors).clone(),
            unauthorized: read(&c.unauthorized),
            rejected: read(&c.rejected),
            in_flight: read(&c.in_flight),
            max_in_flight: read(&c.max_in_flight),
        }
    }

    /// The most recent accepted requests, oldest first.
    pub fn requests(&self) -> Vec<SimRequest> {
        lock(&self.log).iter().cloned().collect()
    }

    /// Changes knobs while running (tests clear a fault this way).
    pub fn configure(&self, change: impl FnOnce(&mut GeminiSimConfig)) {
        change(&mut lock(&self.config));
    }

    fn config(&self) -> GeminiSimConfig {
        lock(&self.config).clone()
    }

    fn roll(config: &GeminiSimConfig) -> (Outcome, Duration) {
        let mut rng = rand::rng();
        let (low, high) = config.latency_ms;
        let latency = Duration::from_millis(rng.random_range(low.min(high)..=high.max(low)));
        for &(status, rate) in &config.error_rates {
            if chance(&mut rng, rate) {
                return (Outcome::Error(status), Duration::ZERO);
            }
        }
        let outcome = if chance(&mut rng, config.block_rate) {
            Outcome::Blocked
        } else if chance(&mut rng, config.image_safety_rate) {
            Outcome::ImageSafety
        } else if chance(&mut rng, config.text_only_rate) {
            Outcome::TextOnly
        } else {
            Outcome::Image
        };
        (outcome, latency)
    }
}

// ----- the endpoint ----------------------------------------------------------------------

#[derive(Deserialize)]
struct KeyQuery {
    key: Option<String>,
}

async fn generate_content(
    State(sim): State<Arc<GeminiSim>>,
    Path(target): Path<String>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    bump(&sim.counters.requests);
    let config = sim.config();
    let presented = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.key);
    if let Some(expected) = &config.api_key {
        match presented {
            None => {
                bump(&sim.counters.unauthorized);
                return google_error(
                    403,
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                );
            }
            Some(key) if !constant_time_eq(key.as_bytes(), expected.as_bytes()) => {
                bump(&sim.counters.unauthorized);
                return google_error(400, "API key not valid. Please pass a valid API key.");
            }
            Some(_) => {}
        }
    }
    let Some((model, "generateContent")) = target.split_once(':') else {
        bump(&sim.counters.rejected);
        return google_error(404, &format!("Method not found: {target}"));
    };
    if !config.models.iter().any(|m| m == model) {
        bump(&sim.counters.rejected);
        return google_error(
            404,
            &format!(
                "models/{model} is not found for API version v1beta, or is not supported for generateContent. Call ListModels to see the list of available models and their supported methods."
            ),
        );
    }
    let body = match body {
        Ok(body) if body.len() <= MAX_REQUEST_BYTES => body,
        _ => {
            bump(&sim.counters.rejected);
            return google_error(
                400,
                &format!("Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."),
            );
        }
    };
    let parsed = match parse_request(&body) {
        Ok(parsed) => parsed,
        Err(message) => {
            bump(&sim.counters.rejected);
            tracing::info!(reason = %message, "gemini-sim rejected a request");
            return google_error(400, &message);
        }
    };
    remember(
        &sim,
        SimRequest {
            model: model.to_owned(),
            prompt: parsed.prompt.clone(),
            image_types: parsed.images.iter().map(|(mime, _)| mime.clone()).collect(),
            aspect_ratio: parsed.aspect_ratio.clone(),
        },
    );

    let (outcome, latency) = GeminiSim::roll(&config);
    if let Outcome::Error(status) = outcome {
        *lock(&sim.errors).entry(status).or_default() += 1;
        tracing::info!(status, "gemini-sim answered an injected error");
        return google_error(status, fault_message(status));
    }
    let _in_flight = InFlight::enter(&sim.counters);
    tokio::time::sleep(latency).await;
    let prompt_tokens =
        (parsed.prompt.chars().count() as u64).div_ceil(4) + 258 * parsed.images.len() as u64;
    let answer = match outcome {
        Outcome::Blocked => {
            bump(&sim.counters.blocked);
            json!({
                "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": true}]},
                "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
            })
        }
        Outcome::ImageSafety => {
            bump(&sim.counters.image_safety);
            json!({
                "candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}],
                "usageMetadata": {"promptTokenCount": prompt_tokens, "totalTokenCount": prompt_tokens},
            })
        }
        Outcome::TextOnly => {
            bump(&sim.counters.text_only);
            candidate_answer(vec![json!({"text": TEXT_ONLY_REPLY})], prompt_tokens, 20)
        }
        // Errors were answered above, before any latency, as Gemini answers them.
        Outcome::Image | Outcome::Error(_) => {
            let long_side = config.image_long_side;
            let rendered =
                tokio::task::spawn_blocking(move || render_image(&parsed, long_side)).await;
            match rendered {
                Ok(Ok(png)) => {
                    bump(&sim.counters.generated);
                    // Text first, image second: clients must scan every part.
                    candidate_answer(
                        vec![
                            json!({"text": TEXT_WITH_IMAGE}),
                            json!({"inlineData": {"mimeType": "image/png", "data": BASE64.encode(png)}}),
                        ],
                        prompt_tokens,
                        IMAGE_TOKENS,
                    )
                }
                Ok(Err(message)) => {
                    bump(&sim.counters.rejected);
                    return google_error(400, &message);
                }
                Err(e) => {
                    tracing::error!(error = %e, "gemini-sim render task died");
                    return google_error(500, fault_message(500));
                }
            }
        }
    };
    let mut answer = answer;
    answer["modelVersion"] = json!(model);
    answer["responseId"] = json!(uuid::Uuid::now_v7().simple().to_string());
    Json(answer).into_response()
}

fn remember(sim: &GeminiSim, request: SimRequest) {
    let mut log = lock(&sim.log);
    if log.len() >= REQUEST_LOG_CAP {
        log.pop_front();
    }
    log.push_back(request);
}

fn candidate_answer(parts: Vec<Value>, prompt_tokens: u64, output_tokens: u64) -> Value {
    json!({
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": prompt_tokens + output_tokens,
        },
    })
}

async fn stats(State(sim): State<Arc<GeminiSim>>) -> Json<GeminiSimStats> {
    Json(sim.stats())
}

async fn not_found() -> Response {
    google_error(404, "The requested URL was not found on this server.")
}

// ----- request parsing -------------------------------------------------------------------

fn field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake))
}

/// Validates a `generateContent` body: REST accepts camelCase or snake_case field names.
fn parse_request(body: &[u8]) -> Result<Parsed, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid JSON payload received. {e}"))?;
    let contents = value
        .get("contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or("* GenerateContentRequest.contents: contents is not specified")?;
    let mut prompt = Vec::new();
    let mut images = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        let parts = content
            .get("parts")
            .and_then(Value::as_array)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."))?;
        for (j, part) in parts.iter().enumerate() {
            if let Some(text) = part.get("text") {
                let text = text.as_str().ok_or_else(|| {
                    format!("Invalid value at 'contents[{i}].parts[{j}].text', expected a string")
                })?;
                prompt.push(text.to_owned());
            } else if let Some(inline) = field(part, "inlineData", "inline_data") {
                let mime = field(inline, "mimeType", "mime_type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !matches!(
                    mime,
                    "image/png" | "image/jpeg" | "image/webp" | "image/heic" | "image/heif"
                ) {
                    return Err(format!("Unsupported MIME type: {mime}"));
                }
                let data = inline
                    .get("data")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("* GenerateContentRequest.contents[{i}].parts[{j}].inline_data.data: required"))?;
                let bytes = BASE64.decode(data).map_err(|_| {
                    format!("Invalid value at 'contents[{i}].parts[{j}].inline_data.data' (TYPE_BYTES), Base64 decoding failed")
                })?;
                images.push((mime.to_owned(), bytes));
            } else if field(part, "fileData", "file_data").is_some() {
                return Err(
                    "fileData URIs are not supported by this simulator; send images inline"
                        .to_owned(),
                );
            } else {
                return Err(format!(
                    "Invalid JSON payload received. contents[{i}].parts[{j}] has no data"
                ));
            }
        }
    }
    let config = field(&value, "generationConfig", "generation_config");
    let aspect_ratio = config
        .and_then(|c| field(c, "imageConfig", "image_config"))
        .and_then(|c| field(c, "aspectRatio", "aspect_ratio"))
        .map(|a| {
            a.as_str()
                .map(str::to_owned)
                .ok_or("aspectRatio must be a string")
        })
        .transpose()?;
    if let Some(aspect) = &aspect_ratio
        && !ASPECT_RATIOS.contains(&aspect.as_str())
    {
        return Err(format!(
            "* GenerateContentRequest.generation_config.image_config.aspect_ratio: unsupported aspect ratio {aspect:?}; use one of {}",
            ASPECT_RATIOS.join(", ")
        ));
    }
    let prompt = prompt.join("\n");
    if prompt.trim().is_empty() && images.is_empty() {
        return Err("* GenerateContentRequest.contents: contents must not be empty".to_owned());
    }
    Ok(Parsed {
        prompt,
        images,
        aspect_ratio,
    })
}

/// The first inline image, re-framed to the requested shape and tinted by the prompt (no
/// aspect ratio follows the input's shape, as Gemini does).
fn render_image(parsed: &Parsed, long_side: u32) -> Result<Vec<u8>, String> {
    let source = match parsed.images.first() {
        Some((_, bytes)) => decode(bytes)?,
        None => render::canvas(&parsed.prompt),
    };
    let aspect = parsed.aspect_ratio.as_deref().unwrap_or("auto");
    render::render(
        &source,
        &parsed.prompt,
        aspect,
        OutputFormat::Png,
        long_side,
    )
    .map(|rendered| rendered.bytes)
    .map_err(|e| format!("Unable to process input image: {e}"))
}

fn decode(bytes: &[u8]) -> Result<DynamicImage, String> {
    let unusable = |e: &dyn std::fmt::Display| {
        format!(
            "Unable to process input image. Please retry or report in https://developers.generativeai.google/guide/troubleshooting ({e})"
        )
    };
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| unusable(&e))?;
    if !matches!(
        reader.format(),
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)
    ) {
        return Err(unusable(&"not a JPEG, PNG or WebP image"));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_DIMENSION);
    limits.max_image_height = Some(MAX_INPUT_DIMENSION);
    limits.max_alloc = Some(MAX_DECODE_ALLOC_BYTES);
    reader.limits(limits);
    reader.decode().map_err(|e| unusable(&e))
}

// ----- answers ---------------------------------------------------------------------------

fn grpc_status(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

fn fault_message(code: u16) -> &'static str {
    match code {
        400 => "Request contains an invalid argument.",
        403 => "The caller does not have permission.",
        404 => "Requested entity was not found.",
        429 => "Resource has been exhausted (e.g. check quota).",
        503 => "The model is overloaded. Please try again later.",
        504 => "Deadline expired before operation could complete.",
        _ => {
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
        }
    }
}

/// `{"error": {code, message, status}}`, with a `RetryInfo` on 429 as Gemini sends.
fn google_error(code: u16, message: &str) -> Response {
    let mut error = json!({"code": code, "message": message, "status": grpc_status(code)});
    if code == 429 {
        error["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay": RETRY_DELAY,
        }]);
    }
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({"error": error}))).into_response()
}

/// `p` as a probability; NaN and values ≤ 0 never happen, values ≥ 1 always do.
fn chance(rng: &mut impl Rng, p: f64) -> bool {
    if p.is_nan() || p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(p)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret here; the contents are compared without early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::gemini::{Answer, read_answer};
    use tokio::net::TcpListener;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let picture = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 7) as u8, 90])
        });
        let mut out = Cursor::new(Vec::new());
        DynamicImage::ImageRgb8(picture)
            .write_to(&mut out, ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    async fn spawn(config: GeminiSimConfig) -> (Arc<GeminiSim>, String, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let sim = GeminiSim::new(config);
        let shutdown = CancellationToken::new();
        tokio::spawn(sim.clone().serve(listener, shutdown.clone()));
        (sim, base, shutdown)
    }

    fn fast() -> GeminiSimConfig {
        GeminiSimConfig {
            api_key: Some("k".to_owned()),
            latency_ms: (0, 0),
            image_long_side: 64,
            ..GeminiSimConfig::default()
        }
    }

    async fn call(base: &str, model: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut request = client
            .post(format!("{base}/v1beta/models/{model}:generateContent"))
            .json(body);
        if let Some(key) = key {
            request = request.header("x-goog-api-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn edit_body(aspect: Option<&str>) -> Value {
        let mut body = json!({"contents": [{"parts": [
            {"text": "make it red"},
            {"inline_data": {"mime_type": "image/png", "data": BASE64.encode(png(40, 20))}}]}],
            "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]}});
        if let Some(aspect) = aspect {
            body["generationConfig"]["imageConfig"] = json!({"aspectRatio": aspect});
        }
        body
    }

    #[tokio::test]
    async fn generates_a_real_png_in_the_requested_shape() {
        let (sim, base, _stop) = spawn(fast()).await;
        let (status, answer) =
            call(&base, DEFAULT_MODEL, Some("k"), &edit_body(Some("9:16"))).await;
        assert_eq!(status, 200, "{answer}");
        let Answer::Images(images) = read_answer(&answer) else {
            panic!("no image: {answer}");
        };
        let decoded = image::load_from_memory(&images[0]).unwrap();
        assert!(decoded.height() > decoded.width());
        assert_eq!(
            answer["candidates"][0]["content"]["parts"][0]["text"],
            TEXT_WITH_IMAGE
        );
        assert!(answer["responseId"].is_string());

        // No aspect ratio follows the input (landscape here).
        let (_, answer) = call(&base, DEFAULT_MODEL, Some("k"), &edit_body(None)).await;
        let Answer::Images(images) = read_answer(&answer) else {
            panic!("no image");
        };
        let decoded = image::load_from_memory(&images[0]).unwrap();
        assert!(decoded.width() > decoded.height());

        let log = sim.requests();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].aspect_ratio.as_deref(), Some("9:16"));
        assert_eq!(log[1].aspect_ratio, None);
        assert_eq!(log[0].image_types, vec!["image/png".to_owned()]);
        assert_eq!(sim.stats().generated, 2);
    }

    #[tokio::test]
    async fn keys_models_and_bodies_are_checked_like_gemini() {
        let (sim, base, _stop) = spawn(fast()).await;
        let body = edit_body(None);
        let (status, answer) = call(&base, DEFAULT_MODEL, None, &body).await;
        assert_eq!(
            (status, answer["error"]["status"].as_str()),
            (403, Some("PERMISSION_DENIED"))
        );
        let (status, answer) = call(&base, DEFAULT_MODEL, Some("wrong"), &body).await;
        assert_eq!(
            (status, answer["error"]["status"].as_str()),
            (400, Some("INVALID_ARGUMENT"))
        );
        let (status, _) = call(&base, "gemini-2.5-flash-image-preview", Some("k"), &body).await;
        assert_eq!(status, 404);
        let (status, answer) =
            call(&base, DEFAULT_MODEL, Some("k"), &edit_body(Some("auto"))).await;
        assert_eq!(status, 400, "{answer}");
        let (status, _) = call(&base, DEFAULT_MODEL, Some("k"), &json!({"contents": []})).await;
        assert_eq!(status, 400);
        let stats = sim.stats();
        assert_eq!((stats.unauthorized, stats.rejected), (2, 3));
    }

    #[tokio::test]
    async fn faults_answer_in_googles_shapes() {
        let (sim, base, _stop) = spawn(GeminiSimConfig {
            error_rates: vec![(429, 1.0)],
            ..fast()
        })
        .await;
        let (status, answer) = call(&base, DEFAULT_MODEL, Some("k"), &edit_body(None)).await;
        assert_eq!(status, 429);
        assert_eq!(answer["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(answer["error"]["details"][0]["retryDelay"], RETRY_DELAY);

        for (knob, code) in [
            ("block", "prompt_blocked"),
            ("safety", "image_blocked"),
            ("text", "text_only"),
        ] {
            sim.configure(|c| {
                *c = GeminiSimConfig {
                    block_rate: f64::from(u8::from(knob == "block")),
                    image_safety_rate: f64::from(u8::from(knob == "safety")),
                    text_only_rate: f64::from(u8::from(knob == "text")),
                    ..fast()
                };
            });
            let (status, answer) = call(&base, DEFAULT_MODEL, Some("k"), &edit_body(None)).await;
            assert_eq!(status, 200);
            let Answer::NoImage { code: got, .. } = read_answer(&answer) else {
                panic!("{knob}: {answer}");
            };
            assert_eq!(got, code, "{knob}");
        }
        let stats = sim.stats();
        assert_eq!(stats.errors.get(&429), Some(&1));
        assert_eq!(
            (stats.blocked, stats.image_safety, stats.text_only),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn a_text_only_request_gets_a_picture_from_the_prompt() {
        let (_sim, base, _stop) = spawn(fast()).await;
        let body = json!({"contents": [{"parts": [{"text": "a lighthouse"}]}]});
        let (status, answer) = call(&base, DEFAULT_MODEL, Some("k"), &body).await;
        assert_eq!(status, 200);
        assert!(matches!(read_answer(&answer), Answer::Images(_)));
    }
}
