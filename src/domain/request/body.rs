//! The documented JSON body of `POST /api/generate` and `POST /api/batches`: the wire
//! description the OpenAPI document is built from.

use serde::{Deserialize, Serialize};

use super::OutputFormat;

/// The JSON body of `POST /api/generate` and `POST /api/batches`, as the API documents it.
/// Requests are read by [`GenerateRequest::from_json`], which names the offending field
/// with a stable code; this type is the wire description the OpenAPI document is built
/// from, and a test checks that a body using every field of it parses.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)] // unknown fields: 400 unknown_field
pub struct GenerateBody {
    /// What to do with the images (1–5000 characters).
    #[schema(min_length = 1, max_length = 5000)]
    pub prompt: String,
    /// Source images from `/api/upload`: one task each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 10)]
    pub uploads: Vec<UploadRef>,
    /// Source images by URL: one task each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 10)]
    pub image_urls: Vec<ImageUrl>,
    /// Uploads sent with every task after its source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_uploads: Vec<ReferenceUpload>,
    /// URLs sent with every task after its source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reference_urls: Vec<String>,
    /// The provider of sources that name none (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderChoice>,
    /// `google/nano-banana-edit` for KIE, or the operator's Gemini model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Default 1:1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<AspectRatioChoice>)]
    pub aspect_ratio: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_format: Option<OutputFormat>,
    /// Higher runs first; default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1000, maximum = 1000)]
    pub priority: Option<i32>,
    /// A label grouping tasks (`/api/generate` only; `/api/batches` assigns its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub batch_id: Option<String>,
    /// POSTed (Standard Webhooks) when each task is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "uri")]
    pub webhook_url: Option<String>,
    /// Whether the tasks may move to the next provider of the operator's failover chain
    /// (`DARKROOM_FAILOVER`) when theirs is paused or keeps failing, before any create of
    /// theirs was made (default: the operator's `DARKROOM_FAILOVER_BY_DEFAULT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<bool>,
}

/// An upload used as a source: the `key` `/api/upload` returned.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadRef {
    /// `uploads/…`.
    #[schema(
        pattern = "^uploads/[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$",
        max_length = 208
    )]
    pub key: String,
    /// Ignored (the original's front end sends it); darkroom builds its own URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// This source's provider, over the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderChoice>,
}

/// An upload sent as a reference with every task.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceUpload {
    #[schema(
        pattern = "^uploads/[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$",
        max_length = 208
    )]
    pub key: String,
}

/// A source image by URL: the URL itself, or an object when it names its own provider.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ImageUrl {
    #[schema(format = "uri")]
    Plain(String),
    WithProvider {
        #[schema(format = "uri")]
        url: String,
        provider: Option<ProviderChoice>,
    },
}

/// The aspect ratios a request may ask for ([`ASPECT_RATIOS`]; a unit test keeps the two
/// lists equal).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub enum AspectRatioChoice {
    #[serde(rename = "1:1")]
    Square,
    #[serde(rename = "9:16")]
    Portrait9x16,
    #[serde(rename = "16:9")]
    Landscape16x9,
    #[serde(rename = "3:4")]
    Portrait3x4,
    #[serde(rename = "4:3")]
    Landscape4x3,
    #[serde(rename = "3:2")]
    Landscape3x2,
    #[serde(rename = "2:3")]
    Portrait2x3,
    #[serde(rename = "5:4")]
    Landscape5x4,
    #[serde(rename = "4:5")]
    Portrait4x5,
    #[serde(rename = "21:9")]
    Wide21x9,
    #[serde(rename = "auto")]
    Auto,
}

/// A provider as a request names it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderChoice {
    Kie,
    Gemini,
}
