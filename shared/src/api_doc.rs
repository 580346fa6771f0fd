//! Pieces of the services' OpenAPI documents they share: the problem
//! schema and the bearer security scheme.

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// An RFC 9457 problem (see docs/problems.md).
#[derive(Serialize, ToSchema)]
pub struct ProblemDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub errors: Option<Vec<FieldErrorDoc>>,
    /// For a broken domain rule, its name.
    pub rule: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct FieldErrorDoc {
    pub field: String,
    pub message: String,
}

/// Declares the bearer JWT scheme the operations name.
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document of `T` as JSON text.
pub fn to_json<T: OpenApi>() -> String {
    T::openapi().to_json().unwrap_or_else(|_| "{}".to_owned())
}
