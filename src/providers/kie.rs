//! The KIE.ai jobs API client (`createTask`, `recordInfo`) and the parsing of its records and
//! callbacks, tolerant of the field-name drift PROVIDERS.md lists.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use url::Url;

use super::{Delivery, Provider, ProviderError, RemoteStatus, Submission, SubmitRequest};
use crate::config::Secret;

/// The provider name stored with KIE tasks; callbacks and status lookups by KIE's task id
/// resolve against it.
pub const NAME: &str = "kie";

const CREATE_PATH: &str = "api/v1/jobs/createTask";
const RECORD_PATH: &str = "api/v1/jobs/recordInfo";
const UPLOAD_PATH: &str = "api/file-stream-upload";
const CREDIT_PATH: &str = "api/v1/chat/credit";
const BROWSER_LIKE_AGENT: &str = concat!(
    "Mozilla/5.0 (compatible; darkroom/",
    env!("CARGO_PKG_VERSION"),
    ")"
);
/// KIE's answers are small JSON envelopes; anything bigger is not one.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

pub struct KieClient {
    http: reqwest::Client,
    base_url: Url,
    /// KIE's file upload API lives on another host.
    upload_base_url: Url,
    token: Secret,
}

impl KieClient {
    pub fn new(
        base_url: Url,
        upload_base_url: Url,
        token: Secret,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = crate::net::client_builder(Duration::from_secs(10), timeout).build()?;
        Ok(Self {
            http,
            base_url,
            upload_base_url,
            token,
        })
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}/{path}", self.base_url.as_str().trim_end_matches('/'))
    }

    fn upload_endpoint(&self, path: &str) -> String {
        format!(
            "{}/{path}",
            self.upload_base_url.as_str().trim_end_matches('/')
        )
    }

    /// Sends a request and returns the envelope's `data`, classifying every failure.
    /// `sent_is_ambiguous`: a timeout after sending may have created a billed task.
    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        sent_is_ambiguous: bool,
    ) -> Result<Value, ProviderError> {
        self.exchange(request, sent_is_ambiguous).await?.into_data()
    }

    /// Sends a request and reads KIE's answer, whatever its code.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        sent_is_ambiguous: bool,
    ) -> Result<Answer, ProviderError> {
        let response = match request.bearer_auth(self.token.expose()).send().await {
            Ok(response) => response,
            Err(e) => return Err(transport_error(&e, sent_is_ambiguous)),
        };
        let status = response.status();
        let retry_after = super::retry_after(response.headers());
        let body = match read_capped(response).await {
            Ok(body) => body,
            Err(e) => return Err(transport_error(&e, sent_is_ambiguous)),
        };
        let envelope: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        // Whether KIE reports business errors through the HTTP status or as HTTP 200 with
        // the code in the body is unconfirmed: check both.
        let code = if status.is_success() {
            envelope_code(&envelope).unwrap_or(200)
        } else {
            i64::from(status.as_u16())
        };
        Ok(Answer {
            status,
            code,
            envelope,
            retry_after,
        })
    }
}

/// One answer from KIE: the HTTP status, the code that counts (the status, or the envelope's
/// code under HTTP 200) and the envelope itself (`Null` when the body is not JSON).
struct Answer {
    status: reqwest::StatusCode,
    code: i64,
    envelope: Value,
    retry_after: Option<Duration>,
}

impl Answer {
    /// The envelope's `data` on success; otherwise the error, classified.
    fn into_data(self) -> Result<Value, ProviderError> {
        if self.code == 200 {
            if !self.status.is_success() || self.envelope.is_null() {
                return Err(ProviderError::Retryable {
                    code: self.status.as_u16().to_string(),
                    message: "the provider answered with something that is not KIE's JSON envelope"
                        .to_owned(),
                    retry_after: self.retry_after,
                });
            }
            return Ok(self.envelope.get("data").cloned().unwrap_or(Value::Null));
        }
        let message = envelope_message(&self.envelope)
            .unwrap_or_else(|| self.status.canonical_reason().unwrap_or("error").to_owned());
        Err(classify(self.code, message, self.retry_after))
    }

