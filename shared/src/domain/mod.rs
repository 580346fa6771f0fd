//! The domain: value objects, commands, events, and the pure `decide` and
//! `apply` functions. Nothing in this module does I/O or reads a clock.

mod command;
mod decide;
mod events;
mod state;
pub mod text;
mod values;

#[cfg(test)]
mod tests;

pub use command::{
    AmendStudy, Claim, ClaimScope, Command, CorrectObservation, Read, ReadAt, RecordObservation,
    RegisterStudy, RegisterSubject, MAX_VARIABLES,
};
pub use decide::{decide, DomainError, FieldError, Rule, States};
pub use events::{
    AggregateKind, DomainEvent, Empty, EventDecodeError, ObservationCorrected, ObservationRecorded,
    ObservationSigned, StudyAmended, StudyRegistered, SubjectRegistered, EVENT_TYPES,
};
pub use state::{
    apply, AggregateState, ApplyError, EventMeta, ObservationState, ObservationStatus, Signature,
    StudyState, StudyStatus, SubjectState, SubjectStatus,
};
pub use text::{
    AttributeKey, AttributeText, Category, FreeText, Label, PersonName, PrincipalId, Reason,
    TextError, Unit,
};
pub use values::{
    Attributes, NewVariable, ObservationValues, SignatureMeaning, StudyCode, Variable,
    VariableKind, VariableName, MAX_ATTRIBUTES, MAX_CATEGORIES,
};
