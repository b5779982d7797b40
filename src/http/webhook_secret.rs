//! `GET /api/webhook-secret` and `POST /api/webhook-secret/rotate`: the calling API key's
//! `whsec_` secret, which signs the webhooks of its tasks (see [`crate::webhooks`]).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::AppState;
use crate::clock::iso_time;
use crate::clock::now_ms;
use crate::domain::ErrorCode;
use crate::storage::WebhookSecretRecord;
use crate::webhooks::{key_secret, rotate_key_secret};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(show))
        .routes(routes!(rotate))
}

/// A key's webhook secret as the client sees it. (No `Debug`: it holds the secret.)
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct WebhookSecretView {
    /// `whsec_<base64>`: verify deliveries with it (Standard Webhooks).
    secret: String,
    /// When this secret came into use.
    #[schema(format = DateTime)]
    created_at: String,
    /// After a rotation: until when deliveries also carry a signature made with the
    /// previous secret; `null` otherwise.
    #[schema(format = DateTime)]
    previous_valid_until: Option<String>,
}

/// The answer: a secret, so no cache (browser or proxy) may keep it.
type SecretAnswer = (
    [(header::HeaderName, HeaderValue); 1],
    Json<WebhookSecretView>,
);

impl WebhookSecretView {
    fn answer(record: WebhookSecretRecord, now: i64) -> SecretAnswer {
        let view = Self {
            previous_valid_until: record.previous_valid_until(now).map(iso_time),
            created_at: iso_time(record.current_since()),
            secret: record.secret,
        };
        (
            [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Json(view),
        )
    }
}

/// The calling key's name. Without keys there is no per-key secret: deliveries are signed
/// with the instance secret, which only the operator holds.
fn key_name(caller: &Caller) -> Result<&str, ApiError> {
    caller.owner().ok_or_else(|| {
        ApiError::new(
            ErrorCode::ApiKeysDisabled,
            "API keys are off on this server, so there is no per-key webhook secret: webhooks are signed with the instance secret, set in DARKROOM_WEBHOOK_SECRET or kept in {data_dir}/webhook_secret",
        )
    })
}

/// The calling key's `whsec_` secret, which signs the webhooks of its tasks.
#[utoipa::path(get, path = "/api/webhook-secret", tag = "webhooks", responses(
    (status = 200, description = "The key's secret (made on first use)", body = WebhookSecretView),
    (status = 401, description = "No key, or a wrong one", body = ErrorBody),
    (status = 404, description = "API keys are off (`api_keys_disabled`): webhooks use the instance secret", body = ErrorBody),
))]
async fn show(State(state): State<AppState>, caller: Caller) -> Result<SecretAnswer, ApiError> {
    let owner = key_name(&caller)?;
    let now = now_ms();
    let record = key_secret(state.access.as_ref(), owner, now).await?;
    Ok(WebhookSecretView::answer(record, now))
}

/// Replace the calling key's secret. For 24 hours deliveries carry signatures with both
/// the new and the previous secret (`v1,<new> v1,<old>`), so receivers can switch.
#[utoipa::path(post, path = "/api/webhook-secret/rotate", tag = "webhooks", responses(
    (status = 200, description = "The new secret", body = WebhookSecretView),
    (status = 401, description = "No key, or a wrong one", body = ErrorBody),
    (status = 404, description = "API keys are off (`api_keys_disabled`)", body = ErrorBody),
))]
async fn rotate(State(state): State<AppState>, caller: Caller) -> Result<SecretAnswer, ApiError> {
    let owner = key_name(&caller)?;
    let now = now_ms();
    let record = rotate_key_secret(state.access.as_ref(), owner, now).await?;
    // The key's name, never the secret.
    tracing::info!(key = %owner, "webhook secret rotated");
    Ok(WebhookSecretView::answer(record, now))
}
