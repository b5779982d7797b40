//! Live progress: Server-Sent Events (`GET /api/events`), a WebSocket (`GET /api/ws`) and
//! a long-poll (`GET /api/tasks/{id}/wait`), all fed by the engine's [`EventBus`].
//!
//! These routes are mounted outside the request timeout (they are meant to stay open) and
//! end when the server shuts down, so graceful shutdown is not held up by open streams.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::path::PathParam;
use super::tasks::{TaskPath, TaskView};
use crate::AppState;
use crate::domain::ErrorCode;
use crate::domain::TaskId;
use crate::events::{EventBus, Replay, TaskEvent};
use crate::storage::TaskFilter;
use crate::telemetry::Transport;

/// How often an idle SSE stream sends a comment (proxies close silent connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often an idle WebSocket is pinged.
const WS_PING: Duration = Duration::from_secs(30);
/// The long-poll's default and longest wait.
const DEFAULT_WAIT_SECS: f64 = 30.0;
const MAX_WAIT_SECS: f64 = 120.0;
/// The most task ids one stream may filter on.
const MAX_FILTER_IDS: usize = 1000;
/// How many tasks of a batch a resynchronising stream re-sends.
const RESYNC_BATCH_LIMIT: usize = 10_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events))
        .routes(routes!(websocket))
        .routes(routes!(wait_task))
}

/// Which events a stream carries.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    /// Every event (subject to the owner check).
    pub all: bool,
    pub task_ids: HashSet<String>,
    pub batch_ids: HashSet<String>,
    /// When set, only this owner's events pass, whatever else is subscribed.
    pub owner: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, event: &TaskEvent) -> bool {
        if let Some(owner) = &self.owner
            && event.owner.as_deref() != Some(owner.as_str())
        {
            return false;
        }
        self.all
            || self.task_ids.contains(event.task_id.as_str())
            || event
                .batch_id
                .as_ref()
                .is_some_and(|b| self.batch_ids.contains(b))
    }
}

fn split_ids(raw: Option<&str>) -> Result<HashSet<String>, ApiError> {
    let ids: HashSet<String> = raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if ids.len() > MAX_FILTER_IDS {
        return Err(ApiError::new(
            ErrorCode::TooManyIds,
            format!("at most {MAX_FILTER_IDS} ids per stream"),
        ));
    }
    Ok(ids)
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Comma-separated task ids (at most 1000).
    task_ids: Option<String>,
    /// Comma-separated batch ids.
    batch_id: Option<String>,
    /// Resume after this event id, for clients that cannot set the `Last-Event-ID` header
    /// on a first connection (the header wins).
    last_event_id: Option<String>,
}

/// What a stream sends next.
enum Out {
    Task(u64, Arc<TaskEvent>),
    /// Events were lost (an id from another process, or older than the kept history);
    /// the current state of the filtered tasks follows.
    Resync,
    Snapshot(u64, TaskEvent),
}

/// The shared state of an SSE or WebSocket subscription: catches up from the history on
/// lag, never sends an event twice, resynchronises from the database on a gap.
struct Feed {
    app: AppState,
    bus: Arc<EventBus>,
    receiver: Receiver<Arc<TaskEvent>>,
    /// The last sequence number delivered or skipped; everything at or below is done.
    last_seq: u64,
    pending: VecDeque<Out>,
}

impl Feed {
    /// Subscribes now, or from `resume_from` (a wire id) when given.
    fn open(app: &AppState, resume_from: Option<&str>) -> Self {
        let bus = app.engine.events().clone();
        let mut pending = VecDeque::new();
        let (receiver, last_seq) = match resume_from {
            None => {
                let (receiver, at) = bus.subscribe_at();
                (receiver, at)
            }
            Some(raw) => match bus.parse_wire_id(raw) {
                Some(after) => match bus.resume(after) {
                    (receiver, Replay::Events(events)) => {
                        pending.extend(events.into_iter().map(|e| Out::Task(e.seq, e)));
                        (receiver, after)
                    }
                    (receiver, Replay::Gap) => {
                        drop(receiver);
                        let (receiver, at) = bus.subscribe_at();
                        pending.push_back(Out::Resync);
                        (receiver, at)
                    }
                },
                None => {
                    let (receiver, at) = bus.subscribe_at();
                    pending.push_back(Out::Resync);
                    (receiver, at)
                }
            },
        };
        Self {
            app: app.clone(),
            bus,
            receiver,
            last_seq,
            pending,
        }
    }

