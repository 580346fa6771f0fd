//! Given/when/then tests of `decide` and `apply`, and a property test that
//! drives random command sequences against a small reference model.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::*;

/// The states of every aggregate, built only through `apply`.
#[derive(Default)]
struct World {
    states: HashMap<Uuid, AggregateState>,
    clock: i64,
}

impl World {
    fn study(&self, id: Uuid) -> Option<&StudyState> {
        match self.states.get(&id) {
            Some(AggregateState::Study(s)) => Some(s),
            _ => None,
        }
    }

    fn subject(&self, id: Uuid) -> Option<&SubjectState> {
        match self.states.get(&id) {
            Some(AggregateState::Subject(s)) => Some(s),
            _ => None,
        }
    }

    fn observation(&self, id: Uuid) -> Option<&ObservationState> {
        match self.states.get(&id) {
            Some(AggregateState::Observation(s)) => Some(s),
            _ => None,
        }
    }

    /// Finds the states a command needs, as the command API does.
    /// The states `command` reads, gathered by `Command::reads` as the
    /// command API gathers them.
    fn states_for(&self, command: &Command) -> States<'_> {
        let mut states = States::default();
        for read in command.reads() {
            let Some(id) = read.id(|kind| states.study_of(kind)) else {
                continue;
            };
            match read.kind {
                AggregateKind::Study => states.study = self.study(id),
                AggregateKind::Subject => states.subject = self.subject(id),
                AggregateKind::Observation => states.observation = self.observation(id),
            }
        }
        states
    }

    fn handle(&mut self, actor: &str, command: &Command) -> Result<Vec<DomainEvent>, DomainError> {
        let events = decide(command, actor, self.states_for(command))?;
        let (_, id) = command.written();
        for event in &events {
            self.clock += 1;
            let meta = EventMeta {
                actor: actor.to_owned(),
                recorded_at: Utc.timestamp_opt(1_700_000_000 + self.clock, 0).unwrap(),
                reason: command.reason().map(str::to_owned),
            };
            let next =
                apply(self.states.remove(&id), event, &meta).expect("decided events always apply");
            self.states.insert(id, next);
        }
        Ok(events)
    }
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

const STUDY: u128 = 1;
const SUBJECT: u128 = 2;
const OBSERVATION: u128 = 3;

fn variable(name: &str, kind: VariableKind) -> NewVariable {
    NewVariable {
        name: VariableName::parse(name).unwrap(),
        kind,
        unit: None,
        min: None,
        max: None,
        categories: None,
    }
}

fn penguin_variables() -> Vec<NewVariable> {
    let mut mass = variable("body_mass_g", VariableKind::Integer);
    mass.min = Some(0.0);
    mass.max = Some(10_000.0);
    let mut sex = variable("sex", VariableKind::Categorical);
    sex.categories = Some(vec!["MALE".parse().unwrap(), "FEMALE".parse().unwrap()]);
    vec![
        variable("culmen_length_mm", VariableKind::Numeric),
        mass,
        sex,
    ]
}

fn register_study() -> Command {
    Command::RegisterStudy(RegisterStudy {
        study_id: id(STUDY),
        code: StudyCode::parse("PAL0708").unwrap(),
        title: "Palmer penguins 2007-08".parse().unwrap(),
        principal_investigator: "Kristen Gorman".parse().unwrap(),
        description: None,
        variables: penguin_variables(),
    })
}

fn register_subject() -> Command {
    Command::RegisterSubject(RegisterSubject {
        study_id: id(STUDY),
        subject_id: id(SUBJECT),
        label: "N1A1".parse().unwrap(),
        attributes: Attributes::default(),
    })
}

fn values(pairs: &[(&str, Value)]) -> ObservationValues {
    let map: BTreeMap<VariableName, Value> = pairs
        .iter()
        .map(|(k, v)| (VariableName::parse(k).unwrap(), v.clone()))
        .collect();
    ObservationValues::parse(map).unwrap()
}

