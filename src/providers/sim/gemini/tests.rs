//! Tests of the Gemini simulator over real HTTP, read back with darkroom's own Gemini
//! answer parser.

use std::io::Cursor;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::{DynamicImage, ImageFormat};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::endpoint::TEXT_WITH_IMAGE;
use super::errors::RETRY_DELAY;
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
    let (status, answer) = call(&base, DEFAULT_MODEL, Some("k"), &edit_body(Some("9:16"))).await;
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
    let (status, answer) = call(&base, DEFAULT_MODEL, Some("k"), &edit_body(Some("auto"))).await;
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
