//! Commands, and what each one reads, guards and claims: the states its
//! decision needs (`Command::reads`), the other aggregates whose versions
//! must not change before its events are appended (`Command::guards`), and
//! the values it makes unique (`Command::claims`). The command API gathers
//! states by these, and so do the domain's own tests.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::events::AggregateKind;
use super::text::{FreeText, Label, PersonName, Reason};
use super::values::{Attributes, NewVariable, ObservationValues, SignatureMeaning, StudyCode};

/// Most variables of one study.
pub const MAX_VARIABLES: usize = 1_000;

// Commands hold only parsed values (`text.rs`, `values.rs`): a command
// cannot carry text that the event store, the read tables or the published
// messages could not hold.

#[derive(Debug, Clone, PartialEq)]
pub struct RegisterStudy {
    pub study_id: Uuid,
    pub code: StudyCode,
    pub title: FreeText,
    pub principal_investigator: PersonName,
    pub description: Option<FreeText>,
    pub variables: Vec<NewVariable>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AmendStudy {
    pub study_id: Uuid,
    pub title: Option<FreeText>,
    pub description: Option<FreeText>,
    pub add_variables: Vec<NewVariable>,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegisterSubject {
    pub study_id: Uuid,
    pub subject_id: Uuid,
    pub label: Label,
    pub attributes: Attributes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RecordObservation {
    pub subject_id: Uuid,
    pub observation_id: Uuid,
    pub observed_at: DateTime<Utc>,
    pub values: ObservationValues,
    pub comment: Option<FreeText>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CorrectObservation {
    pub observation_id: Uuid,
    pub values: ObservationValues,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    RegisterStudy(RegisterStudy),
    AmendStudy(AmendStudy),
    CloseStudy {
        study_id: Uuid,
        reason: Reason,
    },
    RegisterSubject(RegisterSubject),
    WithdrawSubject {
        subject_id: Uuid,
        reason: Reason,
    },
    RecordObservation(RecordObservation),
    CorrectObservation(CorrectObservation),
    RetractObservation {
        observation_id: Uuid,
        reason: Reason,
    },
    SignObservation {
        observation_id: Uuid,
        meaning: SignatureMeaning,
    },
}

impl Command {
    /// The aggregate the command appends to.
    pub fn written(&self) -> (AggregateKind, Uuid) {
        match self {
            Self::RegisterStudy(c) => (AggregateKind::Study, c.study_id),
            Self::AmendStudy(c) => (AggregateKind::Study, c.study_id),
            Self::CloseStudy { study_id, .. } => (AggregateKind::Study, *study_id),
            Self::RegisterSubject(c) => (AggregateKind::Subject, c.subject_id),
            Self::WithdrawSubject { subject_id, .. } => (AggregateKind::Subject, *subject_id),
            Self::RecordObservation(c) => (AggregateKind::Observation, c.observation_id),
            Self::CorrectObservation(c) => (AggregateKind::Observation, c.observation_id),
            Self::RetractObservation { observation_id, .. }
            | Self::SignObservation { observation_id, .. } => {
                (AggregateKind::Observation, *observation_id)
            }
        }
    }

    /// The existing aggregate the command is addressed to (the id in its
    /// path), from which the other states it needs are found.
    pub fn target(&self) -> Option<(AggregateKind, Uuid)> {
        match self {
            Self::RegisterStudy(_) => None,
            Self::RegisterSubject(c) => Some((AggregateKind::Study, c.study_id)),
            Self::RecordObservation(c) => Some((AggregateKind::Subject, c.subject_id)),
            other => Some(other.written()),
        }
    }

    /// Whether the command creates its aggregate (and answers `201`).
    pub fn creates(&self) -> bool {
        matches!(
            self,
            Self::RegisterStudy(_) | Self::RegisterSubject(_) | Self::RecordObservation(_)
        )
    }

    /// The reason recorded in the envelope, for the commands that need one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::AmendStudy(c) => Some(c.reason.as_str()),
            Self::CloseStudy { reason, .. }
            | Self::WithdrawSubject { reason, .. }
            | Self::RetractObservation { reason, .. } => Some(reason.as_str()),
            Self::CorrectObservation(c) => Some(c.reason.as_str()),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::RegisterStudy(_) => "RegisterStudy",
            Self::AmendStudy(_) => "AmendStudy",
            Self::CloseStudy { .. } => "CloseStudy",
            Self::RegisterSubject(_) => "RegisterSubject",
            Self::WithdrawSubject { .. } => "WithdrawSubject",
            Self::RecordObservation(_) => "RecordObservation",
            Self::CorrectObservation(_) => "CorrectObservation",
            Self::RetractObservation { .. } => "RetractObservation",
            Self::SignObservation { .. } => "SignObservation",
        }
    }
}

/// Where the id of a state a command reads comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAt {
    /// An id the command names.
    Id(Uuid),
    /// The study of the subject or observation read before.
    StudyOf(AggregateKind),
}

/// One state a command's decision reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Read {
    pub kind: AggregateKind,
    pub at: ReadAt,
    /// The command creates this aggregate: it is read only to refuse an id
    /// already taken (and never when the server made the id).
    pub creates: bool,
}