fn record(observation: u128, vals: &[(&str, Value)]) -> Command {
    Command::RecordObservation(RecordObservation {
        subject_id: id(SUBJECT),
        observation_id: id(observation),
        observed_at: DateTime::parse_from_rfc3339("2007-11-11T00:00:00Z")
            .unwrap()
            .into(),
        values: values(vals),
        comment: None,
    })
}

fn correct(vals: &[(&str, Value)], reason: &str) -> Command {
    Command::CorrectObservation(CorrectObservation {
        observation_id: id(OBSERVATION),
        values: values(vals),
        reason: reason.parse().unwrap(),
    })
}

fn sign(meaning: SignatureMeaning) -> Command {
    Command::SignObservation {
        observation_id: id(OBSERVATION),
        meaning,
    }
}

#[test]
fn every_command_reads_what_it_writes_and_guards_only_what_it_reads() {
    let reason: Reason = "a reason".parse().unwrap();
    let commands = [
        register_study(),
        Command::CloseStudy {
            study_id: id(STUDY),
            reason: reason.clone(),
        },
        register_subject(),
        Command::WithdrawSubject {
            subject_id: id(SUBJECT),
            reason: reason.clone(),
        },
        record(OBSERVATION, &[("culmen_length_mm", json!(39.1))]),
        correct(&[("culmen_length_mm", json!(39.2))], "typo"),
        Command::RetractObservation {
            observation_id: id(OBSERVATION),
            reason,
        },
        sign(SignatureMeaning::Approved),
    ];
    for command in &commands {
        let reads = command.reads();
        let (kind, written) = command.written();
        let read_written = reads.iter().find(|r| r.kind == kind).unwrap();
        assert_eq!(read_written.at, ReadAt::Id(written), "{}", command.name());
        assert_eq!(
            read_written.creates,
            command.creates(),
            "{}",
            command.name()
        );
        for guarded in command.guards() {
            assert_ne!(*guarded, kind, "{} guards what it writes", command.name());
            assert!(
                reads.iter().any(|r| r.kind == *guarded),
                "{} guards what it does not read",
                command.name()
            );
        }
        // A read of the study of another state comes after that state.
        for (i, read) in reads.iter().enumerate() {
            if let ReadAt::StudyOf(of) = read.at {
                assert!(reads[..i].iter().any(|r| r.kind == of));
            }
        }
    }
    let claims = register_study().claims();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].scope, ClaimScope::StudyCode);
    assert_eq!(claims[0].key, "PAL0708");
    assert!(register_subject().claims().is_empty());
}

/// A study with one subject and one observation of 39.1 mm, by "alice".
fn given_recorded() -> World {
    let mut w = World::default();
    w.handle("alice", &register_study()).unwrap();
    w.handle("alice", &register_subject()).unwrap();
    w.handle(
        "alice",
        &record(OBSERVATION, &[("culmen_length_mm", json!(39.1))]),
    )
    .unwrap();
    w
}

fn rule_of(result: Result<Vec<DomainEvent>, DomainError>) -> Rule {
    match result {
        Err(DomainError::Rule { rule, .. }) => rule,
        other => panic!("expected a rule breach, got {other:?}"),
    }
}

#[test]
fn registering_a_study_twice_is_a_conflict() {
    let mut w = World::default();
    w.handle("alice", &register_study()).unwrap();
    assert!(matches!(
        w.handle("alice", &register_study()),
        Err(DomainError::AlreadyExists {
            kind: AggregateKind::Study,
            ..
        })
    ));
}

#[test]
fn variable_names_must_be_unique() {
    let mut vars = penguin_variables();
    vars.push(variable("sex", VariableKind::Text));
    let command = Command::RegisterStudy(RegisterStudy {
        study_id: id(STUDY),
        code: StudyCode::parse("X").unwrap(),
        title: "t".parse().unwrap(),
        principal_investigator: "p".parse().unwrap(),
        description: None,
        variables: vars,
    });
    assert_eq!(
        rule_of(World::default().handle("a", &command)),
        Rule::DuplicateVariable
    );
}

