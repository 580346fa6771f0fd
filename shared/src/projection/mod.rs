//! The read models' pure logic: documents of studies, subjects and
//! observations, kept up to date event by event, and their ready-to-send
//! JSON. No I/O: the projector loads the views an event touches, calls
//! [`Views::project`], resolves the few [`Need`]s that require other rows
//! (a new minimum after the old one was removed, a subject's latest value
//! after it was retracted) and stores the views.

mod stats;

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

pub use stats::{Accumulator, Removed};

use crate::domain::{
    apply, AggregateKind, AggregateState, DomainEvent, ObservationState, ObservationStatus,
    StudyState, SubjectState, SubjectStatus, Variable, VariableKind,
};
use crate::envelope::{format_time, StoredEvent};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectCounts {
    pub total: u64,
    pub active: u64,
    pub withdrawn: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservationCounts {
    pub total: u64,
    pub corrected: u64,
    pub retracted: u64,
    pub signed: u64,
}

impl ObservationCounts {
    fn of(o: &ObservationState) -> Self {
        Self {
            total: 1,
            corrected: u64::from(o.status == ObservationStatus::Corrected),
            retracted: u64::from(o.status == ObservationStatus::Retracted),
            signed: u64::from(!o.signatures.is_empty()),
        }
    }

    fn shift(&mut self, before: Option<&ObservationState>, after: &ObservationState) {
        if let Some(b) = before.map(Self::of) {
            self.total -= b.total;
            self.corrected -= b.corrected;
            self.retracted -= b.retracted;
            self.signed -= b.signed;
        }
        let a = Self::of(after);
        self.total += a.total;
        self.corrected += a.corrected;
        self.retracted += a.retracted;
        self.signed += a.signed;
    }
}

/// A study's document: its state (folded by the domain's `apply`) and
/// what the read side adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyView {
    #[serde(flatten)]
    pub state: StudyState,
    pub subjects: SubjectCounts,
    pub observations: ObservationCounts,
    pub stats: BTreeMap<String, Accumulator>,
    pub last_activity_at: DateTime<Utc>,
    pub position: i64,
}

/// The latest value of a variable for a subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub value: Value,
    pub observed_at: DateTime<Utc>,
    pub observation_id: Uuid,
}

impl Latest {
    /// What "latest" means: the latest `observed_at`, then the highest id.
    pub fn order(&self) -> (DateTime<Utc>, Uuid) {
        (self.observed_at, self.observation_id)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectView {
    #[serde(flatten)]
    pub state: SubjectState,
    /// Observations that are not retracted.
    pub observations: u64,
    pub latest: BTreeMap<String, Latest>,
    pub stats: BTreeMap<String, Accumulator>,
    pub position: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservationView {
    #[serde(flatten)]
    pub state: ObservationState,
    pub position: i64,
}

/// Work an event leaves for the projector, which needs other rows for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Need {
    /// Recompute min and max of `variable` over the study's current values.
    StudyExtremes { study_id: Uuid, variable: String },
    /// The same over the subject's current values.
    SubjectExtremes { subject_id: Uuid, variable: String },
    /// Find the subject's latest non-null value of `variable` again.
    Latest { subject_id: Uuid, variable: String },
    /// The study's variables changed, so every subject document of the
    /// study changes: load the subjects not held and give them `position`.
    StudySubjects { study_id: Uuid, position: i64 },
}

/// Whose observations a set of values is taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Study(Uuid),
    Subject(Uuid),
}

impl Owner {
    /// The column of `observations` that names the owner.
    pub const fn column(self) -> &'static str {
        match self {
            Self::Study(_) => "study_id",
            Self::Subject(_) => "subject_id",
        }
    }

    pub const fn id(self) -> Uuid {
        match self {
            Self::Study(id) | Self::Subject(id) => id,
        }
    }

    fn holds(self, o: &ObservationState) -> bool {
        match self {
            Self::Study(id) => o.study_id == id,
            Self::Subject(id) => o.subject_id == id,
        }
    }
}

