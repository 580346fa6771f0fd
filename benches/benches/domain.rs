//! The pure steps every command and every event pass, over the real Palmer
//! penguin rows, each beside a raw baseline measured in the same run:
//!   decide+apply: a `RecordObservation` decided on its study and subject
//!                 and applied, against parsing the same values as JSON;
//!   hash:         an event's canonical bytes and chain hash, against
//!                 SHA-256 over its `data` bytes alone;
//!   document:     the observation document the projector stores and
//!                 serves, against serializing its values map alone;
//!   batch:        what the projector computes for a one-event batch
//!                 (decode the stored study and subject views, project,
//!                 encode them, render the three documents) and the
//!                 statistics' rendering alone, against the same figures
//!                 computed in floating point.

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::Value;
use sha2::{Digest, Sha256};
use shared::domain::VariableKind;
use shared::domain::{
    apply, decide, AggregateState, Command, DomainEvent, EventMeta, NewVariable, ObservationValues,
    RecordObservation, RegisterStudy, RegisterSubject, States,
};
use shared::envelope::{StoredEvent, GENESIS_HASH};
use shared::projection::{ObservationView, StudyView, SubjectView, Views};
use uuid::Uuid;

/// The first penguin season: the study, one subject, and every row of the
/// season as a command on that subject.
struct Season {
    study: AggregateState,
    subject: AggregateState,
    /// The study's and the subject's registrations.
    registered: Vec<DomainEvent>,
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
) -> (AggregateState, Vec<DomainEvent>) {
    let events = decide(command, "importer", states).expect("a valid command");
    let mut state = before;
    for event in &events {
        state = Some(apply(state, event, &meta()).expect("decided events apply"));
    }
    (state.expect("one event"), events)
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
    let (study, mut registered) = decided(&register, States::default(), None);
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
    let (subject, subject_events) = decided(&register_subject, states, None);
    registered.extend(subject_events);
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
        registered,
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
                .map(|command| decided(command, states, None).0.version())
                .sum::<i64>()
        })
    });
    group.finish();
}

/// `event` as the store holds it at `position`.
fn stored(position: i64, aggregate_id: Uuid, study_id: Uuid, event: &DomainEvent) -> StoredEvent {
    StoredEvent {
        position,
        event_id: Uuid::now_v7(),
        aggregate_type: event.aggregate_kind().as_str().into(),
        aggregate_id,
        stream_version: 1,
        study_id,
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
    }
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
        events.push(stored(
            position,
            command.written().1,
            season.study.id(),
            event,
        ));
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

/// The season's study and subject views after every observation but the
/// last, as the read tables store them, and the last observation's event.
fn batch_of_one(season: &Season) -> (Vec<u8>, Vec<u8>, StoredEvent) {
    let study_id = season.study.id();
    let mut views = Views::default();
    let registrations = [(study_id, 0), (season.subject.id(), 1)];
    for (position, (id, i)) in registrations.into_iter().enumerate() {
        let event = stored(position as i64 + 1, id, study_id, &season.registered[i]);
        views.project(&event).expect("a registration projects");
    }
    let (mut events, _) = events_of(season);
    for e in &mut events {
        e.position += 2;
    }
    let last = events.pop().expect("a season has observations");
    for e in &events {
        let needs = views.project(e).expect("an observation projects");
        views.resolve_in_memory(&needs);
    }
    let study = serde_json::to_vec(&views.studies[&study_id]).expect("a study view");
    let subject = serde_json::to_vec(&views.subjects[&season.subject.id()]).expect("a view");
    (study, subject, last)
}

fn one_event_batch(c: &mut Criterion) {
    let season = season();
    let (study_bytes, subject_bytes, last) = batch_of_one(&season);
    let study: StudyView = serde_json::from_slice(&study_bytes).expect("a study view");
    let subject: SubjectView = serde_json::from_slice(&subject_bytes).expect("a subject view");
    let variables = &study.state.variables;
    let mut group = c.benchmark_group("one-event batch");
    group.bench_function("decode, project, encode, render", |b| {
        b.iter(|| {
            let mut views = Views::default();
            let study: StudyView = serde_json::from_slice(&study_bytes).expect("a study view");
            let subject: SubjectView = serde_json::from_slice(&subject_bytes).expect("a view");
            views.studies.insert(study.state.id, study);
            views.subjects.insert(subject.state.id, subject);
            let needs = views.project(&last).expect("the last observation projects");
            views.resolve_in_memory(&needs);
            let (study, subject) = (
                &views.studies[&season.study.id()],
                &views.subjects[&season.subject.id()],
            );
            let observation = &views.observations[&last.aggregate_id];
            serde_json::to_vec(study).expect("json").len()
                + study.document().to_string().len()
                + serde_json::to_vec(subject).expect("json").len()
                + subject.document(&study.state.variables).to_string().len()
                + observation.document().len()
        })
    });
    // Each variable's statistics, rendered as the study's and the
    // subject's documents hold them.
    let kinds: Vec<_> = variables
        .iter()
        .map(|v| (v.name.as_str(), v.kind))
        .collect();
    group.bench_function("render the statistics", |b| {
        b.iter(|| {
            let mut n = 0;
            for (name, kind) in &kinds {
                for stats in [&study.stats, &subject.stats] {
                    if let Some(acc) = stats.get(*name) {
                        n += acc.render(*kind).as_object().map_or(0, |o| o.len());
                    }
                }
            }
            n
        })
    });
    // The same figures (n, mean, sd, min, max) from sums kept in f64.
    let sums: Vec<[f64; 5]> = kinds
        .iter()
        .flat_map(|(name, _)| [&study.stats, &subject.stats].map(|s| s.get(*name)))
        .flatten()
        .filter_map(|acc| {
            let stats = acc.render(VariableKind::Numeric);
            let (n, mean, sd) = (
                stats["n"].as_f64()?,
                stats["mean"].as_f64()?,
                stats["sd"].as_f64()?,
            );
            let sumsq = sd * sd * (n - 1.0) + mean * mean * n;
            Some([
                n,
                mean * n,
                sumsq,
                stats["min"].as_f64()?,
                stats["max"].as_f64()?,
            ])
        })
        .collect();
    group.bench_function("the same statistics in f64 (raw)", |b| {
        b.iter(|| {
            let mut n = 0;
            for [count, sum, sumsq, min, max] in &sums {
                let mean = sum / count;
                let sd = ((count * sumsq - sum * sum) / (count * (count - 1.0))).sqrt();
                let doc = serde_json::json!({"n": *count as u64, "mean": mean, "sd": sd, "min": min, "max": max});
                n += doc.as_object().map_or(0, |o| o.len());
            }
            n
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    decide_and_apply,
    hash_and_document,
    one_event_batch
);
criterion_main!(benches);
