//! The HTTP surface of the document reads: single documents (strong ETag,
//! `304`, content codings kept per document), pages, the streamed study
//! export, `Consistency-Token` waits, health, metrics and the OpenAPI
//! document. Every error is an RFC 9457 problem.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use shared::auth::{Principal, Role};
use shared::problem::Problem;
use tokio_stream::wrappers::ReceiverStream;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use uuid::Uuid;

use crate::cache::{Doc, Found, Key, Kind};
use crate::documents::LoadError;
use crate::encoding::{negotiate, Coding, MIN_COMPRESSED};
use crate::pages::{self, decode_cursor, parse_limit};
use crate::replica::Listing;
use crate::{audit, QueryState};

pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

type Shared = Arc<QueryState>;

/// Streams and pages are compressed as they go (documents keep their
/// compressed forms instead).
pub fn streaming_compression() -> CompressionLayer {
    CompressionLayer::new().quality(CompressionLevel::Precise(4))
}

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

/// The caller, who must hold `role`.
pub fn require(principal: Result<Principal, Problem>, role: Role) -> Result<Principal, Problem> {
    let principal = principal?;
    principal.require(role)?;
    Ok(principal)
}

pub fn parse_id(raw: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(raw).map_err(|_| Problem::bad_request("the id in the path is not a UUID"))
}

/// The position a `Consistency-Token` asks for, once it is visible (-1
/// without a token).
async fn consistency(state: &QueryState, headers: &HeaderMap) -> Result<i64, Problem> {
    let Some(raw) = headers.get(CONSISTENCY_TOKEN) else {
        return Ok(-1);
    };
    let position = raw
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|p| *p >= 0)
        .ok_or_else(|| {
            Problem::bad_request(
                "Consistency-Token must be a position (a non-negative integer) a command returned",
            )
        })?;
    state
        .freshness
        .reach(position, state.consistency_timeout)
        .await?;
    Ok(position)
}

pub fn load_problem(error: LoadError) -> Problem {
    match error {
        LoadError::Unavailable => Problem::unavailable("the read replica cannot be reached"),
        LoadError::Internal(correlation_id) => Problem::internal(&correlation_id),
    }
}

async fn document(
    state: &QueryState,
    principal: Result<Principal, Problem>,
    headers: &HeaderMap,
    key: Key,
    what: &str,
) -> Result<Response, Problem> {
    let principal = require(principal, Role::Reader)?;
    let min = consistency(state, headers).await?;
    let (found, _) = state.docs.get(&key, min).await.map_err(load_problem)?;
    // Another study's document is, to a limited token, no document at all.
    let doc = match found {
        Found::Doc(doc) if principal.may_access_study(doc.study_id) => doc,
        _ => return Err(Problem::not_found(format!("there is no such {what}"))),
    };
    Ok(respond(state, &key, &doc, headers))
}

/// Whether `If-None-Match` names the document's current version (weak
/// comparison, as RFC 9110 asks; any coding of the version matches).
fn not_modified(headers: &HeaderMap, version: i64) -> bool {
    let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    value.split(',').any(|tag| {
        let tag = tag.trim();
        if tag == "*" {
            return true;
        }
        let tag = tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"');
        let version_part = tag.split('-').next().unwrap_or("");
        version_part.parse::<i64>().ok() == Some(version)
    })
}

fn respond(state: &QueryState, key: &Key, doc: &Arc<Doc>, headers: &HeaderMap) -> Response {
    let version = doc.position;
    let mut coding = negotiate(headers);
    if doc.body.len() < MIN_COMPRESSED {
        coding = Coding::Identity;
    }
    let etag = match coding {
        Coding::Identity => format!("\"{version}\""),
        other => format!("\"{version}-{}\"", other.name()),
    };
    let etag = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    if not_modified(headers, version) {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::VARY, HeaderValue::from_static("accept-encoding")),
            ],
        )
            .into_response();
    }
    let (body, made) = doc.encoded(coding);
    if made {
        state.docs.cache.grew(key, doc, body.len());
    }
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            (header::VARY, HeaderValue::from_static("accept-encoding")),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-cache"),
            ),
        ],
        body,
    )
        .into_response();
    if let Some(value) = coding.header() {
        response
            .headers_mut()
            .insert(header::CONTENT_ENCODING, value);
    }
    response
}

/// Headers a read may carry.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct ReadHeaders {
    /// A position a command returned: the answer reflects at least it
    /// (waits up to the configured bound, else 503 with `Retry-After`).
    #[param(rename = "Consistency-Token")]
    consistency_token: Option<i64>,
    /// `"<version>"` from an earlier answer: 304 while it is current.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

