//! The auditor's endpoints: the event log as CloudEvents NDJSON streamed
//! page by page in constant memory, one aggregate's events, an observation
//! replayed as of a time, the head to pin, and verification of the hash
//! chain over a range. They read the event store on the replica.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;
use shared::auth::{Principal, Role};
use shared::domain::{apply, AggregateState};
use shared::envelope::StoredEvent;
use shared::merkle::{self, Subtrees as _, Wanted};
use shared::problem::Problem;
use shared::projection::ObservationView;
use shared::receipt::{InclusionProof, Receipt};
use shared::store::{event_from_row, EventStore, EVENT_COLUMNS};
use shared::verify::Verifier;
use sqlx::postgres::PgRow;
use sqlx::PgPool;
use uuid::Uuid;

use crate::access::{parse_id, require, streaming_compression};
use crate::proofs::SignedHead;
use crate::state::{QueryState, Shared};

/// Events read per page while streaming.
const PAGE: i64 = 1000;
/// Largest `limit` of one export.
pub const MAX_EXPORT: i64 = 100_000_000;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/v1/audit/events",
            get(events).layer(streaming_compression()),
        )
        .route(
            "/v1/audit/streams/{id}/events",
            get(stream_events).layer(streaming_compression()),
        )
        .route("/v1/audit/observations/{id}", get(observation_as_of))
        .route("/v1/audit/head", get(head))
        .route("/v1/audit/verify", get(verify))
        .route("/v1/audit/checkpoint", get(checkpoint))
        .route("/v1/audit/log-key", get(log_key))
        .route("/v1/audit/proof/inclusion", get(inclusion))
        .route("/v1/audit/proof/consistency", get(consistency))
        .route("/v1/audit/observations/{id}/receipt", get(receipt))
        .route("/v1/audit/log/checkpoint", get(checkpoint))
        .route("/v1/audit/log/tile/{*path}", get(tile))
        .layer(axum::middleware::map_response(no_store))
}

/// Audit answers (the log itself, and what proves it) are kept by no cache.
async fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

fn auditor(principal: Result<Principal, Problem>) -> Result<Principal, Problem> {
    require(principal, Role::Auditor)
}

/// An auditor whose token is not limited to some studies: what speaks for
/// the whole log (its head, the chain over a range) is not for the others.
fn unlimited_auditor(principal: Result<Principal, Problem>) -> Result<Principal, Problem> {
    let principal = auditor(principal)?;
    if principal.studies.is_some() {
        return Err(Problem::forbidden(
            "this speaks for the whole log: it needs an auditor token not limited to some studies",
        ));
    }
    Ok(principal)
}

/// The study of an aggregate's stream, if it has one and the principal may
/// see it; otherwise the `404` an unknown stream gets.
async fn visible_stream(
    state: &QueryState,
    principal: &Principal,
    id: Uuid,
) -> Result<Uuid, Problem> {
    let study: Option<Uuid> = sqlx::query_scalar(
        "SELECT study_id FROM events WHERE aggregate_id = $1 ORDER BY stream_version LIMIT 1",
    )
    .bind(id)
    .fetch_optional(pool(state))
    .await
    .map_err(internal)?;
    study
        .filter(|s| principal.may_access_study(*s))
        .ok_or_else(|| Problem::not_found(format!("there is no stream {id}")))
}

fn pool(state: &QueryState) -> &PgPool {
    state.docs.pool()
}

fn int_param(
    params: &HashMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, Problem> {
    match params.get(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                Problem::bad_request(format!("{name} must be an integer from {min} to {max}"))
            }),
    }
}

/// A replica that cannot serve now is a `503` with `Retry-After`; any other
/// fault an opaque `500` whose cause is logged under its correlation id.
fn internal<E: std::fmt::Display + 'static>(error: E) -> Problem {
    let database = (&error as &dyn std::any::Any).downcast_ref::<sqlx::Error>();
    if database.is_some_and(shared::store::outage::is_unavailable) {
        tracing::warn!(%error, "the read replica cannot serve");
        return Problem::unavailable("the read replica cannot be reached");
    }
    let correlation_id = Uuid::now_v7().to_string();
    tracing::error!(correlation_id, %error, "audit read failed");
    Problem::internal(&correlation_id)
}

