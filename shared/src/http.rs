//! What every HTTP service here wraps its routes in: request ids, a tracing
//! span named by the matched route, a latency histogram per route, a
//! timeout and a panic guard, all answering RFC 9457 problems; plus the
//! problem fallbacks for unknown paths and methods.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;
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

/// Wraps `router` in the common layers, as one middleware (each layer
/// costs a boxed future and a service clone a request) inside a panic
/// guard: a request id (taken from `x-request-id` or made, and sent back), a
/// span named by the matched route, a timeout, a latency histogram per
/// route, method and status, and a log line for every 5xx. A request whose
/// answer is not ready within `timeout` gets a 503 whose detail ends with
/// `timeout_advice` (streamed bodies are not cut: the limit is on the
/// answer's start). The span is made at `span_level`: a service answering
/// tens of thousands of reads a second makes it at DEBUG, where it costs
/// nothing unless asked for (`RUST_LOG=shared::http=debug`).
pub fn with_common_layers(
    router: Router,
    timeout: Duration,
    timeout_advice: &'static str,
    span_level: tracing::Level,
) -> Router {
    router
        .layer(CatchPanicLayer::custom(|_| {
            let correlation_id = Uuid::now_v7().to_string();
            tracing::error!(correlation_id, "handler panicked");
            Problem::internal(&correlation_id).into_response()
        }))
        .layer(middleware::from_fn(move |req, next| {
            around(timeout, timeout_advice, span_level, req, next)
        }))
}

async fn around(
    limit: Duration,
    advice: &'static str,
    span_level: tracing::Level,
    mut req: Request,
    next: Next,
) -> Response {
    let request_id = match req.headers().get(&REQUEST_ID) {
        Some(id) if id.len() <= 200 => id.clone(),
        _ => {
            let id = HeaderValue::from_str(&Uuid::new_v4().to_string())
                .unwrap_or(HeaderValue::from_static("-"));
            req.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route_str = route.as_ref().map_or("unmatched", |p| p.as_str());
    let method = req.method().clone();
    // Field values are only evaluated when the span is enabled.
    let span = if span_level == tracing::Level::DEBUG {
        tracing::debug_span!("request", %method, route = route_str, request_id = request_id.to_str().unwrap_or(""))
    } else {
        tracing::info_span!("request", %method, route = route_str, request_id = request_id.to_str().unwrap_or(""))
    };
    let started = Instant::now();
    let answered = tokio::time::timeout(limit, next.run(req))
        .instrument(span.clone())
        .await;
    let mut response = answered.unwrap_or_else(|_| {
        Problem::unavailable(format!(
            "the request took longer than {} s{advice}",
            limit.as_secs_f64()
        ))
        .into_response()
    });
    let elapsed = started.elapsed();
    let status = response.status();
    if status.is_server_error() {
        let request_id = request_id.to_str().unwrap_or("");
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%method, route = route_str, request_id, status = status.as_u16(), latency_ms, "request answered 503");
        } else {
            tracing::error!(%method, route = route_str, request_id, status = status.as_u16(), latency_ms, "request failed");
        }
    }
    response.headers_mut().insert(REQUEST_ID, request_id);
    latency_histogram(route_str, &method, status.as_u16()).record(elapsed.as_secs_f64());
    response
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
