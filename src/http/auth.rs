//! API keys and owner isolation.
//!
//! Authentication is off in the embedded default and on as soon as a key exists: in
//! `DARKROOM_API_KEYS` or made with `darkroom keys create` (decided at start). Then every
//! route needs `Authorization: Bearer <key>` except the ones a browser or the provider
//! opens without it ([`is_public_path`]): the page and its assets, `/api/info`,
//! `/healthz`, `/readyz`, provider callbacks (their own per-task token and HMAC),
//! `/files/…` (signed URLs, see [`crate::storage::BlobStore::url`]) and `/metrics` when
//! `DARKROOM_METRICS_TOKEN` guards it instead. The check is
//! default-deny: a new route is protected unless it is added to that list.
//!
//! A key's name is the owner recorded on everything it creates. Handlers take a
//! [`Caller`] and show a caller only what [`Caller::may_see`] allows; anything else is
//! answered exactly like something that does not exist (404).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use quick_cache::sync::Cache;
use tokio::sync::{Mutex, MutexGuard};

use super::error::ApiError;
use crate::AppState;
use crate::config::Config;
use crate::domain::ErrorCode;
use crate::domain::api_key;
use crate::storage::{AccessRepo, RepoError, Task};

/// How long a key looked up in the database is trusted before it is looked up again
/// (so a revoked key stops working within this time without a query per request).
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
const KEY_CACHE_CAPACITY: usize = 10_000;
/// Stripes of the lock that makes "count unfinished tasks, then queue" atomic per key.
const QUEUE_LOCK_STRIPES: usize = 64;

/// Who is calling: the API key's name, or `None` when authentication is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller(Option<Arc<str>>);

impl Caller {
    /// The owner to record on what this caller creates, and to filter listings by: `None`
    /// (authentication off) means "no filter".
    pub fn owner(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// Whether this caller may see something owned by `owner`. With authentication off
    /// everything is visible; with it on, only the caller's own things.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match &self.0 {
            None => true,
            Some(me) => owner == Some(&**me),
        }
    }

    /// `task` if this caller may see it; another owner's task is `None`, the same as a
    /// missing one, so handlers answer both with the same 404.
    pub fn visible(&self, task: Option<Task>) -> Option<Task> {
        task.filter(|t| self.may_see(t.owner.as_deref()))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// The caller the authentication middleware identified. On a route it lets through
    /// without a key (or outside it) there is none: with authentication on that fails
    /// closed, so a handler that asks for a `Caller` can never see everything by accident.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        if state.auth.required() {
            Err(missing_key())
        } else {
            Ok(Self(None))
        }
    }
}

/// Routes opened without a key: by browsers (`<img>`, the page), load balancers and the
/// provider. Everything else needs one when authentication is on.
pub fn is_public_path(path: &str) -> bool {
    matches!(
        path,
        "/" | "/healthz"
            | "/readyz"
            | "/api/info"
            | "/api/callback"
            | "/favicon.ico"
            | "/api/openapi.json"
            | "/api/docs"
    ) || path.starts_with("/api/callback/")
        || path.starts_with("/assets/")
        || path.starts_with("/files/")
        || path.starts_with("/api/docs/")
}

/// Streams a browser opens without being able to set headers.
fn is_stream_path(path: &str) -> bool {
    matches!(path, "/api/events" | "/api/ws")
}

fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "access_token")
        .map(|(_, value)| value.into_owned())
        .filter(|key| !key.is_empty() && key.len() <= 512)
}

/// Key lookup, per-key limits and the per-key queue cap.
pub struct Auth {
    required: bool,
    /// Digest of each `DARKROOM_API_KEYS` key → its name.
    configured: HashMap<[u8; 32], Arc<str>>,
    access: Arc<dyn AccessRepo>,
    /// Database lookups by digest, positive and negative, with the time they were made.
    looked_up: Cache<[u8; 32], (Option<Arc<str>>, Instant)>,
    per_key: DefaultKeyedRateLimiter<Arc<str>>,
    callbacks: DefaultDirectRateLimiter,
    max_pending_tasks: u64,
    queue_locks: Vec<Mutex<()>>,
    /// Names of the keys that see every key's statistics (`DARKROOM_ADMIN_KEYS`).
    admins: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("required", &self.required)
            .field("configured_keys", &self.configured.len())
            .finish_non_exhaustive()
    }
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_sec).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(per_sec)).unwrap_or(rate);
    Quota::per_second(rate).allow_burst(burst)
}