impl Need {
    /// For a need of new extremes: whose, and of which variable.
    pub fn extremes(&self) -> Option<(Owner, &str)> {
        match self {
            Self::StudyExtremes { study_id, variable } => Some((Owner::Study(*study_id), variable)),
            Self::SubjectExtremes {
                subject_id,
                variable,
            } => Some((Owner::Subject(*subject_id), variable)),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(
        "event at position {position} refers to {what} {id}, which the read model does not hold"
    )]
    Missing {
        position: i64,
        what: &'static str,
        id: Uuid,
    },
    #[error("event at position {position} cannot be decoded or applied: {why}")]
    Invalid { position: i64, why: String },
}

/// The views one batch works on, keyed by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Views {
    pub studies: HashMap<Uuid, StudyView>,
    pub subjects: HashMap<Uuid, SubjectView>,
    pub observations: HashMap<Uuid, ObservationView>,
}

/// The state after `event`, or why the event cannot be applied.
fn applied(
    event: &StoredEvent,
    before: Option<AggregateState>,
    domain: &DomainEvent,
) -> Result<AggregateState, ProjectError> {
    apply(before, domain, &event.meta()).map_err(|e| invalid(event, &e.to_string()))
}

fn invalid(event: &StoredEvent, why: &str) -> ProjectError {
    ProjectError::Invalid {
        position: event.position,
        why: why.to_owned(),
    }
}

fn kind_of(variables: &[Variable], name: &str) -> Option<VariableKind> {
    variables
        .iter()
        .find(|v| v.name.as_str() == name)
        .map(|v| v.kind)
}

impl Views {
    /// Applies one event to the views it touches (which must be loaded).
    pub fn project(&mut self, event: &StoredEvent) -> Result<Vec<Need>, ProjectError> {
        let position = event.position;
        let domain = event.domain_event().map_err(|e| ProjectError::Invalid {
            position,
            why: e.to_string(),
        })?;
        let mut needs = Vec::new();
        match domain.aggregate_kind() {
            AggregateKind::Study => self.project_study(event, &domain, &mut needs)?,
            AggregateKind::Subject => self.project_subject(event, &domain)?,
            AggregateKind::Observation => self.project_observation(event, &domain, &mut needs)?,
        }
        if let Some(study) = self.studies.get_mut(&event.study_id) {
            study.last_activity_at = study.last_activity_at.max(event.recorded_at);
            study.position = position;
        }
        Ok(needs)
    }

    fn project_study(
        &mut self,
        event: &StoredEvent,
        domain: &DomainEvent,
        needs: &mut Vec<Need>,
    ) -> Result<(), ProjectError> {
        let (id, position) = (event.aggregate_id, event.position);
        let before = self
            .studies
            .get(&id)
            .map(|v| AggregateState::Study(v.state.clone()));
        let AggregateState::Study(state) = applied(event, before, domain)? else {
            return Err(invalid(event, "not a study event"));
        };
        match self.studies.get_mut(&id) {
            Some(view) => view.state = state,
            None => {
                self.studies.insert(
                    id,
                    StudyView {
                        state,
                        subjects: SubjectCounts::default(),
                        observations: ObservationCounts::default(),
                        stats: BTreeMap::new(),
                        last_activity_at: event.recorded_at,
                        position,
                    },
                );
            }
        }
        if matches!(domain, DomainEvent::StudyAmended(e) if !e.add_variables.is_empty()) {
            // Subject documents list the study's variables.
            for subject in self
                .subjects
                .values_mut()
                .filter(|x| x.state.study_id == id)
            {
                subject.position = position;
            }
            needs.push(Need::StudySubjects {
                study_id: id,
                position,
            });
        }
        Ok(())
    }

    fn project_subject(
        &mut self,
        event: &StoredEvent,
        domain: &DomainEvent,
    ) -> Result<(), ProjectError> {
        let (id, position) = (event.aggregate_id, event.position);
        let before = self.subjects.get(&id).map(|v| v.state.status);
        let state = self
            .subjects
            .get(&id)
            .map(|v| AggregateState::Subject(v.state.clone()));
        let AggregateState::Subject(after) = applied(event, state, domain)? else {
            return Err(invalid(event, "not a subject event"));
        };
        let study = self
            .studies
            .get_mut(&after.study_id)
            .ok_or(ProjectError::Missing {
                position,
                what: "study",
                id: after.study_id,
            })?;
        match (before, after.status) {
            (None, _) => {
                study.subjects.total += 1;
                study.subjects.active += 1;
            }
            (Some(SubjectStatus::Active), SubjectStatus::Withdrawn) => {
                study.subjects.active -= 1;
                study.subjects.withdrawn += 1;
            }
            _ => {}
        }
        match self.subjects.get_mut(&id) {
            Some(view) => {
                view.state = after;
                view.position = position;
            }
            None => {
                self.subjects.insert(
                    id,
                    SubjectView {
                        state: after,
                        observations: 0,
                        latest: BTreeMap::new(),
                        stats: BTreeMap::new(),
                        position,
                    },
                );
            }
        }
        Ok(())
    }

