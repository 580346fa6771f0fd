//! Rebuilding the log's Merkle tree from events, against the raw baseline
//! of hashing the same bytes once (what `sha256sum` does), in one run:
//!   sha256:      SHA-256 over the events' canonical bytes, end to end;
//!   chain+tree:  each event's chain hash recomputed from its canonical
//!                bytes, then the tree grown over them (a verifying
//!                rebuild, as `research-verify` does);
//!   tree:        the tree grown over the stored hashes (as the
//!                checkpointer's `extend` does, without the database).
//! Over the real NYC weather rows (26,000 observation events); throughput
//! in bytes of canonical event.

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sha2::{Digest, Sha256};
use shared::envelope::{StoredEvent, GENESIS_HASH};
use shared::merkle::{leaf_hash, Frontier};
use uuid::Uuid;

fn events() -> Vec<StoredEvent> {
    let path = benches::datasets::data_dir().join("nyc_weather_2013.csv");
    let study = benches::datasets::weather(&path, "NYCWX").expect("the weather data set");
    let study_id = Uuid::now_v7();
    let mut prev = GENESIS_HASH;
    let mut events = Vec::new();
    for subject in &study.subjects {
        for o in &subject.observations {
            let mut data = o.record_body();
            data["study_id"] = serde_json::json!(study_id);
            let position = events.len() as i64 + 1;
            let mut e = StoredEvent {
                position,
                event_id: Uuid::now_v7(),
                aggregate_type: "observation".into(),
                aggregate_id: Uuid::now_v7(),
                stream_version: 1,
                study_id,
                event_type: "research.observation.recorded.v1".into(),
                schema_version: 1,
                data: data.to_string(),
                actor: "importer".into(),
                reason: None,
                correlation_id: Uuid::now_v7().to_string(),
                causation_id: Uuid::now_v7().to_string(),
                recorded_at: Utc.timestamp_opt(1_700_000_000 + position, 0).unwrap(),
                prevhash: prev,
                hash: [0; 32],
            };
            e.hash = e.compute_hash();
            prev = e.hash;
            events.push(e);
        }
    }
    events
}

fn rebuild(c: &mut Criterion) {
    let events = events();
    let canonical: Vec<Vec<u8>> = events.iter().map(StoredEvent::canonical_bytes).collect();
    let bytes: usize = canonical.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group(format!("tree of {} events", events.len()));
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(20);
    group.bench_function("sha256 over the canonical bytes (raw)", |b| {
        b.iter(|| {
            let mut h = Sha256::new();
            for c in &canonical {
                h.update(c);
            }
            h.finalize()
        })
    });
    group.bench_function("chain and tree from the canonical bytes", |b| {
        b.iter(|| {
            let mut prev = GENESIS_HASH;
            let mut frontier = Frontier::default();
            for c in &canonical {
                let mut h = Sha256::new();
                h.update(prev);
                h.update(c);
                prev = h.finalize().into();
                frontier.push_with(leaf_hash(&prev), |_, _, _| {});
            }
            assert_eq!(prev, events.last().unwrap().hash);
            frontier.root()
        })
    });
    group.bench_function("tree from the stored hashes", |b| {
        b.iter(|| {
            let mut frontier = Frontier::default();
            for e in &events {
                frontier.push_with(leaf_hash(&e.hash), |_, _, _| {});
            }
            frontier.root()
        })
    });
    group.finish();
}

criterion_group!(benches, rebuild);
criterion_main!(benches);
