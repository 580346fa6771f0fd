//! The pure steps every command and every event pass, over the real Palmer
//! penguin rows, each beside a raw baseline measured in the same run:
//!   decide+apply: a `RecordObservation` decided on its study and subject
//!                 and applied, against parsing the same values as JSON;
//!   hash:         an event's canonical bytes and chain hash, against
//!                 SHA-256 over its `data` bytes alone;
//!   document:     the observation document the projector stores and
//!                 serves, against serializing its values map alone.

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared::domain::{
    apply, decide, AggregateState, Command, DomainEvent, EventMeta, NewVariable, ObservationValues,
    RecordObservation, RegisterStudy, RegisterSubject, States,
};
use shared::envelope::{StoredEvent, GENESIS_HASH};
use shared::projection::ObservationView;
use uuid::Uuid;

/// The first penguin season: the study, one subject, and every row of the
/// season as a command on that subject.
struct Season {
    study: AggregateState,
    subject: AggregateState,
    commands: Vec<Command>,
    values_json: Vec<String>,
}

fn meta() -> EventMeta {
    EventMeta {
        actor: "importer".into(),
        recorded_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        reason: None,
    }
}

fn decided(
    command: &Command,
    states: States<'_>,
    before: Option<AggregateState>,
) -> AggregateState {
    let events = decide(command, "importer", states).expect("a valid command");
    let mut state = before;
    for event in &events {
        state = Some(apply(state, event, &meta()).expect("decided events apply"));
    }
    state.expect("one event")
}

fn season() -> Season {
    let path = benches::datasets::data_dir().join("penguins_raw.csv");
    let data = benches::datasets::penguins(&path).expect("the penguin data set");
    let first = &data[0];
    let variables: Vec<NewVariable> =
        serde_json::from_value(first.variables.clone()).expect("valid variables");
    let register = Command::RegisterStudy(RegisterStudy {
        study_id: Uuid::now_v7(),
        code: shared::domain::StudyCode::parse(&first.code).expect("a study code"),
        title: first.title.parse().expect("a title"),
        principal_investigator: first.principal_investigator.parse().expect("a name"),
        description: None,
        variables,
    });
    let study = decided(&register, States::default(), None);
    let subject_id = Uuid::now_v7();
    let register_subject = Command::RegisterSubject(RegisterSubject {
        study_id: study.id(),
        subject_id,
        label: "N1A1".parse().expect("a label"),
        attributes: Default::default(),
    });
    let states = States {
        study: study.as_study(),
        ..States::default()
    };
    let subject = decided(&register_subject, states, None);
    let mut commands = Vec::new();
    let mut values_json = Vec::new();
    for o in first.subjects.iter().flat_map(|s| &s.observations) {
        let json = serde_json::to_string(&o.values).expect("values serialize");
        let values: ObservationValues = serde_json::from_str(&json).expect("valid values");
        commands.push(Command::RecordObservation(RecordObservation {
            subject_id,
            observation_id: Uuid::now_v7(),
            observed_at: o.observed_at.parse().unwrap_or_else(|_| Utc::now()),
            values,
            comment: None,
        }));
        values_json.push(json);
    }
    Season {
        study,
        subject,
        commands,
        values_json,
    }
}

fn decide_and_apply(c: &mut Criterion) {
    let season = season();
    let mut group = c.benchmark_group(format!("{} observations", season.commands.len()));
    group.throughput(Throughput::Elements(season.commands.len() as u64));
    group.bench_function("parse the values as JSON (raw)", |b| {
        b.iter(|| {
            season
                .values_json
                .iter()
                .map(|j| serde_json::from_str::<Value>(j).expect("json"))
                .filter(Value::is_object)
                .count()
        })
    });
    group.bench_function("decide + apply", |b| {
        b.iter(|| {
            let states = States {
                study: season.study.as_study(),
                subject: season.subject.as_subject(),
                observation: None,
            };
            season
                .commands
                .iter()
                .map(|command| decided(command, states, None).version())
                .sum::<i64>()
        })
    });
    group.finish();
}

fn events_of(season: &Season) -> (Vec<StoredEvent>, Vec<ObservationView>) {
    let states = States {
        study: season.study.as_study(),
        subject: season.subject.as_subject(),
        observation: None,
    };
    let mut events = Vec::new();
    let mut views = Vec::new();
    for (i, command) in season.commands.iter().enumerate() {
        let decided_events = decide(command, "importer", states).expect("valid");
        let event: &DomainEvent = &decided_events[0];
        let position = i as i64 + 1;
        events.push(StoredEvent {
            position,
            event_id: Uuid::now_v7(),
            aggregate_type: "observation".into(),
            aggregate_id: command.written().1,
            stream_version: 1,
            study_id: season.study.id(),
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            data: event.to_data(),
            actor: "importer".into(),
            reason: None,
            correlation_id: Uuid::now_v7().to_string(),
            causation_id: Uuid::now_v7().to_string(),
            recorded_at: Utc.timestamp_opt(1_700_000_000 + position, 0).unwrap(),
            prevhash: GENESIS_HASH,
            hash: [0; 32],
        });
        if let Ok(AggregateState::Observation(state)) = apply(None, event, &meta()) {
            views.push(ObservationView { state, position });
        }
    }
    (events, views)
}

fn hash_and_document(c: &mut Criterion) {
    let season = season();
    let (events, views) = events_of(&season);
    let mut group = c.benchmark_group(format!("{} events", events.len()));
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("sha256 of the data bytes (raw)", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|e| Sha256::digest(e.data.as_bytes())[0])
                .fold(0u8, u8::wrapping_add)
        })
    });
    group.bench_function("canonical bytes + chain hash", |b| {
        b.iter(|| {
            events
                .iter()
                .map(|e| e.compute_hash()[0])
                .fold(0u8, u8::wrapping_add)
        })
    });
    group.bench_function("serialize the values map (raw)", |b| {
        b.iter(|| {
            views
                .iter()
                .map(|v| serde_json::to_vec(&v.state.values).expect("json").len())
                .sum::<usize>()
        })
    });
    group.bench_function("observation document", |b| {
        b.iter(|| views.iter().map(|v| v.document().len()).sum::<usize>())
    });
    group.finish();
}

criterion_group!(benches, decide_and_apply, hash_and_document);
criterion_main!(benches);