#[test]
fn a_recorded_observation_keeps_its_values_and_author() {
    let w = given_recorded();
    let o = w.observation(id(OBSERVATION)).unwrap();
    assert_eq!(o.values["culmen_length_mm"], json!(39.1));
    assert_eq!(o.original_values, o.values);
    assert_eq!(o.status, ObservationStatus::Recorded);
    assert_eq!(o.recorded_by, "alice");
    assert_eq!(o.version, 1);
}

#[test]
fn an_observation_may_only_name_declared_variables() {
    let mut w = given_recorded();
    let result = w.handle("alice", &record(9, &[("flipper_length_mm", json!(181))]));
    assert_eq!(rule_of(result), Rule::UnknownVariable);
}

#[test]
fn values_must_fit_kind_range_and_categories() {
    let mut w = given_recorded();
    for bad in [
        ("body_mass_g", json!(37.5)),
        ("body_mass_g", json!(-1)),
        ("sex", json!("UNKNOWN")),
        ("culmen_length_mm", json!("39.1")),
    ] {
        let result = w.handle("alice", &record(9, std::slice::from_ref(&bad)));
        assert_eq!(rule_of(result), Rule::ValueDoesNotFit, "{bad:?}");
    }
}

#[test]
fn null_means_measured_as_missing() {
    let mut w = given_recorded();
    w.handle("alice", &record(9, &[("body_mass_g", Value::Null)]))
        .unwrap();
    assert_eq!(
        w.observation(id(9)).unwrap().values["body_mass_g"],
        Value::Null
    );
}

#[test]
fn an_observation_needs_at_least_one_value() {
    let mut w = given_recorded();
    assert_eq!(rule_of(w.handle("alice", &record(9, &[]))), Rule::NoValues);
}

#[test]
fn nothing_may_be_added_to_a_closed_study() {
    let mut w = given_recorded();
    w.handle(
        "alice",
        &Command::CloseStudy {
            study_id: id(STUDY),
            reason: "season over".parse().unwrap(),
        },
    )
    .unwrap();
    let result = w.handle("alice", &record(9, &[("culmen_length_mm", json!(40.0))]));
    assert_eq!(rule_of(result), Rule::StudyClosed);
    let subject = Command::RegisterSubject(RegisterSubject {
        study_id: id(STUDY),
        subject_id: id(10),
        label: "N1A2".parse().unwrap(),
        attributes: Attributes::default(),
    });
    assert_eq!(rule_of(w.handle("alice", &subject)), Rule::StudyClosed);
}

#[test]
fn nothing_may_be_added_to_a_withdrawn_subject() {
    let mut w = given_recorded();
    w.handle(
        "alice",
        &Command::WithdrawSubject {
            subject_id: id(SUBJECT),
            reason: "consent withdrawn".parse().unwrap(),
        },
    )
    .unwrap();
    let result = w.handle("alice", &record(9, &[("culmen_length_mm", json!(40.0))]));
    assert_eq!(rule_of(result), Rule::SubjectWithdrawn);
}

#[test]
fn changes_must_give_a_reason() {
    let mut w = given_recorded();
    for command in [
        correct(&[("culmen_length_mm", json!(39.2))], " "),
        Command::RetractObservation {
            observation_id: id(OBSERVATION),
            reason: "".parse().unwrap(),
        },
        Command::WithdrawSubject {
            subject_id: id(SUBJECT),
            reason: "".parse().unwrap(),
        },
        Command::CloseStudy {
            study_id: id(STUDY),
            reason: "".parse().unwrap(),
        },
    ] {
        assert_eq!(rule_of(w.handle("alice", &command)), Rule::ReasonRequired);
    }
}

