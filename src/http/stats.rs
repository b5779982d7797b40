//! `GET /api/stats?window=1h|24h|7d|30d`: what the tasks created in a window did, computed
//! by the database from the rollup it keeps of finished tasks (so it is the same after a
//! restart and on every instance, and costs a few dozen rows whatever the window holds). A
//! key sees its own tasks; an administrator key (`DARKROOM_ADMIN_KEYS`) sees every task and
//! a row per key, as does everyone when API keys are off.

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use crate::AppState;
use crate::clock::now_ms;
use crate::domain::ErrorCode;
use crate::domain::stats::StatsWindow;
use crate::views::budgets::BudgetsView;
use crate::views::stats::{StatsScope, StatsView, stats_view};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(stats))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct StatsParams {
    /// `1h`, `24h` (the default), `7d` or `30d`.
    #[param(pattern = "^(1h|24h|7d|30d)$")]
    window: Option<String>,
}

/// Statistics of the tasks created in a window: counts by state, success rate, stage
/// percentiles (nearest rank, read from a histogram of durations: never below the exact
/// value, at most 15 % above it), failures by code, credits and tasks per provider and over
/// time, and today's daily credit budgets.
#[utoipa::path(get, path = "/api/stats", tag = "statistics", params(StatsParams), responses(
    (status = 200, description = "The window's figures", body = StatsView),
    (status = 400, description = "`window` is not 1h, 24h, 7d or 30d (`invalid_window`)", body = ErrorBody),
))]
async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<StatsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<StatsView>, ApiError> {
    let Query(params) =
        params.map_err(|e| ApiError::new(ErrorCode::InvalidQuery, e.body_text()))?;
    let raw = params.window.as_deref().unwrap_or("24h");
    let window = StatsWindow::parse(raw).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidWindow,
            format!("window {raw:?} is not one of 1h, 24h, 7d, 30d"),
        )
    })?;
    let key = caller.owner().map(str::to_owned);
    let scope = match &key {
        None => "all",
        Some(_) if state.auth.is_admin(&caller) => "admin",
        Some(_) => "key",
    };
    let owner = (scope == "key").then(|| key.clone()).flatten();
    let budgets = budgets(&state, owner.as_deref()).await?;
    let query = window.query(now_ms(), owner, scope != "key");
    let stats = state.repo.task_stats(&query).await?;
    Ok(Json(stats_view(
        window,
        &query,
        &stats,
        StatsScope { scope, key },
        budgets,
    )))
}

/// Today's budgets: only `own`'s when set (a key that sees its own tasks only).
async fn budgets(state: &AppState, own: Option<&str>) -> Result<BudgetsView, ApiError> {
    Ok(state
        .engine
        .budgets_today(|key| own.is_none_or(|own| own == key))
        .await?)
}
