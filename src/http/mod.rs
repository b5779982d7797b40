//! The HTTP API: one module per resource, merged here with the shared layers: request
//! logging (path only: query strings carry callback tokens and file signatures), security
//! headers, CORS from an explicit allowlist, the body deadline, the request timeout, panic
//! containment, and authentication (default-deny; see [`auth`]).

pub mod auth;
mod batches;
mod callback;
pub mod error;
mod files;
mod generate;
mod health;
mod idempotency;
pub mod limits;
mod live;
mod metrics;
mod openapi;
mod path;
pub mod readiness;
mod stats;
mod status;
mod status_polls;
mod tasks;
mod ui;
mod upload;
mod webhook_secret;
mod zip;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::middleware;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;

use crate::AppState;
use crate::domain::ErrorCode;
use error::ApiError;
pub use tasks::{TaskView, task_view};

pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    let metrics = state.metrics.clone();
    let deadline = limits::BodyDeadline {
        base: config.server.body_timeout_secs,
        min_rate_bytes_per_sec: config.server.body_min_rate_bytes,
    };
    // Streams and long-polls stay open by design: they are mounted outside the timeout.
    let open = OpenApiRouter::new()
        .merge(live::router())
        .merge(batches::download_router());
    let timed = OpenApiRouter::new()
        .merge(upload::router(&config))
        .merge(generate::router())
        .merge(callback::router(&state))
        .merge(status::router())
        .merge(tasks::router())
        .merge(batches::router())
        .merge(webhook_secret::router())
        .merge(health::router())
        .merge(metrics::router(&state))
        .merge(stats::router())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.server.request_timeout_secs,
        ));
    // Every documented route is mounted from its own `#[utoipa::path]` attribute, so the
    // document cannot list a route that does not exist or miss one that does (the page
    // and its assets are not API and stay out).
    let (routes, document) = OpenApiRouter::with_openapi(openapi::base())
        .merge(timed)
        .merge(open)
        .split_for_parts();
    let pages = Router::new()
        .merge(files::router())
        .merge(ui::router())
        .merge(openapi::router(openapi::finish(
            document,
            &config.gemini.model,
        )))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.server.request_timeout_secs,
        ));
    let api = routes
        .merge(pages)
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.limits.max_json_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state);
    let api = api
        .layer(middleware::from_fn(error::log_internal_errors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(
            deadline,
            limits::body_deadline,
        ));
    // CORS outside authentication: a preflight carries no key, and a browser must be able
    // to read a 401 to tell its user why.
    let api = match cors(&config.server.cors_origins) {
        Some(cors) => api.layer(cors),
        None => api,
    };
    let api = api.layer(SetResponseHeaderLayer::overriding(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    ))
    .layer(
        TraceLayer::new_for_http()
            .make_span_with(|request: &Request<_>| {
                // The route template and the path only: query strings carry callback tokens
                // and file signatures.
                let route = request
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or("unmatched", axum::extract::MatchedPath::as_str);
                // At debug: a span per request at info would be formatted on every poll of
                // the status path.
                tracing::debug_span!("request", method = %request.method(), route, path = %request.uri().path())
            })
            // The access line is `metrics::ObserveLayer`'s; failed responses are logged by
            // `error::log_internal_errors`, with their cause and with repeats counted.
            .on_request(())
            .on_response(())
            .on_failure(()),
    );
    // Outermost, so the time counted is the whole stack's.
    api.layer(metrics::ObserveLayer(metrics))
}

/// The API's router behind the status polls' short way ([`status_polls`]): what an API
/// instance serves.
pub fn with_status_polls(router: Router, state: AppState) -> status_polls::StatusPolls<Router> {
    let cors_headers = cors(&state.config.server.cors_origins).map(same_origin_cors_headers);
    status_polls::StatusPolls::new(router, state, cors_headers)
}

/// The headers `cors` adds to an answer to a request without `Origin`, asked of the layer
/// itself (around a service that answers with no headers at all).
fn same_origin_cors_headers(cors: CorsLayer) -> HeaderMap {
    use futures::FutureExt;
    use tower::{Layer, ServiceExt};
    let bare = tower::service_fn(|_: Request<axum::body::Body>| async {
        Ok::<_, std::convert::Infallible>(axum::response::Response::new(axum::body::Body::empty()))
    });
    let request = Request::new(axum::body::Body::empty());
    // Around a service that is ready at once, so is the layer's answer (made at start:
    // were that ever not so, the server would not start rather than answer unlike the
    // full way).
    let Some(Ok(response)) = cors.layer(bare).oneshot(request).now_or_never() else {
        panic!("the CORS layer did not answer at once around a ready service");
    };
    response.headers().clone()
}

/// `/metrics` alone, for its own listener (`DARKROOM_METRICS_LISTEN`).
pub fn metrics_router(state: AppState) -> Router {
    metrics::own_router(state)
}

/// Browsers on the listed origins may call the API (with a bearer key). No list, no CORS
/// headers: only same-origin pages can read answers.
fn cors(origins: &[crate::config::Origin]) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.as_str()).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                idempotency::KEY_HEADER,
            ])
            .expose_headers([idempotency::REPLAYED_HEADER])
            .max_age(Duration::from_secs(600)),
    )
}

/// What a workers-only instance serves: `/healthz`, `/readyz` and `/metrics`; anything
/// else is a 503 naming the role.
pub fn workers_router(state: AppState) -> Router {
    let (routes, _) = OpenApiRouter::new()
        .merge(health::router())
        .merge(metrics::router(&state))
        .split_for_parts();
    routes
        .fallback(not_an_api_instance)
        .layer(metrics::ObserveLayer(state.metrics.clone()))
        .with_state(state)
}

async fn not_an_api_instance(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotAnApiInstance,
        format!(
            "{method} {}: this instance runs the workers only (DARKROOM_ROLES=workers); send API requests to an instance with the api role",
            uri.path()
        ),
    )
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!(
            "no such route: {method} {}; the API is described at /api/openapi.json",
            uri.path()
        ),
    )
}

/// A route that exists, asked with a method it does not take (the router adds `Allow`).
async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} does not take {method}; the Allow header lists the methods it takes",
            uri.path()
        ),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::error!("a request handler panicked");
    ApiError::internal("handler panic").into_response()
}
