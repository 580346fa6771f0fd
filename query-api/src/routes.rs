//! The query API's routes: the reads, the audit, health, metrics and the
//! OpenAPI document, inside the layers every request passes.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use shared::problem::Problem;

use crate::access::streaming_compression;
use crate::audit;
use crate::reads::{
    export_study, list_observations, list_studies, list_subjects, observation, study,
    study_by_code, subject,
};
use crate::state::Shared;

pub fn router(state: Shared) -> Router {
    let timeout = state.request_timeout;
    let routes = Router::new()
        .route(
            "/v1/studies",
            get(list_studies).layer(streaming_compression()),
        )
        .route("/v1/studies/{id}", get(study))
        .route("/v1/studies/by-code/{code}", get(study_by_code))
        .route(
            "/v1/studies/{id}/subjects",
            get(list_subjects).layer(streaming_compression()),
        )
        .route(
            "/v1/studies/{id}/observations.ndjson",
            get(export_study).layer(streaming_compression()),
        )
        .route("/v1/subjects/{id}", get(subject))
        .route(
            "/v1/subjects/{id}/observations",
            get(list_observations).layer(streaming_compression()),
        )
        .route("/v1/observations/{id}", get(observation))
        .merge(audit::routes())
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .with_state(state);
    shared::http::with_common_layers(
        shared::http::with_fallbacks(routes),
        timeout,
        "",
        tracing::Level::DEBUG,
    )
}

async fn readyz(State(state): State<Shared>) -> Response {
    let replica = state.freshness.is_up();
    let redis = state.docs.redis_up();
    let details = json!({
        "replica": replica,
        "replica_lag_seconds": state.freshness.lag_seconds(),
        "checkpoint": state.freshness.applied(),
        "redis": redis,
    });
    if replica {
        (
            [(header::CONTENT_TYPE, "application/json")],
            details.to_string(),
        )
            .into_response()
    } else {
        Problem::unavailable("the read replica cannot be reached")
            .with("redis", redis)
            .into_response()
    }
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    shared::http::metrics_text(state.metrics.as_ref())
}

async fn openapi_json() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOC.get_or_init(crate::openapi::document).clone();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
