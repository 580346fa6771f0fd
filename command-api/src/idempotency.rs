//! Durable `Idempotency-Key` handling, scoped to the principal: a key is
//! claimed before the command runs, and completed with the answer (in the
//! append transaction for single commands, so a committed command and its
//! stored answer cannot part). A crashed holder's claim lapses after a lease.
//!
//! The steps a handler takes, in order: [`key_of`] (the header, checked),
//! [`claim_or_answer`] (run the command, or answer for the key), then
//! [`settle`] when the command was not appended with its answer.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use shared::auth::Principal;
use shared::problem::Problem;
use sqlx::PgPool;

use crate::answers::json_response;
use crate::error::ApiError;
use crate::state::AppState;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The key a client sent, checked, or a `400`.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    match headers.get(&IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(key) if valid_key(key) => Ok(Some(key.to_owned())),
            _ => Err(Problem::bad_request(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            )),
        },
    }
}

/// Claims the key (when there is one): `Ok` to run the command, or the
/// answer for the key. A stored answer is replayed only once `authorized`
/// says this token may make the request now (its roles and studies may
/// have changed since).
pub async fn claim_or_answer<Fut>(
    state: &AppState,
    principal: &Principal,
    key: Option<&str>,
    (method, path, body): (&Method, &str, &[u8]),
    authorized: impl FnOnce() -> Fut,
) -> Result<BTreeMap<usize, serde_json::Value>, Response>
where
    Fut: Future<Output = Result<(), Problem>>,
{
    let Some(key) = key else {
        return Ok(BTreeMap::new());
    };
    let hash = request_hash(method.as_str(), path, body);
    let lease = state.request_timeout + Duration::from_secs(30);
    match claim(state.engine.store.pool(), &principal.id, key, &hash, lease).await {
        Ok(Claimed::Fresh { done }) => Ok(done),
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

/// Stores an answer that was not stored with events (a refusal, a batch),
/// or releases the key after a fault so that a retry runs again.
pub async fn settle(
    state: &AppState,
    principal: &Principal,
    key: &str,
    status: StatusCode,
    body: &[u8],
) {
    let pool = state.engine.store.pool();
    let outcome = if status.is_server_error() {
        release(pool, &principal.id, key).await
    } else {
        complete(pool, &principal.id, key, status.as_u16(), body).await
    };
    if let Err(error) = outcome {
        tracing::warn!(
            error = format!("{error:#}"),
            "could not settle an idempotency key"
        );
    }
}

/// A stored answer, sent again with `Idempotent-Replayed`.
fn replay(status: u16, body: Vec<u8>) -> Response {
    let position = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("position").and_then(serde_json::Value::as_i64));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, body, position.filter(|_| status.is_success()));
    response.headers_mut().insert(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static("true"),
    );
    response
}

/// How long an answer is replayed.
pub const RETENTION: &str = "24 hours";

/// `(request_hash, status, body)` of a stored key.
type StoredKey = (Vec<u8>, Option<i16>, Option<Vec<u8>>);

pub enum Claimed {
    /// The key is ours: run the command. `done` holds the results of the
    /// items of a batch that an earlier holder committed before it died
    /// (by the item's index): they are not run again.
    Fresh {
        done: BTreeMap<usize, serde_json::Value>,
    },
    /// The first answer, to send again byte for byte.
    Replay { status: u16, body: Vec<u8> },
    /// The key was used with another request.
    Mismatch,
    /// The first request with this key is still running.
    InFlight,
}

/// Checks a client's key: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Fingerprint of a request: method, path and body bytes.
pub fn request_hash(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(path.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().to_vec()
}

pub async fn claim(
    pool: &PgPool,
    principal: &str,
    key: &str,
    hash: &[u8],
    lease: Duration,
) -> anyhow::Result<Claimed> {
    for _ in 0..3 {
        // An expired key starts afresh; a lapsed lease on the same request
        // is taken over with the batch items its holder committed.
        let won: Option<(Option<serde_json::Value>,)> = sqlx::query_as(
            "INSERT INTO idempotency_keys (principal, key, request_hash, lease_until) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
             ON CONFLICT (principal, key) DO UPDATE \
               SET request_hash = EXCLUDED.request_hash, status = NULL, body = NULL, \
                   progress = CASE WHEN idempotency_keys.created_at < now() - interval '24 hours' \
                                   THEN NULL ELSE idempotency_keys.progress END, \
                   created_at = now(), lease_until = EXCLUDED.lease_until \
               WHERE idempotency_keys.created_at < now() - interval '24 hours' \
                  OR (idempotency_keys.status IS NULL AND idempotency_keys.lease_until < now() \
                      AND idempotency_keys.request_hash = EXCLUDED.request_hash) \
             RETURNING progress",
        )
        .bind(principal)
        .bind(key)
        .bind(hash)
        .bind(lease.as_secs_f64())
        .fetch_optional(pool)
        .await
        .context("claiming an idempotency key")?;
        if let Some((progress,)) = won {
            return Ok(Claimed::Fresh {
                done: items_done(progress),
            });
        }
        let row: Option<StoredKey> = sqlx::query_as(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE principal = $1 AND key = $2",
        )
        .bind(principal)
        .bind(key)
        .fetch_optional(pool)
        .await
        .context("reading an idempotency key")?;
        match row {
            // Released between the two statements: try to claim it again.
            None => continue,
            Some((stored, _, _)) if stored != hash => return Ok(Claimed::Mismatch),
            Some((_, Some(status), Some(body))) => {
                return Ok(Claimed::Replay {
                    status: u16::try_from(status).unwrap_or(500),
                    body,
                })
            }
            Some(_) => return Ok(Claimed::InFlight),
        }
    }
    Ok(Claimed::InFlight)
}

/// Stores the answer of a command that did not append (a refusal).
async fn complete(
    pool: &PgPool,
    principal: &str,
    key: &str,
    status: u16,
    body: &[u8],
) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, body = $4 WHERE principal = $1 AND key = $2",
    )
    .bind(principal)
    .bind(key)
    .bind(i16::try_from(status).unwrap_or(500))
    .bind(body)
    .execute(pool)
    .await
    .context("completing an idempotency key")?;
    Ok(())
}

/// The journaled results of a batch's items, by index.
fn items_done(progress: Option<serde_json::Value>) -> BTreeMap<usize, serde_json::Value> {
    let Some(serde_json::Value::Object(items)) = progress else {
        return BTreeMap::new();
    };
    items
        .into_iter()
        .filter_map(|(index, result)| Some((index.parse().ok()?, result)))
        .collect()
}

/// Gives a claim up after a fault, so that a retry runs the command again:
/// the key is forgotten, or, when batch items were committed under it, its
/// lease ends now (a retry resumes the batch).
async fn release(pool: &PgPool, principal: &str, key: &str) -> anyhow::Result<()> {
    sqlx::query(
        "WITH forgotten AS ( \
           DELETE FROM idempotency_keys \
           WHERE principal = $1 AND key = $2 AND status IS NULL AND progress IS NULL \
         ) UPDATE idempotency_keys SET lease_until = now() \
           WHERE principal = $1 AND key = $2 AND status IS NULL AND progress IS NOT NULL",
    )
    .bind(principal)
    .bind(key)
    .execute(pool)
    .await
    .context("releasing an idempotency key")?;
    Ok(())
}

/// Deletes answers older than the retention; run periodically.
pub async fn purge_expired(pool: &PgPool) -> anyhow::Result<u64> {
    let done =
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
            .execute(pool)
            .await
            .context("purging expired idempotency keys")?;
    Ok(done.rows_affected())
}
