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
    // A paused provider (429 storm, no credits) does not make the instance unready: it
    // still queues work, which runs when the pause ends. It is reported, not hidden: the
    // default provider as `provider`, every provider in `providers`.
    let pause_status = |name: &str| match state.engine.provider_pause(name) {
        Some(pause) => json!({
            "status": "paused",
            "code": pause.code,
            "reason": pause.reason,
            "resumesInSecs": pause.until.saturating_duration_since(std::time::Instant::now()).as_secs(),
        }),
        None => json!({"status": "ok"}),
    };
    let provider = pause_status(state.info.provider);
    let providers: serde_json::Map<String, Value> = state
        .engine
        .provider_names()
        .into_iter()
        .map(|name| (name.to_owned(), pause_status(name)))
        .collect();
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
        "provider": provider,
        "providers": providers,
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `provider` and `simulator` describe the default provider (what the page shows);
/// `providers` lists every provider a request may name, simulated or not.
async fn info(State(state): State<AppState>) -> Json<Value> {
    let providers: Vec<Value> = state
        .info
        .providers
        .iter()
        .map(|p| json!({"name": p.name, "model": p.model, "simulator": p.simulator}))
        .collect();
    Json(json!({
        "name": "darkroom",
        "version": env!("CARGO_PKG_VERSION"),
        "provider": state.info.provider,
        "simulator": state.info.simulator,
        "defaultProvider": state.info.provider,
        "providers": providers,
        "storage": state.info.storage,
        "apiKeysRequired": state.auth.required(),
    }))
}
