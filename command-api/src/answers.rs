//! The bodies of successful answers, as the OpenAPI document declares them:
//! the bytes sent (and stored for an `Idempotency-Key`) are these types,
//! serialized, so the document cannot drift from what is sent.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shared::problem::Problem;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::engine::Executed;

pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

/// The answer of a successful command.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandAnswer {
    pub id: Uuid,
    /// The aggregate's version after the command.
    pub version: i64,
    /// Global position of the command's last event (also `Consistency-Token`).
    pub position: i64,
}

impl CommandAnswer {
    /// The JSON bytes of the answer to a command that wrote `version` of
    /// `id`, its last event at `position` (a plain function, so that the
    /// event store can make the stored answer inside its transaction).
    pub fn bytes(id: Uuid, version: i64, position: i64) -> Vec<u8> {
        to_bytes(&Self {
            id,
            version,
            position,
        })
    }
}

/// One item of a batch answer: an answer or a problem.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// The status the item alone would have had.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<shared::api_doc::ProblemDoc>)]
    pub problem: Option<serde_json::Value>,
}

impl BatchResult {
    pub fn executed(done: &Executed) -> Self {
        Self {
            status: if done.created { 201 } else { 200 },
            id: Some(done.id),
            version: Some(done.version),
            position: Some(done.position),
            problem: None,
        }
    }

    /// The result of an item that created `id` (for the event store to
    /// journal with the item's events; a plain function, as
    /// [`CommandAnswer::bytes`]).
    pub fn created_bytes(id: Uuid, version: i64, position: i64) -> Vec<u8> {
        Self::written_bytes(id, version, position, true)
    }

    /// The result of an item that changed `id`.
    pub fn changed_bytes(id: Uuid, version: i64, position: i64) -> Vec<u8> {
        Self::written_bytes(id, version, position, false)
    }

    fn written_bytes(id: Uuid, version: i64, position: i64, created: bool) -> Vec<u8> {
        to_bytes(&Self::executed(&Executed {
            id,
            version,
            position,
            created,
        }))
    }

    pub fn refused(problem: &Problem) -> Self {
        Self {
            status: problem.status.as_u16(),
            id: None,
            version: None,
            position: None,
            problem: Some(problem.to_json()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

impl BatchAnswer {
    /// The highest position any item wrote (the batch's `Consistency-Token`).
    pub fn highest_position(&self) -> Option<i64> {
        self.results.iter().filter_map(|r| r.position).max()
    }

    pub fn bytes(&self) -> Vec<u8> {
        to_bytes(self)
    }
}

fn to_bytes(answer: &impl Serialize) -> Vec<u8> {
    // Plain structs of ids, numbers and JSON values always serialize.
    serde_json::to_vec(answer).unwrap_or_default()
}

/// A JSON answer (a problem's media type when it is not a success), with
/// the `Consistency-Token` of `position` when one is given.
pub fn json_response(status: StatusCode, body: Vec<u8>, position: Option<i64>) -> Response {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_serialize_as_documented() {
        let id = Uuid::nil();
        assert_eq!(
            CommandAnswer::bytes(id, 3, 42),
            format!(r#"{{"id":"{id}","version":3,"position":42}}"#).into_bytes()
        );
        let answer = BatchAnswer {
            results: vec![
                BatchResult::executed(&Executed {
                    id,
                    version: 1,
                    position: 7,
                    created: true,
                }),
                BatchResult::refused(&Problem::forbidden("no")),
            ],
        };
        let value: serde_json::Value = serde_json::from_slice(&answer.bytes()).unwrap();
        assert_eq!(
            value["results"][0],
            serde_json::json!({"status": 201, "id": id, "version": 1, "position": 7})
        );
        assert_eq!(value["results"][1]["status"], 403);
        assert_eq!(value["results"][1]["problem"]["status"], 403);
        assert!(value["results"][1].get("id").is_none());
        assert_eq!(answer.highest_position(), Some(7));
    }
}
