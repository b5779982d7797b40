//! `Idempotency-Key` on the routes that create things (`POST /api/generate`,
//! `POST /api/batches`, `POST /api/upload`), with Stripe's semantics (and the IETF
//! httpapi draft's): a retry with the same key and the same request, from the same owner,
//! gets the first answer again (same status, same body, `Idempotent-Replayed: true`) and
//! creates nothing; the same key with another request is a 422
//! (`idempotency_key_reused`); a retry while the first is still running is a 409
//! (`idempotency_key_in_flight`).
//!
//! The key is reserved in the database before the work, atomically, so of two requests at
//! once exactly one does it. Answers with a 2xx or 4xx status are kept (a 4xx says the
//! request itself is wrong, so a retry of the same request gets it again), except 408, 409
//! and 429, which say "not now": those, 5xx answers and requests that end without an
//! answer (the client went away, the body was cut off) release the key, so a retry runs
//! afresh. Tasks and the answer naming them are written in one transaction, so no crash
//! can leave tasks made under a key that does not remember them.
//!
//! The request's fingerprint is a SHA-256 of its method, path and body bytes. A multipart
//! upload is hashed part by part (each part's name, file name and content, not the
//! boundary, which clients draw at random per request), while it streams to its spool
//! files: memory stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Multipart;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::error::ApiError;
use crate::AppState;
use crate::clock::{after, now_ms};
use crate::domain::ErrorCode;
use crate::storage::{
    Batch, IdempotencyClaim, IdempotencyCompletion, NewTask, Repo, Reservation, StoredAnswer,
};

/// The request header carrying the key.
pub const KEY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// Set to `true` on an answer that is a replay of the key's first answer.
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");
const MAX_KEY_LEN: usize = 255;
/// A reservation outlives its request's timeout by this much before it counts as
/// abandoned (its holder died) and may be taken over.
const LEASE_MARGIN: Duration = Duration::from_secs(30);
/// Expired keys are purged at most this often per process, this many at a time.
const SWEEP_EVERY_MS: i64 = 10 * 60 * 1000;
const SWEEP_LIMIT: usize = 1000;
static LAST_SWEEP_MS: AtomicI64 = AtomicI64::new(0);

/// The `Idempotency-Key` request header, as the OpenAPI document shows it.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // describes the header; `key_of` reads it
pub(super) struct IdempotencyKeyHeader {
    /// Makes retries safe: a retry with the same key and the same request (method, path,
    /// body) from the same API key gets the first answer again (same status and body,
    /// with `Idempotent-Replayed: true`) and creates nothing. Kept 24 hours by default
    /// (`DARKROOM_IDEMPOTENCY_TTL_HOURS`). 1–255 printable ASCII characters; a UUID is a
    /// good choice.
    #[param(
        rename = "Idempotency-Key",
        required = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[ -~]+$"
    )]
    idempotency_key: String,
}

