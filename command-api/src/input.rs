//! Request bodies: the JSON shapes of the contract (unknown fields refused),
//! turned into domain commands. A body that is not JSON is a `400`; JSON of
//! the wrong shape is a `422` naming each offending field.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::{Map, Value};
use shared::domain::{
    AmendStudy, Command, CorrectObservation, FieldError, RecordObservation, RegisterStudy,
    RegisterSubject, SignatureMeaning, StudyCode, Variable, MAX_ATTRIBUTES, MAX_SHORT_TEXT,
    MAX_TEXT,
};
use shared::problem::Problem;
use uuid::Uuid;

/// The command types, by the names the batch endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RegisterStudy,
    AmendStudy,
    CloseStudy,
    RegisterSubject,
    WithdrawSubject,
    RecordObservation,
    CorrectObservation,
    RetractObservation,
    SignObservation,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "RegisterStudy" => Self::RegisterStudy,
            "AmendStudy" => Self::AmendStudy,
            "CloseStudy" => Self::CloseStudy,
            "RegisterSubject" => Self::RegisterSubject,
            "WithdrawSubject" => Self::WithdrawSubject,
            "RecordObservation" => Self::RecordObservation,
            "CorrectObservation" => Self::CorrectObservation,
            "RetractObservation" => Self::RetractObservation,
            "SignObservation" => Self::SignObservation,
            _ => return None,
        })
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterStudyBody {
    study_id: Option<Uuid>,
    code: StudyCode,
    title: String,
    principal_investigator: String,
    description: Option<String>,
    variables: Vec<Variable>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendStudyBody {
    title: Option<String>,
    description: Option<String>,
    add_variables: Option<Vec<Variable>>,
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterSubjectBody {
    subject_id: Option<Uuid>,
    label: String,
    attributes: Option<Map<String, Value>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordObservationBody {
    observation_id: Option<Uuid>,
    observed_at: DateTime<Utc>,
    values: BTreeMap<String, Value>,
    comment: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectObservationBody {
    values: BTreeMap<String, Value>,
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignBody {
    meaning: SignatureMeaning,
}

/// A parsed command, and whether the server made the id of what it creates.
#[derive(Debug)]
pub struct Parsed {
    pub command: Command,
    pub server_made_id: bool,
}

/// Parses the body of a single command addressed to `target`.
pub fn parse_bytes(kind: Kind, target: Option<Uuid>, body: &[u8]) -> Result<Parsed, Problem> {
    let result = match kind {
        Kind::RegisterStudy => from_slice(body).and_then(register_study),
        Kind::AmendStudy => from_slice(body).and_then(|b| amend_study(target, b)),
        Kind::CloseStudy => from_slice(body).map(|b: ReasonBody| close_study(target, b)),
        Kind::RegisterSubject => from_slice(body).and_then(|b| register_subject(target, b)),
        Kind::WithdrawSubject => from_slice(body).map(|b: ReasonBody| withdraw_subject(target, b)),
        Kind::RecordObservation => from_slice(body).and_then(|b| record_observation(target, b)),
        Kind::CorrectObservation => from_slice(body).and_then(|b| correct_observation(target, b)),
        Kind::RetractObservation => {
            from_slice(body).map(|b: ReasonBody| retract_observation(target, b))
        }
        Kind::SignObservation => from_slice(body).map(|b: SignBody| sign_observation(target, b)),
    };
    result.map_err(|e| e.into_problem(body))
}

/// Parses one item of a batch: `{type, target?, ...body}`.
pub fn parse_item(item: Value) -> Result<Parsed, Problem> {
    let Value::Object(mut fields) = item else {
        return Err(Problem::invalid(
            "a batch item must be an object",
            vec![FieldError::new("", "expected an object with a type")],
        ));
    };
    let kind = match fields.remove("type") {
        Some(Value::String(name)) => Kind::parse(&name).ok_or_else(|| {
            Problem::invalid(
                "unknown command type",
                vec![FieldError::new(
                    "type",
                    format!("{name:?} is not a command type"),
                )],
            )
        })?,
        _ => {
            return Err(Problem::invalid(
                "a batch item needs a type",
                vec![FieldError::new("type", "missing or not a string")],
            ))
        }
    };
    let target = match fields.remove("target") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(Uuid::parse_str(&s).map_err(|_| {
            Problem::invalid(
                "the target is not a UUID",
                vec![FieldError::new("target", "must be a UUID")],
            )
        })?),
        Some(_) => {
            return Err(Problem::invalid(
                "the target is not a UUID",
                vec![FieldError::new("target", "must be a UUID string")],
            ))
        }
    };
    let needs_target = !matches!(kind, Kind::RegisterStudy);
    if needs_target && target.is_none() {
        return Err(Problem::invalid(
            "this command needs a target",
            vec![FieldError::new(
                "target",
                "the id the single command would have in its path",
            )],
        ));
    }
    let body = Value::Object(fields);
    let result = match kind {
        Kind::RegisterStudy => from_value(body).and_then(register_study),
        Kind::AmendStudy => from_value(body).and_then(|b| amend_study(target, b)),
        Kind::CloseStudy => from_value(body).map(|b: ReasonBody| close_study(target, b)),
        Kind::RegisterSubject => from_value(body).and_then(|b| register_subject(target, b)),
        Kind::WithdrawSubject => from_value(body).map(|b: ReasonBody| withdraw_subject(target, b)),
        Kind::RecordObservation => from_value(body).and_then(|b| record_observation(target, b)),
        Kind::CorrectObservation => from_value(body).and_then(|b| correct_observation(target, b)),
        Kind::RetractObservation => {
            from_value(body).map(|b: ReasonBody| retract_observation(target, b))
        }
        Kind::SignObservation => from_value(body).map(|b: SignBody| sign_observation(target, b)),
    };
    result.map_err(|e| e.into_problem(b"{}"))
}

/// The envelope of the batch endpoint.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// Up to 1000 items `{type, target?, ...body}`.
    pub commands: Vec<Value>,
}

pub fn parse_batch(body: &[u8]) -> Result<BatchBody, Problem> {
    from_slice(body).map_err(|e| e.into_problem(body))
}

pub enum InputError {
    /// Trailing bytes after the JSON value (400).
    NotJson(serde_json::Error),
    /// Refused by serde: syntax (400) or shape (422).
    Serde(serde_path_to_error::Error<serde_json::Error>),
    /// Refused by the length and shape checks below (422).
    Fields(Vec<FieldError>),
}

impl InputError {
    fn into_problem(self, body: &[u8]) -> Problem {
        match self {
            Self::NotJson(e) => Problem::bad_request(format!("the body is not valid JSON: {e}")),
            Self::Serde(e) => {
                let inner = e.inner();
                let not_json = matches!(
                    inner.classify(),
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof
                ) || serde_json::from_slice::<IgnoredAny>(body).is_err();
                if not_json {
                    return Problem::bad_request(format!("the body is not valid JSON: {inner}"));
                }
                let message = inner.to_string();
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_owned();
                let path = e.path().to_string();
                let field = if path == "." { String::new() } else { path };
                Problem::invalid(
                    "the body does not have the expected shape",
                    vec![FieldError::new(field, message)],
                )
            }
            Self::Fields(errors) => Problem::invalid("some fields are not valid", errors),
        }
    }
}

fn from_slice<T: DeserializeOwned>(body: &[u8]) -> Result<T, InputError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(InputError::Serde)?;
    de.end().map_err(InputError::NotJson)?;
    Ok(value)
}

fn from_value<T: DeserializeOwned>(body: Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize(body).map_err(InputError::Serde)
}

/// Collects length and shape errors of free-text fields.
#[derive(Default)]
struct Checks(Vec<FieldError>);

impl Checks {
    fn required(&mut self, field: &str, value: &str, max: usize) {
        if value.trim().is_empty() {
            self.0.push(FieldError::new(field, "must not be empty"));
        }
        self.optional(field, Some(value), max);
    }

    fn optional(&mut self, field: &str, value: Option<&str>, max: usize) {
        if value.is_some_and(|v| v.len() > max) {
            self.0.push(FieldError::new(
                field,
                format!("must be at most {max} bytes"),
            ));
        }
    }

    fn finish(self, command: Command, server_made_id: bool) -> Result<Parsed, InputError> {
        if self.0.is_empty() {
            Ok(Parsed {
                command,
                server_made_id,
            })
        } else {
            Err(InputError::Fields(self.0))
        }
    }
}

fn new_id(given: Option<Uuid>) -> (Uuid, bool) {
    given.map_or_else(|| (Uuid::now_v7(), true), |id| (id, false))
}

fn target_of(target: Option<Uuid>) -> Uuid {
    // Single commands always have their path id; batch items are checked
    // for a target before they get here.
    target.unwrap_or_default()
}

fn register_study(b: RegisterStudyBody) -> Result<Parsed, InputError> {
    let mut checks = Checks::default();
    checks.required("title", &b.title, MAX_SHORT_TEXT);
    checks.required(
        "principal_investigator",
        &b.principal_investigator,
        MAX_SHORT_TEXT,
    );
    checks.optional("description", b.description.as_deref(), MAX_TEXT);
    let (study_id, server_made_id) = new_id(b.study_id);
    checks.finish(
        Command::RegisterStudy(RegisterStudy {
            study_id,
            code: b.code,
            title: b.title,
            principal_investigator: b.principal_investigator,
            description: b.description,
            variables: b.variables,
        }),
        server_made_id,
    )
}

fn amend_study(target: Option<Uuid>, b: AmendStudyBody) -> Result<Parsed, InputError> {
    let mut checks = Checks::default();
    if let Some(title) = &b.title {
        checks.required("title", title, MAX_SHORT_TEXT);
    }
    checks.optional("description", b.description.as_deref(), MAX_TEXT);
    checks.optional("reason", Some(&b.reason), MAX_TEXT);
    checks.finish(
        Command::AmendStudy(AmendStudy {
            study_id: target_of(target),
            title: b.title,
            description: b.description,
            add_variables: b.add_variables.unwrap_or_default(),
            reason: b.reason,
        }),
        false,
    )
}

fn close_study(target: Option<Uuid>, b: ReasonBody) -> Parsed {
    Parsed {
        command: Command::CloseStudy {
            study_id: target_of(target),
            reason: b.reason,
        },
        server_made_id: false,
    }
}

fn register_subject(target: Option<Uuid>, b: RegisterSubjectBody) -> Result<Parsed, InputError> {
    let mut checks = Checks::default();
    checks.required("label", &b.label, MAX_SHORT_TEXT);
    let attributes = b.attributes.unwrap_or_default();
    if attributes.len() > MAX_ATTRIBUTES {
        checks.0.push(FieldError::new(
            "attributes",
            format!("at most {MAX_ATTRIBUTES} attributes"),
        ));
    }
    for (key, value) in &attributes {
        if key.is_empty() || key.len() > 64 {
            checks.0.push(FieldError::new(
                format!("attributes.{key}"),
                "a name is 1 to 64 bytes",
            ));
        }
        match value {
            Value::Array(_) | Value::Object(_) => checks.0.push(FieldError::new(
                format!("attributes.{key}"),
                "must be a string, number, boolean or null",
            )),
            Value::String(s) if s.len() > 1000 => checks.0.push(FieldError::new(
                format!("attributes.{key}"),
                "must be at most 1000 bytes",
            )),
            _ => {}
        }
    }
    let (subject_id, server_made_id) = new_id(b.subject_id);
    checks.finish(
        Command::RegisterSubject(RegisterSubject {
            study_id: target_of(target),
            subject_id,
            label: b.label,
            attributes,
        }),
        server_made_id,
    )
}

fn withdraw_subject(target: Option<Uuid>, b: ReasonBody) -> Parsed {
    Parsed {
        command: Command::WithdrawSubject {
            subject_id: target_of(target),
            reason: b.reason,
        },
        server_made_id: false,
    }
}

fn record_observation(
    target: Option<Uuid>,
    b: RecordObservationBody,
) -> Result<Parsed, InputError> {
    let mut checks = Checks::default();
    checks.optional("comment", b.comment.as_deref(), MAX_TEXT);
    let (observation_id, server_made_id) = new_id(b.observation_id);
    checks.finish(
        Command::RecordObservation(RecordObservation {
            subject_id: target_of(target),
            observation_id,
            observed_at: b.observed_at,
            values: b.values,
            comment: b.comment,
        }),
        server_made_id,
    )
}

fn correct_observation(
    target: Option<Uuid>,
    b: CorrectObservationBody,
) -> Result<Parsed, InputError> {
    let mut checks = Checks::default();
    checks.optional("reason", Some(&b.reason), MAX_TEXT);
    checks.finish(
        Command::CorrectObservation(CorrectObservation {
            observation_id: target_of(target),
            values: b.values,
            reason: b.reason,
        }),
        false,
    )
}

fn retract_observation(target: Option<Uuid>, b: ReasonBody) -> Parsed {
    Parsed {
        command: Command::RetractObservation {
            observation_id: target_of(target),
            reason: b.reason,
        },
        server_made_id: false,
    }
}

fn sign_observation(target: Option<Uuid>, b: SignBody) -> Parsed {
    Parsed {
        command: Command::SignObservation {
            observation_id: target_of(target),
            meaning: b.meaning,
        },
        server_made_id: false,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn not_json_is_400_and_wrong_shape_is_422_naming_the_field() {
        let p = parse_bytes(Kind::CloseStudy, Some(Uuid::nil()), b"{not json").unwrap_err();
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        let p = parse_bytes(Kind::CloseStudy, Some(Uuid::nil()), br#"{"reason": 5}"#).unwrap_err();
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p.errors[0].field, "reason");
        let p = parse_bytes(
            Kind::CloseStudy,
            Some(Uuid::nil()),
            br#"{"reason": "x", "actor": "me"}"#,
        )
        .unwrap_err();
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(p.errors[0].message.contains("actor"), "{:?}", p.errors);
        let p = parse_bytes(Kind::CloseStudy, Some(Uuid::nil()), b"{}").unwrap_err();
        assert!(p.errors[0].message.contains("reason"), "{:?}", p.errors);
        let p = parse_bytes(Kind::CloseStudy, Some(Uuid::nil()), br#"{"reason": 5"#).unwrap_err();
        assert_eq!(
            p.status,
            StatusCode::BAD_REQUEST,
            "truncated JSON is not JSON"
        );
    }

    #[test]
    fn nested_errors_name_their_path() {
        let body = br#"{"code":"X","title":"t","principal_investigator":"p","variables":[{"name":"a","kind":"colour"}]}"#;
        let p = parse_bytes(Kind::RegisterStudy, None, body).unwrap_err();
        assert_eq!(p.errors[0].field, "variables[0].kind");
        let body = br#"{"study_id":"not-a-uuid","code":"X","title":"t","principal_investigator":"p","variables":[]}"#;
        let p = parse_bytes(Kind::RegisterStudy, None, body).unwrap_err();
        assert_eq!(p.errors[0].field, "study_id");
    }

    #[test]
    fn batch_items_need_a_known_type_and_a_target() {
        assert!(parse_item(serde_json::json!({"type": "Explode"})).is_err());
        assert!(parse_item(serde_json::json!({"type": "CloseStudy", "reason": "r"})).is_err());
        let ok = parse_item(
            serde_json::json!({"type": "CloseStudy", "target": Uuid::nil(), "reason": "r"}),
        );
        assert!(ok.is_ok());
    }
}
