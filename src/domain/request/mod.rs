//! Validated request types: parse, don't validate. Every constructor here refuses bad input
//! with a stable code and a sentence a client developer can act on.
//!
//! This file owns the refusal type and [`GenerateRequest`] with its parser; the validated
//! values it is made of live in `values`, the documented wire body in `body`.

mod body;
mod fields;
mod values;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use body::{
    AspectRatioChoice, GenerateBody, ImageUrl, ProviderChoice, ReferenceUpload, UploadRef,
};
pub use values::{
    ASPECT_RATIOS, AspectRatio, Model, OutputFormat, Prompt, ProviderName, parse_image_url,
    parse_upload_key, parse_webhook_url,
};

/// A refusal of client input: `code` is stable and machine-readable, `message` is for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    pub code: &'static str,
    pub message: String,
}

impl InputError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

pub const MAX_PROMPT_CHARS: usize = 5000;
pub const MAX_SOURCES: usize = 10;
/// KIE takes at most 10 `image_urls` per task: the source plus shared references.
pub const MAX_IMAGES_PER_TASK: usize = 10;
const MAX_URL_LEN: usize = 2048;
const MAX_BATCH_ID_LEN: usize = 128;
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;

/// Choices the operator made that shape how a request is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestPolicy {
    /// What a request (or source) that names no provider gets.
    pub default_provider: ProviderName,
    /// The model every Gemini task uses.
    pub gemini_model: String,
}

/// Where an input image comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Source {
    /// An object darkroom stored from `/api/upload` (key under `uploads/`).
    Upload { key: String },
    /// A URL the client gave; handed to the provider as it is.
    Url { url: String },
}

impl Source {
    /// The `sourceKey` reported back to the client: the upload key, or the URL.
    pub fn label(&self) -> &str {
        match self {
            Self::Upload { key } => key,
            Self::Url { url } => url,
        }
    }
}

/// One source image and the provider its task goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSource {
    pub source: Source,
    pub provider: ProviderName,
}

/// A generation request after validation: one task will be made per source.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Each source with its provider: the source's own `provider`, else the request's, else
    /// the operator's default.
    pub sources: Vec<TaskSource>,
    /// Extra images sent with every task after its source.
    pub references: Vec<Source>,
    /// The model of KIE tasks.
    pub model: Model,
    /// The model of Gemini tasks (the operator's choice).
    pub gemini_model: String,
    pub aspect_ratio: AspectRatio,
    pub output_format: OutputFormat,
    pub priority: i32,
    pub batch_id: Option<String>,
    /// Where completion and failure events are POSTed (checked again at delivery time
    /// by the guarded client).
    pub webhook_url: Option<String>,
    /// Whether its tasks may move to the next provider of the operator's failover chain;
    /// `None` leaves it to the operator's default.
    pub fallback: Option<bool>,
}

impl GenerateRequest {
    /// Parses the JSON body of `POST /api/generate`. Type errors name the field.
    pub fn from_json(body: &Value, policy: &RequestPolicy) -> Result<Self, InputError> {
        let obj = body.as_object().ok_or_else(|| {
            InputError::new("invalid_body", "the request body must be a JSON object")
        })?;
        fields::refuse_unknown(obj)?;

        let prompt = Prompt::parse(required_str(obj, "prompt", "prompt_required")?)?;
        let provider = optional_str(obj, "provider")?
            .map_or(Ok(policy.default_provider), ProviderName::parse)?;
        let aspect_ratio = optional_str(obj, "aspectRatio")?
            .map_or(Ok(AspectRatio::default()), AspectRatio::parse)?;
        let output_format = optional_str(obj, "outputFormat")?
            .map_or(Ok(OutputFormat::default()), OutputFormat::parse)?;
        let priority = parse_priority(obj)?;
        let batch_id = parse_batch_id(obj)?;
        let webhook_url = optional_str(obj, "webhookUrl")?
            .map(parse_webhook_url)
            .transpose()?;
        let fallback = match obj.get("fallback") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(wrong_type("fallback", "true or false")),
        };

