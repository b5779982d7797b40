//! Liveness, readiness and what this instance is running with.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/info", get(info))
}

/// The process is up and serving.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The database and the bucket answer.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = state.repo.ping().await.map_err(|e| e.to_string());
    let bucket = state
        .blobs
        .exists(&crate::storage::keys::probe().key)
        .await
        .map_err(|e| e.to_string());
    let ready = database.is_ok() && bucket.is_ok();
    let check = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            json!("unavailable")
        }
    };
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "database": check(&database),
        "bucket": check(&bucket.map(|_| ())),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

async fn info(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "name": "darkroom",
        "version": env!("CARGO_PKG_VERSION"),
        "provider": state.info.provider,
        "simulator": state.info.simulator,
        "storage": state.info.storage,
        "apiKeysRequired": state.auth.required(),
    }))
}
