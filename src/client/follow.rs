//! Following tasks until they are final: the server's event stream (`GET /api/events`,
//! filtered to the tasks), and polling `GET /api/tasks/{id}` when the stream cannot be
//! opened or breaks.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::time::Instant;

use super::api::{Api, ClientError};
use crate::domain::TaskState;

/// A stream silent for this long is taken as broken (the server comments every 15 s).
const STREAM_IDLE: Duration = Duration::from_secs(40);
/// How often unfinished tasks are polled.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Polls in a row that may fail (a server restarting) before following gives up.
const POLL_FAILURES: u32 = 10;
/// An event id no server issues: the stream answers it with `event: resync` and the
/// current state of every task the filter names, read after subscribing, so nothing that
/// happened before the stream opened is missed.
const FROM_NOW_WITH_SNAPSHOT: &str = "snapshot";

/// What the client knows of one task.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub task_id: String,
    pub state: TaskState,
    pub provider: Option<String>,
    pub result_urls: Vec<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
}

impl Snapshot {
    /// A task just submitted: queued, as far as the client knows.
    pub fn submitted(task_id: &str, provider: Option<&str>) -> Self {
        Self {
            task_id: task_id.to_owned(),
            state: TaskState::Queued,
            provider: provider.map(str::to_owned),
            result_urls: Vec::new(),
            error_code: None,
            error: None,
        }
    }

    /// From a task view (`GET /api/tasks/{id}`): `error` is `{code, message}`.
    pub fn from_view(view: &Value) -> Option<Self> {
        Some(Self {
            task_id: view["taskId"].as_str()?.to_owned(),
            state: view["state"].as_str()?.parse().ok()?,
            provider: view["provider"].as_str().map(str::to_owned),
            result_urls: strings(&view["resultUrls"]),
            error_code: view["error"]["code"].as_str().map(str::to_owned),
            error: view["error"]["message"].as_str().map(str::to_owned),
        })
    }

    /// From a stream event: `error` is the sentence, `errorCode` the code.
    fn from_event(event: &Value) -> Option<Self> {
        Some(Self {
            task_id: event["taskId"].as_str()?.to_owned(),
            state: event["state"].as_str()?.parse().ok()?,
            provider: None,
            result_urls: strings(&event["resultUrls"]),
            error_code: event["errorCode"].as_str().map(str::to_owned),
            error: event["error"].as_str().map(str::to_owned),
        })
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// How to follow.
pub struct Follow<'a> {
    pub api: &'a Api,
    /// Poll only, never open the stream (for proxies that buffer streams).
    pub poll_only: bool,
    /// Stop waiting then, leaving unfinished tasks as they are.
    pub deadline: Option<Instant>,
}

impl Follow<'_> {
    /// Follows the tasks of `initial` (what is known of them so far) until each is final
    /// or the deadline passes; `on_update` sees every change. Returns the last known state
    /// of each task, in the order given.
    pub async fn run(
        &self,
        initial: Vec<Snapshot>,
        mut on_update: impl FnMut(&Snapshot),
    ) -> Result<Vec<Snapshot>, ClientError> {
        let ids: Vec<String> = initial.iter().map(|s| s.task_id.clone()).collect();
        let mut known: BTreeMap<String, Snapshot> = initial
            .into_iter()
            .map(|s| (s.task_id.clone(), s))
            .collect();
        if !self.poll_only {
            // A stream that fails (refused, cut, silent) leaves the rest to polling.
            let _ = self.stream(&mut known, &mut on_update).await;
        }
        self.poll(&mut known, &mut on_update).await?;
        Ok(ids.iter().filter_map(|id| known.remove(id)).collect())
    }

