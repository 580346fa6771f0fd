//! The projection against an independent recomputation: after random
//! histories of recordings, corrections (to values and to null) and
//! retractions, every statistic, count and latest value equals what is
//! computed from scratch over the final observations.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

use super::*;
use crate::domain::{
    DomainEvent, ObservationCorrected, ObservationRecorded, StudyCode, StudyRegistered,
    SubjectRegistered, VariableName,
};
use crate::envelope::GENESIS_HASH;

struct Log {
    position: i64,
    versions: BTreeMap<Uuid, i64>,
    views: Views,
}

const STUDY: Uuid = Uuid::from_u128(1);

impl Log {
    fn new() -> Self {
        Self {
            position: 0,
            versions: BTreeMap::new(),
            views: Views::default(),
        }
    }

    fn append(&mut self, aggregate: Uuid, kind: &str, event: DomainEvent, reason: Option<&str>) {
        self.position += 1;
        let version = self.versions.entry(aggregate).or_default();
        *version += 1;
        let stored = StoredEvent {
            position: self.position,
            event_id: Uuid::from_u128(10_000 + self.position as u128),
            aggregate_type: kind.into(),
            aggregate_id: aggregate,
            stream_version: *version,
            study_id: STUDY,
            event_type: event.event_type().into(),
            schema_version: 1,
            data: event.to_data(),
            actor: "alice".into(),
            reason: reason.map(str::to_owned),
            correlation_id: "c".into(),
            causation_id: "c".into(),
            recorded_at: Utc.timestamp_opt(1_700_000_000 + self.position, 0).unwrap(),
            prevhash: GENESIS_HASH,
            hash: GENESIS_HASH,
        };
        let needs = self
            .views
            .project(&stored)
            .expect("a valid history projects");
        self.views.resolve_in_memory(&needs);
    }
}

fn variables() -> Vec<Variable> {
    let v = |name: &str, kind| Variable {
        name: VariableName::parse(name).unwrap(),
        kind,
        unit: None,
        min: None,
        max: None,
        categories: (kind == VariableKind::Categorical)
            .then(|| vec!["MALE".into(), "FEMALE".into()]),
    };
    vec![
        v("mass", VariableKind::Numeric),
        v("sex", VariableKind::Categorical),
    ]
}

fn setup() -> Log {
    let mut log = Log::new();
    log.append(
        STUDY,
        "study",
        DomainEvent::StudyRegistered(StudyRegistered {
            study_id: STUDY,
            code: StudyCode::parse("PAL0708").unwrap(),
            title: "t".into(),
            principal_investigator: "p".into(),
            description: None,
            variables: variables(),
        }),
        None,
    );
    for s in 0..2u128 {
        log.append(
            Uuid::from_u128(100 + s),
            "subject",
            DomainEvent::SubjectRegistered(SubjectRegistered {
                subject_id: Uuid::from_u128(100 + s),
                study_id: STUDY,
                label: format!("N{s}"),
                attributes: Map::new(),
            }),
            None,
        );
    }
    log
}