/// NDJSON of `pages`, one page in memory at a time.
fn ndjson<S>(pages: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(pages),
    )
        .into_response()
}

fn lines(events: &[StoredEvent]) -> Bytes {
    let mut out = String::new();
    for e in events {
        out.push_str(&e.to_cloud_event());
        out.push('\n');
    }
    Bytes::from(out)
}

/// The log in global order, CloudEvents 1.0 JSON a line, streamed.
#[utoipa::path(get, path = "/v1/audit/events",
    params(("after" = Option<i64>, Query, description = "position to start after (0)"),
           ("limit" = Option<i64>, Query, description = "most events (1000; up to 100 000 000)")),
    responses((status = 200, description = "NDJSON", content_type = "application/x-ndjson")),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let principal = auditor(principal)?;
    let after = int_param(&params, "after", 0, 0, i64::MAX)?;
    let limit = int_param(&params, "limit", 1000, 1, MAX_EXPORT)?;
    let pool = pool(&state).clone();
    // A limited auditor gets the events of its studies only.
    let studies = principal.studies.clone();
    let pages = futures::stream::unfold((after, limit), move |(after, left)| {
        let (pool, studies) = (pool.clone(), studies.clone());
        async move {
            if left <= 0 {
                return None;
            }
            let page = match &studies {
                None => EventStore::read_after(&pool, after, PAGE.min(left)).await,
                Some(studies) => read_after_in(&pool, studies, after, PAGE.min(left)).await,
            };
            match page {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let last = page.last().map_or(after, |e| e.position);
                    Some((Ok(lines(&page)), (last, left - page.len() as i64)))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), (after, 0))),
            }
        }
    });
    Ok(ndjson(pages))
}

/// Up to `limit` events of `studies` after `after`, in position order.
async fn read_after_in(
    pool: &PgPool,
    studies: &[Uuid],
    after: i64,
    limit: i64,
) -> sqlx::Result<Vec<StoredEvent>> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE study_id = ANY($1) AND position > $2 \
         ORDER BY position LIMIT $3"
    );
    sqlx::query(&sql)
        .bind(studies)
        .bind(after)
        .bind(limit)
        .try_map(|row: PgRow| event_from_row(&row))
        .fetch_all(pool)
        .await
}

/// One aggregate's events in order, as NDJSON.
#[utoipa::path(get, path = "/v1/audit/streams/{id}/events", params(("id" = Uuid, Path)),
    responses((status = 200, description = "NDJSON", content_type = "application/x-ndjson")),
    security(("bearer" = [])))]
pub async fn stream_events(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let principal = auditor(principal)?;
    let id = parse_id(&id)?;
    visible_stream(&state, &principal, id).await?;
    let pool = pool(&state).clone();
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = $1 AND stream_version > $2 \
         ORDER BY stream_version LIMIT $3"
    );
    let pages = futures::stream::unfold(0i64, move |version| {
        let (pool, sql) = (pool.clone(), sql.clone());
        async move {
            let page = sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .bind(PAGE)
                .try_map(|row: PgRow| event_from_row(&row))
                .fetch_all(&pool)
                .await;
            match page {
                Ok(page) if page.is_empty() => None,
                Ok(page) => {
                    let last = page.last().map_or(version, |e| e.stream_version);
                    Some((Ok(lines(&page)), last))
                }
                Err(e) => Some((Err(std::io::Error::other(e)), i64::MAX)),
            }
        }
    });
    Ok(ndjson(pages))
}