/// The answer to a request without a usable key.
fn missing_key() -> ApiError {
    ApiError::new(
        ErrorCode::ApiKeyRequired,
        "this server requires an API key: send Authorization: Bearer <key>",
    )
}

fn wrong_key() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidApiKey,
        "the API key is not valid (wrong, or revoked)",
    )
}

fn rate_limited(retry_after: Duration, message: &str) -> Response {
    let secs = retry_after.as_secs().max(1);
    let mut response = ApiError::new(ErrorCode::RateLimited, message).into_response();
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

impl Auth {
    /// Builds the key table from configuration and decides whether keys are required: yes
    /// when any key is configured or stored.
    pub async fn new(config: &Config, access: Arc<dyn AccessRepo>) -> anyhow::Result<Self> {
        let configured: HashMap<[u8; 32], Arc<str>> = config
            .configured_api_keys()?
            .into_iter()
            .map(|(name, key)| (api_key::digest(key.expose()), Arc::from(name)))
            .collect();
        let required = !configured.is_empty() || access.has_api_keys().await?;
        let auth = &config.auth;
        Ok(Self {
            required,
            configured,
            access,
            looked_up: Cache::new(KEY_CACHE_CAPACITY),
            per_key: RateLimiter::keyed(quota(auth.rate_per_sec, auth.rate_burst)),
            callbacks: RateLimiter::direct(quota(
                config.limits.callback_rate_per_sec,
                config.limits.callback_rate_burst,
            )),
            max_pending_tasks: auth.max_pending_tasks,
            queue_locks: (0..QUEUE_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            admins: auth.admin_keys.iter().cloned().collect(),
        })
    }

    /// Whether client routes need a key.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Whether `caller` is an administrator key (`DARKROOM_ADMIN_KEYS`). With keys off
    /// nobody is: everything is visible to everyone anyway.
    pub fn is_admin(&self, caller: &Caller) -> bool {
        caller
            .owner()
            .is_some_and(|name| self.admins.contains(name))
    }

    /// The name of the key presented, if it is a live key.
    async fn identify(&self, key: &str) -> Result<Option<Arc<str>>, RepoError> {
        let digest = api_key::digest(key);
        if let Some(name) = self.configured.get(&digest) {
            return Ok(Some(name.clone()));
        }
        if let Some((name, at)) = self.looked_up.get(&digest)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(name);
        }
        let name: Option<Arc<str>> = self
            .access
            .api_key_name(&hex::encode(digest))
            .await?
            .map(Arc::from);
        self.looked_up
            .insert(digest, (name.clone(), Instant::now()));
        Ok(name)
    }

    /// The caller of a request when that is known without waiting, its request counted
    /// against its key's rate: authentication off, or a configured key, or one looked up
    /// within [`KEY_CACHE_TTL`], within its rate. `None` when the request must take the
    /// full way ([`authenticate`]), which answers it: no usable key, a key not known here
    /// or due to be looked up again, a key over its rate. Nothing is counted then.
    pub fn caller_at_once(&self, headers: &axum::http::HeaderMap) -> Option<Caller> {
        if !self.required {
            return Some(Caller(None));
        }
        let key = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()
            .and_then(api_key::from_authorization)?;
        let digest = api_key::digest(key);
        let name = match self.configured.get(&digest) {
            Some(name) => name.clone(),
            None => {
                let (name, at) = self.looked_up.get(&digest)?;
                if at.elapsed() >= KEY_CACHE_TTL {
                    return None;
                }
                name?
            }
        };
        self.per_key.check_key(&name).ok()?;
        Some(Caller(Some(name)))
    }

    /// Reserves room for `count` new tasks of `caller` under the per-key cap. Hold the
    /// guard until the tasks are written, so two requests of one key cannot both pass.
    pub async fn reserve_tasks(
        &self,
        caller: &Caller,
        count: usize,
    ) -> Result<Option<MutexGuard<'_, ()>>, ApiError> {
        let Some(owner) = caller.owner() else {
            return Ok(None);
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        owner.hash(&mut hasher);
        let stripe = (hasher.finish() % QUEUE_LOCK_STRIPES as u64) as usize;
        let guard = self.queue_locks[stripe].lock().await;
        let pending = self.access.count_unfinished_tasks(owner).await?;
        if pending.saturating_add(count as u64) > self.max_pending_tasks {
            return Err(ApiError::new(
                ErrorCode::TooManyPendingTasks,
                format!(
                    "this key has {pending} unfinished tasks; at most {} are allowed, so {count} more cannot be queued now",
                    self.max_pending_tasks
                ),
            ));
        }
        Ok(Some(guard))
    }
}

/// The authentication middleware (on every route; see [`is_public_path`]).
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    if !auth.required() {
        request.extensions_mut().insert(Caller(None));
        return next.run(request).await;
    }
    if is_public_path(request.uri().path()) {
        return next.run(request).await;
    }
    // `/metrics` with a token of its own checks that token (a scraper holds no API key);
    // without one it needs an API key like any other route.
    if request.uri().path() == "/metrics" && state.config.metrics.token.is_some() {
        return next.run(request).await;
    }
    let presented: Option<String> = match request.headers().get(header::AUTHORIZATION) {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(api_key::from_authorization)
            .map(str::to_owned),
        // Browsers cannot set headers on EventSource or WebSocket: those two take the key
        // as `?access_token=` (request logs record paths only, never query strings).
        None if is_stream_path(request.uri().path()) => query_token(request.uri().query()),
        None => None,
    };
    let Some(key) = presented else {
        return with_challenge(missing_key().into_response());
    };
    let name = match auth.identify(&key).await {
        Ok(Some(name)) => name,
        Ok(None) => {
            tracing::warn!(path = %request.uri().path(), "request refused: unknown API key");
            return with_challenge(wrong_key().into_response());
        }
        Err(e) => return ApiError::internal(e).into_response(),
    };
    if let Err(not_until) = auth.per_key.check_key(&name) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        tracing::info!(key = %name, "request refused: per-key rate limit");
        return rate_limited(wait, "too many requests for this API key; slow down");
    }
    request.extensions_mut().insert(Caller(Some(name)));
    next.run(request).await
}

