//! Request bodies: the JSON shapes of the contract (unknown fields refused),
//! turned into domain commands. Every text is parsed here, once, into the
//! domain's value objects (`shared::domain::text`). A body that is not UTF-8
//! JSON is a `400`; JSON of the wrong shape or with a value that breaks a
//! field's rule is a `422` naming the field.

use chrono::{DateTime, Utc};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::Value;
use shared::auth::Role;
use shared::domain::text::excerpt;
use shared::domain::{
    AmendStudy, Attributes, Command, CorrectObservation, FieldError, FreeText, Label, NewVariable,
    ObservationValues, PersonName, Reason, RecordObservation, RegisterStudy, RegisterSubject,
    SignatureMeaning, StudyCode,
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

    /// The kind of a parsed command.
    pub fn of(command: &Command) -> Self {
        match command {
            Command::RegisterStudy(_) => Self::RegisterStudy,
            Command::AmendStudy(_) => Self::AmendStudy,
            Command::CloseStudy { .. } => Self::CloseStudy,
            Command::RegisterSubject(_) => Self::RegisterSubject,
            Command::WithdrawSubject { .. } => Self::WithdrawSubject,
            Command::RecordObservation(_) => Self::RecordObservation,
            Command::CorrectObservation(_) => Self::CorrectObservation,
            Command::RetractObservation { .. } => Self::RetractObservation,
            Command::SignObservation { .. } => Self::SignObservation,
        }
    }

    /// The role the command needs: signing needs `reviewer`, the rest
    /// `writer`.
    pub fn role(self) -> Role {
        if self == Self::SignObservation {
            Role::Reviewer
        } else {
            Role::Writer
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterStudyBody {
    study_id: Option<Uuid>,
    code: StudyCode,
    title: FreeText,
    principal_investigator: PersonName,
    description: Option<FreeText>,
    variables: Vec<NewVariable>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendStudyBody {
    title: Option<FreeText>,
    description: Option<FreeText>,
    add_variables: Option<Vec<NewVariable>>,
    reason: Reason,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    reason: Reason,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterSubjectBody {
    subject_id: Option<Uuid>,
    label: Label,
    attributes: Option<Attributes>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordObservationBody {
    observation_id: Option<Uuid>,
    observed_at: DateTime<Utc>,
    values: ObservationValues,
    comment: Option<FreeText>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CorrectObservationBody {
    values: ObservationValues,
    reason: Reason,
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
    check_utf8(body)?;
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
                    format!("{:?} is not a command type", excerpt(&name)),
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
    check_utf8(body)?;
    from_slice(body).map_err(|e| e.into_problem(body))
}

/// A body must be UTF-8 throughout (RFC 8259 §8.1), strings included:
/// judged before any field, so that bad bytes are a `400` wherever they are.
fn check_utf8(body: &[u8]) -> Result<(), Problem> {
    std::str::from_utf8(body).map(|_| ()).map_err(|e| {
        Problem::bad_request(format!(
            "the body is not UTF-8 (invalid bytes at offset {})",
            e.valid_up_to()
        ))
    })
}

pub enum InputError {
    /// Trailing bytes after the JSON value (400).
    NotJson(serde_json::Error),
    /// Refused by serde: not JSON (400) or not the shape (422).
    Serde(serde_path_to_error::Error<serde_json::Error>),
    /// Refused by the checks below (422).
    Fields(Vec<FieldError>),
}

impl InputError {
    fn into_problem(self, body: &[u8]) -> Problem {
        match self {
            Self::NotJson(e) => Problem::bad_request(format!("the body is not valid JSON: {e}")),
            Self::Serde(e) => {
                let inner = e.inner();
                // Whether the body is JSON at all is a question of its
                // syntax alone: serde reports some shape errors (an array
                // where an enum's name belongs) as syntax errors.
                if let Err(syntax) = serde_json::from_slice::<IgnoredAny>(body) {
                    return Problem::bad_request(format!("the body is not valid JSON: {syntax}"));
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

/// Collects the errors of fields that must say something (bounds and
/// characters were checked by their types).
#[derive(Default)]
struct Checks(Vec<FieldError>);

impl Checks {
    fn required(&mut self, field: &str, value: &str) {
        if value.trim().is_empty() {
            self.0.push(FieldError::new(field, "must not be blank"));
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
    checks.required("title", &b.title);
    checks.required("principal_investigator", &b.principal_investigator);
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
        checks.required("title", title);
    }
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
    checks.required("label", &b.label);
    let attributes = b.attributes.unwrap_or_default();
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
    let (observation_id, server_made_id) = new_id(b.observation_id);
    Checks::default().finish(
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
    Checks::default().finish(
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
    fn json_of_the_wrong_type_for_an_enum_is_422_not_400() {
        for body in [
            &br#"{"meaning": null}"#[..],
            br#"{"meaning": ["approved"]}"#,
            br#"{"meaning": {"approved": 1}}"#,
            br#"{"meaning": 3}"#,
        ] {
            let p = parse_bytes(Kind::SignObservation, Some(Uuid::nil()), body).unwrap_err();
            assert_eq!(
                p.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(p.errors[0].field.starts_with("meaning"), "{:?}", p.errors);
        }
    }

    #[test]
    fn deep_nesting_is_a_shape_error_and_past_128_levels_refused() {
        // Where a string belongs, an array is the wrong shape, however deep.
        let deep = format!(r#"{{"reason": {}1{}}}"#, "[".repeat(200), "]".repeat(200));
        let p = parse_bytes(Kind::CloseStudy, Some(Uuid::nil()), deep.as_bytes()).unwrap_err();
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.detail);
        assert_eq!(p.errors[0].field, "reason");
        // Where any value is taken, the parser stops at 128 levels.
        let batch = format!(
            r#"{{"commands": [{}1{}]}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let p = parse_batch(batch.as_bytes()).err().expect("refused");
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.detail);
    }

    #[test]
    fn invalid_utf8_is_400_wherever_it_is() {
        let mut body = br#"{"unknown": 1, "reason": "bad "#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe]);
        body.extend_from_slice(br#""}"#);
        let p = parse_bytes(Kind::CloseStudy, Some(Uuid::nil()), &body).unwrap_err();
        assert_eq!(p.status, StatusCode::BAD_REQUEST);
        assert!(parse_batch(&body).is_err_and(|p| p.status == StatusCode::BAD_REQUEST));
    }

    #[test]
    fn every_text_is_checked_and_named_when_refused() {
        let cases: [(Kind, &[u8], &str); 7] = [
            (Kind::RegisterSubject, br#"{"label": "poison\u0000label"}"#, "label"),
            (Kind::RegisterSubject, br#"{"label": "ok", "attributes": {"k\u0001": 1}}"#, "attributes"),
            (Kind::RetractObservation, br#"{"reason": "nul \u0000"}"#, "reason"),
            (Kind::CloseStudy, br#"{"reason": "esc \u001b[31m"}"#, "reason"),
            (
                Kind::RecordObservation,
                br#"{"observed_at": "2007-11-11T00:00:00Z", "values": {"x": "a\u0000"}}"#,
                "values",
            ),
            (
                Kind::RecordObservation,
                br#"{"observed_at": "2007-11-11T00:00:00Z", "values": {"x": 1}, "comment": "\u0007"}"#,
                "comment",
            ),
            (
                Kind::RegisterStudy,
                br#"{"code": "C", "title": "t", "principal_investigator": "p", "variables": [{"name": "s", "kind": "categorical", "categories": ["a\u0000"]}]}"#,
                "variables[0].categories[0]",
            ),
        ];
        for (kind, body, field) in cases {
            let p = parse_bytes(kind, Some(Uuid::nil()), body).unwrap_err();
            assert_eq!(
                p.status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{field}: {}",
                p.detail
            );
            assert_eq!(p.errors[0].field, field, "{:?}", p.errors);
        }
        let long_reason = format!(r#"{{"reason": "{}"}}"#, "r".repeat(16 * 1024 + 1));
        let p =
            parse_bytes(Kind::CloseStudy, Some(Uuid::nil()), long_reason.as_bytes()).unwrap_err();
        assert_eq!(p.errors[0].field, "reason");
        let ok = parse_bytes(
            Kind::CloseStudy,
            Some(Uuid::nil()),
            br#"{"reason": "two\nlines\tand a tab"}"#,
        );
        assert!(ok.is_ok());
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