        let mut sources = parse_uploads(obj, "uploads", provider)?;
        sources.extend(parse_urls(obj, "imageUrls", provider)?);
        if sources.is_empty() {
            return Err(InputError::new(
                "images_required",
                "give at least one source image in uploads or imageUrls",
            ));
        }
        if sources.len() > MAX_SOURCES {
            return Err(InputError::new(
                "too_many_images",
                format!(
                    "{} source images given; at most {MAX_SOURCES} per request",
                    sources.len()
                ),
            ));
        }
        let model = parse_model(optional_str(obj, "model")?, &sources, policy)?;
        for field in ["referenceUploads", "referenceUrls"] {
            // References go with every task, whatever its provider: a provider there would
            // be ignored, so it is refused instead.
            if let Some(i) = optional_array(obj, field)?
                .iter()
                .position(|r| r.get("provider").is_some())
            {
                return Err(InputError::new(
                    "invalid_field",
                    format!(
                        "{field}[{i}].provider: references go with every task; name providers on uploads or imageUrls"
                    ),
                ));
            }
        }
        let references: Vec<Source> = parse_uploads(obj, "referenceUploads", provider)?
            .into_iter()
            .chain(parse_urls(obj, "referenceUrls", provider)?)
            .map(|r| r.source)
            .collect();
        if 1 + references.len() > MAX_IMAGES_PER_TASK {
            return Err(InputError::new(
                "too_many_images",
                format!(
                    "{} reference images given; a task takes at most {MAX_IMAGES_PER_TASK} images including its source",
                    references.len()
                ),
            ));
        }

        Ok(Self {
            prompt,
            sources,
            references,
            model,
            gemini_model: policy.gemini_model.clone(),
            aspect_ratio,
            output_format,
            priority,
            batch_id,
            webhook_url,
            fallback,
        })
    }
}

impl GenerateRequest {
    /// The model a task for `provider` uses.
    pub fn model_for(&self, provider: ProviderName) -> &str {
        match provider {
            ProviderName::Kie => self.model.as_str(),
            ProviderName::Gemini => &self.gemini_model,
        }
    }
}

/// `model` names one provider's model, so it must fit every provider the request uses;
/// without it each provider uses its own default.
fn parse_model(
    raw: Option<&str>,
    sources: &[TaskSource],
    policy: &RequestPolicy,
) -> Result<Model, InputError> {
    let Some(raw) = raw else {
        return Ok(Model::default());
    };
    let kie = Model::parse(raw).ok();
    let gemini = raw == policy.gemini_model;
    let owner = match (kie, gemini) {
        (Some(_), _) => ProviderName::Kie,
        (None, true) => ProviderName::Gemini,
        (None, false) => {
            return Err(InputError::new(
                "unsupported_model",
                format!(
                    "model {raw:?} is not supported; use one of {}, {}",
                    Model::NAMES.join(", "),
                    policy.gemini_model
                ),
            ));
        }
    };
    if let Some(other) = sources.iter().map(|s| s.provider).find(|p| *p != owner) {
        return Err(InputError::new(
            "unsupported_model",
            format!(
                "model {raw:?} is a {} model, but this request has {} tasks; leave model out to let each provider use its own",
                owner.label(),
                other.label()
            ),
        ));
    }
    Ok(kie.unwrap_or_default())
}

fn wrong_type(field: &str, expected: &str) -> InputError {
    InputError::new("invalid_field", format!("{field} must be {expected}"))
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
    missing_code: &'static str,
) -> Result<&'a str, InputError> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(InputError::new(
            missing_code,
            format!("{field} is required"),
        )),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, InputError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(wrong_type(field, "a string")),
    }
}