#[derive(Debug, Clone)]
enum Step {
    Record {
        subject: u128,
        day: i64,
        mass: Option<i64>,
        sex: Option<bool>,
    },
    Correct {
        nth: usize,
        mass: Option<i64>,
    },
    Retract {
        nth: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let mass = prop::option::weighted(0.85, 2500i64..6500);
    prop_oneof![
        4 => (0..2u128, 0..20i64, mass.clone(), prop::option::of(any::<bool>()))
            .prop_map(|(subject, day, mass, sex)| Step::Record { subject, day, mass, sex }),
        3 => (any::<usize>(), mass).prop_map(|(nth, mass)| Step::Correct { nth, mass }),
        1 => any::<usize>().prop_map(|nth| Step::Retract { nth }),
    ]
}

/// Statistics and latest values computed from scratch over `views`'s
/// observations, for comparison.
fn recompute(views: &Views) -> (Value, Vec<Value>) {
    let study = &views.studies[&STUDY];
    let live: Vec<&ObservationState> = views
        .observations
        .values()
        .map(|o| &o.state)
        .filter(|o| o.status != ObservationStatus::Retracted)
        .collect();
    let stats_over = |obs: &[&ObservationState]| -> Vec<Value> {
        study
            .state
            .variables
            .iter()
            .map(|v| {
                let mut acc = Accumulator::default();
                for o in obs {
                    if let Some(x) = o.values.get(v.name.as_str()) {
                        acc.add(v.kind, x);
                    }
                }
                acc.render(v.kind)
            })
            .collect()
    };
    let mut subjects = Vec::new();
    for s in 0..2u128 {
        let id = Uuid::from_u128(100 + s);
        let mine: Vec<&ObservationState> = live
            .iter()
            .copied()
            .filter(|o| o.subject_id == id)
            .collect();
        let mut latest = Map::new();
        for v in &study.state.variables {
            if let Some(o) = mine
                .iter()
                .filter(|o| o.values.get(v.name.as_str()).is_some_and(|x| !x.is_null()))
                .max_by_key(|o| (o.observed_at, o.id))
            {
                latest.insert(v.name.to_string(), o.values[v.name.as_str()].clone());
            }
        }
        subjects.push(json!({"n": mine.len(), "stats": stats_over(&mine), "latest": latest}));
    }
    (json!(stats_over(&live)), subjects)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn incremental_views_equal_a_recomputation(steps in prop::collection::vec(step(), 1..60)) {
        let mut log = setup();
        let mut recorded: Vec<Uuid> = Vec::new();
        for step in steps {
            match step {
                Step::Record { subject, day, mass, sex } => {
                    let id = Uuid::from_u128(1000 + recorded.len() as u128);
                    let mut values = BTreeMap::new();
                    values.insert("mass".to_owned(), mass.map_or(Value::Null, |m| json!(m as f64 / 10.0)));
                    if let Some(sex) = sex {
                        values.insert("sex".to_owned(), json!(if sex { "MALE" } else { "FEMALE" }));
                    }
                    log.append(id, "observation", DomainEvent::ObservationRecorded(ObservationRecorded {
                        observation_id: id,
                        study_id: STUDY,
                        subject_id: Uuid::from_u128(100 + subject),
                        observed_at: Utc.timestamp_opt(1_200_000_000 + day * 86_400, 0).unwrap(),
                        values,
                        comment: None,
                    }), None);
                    recorded.push(id);
                }
                Step::Correct { nth, mass } if !recorded.is_empty() => {
                    let id = recorded[nth % recorded.len()];
                    let o = &log.views.observations[&id].state;
                    let new = mass.map_or(Value::Null, |m| json!(m as f64 / 10.0));
                    if o.status == ObservationStatus::Retracted || o.values.get("mass") == Some(&new) {
                        continue;
                    }
                    let mut values = BTreeMap::new();
                    values.insert("mass".to_owned(), new);
                    log.append(id, "observation", DomainEvent::ObservationCorrected(ObservationCorrected { values }), Some("r"));
                }
                Step::Retract { nth } if !recorded.is_empty() => {
                    let id = recorded[nth % recorded.len()];
                    if log.views.observations[&id].state.status == ObservationStatus::Retracted {
                        continue;
                    }
                    log.append(id, "observation", DomainEvent::ObservationRetracted, Some("r"));
                }
                _ => {}
            }
            let (study_stats, subjects) = recompute(&log.views);
            let study = &log.views.studies[&STUDY];
            let rendered: Vec<Value> = study.state.variables.iter()
                .map(|v| study.stats.get(v.name.as_str()).cloned().unwrap_or_default().render(v.kind))
                .collect();
            prop_assert_eq!(json!(rendered), study_stats);
            for (s, expected) in subjects.iter().enumerate() {
                let view = &log.views.subjects[&Uuid::from_u128(100 + s as u128)];
                let rendered: Vec<Value> = study.state.variables.iter()
                    .map(|v| view.stats.get(v.name.as_str()).cloned().unwrap_or_default().render(v.kind))
                    .collect();
                prop_assert_eq!(&json!(rendered), &expected["stats"]);
                prop_assert_eq!(json!(view.observations), expected["n"].clone());
                let latest: Map<String, Value> = view.latest.iter().map(|(k, l)| (k.clone(), l.value.clone())).collect();
                prop_assert_eq!(&json!(latest), &expected["latest"]);
            }
            let counts = study.observations;
            prop_assert_eq!(counts.total as usize, recorded.len());
            // What a read table keeps of an observation gives its view back.
            for view in log.views.observations.values() {
                let back = ObservationView::from_document(&view.document(), view.state.authors.clone());
                prop_assert_eq!(back.as_ref().ok(), Some(view));
            }
        }
    }
}

#[test]
fn documents_have_the_contract_shape() {
    let mut log = setup();
    let id = Uuid::from_u128(5000);
    let mut values = BTreeMap::new();
    values.insert("mass".to_owned(), json!(3750.0));
    values.insert("sex".to_owned(), json!("MALE"));
    log.append(
        id,
        "observation",
        DomainEvent::ObservationRecorded(ObservationRecorded {
            observation_id: id,
            study_id: STUDY,
            subject_id: Uuid::from_u128(100),
            observed_at: Utc.timestamp_opt(1_194_739_200, 0).unwrap(),
            values,
            comment: Some("Nest never observed with full clutch.".into()),
        }),
        None,
    );
    let study = log.views.studies[&STUDY].document();
    assert_eq!(
        study["subjects"],
        json!({"total": 2, "active": 2, "withdrawn": 0})
    );
    assert_eq!(
        study["observations"],
        json!({"total": 1, "corrected": 0, "retracted": 0, "signed": 0})
    );
    assert_eq!(
        study["variables"][0]["stats"],
        json!({"n": 1, "mean": 3750.0, "sd": null, "min": 3750.0, "max": 3750.0})
    );
    assert_eq!(
        study["variables"][1]["stats"],
        json!({"n": 1, "counts": {"MALE": 1}})
    );
    assert_eq!(study["position"], 4);
    let subject = log.views.subjects[&Uuid::from_u128(100)]
        .document(&log.views.studies[&STUDY].state.variables);
    assert_eq!(subject["latest"]["mass"]["value"], 3750.0);
    assert_eq!(subject["latest"]["mass"]["observation_id"], id.to_string());
    let observation: Value =
        serde_json::from_slice(&log.views.observations[&id].document()).unwrap();
    assert_eq!(observation["status"], "recorded");
    assert_eq!(observation["original_values"], observation["values"]);
    assert_eq!(observation["observed_at"], "2007-11-11T00:00:00.000000Z");
}