    /// KIE's own word that the task does not exist: code 404, as the HTTP status or in the
    /// envelope of an HTTP 200, and a JSON envelope around it. A 404 page that is not KIE's
    /// envelope (a proxy, a wrong base URL) says nothing about the task.
    fn says_not_found(&self) -> Option<String> {
        (self.code == 404 && self.envelope.is_object())
            .then(|| envelope_message(&self.envelope).unwrap_or_else(|| "not found".to_owned()))
    }
}

fn transport_error(e: &reqwest::Error, sent_is_ambiguous: bool) -> ProviderError {
    // A connection that was never made (refused, the host name did not resolve, connecting
    // timed out) never reached KIE: nothing was sent, and KIE as a whole is out of reach.
    if let Some(unreachable) = super::unreachable(e) {
        return unreachable;
    }
    // Anything after the request may have been sent (timeout, reset) is ambiguous for a
    // create.
    if !sent_is_ambiguous {
        ProviderError::Retryable {
            code: "transport".to_owned(),
            message: e.to_string(),
            retry_after: None,
        }
    } else {
        ProviderError::Ambiguous(e.to_string())
    }
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn envelope_code(envelope: &Value) -> Option<i64> {
    match envelope.get("code")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn envelope_message(envelope: &Value) -> Option<String> {
    ["msg", "message"]
        .iter()
        .find_map(|k| envelope.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
}

/// PROVIDERS.md: 429, 455, 500 and 408 may pass; 401, 402, 404, 422, 433, 505 will not.
pub fn classify(code: i64, message: String, retry_after: Option<Duration>) -> ProviderError {
    let retryable = matches!(code, 408 | 429 | 455 | 500 | 502 | 503 | 504);
    if retryable {
        ProviderError::Retryable {
            code: code.to_string(),
            message,
            retry_after,
        }
    } else {
        ProviderError::Permanent {
            code: code.to_string(),
            message,
        }
    }
}

/// Builds KIE's `input` object per model: newer models name their fields differently.
/// Only `google/nano-banana-edit` is accepted by request validation today; a new model adds
/// its own arm here.
fn model_input(request: &SubmitRequest) -> Value {
    json!({
        "prompt": request.prompt,
        "image_urls": request.image_urls,
        "output_format": request.output_format,
        "image_size": request.aspect_ratio,
    })
}

#[async_trait]
impl Provider for KieClient {
    fn name(&self) -> &'static str {
        NAME
    }

    /// KIE's callback: its envelope with the task record in `data` (costs in seconds).
    fn parse_callback(&self, body: &Value) -> Option<super::CallbackReport> {
        let data = body.get("data").filter(|d| d.is_object())?;
        let record = Record::parse(data, CostUnit::Seconds);
        Some(super::CallbackReport {
            provider_task_id: record.task_id,
            state: record.state,
            status: record.status,
        })
    }

    fn delivery(&self) -> Delivery {
        Delivery::Later
    }

    async fn submit(&self, request: &SubmitRequest) -> Result<Submission, ProviderError> {
        let body = json!({
            "model": request.model,
            "callBackUrl": request.callback_url,
            "input": model_input(request),
        });
        let data = self
            .call(self.http.post(self.endpoint(CREATE_PATH)).json(&body), true)
            .await?;
        let provider_task_id = string_field(&data, &["taskId", "task_id"]).ok_or_else(|| {
            ProviderError::Retryable {
                code: "bad_answer".to_owned(),
                message: "createTask answered without a taskId".to_owned(),
                retry_after: None,
            }
        })?;
        Ok(Submission::Accepted { provider_task_id })
    }

    async fn query(&self, provider_task_id: &str) -> Result<RemoteStatus, ProviderError> {
        let request = self
            .http
            .get(self.endpoint(RECORD_PATH))
            .query(&[("taskId", provider_task_id)]);
        let answer = self.exchange(request, false).await?;
        if let Some(message) = answer.says_not_found() {
            return Ok(RemoteStatus::Missing { message });
        }
        let data = answer.into_data()?;
        Ok(Record::parse(&data, CostUnit::Millis).status)
    }

    /// `GET /api/v1/chat/credit`: the account's remaining credits.
    async fn credits(&self) -> Option<Result<i64, ProviderError>> {
        let request = self.http.get(self.endpoint(CREDIT_PATH));
        Some(self.call(request, false).await.and_then(|data| {
            parse_credits(&data).ok_or_else(|| ProviderError::Retryable {
                code: "bad_answer".to_owned(),
                message: "the credit balance answer holds no number".to_owned(),
                retry_after: None,
            })
        }))
    }

    /// `POST /api/file-stream-upload`, streamed from disk. KIE keeps the file three days.
    async fn upload_input(
        &self,
        file: &std::path::Path,
        file_name: &str,
        content_type: &str,
    ) -> Result<String, ProviderError> {
        let local = |e: std::io::Error| ProviderError::Retryable {
            code: "local_io".to_owned(),
            message: format!("reading the input for upload failed: {e}"),
            retry_after: None,
        };
        let handle = tokio::fs::File::open(file).await.map_err(local)?;
        let size = handle.metadata().await.map_err(local)?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(handle));
        let part = reqwest::multipart::Part::stream_with_length(body, size)
            .file_name(file_name.to_owned())
            .mime_str(content_type)
            .map_err(|e| ProviderError::Permanent {
                code: "bad_content_type".to_owned(),
                message: e.to_string(),
            })?;
        let form = reqwest::multipart::Form::new()
            .part("file", part)
            .text("uploadPath", "darkroom/inputs")
            .text("fileName", file_name.to_owned());
        // KIE's upload host is reported to refuse requests without a browser-like agent.
        let request = self
            .http
            .post(self.upload_endpoint(UPLOAD_PATH))
            .header(reqwest::header::USER_AGENT, BROWSER_LIKE_AGENT)
            .multipart(form);
        let data = self.call(request, false).await?;
        string_field(&data, &["downloadUrl", "fileUrl", "url"]).ok_or_else(|| {
            ProviderError::Retryable {
                code: "bad_answer".to_owned(),
                message: "the file upload answered without a downloadUrl".to_owned(),
                retry_after: None,
            }
        })
    }
}

/// The balance in `chat/credit`'s `data`: an integer (PROVIDERS.md), tolerated as a
/// number with a fraction (rounded down: what is left to spend) or a numeric string, or an
/// object naming it (`credits`, `credit`, `balance`, `remainedCredits`).
pub fn parse_credits(data: &Value) -> Option<i64> {
    match data {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite())
                .map(|f| f.floor() as i64)
        }),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
        }
        Value::Object(_) => ["credits", "credit", "balance", "remainedCredits"]
            .iter()
            .find_map(|k| {
                data.get(*k)
                    .filter(|v| !v.is_object())
                    .and_then(parse_credits)
            }),
        _ => None,
    }
}

