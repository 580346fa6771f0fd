//! What every handler checks at the edge: the caller's role, an id in the
//! path, a `Consistency-Token` (waited for), and how a failed load is told.

use axum::http::{HeaderMap, HeaderName};
use shared::auth::{Principal, Role};
use shared::problem::Problem;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use uuid::Uuid;

use crate::documents::LoadError;
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

/// The position a `Consistency-Token` asks for, once it is visible (-1
/// without a token).
pub async fn consistency(state: &QueryState, headers: &HeaderMap) -> Result<i64, Problem> {
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
