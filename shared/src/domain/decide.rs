//! `decide`: the domain rules of the contract as one pure function from
//! (states, command) to new events or a typed refusal, one function per
//! aggregate.

use std::collections::HashSet;

use uuid::Uuid;

use super::command::{Command, MAX_VARIABLES};
use super::events::{
    AggregateKind, DomainEvent, ObservationCorrected, ObservationRecorded, ObservationSigned,
    StudyAmended, StudyRegistered, SubjectRegistered,
};
use super::state::{
    ObservationState, ObservationStatus, StudyState, StudyStatus, SubjectState, SubjectStatus,
};
use super::values::{NewVariable, ObservationValues, SignatureMeaning, Variable};

/// A domain rule of the contract; its name is part of the `422` problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    StudyClosed,
    SubjectWithdrawn,
    ObservationRetracted,
    ReasonRequired,
    NothingChanged,
    UnknownVariable,
    ValueDoesNotFit,
    DuplicateVariable,
    NoValues,
    SelfApproval,
    AlreadySigned,
    AlreadyClosed,
    AlreadyWithdrawn,
}

impl Rule {
    pub const fn name(self) -> &'static str {
        match self {
            Self::StudyClosed => "study-closed",
            Self::SubjectWithdrawn => "subject-withdrawn",
            Self::ObservationRetracted => "observation-retracted",
            Self::ReasonRequired => "reason-required",
            Self::NothingChanged => "nothing-changed",
            Self::UnknownVariable => "unknown-variable",
            Self::ValueDoesNotFit => "value-does-not-fit",
            Self::DuplicateVariable => "duplicate-variable",
            Self::NoValues => "no-values",
            Self::SelfApproval => "two-person-rule",
            Self::AlreadySigned => "already-signed",
            Self::AlreadyClosed => "already-closed",
            Self::AlreadyWithdrawn => "already-withdrawn",
        }
    }
}

/// One field that failed validation, named by its path in the body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DomainError {
    /// A rule of the contract was broken (`422`); `errors` names the fields.
    #[error("{detail}")]
    Rule {
        rule: Rule,
        detail: String,
        errors: Vec<FieldError>,
    },
    /// The aggregate addressed by the command does not exist (`404`).
    #[error("{} {id} does not exist", .kind.as_str())]
    NotFound { kind: AggregateKind, id: Uuid },
    /// The id of a new aggregate is already taken (`409`).
    #[error("{} {id} already exists", .kind.as_str())]
    AlreadyExists { kind: AggregateKind, id: Uuid },
}

impl DomainError {
    fn rule(rule: Rule, detail: impl Into<String>) -> Self {
        Self::Rule {
            rule,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    fn fields(rule: Rule, detail: impl Into<String>, errors: Vec<FieldError>) -> Self {
        Self::Rule {
            rule,
            detail: detail.into(),
            errors,
        }
    }
}

/// The states a decision reads: the written aggregate and those it hangs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct States<'a> {
    pub study: Option<&'a StudyState>,
    pub subject: Option<&'a SubjectState>,
    pub observation: Option<&'a ObservationState>,
}

impl States<'_> {
    /// The study of the state of `kind` among these, for [`Read::id`].
    ///
    /// [`Read::id`]: super::Read::id
    pub fn study_of(&self, kind: AggregateKind) -> Option<Uuid> {
        match kind {
            AggregateKind::Study => self.study.map(|s| s.id),
            AggregateKind::Subject => self.subject.map(|s| s.study_id),
            AggregateKind::Observation => self.observation.map(|o| o.study_id),
        }
    }
}

/// Decides a command against the current states. `actor` is the principal
/// making the command (role checks happen at the edge; the two-person rule
/// is a domain rule and is checked here).
pub fn decide(
    command: &Command,
    actor: &str,
    states: States<'_>,
) -> Result<Vec<DomainEvent>, DomainError> {
    if let Some(reason) = command.reason() {
        if reason.trim().is_empty() {
            return Err(DomainError::fields(
                Rule::ReasonRequired,
                format!("{} must give a non-empty reason", command.name()),
                vec![FieldError::new("reason", "must not be empty")],
            ));
        }
    }
    let event = match command.written().0 {
        AggregateKind::Study => decide_study(command, states.study)?,
        AggregateKind::Subject => decide_subject(command, states)?,
        AggregateKind::Observation => decide_observation(command, actor, states)?,
    };
    Ok(vec![event])
}