/// `costTime` is milliseconds in `recordInfo` and seconds in callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostUnit {
    Millis,
    Seconds,
}

/// A KIE task record, from `recordInfo` or a callback's `data`.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub task_id: Option<String>,
    pub state: String,
    pub status: RemoteStatus,
}

impl Record {
    pub fn parse(data: &Value, unit: CostUnit) -> Self {
        let task_id = string_field(data, &["taskId", "task_id"]);
        let state = string_field(data, &["state", "status"]).unwrap_or_default();
        let status = match state.as_str() {
            "waiting" | "queuing" => RemoteStatus::Waiting,
            "success" => RemoteStatus::Succeeded {
                result_urls: result_urls(data),
                credits: int_field(data, &["consumeCredits", "creditsConsumed"]),
                cost_time_ms: int_field(data, &["costTime"]).map(|t| match unit {
                    CostUnit::Millis => t,
                    CostUnit::Seconds => t.saturating_mul(1000),
                }),
            },
            // The original checked for "failed" though KIE says "fail": accept both.
            "fail" | "failed" => RemoteStatus::Failed {
                code: string_field(data, &["failCode", "fail_code"])
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| "unknown".to_owned()),
                message: string_field(data, &["failMsg", "fail_msg", "errorMessage"])
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| {
                        "the provider reported a failure without a reason".to_owned()
                    }),
            },
            "generating" => RemoteStatus::Generating,
            other => {
                tracing::warn!(
                    state = other,
                    "unknown KIE task state; treating it as in progress"
                );
                RemoteStatus::Generating
            }
        };
        Self {
            task_id,
            state,
            status,
        }
    }
}

