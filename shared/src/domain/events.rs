//! The domain events: past-tense facts with a stable type name and schema
//! version, and their canonical JSON payload (`data` of the envelope).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::values::{SignatureMeaning, StudyCode, Variable};

/// The three kinds of aggregate, each with its own event stream per id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateKind {
    Study,
    Subject,
    Observation,
}

impl AggregateKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Study => "study",
            Self::Subject => "subject",
            Self::Observation => "observation",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "study" => Some(Self::Study),
            "subject" => Some(Self::Subject),
            "observation" => Some(Self::Observation),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyRegistered {
    pub study_id: Uuid,
    pub code: StudyCode,
    pub title: String,
    pub principal_investigator: String,
    pub description: Option<String>,
    pub variables: Vec<Variable>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyAmended {
    pub title: Option<String>,
    pub description: Option<String>,
    pub add_variables: Vec<Variable>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRegistered {
    pub subject_id: Uuid,
    pub study_id: Uuid,
    pub label: String,
    pub attributes: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationRecorded {
    pub observation_id: Uuid,
    pub study_id: Uuid,
    pub subject_id: Uuid,
    pub observed_at: DateTime<Utc>,
    pub values: BTreeMap<String, Value>,
    pub comment: Option<String>,
}

/// Only the values that changed; the others keep their current value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationCorrected {
    pub values: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationSigned {
    pub meaning: SignatureMeaning,
}

/// Events without a payload of their own (the reason is in the envelope).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    StudyRegistered(StudyRegistered),
    StudyAmended(StudyAmended),
    StudyClosed,
    SubjectRegistered(SubjectRegistered),
    SubjectWithdrawn,
    ObservationRecorded(ObservationRecorded),
    ObservationCorrected(ObservationCorrected),
    ObservationRetracted,
    ObservationSigned(ObservationSigned),
}

/// Every event type name, in the order of the contract.
pub const EVENT_TYPES: [&str; 9] = [
    "research.study.registered.v1",
    "research.study.amended.v1",
    "research.study.closed.v1",
    "research.subject.registered.v1",
    "research.subject.withdrawn.v1",
    "research.observation.recorded.v1",
    "research.observation.corrected.v1",
    "research.observation.retracted.v1",
    "research.observation.signed.v1",
];

#[derive(Debug, thiserror::Error)]
pub enum EventDecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("malformed data of {event_type}: {source}")]
    Data {
        event_type: String,
        #[source]
        source: serde_json::Error,
    },
}

impl DomainEvent {
    /// The stable type name, which carries the schema version.
    pub const fn event_type(&self) -> &'static str {
        EVENT_TYPES[self.index()]
    }

    pub const fn schema_version(&self) -> i16 {
        1
    }

    pub const fn aggregate_kind(&self) -> AggregateKind {
        match self {
            Self::StudyRegistered(_) | Self::StudyAmended(_) | Self::StudyClosed => {
                AggregateKind::Study
            }
            Self::SubjectRegistered(_) | Self::SubjectWithdrawn => AggregateKind::Subject,
            _ => AggregateKind::Observation,
        }
    }

    const fn index(&self) -> usize {
        match self {
            Self::StudyRegistered(_) => 0,
            Self::StudyAmended(_) => 1,
            Self::StudyClosed => 2,
            Self::SubjectRegistered(_) => 3,
            Self::SubjectWithdrawn => 4,
            Self::ObservationRecorded(_) => 5,
            Self::ObservationCorrected(_) => 6,
            Self::ObservationRetracted => 7,
            Self::ObservationSigned(_) => 8,
        }
    }

    /// The canonical payload: compact JSON with object keys in byte order.
    /// These exact bytes are stored and hashed.
    pub fn to_data(&self) -> String {
        let value = match self {
            Self::StudyRegistered(e) => serde_json::to_value(e),
            Self::StudyAmended(e) => serde_json::to_value(e),
            Self::SubjectRegistered(e) => serde_json::to_value(e),
            Self::ObservationRecorded(e) => serde_json::to_value(e),
            Self::ObservationCorrected(e) => serde_json::to_value(e),
            Self::ObservationSigned(e) => serde_json::to_value(e),
            Self::StudyClosed | Self::SubjectWithdrawn | Self::ObservationRetracted => {
                serde_json::to_value(Empty {})
            }
        }
        .expect("event payloads are plain data and always serialize");
        // `serde_json::Map` is ordered by key (no `preserve_order`), so going
        // through `Value` sorts every object's keys.
        value.to_string()
    }

    pub fn decode(event_type: &str, data: &str) -> Result<Self, EventDecodeError> {
        fn parse<T: serde::de::DeserializeOwned>(
            event_type: &str,
            data: &str,
        ) -> Result<T, EventDecodeError> {
            serde_json::from_str(data).map_err(|source| EventDecodeError::Data {
                event_type: event_type.to_owned(),
                source,
            })
        }
        let index = EVENT_TYPES
            .iter()
            .position(|t| *t == event_type)
            .ok_or_else(|| EventDecodeError::UnknownType(event_type.to_owned()))?;
        Ok(match index {
            0 => Self::StudyRegistered(parse(event_type, data)?),
            1 => Self::StudyAmended(parse(event_type, data)?),
            2 => parse::<Empty>(event_type, data).map(|_| Self::StudyClosed)?,
            3 => Self::SubjectRegistered(parse(event_type, data)?),
            4 => parse::<Empty>(event_type, data).map(|_| Self::SubjectWithdrawn)?,
            5 => Self::ObservationRecorded(parse(event_type, data)?),
            6 => Self::ObservationCorrected(parse(event_type, data)?),
            7 => parse::<Empty>(event_type, data).map(|_| Self::ObservationRetracted)?,
            _ => Self::ObservationSigned(parse(event_type, data)?),
        })
    }
}