#[test]
fn a_correction_must_change_a_value_and_keeps_the_original() {
    let mut w = given_recorded();
    let same = correct(&[("culmen_length_mm", json!(39.1))], "typo");
    assert_eq!(rule_of(w.handle("bob", &same)), Rule::NothingChanged);
    w.handle(
        "bob",
        &correct(&[("culmen_length_mm", json!(39.2))], "typo"),
    )
    .unwrap();
    let o = w.observation(id(OBSERVATION)).unwrap();
    assert_eq!(o.values["culmen_length_mm"], json!(39.2));
    assert_eq!(o.original_values["culmen_length_mm"], json!(39.1));
    assert_eq!(o.status, ObservationStatus::Corrected);
    assert_eq!(o.corrections, 1);
    assert_eq!(o.last_change_reason.as_deref(), Some("typo"));
    assert_eq!(o.last_changed_by, "bob");
}

#[test]
fn a_retracted_observation_cannot_be_corrected_or_signed() {
    let mut w = given_recorded();
    w.handle(
        "alice",
        &Command::RetractObservation {
            observation_id: id(OBSERVATION),
            reason: "wrong bird".parse().unwrap(),
        },
    )
    .unwrap();
    let o = w.observation(id(OBSERVATION)).unwrap();
    assert_eq!(o.status, ObservationStatus::Retracted);
    assert_eq!(
        o.values["culmen_length_mm"],
        json!(39.1),
        "a retraction keeps the values"
    );
    let result = w.handle("bob", &correct(&[("culmen_length_mm", json!(40.0))], "x"));
    assert_eq!(rule_of(result), Rule::ObservationRetracted);
    assert_eq!(
        rule_of(w.handle("rev", &sign(SignatureMeaning::Reviewed))),
        Rule::ObservationRetracted
    );
}

#[test]
fn a_correction_voids_earlier_signatures() {
    let mut w = given_recorded();
    w.handle("rev", &sign(SignatureMeaning::Approved)).unwrap();
    assert_eq!(w.observation(id(OBSERVATION)).unwrap().signatures.len(), 1);
    w.handle(
        "bob",
        &correct(&[("culmen_length_mm", json!(39.2))], "recalibrated"),
    )
    .unwrap();
    assert!(w
        .observation(id(OBSERVATION))
        .unwrap()
        .signatures
        .is_empty());
}

#[test]
fn approval_needs_a_second_person() {
    let mut w = given_recorded();
    assert_eq!(
        rule_of(w.handle("alice", &sign(SignatureMeaning::Approved))),
        Rule::SelfApproval
    );
    // Reviewing one's own record is allowed; approving it is not.
    w.handle("alice", &sign(SignatureMeaning::Reviewed))
        .unwrap();
    w.handle(
        "bob",
        &correct(&[("culmen_length_mm", json!(39.2))], "typo"),
    )
    .unwrap();
    assert_eq!(
        rule_of(w.handle("bob", &sign(SignatureMeaning::Approved))),
        Rule::SelfApproval
    );
    // The recorder is an author of every version, corrected or not.
    assert_eq!(
        rule_of(w.handle("alice", &sign(SignatureMeaning::Approved))),
        Rule::SelfApproval
    );
    w.handle("carol", &sign(SignatureMeaning::Approved))
        .unwrap();
}

#[test]
fn the_same_signature_is_not_given_twice() {
    let mut w = given_recorded();
    w.handle("rev", &sign(SignatureMeaning::Reviewed)).unwrap();
    assert_eq!(
        rule_of(w.handle("rev", &sign(SignatureMeaning::Reviewed))),
        Rule::AlreadySigned
    );
}

#[test]
fn unknown_targets_are_not_found() {
    let mut w = World::default();
    assert!(matches!(
        w.handle("a", &record(9, &[("x", json!(1))])),
        Err(DomainError::NotFound {
            kind: AggregateKind::Subject,
            ..
        })
    ));
    assert!(matches!(
        w.handle("a", &sign(SignatureMeaning::Reviewed)),
        Err(DomainError::NotFound {
            kind: AggregateKind::Observation,
            ..
        })
    ));
}

