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

/// Longest request target (path and query) a service reads: `414` beyond.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields of one request: `431` beyond.
pub const MAX_HEADERS: usize = 64;
/// Most bytes of header names and values of one request: `431` beyond.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The service's own bounds on a request's target and headers, below those
/// of the HTTP parser (whose refusals `listener.rs` answers).
fn over_limits(req: &Request) -> Option<Problem> {
    let uri = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri-too-long",
            "URI too long",
            format!("the request's path and query are limited to {MAX_URI_BYTES} bytes"),
        ));
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return Some(Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request header fields too large",
            format!(
                "a request carries at most {MAX_HEADERS} header fields and {MAX_HEADER_BYTES} bytes of them"
            ),
        ));
    }
    None
}

/// Every error answer is a problem: one made by the framework rather than
/// a handler (a path or query that does not decode, say) gets a problem
/// body of its own status, keeping `Allow`, `Retry-After` and
/// `WWW-Authenticate`.
fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let detail = match status {
        StatusCode::BAD_REQUEST => "the request's path or query could not be decoded",
        StatusCode::METHOD_NOT_ALLOWED => "this endpoint does not take that method",
        StatusCode::PAYLOAD_TOO_LARGE => "the body is larger than this endpoint takes",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "this endpoint takes application/json",
        _ => "the request could not be handled",
    };
    let title = status.canonical_reason().unwrap_or("Error");
    let slug = match status {
        StatusCode::BAD_REQUEST => "malformed-request",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        _ => "http-error",
    };
    let mut problem = Problem::new(status, slug, title, detail).into_response();
    for name in [
        axum::http::header::ALLOW,
        axum::http::header::RETRY_AFTER,
        axum::http::header::WWW_AUTHENTICATE,
    ] {
        if let Some(value) = response.headers().get(&name) {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
}

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
    let mut response = match over_limits(&req) {
        Some(problem) => problem.into_response(),
        None => tokio::time::timeout(limit, next.run(req))
            .instrument(span.clone())
            .await
            .map(as_problem)
            .unwrap_or_else(|_| {
                Problem::unavailable(format!(
                    "the request took longer than {} s{advice}",
                    limit.as_secs_f64()
                ))
                .into_response()
            }),
    };
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
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, request_id);
    headers.insert(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
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
