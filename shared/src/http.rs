//! What every HTTP service here wraps its routes in: request ids, a tracing
//! span named by the matched route, a latency histogram per route, a
//! timeout and a panic guard, all answering RFC 9457 problems; plus the
//! problem fallbacks for unknown paths and methods.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{OnceLock, RwLock};
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
/// The request span is made at `span_level`: a service answering tens of
/// thousands of reads a second makes it at DEBUG, where it costs nothing
/// unless asked for (`RUST_LOG=tower_http=debug,…`); its failures are logged
/// with their correlation id either way.
pub fn with_common_layers(
    router: Router,
    timeout: Duration,
    timeout_advice: &'static str,
    span_level: tracing::Level,
) -> Router {
    router
        .layer(middleware::from_fn(move |req, next| {
            timed(timeout, timeout_advice, req, next)
        }))
        .layer(CatchPanicLayer::custom(|_| {
            let correlation_id = Uuid::now_v7().to_string();
            tracing::error!(correlation_id, "handler panicked");
            Problem::internal(&correlation_id).into_response()
        }))
        .layer(
            TraceLayer::new_for_http().make_span_with(move |req: &Request| {
                // Field values are only evaluated when the span is enabled.
                let route = || {
                    req.extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", |p| p.as_str())
                };
                let request_id = || {
                    req.headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                };
                if span_level == tracing::Level::DEBUG {
                    tracing::debug_span!("request", method = %req.method(), route = route(), request_id = request_id())
                } else {
                    tracing::info_span!("request", method = %req.method(), route = route(), request_id = request_id())
                }
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// `/metrics` in the Prometheus text format, or a 404 problem when the
/// process installed no recorder.
pub fn metrics_text(handle: Option<&crate::telemetry::PrometheusHandle>) -> Response {
    match handle {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response(),
        None => Problem::not_found("metrics are not enabled in this process").into_response(),
    }
}

/// Answers 503 past `limit` and records the latency per route, method and
/// status (one layer for both: each layer costs a boxed future a request).
async fn timed(limit: Duration, advice: &'static str, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = Instant::now();
    let response = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Problem::unavailable(format!(
            "the request took longer than {} s{advice}",
            limit.as_secs_f64()
        ))
        .into_response(),
    };
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    latency_histogram(route, &method, response.status().as_u16())
        .record(started.elapsed().as_secs_f64());
    response
}

/// The histogram of one route, method and status, made once: looking it up
/// by a hash costs no allocation on every request.
fn latency_histogram(route: &str, method: &axum::http::Method, status: u16) -> metrics::Histogram {
    type Handles = RwLock<HashMap<u64, metrics::Histogram>>;
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    let handles = HANDLES.get_or_init(Handles::default);
    let key = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (route, method.as_str(), status).hash(&mut h);
        h.finish()
    };
    if let Some(histogram) = handles.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return histogram.clone();
    }
    let histogram = metrics::histogram!(
        "http_request_duration_seconds",
        "route" => route.to_owned(),
        "method" => method.to_string(),
        "status" => status.to_string()
    );
    handles
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, histogram.clone());
    histogram
}