/// Registering, amending and closing a study.
fn decide_study(command: &Command, study: Option<&StudyState>) -> Result<DomainEvent, DomainError> {
    match command {
        Command::RegisterStudy(c) => {
            if study.is_some() {
                return Err(DomainError::AlreadyExists {
                    kind: AggregateKind::Study,
                    id: c.study_id,
                });
            }
            check_new_variables(&c.variables, &[], "variables")?;
            Ok(DomainEvent::StudyRegistered(StudyRegistered {
                study_id: c.study_id,
                code: c.code.clone(),
                title: c.title.to_string(),
                principal_investigator: c.principal_investigator.to_string(),
                description: c.description.as_ref().map(ToString::to_string),
                variables: c.variables.iter().map(NewVariable::to_variable).collect(),
            }))
        }
        Command::AmendStudy(c) => {
            let study = open_study(study, c.study_id)?;
            let title = c.title.as_ref().filter(|t| ***t != study.title);
            let description = c
                .description
                .as_ref()
                .filter(|d| study.description.as_deref() != Some(d.as_str()));
            if title.is_none() && description.is_none() && c.add_variables.is_empty() {
                return Err(DomainError::rule(
                    Rule::NothingChanged,
                    "the amendment changes nothing",
                ));
            }
            check_new_variables(&c.add_variables, &study.variables, "add_variables")?;
            Ok(DomainEvent::StudyAmended(StudyAmended {
                title: title.map(ToString::to_string),
                description: description.map(ToString::to_string),
                add_variables: c
                    .add_variables
                    .iter()
                    .map(NewVariable::to_variable)
                    .collect(),
            }))
        }
        _ => {
            let (kind, id) = command.written();
            let study = study.ok_or(DomainError::NotFound { kind, id })?;
            if study.status == StudyStatus::Closed {
                return Err(DomainError::rule(
                    Rule::AlreadyClosed,
                    "the study is already closed",
                ));
            }
            Ok(DomainEvent::StudyClosed)
        }
    }
}

/// Registering and withdrawing a subject.
fn decide_subject(command: &Command, states: States<'_>) -> Result<DomainEvent, DomainError> {
    if let Command::RegisterSubject(c) = command {
        open_study(states.study, c.study_id)?;
        if states.subject.is_some() {
            return Err(DomainError::AlreadyExists {
                kind: AggregateKind::Subject,
                id: c.subject_id,
            });
        }
        return Ok(DomainEvent::SubjectRegistered(SubjectRegistered {
            subject_id: c.subject_id,
            study_id: c.study_id,
            label: c.label.to_string(),
            attributes: c.attributes.as_map().clone(),
        }));
    }
    let (kind, id) = command.written();
    let subject = states.subject.ok_or(DomainError::NotFound { kind, id })?;
    if subject.status == SubjectStatus::Withdrawn {
        return Err(DomainError::rule(
            Rule::AlreadyWithdrawn,
            "the subject is already withdrawn",
        ));
    }
    Ok(DomainEvent::SubjectWithdrawn)
}

/// Recording, correcting, retracting and signing an observation.
fn decide_observation(
    command: &Command,
    actor: &str,
    states: States<'_>,
) -> Result<DomainEvent, DomainError> {
    match command {
        Command::RecordObservation(c) => {
            let subject = states.subject.ok_or(DomainError::NotFound {
                kind: AggregateKind::Subject,
                id: c.subject_id,
            })?;
            let study = open_study(states.study, subject.study_id)?;
            if subject.status == SubjectStatus::Withdrawn {
                return Err(DomainError::rule(
                    Rule::SubjectWithdrawn,
                    "nothing may be added to a withdrawn subject",
                ));
            }
            if states.observation.is_some() {
                return Err(DomainError::AlreadyExists {
                    kind: AggregateKind::Observation,
                    id: c.observation_id,
                });
            }
            check_values(study, &c.values)?;
            Ok(DomainEvent::ObservationRecorded(ObservationRecorded {
                observation_id: c.observation_id,
                study_id: study.id,
                subject_id: subject.id,
                observed_at: c.observed_at,
                values: c.values.to_map(),
                comment: c.comment.as_ref().map(ToString::to_string),
            }))
        }
        Command::CorrectObservation(c) => {
            let observation = live_observation(states.observation, c.observation_id, "corrected")?;
            let study = open_study(states.study, observation.study_id)?;
            check_values(study, &c.values)?;
            if c.values
                .iter()
                .all(|(name, value)| observation.values.get(name.as_str()) == Some(value))
            {
                return Err(DomainError::rule(
                    Rule::NothingChanged,
                    "a correction must change at least one value",
                ));
            }
            Ok(DomainEvent::ObservationCorrected(ObservationCorrected {
                values: c.values.to_map(),
            }))
        }
        Command::SignObservation {
            observation_id,
            meaning,
        } => sign(
            live_observation(states.observation, *observation_id, "signed")?,
            actor,
            *meaning,
        ),
        _ => {
            let id = command.written().1;
            let observation = live_observation(states.observation, id, "retracted again")?;
            open_study(states.study, observation.study_id)?;
            Ok(DomainEvent::ObservationRetracted)
        }
    }
}