/// The observation replayed from its events recorded at or before `as_of`
/// (now when absent).
#[utoipa::path(get, path = "/v1/audit/observations/{id}",
    params(("id" = Uuid, Path), ("as_of" = Option<String>, Query, description = "RFC 3339 time")),
    responses((status = 200, description = "the observation document", content_type = "application/json"),
              (status = 404, description = "not recorded by then", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn observation_as_of(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let principal = auditor(principal)?;
    let id = parse_id(&id)?;
    let as_of = match params.get("as_of") {
        None => Utc::now(),
        Some(raw) => DateTime::parse_from_rfc3339(raw)
            .map_err(|_| Problem::bad_request("as_of must be an RFC 3339 time"))?
            .with_timezone(&Utc),
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = $1 AND recorded_at <= $2 ORDER BY stream_version"
    );
    let events = sqlx::query(&sql)
        .bind(id)
        .bind(as_of)
        .try_map(|row: PgRow| event_from_row(&row))
        .fetch_all(pool(&state))
        .await
        .map_err(internal)?;
    let mut observation = None;
    for e in &events {
        let event = e.domain_event().map_err(internal)?;
        observation = Some(apply(observation, &event, &e.meta()).map_err(internal)?);
    }
    match (observation, events.last()) {
        (Some(AggregateState::Observation(o)), Some(last))
            if principal.may_access_study(o.study_id) =>
        {
            let body = ObservationView {
                state: o,
                position: last.position,
            }
            .document();
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        _ => Err(Problem::not_found(format!(
            "no observation {id} was recorded by {}",
            as_of.to_rfc3339()
        ))),
    }
}

/// The newest event's position and hash, to pin.
#[utoipa::path(get, path = "/v1/audit/head",
    responses((status = 200, description = "`{position, hash}`", content_type = "application/json")),
    security(("bearer" = [])))]
pub async fn head(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
) -> Result<Response, Problem> {
    unlimited_auditor(principal)?;
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            .fetch_optional(pool(&state))
            .await
            .map_err(internal)?;
    let (position, hash) = row.unwrap_or((0, vec![0; 32]));
    Ok(Json(json!({"position": position, "hash": hex::encode(hash)})).into_response())
}

/// Recomputes the hash chain over an inclusive range of positions.
#[utoipa::path(get, path = "/v1/audit/verify",
    params(("from" = Option<i64>, Query), ("to" = Option<i64>, Query)),
    responses((status = 200, description = "`{verified, checked, first_bad_position?, reason?}`", content_type = "application/json")),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    unlimited_auditor(principal)?;
    let from = int_param(&params, "from", 1, 1, i64::MAX)?;
    let to = int_param(&params, "to", i64::MAX, 1, i64::MAX)?;
    if to < from {
        return Err(Problem::bad_request("to must not be below from"));
    }
    let mut verifier = if from == 1 {
        Verifier::new(None)
    } else {
        let prev: Option<(Vec<u8>,)> =
            sqlx::query_as("SELECT hash FROM events WHERE position = $1")
                .bind(from - 1)
                .fetch_optional(pool(&state))
                .await
                .map_err(internal)?;
        let hash = prev
            .and_then(|(h,)| h.try_into().ok())
            .ok_or_else(|| Problem::bad_request(format!("the log has no position {}", from - 1)))?;
        Verifier::starting_after(from - 1, hash)
    };
    let mut after = from - 1;
    let mut failure = None;
    'pages: while after < to {
        let page = EventStore::read_after(pool(&state), after, PAGE.min(to - after))
            .await
            .map_err(internal)?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for e in &page {
            if let Err(f) = verifier.check(e) {
                failure = Some(f);
                break 'pages;
            }
        }
        after = last;
    }
    let body = match failure {
        None => json!({"verified": true, "checked": verifier.checked()}),
        Some(f) => json!({"verified": false, "checked": verifier.checked(),
                          "first_bad_position": f.position, "reason": f.reason}),
    };
    Ok(Json(body).into_response())
}

/// The newest signed checkpoint (at most a second old), if any.
async fn newest_checkpoint(state: &QueryState) -> Result<Option<Arc<SignedHead>>, Problem> {
    state.proofs.newest(pool(state)).await.map_err(internal)
}

