//! Aggregate states and `apply`: folding events, in stream order, into the
//! state a decision needs. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::events::{AggregateKind, DomainEvent};
use super::values::{SignatureMeaning, StudyCode, Variable};

/// Who, when and why of one event: the part of the envelope `apply` reads.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMeta {
    pub actor: String,
    pub recorded_at: DateTime<Utc>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudyStatus {
    Open,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyState {
    pub id: Uuid,
    pub code: StudyCode,
    pub title: String,
    pub principal_investigator: String,
    pub description: Option<String>,
    pub status: StudyStatus,
    pub variables: Vec<Variable>,
    pub version: i64,
}

impl StudyState {
    pub fn variable(&self, name: &str) -> Option<&Variable> {
        self.variables.iter().find(|v| v.name.as_str() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectStatus {
    Active,
    Withdrawn,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectState {
    pub id: Uuid,
    pub study_id: Uuid,
    pub label: String,
    pub attributes: Map<String, Value>,
    pub status: SubjectStatus,
    pub version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservationStatus {
    Recorded,
    Corrected,
    Retracted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub signer: String,
    pub meaning: SignatureMeaning,
    pub signed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationState {
    pub id: Uuid,
    pub study_id: Uuid,
    pub subject_id: Uuid,
    pub observed_at: DateTime<Utc>,
    pub values: BTreeMap<String, Value>,
    pub original_values: BTreeMap<String, Value>,
    pub comment: Option<String>,
    pub status: ObservationStatus,
    pub corrections: u32,
    /// The signatures in force: a correction voids the earlier ones.
    pub signatures: Vec<Signature>,
    pub recorded_by: String,
    pub recorded_at: DateTime<Utc>,
    /// Who recorded or corrected the values, each once (an approval needs
    /// a signer who is none of them).
    #[serde(default)]
    pub authors: Vec<String>,
    pub last_changed_by: String,
    pub last_changed_at: DateTime<Utc>,
    pub last_change_reason: Option<String>,
    pub version: i64,
}

impl ObservationState {
    /// Whether the observation counts (it is not retracted).
    pub fn is_live(&self) -> bool {
        self.status != ObservationStatus::Retracted
    }
}

/// The state of any aggregate, for code that handles the three alike.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateState {
    Study(StudyState),
    Subject(SubjectState),
    Observation(ObservationState),
}

impl AggregateState {
    pub fn version(&self) -> i64 {
        match self {
            Self::Study(s) => s.version,
            Self::Subject(s) => s.version,
            Self::Observation(s) => s.version,
        }
    }

    pub fn kind(&self) -> AggregateKind {
        match self {
            Self::Study(_) => AggregateKind::Study,
            Self::Subject(_) => AggregateKind::Subject,
            Self::Observation(_) => AggregateKind::Observation,
        }
    }

    pub fn study_id(&self) -> Uuid {
        match self {
            Self::Study(s) => s.id,
            Self::Subject(s) => s.study_id,
            Self::Observation(s) => s.study_id,
        }
    }

    /// The aggregate's own id.
    pub fn id(&self) -> Uuid {
        match self {
            Self::Study(s) => s.id,
            Self::Subject(s) => s.id,
            Self::Observation(s) => s.id,
        }
    }

    pub fn as_study(&self) -> Option<&StudyState> {
        match self {
            Self::Study(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_subject(&self) -> Option<&SubjectState> {
        match self {
            Self::Subject(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_observation(&self) -> Option<&ObservationState> {
        match self {
            Self::Observation(s) => Some(s),
            _ => None,
        }
    }
}

/// An event that does not fit the state it is applied to. The store only
/// holds events that `decide` produced, so this means a corrupted stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {event_type} cannot follow version {version} of this stream")]
pub struct ApplyError {
    pub event_type: &'static str,
    pub version: i64,
}

/// Folds one event into the state of its aggregate (`None` before the first).
pub fn apply(
    state: Option<AggregateState>,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Result<AggregateState, ApplyError> {
    let version = state.as_ref().map_or(0, AggregateState::version);
    let next = match state {
        None => created(event, meta),
        Some(AggregateState::Study(s)) => study_changed(s, event).map(AggregateState::Study),
        Some(AggregateState::Subject(s)) => subject_changed(s, event).map(AggregateState::Subject),
        Some(AggregateState::Observation(o)) => {
            observation_changed(o, event, meta).map(AggregateState::Observation)
        }
    };
    next.ok_or(ApplyError {
        event_type: event.event_type(),
        version,
    })
}

/// The first state of an aggregate, from the event that creates it.
fn created(event: &DomainEvent, meta: &EventMeta) -> Option<AggregateState> {
    Some(match event {
        DomainEvent::StudyRegistered(e) => AggregateState::Study(StudyState {
            id: e.study_id,
            code: e.code.clone(),
            title: e.title.clone(),
            principal_investigator: e.principal_investigator.clone(),
            description: e.description.clone(),
            status: StudyStatus::Open,
            variables: e.variables.clone(),
            version: 1,
        }),
        DomainEvent::SubjectRegistered(e) => AggregateState::Subject(SubjectState {
            id: e.subject_id,
            study_id: e.study_id,
            label: e.label.clone(),
            attributes: e.attributes.clone(),
            status: SubjectStatus::Active,
            version: 1,
        }),
        DomainEvent::ObservationRecorded(e) => AggregateState::Observation(ObservationState {
            id: e.observation_id,
            study_id: e.study_id,
            subject_id: e.subject_id,
            observed_at: e.observed_at,
            values: e.values.clone(),
            original_values: e.values.clone(),
            comment: e.comment.clone(),
            status: ObservationStatus::Recorded,
            corrections: 0,
            signatures: Vec::new(),
            recorded_by: meta.actor.clone(),
            recorded_at: meta.recorded_at,
            authors: vec![meta.actor.clone()],
            last_changed_by: meta.actor.clone(),
            last_changed_at: meta.recorded_at,
            last_change_reason: None,
            version: 1,
        }),
        _ => return None,
    })
}

fn study_changed(mut s: StudyState, event: &DomainEvent) -> Option<StudyState> {
    match event {
        DomainEvent::StudyAmended(e) => {
            if let Some(title) = &e.title {
                s.title = title.clone();
            }
            if let Some(description) = &e.description {
                s.description = Some(description.clone());
            }
            s.variables.extend(e.add_variables.iter().cloned());
        }
        DomainEvent::StudyClosed => s.status = StudyStatus::Closed,
        _ => return None,
    }
    s.version += 1;
    Some(s)
}

fn subject_changed(mut s: SubjectState, event: &DomainEvent) -> Option<SubjectState> {
    match event {
        DomainEvent::SubjectWithdrawn => s.status = SubjectStatus::Withdrawn,
        _ => return None,
    }
    s.version += 1;
    Some(s)
}

fn observation_changed(
    mut o: ObservationState,
    event: &DomainEvent,
    meta: &EventMeta,
) -> Option<ObservationState> {
    match event {
        DomainEvent::ObservationCorrected(e) => {
            for (name, value) in &e.values {
                o.values.insert(name.clone(), value.clone());
            }
            o.status = ObservationStatus::Corrected;
            o.corrections += 1;
            o.signatures.clear();
            if !o.authors.contains(&meta.actor) {
                o.authors.push(meta.actor.clone());
            }
            touch(&mut o, meta);
        }
        DomainEvent::ObservationRetracted => {
            o.status = ObservationStatus::Retracted;
            touch(&mut o, meta);
        }
        DomainEvent::ObservationSigned(e) => {
            o.signatures.push(Signature {
                signer: meta.actor.clone(),
                meaning: e.meaning,
                signed_at: meta.recorded_at,
            });
            o.version += 1;
        }
        _ => return None,
    }
    Some(o)
}

fn touch(o: &mut ObservationState, meta: &EventMeta) {
    o.last_changed_by = meta.actor.clone();
    o.last_changed_at = meta.recorded_at;
    o.last_change_reason = meta.reason.clone();
    o.version += 1;
}