    /// The next thing to send that passes `filter`; `None` when the bus is gone.
    async fn next(&mut self, filter: &EventFilter) -> Option<Out> {
        loop {
            if matches!(self.pending.front(), Some(Out::Resync)) {
                // Read the snapshots before taking the marker off the queue: if this future
                // is dropped while reading, the resync is not lost.
                let snapshots = self.snapshots(filter).await;
                self.pending.pop_front();
                for snapshot in snapshots.into_iter().rev() {
                    self.pending.push_front(snapshot);
                }
                return Some(Out::Resync);
            }
            if let Some(out) = self.pending.pop_front() {
                match out {
                    Out::Task(seq, event) => {
                        self.last_seq = self.last_seq.max(seq);
                        if filter.matches(&event) {
                            return Some(Out::Task(seq, event));
                        }
                    }
                    other => return Some(other),
                }
                continue;
            }
            match self.receiver.recv().await {
                Ok(event) => {
                    if event.seq <= self.last_seq {
                        continue;
                    }
                    self.last_seq = event.seq;
                    if filter.matches(&event) {
                        return Some(Out::Task(event.seq, event));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "event stream lagged; catching up from history");
                    match self.bus.since(self.last_seq) {
                        Replay::Events(events) => self
                            .pending
                            .extend(events.into_iter().map(|e| Out::Task(e.seq, e))),
                        Replay::Gap => self.pending.push_back(Out::Resync),
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    /// After a gap: the current state of every task the filter names, read from the
    /// database after subscribing, so nothing that changes later is lost.
    async fn snapshots(&self, filter: &EventFilter) -> Vec<Out> {
        let mut tasks = Vec::new();
        for raw in &filter.task_ids {
            let Some(id) = TaskId::parse(raw) else {
                continue;
            };
            match self.app.repo.get(&id).await {
                Ok(Some(task)) => tasks.push(task),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "resync: reading a task failed"),
            }
        }
        for batch in &filter.batch_ids {
            let listing = TaskFilter {
                batch_id: Some(batch.clone()),
                limit: RESYNC_BATCH_LIMIT,
                ..TaskFilter::default()
            };
            match self.app.repo.list(&listing).await {
                Ok(found) => tasks.extend(found),
                Err(e) => tracing::warn!(error = %e, "resync: listing a batch failed"),
            }
        }
        tasks
            .iter()
            .map(TaskEvent::snapshot)
            .filter(|event| filter.matches(event))
            .map(|event| Out::Snapshot(self.last_seq, event))
            .collect()
    }
}

const RESYNC_MESSAGE: &str = "some events could not be replayed; the current state of the streamed tasks follows (an unfiltered stream should re-read /api/tasks)";

fn sse_event(bus: &EventBus, out: &Out) -> Event {
    let (seq, event) = match out {
        Out::Task(seq, event) => (*seq, event.as_ref()),
        Out::Snapshot(seq, event) => (*seq, event),
        Out::Resync => {
            return Event::default()
                .event("resync")
                .data(json!({"message": RESYNC_MESSAGE}).to_string());
        }
    };
    Event::default()
        .id(bus.wire_id(seq))
        .data(serde_json::to_string(event).unwrap_or_else(|_| "{}".to_owned()))
}

/// Server-Sent Events: one `TaskEvent` per state change, `id: <epoch>-<seq>` on each,
/// keep-alive comments every 15 s. Reconnect with `Last-Event-ID` to resume; an
/// `event: resync` means history could not be replayed and the current state of the
/// filtered tasks follows. No filter: every event the caller may see.
#[utoipa::path(get, path = "/api/events", tag = "live", params(EventsQuery), responses(
    (status = 200, description = "An event stream; each `data:` is a TaskEvent", content_type = "text/event-stream", body = TaskEvent),
    (status = 400, description = "Invalid filter", body = ErrorBody),
))]
async fn events(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let task_ids = split_ids(query.task_ids.as_deref())?;
    let batch_ids = split_ids(query.batch_id.as_deref())?;
    let filter = EventFilter {
        all: task_ids.is_empty() && batch_ids.is_empty(),
        task_ids,
        batch_ids,
        owner: caller.owner().map(str::to_owned),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id);
    let feed = Feed::open(&app, resume.as_deref());
    tracing::debug!(
        all = filter.all,
        tasks = filter.task_ids.len(),
        batches = filter.batch_ids.len(),
        resumed = resume.is_some(),
        "event stream opened"
    );
    let closing = app.streams_closing.clone();
    // Counted while the stream lives: the guard drops with it.
    let client = app.metrics.live_client(Transport::Sse);
    let stream = futures::stream::unfold(
        (feed, filter, client),
        |(mut feed, filter, client)| async move {
            let out = feed.next(&filter).await?;
            let event = sse_event(&feed.bus, &out);
            Some((Ok(event), (feed, filter, client)))
        },
    )
    .take_until(closing.cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitQuery {
    /// Seconds to wait, 0–120 (default 30).
    #[param(minimum = 0, maximum = 120)]
    timeout: Option<f64>,
}

/// The task when the wait ended.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct WaitView {
    #[serde(flatten)]
    task: TaskView,
    /// The timeout passed before the task was final.
    timed_out: bool,
}

/// Long-poll: answers when the task is final or the timeout passes, for clients that
/// cannot stream.
#[utoipa::path(get, path = "/api/tasks/{id}/wait", tag = "live", params(TaskPath, WaitQuery), responses(
    (status = 200, description = "The task, with `timedOut`", body = WaitView),
    (status = 400, description = "Invalid timeout", body = ErrorBody),
    (status = 404, description = "No such task", body = ErrorBody),
))]

