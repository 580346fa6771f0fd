//! The OpenAPI 3.1 document of the command API, generated from the handlers'
//! `utoipa::path` attributes and the request types, served at
//! `/openapi.json`.

use shared::api_doc::{BearerAuth, ProblemDoc};
use utoipa::OpenApi;

use crate::answers::{BatchAnswer, CommandAnswer};
use crate::{handlers, input};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Research records: command API",
        description = "Commands on studies, subjects and observations. Every change is an event; \
                       errors are RFC 9457 problems."
    ),
    paths(
        handlers::register_study,
        handlers::amend_study,
        handlers::close_study,
        handlers::register_subject,
        handlers::withdraw_subject,
        handlers::record_observation,
        handlers::correct_observation,
        handlers::retract_observation,
        handlers::sign_observation,
        handlers::batch
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