/// Parameters of a page.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageParams {
    /// Items per page, 1 to 1000 (default 50).
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A study summary: counts and per-variable statistics.
#[utoipa::path(get, path = "/v1/studies/{id}", params(("id" = Uuid, Path), ReadHeaders),
    responses((status = 200, description = "the study document", content_type = "application/json"),
              (status = 304, description = "the version named by If-None-Match is current"),
              (status = 404, description = "no such study", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn study(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, Problem> {
    let key = Key::Doc(Kind::Study, parse_id(&id)?);
    document(&state, principal, request.headers(), key, "study").await
}

/// The study with this code.
#[utoipa::path(get, path = "/v1/studies/by-code/{code}", params(("code" = String, Path), ReadHeaders),
    responses((status = 200, description = "the study document", content_type = "application/json"),
              (status = 404, description = "no such study", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn study_by_code(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(code): Path<String>,
    request: Request,
) -> Result<Response, Problem> {
    let code = shared::domain::StudyCode::parse(&code)
        .map_err(|rule| Problem::bad_request(format!("the study code in the path {rule}")))?;
    let key = Key::Code(code.as_str().to_owned());
    document(&state, principal, request.headers(), key, "study").await
}

/// A subject: attributes, status, latest values and statistics.
#[utoipa::path(get, path = "/v1/subjects/{id}", params(("id" = Uuid, Path), ReadHeaders),
    responses((status = 200, description = "the subject document", content_type = "application/json"),
              (status = 404, description = "no such subject", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn subject(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, Problem> {
    let key = Key::Doc(Kind::Subject, parse_id(&id)?);
    document(&state, principal, request.headers(), key, "subject").await
}

/// An observation: current and original values, status, signatures.
#[utoipa::path(get, path = "/v1/observations/{id}", params(("id" = Uuid, Path), ReadHeaders),
    responses((status = 200, description = "the observation document", content_type = "application/json"),
              (status = 404, description = "no such observation", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn observation(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, Problem> {
    let key = Key::Doc(Kind::Observation, parse_id(&id)?);
    document(&state, principal, request.headers(), key, "observation").await
}

async fn page(
    state: &QueryState,
    principal: Result<Principal, Problem>,
    headers: &HeaderMap,
    listing: Listing,
    params: &HashMap<String, String>,
) -> Result<Response, Problem> {
    let principal = require(principal, Role::Reader)?;
    let limit = parse_limit(params.get("limit").map(String::as_str))?;
    let after = params
        .get("cursor")
        .map(|c| decode_cursor(listing, c))
        .transpose()?;
    consistency(state, headers).await?;
    let page = state
        .docs
        .replica
        .page(listing, after, limit, principal.studies.as_deref())
        .await
        .map_err(|e| load_problem(e.into()))?;
    // The parent of another study is, to a limited token, no parent at all.
    let visible = page.study_id.is_some_and(|s| principal.may_access_study(s));
    match listing {
        Listing::Studies => {}
        Listing::SubjectsOfStudy(_) if !visible => {
            return Err(Problem::not_found("there is no such study"))
        }
        Listing::ObservationsOfSubject(_) if !visible => {
            return Err(Problem::not_found("there is no such subject"))
        }
        _ => {}
    }
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        pages::body(listing, page.rows, limit),
    )
        .into_response())
}

/// Studies ordered by code.
#[utoipa::path(get, path = "/v1/studies", params(PageParams, ReadHeaders),
    responses((status = 200, description = "`{items, next_cursor}`", content_type = "application/json"),
              (status = 400, description = "a bad limit or cursor", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn list_studies(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    page(&state, principal, &headers, Listing::Studies, &params).await
}

/// A study's subjects ordered by label.
#[utoipa::path(get, path = "/v1/studies/{id}/subjects", params(("id" = Uuid, Path), PageParams, ReadHeaders),
    responses((status = 200, description = "`{items, next_cursor}`", content_type = "application/json"),
              (status = 404, description = "no such study", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn list_subjects(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let listing = Listing::SubjectsOfStudy(parse_id(&id)?);
    page(&state, principal, &headers, listing, &params).await
}

/// A subject's observations ordered by `(observed_at, id)`.
#[utoipa::path(get, path = "/v1/subjects/{id}/observations", params(("id" = Uuid, Path), PageParams, ReadHeaders),
    responses((status = 200, description = "`{items, next_cursor}`", content_type = "application/json"),
              (status = 404, description = "no such subject", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn list_observations(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let listing = Listing::ObservationsOfSubject(parse_id(&id)?);
    page(&state, principal, &headers, listing, &params).await
}

/// Every observation of a study (retracted ones included), one JSON
/// document a line, ordered by `(observed_at, id)`, streamed.
#[utoipa::path(get, path = "/v1/studies/{id}/observations.ndjson", params(("id" = Uuid, Path), ReadHeaders),
    responses((status = 200, description = "NDJSON", content_type = "application/x-ndjson"),
              (status = 404, description = "no such study", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn export_study(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let principal = require(principal, Role::Reader)?;
    let id = parse_id(&id)?;
    let min = consistency(&state, &headers).await?;
    let (found, _) = state
        .docs
        .get(&Key::Doc(Kind::Study, id), min)
        .await
        .map_err(load_problem)?;
    match found {
        Found::Doc(study) if principal.may_access_study(study.study_id) => {}
        _ => return Err(Problem::not_found("there is no such study")),
    }
    let lines = state.docs.replica.export(id);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(lines)),
    )
        .into_response())
}

async fn readyz(State(state): State<Shared>) -> Response {
    let replica = state.freshness.is_up();
    let redis = state.docs.redis.as_ref().map(|r| r.is_up());
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