#[test]
fn an_amendment_adds_variables_and_must_change_something() {
    let mut w = given_recorded();
    let nothing = Command::AmendStudy(AmendStudy {
        study_id: id(STUDY),
        title: None,
        description: None,
        add_variables: vec![],
        reason: "r".parse().unwrap(),
    });
    assert_eq!(rule_of(w.handle("a", &nothing)), Rule::NothingChanged);
    let clash = Command::AmendStudy(AmendStudy {
        add_variables: vec![variable("sex", VariableKind::Text)],
        ..match nothing.clone() {
            Command::AmendStudy(a) => a,
            _ => unreachable!(),
        }
    });
    assert_eq!(rule_of(w.handle("a", &clash)), Rule::DuplicateVariable);
    let add = Command::AmendStudy(AmendStudy {
        study_id: id(STUDY),
        title: None,
        description: None,
        add_variables: vec![variable("flipper_length_mm", VariableKind::Integer)],
        reason: "protocol v2".parse().unwrap(),
    });
    w.handle("a", &add).unwrap();
    w.handle("a", &record(9, &[("flipper_length_mm", json!(181))]))
        .unwrap();
}

#[test]
fn event_payloads_round_trip_through_their_canonical_data() {
    let w = given_recorded();
    let o = w.observation(id(OBSERVATION)).unwrap();
    let event = DomainEvent::ObservationRecorded(ObservationRecorded {
        observation_id: o.id,
        study_id: o.study_id,
        subject_id: o.subject_id,
        observed_at: o.observed_at,
        values: o.values.clone(),
        comment: Some("Nest never observed with full clutch.".parse().unwrap()),
    });
    let data = event.to_data();
    assert_eq!(
        DomainEvent::decode(event.event_type(), &data).unwrap(),
        event
    );
    // Keys are sorted, so the bytes do not depend on struct field order.
    let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(&data)
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(DomainEvent::decode("research.nothing.v1", "{}").is_err());
}

/// One step of a random history over one study, two subjects and three
/// observation ids, made by two writers and a reviewer.
#[derive(Debug, Clone)]
enum Step {
    Record {
        subject: usize,
        observation: usize,
        value: Option<i64>,
    },
    Correct {
        observation: usize,
        value: Option<i64>,
        by: usize,
    },
    Retract {
        observation: usize,
    },
    Sign {
        observation: usize,
        approve: bool,
        by: usize,
    },
    Withdraw {
        subject: usize,
    },
    Close,
}

fn step() -> impl Strategy<Value = Step> {
    let value = prop::option::weighted(0.8, 0i64..5);
    prop_oneof![
        4 => (0..2usize, 0..3usize, value.clone()).prop_map(|(subject, observation, value)| Step::Record { subject, observation, value }),
        3 => (0..3usize, value, 0..3usize).prop_map(|(observation, value, by)| Step::Correct { observation, value, by }),
        1 => (0..3usize).prop_map(|observation| Step::Retract { observation }),
        2 => (0..3usize, any::<bool>(), 0..3usize).prop_map(|(observation, approve, by)| Step::Sign { observation, approve, by }),
        1 => (0..2usize).prop_map(|subject| Step::Withdraw { subject }),
        1 => Just(Step::Close),
    ]
}

/// (value, retracted, signatures in force as (signer, approved), authors).
type ModelObservation = (Option<i64>, bool, Vec<(usize, bool)>, Vec<usize>);

/// The reference model: the rules written out again, as plainly as possible.
#[derive(Debug, Default, Clone)]
struct Model {
    closed: bool,
    withdrawn: [bool; 2],
    observations: [Option<ModelObservation>; 3],
}