impl Read {
    const fn at(kind: AggregateKind, id: Uuid) -> Self {
        Self {
            kind,
            at: ReadAt::Id(id),
            creates: false,
        }
    }

    const fn created(kind: AggregateKind, id: Uuid) -> Self {
        Self {
            kind,
            at: ReadAt::Id(id),
            creates: true,
        }
    }

    const fn study_of(kind: AggregateKind) -> Self {
        Self {
            kind: AggregateKind::Study,
            at: ReadAt::StudyOf(kind),
            creates: false,
        }
    }

    /// The id to read, given the study of each state read before (`None`
    /// when that state does not exist: then this one is not read either).
    pub fn id(&self, study_of: impl Fn(AggregateKind) -> Option<Uuid>) -> Option<Uuid> {
        match self.at {
            ReadAt::Id(id) => Some(id),
            ReadAt::StudyOf(kind) => study_of(kind),
        }
    }
}

/// What kind of value a claim makes unique across aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimScope {
    StudyCode,
}

impl ClaimScope {
    /// The name stored in `unique_claims.scope` and told in a `409`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::StudyCode => "study code",
        }
    }
}

/// A value that must be unique across aggregates, such as a study code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    pub scope: ClaimScope,
    pub key: String,
}

impl Command {
    /// The states the decision reads, in order (a later one may be the
    /// study of an earlier one).
    pub fn reads(&self) -> Vec<Read> {
        use AggregateKind::{Observation, Study, Subject};
        match self {
            Self::RegisterStudy(c) => vec![Read::created(Study, c.study_id)],
            Self::AmendStudy(_) | Self::CloseStudy { .. } | Self::WithdrawSubject { .. } => {
                let (kind, id) = self.written();
                vec![Read::at(kind, id)]
            }
            Self::RegisterSubject(c) => vec![
                Read::at(Study, c.study_id),
                Read::created(Subject, c.subject_id),
            ],
            Self::RecordObservation(c) => vec![
                Read::at(Subject, c.subject_id),
                Read::study_of(Subject),
                Read::created(Observation, c.observation_id),
            ],
            Self::CorrectObservation(_)
            | Self::RetractObservation { .. }
            | Self::SignObservation { .. } => {
                let (kind, id) = self.written();
                vec![Read::at(kind, id), Read::study_of(Observation)]
            }
        }
    }

    /// The aggregates read besides the written one whose versions must be
    /// unchanged when the events are appended: a subject may not be added
    /// to a study closed meanwhile, nor an observation to a withdrawn
    /// subject. A signature needs no guard: signing a closed study's
    /// observations is allowed.
    pub fn guards(&self) -> &'static [AggregateKind] {
        use AggregateKind::{Study, Subject};
        match self {
            Self::RegisterSubject(_)
            | Self::CorrectObservation(_)
            | Self::RetractObservation { .. } => &[Study],
            Self::RecordObservation(_) => &[Study, Subject],
            _ => &[],
        }
    }

    /// The values the command makes unique.
    pub fn claims(&self) -> Vec<Claim> {
        match self {
            Self::RegisterStudy(c) => vec![Claim {
                scope: ClaimScope::StudyCode,
                key: c.code.as_str().to_owned(),
            }],
            _ => Vec::new(),
        }
    }
}