/// The `Idempotency-Key` of a request: `None` without one; a 400 unless it is one value of
/// 1–255 printable ASCII characters.
pub(super) fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let printable = bytes.iter().all(|b| (0x20..=0x7e).contains(b));
    if values.next().is_some() || bytes.is_empty() || bytes.len() > MAX_KEY_LEN || !printable {
        return Err(ApiError::new(
            ErrorCode::InvalidIdempotencyKey,
            format!(
                "Idempotency-Key must be one header of 1 to {MAX_KEY_LEN} printable ASCII characters (a UUID is a good choice)"
            ),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// The SHA-256 of a request, fed as it streams. Multipart parts are framed by their name
/// and file name and hashed each on its own, so chunk and boundary choices do not matter.
pub(super) struct Fingerprint {
    whole: Option<Sha256>,
    part: Option<Sha256>,
    /// The body was read to its end (a fingerprint of part of a body is none).
    ended: bool,
}

impl Fingerprint {
    /// A fingerprint of `method_and_path` (`"POST /api/upload"`) and the body to come;
    /// when `on` is false, nothing is computed (the request carries no key).
    pub(super) fn new(on: bool, method_and_path: &str) -> Self {
        let whole = on.then(|| {
            let mut whole = Sha256::new();
            frame(&mut whole, method_and_path.as_bytes());
            whole
        });
        Self {
            whole,
            part: None,
            ended: false,
        }
    }

    /// The fingerprint of a request whose body is `body`, whole.
    pub(super) fn of(method_and_path: &str, body: &[u8]) -> String {
        let mut fingerprint = Self::new(true, method_and_path);
        fingerprint.update(body);
        fingerprint.end();
        fingerprint.finish().unwrap_or_default()
    }

    /// A multipart part begins.
    pub(super) fn part(&mut self, name: &str, filename: Option<&str>) {
        self.close_part();
        if let Some(whole) = &mut self.whole {
            frame(whole, name.as_bytes());
            frame(whole, filename.unwrap_or_default().as_bytes());
            self.part = Some(Sha256::new());
        }
    }

    /// More body bytes (of the open part, if any).
    pub(super) fn update(&mut self, bytes: &[u8]) {
        match (&mut self.part, &mut self.whole) {
            (Some(part), _) => part.update(bytes),
            (None, Some(whole)) => whole.update(bytes),
            (None, None) => {}
        }
    }

    /// The body was read to its end.
    pub(super) fn end(&mut self) {
        self.close_part();
        self.ended = true;
    }

    /// Hex SHA-256; `None` when off or when the body was not read to its end.
    pub(super) fn finish(mut self) -> Option<String> {
        self.close_part();
        let whole = self.whole.take()?;
        self.ended.then(|| hex::encode(whole.finalize()))
    }

    fn close_part(&mut self) {
        if let (Some(part), Some(whole)) = (self.part.take(), &mut self.whole) {
            whole.update(part.finalize());
        }
    }
}

/// Length-prefixed, so no two sequences of fields hash alike.
fn frame(hasher: &mut Sha256, field: &[u8]) {
    hasher.update((field.len() as u64).to_be_bytes());
    hasher.update(field);
}

/// What a request with (or without) a key goes on with.
pub(super) enum Begin {
    /// Do the work; with a key, holding it (hand it to [`finish`] with the answer).
    Proceed(Option<Held>),
    /// Answered already: a replay, a 409 or a 422.
    Answered(Response),
}

/// A reserved key, held while its request runs. Dropped without an answer (the request
/// was interrupted), it is released, so a retry can proceed.
pub(super) struct Held {
    repo: Arc<dyn Repo>,
    /// How long the answer is kept.
    ttl: Duration,
    owner: String,
    key: String,
    token: String,
    /// The request's fingerprint; an upload's is set once its body has been read.
    pub(super) request_hash: Option<String>,
    /// The answer is recorded, or the key released: nothing left to do.
    settled: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (repo, owner, key, token) = (
            self.repo.clone(),
            std::mem::take(&mut self.owner),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Drop cannot wait: the release runs on its own.
            drop(runtime.spawn(async move {
                if let Err(e) = repo.release_idempotency_key(&owner, &key, &token).await {
                    tracing::warn!(error = %e, "releasing the Idempotency-Key of an interrupted request failed; it is free again once its lease ends");
                }
            }));
        }
    }
}

impl Held {
    async fn release(&mut self) {
        self.settled = true;
        if let Err(e) = self
            .repo
            .release_idempotency_key(&self.owner, &self.key, &self.token)
            .await
        {
            tracing::warn!(error = %e, "releasing an Idempotency-Key failed; it is free again once its lease ends");
        }
    }

    fn completion(&self, answer: StoredAnswer) -> IdempotencyCompletion {
        let now = now_ms();
        IdempotencyCompletion {
            owner: self.owner.clone(),
            key: self.key.clone(),
            token: self.token.clone(),
            request_hash: self.request_hash.clone().unwrap_or_default(),
            answer,
            completed_at: now,
            expires_at: after(now, self.ttl),
        }
    }
}

/// Looks the key of a request whose fingerprint is `request_hash` up, reserving it when
/// it is free.
pub(super) async fn begin(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    request_hash: &str,
) -> Result<Begin, ApiError> {
    let Some(key) = key_of(headers)? else {
        return Ok(Begin::Proceed(None));
    };
    let claimed = reserve(state, caller, key, Some(request_hash)).await?;
    Ok(match claimed {
        Claimed::Mine(held) => Begin::Proceed(Some(held)),
        Claimed::Answered { first, answer } => {
            Begin::Answered(replay_or_reused(&first, request_hash, answer))
        }
        Claimed::InFlight { first }
            if first.as_deref().is_some_and(|first| first != request_hash) =>
        {
            Begin::Answered(reused().into_response())
        }
        Claimed::InFlight { .. } => Begin::Answered(in_flight()),
    })
}

/// [`begin`] for an upload, whose fingerprint is known only once its body is read: a key
/// with a stored answer reads (and hashes) the body here, without storing anything, to
/// tell a replay from a reuse.
pub(super) async fn begin_upload(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    multipart: &mut Multipart,
) -> Result<Begin, ApiError> {
    let Some(key) = key_of(headers)? else {
        return Ok(Begin::Proceed(None));
    };
    Ok(match reserve(state, caller, key, None).await? {
        Claimed::Mine(held) => Begin::Proceed(Some(held)),
        Claimed::Answered { first, answer } => {
            let given = hash_multipart(multipart, UPLOAD).await?;
            Begin::Answered(replay_or_reused(&first, &given, answer))
        }
        Claimed::InFlight { .. } => Begin::Answered(in_flight()),
    })
}

/// What an upload's fingerprint starts with.
pub(super) const UPLOAD: &str = "POST /api/upload";

/// Who has a key after a request asked for it.
enum Claimed {
    /// The request: it holds the key now.
    Mine(Held),
    /// A request with fingerprint `first` was answered `answer`.
    Answered { first: String, answer: StoredAnswer },
    /// Another request holds it (`first`: its fingerprint, when known).
    InFlight { first: Option<String> },
}

async fn reserve(
    state: &AppState,
    caller: &Caller,
    key: String,
    request_hash: Option<&str>,
) -> Result<Claimed, ApiError> {
    let owner = caller.owner().unwrap_or_default().to_owned();
    let token = hex::encode(rand::random::<[u8; 16]>());
    let now = now_ms();
    let server = &state.config.server;
    let locked_until = after(now, server.request_timeout_secs + LEASE_MARGIN);
    sweep_now_and_then(state, now);
    let claim = IdempotencyClaim {
        owner: &owner,
        key: &key,
        request_hash,
        token: &token,
        now,
        locked_until,
        expires_at: after(now, server.idempotency_ttl).max(locked_until),
    };
    Ok(match state.repo.reserve_idempotency_key(&claim).await? {
        Reservation::Reserved => Claimed::Mine(Held {
            repo: state.repo.clone(),
            ttl: server.idempotency_ttl,
            request_hash: request_hash.map(str::to_owned),
            owner,
            key,
            token,
            settled: false,
        }),
        Reservation::Completed {
            request_hash: first,
            answer,
        } => Claimed::Answered { first, answer },
        Reservation::InFlight {
            request_hash: first,
        } => Claimed::InFlight { first },
    })
}

/// Purges expired keys now and then (at most every ten minutes per process, off the
/// request path); an expired key met on its next use is taken over anyway.
fn sweep_now_and_then(state: &AppState, now: i64) {
    let last = LAST_SWEEP_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < SWEEP_EVERY_MS
        || LAST_SWEEP_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let repo = state.repo.clone();
    tokio::spawn(async move {
        match repo.purge_expired_idempotency_keys(now, SWEEP_LIMIT).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "expired idempotency keys purged"),
            Err(e) => tracing::warn!(error = %e, "purging expired idempotency keys failed"),
        }
    });
}

