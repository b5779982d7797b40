//! Slow-client protection for request bodies. hyper bounds the time to send the headers
//! (see [`crate::App::serve`]); this bounds the body: it gets a base allowance plus one
//! second per `min_rate` bytes received (Apache's mod_reqtimeout rule), so a big upload on
//! a decent link is never cut, while a client trickling bytes to hold a connection and a
//! handler open is cut off with 408 and the connection is closed.

use crate::domain::ErrorCode;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// The body deadline's parameters.
#[derive(Clone, Copy, Debug)]
pub struct BodyDeadline {
    pub base: Duration,
    pub min_rate_bytes_per_sec: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body was not received in time")]
struct BodyTimedOut;

/// A request body that fails once its deadline passes without the next bytes.
struct DeadlineBody {
    inner: Body,
    started: Instant,
    rule: BodyDeadline,
    received: u64,
    sleep: Pin<Box<Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl DeadlineBody {
    fn deadline(&self) -> Instant {
        let earned = Duration::from_secs_f64(
            self.received as f64 / self.rule.min_rate_bytes_per_sec.max(1) as f64,
        );
        self.started + self.rule.base + earned
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let deadline = this.deadline();
                    this.sleep.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
                }
                Poll::Pending
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps every request body in the deadline; a handler that failed because the body came
/// too slowly answers 408 (whatever it made of the broken body) and the connection closes.
pub async fn body_deadline(
    State(rule): State<BodyDeadline>,
    request: Request,
    next: Next,
) -> Response {
    let timed_out = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let flag = timed_out.clone();
    let request = request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            started,
            rule,
            received: 0,
            sleep: Box::pin(tokio::time::sleep_until(started + rule.base)),
            timed_out: flag,
        })
    });
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if !timed_out.load(Ordering::Relaxed) {
        return response;
    }
    tracing::warn!(%method, %path, "request body too slow; cut off");
    let mut response = ApiError::new(
        ErrorCode::BodyTimeout,
        "the request body was sent too slowly",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
