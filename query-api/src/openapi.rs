//! The OpenAPI 3.1 document of the query API, generated from the handlers'
//! `utoipa::path` attributes, served at `/openapi.json`.

use shared::api_doc::{BearerAuth, ProblemDoc};
use utoipa::OpenApi;

use crate::{audit, reads};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Research records: query API",
        description = "Precomputed documents of studies, subjects and observations, pages and \
                       exports (reader role), and the audit of the event log (auditor role). \
                       Errors are RFC 9457 problems."
    ),
    paths(
        reads::list_studies,
        reads::study,
        reads::study_by_code,
        reads::list_subjects,
        reads::export_study,
        reads::subject,
        reads::list_observations,
        reads::observation,
        audit::events,
        audit::stream_events,
        audit::observation_as_of,
        audit::head,
        audit::verify,
        audit::checkpoint,
        audit::log_key,
        audit::inclusion,
        audit::consistency,
        audit::receipt,
        audit::tile
    ),
    components(schemas(ProblemDoc)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

pub fn document() -> String {
    shared::api_doc::to_json::<ApiDoc>()
}
