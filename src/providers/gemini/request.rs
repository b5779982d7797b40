//! Building the `generateContent` request body.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use super::super::inputs::InputImage;

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

/// Length of `n` bytes in padded base64.
pub(super) fn base64_len(n: usize) -> u64 {
    (n as u64).div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::domain::image::{ImageKind, tiny_png};

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
}