    fn done(known: &BTreeMap<String, Snapshot>) -> bool {
        known.values().all(|s| s.state.is_terminal())
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn apply(
        known: &mut BTreeMap<String, Snapshot>,
        update: Snapshot,
        on_update: &mut impl FnMut(&Snapshot),
    ) {
        let Some(entry) = known.get_mut(&update.task_id) else {
            return;
        };
        // A final state never changes; a late event about an earlier state is stale.
        if entry.state.is_terminal() {
            return;
        }
        let provider = update.provider.clone().or_else(|| entry.provider.clone());
        *entry = Snapshot { provider, ..update };
        on_update(entry);
    }

    /// Reads the event stream until every task is final. `Err` means the stream could not
    /// be used (the caller polls); `Ok` that it ended because the work is done or the
    /// deadline passed.
    async fn stream(
        &self,
        known: &mut BTreeMap<String, Snapshot>,
        on_update: &mut impl FnMut(&Snapshot),
    ) -> Result<(), ()> {
        let ids: Vec<&str> = known.keys().map(String::as_str).collect();
        let request = self
            .api
            .request(Method::GET, "api/events")
            .query(&[("taskIds", ids.join(","))])
            .header("last-event-id", FROM_NOW_WITH_SNAPSHOT)
            .header("accept", "text/event-stream");
        let response = self.api.send(request).await.map_err(|_| ())?;
        let mut body = response.bytes_stream();
        let mut parser = SseParser::default();
        while !Self::done(known) {
            let wait = match self.deadline {
                Some(deadline) => {
                    STREAM_IDLE.min(deadline.saturating_duration_since(Instant::now()))
                }
                None => STREAM_IDLE,
            };
            match tokio::time::timeout(wait, body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    for data in parser.feed(&chunk) {
                        if let Some(update) = serde_json::from_str::<Value>(&data)
                            .ok()
                            .as_ref()
                            .and_then(Snapshot::from_event)
                        {
                            Self::apply(known, update, on_update);
                        }
                    }
                }
                Ok(Some(Err(_)) | None) => return Err(()),
                Err(_) if self.expired() => return Ok(()),
                Err(_) => return Err(()),
            }
        }
        Ok(())
    }

    /// Polls every unfinished task until all are final or the deadline passes.
    async fn poll(
        &self,
        known: &mut BTreeMap<String, Snapshot>,
        on_update: &mut impl FnMut(&Snapshot),
    ) -> Result<(), ClientError> {
        let mut failures = 0;
        while !Self::done(known) && !self.expired() {
            let pending: Vec<String> = known
                .values()
                .filter(|s| !s.state.is_terminal())
                .map(|s| s.task_id.clone())
                .collect();
            for id in pending {
                match self.api.get(&format!("api/tasks/{id}")).await {
                    Ok(view) => {
                        failures = 0;
                        if let Some(update) = Snapshot::from_view(&view) {
                            Self::apply(known, update, on_update);
                        }
                    }
                    Err(e @ ClientError::Unreachable { .. }) => {
                        failures += 1;
                        if failures >= POLL_FAILURES {
                            return Err(e);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            if !Self::done(known) {
                tokio::time::sleep(POLL_EVERY).await;
            }
        }
        Ok(())
    }
}

/// The `data` of each message of a Server-Sent Events stream; comments, ids and event
/// names are not needed (a `resync` marker carries no task).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        self.buffer.extend_from_slice(chunk);
        let mut messages = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    messages.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                self.data
                    .push(value.strip_prefix(' ').unwrap_or(value).to_owned());
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_joins_data_lines_across_chunks_and_skips_comments() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b": keep-alive\n\nid: 1-2\nda").is_empty());
        assert!(parser.feed(b"ta: {\"a\":1}\r\n").is_empty());
        assert_eq!(
            parser.feed(b"\r\nevent: resync\ndata: x\ndata:y\n\n"),
            vec!["{\"a\":1}".to_owned(), "x\ny".to_owned()]
        );
    }

    #[test]
    fn views_and_events_read_the_same() {
        let view = serde_json::json!({"taskId": "tsk_1", "state": "failed", "provider": "kie",
            "resultUrls": [], "error": {"code": "provider_failed", "message": "no"}});
        let event = serde_json::json!({"taskId": "tsk_1", "state": "failed",
            "resultUrls": [], "errorCode": "provider_failed", "error": "no"});
        let (a, b) = (
            Snapshot::from_view(&view).unwrap(),
            Snapshot::from_event(&event).unwrap(),
        );
        assert_eq!(a.state, TaskState::Failed);
        assert_eq!((a.error_code, a.error), (b.error_code, b.error));
    }
}