fn optional_array<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a [Value], InputError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) if items.len() > 100 => Err(InputError::new(
            "too_many_images",
            format!(
                "{field} has {} entries; at most {MAX_SOURCES} are accepted",
                items.len()
            ),
        )),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(wrong_type(field, "an array")),
    }
}

/// A source's own `provider`, overriding the request's.
fn item_provider(
    item: &Value,
    name: &str,
    fallback: ProviderName,
) -> Result<ProviderName, InputError> {
    match item.get("provider") {
        None | Some(Value::Null) => Ok(fallback),
        Some(Value::String(s)) => ProviderName::parse(s).map_err(|e| InputError {
            message: format!("{name}.provider: {}", e.message),
            ..e
        }),
        Some(_) => Err(wrong_type(&format!("{name}.provider"), "a string")),
    }
}

/// `[{key, url?, provider?}]`.
fn parse_uploads(
    obj: &Map<String, Value>,
    field: &str,
    provider: ProviderName,
) -> Result<Vec<TaskSource>, InputError> {
    optional_array(obj, field)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = format!("{field}[{i}]");
            let key = item
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| wrong_type(&format!("{name}.key"), "a string"))?;
            Ok(TaskSource {
                source: Source::Upload {
                    key: parse_upload_key(key)?,
                },
                provider: item_provider(item, &name, provider)?,
            })
        })
        .collect()
}

/// `["https://…", {url, provider?}, …]`: a plain URL string, or an object when the source
/// names its own provider.
fn parse_urls(
    obj: &Map<String, Value>,
    field: &str,
    provider: ProviderName,
) -> Result<Vec<TaskSource>, InputError> {
    optional_array(obj, field)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let name = format!("{field}[{i}]");
            let (raw, provider) = match item {
                Value::String(raw) => (raw.as_str(), provider),
                Value::Object(entry) => (
                    entry
                        .get("url")
                        .and_then(Value::as_str)
                        .ok_or_else(|| wrong_type(&format!("{name}.url"), "a URL string"))?,
                    item_provider(item, &name, provider)?,
                ),
                _ => return Err(wrong_type(&name, "a URL string")),
            };
            Ok(TaskSource {
                source: Source::Url {
                    url: parse_image_url(raw)?,
                },
                provider,
            })
        })
        .collect()
}

fn parse_priority(obj: &Map<String, Value>) -> Result<i32, InputError> {
    let Some(value) = obj.get("priority").filter(|v| !v.is_null()) else {
        return Ok(0);
    };
    value
        .as_i64()
        .filter(|p| PRIORITY_RANGE.contains(p))
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| {
            InputError::new(
                "invalid_priority",
                format!(
                    "priority must be an integer from {} to {}",
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                ),
            )
        })
}

