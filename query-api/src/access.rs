//! What every handler checks at the edge: the caller's role, an id in the
//! path, a `Consistency-Token` (waited for), and how a failed load is told.

use std::time::Instant;

use axum::http::{HeaderMap, HeaderName};
use shared::auth::{Principal, Role};
use shared::problem::Problem;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use uuid::Uuid;

use crate::documents::LoadError;
use crate::freshness::Reached;
use crate::memory_tier::{Found, Key};
use crate::state::QueryState;

pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

/// Streams and pages are compressed as they go (documents keep their
/// compressed forms instead).
pub fn streaming_compression() -> CompressionLayer {
    CompressionLayer::new().quality(CompressionLevel::Precise(4))
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

/// The position a `Consistency-Token` asks for, if the request has one.
pub fn token(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(raw) = headers.get(CONSISTENCY_TOKEN) else {
        return Ok(None);
    };
    raw.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|p| *p >= 0)
        .map(Some)
        .ok_or_else(|| {
            Problem::bad_request(
                "Consistency-Token must be a position (a non-negative integer) a command returned",
            )
        })
}

/// The position a `Consistency-Token` asks for, once the freshness mark has
/// reached it (-1 without a token): pages and exports, read from the
/// replica, wait for it.
pub async fn consistency(state: &QueryState, headers: &HeaderMap) -> Result<i64, Problem> {
    let Some(position) = token(headers)? else {
        return Ok(-1);
    };
    state
        .freshness
        .reach(position, state.consistency_timeout)
        .await?;
    Ok(position)
}

/// The document under `key`, reflecting the request's `Consistency-Token`
/// if it has one: from Redis as soon as the projector announces a `through`
/// mark there that reaches the token (before the replica has replayed it),
/// or else from any tier once the freshness mark has reached it; within
/// one bound either way.
pub async fn document_at(
    state: &QueryState,
    key: &Key,
    headers: &HeaderMap,
) -> Result<Found, Problem> {
    let Some(position) = token(headers)? else {
        return Ok(state.docs.get(key, -1).await.map_err(load_problem)?.0);
    };
    let started = Instant::now();
    let bound = state.consistency_timeout;
    let reached = state
        .freshness
        .reach_or_announced(position, bound, state.docs.announced())
        .await?;
    if reached == Reached::Announced {
        if let Some(found) = state.docs.get_announced(key, position).await {
            return Ok(found);
        }
        // Redis's mark had not moved that far after all (a batch after a
        // gap is announced before it counts), or it lost the document.
        state
            .freshness
            .reach(position, bound.saturating_sub(started.elapsed()))
            .await?;
    }
    Ok(state.docs.get(key, position).await.map_err(load_problem)?.0)
}

pub fn load_problem(error: LoadError) -> Problem {
    match error {
        LoadError::Unavailable => Problem::unavailable("the read replica cannot be reached"),
        LoadError::Internal(correlation_id) => Problem::internal(&correlation_id),
    }
}
