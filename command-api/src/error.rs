//! `ApiError`: every way a command can fail, mapped to one RFC 9457 problem.
//! Unexpected faults are logged with their cause under a correlation id and
//! answered as an opaque `500`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shared::domain::DomainError;
use shared::problem::Problem;
use shared::store::{outage, AppendError};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0:?}")]
    Problem(Box<Problem>),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error("the aggregate is at version {current}, not {expected}")]
    PreconditionFailed { current: i64, expected: i64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<Problem> for ApiError {
    fn from(p: Problem) -> Self {
        Self::Problem(Box::new(p))
    }
}

impl ApiError {
    pub fn to_problem(&self) -> Problem {
        match self {
            Self::Problem(p) => (**p).clone(),
            Self::Domain(DomainError::Rule {
                rule,
                detail,
                errors,
            }) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                rule.name(),
                "A domain rule forbids this command",
                detail.clone(),
            )
            .with("rule", rule.name())
            .with_errors(errors.clone()),
            Self::Domain(e @ DomainError::NotFound { .. }) => Problem::not_found(e.to_string()),
            Self::Domain(e @ DomainError::AlreadyExists { .. }) => Problem::new(
                StatusCode::CONFLICT,
                "already-exists",
                "Already exists",
                e.to_string(),
            ),
            Self::Append(AppendError::Conflict { .. } | AppendError::GuardChanged { .. }) => {
                Problem::new(
                    StatusCode::CONFLICT,
                    "concurrent-write",
                    "A concurrent command won the race",
                    "another command changed this record first; read it again and retry",
                )
            }
            Self::Append(AppendError::ClaimTaken { scope, key }) => Problem::new(
                StatusCode::CONFLICT,
                "code-taken",
                "Already taken",
                format!("{} {key:?} is already taken", scope.as_str()),
            ),
            Self::Append(AppendError::Refused { correlation_id }) => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused-by-event-store",
                "The event store refused this command",
                "the event store refused to store this command's data; nothing of it was written",
            )
            .with("correlation_id", correlation_id.clone()),
            Self::Append(AppendError::Closed) => {
                Problem::unavailable("the service is shutting down")
            }
            Self::Append(AppendError::Store(fault)) => {
                internal_or_unavailable(&format!("{fault:#}"), outage::is_unavailable(&fault.cause))
            }
            Self::PreconditionFailed { current, expected } => Problem::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "The record has another version",
                format!(
                    "If-Match asked for version {expected}, the record is at version {current}"
                ),
            )
            .with("current_version", *current),
            Self::Internal(cause) => internal_or_unavailable(
                &format!("{cause:#}"),
                outage::chain_is_unavailable(cause.as_ref()),
            ),
        }
    }
}

/// A database that cannot serve now (`outage`: unreachable, restarting, out
/// of connections or space) is a `503` the client may retry; any other fault
/// is a `500`. Both are logged with their cause, which the client never sees.
fn internal_or_unavailable(cause: &str, unavailable: bool) -> Problem {
    let correlation_id = Uuid::now_v7().to_string();
    if unavailable {
        tracing::warn!(correlation_id, cause, "the event store cannot serve");
    } else {
        tracing::error!(correlation_id, cause, "command failed");
    }
    if unavailable {
        Problem::unavailable("the event store cannot be reached; retry shortly")
            .with("correlation_id", correlation_id)
    } else {
        Problem::internal(&correlation_id)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.to_problem().into_response()
    }
}