/// Reads a multipart body to its end, hashing it as an upload does.
async fn hash_multipart(multipart: &mut Multipart, what: &str) -> Result<String, ApiError> {
    let unreadable = |e: axum::extract::multipart::MultipartError| {
        ApiError::with_status(
            e.status(),
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ErrorCode::BodyTooLarge
            } else {
                ErrorCode::InvalidMultipart
            },
            format!("the multipart body could not be read: {e}"),
        )
    };
    let mut fingerprint = Fingerprint::new(true, what);
    while let Some(mut field) = multipart.next_field().await.map_err(unreadable)? {
        fingerprint.part(field.name().unwrap_or_default(), field.file_name());
        while let Some(chunk) = field.chunk().await.map_err(unreadable)? {
            fingerprint.update(&chunk);
        }
    }
    fingerprint.end();
    Ok(fingerprint.finish().unwrap_or_default())
}

/// The first answer again when the fingerprints agree, else the 422.
fn replay_or_reused(first: &str, given: &str, answer: StoredAnswer) -> Response {
    if first != given {
        return reused().into_response();
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = json(status, answer.body);
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

fn reused() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyReused,
        "this Idempotency-Key was already used with a different request (method, path or body); use a new key for a new request",
    )
}

fn in_flight_error() -> ApiError {
    ApiError::new(
        ErrorCode::IdempotencyKeyInFlight,
        "a request with this Idempotency-Key is still being processed; retry once it has been answered",
    )
}

fn in_flight() -> Response {
    let mut response = in_flight_error().into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Whether an answer of this status is kept for replay: successes, and refusals of the
/// request itself; not "not now" (408, 409, 429) nor our own failures (5xx).
fn kept(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error()
            && !matches!(
                status,
                StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS
            ))
}

