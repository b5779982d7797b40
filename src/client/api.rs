//! The client's HTTP side: one reqwest client, the server's base URL and key, and the
//! errors a person can act on (server unreachable, key missing or wrong, the server's own
//! code and sentence for a refused request).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use url::Url;

/// Files per upload request: the server's default limit.
const FILES_PER_UPLOAD: usize = 10;
/// How long connecting may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong, as one sentence; each kind has its exit code and a machine code for
/// `--json`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach darkroom at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "API key missing or wrong: pass --key or set DARKROOM_KEY (the server said {code}: {message})"
    )]
    Unauthorized { code: String, message: String },
    /// The server refused the request: its own code and sentence.
    #[error("{code}: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// The command line names something that cannot be used (a file, a URL).
    #[error("{0}")]
    Usage(String),
    /// Writing results on this machine failed.
    #[error("{0}")]
    Local(String),
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
}

impl ClientError {
    /// The code `--json` reports: the server's own where it gave one.
    pub fn code(&self) -> &str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::Unauthorized { code, .. } | Self::Refused { code, .. } => code,
            Self::Usage(_) => "usage",
            Self::Local(_) => "local_io",
            Self::Protocol { .. } => "unexpected_answer",
        }
    }

    /// 2 for what the command line got wrong, 3 for everything between client and server.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => super::EXIT_USAGE,
            _ => super::EXIT_REQUEST,
        }
    }
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"), which
/// says more than reqwest's outer "error sending request".
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    cause.to_string()
}

/// A connection to one darkroom server.
pub struct Api {
    http: reqwest::Client,
    base: Url,
    key: Option<String>,
}

impl Api {
    pub fn new(server: &str, key: Option<String>) -> Result<Self, ClientError> {
        let mut base = Url::parse(server.trim()).map_err(|e| {
            ClientError::Usage(format!(
                "--server (DARKROOM_SERVER) {server:?} is not a URL: {e}"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::Usage(format!(
                "--server (DARKROOM_SERVER) {server:?} must be an http:// or https:// URL"
            )));
        }
        // Paths join onto the base: a server under a prefix keeps its prefix.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("darkroom-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Local(format!("cannot start the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            key: key.filter(|k| !k.trim().is_empty()),
        })
    }