    fn project_observation(
        &mut self,
        event: &StoredEvent,
        domain: &DomainEvent,
        needs: &mut Vec<Need>,
    ) -> Result<(), ProjectError> {
        let (id, position) = (event.aggregate_id, event.position);
        let before = self.observations.get(&id).map(|v| v.state.clone());
        let state = before.clone().map(AggregateState::Observation);
        let AggregateState::Observation(after) = applied(event, state, domain)? else {
            return Err(invalid(event, "not an observation event"));
        };
        self.observation_changed(position, before.as_ref(), &after, needs)?;
        self.observations.insert(
            id,
            ObservationView {
                state: after,
                position,
            },
        );
        Ok(())
    }

    /// Moves counts, statistics and latest values from `before` to `after`.
    fn observation_changed(
        &mut self,
        position: i64,
        before: Option<&ObservationState>,
        after: &ObservationState,
        needs: &mut Vec<Need>,
    ) -> Result<(), ProjectError> {
        let missing = |what, id| ProjectError::Missing { position, what, id };
        let study = self
            .studies
            .get_mut(&after.study_id)
            .ok_or(missing("study", after.study_id))?;
        let subject = self
            .subjects
            .get_mut(&after.subject_id)
            .ok_or(missing("subject", after.subject_id))?;
        subject.position = position;
        study.observations.shift(before, after);
        let was_live = before.is_some_and(ObservationState::is_live);
        let is_live = after.is_live();
        subject.observations = subject.observations + u64::from(is_live) - u64::from(was_live);

        let empty = BTreeMap::new();
        let old_values = before.filter(|b| b.is_live()).map_or(&empty, |b| &b.values);
        let new_values = if is_live { &after.values } else { &empty };
        let names: std::collections::BTreeSet<&String> =
            old_values.keys().chain(new_values.keys()).collect();
        for name in names {
            let old = old_values.get(name);
            let new = new_values.get(name);
            if old == new {
                continue;
            }
            let Some(kind) = kind_of(&study.state.variables, name) else {
                continue;
            };
            for (acc, need) in [
                (
                    study.stats.entry(name.clone()).or_default(),
                    Need::StudyExtremes {
                        study_id: study.state.id,
                        variable: name.clone(),
                    },
                ),
                (
                    subject.stats.entry(name.clone()).or_default(),
                    Need::SubjectExtremes {
                        subject_id: subject.state.id,
                        variable: name.clone(),
                    },
                ),
            ] {
                if let Some(new) = new {
                    acc.add(kind, new);
                }
                if let Some(old) = old {
                    if acc.remove(kind, old) == Removed::ExtremesStale {
                        needs.push(need);
                    }
                }
            }
            // The subject's latest value of this variable.
            let current = subject.latest.get(name);
            let held_latest = current.is_some_and(|l| l.observation_id == after.id);
            match new.filter(|v| !v.is_null()) {
                Some(value) => {
                    let newer = current.is_none_or(|l| {
                        (after.observed_at, after.id) >= (l.observed_at, l.observation_id)
                    });
                    if newer {
                        subject.latest.insert(
                            name.clone(),
                            Latest {
                                value: value.clone(),
                                observed_at: after.observed_at,
                                observation_id: after.id,
                            },
                        );
                    }
                }
                None if held_latest => needs.push(Need::Latest {
                    subject_id: subject.state.id,
                    variable: name.clone(),
                }),
                None => {}
            }
        }
        Ok(())
    }

