//! The short way for status polls. `GET /api/task-status?taskId=…` is what every polling
//! client sends every two seconds; for a task whose answer the status board holds, the
//! answer is a lookup, and the layers around the router (routing, the boxed middlewares,
//! the request timer) cost more than the lookup itself. So the server's outermost service
//! answers such a poll itself, before the router, with exactly what the router would have
//! answered: the same body and headers, the same key check and per-key rate limit, the
//! same owner check (another key's task is the same 404 as a missing one), counted in the
//! same metrics and written to the same access log.
//!
//! Everything else takes the full way, and so does a poll that needs more than a lookup:
//! a task not on the board (read from the database), a provider's task id, a key that must
//! be looked up in the database, a missing or refused key (the full way says why), a key
//! over its rate (the full way answers 429), a request with an `Origin` when CORS is
//! configured (the CORS layer answers it), a malformed or repeated `taskId`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use axum::response::IntoResponse;
use futures::future::{Either, Ready, ready};
use tower::Service;

use super::error::ApiError;
use super::status::{STATUS_ROUTE, json_response, with_hold};
use crate::AppState;
use crate::domain::{ErrorCode, TaskId};

/// The server's outermost service on an API instance: status polls answered from the
/// board, the rest handed to `inner` (the router).
#[derive(Clone)]
pub struct StatusPolls<S> {
    inner: S,
    state: Arc<AppState>,
    /// CORS is configured: cross-origin requests take the full way (the CORS layer answers
    /// them), and same-origin answers carry `cors_headers`.
    cors: bool,
    /// What the CORS layer adds to an answer to a request without `Origin` (`Vary`,
    /// `Access-Control-Expose-Headers`), learnt from the layer itself.
    cors_headers: HeaderMap,
}

impl<S> StatusPolls<S> {
    /// `cors_headers`: what the full way's CORS layer adds to a same-origin answer, if CORS
    /// is configured ([`super::status_polls`]).
    pub(super) fn new(inner: S, state: AppState, cors_headers: Option<HeaderMap>) -> Self {
        Self {
            inner,
            state: Arc::new(state),
            cors: cors_headers.is_some(),
            cors_headers: cors_headers.unwrap_or_default(),
        }
    }
}

impl<S, B> Service<Request<B>> for StatusPolls<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<Body>, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // A panic here goes the full way, whose panic layer answers 500 if it panics again.
        let answered =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.answer(&request)));
        match answered {
            Ok(Some(response)) => Either::Left(ready(Ok(response))),
            Ok(None) | Err(_) => Either::Right(self.inner.call(request)),
        }
    }
}

impl<S> StatusPolls<S> {
    /// The answer to a status poll the board can give; `None` for anything else.
    fn answer<B>(&self, request: &Request<B>) -> Option<Response<Body>> {
        if request.method() != Method::GET || request.uri().path() != STATUS_ROUTE {
            return None;
        }
        let started = Instant::now();
        if self.cors && request.headers().contains_key(header::ORIGIN) {
            return None;
        }
        let wanted = task_id(request.uri().query()?)?;
        let id = TaskId::parse(&wanted)?;
        let state = &*self.state;
        // The board first: a miss goes the full way before the key's rate is counted, so
        // no poll is counted twice.
        let entry = state.board.get(&id)?;
        let caller = state.auth.caller_at_once(request.headers())?;
        let mut response = if caller.may_see(entry.owner.as_deref()) {
            json_response(with_hold(state, &entry))
        } else {
            ApiError::new(ErrorCode::TaskNotFound, format!("no task {wanted}")).into_response()
        };
        let headers = response.headers_mut();
        for (name, value) in &self.cors_headers {
            headers.append(name, value.clone());
        }
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        let latency = started.elapsed();
        let status = response.status().as_u16();
        state
            .metrics
            .http_request(Some(STATUS_ROUTE), &Method::GET, status, latency);
        tracing::debug!(
            target: "darkroom::http::access",
            method = "GET",
            route = STATUS_ROUTE,
            status,
            latency_us = latency.as_micros() as u64,
            "request"
        );
        Some(response)
    }
}

/// The one `taskId` of a query, decoded. `None` when it is missing, empty, repeated or
/// oddly encoded: the full way answers those as it always has.
fn task_id(query: &str) -> Option<std::borrow::Cow<'_, str>> {
    let mut found = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name == "taskId" {
            if found.is_some() {
                return None;
            }
            found = Some(value);
        }
    }
    found.filter(|id| !id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_non_empty_task_id_is_taken() {
        assert_eq!(task_id("taskId=tsk_1").as_deref(), Some("tsk_1"));
        assert_eq!(task_id("a=b&taskId=tsk%5F1").as_deref(), Some("tsk_1"));
        assert_eq!(task_id("taskId="), None);
        assert_eq!(task_id("taskId=a&taskId=b"), None);
        assert_eq!(task_id("taskid=a"), None);
        assert_eq!(task_id(""), None);
    }
}
