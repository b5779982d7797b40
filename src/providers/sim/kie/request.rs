//! Parsing and validating a `createTask` body the way KIE does for the nano-banana
//! models.

use serde_json::{Map, Value};

use super::super::render::{ASPECT_RATIOS, OutputFormat};

pub(super) const EDIT_MODEL: &str = "google/nano-banana-edit";
/// Text-only variant: same input minus `image_urls`.
pub(super) const TEXT_MODEL: &str = "google/nano-banana";

pub(super) const MAX_PROMPT_CHARS: usize = 5000;
pub(super) const MAX_IMAGE_URLS: usize = 10;
pub(super) const DEFAULT_ASPECT: &str = "1:1";

/// A validated `createTask` body.
#[derive(Debug)]
pub(super) struct CreateRequest {
    pub(super) model: &'static str,
    pub(super) callback_url: Option<String>,
    pub(super) prompt: String,
    pub(super) image_urls: Vec<String>,
    pub(super) output_format: OutputFormat,
    pub(super) aspect: String,
    /// The request body re-serialised, reported back as `param`.
    pub(super) param: String,
}

/// Validates a `createTask` body the way KIE does for the nano-banana models. The
/// error is the `msg` of a 422 answer and names the offending field.
pub(super) fn parse_create_request(body: &[u8]) -> Result<CreateRequest, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| format!("Request body is not valid JSON: {err}"))?;
    let root = value
        .as_object()
        .ok_or("Request body must be a JSON object")?;
    let model = match optional_str(root, "model")? {
        Some(EDIT_MODEL) => EDIT_MODEL,
        Some(TEXT_MODEL) => TEXT_MODEL,
        Some(other) => return Err(format!("model: unsupported model \"{other}\"")),
        None => return Err("model is required".to_owned()),
    };
    let callback_url = match optional_str(root, "callBackUrl")? {
        Some(url) if is_http_url(url) => Some(url.to_owned()),
        Some(_) => return Err("callBackUrl must be an http(s) URL".to_owned()),
        None => None,
    };
    let input = match root.get("input") {
        Some(Value::Object(input)) => input,
        Some(_) => return Err("input must be an object".to_owned()),
        None => return Err("input is required".to_owned()),
    };
    let prompt = parse_prompt(input)?;
    // The text-only model has no image input; anything sent there is ignored.
    let image_urls = if model == EDIT_MODEL {
        parse_image_urls(input)?
    } else {
        Vec::new()
    };
    let output_format = match optional_str(input, "output_format")? {
        Some(format) => OutputFormat::parse(format)
            .ok_or_else(|| format!("output_format must be png or jpeg, not \"{format}\""))?,
        None => OutputFormat::Png,
    };
    let aspect = parse_aspect(input)?;
    Ok(CreateRequest {
        model,
        callback_url,
        prompt,
        image_urls,
        output_format,
        aspect,
        param: value.to_string(),
    })
}

pub(super) fn parse_prompt(input: &Map<String, Value>) -> Result<String, String> {
    let prompt = optional_str(input, "prompt")?.unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err("prompt is required".to_owned());
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(format!(
            "prompt must be at most {MAX_PROMPT_CHARS} characters"
        ));
    }
    Ok(prompt.to_owned())
}

pub(super) fn parse_image_urls(input: &Map<String, Value>) -> Result<Vec<String>, String> {
    let urls = match input.get("image_urls") {
        Some(Value::Array(urls)) => urls,
        None | Some(Value::Null) => return Err("image_urls is required".to_owned()),
        Some(_) => return Err("image_urls must be an array of URLs".to_owned()),
    };
    if urls.is_empty() || urls.len() > MAX_IMAGE_URLS {
        return Err(format!(
            "image_urls must hold 1 to {MAX_IMAGE_URLS} URLs, not {}",
            urls.len()
        ));
    }
    urls.iter()
        .enumerate()
        .map(|(index, url)| match url.as_str() {
            Some(url) if is_http_url(url) => Ok(url.to_owned()),
            _ => Err(format!("image_urls[{index}] must be an http(s) URL")),
        })
        .collect()
}

/// `image_size`, or its newer name `aspect_ratio`; KIE accepts either.
pub(super) fn parse_aspect(input: &Map<String, Value>) -> Result<String, String> {
    for field in ["image_size", "aspect_ratio"] {
        if let Some(aspect) = optional_str(input, field)? {
            if ASPECT_RATIOS.contains(&aspect) {
                return Ok(aspect.to_owned());
            }
            return Err(format!(
                "{field} must be one of {}, not \"{aspect}\"",
                ASPECT_RATIOS.join(", ")
            ));
        }
    }
    Ok(DEFAULT_ASPECT.to_owned())
}

/// A string field that may be absent or null, but not of another type.
pub(super) fn optional_str<'a>(
    object: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, String> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(format!("{field} must be a string")),
    }
}

pub(super) fn is_http_url(value: &str) -> bool {
    reqwest::Url::parse(value)
        .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.host_str().is_some())
}
