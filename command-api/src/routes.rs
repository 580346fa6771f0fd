//! The command API's routes: the commands, health, metrics and the OpenAPI
//! document, inside the layers every request passes (request id, tracing,
//! metrics, timeout, panic guard, problem answers).

use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use shared::problem::Problem;

use crate::handlers::{
    amend_study, batch, close_study, correct_observation, record_observation, register_study,
    register_subject, retract_observation, sign_observation, withdraw_subject,
};
use crate::state::Shared;

pub fn router(state: Shared) -> Router {
    let timeout = state.request_timeout;
    let routes = Router::new()
        .route("/v1/studies", post(register_study))
        .route("/v1/studies/{id}/amendments", post(amend_study))
        .route("/v1/studies/{id}/closure", post(close_study))
        .route("/v1/studies/{id}/subjects", post(register_subject))
        .route("/v1/subjects/{id}/withdrawal", post(withdraw_subject))
        .route("/v1/subjects/{id}/observations", post(record_observation))
        .route(
            "/v1/observations/{id}/corrections",
            post(correct_observation),
        )
        .route(
            "/v1/observations/{id}/retraction",
            post(retract_observation),
        )
        .route("/v1/observations/{id}/signatures", post(sign_observation))
        .route("/v1/commands", post(batch))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .with_state(state);
    shared::http::with_common_layers(
        shared::http::with_fallbacks(routes),
        timeout,
        "; with an Idempotency-Key it is safe to retry",
        tracing::Level::INFO,
    )
}

async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(crate::openapi::document).clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn readyz(State(state): State<Shared>) -> Response {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(state.engine.store.pool()),
    )
    .await;
    let db_ok = matches!(db, Ok(Ok(_)));
    let nats_ok = state.nats.connection_state() == async_nats::connection::State::Connected;
    let publishing = state.publishing.report();
    let publishing_ok = state.publishing.is_ok();
    let checkpointing = state.checkpointing.as_ref().map(|c| c.report());
    let checkpointing_ok = state.checkpointing.as_ref().is_none_or(|c| c.is_ok());
    if db_ok && nats_ok && publishing_ok && checkpointing_ok {
        let mut body = json!({"postgres": true, "nats": true, "publisher": publishing});
        if let Some(checkpointing) = checkpointing {
            body["checkpointer"] = checkpointing;
        }
        return (
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    Problem::unavailable("the command API is not ready")
        .with("postgres", db_ok)
        .with("nats", nats_ok)
        .with("publisher", publishing)
        .with("checkpointer", checkpointing)
        .into_response()
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    shared::http::metrics_text(state.metrics.as_ref())
}