fn parse_batch_id(obj: &Map<String, Value>) -> Result<Option<String>, InputError> {
    let Some(id) = optional_str(obj, "batchId")? else {
        return Ok(None);
    };
    let ok = !id.is_empty()
        && id.len() <= MAX_BATCH_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(Some(id.to_owned()))
    } else {
        Err(InputError::new(
            "invalid_batch_id",
            format!(
                "batchId must be 1–{MAX_BATCH_ID_LEN} characters of letters, digits, '-', '_' or '.'"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> RequestPolicy {
        RequestPolicy {
            default_provider: ProviderName::Kie,
            gemini_model: "gemini-2.5-flash-image".to_owned(),
        }
    }

    fn parse(body: Value) -> Result<GenerateRequest, InputError> {
        GenerateRequest::from_json(&body, &policy())
    }

    fn code(body: Value) -> &'static str {
        parse(body).unwrap_err().code
    }

    #[test]
    fn documented_aspect_ratios_are_the_accepted_ones() {
        let schema =
            serde_json::to_value(<AspectRatioChoice as utoipa::PartialSchema>::schema()).unwrap();
        let documented: Vec<&str> = schema["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(documented, ASPECT_RATIOS);
    }

    /// The documented wire type and the parser agree: a body using every documented field
    /// (each list shape included) is accepted, and reads back as written.
    #[test]
    fn the_documented_body_with_every_field_parses() {
        let body = GenerateBody {
            prompt: "a red dress".to_owned(),
            uploads: vec![UploadRef {
                key: "uploads/a.png".to_owned(),
                url: Some("http://x/a.png".to_owned()),
                provider: Some(ProviderChoice::Gemini),
            }],
            image_urls: vec![
                ImageUrl::Plain("https://example.com/b.png".to_owned()),
                ImageUrl::WithProvider {
                    url: "https://example.com/c.png".to_owned(),
                    provider: Some(ProviderChoice::Gemini),
                },
            ],
            reference_uploads: vec![ReferenceUpload {
                key: "uploads/r.png".to_owned(),
            }],
            reference_urls: vec!["https://example.com/r.png".to_owned()],
            provider: Some(ProviderChoice::Gemini),
            model: Some("gemini-2.5-flash-image".to_owned()),
            aspect_ratio: Some("16:9".to_owned()),
            output_format: Some(OutputFormat::Jpeg),
            priority: Some(5),
            batch_id: Some("spring".to_owned()),
            webhook_url: Some("https://hooks.example.com/x".to_owned()),
            fallback: Some(false),
        };
        let wire = serde_json::to_value(&body).unwrap();
        let req = parse(wire.clone()).unwrap();
        assert_eq!(req.fallback, Some(false));
        assert_eq!(req.sources.len(), 3);
        assert!(
            req.sources
                .iter()
                .all(|s| s.provider == ProviderName::Gemini)
        );
        assert_eq!(req.references.len(), 2);
        assert_eq!(req.aspect_ratio.as_str(), "16:9");
        assert_eq!(req.output_format, OutputFormat::Jpeg);
        assert_eq!(req.priority, 5);
        assert_eq!(req.batch_id.as_deref(), Some("spring"));
        assert_eq!(
            req.webhook_url.as_deref(),
            Some("https://hooks.example.com/x")
        );
        // And every property the document lists is one the body above used.
        let schema =
            serde_json::to_value(<GenerateBody as utoipa::PartialSchema>::schema()).unwrap();
        let documented: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        let sent: Vec<&String> = wire.as_object().unwrap().keys().collect();
        assert_eq!(documented.len(), sent.len(), "{documented:?} vs {sent:?}");
        let mut known = fields::TOP_LEVEL.to_vec();
        known.sort_unstable();
        let mut documented: Vec<&str> = documented.iter().map(|k| k.as_str()).collect();
        documented.sort_unstable();
        assert_eq!(
            known, documented,
            "fields::TOP_LEVEL is the documented body"
        );
    }

    #[test]
    fn a_minimal_request_gets_kie_defaults() {
        let req = parse(json!({
            "prompt": "a red dress",
            "uploads": [{"key": "uploads/abc.png", "url": "http://x/abc.png"}]
        }))
        .unwrap();
        assert_eq!(req.sources.len(), 1);
        assert_eq!(req.sources[0].provider, ProviderName::Kie);
        assert_eq!(req.aspect_ratio.as_str(), "1:1");
        assert_eq!(req.output_format, OutputFormat::Png);
        assert_eq!(req.model, Model::NanoBananaEdit);
    }

    #[test]
    fn bad_input_has_stable_codes() {
        let up = json!([{"key": "uploads/a.png"}]);
        assert_eq!(code(json!([])), "invalid_body");
        assert_eq!(code(json!({"uploads": up})), "prompt_required");
        assert_eq!(
            code(json!({"prompt": "  ", "uploads": up})),
            "prompt_required"
        );
        assert_eq!(code(json!({"prompt": 5, "uploads": up})), "invalid_field");
        assert_eq!(
            code(json!({"prompt": "x".repeat(5001), "uploads": up})),
            "prompt_too_long"
        );
        assert_eq!(code(json!({"prompt": "p"})), "images_required");
        assert_eq!(
            code(json!({"prompt": "p", "imageUrls": "http://a"})),
            "invalid_field"
        );
        assert_eq!(
            code(json!({"prompt": "p", "imageUrls": ["ftp://a/b"]})),
            "invalid_image_url"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": [{"key": "../etc/passwd"}]})),
            "invalid_upload_key"
        );
        for key in [
            "uploads//a.png",
            "uploads/a/",
            "uploads/./a.png",
            "uploads/",
        ] {
            assert_eq!(
                code(json!({"prompt": "p", "uploads": [{"key": key}]})),
                "invalid_upload_key",
                "{key}"
            );
        }
        let eleven: Vec<_> = (0..11).map(|i| format!("https://e.com/{i}.png")).collect();
        assert_eq!(
            code(json!({"prompt": "p", "imageUrls": eleven})),
            "too_many_images"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": up, "aspectRatio": "7:1"})),
            "invalid_aspect_ratio"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": up, "outputFormat": "gif"})),
            "invalid_output_format"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": up, "model": "x"})),
            "unsupported_model"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": up, "priority": 1.5})),
            "invalid_priority"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": up, "priority": 5000})),
            "invalid_priority"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": up, "batchId": "a b"})),
            "invalid_batch_id"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": up, "provider": "openai"})),
            "unsupported_provider"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": [{"key": "uploads/a.png", "provider": 3}]})),
            "invalid_field"
        );
        assert_eq!(
            code(
                json!({"prompt": "p", "imageUrls": [{"url": "https://e.com/a.png", "provider": "x"}]})
            ),
            "unsupported_provider"
        );
        assert_eq!(
            code(json!({"prompt": "p", "imageUrls": [{"provider": "gemini"}]})),
            "invalid_field"
        );
    }

    #[test]
    fn providers_come_from_the_source_then_the_request_then_the_default() {
        let req = parse(json!({
            "prompt": "p",
            "provider": "gemini",
            "uploads": [{"key": "uploads/a.png"}, {"key": "uploads/b.png", "provider": "kie"}],
            "imageUrls": ["https://e.com/c.png", {"url": "https://e.com/d.png", "provider": "kie"}]
        }))
        .unwrap();
        let providers: Vec<_> = req.sources.iter().map(|s| s.provider).collect();
        assert_eq!(
            providers,
            [
                ProviderName::Gemini,
                ProviderName::Kie,
                ProviderName::Gemini,
                ProviderName::Kie
            ]
        );
        assert_eq!(req.model_for(ProviderName::Kie), "google/nano-banana-edit");
        assert_eq!(
            req.model_for(ProviderName::Gemini),
            "gemini-2.5-flash-image"
        );
        let gemini_default = RequestPolicy {
            default_provider: ProviderName::Gemini,
            ..policy()
        };
        let req = GenerateRequest::from_json(
            &json!({"prompt": "p", "imageUrls": ["https://e.com/c.png"]}),
            &gemini_default,
        )
        .unwrap();
        assert_eq!(req.sources[0].provider, ProviderName::Gemini);
    }

    #[test]
    fn a_model_must_fit_every_provider_of_the_request() {
        let up = json!([{"key": "uploads/a.png"}]);
        assert!(parse(json!({"prompt": "p", "uploads": up, "provider": "gemini", "model": "gemini-2.5-flash-image"})).is_ok());
        assert_eq!(
            code(
                json!({"prompt": "p", "uploads": up, "provider": "gemini", "model": "google/nano-banana-edit"})
            ),
            "unsupported_model"
        );
        assert_eq!(
            code(json!({"prompt": "p", "uploads": up, "model": "gemini-2.5-flash-image"})),
            "unsupported_model"
        );
        assert_eq!(
            code(
                json!({"prompt": "p", "uploads": up, "provider": "gemini", "model": "gemini-1.0-pro"})
            ),
            "unsupported_model"
        );
    }
}