/// Queues `tasks` (with `batch`, when given) and answers `answer` with 200. With a key
/// held, the answer is recorded in the tasks' own transaction.
pub(super) async fn queue_and_answer<T: serde::Serialize>(
    state: &AppState,
    held: Option<&mut Held>,
    batch: Option<&Batch>,
    tasks: &[NewTask],
    answer: &T,
) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(answer).map_err(ApiError::internal)?;
    let Some(held) = held else {
        match batch {
            Some(batch) => state.engine.enqueue_batch(batch, tasks).await?,
            None => state.engine.enqueue(tasks).await?,
        };
        return Ok(json(StatusCode::OK, body));
    };
    let done = held.completion(StoredAnswer {
        status: StatusCode::OK.as_u16(),
        body: body.clone(),
    });
    if !state.engine.enqueue_answered(batch, tasks, &done).await? {
        // Our reservation outlived its lease and another request took the key over.
        return Err(in_flight_error());
    }
    held.settled = true;
    Ok(json(StatusCode::OK, body))
}

/// Records `response` as the answer of the key `held` holds (when it is kept), or
/// releases the key; hands the response on.
pub(super) async fn finish(held: Option<Held>, response: Response) -> Response {
    let Some(mut held) = held else {
        return response;
    };
    if held.settled {
        return response;
    }
    if !kept(response.status()) || held.request_hash.is_none() {
        held.release().await;
        return response;
    }
    let (parts, body) = response.into_parts();
    // Answers are built whole in memory: collecting them costs nothing more.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            held.release().await;
            return ApiError::internal(format!("reading an answer to keep it: {e}"))
                .into_response();
        }
    };
    let done = held.completion(StoredAnswer {
        status: parts.status.as_u16(),
        body: bytes.to_vec(),
    });
    match held.repo.complete_idempotency_key(&done).await {
        Ok(recorded) => {
            held.settled = true;
            if !recorded {
                tracing::warn!("an Idempotency-Key was taken over before its answer was recorded");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "recording the answer of an Idempotency-Key failed; the key is released");
            held.release().await;
        }
    }
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(KEY_HEADER, HeaderValue::from_bytes(value).unwrap());
        }
        headers
    }

    #[test]
    fn keys_are_one_header_of_printable_ascii() {
        assert_eq!(key_of(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            key_of(&headers(&[b"order 42/a"])).unwrap().as_deref(),
            Some("order 42/a")
        );
        let longest = "k".repeat(MAX_KEY_LEN);
        assert!(key_of(&headers(&[longest.as_bytes()])).unwrap().is_some());
        let too_long = "k".repeat(MAX_KEY_LEN + 1);
        for bad in [b"".as_slice(), too_long.as_bytes(), b"caf\xc3\xa9", b"a\tb"] {
            let e = key_of(&headers(&[bad])).unwrap_err();
            assert_eq!(e.code, "invalid_idempotency_key", "{bad:?}");
        }
        assert!(key_of(&headers(&[b"a", b"b"])).is_err(), "two keys");
    }

    #[test]
    fn fingerprints_ignore_chunking_and_tell_parts_apart() {
        let mut one = Fingerprint::new(true, UPLOAD);
        one.part("files", Some("a.png"));
        one.update(b"abcdef");
        one.end();
        let mut two = Fingerprint::new(true, UPLOAD);
        two.part("files", Some("a.png"));
        two.update(b"abc");
        two.update(b"def");
        two.end();
        let (one, two) = (one.finish().unwrap(), two.finish().unwrap());
        assert_eq!(one, two);
        let mut renamed = Fingerprint::new(true, UPLOAD);
        renamed.part("files", Some("b.png"));
        renamed.update(b"abcdef");
        renamed.end();
        assert_ne!(renamed.finish().unwrap(), one);
        let mut split = Fingerprint::new(true, UPLOAD);
        split.part("files", Some("a.png"));
        split.update(b"abc");
        split.part("files", Some("a.png"));
        split.update(b"def");
        split.end();
        assert_ne!(split.finish().unwrap(), one);
        let mut cut = Fingerprint::new(true, UPLOAD);
        cut.part("files", Some("a.png"));
        cut.update(b"abc");
        assert_eq!(cut.finish(), None, "a body not read to its end");
        assert_eq!(Fingerprint::new(false, UPLOAD).finish(), None);
        assert_ne!(
            Fingerprint::of("POST /api/generate", b"{}"),
            Fingerprint::of("POST /api/batches", b"{}")
        );
    }

    #[test]
    fn kept_answers() {
        for status in [200, 400, 404, 413, 422] {
            assert!(kept(StatusCode::from_u16(status).unwrap()), "{status}");
        }
        for status in [408, 409, 429, 500, 503] {
            assert!(!kept(StatusCode::from_u16(status).unwrap()), "{status}");
        }
    }
}
