//! The reader's endpoints: single documents (strong ETag, `304`, content
//! codings kept per document), pages, and the streamed study export, each
//! as of a `Consistency-Token` when one is given. Every error is an RFC
//! 9457 problem.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use shared::auth::{Principal, Role};
use shared::problem::Problem;
use tokio_stream::wrappers::ReceiverStream;

use crate::access::{consistency, document_at, load_problem, parse_id, require};
use crate::encoding::{negotiate, Coding, MIN_COMPRESSED};
use crate::memory_tier::{Doc, Found, Key, Kind};
use crate::pages::{self, decode_cursor, parse_limit};
use crate::replica::Listing;
use crate::state::{QueryState, Shared};

async fn document(
    state: &QueryState,
    principal: Result<Principal, Problem>,
    headers: &HeaderMap,
    key: Key,
    what: &str,
) -> Result<Response, Problem> {
    let principal = require(principal, Role::Reader)?;
    let found = document_at(state, &key, headers).await?;
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
        state.docs.grew(key, doc, body.len());
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
        .page(listing, after, limit, principal.studies.as_deref())
        .await
        .map_err(load_problem)?;
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
    let lines = state.docs.export(id);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ReceiverStream::new(lines)),
    )
        .into_response())
}
