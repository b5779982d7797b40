//! The validated values a request is made of: the prompt, aspect ratio, output format,
//! model and provider name, and the upload keys and URLs it may name.

use serde::{Deserialize, Serialize};
use url::Url;

use super::{InputError, MAX_PROMPT_CHARS, MAX_URL_LEN};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt(String);

impl Prompt {
    pub fn parse(s: &str) -> Result<Self, InputError> {
        if s.trim().is_empty() {
            return Err(InputError::new(
                "prompt_required",
                "prompt must not be empty",
            ));
        }
        let chars = s.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(InputError::new(
                "prompt_too_long",
                format!("prompt has {chars} characters; at most {MAX_PROMPT_CHARS} are accepted"),
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// KIE's `image_size` values for `google/nano-banana-edit`.
pub const ASPECT_RATIOS: [&str; 11] = [
    "1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9", "auto",
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AspectRatio(String);

impl AspectRatio {
    pub fn parse(s: &str) -> Result<Self, InputError> {
        if ASPECT_RATIOS.contains(&s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InputError::new(
                "invalid_aspect_ratio",
                format!(
                    "aspectRatio {s:?} is not one of {}",
                    ASPECT_RATIOS.join(", ")
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AspectRatio {
    fn default() -> Self {
        Self("1:1".to_owned())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Result<Self, InputError> {
        match s {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            _ => Err(InputError::new(
                "invalid_output_format",
                format!("outputFormat {s:?} is not one of png, jpeg"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
        }
    }
}

/// Models darkroom knows how to build input for. Input building is per model because KIE's
/// newer models use other field names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Model {
    #[default]
    #[serde(rename = "google/nano-banana-edit")]
    NanoBananaEdit,
}

impl Model {
    pub const NAMES: [&'static str; 1] = ["google/nano-banana-edit"];
    /// Every name a request may use for a KIE model: the canonical names, then aliases.
    pub const ACCEPTED_NAMES: [&'static str; 2] = ["google/nano-banana-edit", "nano-banana-edit"];

    pub fn parse(s: &str) -> Result<Self, InputError> {
        match s {
            s if Self::ACCEPTED_NAMES.contains(&s) => Ok(Self::NanoBananaEdit),
            _ => Err(InputError::new(
                "unsupported_model",
                format!(
                    "model {s:?} is not supported; use one of {}",
                    Self::NAMES.join(", ")
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NanoBananaEdit => "google/nano-banana-edit",
        }
    }
}

/// The providers a task can name. KIE answers later (callback, polling); Gemini answers
/// inside the call. Both run behind the same task model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderName {
    Kie,
    Gemini,
}

impl ProviderName {
    pub const ALL: [Self; 2] = [Self::Kie, Self::Gemini];

    pub fn parse(s: &str) -> Result<Self, InputError> {
        match s {
            "kie" => Ok(Self::Kie),
            "gemini" => Ok(Self::Gemini),
            _ => Err(InputError::new(
                "unsupported_provider",
                format!("provider {s:?} is not available; use \"kie\" or \"gemini\""),
            )),
        }
    }

    /// The name stored with tasks and used in result keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kie => "kie",
            Self::Gemini => "gemini",
        }
    }

    /// How people write it, for messages.
    pub fn label(self) -> &'static str {
        match self {
            Self::Kie => "KIE",
            Self::Gemini => "Gemini",
        }
    }
}

/// Keys darkroom generates for uploads look like `uploads/<uuid>.<ext>`; anything else
/// (traversal, other prefixes) is refused before it reaches the bucket.
pub fn parse_upload_key(key: &str) -> Result<String, InputError> {
    let ok = key.strip_prefix("uploads/").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 200
            && !rest.contains("..")
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
            // Every segment is a name: no `//`, no `.` (the bucket refuses such keys).
            && rest.split('/').all(|segment| !segment.is_empty() && segment != ".")
    });
    if ok {
        Ok(key.to_owned())
    } else {
        Err(InputError::new(
            "invalid_upload_key",
            format!("{key:?} is not a key returned by /api/upload"),
        ))
    }
}

pub fn parse_image_url(raw: &str) -> Result<String, InputError> {
    let bad = |why: &str| InputError::new("invalid_image_url", format!("image URL {raw:?} {why}"));
    if raw.len() > MAX_URL_LEN {
        return Err(bad("is too long"));
    }
    let url = Url::parse(raw).map_err(|_| bad("is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(url.to_string())
}

/// A webhook target: an absolute http(s) URL of sane length.
pub fn parse_webhook_url(raw: &str) -> Result<String, InputError> {
    let bad =
        |why: &str| InputError::new("invalid_webhook_url", format!("webhookUrl {raw:?} {why}"));
    if raw.len() > MAX_URL_LEN {
        return Err(bad("is too long"));
    }
    let url = Url::parse(raw).map_err(|_| bad("is not a valid URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must use http or https"));
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_length_counts_characters_not_bytes() {
        assert!(Prompt::parse(&"é".repeat(5000)).is_ok());
    }
}