/// `resultJson` is a JSON *string* holding `{"resultUrls": [...]}`; tolerate an object too.
fn result_urls(data: &Value) -> Vec<String> {
    let parsed;
    let result = match data.get("resultJson") {
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
            &parsed
        }
        Some(other) => other,
        None => return Vec::new(),
    };
    result
        .get("resultUrls")
        .or_else(|| result.get("result_urls"))
        .and_then(Value::as_array)
        .map(|urls| {
            urls.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn string_field(data: &Value, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| match data.get(*name)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

fn int_field(data: &Value, names: &[&str]) -> Option<i64> {
    names.iter().find_map(|name| match data.get(*name)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.round() as i64)),
        Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_callback_with_drifted_names() {
        let data = json!({
            "task_id": "abc", "state": "success", "creditsConsumed": 4, "costTime": 8,
            "resultJson": "{\"resultUrls\":[\"https://x/a.jpg\"]}"
        });
        let record = Record::parse(&data, CostUnit::Seconds);
        assert_eq!(record.task_id.as_deref(), Some("abc"));
        assert_eq!(
            record.status,
            RemoteStatus::Succeeded {
                result_urls: vec!["https://x/a.jpg".to_owned()],
                credits: Some(4),
                cost_time_ms: Some(8000),
            }
        );
    }

    #[test]
    fn failure_keeps_code_and_message_under_both_spellings() {
        for state in ["fail", "failed"] {
            let data = json!({"taskId": "t", "state": state, "failCode": "500", "failMsg": "Internal server error"});
            assert_eq!(
                Record::parse(&data, CostUnit::Millis).status,
                RemoteStatus::Failed {
                    code: "500".to_owned(),
                    message: "Internal server error".to_owned()
                }
            );
        }
    }

    #[test]
    fn unknown_states_are_in_progress() {
        let data = json!({"taskId": "t", "state": "thinking"});
        assert_eq!(
            Record::parse(&data, CostUnit::Millis).status,
            RemoteStatus::Generating
        );
    }

    fn client(base: &str, timeout: Duration) -> KieClient {
        let base = Url::parse(base).unwrap();
        KieClient::new(base.clone(), base, Secret::new("t"), timeout).unwrap()
    }

    fn request() -> SubmitRequest {
        SubmitRequest {
            task_id: crate::domain::TaskId::new(),
            model: "google/nano-banana-edit".to_owned(),
            prompt: "p".to_owned(),
            image_urls: vec!["https://example.com/a.png".to_owned()],
            aspect_ratio: "1:1".to_owned(),
            output_format: "png".to_owned(),
            callback_url: None,
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable_not_ambiguous() {
        // A port nothing listens on: bound, then closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let kie = client(&format!("http://{addr}"), Duration::from_secs(5));
        for outcome in [
            kie.submit(&request()).await.map(|_| ()),
            kie.query("abc").await.map(|_| ()),
        ] {
            let Err(ProviderError::Unreachable(reason)) = outcome else {
                panic!("{outcome:?}");
            };
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
        }
    }

    #[tokio::test]
    async fn a_create_sent_and_never_answered_stays_ambiguous() {
        // Accepts the connection and reads, but never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let kie = client(&format!("http://{addr}"), Duration::from_millis(300));
        let outcome = kie.submit(&request()).await;
        assert!(
            matches!(outcome, Err(ProviderError::Ambiguous(_))),
            "{outcome:?}"
        );
        silent.abort();
    }

    #[test]
    fn not_found_needs_kie_envelope_under_either_status() {
        let answer = |status: u16, envelope: Value| {
            let status = reqwest::StatusCode::from_u16(status).unwrap();
            let code = if status.is_success() {
                envelope_code(&envelope).unwrap_or(200)
            } else {
                i64::from(status.as_u16())
            };
            Answer {
                status,
                code,
                envelope,
                retry_after: None,
            }
        };
        let kie_404 = json!({"code": 404, "msg": "Task not found", "data": null});
        assert_eq!(
            answer(404, kie_404.clone()).says_not_found().as_deref(),
            Some("Task not found")
        );
        assert_eq!(
            answer(200, kie_404).says_not_found().as_deref(),
            Some("Task not found")
        );
        // A 404 page that is not KIE's envelope says nothing about the task.
        assert_eq!(answer(404, Value::Null).says_not_found(), None);
        assert_eq!(
            answer(200, json!({"code": 200, "data": {}})).says_not_found(),
            None
        );
    }

    #[test]
    fn credit_balances_in_every_shape_kie_may_send() {
        assert_eq!(parse_credits(&json!(2510330)), Some(2_510_330));
        assert_eq!(parse_credits(&json!(0)), Some(0));
        assert_eq!(parse_credits(&json!(-4)), Some(-4));
        assert_eq!(parse_credits(&json!(99.9)), Some(99), "rounded down");
        assert_eq!(parse_credits(&json!(" 120 ")), Some(120));
        assert_eq!(parse_credits(&json!("120.5")), Some(120));
        assert_eq!(parse_credits(&json!({"credits": 7})), Some(7));
        assert_eq!(parse_credits(&json!({"remainedCredits": "8"})), Some(8));
        for nothing in [
            json!(null),
            json!(true),
            json!("lots"),
            json!([]),
            json!({}),
            json!({"credits": {"credits": 1}}),
            json!("NaN"),
        ] {
            assert_eq!(parse_credits(&nothing), None, "{nothing}");
        }
    }

    #[tokio::test]
    async fn the_balance_is_read_from_the_simulator_and_errors_are_classified() {
        use crate::providers::sim::{KieSim, KieSimConfig};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = KieSim::new(
            KieSimConfig {
                token: Some("t".to_owned()),
                credits: 123,
                ..KieSimConfig::default()
            },
            format!("http://{addr}"),
        );
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(sim.clone().serve(listener, stop.clone()));
        let kie = client(&format!("http://{addr}"), Duration::from_secs(5));
        assert_eq!(kie.credits().await, Some(Ok(123)));
        sim.set_credits(5);
        assert_eq!(kie.credits().await, Some(Ok(5)));
        let base = Url::parse(&format!("http://{addr}")).unwrap();
        let stranger = KieClient::new(
            base.clone(),
            base,
            Secret::new("wrong"),
            Duration::from_secs(5),
        )
        .unwrap();
        let refused = stranger.credits().await;
        assert!(
            matches!(&refused, Some(Err(ProviderError::Permanent { code, .. })) if code == "401"),
            "{refused:?}"
        );
        stop.cancel();
    }

    #[test]
    fn error_codes_are_classified() {
        for code in [408, 429, 455, 500] {
            assert!(
                matches!(
                    classify(code, String::new(), None),
                    ProviderError::Retryable { .. }
                ),
                "{code}"
            );
        }
        for code in [401, 402, 404, 422, 433, 505] {
            assert!(
                matches!(
                    classify(code, String::new(), None),
                    ProviderError::Permanent { .. }
                ),
                "{code}"
            );
        }
    }
}