    /// The server's URL as given, for messages.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    pub fn url(&self, path: &str) -> Url {
        // `path` is relative (a route, with ids checked by the callers), so joining onto
        // an http(s) base cannot fail; the base itself is the harmless fallback.
        self.base
            .join(path.trim_start_matches('/'))
            .unwrap_or_else(|_| self.base.clone())
    }

    /// A request to the server, with the key when there is one.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.authorized(self.http.request(method, self.url(path)))
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.key {
            Some(key) => request.bearer_auth(key.trim()),
            None => request,
        }
    }

    /// Sends, turning transport errors and error statuses into [`ClientError`]s.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.refusal(response).await)
    }

    fn transport(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.server().to_owned(),
            reason: root_cause(error),
        }
    }

    /// The server's code and sentence from an error answer (`{success:false, error, code}`).
    async fn refusal(&self, response: Response) -> ClientError {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["code"]
            .as_str()
            .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned);
        let message = body["error"]
            .as_str()
            .or_else(|| body["error"]["message"].as_str())
            .or(status.canonical_reason())
            .unwrap_or("no reason given")
            .to_owned();
        if status == StatusCode::UNAUTHORIZED {
            return ClientError::Unauthorized { code, message };
        }
        ClientError::Refused {
            status: status.as_u16(),
            code,
            message,
        }
    }

    pub async fn json(&self, request: RequestBuilder) -> Result<Value, ClientError> {
        let response = self.send(request).await?;
        let url = response.url().to_string();
        response.json().await.map_err(|e| ClientError::Protocol {
            url,
            reason: root_cause(&e),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.json(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    /// Uploads local files (`POST /api/upload`, ten per request); the `uploaded` entries in
    /// order. Any file the server refuses stops everything, naming each refused file.
    pub async fn upload(&self, files: &[PathBuf]) -> Result<Vec<Value>, ClientError> {
        let mut uploaded = Vec::with_capacity(files.len());
        for chunk in files.chunks(FILES_PER_UPLOAD) {
            let mut form = reqwest::multipart::Form::new();
            for path in chunk {
                let bytes = tokio::fs::read(path).await.map_err(|e| {
                    ClientError::Usage(format!("cannot read {}: {e}", path.display()))
                })?;
                let name = path
                    .file_name()
                    .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
                form = form.part(
                    "files",
                    reqwest::multipart::Part::bytes(bytes).file_name(name),
                );
            }
            let request = self.request(Method::POST, "api/upload").multipart(form);
            let response = request.send().await.map_err(|e| self.transport(&e))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::PAYLOAD_TOO_LARGE {
                return Err(self.refusal(response).await);
            }
            let url = response.url().to_string();
            let body: Value = response.json().await.map_err(|e| ClientError::Protocol {
                url,
                reason: format!("HTTP {status}: {}", root_cause(&e)),
            })?;
            // A refused file is an entry in `errors`, whatever the status.
            if let Some(errors) = body["errors"].as_array().filter(|e| !e.is_empty()) {
                let first = &errors[0];
                let reasons: Vec<String> = errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {} ({})",
                            e["filename"].as_str().unwrap_or("?"),
                            e["error"].as_str().unwrap_or("refused"),
                            e["code"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                return Err(ClientError::Refused {
                    status: status.as_u16(),
                    code: first["code"]
                        .as_str()
                        .unwrap_or("upload_refused")
                        .to_owned(),
                    message: format!("the server refused {}", reasons.join("; ")),
                });
            }
            if !status.is_success() {
                return Err(ClientError::Refused {
                    status: status.as_u16(),
                    code: body["code"].as_str().unwrap_or("upload_refused").to_owned(),
                    message: body["error"]
                        .as_str()
                        .unwrap_or("the upload was refused")
                        .to_owned(),
                });
            }
            uploaded.extend(body["uploaded"].as_array().cloned().unwrap_or_default());
        }
        Ok(uploaded)
    }

    /// Downloads `url` into `dir` as `<stem>.<ext>` (the extension from the URL, else from
    /// the content type), writing a `.part` file first so a cut download leaves no result
    /// behind. The key goes only to the server's own origin, never to a bucket's.
    pub async fn download(
        &self,
        url: &str,
        dir: &Path,
        stem: &str,
    ) -> Result<PathBuf, ClientError> {
        let target = self.base.join(url).map_err(|e| ClientError::Protocol {
            url: url.to_owned(),
            reason: format!("not a URL: {e}"),
        })?;
        let mut request = self.http.get(target.clone());
        if target.origin() == self.base.origin() {
            request = self.authorized(request);
        }
        let response = self.send(request).await?;
        let ext = extension(
            &target,
            response.headers().get(reqwest::header::CONTENT_TYPE),
        );
        let path = dir.join(format!("{stem}.{ext}"));
        let partial = dir.join(format!("{stem}.{ext}.part"));
        let local = |e: std::io::Error, p: &Path| {
            ClientError::Local(format!("cannot write {}: {e}", p.display()))
        };
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| local(e, &partial))?;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.transport(&e))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| local(e, &partial))?;
        }
        file.flush().await.map_err(|e| local(e, &partial))?;
        drop(file);
        tokio::fs::rename(&partial, &path)
            .await
            .map_err(|e| local(e, &path))?;
        Ok(path)
    }

    /// Streams `path`'s answer into the file `to` (a `.part` file first).
    pub async fn save(&self, path: &str, to: &Path) -> Result<u64, ClientError> {
        let response = self.send(self.request(Method::GET, path)).await?;
        let mut partial = to.as_os_str().to_owned();
        partial.push(".part");
        let partial = PathBuf::from(partial);
        let local = |e: std::io::Error, p: &Path| {
            ClientError::Local(format!("cannot write {}: {e}", p.display()))
        };
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| local(e, &partial))?;
        let mut written = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.transport(&e))?;
            file.write_all(&chunk)
                .await
                .map_err(|e| local(e, &partial))?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(|e| local(e, &partial))?;
        drop(file);
        tokio::fs::rename(&partial, to)
            .await
            .map_err(|e| local(e, to))?;
        Ok(written)
    }
}

/// A result file's extension: the URL's own when it has a short alphanumeric one, else the
/// content type's.
fn extension(url: &Url, content_type: Option<&reqwest::header::HeaderValue>) -> String {
    let from_url = url
        .path_segments()
        .and_then(|mut s| s.next_back())
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .filter(|ext| {
            (1..=5).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if let Some(ext) = from_url {
        return ext;
    }
    let content_type = content_type.and_then(|v| v.to_str().ok()).unwrap_or("");
    match content_type.split(';').next().unwrap_or("").trim() {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "application/zip" => "zip",
        _ => "bin",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_come_from_the_url_then_the_content_type() {
        let url = Url::parse("http://h/files/generated/kie-tsk_1-0.png?sig=abc").unwrap();
        assert_eq!(extension(&url, None), "png");
        let bare = Url::parse("http://h/download/abc").unwrap();
        let jpeg = reqwest::header::HeaderValue::from_static("image/jpeg; charset=binary");
        assert_eq!(extension(&bare, Some(&jpeg)), "jpg");
        assert_eq!(extension(&bare, None), "bin");
    }

    #[test]
    fn the_base_keeps_its_prefix_and_refuses_other_schemes() {
        let api = Api::new("http://127.0.0.1:3000/darkroom", None).unwrap();
        assert_eq!(
            api.url("api/tasks").as_str(),
            "http://127.0.0.1:3000/darkroom/api/tasks"
        );
        assert!(matches!(
            Api::new("ftp://x", None),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            Api::new("nowhere", None),
            Err(ClientError::Usage(_))
        ));
    }
}