async fn wait_task(
    State(app): State<AppState>,
    caller: Caller,
    PathParam(TaskPath { id }): PathParam<TaskPath>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<WaitView>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let secs = query.timeout.unwrap_or(DEFAULT_WAIT_SECS);
    if !(0.0..=MAX_WAIT_SECS).contains(&secs) {
        return Err(ApiError::new(
            ErrorCode::InvalidTimeout,
            format!("timeout must be 0–{MAX_WAIT_SECS} seconds"),
        ));
    }
    let not_found = || ApiError::new(ErrorCode::TaskNotFound, "no such task");
    let id = TaskId::parse(&id).ok_or_else(not_found)?;
    let owner = caller.owner().map(str::to_owned);
    // Subscribe before reading, so a change between the read and the wait is not missed.
    let (mut receiver, _) = app.engine.events().subscribe_at();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    let closing = app.streams_closing.clone();
    loop {
        let task = app.repo.get(&id).await?.ok_or_else(not_found)?;
        if owner.is_some() && task.owner != owner {
            return Err(not_found());
        }
        if task.state.is_terminal() {
            return Ok(Json(wait_view(&app, &task, false)));
        }
        // Wait for an event about this task that ends it (or a lag, then re-read).
        let ended = loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break false,
                () = closing.cancelled() => break false,
                received = receiver.recv() => match received {
                    Ok(event) if event.task_id == id && event.is_terminal() => break true,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break true,
                    Err(RecvError::Closed) => break false,
                },
            }
        };
        if !ended {
            let task = app.repo.get(&id).await?.ok_or_else(not_found)?;
            let done = task.state.is_terminal();
            return Ok(Json(wait_view(&app, &task, !done)));
        }
    }
}

fn wait_view(app: &AppState, task: &crate::storage::Task, timed_out: bool) -> WaitView {
    WaitView {
        task: super::tasks::live_view(app, task, None),
        timed_out,
    }
}

/// WebSocket: the same events as `/api/events`. Send `WsClientMessage`s
/// (`{"type": "subscribe", "taskIds": […], "batchIds": […], "all": false}`, or
/// `unsubscribe`); receive `{"type": "subscribed", …}`, `{"type": "event", "id", "event":
/// TaskEvent}`, `{"type": "resync"}` and `{"type": "error", "code", "message"}`.
#[utoipa::path(get, path = "/api/ws", tag = "live", responses(
    (status = 101, description = "Switching to the WebSocket protocol"),
    (status = 400, description = "Not a WebSocket upgrade request (`websocket_upgrade_required`)", body = ErrorBody),
))]
async fn websocket(
    State(app): State<AppState>,
    caller: Caller,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // axum's own rejection is plain text; the API's errors carry a code.
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(ErrorCode::WebsocketUpgradeRequired, rejection.body_text())
    })?;
    let owner = caller.owner().map(str::to_owned);
    Ok(upgrade
        .on_upgrade(move |socket| serve_socket(app, socket, owner))
        .into_response())
}