fn text_plain(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// The newest signed checkpoint of the log's Merkle tree (a C2SP signed
/// note).
#[utoipa::path(get, path = "/v1/audit/checkpoint",
    responses((status = 200, description = "the signed note", content_type = "text/plain"),
              (status = 404, description = "no checkpoint signed yet", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn checkpoint(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
) -> Result<Response, Problem> {
    auditor(principal)?;
    let head = newest_checkpoint(&state)
        .await?
        .ok_or_else(|| Problem::not_found("no checkpoint of the log has been signed yet"))?;
    Ok(text_plain(head.note.clone()))
}

/// The verifier key of the checkpoints (`<name>+<key id>+<base64 key>`).
#[utoipa::path(get, path = "/v1/audit/log-key",
    responses((status = 200, description = "the verifier key", content_type = "text/plain"),
              (status = 404, description = "no key configured", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn log_key(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
) -> Result<Response, Problem> {
    auditor(principal)?;
    let key = state
        .log_key
        .as_ref()
        .ok_or_else(|| Problem::not_found("this service is given no log verifier key"))?;
    Ok(text_plain(format!("{}\n", key.to_text())))
}

/// The size of the newest checkpoint, which bounds the trees proofs are
/// given for (`404` beyond it).
async fn signed_size(state: &QueryState) -> Result<i64, Problem> {
    Ok(newest_checkpoint(state).await?.map_or(0, |head| head.size))
}

fn beyond_checkpoint(size: i64) -> Problem {
    Problem::not_found(format!(
        "no checkpoint covers a tree of {size} events yet; ask for the newest checkpoint's size or less"
    ))
}

/// The RFC 9162 inclusion proof of the event at `position` in the tree of
/// `tree_size` events.
#[utoipa::path(get, path = "/v1/audit/proof/inclusion",
    params(("position" = i64, Query), ("tree_size" = i64, Query)),
    responses((status = 200, description = "`{position, tree_size, leaf_hash, hashes}`", content_type = "application/json")),
    security(("bearer" = [])))]
pub async fn inclusion(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let principal = auditor(principal)?;
    let position = int_param(&params, "position", 0, 1, i64::MAX)?;
    let tree_size = int_param(&params, "tree_size", 0, 1, i64::MAX)?;
    if position == 0 || tree_size == 0 {
        return Err(Problem::bad_request(
            "position and tree_size are both needed",
        ));
    }
    if position > tree_size {
        return Err(Problem::bad_request(
            "the position is outside a tree of that size",
        ));
    }
    if tree_size > signed_size(&state).await? {
        return Err(beyond_checkpoint(tree_size));
    }
    // Another study's event is, to a limited auditor, no event at all.
    if principal.studies.is_some() {
        let study: Option<Uuid> =
            sqlx::query_scalar("SELECT study_id FROM events WHERE position = $1")
                .bind(position)
                .fetch_optional(pool(&state))
                .await
                .map_err(internal)?;
        if !study.is_some_and(|s| principal.may_access_study(s)) {
            return Err(Problem::not_found(format!(
                "there is no event at position {position}"
            )));
        }
    }
    let mut proofs = inclusion_proofs(&state, &[position], tree_size).await?;
    Ok(Json(proofs.remove(0)).into_response())
}

/// The inclusion proofs of the events at `positions` in the tree of
/// `tree_size` events, from the tiles they need (in memory, or read in one
/// statement); each names its leaf hash, taken from the tree.
async fn inclusion_proofs(
    state: &QueryState,
    positions: &[i64],
    tree_size: i64,
) -> Result<Vec<InclusionProof>, Problem> {
    let size = tree_size as u64;
    let mut wanted = Wanted::default();
    for &position in positions {
        let index = position as u64 - 1;
        let _ = merkle::inclusion_proof(&mut wanted, index, size);
        let _ = wanted.complete(0, index);
    }
    let mut tiles = state
        .proofs
        .tiles(pool(state), &wanted.0, size)
        .await
        .map_err(internal)?;
    positions
        .iter()
        .map(|&position| {
            let index = position as u64 - 1;
            let hashes = merkle::inclusion_proof(&mut tiles, index, size).map_err(internal)?;
            let leaf = tiles.complete(0, index).map_err(internal)?;
            Ok(InclusionProof {
                position,
                tree_size: size,
                leaf_hash: hex::encode(leaf),
                hashes: hex_all(&hashes),
            })
        })
        .collect()
}

fn hex_all(hashes: &[shared::merkle::Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

/// The RFC 9162 consistency proof between the trees of `from` and `to`
/// events.
#[utoipa::path(get, path = "/v1/audit/proof/consistency",
    params(("from" = i64, Query), ("to" = i64, Query)),
    responses((status = 200, description = "`{from, to, hashes}`", content_type = "application/json")),
    security(("bearer" = [])))]
pub async fn consistency(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    auditor(principal)?;
    let from = int_param(&params, "from", 0, 1, i64::MAX)?;
    let to = int_param(&params, "to", 0, 1, i64::MAX)?;
    if from == 0 || to == 0 || from > to {
        return Err(Problem::bad_request(
            "from and to are both needed, from at most to",
        ));
    }
    if to > signed_size(&state).await? {
        return Err(beyond_checkpoint(to));
    }
    let (old, new) = (from as u64, to as u64);
    let mut wanted = Wanted::default();
    let _ = merkle::consistency_proof(&mut wanted, old, new);
    let mut tiles = state
        .proofs
        .tiles(pool(&state), &wanted.0, new)
        .await
        .map_err(internal)?;
    let proof = merkle::consistency_proof(&mut tiles, old, new).map_err(internal)?;
    Ok(Json(json!({"from": from, "to": to, "hashes": hex_all(&proof)})).into_response())
}

/// One document that proves an observation's history offline: its events
/// (CloudEvents), one inclusion proof per event against the newest
/// checkpoint, that checkpoint's signed note and the verifier key.
#[utoipa::path(get, path = "/v1/audit/observations/{id}/receipt", params(("id" = Uuid, Path)),
    responses((status = 200, description = "`{observation_id, checkpoint, log_key, events, proofs}`", content_type = "application/json"),
              (status = 404, description = "no such observation under a checkpoint", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn receipt(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let principal = auditor(principal)?;
    let id = parse_id(&id)?;
    let unknown = || Problem::not_found(format!("no checkpoint covers an observation {id}"));
    let head = newest_checkpoint(&state).await?.ok_or_else(unknown)?;
    let size = head.size;
    // By the stream's index alone (a bound on `position` in the statement
    // tempts the planner into scanning the whole primary key); the events
    // beyond the checkpoint are left out here.
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = $1 ORDER BY stream_version"
    );
    let mut events = sqlx::query(&sql)
        .bind(id)
        .try_map(|row: PgRow| event_from_row(&row))
        .fetch_all(pool(&state))
        .await
        .map_err(internal)?;
    events.retain(|e| e.position <= size);
    // Another study's observation is, to a limited auditor, none at all.
    let visible = events.first().is_some_and(|e| {
        e.aggregate_type == "observation" && principal.may_access_study(e.study_id)
    });
    if !visible {
        return Err(unknown());
    }
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    let proofs = inclusion_proofs(&state, &positions, size).await?;
    let mut cloud_events = Vec::with_capacity(events.len());
    for e in &events {
        let raw = serde_json::value::RawValue::from_string(e.to_cloud_event()).map_err(internal)?;
        cloud_events.push(raw);
    }
    // The events go out as their CloudEvents text, byte for byte, so that
    // a verifier in any language can take each `data` as it was hashed.
    Ok(Json(Receipt {
        observation_id: id,
        checkpoint: head.note.clone(),
        log_key: state.log_key.as_ref().map(|k| k.to_text()),
        events: cloud_events,
        proofs,
    })
    .into_response())
}

/// A tile path of C2SP `tlog-tiles` below `tile/`: `<L>/<N>[.p/<W>]` for
/// the hashes of level `L`, `entries/<N>[.p/<W>]` for an entry bundle; `N`
/// in three-digit elements, all but the last prefixed with `x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePath {
    /// `None` for an entry bundle.
    pub level: Option<u8>,
    pub n: u64,
    /// Hashes (or entries) in it: 256 for a full tile.
    pub width: usize,
}

impl TilePath {
    pub fn parse(path: &str) -> Option<Self> {
        let (head, rest) = path.split_once('/')?;
        let level = if head == "entries" {
            None
        } else {
            let level: u8 = head.parse().ok().filter(|l| *l < 64)?;
            Some((head == level.to_string()).then_some(level)?)
        };
        let (index, width) = match rest.split_once(".p/") {
            Some((index, w)) => {
                let w: usize = w.parse().ok().filter(|w| (1..256).contains(w))?;
                (w.to_string() == rest.split_once(".p/")?.1).then_some((index, w))?
            }
            None => (rest, shared::merkle::TILE_WIDTH as usize),
        };
        let elements: Vec<&str> = index.split('/').collect();
        let (last, leading) = elements.split_last()?;
        let three = |e: &str| e.len() == 3 && e.bytes().all(|b| b.is_ascii_digit());
        let mut n: u64 = 0;
        for element in leading {
            let digits = element.strip_prefix('x').filter(|d| three(d))?;
            n = n.checked_mul(1000)?.checked_add(digits.parse().ok()?)?;
        }
        if !three(last) || leading.len() > 6 || (!leading.is_empty() && leading[0] == "x000") {
            return None;
        }
        n = n.checked_mul(1000)?.checked_add(last.parse().ok()?)?;
        Some(Self { level, n, width })
    }
}

/// A tile or entry bundle of the log's Merkle tree in the C2SP
/// `tlog-tiles` layout (tile height 8), so that standard tlog clients can
/// check proofs themselves. A full tile never changes; a partial one
/// (`.p/<W>`) is served when the tree holds at least its `W` hashes. Tiles
/// hold hashes only, as consistency proofs do; entry bundles (each entry
/// the 32-byte chain hash of an event, after a two-byte length) speak for
/// every study's events and need an unlimited auditor.
#[utoipa::path(get, path = "/v1/audit/log/tile/{path}", params(("path" = String, Path)),
    responses((status = 200, description = "the tile's hashes, or the entry bundle", content_type = "application/octet-stream"),
              (status = 404, description = "no such tile in the tree", body = shared::api_doc::ProblemDoc)),
    security(("bearer" = [])))]
pub async fn tile(
    State(state): State<Shared>,
    principal: Result<Principal, Problem>,
    Path(path): Path<String>,
) -> Result<Response, Problem> {
    let tile = TilePath::parse(&path);
    match tile {
        Some(TilePath { level: None, .. }) => unlimited_auditor(principal)?,
        _ => auditor(principal)?,
    };
    let tile = tile.ok_or_else(|| {
        Problem::not_found("not a tile path: <level>/<N>[.p/<width>] or entries/<N>[.p/<width>]")
    })?;
    let absent = || Problem::not_found("the tree holds no such tile");
    let width = tile.width;
    let body: Vec<u8> = match tile.level {
        Some(level) => {
            let hashes: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT hashes FROM merkle_tiles WHERE level = $1 AND n = $2")
                    .bind(i16::from(level))
                    .bind(i64::try_from(tile.n).map_err(|_| absent())?)
                    .fetch_optional(pool(&state))
                    .await
                    .map_err(internal)?;
            let mut hashes = hashes
                .filter(|h| h.len() >= width * 32)
                .ok_or_else(absent)?;
            hashes.truncate(width * 32);
            hashes
        }
        None => {
            let first = tile
                .n
                .checked_mul(shared::merkle::TILE_WIDTH)
                .and_then(|f| i64::try_from(f).ok())
                .ok_or_else(absent)?;
            // Entries exist only for leaves the stored tree holds.
            let hashes: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT e.hash FROM events e, merkle_tree t \
                 WHERE e.position > $1 AND e.position <= $1 + $2 AND e.position <= t.size \
                 ORDER BY e.position",
            )
            .bind(first)
            .bind(width as i64)
            .fetch_all(pool(&state))
            .await
            .map_err(internal)?;
            if hashes.len() != width {
                return Err(absent());
            }
            let mut bundle = Vec::with_capacity(width * 34);
            for hash in hashes {
                bundle.extend_from_slice(&(hash.len() as u16).to_be_bytes());
                bundle.extend_from_slice(&hash);
            }
            bundle
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::TilePath;

    #[test]
    fn tile_paths_parse_as_tlog_tiles_writes_them() {
        let t = |level, n, width| Some(TilePath { level, n, width });
        assert_eq!(TilePath::parse("0/000"), t(Some(0), 0, 256));
        assert_eq!(
            TilePath::parse("1/x001/x234/067"),
            t(Some(1), 1_234_067, 256)
        );
        assert_eq!(TilePath::parse("2/005.p/3"), t(Some(2), 5, 3));
        assert_eq!(
            TilePath::parse("entries/x001/000.p/255"),
            t(None, 1000, 255)
        );
        for bad in [
            "",
            "0",
            "0/",
            "0/1",
            "0/0000",
            "0/x001",
            "0/001/002",
            "00/000",
            "64/000",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/03",
            "0/x000/001",
            "-1/000",
            "a/000",
            "entries/000.p/",
            "0/000.p/1/2",
        ] {
            assert_eq!(TilePath::parse(bad), None, "{bad:?}");
        }
    }
}
