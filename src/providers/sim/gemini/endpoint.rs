//! The `generateContent` endpoint: the key and model checks, the injected outcome, and the
//! answer in Gemini's candidate shape; plus the stats and fallback routes.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};

use super::super::constant_time_eq;
use super::errors::{fault_message, google_error};
use super::request::{parse_request, render_image};
use super::{
    GeminiSim, GeminiSimStats, InFlight, MAX_REQUEST_BYTES, Outcome, REQUEST_LOG_CAP, SimRequest,
    bump, lock,
};

/// Tokens Gemini bills for one generated image.
const IMAGE_TOKENS: u64 = 1290;

pub(super) const TEXT_WITH_IMAGE: &str = "Here is the image you asked for.";
const TEXT_ONLY_REPLY: &str =
    "I can describe the scene you want, but I am not able to create that image right now.";

#[derive(Deserialize)]
pub(super) struct KeyQuery {
    key: Option<String>,
}

pub(super) async fn generate_content(
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

pub(super) async fn stats(State(sim): State<Arc<GeminiSim>>) -> Json<GeminiSimStats> {
    Json(sim.stats())
}

pub(super) async fn not_found() -> Response {
    google_error(404, "The requested URL was not found on this server.")
}