/// A client message on the WebSocket.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = WsClientMessage)]
pub(super) struct ClientMessage {
    /// `subscribe` or `unsubscribe`.
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    task_ids: Vec<String>,
    #[serde(default)]
    batch_ids: Vec<String>,
    batch_id: Option<String>,
    #[serde(default)]
    all: bool,
}

fn subscription(filter: &EventFilter) -> Value {
    let mut tasks: Vec<&String> = filter.task_ids.iter().collect();
    tasks.sort();
    let mut batches: Vec<&String> = filter.batch_ids.iter().collect();
    batches.sort();
    json!({"type": "subscribed", "all": filter.all, "taskIds": tasks, "batchIds": batches})
}

/// Applies a client message to the filter; the answer to send back.
fn handle_message(filter: &mut EventFilter, text: &str) -> Value {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            return json!({"type": "error", "code": ErrorCode::InvalidMessage.as_str(),
                "message": format!("expected {{\"type\":\"subscribe\"|\"unsubscribe\", \"taskIds\":[…], \"batchIds\":[…], \"all\":bool}}: {e}")});
        }
    };
    let batches = message.batch_ids.into_iter().chain(message.batch_id);
    match message.kind.as_str() {
        "subscribe" => {
            filter.task_ids.extend(message.task_ids);
            filter.batch_ids.extend(batches);
            filter.all |= message.all;
            if filter.task_ids.len() + filter.batch_ids.len() > MAX_FILTER_IDS {
                filter.task_ids.clear();
                filter.batch_ids.clear();
                return json!({"type": "error", "code": ErrorCode::TooManyIds.as_str(),
                    "message": format!("at most {MAX_FILTER_IDS} ids per socket; the subscription was cleared")});
            }
        }
        "unsubscribe" => {
            for id in &message.task_ids {
                filter.task_ids.remove(id);
            }
            for id in batches {
                filter.batch_ids.remove(&id);
            }
            if message.all {
                filter.all = false;
            }
        }
        other => {
            return json!({"type": "error", "code": ErrorCode::UnknownMessageType.as_str(),
                "message": format!("message type {other:?} is not one of subscribe, unsubscribe")});
        }
    }
    subscription(filter)
}

fn ws_event(bus: &EventBus, out: &Out) -> Value {
    match out {
        Out::Task(seq, event) => {
            json!({"type": "event", "id": bus.wire_id(*seq), "event": event.as_ref()})
        }
        Out::Snapshot(seq, event) => {
            json!({"type": "event", "id": bus.wire_id(*seq), "event": event})
        }
        Out::Resync => json!({"type": "resync", "message": RESYNC_MESSAGE}),
    }
}

async fn serve_socket(app: AppState, mut socket: WebSocket, owner: Option<String>) {
    // Shared with the pending `feed.next` future; a message replaces it (copy on write).
    let mut filter = Arc::new(EventFilter {
        owner,
        ..EventFilter::default()
    });
    let mut feed = Feed::open(&app, None);
    let closing = app.streams_closing.clone();
    let _client = app.metrics.live_client(Transport::WebSocket);
    let mut ping = tokio::time::interval(WS_PING);
    ping.tick().await;
    loop {
        let outgoing = tokio::select! {
            () = closing.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            _ = ping.tick() => Message::Ping(bytes::Bytes::new()),
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let answer = handle_message(Arc::make_mut(&mut filter), text.as_str());
                    Message::Text(answer.to_string().into())
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                // Pings are answered by the library; binary frames carry nothing here.
                Some(Ok(_)) => continue,
            },
            out = next_for(&mut feed, filter.clone()) => match out {
                Some(out) => Message::Text(ws_event(&feed.bus, &out).to_string().into()),
                None => return,
            },
        };
        if socket.send(outgoing).await.is_err() {
            return;
        }
    }
}

async fn next_for(feed: &mut Feed, filter: Arc<EventFilter>) -> Option<Out> {
    feed.next(&filter).await
}
