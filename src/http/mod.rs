//! The HTTP API: one module per resource, merged here with the shared layers.

mod batches;
mod callback;
pub mod error;
mod files;
mod generate;
mod health;
mod live;
mod openapi;
mod status;
mod tasks;
mod ui;
mod upload;
mod zip;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::AppState;
use error::ApiError;
pub use tasks::task_view;

pub fn router(state: AppState) -> Router {
    let config = state.config.clone();
    // Streams and long-polls stay open by design: they are mounted outside the timeout.
    let open = Router::new()
        .merge(live::router())
        .merge(batches::download_router());
    let timed = Router::new()
        .merge(upload::router(&config))
        .merge(generate::router())
        .merge(callback::router(&config))
        .merge(status::router())
        .merge(tasks::router())
        .merge(batches::router())
        .merge(openapi::router())
        .merge(health::router())
        .merge(files::router())
        .merge(ui::router())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.server.request_timeout_secs),
        ));
    let api = timed
        .merge(open)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(config.limits.max_json_body_bytes))
        .with_state(state);
    api.layer(middleware::from_fn(error::log_internal_errors))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TraceLayer::new_for_http())
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    tracing::error!("a request handler panicked");
    ApiError::internal("handler panic").into_response()
}