    /// Resolves needs from the observations held in `self` (for a replay that
    /// holds every observation, and for tests).
    pub fn resolve_in_memory(&mut self, needs: &[Need]) {
        for need in needs {
            match need {
                // Every subject is held already, and was moved by `project`.
                Need::StudySubjects { .. } => {}
                Need::Latest {
                    subject_id,
                    variable,
                } => {
                    let latest = self.latest_held(*subject_id, variable);
                    self.set_latest(*subject_id, variable, latest);
                }
                Need::StudyExtremes { .. } | Need::SubjectExtremes { .. } => {
                    if let Some((owner, variable)) = need.extremes() {
                        let values: Vec<Value> = self.live_values(owner, variable).collect();
                        self.set_extremes(owner, variable, &values);
                    }
                }
            }
        }
    }

    /// The values of `variable` in the live observations held of `owner`.
    pub fn live_values<'a>(
        &'a self,
        owner: Owner,
        variable: &'a str,
    ) -> impl Iterator<Item = Value> + 'a {
        self.observations
            .values()
            .filter(move |o| owner.holds(&o.state) && o.state.is_live())
            .filter_map(move |o| o.state.values.get(variable).cloned())
    }

    /// Sets the extremes of `owner`'s statistics of `variable` to those of
    /// `values` (all its current values).
    pub fn set_extremes(&mut self, owner: Owner, variable: &str, values: &[Value]) {
        let stats = match owner {
            Owner::Study(id) => self.studies.get_mut(&id).map(|s| &mut s.stats),
            Owner::Subject(id) => self.subjects.get_mut(&id).map(|s| &mut s.stats),
        };
        if let Some(acc) = stats.and_then(|stats| stats.get_mut(variable)) {
            acc.set_extremes(values.iter());
        }
    }

    /// The latest non-null value of `variable` among the live observations
    /// held of a subject.
    pub fn latest_held(&self, subject_id: Uuid, variable: &str) -> Option<Latest> {
        self.observations
            .values()
            .filter(|o| o.state.subject_id == subject_id && o.state.is_live())
            .filter_map(|o| {
                let v = o.state.values.get(variable).filter(|v| !v.is_null())?;
                Some(Latest {
                    value: v.clone(),
                    observed_at: o.state.observed_at,
                    observation_id: o.state.id,
                })
            })
            .max_by_key(Latest::order)
    }

    /// Sets (or, with `None`, removes) a subject's latest value of `variable`.
    pub fn set_latest(&mut self, subject_id: Uuid, variable: &str, latest: Option<Latest>) {
        if let Some(subject) = self.subjects.get_mut(&subject_id) {
            match latest {
                Some(l) => subject.latest.insert(variable.to_owned(), l),
                None => subject.latest.remove(variable),
            };
        }
    }
}

fn variable_doc(v: &Variable, stats: Option<&Accumulator>) -> Value {
    json!({
        "name": v.name,
        "kind": v.kind,
        "unit": v.unit,
        "min": v.min,
        "max": v.max,
        "categories": v.categories,
        "stats": stats.cloned().unwrap_or_default().render(v.kind),
    })
}

impl StudyView {
    /// The study document of the contract.
    pub fn document(&self) -> Value {
        json!({
            "id": self.state.id,
            "code": self.state.code,
            "title": self.state.title,
            "principal_investigator": self.state.principal_investigator,
            "description": self.state.description,
            "status": self.state.status,
            "subjects": self.subjects,
            "observations": self.observations,
            "variables": self.state.variables.iter().map(|v| variable_doc(v, self.stats.get(v.name.as_str()))).collect::<Vec<_>>(),
            "last_activity_at": format_time(&self.last_activity_at),
            "version": self.state.version,
            "position": self.position,
        })
    }
}

impl SubjectView {
    /// The subject document of the contract; the variables come from its study.
    pub fn document(&self, variables: &[Variable]) -> Value {
        let latest: Map<String, Value> = self
            .latest
            .iter()
            .map(|(k, l)| {
                (
                    k.clone(),
                    json!({"value": l.value, "observed_at": format_time(&l.observed_at), "observation_id": l.observation_id}),
                )
            })
            .collect();
        let variables: Vec<Value> = variables
            .iter()
            .map(|v| {
                let stats = self
                    .stats
                    .get(v.name.as_str())
                    .cloned()
                    .unwrap_or_default()
                    .render(v.kind);
                json!({"name": v.name, "kind": v.kind, "unit": v.unit, "stats": stats})
            })
            .collect();
        json!({
            "id": self.state.id,
            "study_id": self.state.study_id,
            "label": self.state.label,
            "attributes": self.state.attributes,
            "status": self.state.status,
            "observations": self.observations,
            "latest": latest,
            "variables": variables,
            "version": self.state.version,
            "position": self.position,
        })
    }
}

