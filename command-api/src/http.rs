//! The HTTP surface: routes, the single and batch command handlers, health,
//! metrics, and the middleware every request passes (request id, tracing,
//! metrics, timeout, panic guard).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use shared::auth::{Authenticator, HasAuthenticator, Principal, Role};
use shared::problem::Problem;
use shared::store::{command_answer_body, IdempotencyCompletion};
use uuid::Uuid;

use crate::engine::{CommandMeta, Engine, Executed};
use crate::error::ApiError;
use crate::idempotency::{self, Claimed};
use crate::input::{self, Kind};

/// Largest accepted body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most commands in one batch.
pub const MAX_BATCH: usize = 1000;

pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

pub struct AppState {
    pub engine: Engine,
    pub auth: Authenticator,
    pub nats: async_nats::Client,
    /// The outbox publisher's progress (red readiness when it is stuck).
    pub publishing: Arc<shared::loop_health::LoopHealth>,
    /// The checkpointer's progress, when checkpoints are signed.
    pub checkpointing: Option<Arc<shared::loop_health::LoopHealth>>,
    pub request_timeout: Duration,
    pub metrics: Option<shared::telemetry::PrometheusHandle>,
}

impl HasAuthenticator for AppState {
    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

type Shared = Arc<AppState>;

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
        params(crate::openapi::CommandHeaders),
        responses((status = 201, body = crate::openapi::CommandAnswer, headers(("Consistency-Token" = i64))),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    register_study, Kind::RegisterStudy
);
command_route!(
    /// Amends a study: title, description, new variables; needs a reason.
    #[utoipa::path(post, path = "/v1/studies/{id}/amendments", tag = "studies", request_body = input::AmendStudyBody,
        params(("id" = Uuid, Path, description = "study id"), crate::openapi::CommandHeaders),
        responses((status = 200, body = crate::openapi::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    amend_study, Kind::AmendStudy, path
);
command_route!(
    /// Closes a study: its data is locked from then on.
    #[utoipa::path(post, path = "/v1/studies/{id}/closure", tag = "studies", request_body = input::ReasonBody,
        params(("id" = Uuid, Path, description = "study id"), crate::openapi::CommandHeaders),
        responses((status = 200, body = crate::openapi::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    close_study, Kind::CloseStudy, path
);
command_route!(
    /// Registers a subject in an open study.
    #[utoipa::path(post, path = "/v1/studies/{id}/subjects", tag = "subjects", request_body = input::RegisterSubjectBody,
        params(("id" = Uuid, Path, description = "study id"), crate::openapi::CommandHeaders),
        responses((status = 201, body = crate::openapi::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    register_subject, Kind::RegisterSubject, path
);
command_route!(
    /// Withdraws a subject; needs a reason.
    #[utoipa::path(post, path = "/v1/subjects/{id}/withdrawal", tag = "subjects", request_body = input::ReasonBody,
        params(("id" = Uuid, Path, description = "subject id"), crate::openapi::CommandHeaders),
        responses((status = 200, body = crate::openapi::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    withdraw_subject, Kind::WithdrawSubject, path
);
command_route!(
    /// Records an observation of some of the study's variables.
    #[utoipa::path(post, path = "/v1/subjects/{id}/observations", tag = "observations",
        request_body = input::RecordObservationBody,
        params(("id" = Uuid, Path, description = "subject id"), crate::openapi::CommandHeaders),
        responses((status = 201, body = crate::openapi::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    record_observation, Kind::RecordObservation, path
);
command_route!(
    /// Corrects values of an observation; needs a reason.
    #[utoipa::path(post, path = "/v1/observations/{id}/corrections", tag = "observations",
        request_body = input::CorrectObservationBody,
        params(("id" = Uuid, Path, description = "observation id"), crate::openapi::CommandHeaders),
        responses((status = 200, body = crate::openapi::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    correct_observation, Kind::CorrectObservation, path
);
command_route!(
    /// Retracts an observation, keeping its values; needs a reason.
    #[utoipa::path(post, path = "/v1/observations/{id}/retraction", tag = "observations", request_body = input::ReasonBody,
        params(("id" = Uuid, Path, description = "observation id"), crate::openapi::CommandHeaders),
        responses((status = 200, body = crate::openapi::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    retract_observation, Kind::RetractObservation, path
);
command_route!(
    /// Signs an observation (`reviewer` role); approval needs a second person.
    #[utoipa::path(post, path = "/v1/observations/{id}/signatures", tag = "observations", request_body = input::SignBody,
        params(("id" = Uuid, Path, description = "observation id"), crate::openapi::CommandHeaders),
        responses((status = 200, body = crate::openapi::CommandAnswer),
                  (status = "4XX", body = shared::api_doc::ProblemDoc, content_type = "application/problem+json")))]
    sign_observation, Kind::SignObservation, path
);

/// The role a command needs: signing needs `reviewer`, the rest `writer`.
fn required_role(kind: Kind) -> Role {
    if kind == Kind::SignObservation {
        Role::Reviewer
    } else {
        Role::Writer
    }
}

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

/// A key the client sent, checked, or a `400`.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    match headers.get(&IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(key) if idempotency::valid_key(key) => Ok(Some(key.to_owned())),
            _ => Err(Problem::bad_request(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )),
        },
    }
}

fn json_response(status: StatusCode, body: Vec<u8>, position: Option<i64>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(position) = position {
        headers.insert(CONSISTENCY_TOKEN, HeaderValue::from(position));
    }
    response
}

fn replay(status: u16, body: Vec<u8>) -> Response {
    let position = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("position").and_then(Value::as_i64));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, body, position.filter(|_| status.is_success()));
    response.headers_mut().insert(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static("true"),
    );
    response
}

/// Claims the key (when there is one), or answers for it. A stored answer
/// is replayed only once `authorized` says this token may make the request
/// now (its roles and studies may have changed since).
async fn claim_key<F, Fut>(
    state: &AppState,
    principal: &Principal,
    key: Option<&str>,
    method: &Method,
    path: &str,
    body: &[u8],
    authorized: F,
) -> Result<(), Response>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), Problem>>,
{
    let Some(key) = key else { return Ok(()) };
    let hash = idempotency::request_hash(method.as_str(), path, body);
    let lease = state.request_timeout + Duration::from_secs(30);
    match idempotency::claim(state.engine.store.pool(), &principal.id, key, &hash, lease).await {
        Ok(Claimed::Fresh) => Ok(()),
        Ok(Claimed::Replay { status, body }) => match authorized().await {
            Ok(()) => Err(replay(status, body)),
            Err(problem) => Err(problem.into_response()),
        },
        Ok(Claimed::Mismatch) => Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "this Idempotency-Key was used with a different request in the last 24 hours",
        )
        .into_response()),
        Ok(Claimed::InFlight) => Err(Problem::new(
            StatusCode::CONFLICT,
            "idempotency-key-in-flight",
            "Request in flight",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        )
        .retry_after(1)
        .into_response()),
        Err(e) => Err(ApiError::Internal(e).into_response()),
    }
}

/// Stores a refusal as the key's answer, or releases the key after a fault.
async fn settle_key(state: &AppState, principal: &Principal, key: &str, problem: &Problem) {
    let pool = state.engine.store.pool();
    let outcome = if problem.status.is_server_error() {
        idempotency::release(pool, &principal.id, key).await
    } else {
        idempotency::complete(
            pool,
            &principal.id,
            key,
            problem.status.as_u16(),
            problem.to_json().to_string().as_bytes(),
        )
        .await
    };
    if let Err(error) = outcome {
        tracing::warn!(
            error = format!("{error:#}"),
            "could not settle an idempotency key"
        );
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
    let principal = match principal {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    if let Err(problem) = principal.require(required_role(kind)) {
        return problem.into_response();
    }
    let prepared = async {
        let target =
            match path_id {
                Some(raw) => Some(Uuid::parse_str(&raw).map_err(|_| {
                    Problem::bad_request(format!("{raw:?} in the path is not a UUID"))
                })?),
                None => None,
            };
        let if_match = parse_if_match(headers)?;
        let key = idempotency_key(headers)?;
        let bytes = read_body(headers, body).await?;
        Ok::<_, Problem>((target, if_match, key, bytes))
    }
    .await;
    let (target, if_match, key, bytes) = match prepared {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    let authorized = || async {
        // A body that does not parse was refused for that, as it would be now.
        let Ok(parsed) = input::parse_bytes(kind, target, &bytes) else {
            return Ok(());
        };
        state
            .engine
            .authorize(&parsed.command, &principal, parsed.server_made_id)
            .await
            .map_err(|e| e.to_problem())
    };
    if let Err(response) = claim_key(
        state,
        &principal,
        key.as_deref(),
        method,
        path,
        &bytes,
        authorized,
    )
    .await
    {
        return response;
    }
    let parsed = match input::parse_bytes(kind, target, &bytes) {
        Ok(p) => p,
        Err(problem) => {
            if let Some(key) = &key {
                settle_key(state, &principal, key, &problem).await;
            }
            return problem.into_response();
        }
    };
    let (correlation_id, causation_id) = correlation_of(headers);
    let status = if parsed.command.creates() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let meta = CommandMeta {
        idempotency: key.as_ref().map(|key| IdempotencyCompletion {
            principal: principal.id.to_string(),
            key: key.clone(),
            status: status.as_u16(),
        }),
        principal,
        if_match,
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
    match outcome {
        Ok(done) => {
            let mut response = json_response(
                status,
                command_answer_body(done.id, done.version, done.position),
                Some(done.position),
            );
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", done.version)) {
                response.headers_mut().insert(header::ETAG, etag);
            }
            response
        }
        Err(error) => {
            let problem = error.to_problem();
            if let Some(key) = &key {
                settle_key(state, &meta.principal, key, &problem).await;
            }
            problem.into_response()
        }
    }
}

/// Runs up to 1000 commands; each item succeeds or fails on its own.
#[utoipa::path(post, path = "/v1/commands", tag = "batch", request_body = input::BatchBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first answer for 24 h")),
    responses((status = 200, body = crate::openapi::BatchAnswer),
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
        let key = idempotency_key(&headers)?;
        let bytes = read_body(&headers, body).await?;
        Ok::<_, Problem>((key, bytes))
    }
    .await;
    let (key, bytes) = match prepared {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    let authorized = || authorize_batch(&state, &principal, &bytes);
    if let Err(response) = claim_key(
        &state,
        &principal,
        key.as_deref(),
        &method,
        uri.path(),
        &bytes,
        authorized,
    )
    .await
    {
        return response;
    }
    let answer = run_batch(&state, &principal, &headers, &bytes).await;
    let (status, body, position) = match answer {
        Ok((body, position)) => (StatusCode::OK, body, position),
        Err(problem) => (
            problem.status,
            problem.to_json().to_string().into_bytes(),
            None,
        ),
    };
    if let Some(key) = &key {
        let pool = state.engine.store.pool();
        let stored = if status.is_server_error() {
            idempotency::release(pool, &principal.id, key).await
        } else {
            idempotency::complete(pool, &principal.id, key, status.as_u16(), &body).await
        };
        if let Err(error) = stored {
            tracing::warn!(
                error = format!("{error:#}"),
                "could not settle an idempotency key"
            );
        }
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
        let allowed = principal.has(role_of(&parsed.command))
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

/// The role a parsed command needs.
fn role_of(command: &shared::domain::Command) -> Role {
    if matches!(command, shared::domain::Command::SignObservation { .. }) {
        Role::Reviewer
    } else {
        Role::Writer
    }
}

/// Runs a batch; answers the body of `{results}` and the highest position.
async fn run_batch(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<(Vec<u8>, Option<i64>), Problem> {
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
    let items: Vec<Result<_, ApiError>> = batch
        .commands
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let parsed = input::parse_item(item)?;
            principal.require(role_of(&parsed.command))?;
            Ok((
                parsed.command,
                CommandMeta {
                    principal: principal.clone(),
                    if_match: None,
                    correlation_id: correlation_id.clone(),
                    causation_id: format!("{request_id}/{index}"),
                    idempotency: None,
                    server_made_id: parsed.server_made_id,
                },
            ))
        })
        .collect();
    let outcomes = state.engine.execute_batch(items).await;
    let mut highest = None;
    let results: Vec<Value> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Ok(Executed {
                id,
                version,
                position,
                created,
            }) => {
                highest = highest.max(Some(position));
                let status = if created { 201 } else { 200 };
                json!({"status": status, "id": id, "version": version, "position": position})
            }
            Err(error) => {
                let problem = error.to_problem();
                json!({"status": problem.status.as_u16(), "problem": problem.to_json()})
            }
        })
        .collect();
    Ok((
        json!({ "results": results }).to_string().into_bytes(),
        highest,
    ))
}