const ACTORS: [&str; 3] = ["w0", "w1", "rev"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decide_agrees_with_the_reference_model(steps in prop::collection::vec(step(), 1..40)) {
        let mut w = World::default();
        let mut vars = penguin_variables();
        vars.retain(|v| v.name.as_str() == "body_mass_g");
        w.handle("w0", &Command::RegisterStudy(RegisterStudy {
            study_id: id(STUDY), code: StudyCode::parse("P").unwrap(), title: "t".parse().unwrap(),
            principal_investigator: "p".parse().unwrap(), description: None, variables: vars,
        })).unwrap();
        for s in 0..2u128 {
            w.handle("w0", &Command::RegisterSubject(RegisterSubject {
                study_id: id(STUDY), subject_id: id(100 + s), label: format!("s{s}").parse().unwrap(), attributes: Attributes::default(),
            })).unwrap();
        }
        let mut m = Model::default();
        let json_of = |v: Option<i64>| v.map_or(Value::Null, |v| json!(v));
        for step in steps {
            let (actor, command, expect_ok) = match step.clone() {
                Step::Record { subject, observation, value } => {
                    let ok = !m.closed && !m.withdrawn[subject] && m.observations[observation].is_none();
                    let command = Command::RecordObservation(RecordObservation {
                        subject_id: id(100 + subject as u128),
                        observation_id: id(200 + observation as u128),
                        observed_at: Utc.timestamp_opt(0, 0).unwrap(),
                        values: values(&[("body_mass_g", json_of(value))]),
                        comment: None,
                    });
                    if ok { m.observations[observation] = Some((value, false, vec![], vec![0])); }
                    (0, command, ok)
                }
                Step::Correct { observation, value, by } => {
                    let ok = !m.closed && matches!(&m.observations[observation], Some((v, false, _, _)) if *v != value);
                    if let (true, Some(o)) = (ok, &mut m.observations[observation]) {
                        o.0 = value;
                        o.2.clear();
                        o.3.push(by);
                    }
                    (by, Command::CorrectObservation(CorrectObservation {
                        observation_id: id(200 + observation as u128),
                        values: values(&[("body_mass_g", json_of(value))]),
                        reason: "r".parse().unwrap(),
                    }), ok)
                }
                Step::Retract { observation } => {
                    let ok = !m.closed && matches!(&m.observations[observation], Some((_, false, _, _)));
                    if ok { if let Some(o) = &mut m.observations[observation] { o.1 = true; } }
                    (0, Command::RetractObservation { observation_id: id(200 + observation as u128), reason: "r".parse().unwrap() }, ok)
                }
                Step::Sign { observation, approve, by } => {
                    let ok = matches!(&m.observations[observation],
                        Some((_, false, sigs, authors)) if !(sigs.contains(&(by, approve)) || approve && authors.contains(&by)));
                    if ok { if let Some(o) = &mut m.observations[observation] { o.2.push((by, approve)); } }
                    let meaning = if approve { SignatureMeaning::Approved } else { SignatureMeaning::Reviewed };
                    (by, Command::SignObservation { observation_id: id(200 + observation as u128), meaning }, ok)
                }
                Step::Withdraw { subject } => {
                    let ok = !m.withdrawn[subject];
                    m.withdrawn[subject] = true;
                    (0, Command::WithdrawSubject { subject_id: id(100 + subject as u128), reason: "r".parse().unwrap() }, ok)
                }
                Step::Close => {
                    let ok = !m.closed;
                    m.closed = true;
                    (0, Command::CloseStudy { study_id: id(STUDY), reason: "r".parse().unwrap() }, ok)
                }
            };
            let result = w.handle(ACTORS[actor], &command);
            prop_assert_eq!(result.is_ok(), expect_ok, "{:?} -> {:?}", step, result);
            for (i, expected) in m.observations.iter().enumerate() {
                let actual = w.observation(id(200 + i as u128));
                prop_assert_eq!(actual.is_some(), expected.is_some());
                if let (Some(o), Some((value, retracted, sigs, _))) = (actual, expected) {
                    prop_assert_eq!(&o.values["body_mass_g"], &json_of(*value));
                    prop_assert_eq!(o.status == ObservationStatus::Retracted, *retracted);
                    prop_assert_eq!(o.signatures.len(), sigs.len());
                }
            }
        }
    }
}
