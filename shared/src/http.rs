//! What every HTTP service here wraps its routes in: request ids, a tracing
//! span named by the matched route, a latency histogram per route, a
//! timeout and a panic guard, all answering RFC 9457 problems; plus the
//! problem fallbacks for unknown paths and methods.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::problem::Problem;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Problems for unknown paths and methods.
pub fn with_fallbacks(router: Router) -> Router {
    router
        .fallback(|| async { Problem::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this endpoint does not take that method",
            )
        })
}

/// Wraps `router` in the common layers. A request whose answer is not ready
/// within `timeout` gets a 503 whose detail is `timeout_advice` after the
/// limit (streamed bodies are not cut: the limit is on the answer's start).
pub fn with_common_layers(
    router: Router,
    timeout: Duration,
    timeout_advice: &'static str,
) -> Router {
    router
        .layer(middleware::from_fn(move |req, next| {
            with_timeout(timeout, timeout_advice, req, next)
        }))
        .layer(middleware::from_fn(record_metrics))
        .layer(CatchPanicLayer::custom(|_| {
            let correlation_id = Uuid::now_v7().to_string();
            tracing::error!(correlation_id, "handler panicked");
            Problem::internal(&correlation_id).into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| p.as_str())
                .to_owned();
            let request_id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            tracing::info_span!("request", method = %req.method(), route, request_id)
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

async fn with_timeout(limit: Duration, advice: &'static str, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Problem::unavailable(format!(
            "the request took longer than {} s{advice}",
            limit.as_secs_f64()
        ))
        .into_response(),
    }
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    metrics::histogram!(
        "http_request_duration_seconds",
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response
}