/// The two-person rule, and one signature of each meaning per signer.
fn sign(
    observation: &ObservationState,
    actor: &str,
    meaning: SignatureMeaning,
) -> Result<DomainEvent, DomainError> {
    if meaning == SignatureMeaning::Approved && observation.authors.iter().any(|a| a == actor) {
        return Err(DomainError::rule(
            Rule::SelfApproval,
            "an approval needs a signer who neither recorded nor corrected the observation",
        ));
    }
    if observation
        .signatures
        .iter()
        .any(|s| s.signer == actor && s.meaning == meaning)
    {
        return Err(DomainError::rule(
            Rule::AlreadySigned,
            "this signer has already given this signature",
        ));
    }
    Ok(DomainEvent::ObservationSigned(ObservationSigned {
        meaning,
    }))
}

fn open_study(study: Option<&StudyState>, id: Uuid) -> Result<&StudyState, DomainError> {
    let study = study.ok_or(DomainError::NotFound {
        kind: AggregateKind::Study,
        id,
    })?;
    if study.status == StudyStatus::Closed {
        return Err(DomainError::rule(
            Rule::StudyClosed,
            "nothing may be added to a closed study",
        ));
    }
    Ok(study)
}

fn live_observation<'a>(
    observation: Option<&'a ObservationState>,
    id: Uuid,
    verb: &str,
) -> Result<&'a ObservationState, DomainError> {
    let observation = observation.ok_or(DomainError::NotFound {
        kind: AggregateKind::Observation,
        id,
    })?;
    if observation.status == ObservationStatus::Retracted {
        return Err(DomainError::rule(
            Rule::ObservationRetracted,
            format!("a retracted observation cannot be {verb}"),
        ));
    }
    Ok(observation)
}

fn check_new_variables(
    new: &[NewVariable],
    existing: &[Variable],
    field: &str,
) -> Result<(), DomainError> {
    let mut errors = Vec::new();
    let mut names: HashSet<&str> = existing.iter().map(|v| v.name.as_str()).collect();
    if new.len() + existing.len() > MAX_VARIABLES {
        errors.push(FieldError::new(
            field,
            format!("a study has at most {MAX_VARIABLES} variables"),
        ));
    }
    for (i, variable) in new.iter().enumerate() {
        if !names.insert(variable.name.as_str()) {
            errors.push(FieldError::new(
                format!("{field}[{i}].name"),
                format!("variable {} is declared twice", variable.name),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(DomainError::fields(
            Rule::DuplicateVariable,
            "variable names must be unique",
            errors,
        ));
    }
    let errors: Vec<FieldError> = new
        .iter()
        .enumerate()
        .flat_map(|(i, v)| {
            v.check()
                .into_iter()
                .map(move |(f, message)| FieldError::new(format!("{field}[{i}].{f}"), message))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DomainError::fields(
            Rule::ValueDoesNotFit,
            "a variable definition is not valid",
            errors,
        ))
    }
}

fn check_values(study: &StudyState, values: &ObservationValues) -> Result<(), DomainError> {
    if values.is_empty() {
        return Err(DomainError::fields(
            Rule::NoValues,
            "at least one value is needed",
            vec![FieldError::new("values", "must name at least one variable")],
        ));
    }
    let mut unknown = Vec::new();
    let mut misfits = Vec::new();
    for (name, value) in values.iter() {
        match study.variable(name.as_str()) {
            None => unknown.push(FieldError::new(
                format!("values.{name}"),
                "the study declares no such variable",
            )),
            Some(variable) => {
                if let Err(message) = variable.check_value(value) {
                    misfits.push(FieldError::new(format!("values.{name}"), message));
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Err(DomainError::fields(
            Rule::UnknownVariable,
            "an observation may only name variables its study declares",
            unknown,
        ));
    }
    if !misfits.is_empty() {
        return Err(DomainError::fields(
            Rule::ValueDoesNotFit,
            "a value does not fit its variable's kind, range or categories",
            misfits,
        ));
    }
    Ok(())
}