fn with_challenge(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The callback routes' own limit, for all senders together: a flood of forged callbacks
/// cannot take the database down, and a real callback refused here is not lost (the
/// reconciler polls the provider for every task whose answer is overdue).
pub async fn limit_callbacks(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(not_until) = state.auth.callbacks.check() {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        tracing::warn!("callback refused: callback rate limit");
        return rate_limited(wait, "too many callbacks; try again later");
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_paths_are_exactly_the_listed_ones() {
        for path in [
            "/",
            "/healthz",
            "/readyz",
            "/api/info",
            "/api/callback",
            "/api/callback/tsk_1",
            "/assets/app.js",
            "/files/uploads/a.png",
        ] {
            assert!(is_public_path(path), "{path}");
        }
        for path in [
            "/api/upload",
            "/api/generate",
            "/api/task-status",
            "/api/tasks",
            "/api/tasks/tsk_1/cancel",
            "/api/callbacks",
            "/api/infos",
            "/metrics",
            "/healthz/x",
        ] {
            assert!(!is_public_path(path), "{path}");
        }
    }

    #[test]
    fn visibility_by_owner() {
        let off = Caller(None);
        let alice = Caller(Some(Arc::from("alice")));
        assert!(off.may_see(None) && off.may_see(Some("alice")));
        assert!(alice.may_see(Some("alice")));
        assert!(!alice.may_see(Some("bob")));
        assert!(!alice.may_see(None));
    }
}