/// A time in the one textual form (`format_time`), written without an
/// intermediate string.
struct Time<'a>(&'a DateTime<Utc>);

impl Serialize for Time<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.format("%Y-%m-%dT%H:%M:%S%.6fZ"))
    }
}

#[derive(Serialize)]
struct SignatureDoc<'a> {
    signer: &'a str,
    meaning: crate::domain::SignatureMeaning,
    signed_at: Time<'a>,
}

#[derive(Serialize)]
struct ObservationDoc<'a> {
    id: Uuid,
    study_id: Uuid,
    subject_id: Uuid,
    observed_at: Time<'a>,
    values: &'a BTreeMap<String, Value>,
    original_values: &'a BTreeMap<String, Value>,
    comment: &'a Option<String>,
    status: ObservationStatus,
    corrections: u32,
    signatures: Vec<SignatureDoc<'a>>,
    recorded_by: &'a str,
    recorded_at: Time<'a>,
    last_changed_by: &'a str,
    last_changed_at: Time<'a>,
    last_change_reason: &'a Option<String>,
    version: i64,
    position: i64,
}

/// The observation document read back: every field of the state but the
/// authors.
#[derive(Deserialize)]
struct StoredObservationDoc {
    id: Uuid,
    study_id: Uuid,
    subject_id: Uuid,
    observed_at: DateTime<Utc>,
    values: BTreeMap<String, Value>,
    original_values: BTreeMap<String, Value>,
    comment: Option<String>,
    status: ObservationStatus,
    corrections: u32,
    signatures: Vec<crate::domain::Signature>,
    recorded_by: String,
    recorded_at: DateTime<Utc>,
    last_changed_by: String,
    last_changed_at: DateTime<Utc>,
    last_change_reason: Option<String>,
    version: i64,
    position: i64,
}

impl ObservationView {
    /// The view again, from its document and its authors (what a read
    /// table keeps of an observation): `from_document(v.document(),
    /// v.state.authors) == v`.
    pub fn from_document(document: &[u8], authors: Vec<String>) -> serde_json::Result<Self> {
        let d: StoredObservationDoc = serde_json::from_slice(document)?;
        Ok(Self {
            state: ObservationState {
                id: d.id,
                study_id: d.study_id,
                subject_id: d.subject_id,
                observed_at: d.observed_at,
                values: d.values,
                original_values: d.original_values,
                comment: d.comment,
                status: d.status,
                corrections: d.corrections,
                signatures: d.signatures,
                recorded_by: d.recorded_by,
                recorded_at: d.recorded_at,
                authors,
                last_changed_by: d.last_changed_by,
                last_changed_at: d.last_changed_at,
                last_change_reason: d.last_change_reason,
                version: d.version,
            },
            position: d.position,
        })
    }

    /// The observation document of the contract, as JSON bytes. This runs
    /// for every event a replay applies, so it serializes straight from the
    /// view rather than through a `Value` tree.
    pub fn document(&self) -> Vec<u8> {
        let o = &self.state;
        let doc = ObservationDoc {
            id: o.id,
            study_id: o.study_id,
            subject_id: o.subject_id,
            observed_at: Time(&o.observed_at),
            values: &o.values,
            original_values: &o.original_values,
            comment: &o.comment,
            status: o.status,
            corrections: o.corrections,
            signatures: o
                .signatures
                .iter()
                .map(|s| SignatureDoc {
                    signer: &s.signer,
                    meaning: s.meaning,
                    signed_at: Time(&s.signed_at),
                })
                .collect(),
            recorded_by: &o.recorded_by,
            recorded_at: Time(&o.recorded_at),
            last_changed_by: &o.last_changed_by,
            last_changed_at: Time(&o.last_changed_at),
            last_change_reason: &o.last_change_reason,
            version: o.version,
            position: self.position,
        };
        serde_json::to_vec(&doc).expect("a document always serializes")
    }
}

#[cfg(test)]
mod tests;
