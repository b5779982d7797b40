//! `GET /metrics` in the Prometheus text format, optionally behind a bearer token of its own
//! (`DARKROOM_METRICS_TOKEN`), and the middleware that counts and times every request by
//! its route template (and writes the access log line).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiError;
use crate::AppState;
use crate::domain::ErrorCode;
use crate::telemetry::Metrics;

/// The route, unless `/metrics` has a listener of its own (`DARKROOM_METRICS_LISTEN`).
pub fn router(state: &AppState) -> OpenApiRouter<AppState> {
    // On its own listener, or off (`DARKROOM_METRICS=false`).
    if state.config.metrics.listen.is_some() || !state.config.metrics.enabled {
        return OpenApiRouter::new();
    }
    OpenApiRouter::new().routes(routes!(metrics))
}

/// `/metrics` alone, for its own listener.
pub fn own_router(state: AppState) -> Router {
    let (router, _) = OpenApiRouter::new()
        .routes(routes!(metrics))
        .split_for_parts();
    router
        .fallback(super::not_found)
        .layer(ObserveLayer(state.metrics.clone()))
        .with_state(state)
}

/// Whether `headers` carry the metrics token, compared in constant time.
fn token_presented(headers: &HeaderMap, expected: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Equal lengths are compared byte by byte in constant time; a length mismatch fails
    // without comparing a prefix.
    presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
}

/// This instance's metrics in the Prometheus text format (version 0.0.4). Open unless
/// `DARKROOM_METRICS_TOKEN` is set; then it needs `Authorization: Bearer <token>`.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "The metrics, Prometheus text format", content_type = "text/plain", body = String),
    (status = 401, description = "`DARKROOM_METRICS_TOKEN` is set and the request does not carry it (`invalid_metrics_token`)", body = super::error::ErrorBody),
    (status = 503, description = "The database could not be counted (`storage_unavailable`)", body = super::error::ErrorBody),
))]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(token) = &state.config.metrics.token
        && !token_presented(&headers, token.expose())
    {
        let mut response = ApiError::new(
            ErrorCode::InvalidMetricsToken,
            "/metrics needs `Authorization: Bearer <token>` with the token set in DARKROOM_METRICS_TOKEN",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"metrics\""),
        );
        return Ok(response);
    }
    state
        .engine
        .refresh_gauges()
        .await
        .map_err(ApiError::from)?;
    let body = state.metrics.render();
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response())
}

/// Counts and times each request by its route template (never the raw path or query) and
/// writes its access-log line (`darkroom::http::access`, at debug: one line per request
/// costs more than the status path itself). A plain tower layer rather than a `from_fn`
/// middleware: nothing boxed, one `Arc` cloned per request.
#[derive(Clone)]
pub struct ObserveLayer(pub Arc<Metrics>);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<axum::http::Request<B>> for Observe<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        Observed {
            inner: self.inner.call(request),
            started: Instant::now(),
            route,
            method,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response on its way, timed from the call.
    pub struct Observed<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: Method,
        metrics: Arc<Metrics>,
    }
}

impl<F, E> Future for Observed<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let latency = this.started.elapsed();
            let status = response.status().as_u16();
            let route = this.route.as_ref().map(MatchedPath::as_str);
            this.metrics
                .http_request(route, this.method, status, latency);
            tracing::debug!(
                target: "darkroom::http::access",
                method = %this.method,
                route = route.unwrap_or("unmatched"),
                status,
                latency_us = latency.as_micros() as u64,
                "request"
            );
        }
        Poll::Ready(result)
    }
}
