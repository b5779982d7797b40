//! Parsing a `generateContent` body (camelCase or snake_case, as REST accepts) and
//! rendering the requested image from it.

use std::io::Cursor;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use serde_json::Value;

use super::super::render::{self, OutputFormat};
use crate::providers::gemini::ASPECT_RATIOS;

const MAX_INPUT_DIMENSION: u32 = 10_000;
/// Enough for a 10000×6000 RGBA decode; a bomb fails instead of taking the process down.
const MAX_DECODE_ALLOC_BYTES: u64 = 256 * 1024 * 1024;

/// A validated request.
pub(super) struct Parsed {
    pub(super) prompt: String,
    pub(super) images: Vec<(String, Vec<u8>)>,
    pub(super) aspect_ratio: Option<String>,
}

fn field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake))
}

/// Validates a `generateContent` body: REST accepts camelCase or snake_case field names.
pub(super) fn parse_request(body: &[u8]) -> Result<Parsed, String> {
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
pub(super) fn render_image(parsed: &Parsed, long_side: u32) -> Result<Vec<u8>, String> {
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
