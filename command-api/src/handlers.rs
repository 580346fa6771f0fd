//! The command handlers: one per command route, and the batch. Each reads
//! and checks its request's parts at the edge (path id, `If-Match`,
//! `Idempotency-Key`, body), runs the command through the engine, and
//! answers the documented body or a problem.

use std::collections::BTreeMap;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use shared::auth::{Principal, Role};
use shared::problem::Problem;
use shared::store::IdempotencyCompletion;
use uuid::Uuid;

use crate::answers::{json_response, BatchAnswer, BatchResult, CommandAnswer};
use crate::engine::CommandMeta;
use crate::error::ApiError;
use crate::idempotency;
use crate::input::{self, Kind};
use crate::state::{AppState, Shared};

/// Largest accepted body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most commands in one batch.
pub const MAX_BATCH: usize = 1000;

const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Headers every command takes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct CommandHeaders {
    /// `"<version>"`: answer 412 unless the record is at that version.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
    /// Replays the first answer to the same request for 24 h.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: Option<String>,
}

macro_rules! command_route {
    ($(#[$meta:meta])* $name:ident, $kind:expr, path) => {
        $(#[$meta])*
        pub async fn $name(
            State(state): State<Shared>,
            principal: Result<Principal, Problem>,
            Path(id): Path<String>,
            method: Method,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            single(&state, principal, $kind, Some(id), &method, uri.path(), &headers, body).await
        }
    };
    ($(#[$meta:meta])* $name:ident, $kind:expr) => {
        $(#[$meta])*
        pub async fn $name(
            State(state): State<Shared>,
            principal: Result<Principal, Problem>,
            method: Method,
            uri: axum::http::Uri,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            single(&state, principal, $kind, None, &method, uri.path(), &headers, body).await
        }
    };
}

command_route!(
    /// Registers a study with its variables.
    #[utoipa::path(post, path = "/v1/studies", tag = "studies", request_body = input::RegisterStudyBody,
        params(CommandHeaders),
        responses((status = 201, body = crate::answers::CommandAnswer, headers(("Consistency-Token" = i64))),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    register_study, Kind::RegisterStudy
);
command_route!(
    /// Amends a study: title, description, new variables; needs a reason.
    #[utoipa::path(post, path = "/v1/studies/{id}/amendments", tag = "studies", request_body = input::AmendStudyBody,
        params(("id" = Uuid, Path, description = "study id"), CommandHeaders),
        responses((status = 200, body = crate::answers::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    amend_study, Kind::AmendStudy, path
);
command_route!(
    /// Closes a study: its data is locked from then on.
    #[utoipa::path(post, path = "/v1/studies/{id}/closure", tag = "studies", request_body = input::ReasonBody,
        params(("id" = Uuid, Path, description = "study id"), CommandHeaders),
        responses((status = 200, body = crate::answers::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    close_study, Kind::CloseStudy, path
);
command_route!(
    /// Registers a subject in an open study.
    #[utoipa::path(post, path = "/v1/studies/{id}/subjects", tag = "subjects", request_body = input::RegisterSubjectBody,
        params(("id" = Uuid, Path, description = "study id"), CommandHeaders),
        responses((status = 201, body = crate::answers::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    register_subject, Kind::RegisterSubject, path
);
command_route!(
    /// Withdraws a subject; needs a reason.
    #[utoipa::path(post, path = "/v1/subjects/{id}/withdrawal", tag = "subjects", request_body = input::ReasonBody,
        params(("id" = Uuid, Path, description = "subject id"), CommandHeaders),
        responses((status = 200, body = crate::answers::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    withdraw_subject, Kind::WithdrawSubject, path
);
command_route!(
    /// Records an observation of some of the study's variables.
    #[utoipa::path(post, path = "/v1/subjects/{id}/observations", tag = "observations",
        request_body = input::RecordObservationBody,
        params(("id" = Uuid, Path, description = "subject id"), CommandHeaders),
        responses((status = 201, body = crate::answers::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    record_observation, Kind::RecordObservation, path
);
command_route!(
    /// Corrects values of an observation; needs a reason.
    #[utoipa::path(post, path = "/v1/observations/{id}/corrections", tag = "observations",
        request_body = input::CorrectObservationBody,
        params(("id" = Uuid, Path, description = "observation id"), CommandHeaders),
        responses((status = 200, body = crate::answers::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    correct_observation, Kind::CorrectObservation, path
);
command_route!(
    /// Retracts an observation, keeping its values; needs a reason.
    #[utoipa::path(post, path = "/v1/observations/{id}/retraction", tag = "observations", request_body = input::ReasonBody,
        params(("id" = Uuid, Path, description = "observation id"), CommandHeaders),
        responses((status = 200, body = crate::answers::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    retract_observation, Kind::RetractObservation, path
);
command_route!(
    /// Signs an observation (`reviewer` role); approval needs a second person.
    #[utoipa::path(post, path = "/v1/observations/{id}/signatures", tag = "observations", request_body = input::SignBody,
        params(("id" = Uuid, Path, description = "observation id"), CommandHeaders),
        responses((status = 200, body = crate::answers::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    sign_observation, Kind::SignObservation, path
);

/// Reads the body, refusing more than [`MAX_BODY_BYTES`] with a `413`.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Body too large",
            format!("bodies are limited to {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            // `to_bytes` reports the limit as a `LengthLimitError` source.
            let mut source: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = source {
                if s.to_string().contains("length limit exceeded") {
                    return too_large();
                }
                source = s.source();
            }
            Problem::bad_request("the body could not be read")
        })
}

fn parse_if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or("").trim();
    let digits = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    digits
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .map(Some)
        .ok_or_else(|| Problem::bad_request("If-Match must be a version in quotes, such as \"3\""))
}

fn correlation_of(headers: &HeaderMap) -> (String, String) {
    let request_id = headers
        .get(&shared::http::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
    let correlation = headers
        .get(&CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| request_id.clone(), str::to_owned);
    (correlation, request_id)
}

/// The parts of a single command's request, read and checked at the edge.
struct Request {
    target: Option<Uuid>,
    if_match: Option<i64>,
    key: Option<String>,
    bytes: Bytes,
}

impl Request {
    async fn read(
        path_id: Option<String>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Self, Problem> {
        let target =
            match path_id {
                Some(raw) => Some(Uuid::parse_str(&raw).map_err(|_| {
                    Problem::bad_request(format!("{raw:?} in the path is not a UUID"))
                })?),
                None => None,
            };
        Ok(Self {
            target,
            if_match: parse_if_match(headers)?,
            key: idempotency::key_of(headers)?,
            bytes: read_body(headers, body).await?,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn single(
    state: &AppState,
    principal: Result<Principal, Problem>,
    kind: Kind,
    path_id: Option<String>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let principal = match principal.and_then(|p| p.require(kind.role()).map(|()| p)) {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    let request = match Request::read(path_id, headers, body).await {
        Ok(r) => r,
        Err(problem) => return problem.into_response(),
    };
    let authorized = || async {
        // A body that does not parse was refused for that, as it would be now.
        let Ok(parsed) = input::parse_bytes(kind, request.target, &request.bytes) else {
            return Ok(());
        };
        state
            .engine
            .authorize(&parsed.command, &principal, parsed.server_made_id)
            .await
            .map_err(|e| e.to_problem())
    };
    let key = request.key.as_deref();
    let what = (method, path, &request.bytes[..]);
    if let Err(answer) =
        idempotency::claim_or_answer(state, &principal, key, what, authorized).await
    {
        return answer;
    }
    match run_single(state, principal.clone(), kind, &request, headers).await {
        Ok(answer) => answer,
        Err(problem) => {
            if let Some(key) = key {
                let body = problem.to_json().to_string();
                idempotency::settle(state, &principal, key, problem.status, body.as_bytes()).await;
            }
            problem.into_response()
        }
    }
}

/// Parses and runs one command; a successful answer was stored with its
/// events (for an `Idempotency-Key`), a refusal is for the caller to settle.
async fn run_single(
    state: &AppState,
    principal: Principal,
    kind: Kind,
    request: &Request,
    headers: &HeaderMap,
) -> Result<Response, Problem> {
    let parsed = input::parse_bytes(kind, request.target, &request.bytes)?;
    let (correlation_id, causation_id) = correlation_of(headers);
    let status = if parsed.command.creates() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let meta = CommandMeta {
        idempotency: request.key.as_ref().map(|key| IdempotencyCompletion {
            principal: principal.id.to_string(),
            key: key.clone(),
            status: status.as_u16(),
            item: None,
            body: CommandAnswer::bytes,
        }),
        principal,
        if_match: request.if_match,
        correlation_id,
        causation_id,
        server_made_id: parsed.server_made_id,
    };
    let outcome = state.engine.execute(&parsed.command, &meta).await;
    metrics::counter!(
        "commands_total",
        "command" => parsed.command.name(),
        "outcome" => if outcome.is_ok() { "ok" } else { "refused" }
    )
    .increment(1);
    let done = outcome.map_err(|e| e.to_problem())?;
    let body = CommandAnswer::bytes(done.id, done.version, done.position);
    let mut response = json_response(status, body, Some(done.position));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", done.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// Runs up to 1000 commands; each item succeeds or fails on its own.
#[utoipa::path(post, path = "/v1/commands", tag = "batch", request_body = input::BatchBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 200, body = crate::answers::BatchAnswer),
              (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
pub async fn batch(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let principal = match principal {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    if !principal.has(Role::Writer) && !principal.has(Role::Reviewer) {
        return Problem::forbidden("the batch endpoint needs the writer or reviewer role")
            .into_response();
    }
    let prepared = async {
        let key = idempotency::key_of(&headers)?;
        let bytes = read_body(&headers, body).await?;
        Ok::<_, Problem>((key, bytes))
    }
    .await;
    let (key, bytes) = match prepared {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    let authorized = || authorize_batch(&state, &principal, &bytes);
    let what = (&method, uri.path(), &bytes[..]);
    let done =
        match idempotency::claim_or_answer(&state, &principal, key.as_deref(), what, authorized)
            .await
        {
            Ok(done) => done,
            Err(answer) => return answer,
        };
    let run = Batch {
        principal: &principal,
        key: key.as_deref(),
        done,
    };
    let (status, body, position) = match run_batch(&state, run, &headers, &bytes).await {
        Ok(answer) => (StatusCode::OK, answer.bytes(), answer.highest_position()),
        Err(problem) => (
            problem.status,
            problem.to_json().to_string().into_bytes(),
            None,
        ),
    };
    if let Some(key) = &key {
        idempotency::settle(&state, &principal, key, status, &body).await;
    }
    json_response(status, body, position)
}

/// Whether the stored answer of a batch may be shown to `principal`: only
/// when it could make every item of it now (role and study scope); items
/// that do not parse were refused for that, as they would be now.
async fn authorize_batch(
    state: &AppState,
    principal: &Principal,
    bytes: &[u8],
) -> Result<(), Problem> {
    let Ok(batch) = input::parse_batch(bytes) else {
        return Ok(());
    };
    for item in batch.commands.into_iter().take(MAX_BATCH) {
        let Ok(parsed) = input::parse_item(item) else {
            continue;
        };
        let allowed = principal.has(Kind::of(&parsed.command).role())
            && state
                .engine
                .authorize(&parsed.command, principal, parsed.server_made_id)
                .await
                .is_ok();
        if !allowed {
            return Err(Problem::forbidden(
                "the answer stored for this Idempotency-Key holds commands this token may not make",
            ));
        }
    }
    Ok(())
}

/// A batch to run: whose, under which `Idempotency-Key`, and the results
/// of items an earlier holder of the key committed (not run again).
struct Batch<'a> {
    principal: &'a Principal,
    key: Option<&'a str>,
    done: BTreeMap<usize, serde_json::Value>,
}

/// Runs a batch, item by item in order. With an `Idempotency-Key`, each
/// item's result is journaled in the transaction of its events.
async fn run_batch(
    state: &AppState,
    run: Batch<'_>,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<BatchAnswer, Problem> {
    let batch = input::parse_batch(bytes)?;
    if batch.commands.len() > MAX_BATCH {
        return Err(Problem::invalid(
            format!("a batch holds at most {MAX_BATCH} commands"),
            vec![shared::domain::FieldError::new(
                "commands",
                format!("{} commands given", batch.commands.len()),
            )],
        ));
    }
    metrics::histogram!("command_batch_size").record(batch.commands.len() as f64);
    let (correlation_id, request_id) = correlation_of(headers);
    let count = batch.commands.len();
    let mut indexes = Vec::with_capacity(count);
    let mut items: Vec<Result<_, ApiError>> = Vec::with_capacity(count);
    for (index, item) in batch.commands.into_iter().enumerate() {
        if run.done.contains_key(&index) {
            continue;
        }
        indexes.push(index);
        items.push(
            input::parse_item(item)
                .map_err(ApiError::from)
                .and_then(|parsed| {
                    run.principal.require(Kind::of(&parsed.command).role())?;
                    let journal = run.key.map(|key| IdempotencyCompletion {
                        principal: run.principal.id.to_string(),
                        key: key.to_owned(),
                        status: if parsed.command.creates() { 201 } else { 200 },
                        item: Some(index),
                        body: if parsed.command.creates() {
                            BatchResult::created_bytes
                        } else {
                            BatchResult::changed_bytes
                        },
                    });
                    let meta = CommandMeta {
                        principal: run.principal.clone(),
                        if_match: None,
                        correlation_id: correlation_id.clone(),
                        causation_id: format!("{request_id}/{index}"),
                        idempotency: journal,
                        server_made_id: parsed.server_made_id,
                    };
                    Ok((parsed.command, meta))
                }),
        );
    }
    if !run.done.is_empty() {
        tracing::info!(
            resumed = run.done.len(),
            running = indexes.len(),
            "resuming a batch whose earlier holder of the key committed some items"
        );
    }
    let outcomes = state.engine.execute_batch(items).await;
    let mut results: Vec<Option<BatchResult>> = (0..count).map(|_| None).collect();
    for (index, outcome) in indexes.into_iter().zip(outcomes) {
        results[index] = Some(match outcome {
            Ok(done) => BatchResult::executed(&done),
            Err(error) => BatchResult::refused(&error.to_problem()),
        });
    }
    for (index, journaled) in run.done {
        if let Some(slot) = results.get_mut(index) {
            *slot = serde_json::from_value(journaled).ok();
        }
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| BatchResult::refused(&Problem::internal("batch-journal"))))
        .collect();
    Ok(BatchAnswer { results })
}
