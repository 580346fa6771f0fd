//! The OpenAPI 3.1 document of the command API, generated from the handlers'
//! `utoipa::path` attributes and the request types, served at
//! `/openapi.json`.

use serde::Serialize;
use shared::api_doc::{BearerAuth, ProblemDoc};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::{http, input};

/// Headers every command takes.
#[derive(IntoParams)]
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

/// The answer of a successful command.
#[derive(Serialize, ToSchema)]
pub struct CommandAnswer {
    pub id: Uuid,
    /// The aggregate's version after the command.
    pub version: i64,
    /// Global position of the command's last event (also `Consistency-Token`).
    pub position: i64,
}

/// One item of a batch answer.
#[derive(Serialize, ToSchema)]
pub struct BatchResult {
    /// The status the item alone would have had.
    pub status: u16,
    pub id: Option<Uuid>,
    pub version: Option<i64>,
    pub position: Option<i64>,
    pub problem: Option<ProblemDoc>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Research records: command API",
        description = "Commands on studies, subjects and observations. Every change is an event; \
                       errors are RFC 9457 problems."
    ),
    paths(
        http::register_study,
        http::amend_study,
        http::close_study,
        http::register_subject,
        http::withdraw_subject,
        http::record_observation,
        http::correct_observation,
        http::retract_observation,
        http::sign_observation,
        http::batch
    ),
    components(schemas(
        input::RegisterStudyBody,
        input::AmendStudyBody,
        input::ReasonBody,
        input::RegisterSubjectBody,
        input::RecordObservationBody,
        input::CorrectObservationBody,
        input::SignBody,
        input::BatchBody,
        CommandAnswer,
        BatchAnswer,
        ProblemDoc
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

pub fn document() -> String {
    shared::api_doc::to_json::<ApiDoc>()
}
