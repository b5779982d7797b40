//! Result files and uploaded inputs: serving them, KIE's file upload API, and expiring
//! them.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use image::ImageFormat;
use serde_json::{Value, json};

use super::KieSim;
use super::routes::success;
use super::stats::Counters;
use super::store::StoredFile;

impl KieSim {
    /// Expires every file URL handed out so far (results and uploaded inputs), as KIE's do
    /// after a while: they answer 404 from now on, while `recordInfo` still lists them.
    /// Returns how many files expired.
    pub fn expire_results(&self) -> usize {
        let mut ledger = self.ledger();
        let expired = ledger.files.len();
        ledger.files.clear();
        ledger.file_order.clear();
        ledger.file_bytes = 0;
        expired
    }

    pub(super) fn file(&self, name: &str) -> Option<(Bytes, &'static str)> {
        self.ledger()
            .files
            .get(name)
            .map(|file| (file.bytes.clone(), file.content_type))
    }

    /// Whether `url` is a result URL this simulator handed out and still serves.
    pub(super) fn is_own_file_url(&self, url: &str) -> bool {
        url.strip_prefix(&self.files_base)
            .is_some_and(|name| self.ledger().files.contains_key(name))
    }
}

pub(super) async fn serve_file(
    State(sim): State<Arc<KieSim>>,
    Path(name): Path<String>,
) -> Response {
    if sim.config.download_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.config.download_delay_ms)).await;
    }
    let Some((bytes, content_type)) = sim.file(&name) else {
        return (StatusCode::NOT_FOUND, "Not found").into_response();
    };
    Counters::bump(&sim.counters.files_served);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        bytes,
    )
        .into_response()
}

/// Largest file the upload API takes (KIE documents images up to 10 MB; leave headroom).
const MAX_UPLOAD_BYTES: usize = 30 * 1024 * 1024;

impl KieSim {
    /// Keeps an uploaded file and answers as KIE's file upload API does.
    pub(super) fn accept_upload(
        &self,
        bytes: Bytes,
        upload_path: &str,
        file_name: Option<&str>,
    ) -> Response {
        if bytes.is_empty() {
            return self.error(422, "file is required");
        }
        if bytes.len() > MAX_UPLOAD_BYTES {
            return self.error(422, "file is too large");
        }
        let (content_type, ext) = match image::guess_format(&bytes) {
            Ok(ImageFormat::Png) => ("image/png", "png"),
            Ok(ImageFormat::Jpeg) => ("image/jpeg", "jpg"),
            Ok(ImageFormat::WebP) => ("image/webp", "webp"),
            _ => ("application/octet-stream", "bin"),
        };
        let name = format!("upload-{}.{ext}", uuid::Uuid::now_v7().simple());
        let size = bytes.len();
        self.ledger().store_file(
            name.clone(),
            StoredFile {
                bytes,
                content_type,
            },
        );
        Counters::bump(&self.counters.uploads);
        let download_url = format!("{}{name}", self.files_base);
        let file_name = file_name.unwrap_or(&name);
        success(json!({
            "fileName": file_name,
            "filePath": format!("{}/{file_name}", upload_path.trim_end_matches('/')),
            "downloadUrl": download_url,
            "fileSize": size,
            "mimeType": content_type,
        }))
    }
}

pub(super) async fn file_stream_upload(
    State(sim): State<Arc<KieSim>>,
    multipart: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    let Ok(mut multipart) = multipart else {
        return sim.error(422, "send multipart/form-data with file and uploadPath");
    };
    let (mut file, mut upload_path, mut file_name) = (None, None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(_) => return sim.error(422, "the multipart body could not be read"),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let Ok(value) = field.bytes().await else {
            return sim.error(422, "the multipart body could not be read");
        };
        match name.as_str() {
            "file" => file = Some(value),
            "uploadPath" => upload_path = Some(String::from_utf8_lossy(&value).into_owned()),
            "fileName" => file_name = Some(String::from_utf8_lossy(&value).into_owned()),
            _ => {}
        }
    }
    let (Some(file), Some(upload_path)) = (file, upload_path) else {
        return sim.error(422, "file and uploadPath are required");
    };
    sim.accept_upload(file, &upload_path, file_name.as_deref())
}

pub(super) async fn file_base64_upload(
    State(sim): State<Arc<KieSim>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(value) = body
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        return sim.error(422, "the body must be JSON");
    };
    let (Some(data), Some(upload_path)) = (
        value.get("base64Data").and_then(Value::as_str),
        value.get("uploadPath").and_then(Value::as_str),
    ) else {
        return sim.error(422, "base64Data and uploadPath are required");
    };
    // KIE accepts a bare payload or a data URL.
    let payload = data.split_once(";base64,").map_or(data, |(_, b64)| b64);
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(payload) else {
        return sim.error(422, "base64Data is not valid base64");
    };
    let file_name = value.get("fileName").and_then(Value::as_str);
    sim.accept_upload(Bytes::from(bytes), upload_path, file_name)
}
