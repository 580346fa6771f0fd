//! The in-memory cache of aggregate states that lets a typical command be
//! decided without reading PostgreSQL. A stale entry is safe: the append's
//! expected-version check rejects a decision made on it, and the command is
//! retried on a fresh load.
//!
//! Bounded in bytes (each state's heap is estimated when it is put), with a
//! CLOCK sweep: an entry read since the hand last passed it survives one
//! more turn. Studies and subjects, which every command on their records
//! reads, enter marked as read; an observation enters unmarked, so the
//! observations written once and never touched again are the first to go,
//! and one corrected or signed lately stays.

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;
use shared::domain::AggregateState;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Cached {
    pub state: Arc<AggregateState>,
    /// When the newest event folded into `state` was recorded.
    pub last_at: DateTime<Utc>,
}

impl Cached {
    pub fn version(&self) -> i64 {
        self.state.version()
    }
}

struct Slot {
    cached: Cached,
    bytes: usize,
    /// Read since the clock hand last passed.
    referenced: bool,
}

#[derive(Default)]
struct Inner {
    slots: HashMap<Uuid, Slot>,
    /// The clock: every id in `slots` once, in the order the hand visits
    /// them (an id may also linger here after its removal; it is skipped).
    clock: VecDeque<Uuid>,
    bytes: usize,
}

pub struct StateCache {
    inner: Mutex<Inner>,
    budget: usize,
}

impl StateCache {
    /// A cache of at most `budget` bytes of states (estimated).
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            budget: budget.max(64 * 1024),
        }
    }

    pub fn get(&self, id: Uuid) -> Option<Cached> {
        let found = self.lock().slots.get_mut(&id).map(|slot| {
            slot.referenced = true;
            slot.cached.clone()
        });
        let outcome = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("command_state_cache_lookups_total", "outcome" => outcome).increment(1);
        found
    }

    /// Keeps `entry` unless a newer version is already cached.
    pub fn put(&self, id: Uuid, entry: Cached) {
        let bytes = weight(&entry.state);
        let mut inner = self.lock();
        let referenced = !matches!(*entry.state, AggregateState::Observation(_));
        match inner.slots.get_mut(&id) {
            Some(slot) if slot.cached.version() >= entry.version() => return,
            Some(slot) => {
                let old = std::mem::replace(&mut slot.bytes, bytes);
                slot.cached = entry;
                slot.referenced |= referenced;
                inner.bytes = inner.bytes - old + bytes;
            }
            None => {
                inner.slots.insert(
                    id,
                    Slot {
                        cached: entry,
                        bytes,
                        referenced,
                    },
                );
                inner.clock.push_back(id);
                inner.bytes += bytes;
            }
        }
        inner.evict(self.budget);
        metrics::gauge!("command_state_cache_bytes").set(inner.bytes as f64);
        metrics::gauge!("command_state_cache_entries").set(inner.slots.len() as f64);
    }

    pub fn remove(&self, id: Uuid) {
        let mut inner = self.lock();
        if let Some(slot) = inner.slots.remove(&id) {
            inner.bytes -= slot.bytes;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Moves the clock hand until the states fit in `budget`: a referenced
    /// entry loses its mark and goes round again, an unmarked one goes.
    fn evict(&mut self, budget: usize) {
        // Two turns at most: the first clears every mark.
        let mut steps = 2 * self.clock.len();
        while self.bytes > budget && steps > 0 {
            steps -= 1;
            let Some(id) = self.clock.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&id) else {
                continue; // removed earlier
            };
            if slot.referenced {
                slot.referenced = false;
                self.clock.push_back(id);
            } else if let Some(slot) = self.slots.remove(&id) {
                self.bytes -= slot.bytes;
            }
        }
        // Ids removed by `remove` linger in the clock; drop them when they
        // outnumber the live ones.
        if self.clock.len() > 2 * self.slots.len() + 1024 {
            let slots = &self.slots;
            self.clock.retain(|id| slots.contains_key(id));
        }
    }
}

/// What an entry takes: the map's slot, the clock's id, the `Arc`, and an
/// estimate of the state's heap (strings, maps and vectors by their
/// lengths plus a fixed overhead per node and allocation). Calibrated
/// against the process's resident memory, filled with real weather
/// observations: the resident set grows by about what the estimate says
/// (within a fifth either way).
fn weight(state: &AggregateState) -> usize {
    const ENTRY: usize = size_of::<Uuid>() * 2 + size_of::<Slot>() + 64;
    // Every string and vector is an allocation of its own (with the
    // allocator's rounding and header).
    let heap = match state {
        AggregateState::Study(s) => {
            s.title.len()
                + s.principal_investigator.len()
                + s.description.as_ref().map_or(0, String::len)
                + s.variables
                    .iter()
                    .map(|v| {
                        96 + v.name.as_str().len()
                            + v.unit.as_ref().map_or(0, String::len)
                            + v.categories
                                .as_ref()
                                .map_or(0, |c| c.iter().map(|c| 24 + c.len()).sum())
                    })
                    .sum::<usize>()
        }
        AggregateState::Subject(s) => {
            s.label.len()
                + s.attributes
                    .iter()
                    .map(|(k, v)| 64 + k.len() + value_weight(v))
                    .sum::<usize>()
        }
        AggregateState::Observation(o) => {
            // A B-tree entry: its slot in a node (key, value) and the key's
            // own allocation.
            let values = |m: &std::collections::BTreeMap<String, Value>| {
                m.iter()
                    .map(|(k, v)| 88 + k.len() + value_weight(v))
                    .sum::<usize>()
            };
            values(&o.values)
                + values(&o.original_values)
                + o.comment.as_ref().map_or(0, String::len)
                + o.recorded_by.len()
                + o.last_changed_by.len()
                + o.last_change_reason.as_ref().map_or(0, String::len)
                + o.authors.iter().map(|a| 24 + a.len()).sum::<usize>()
                + o.signatures
                    .iter()
                    .map(|s| 64 + s.signer.len())
                    .sum::<usize>()
        }
    };
    ENTRY + size_of::<AggregateState>() + heap
}

fn value_weight(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        Value::Array(items) => items.iter().map(|v| 32 + value_weight(v)).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| 64 + k.len() + value_weight(v))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use serde_json::{json, Map};
    use shared::domain::{ObservationState, ObservationStatus, SubjectState, SubjectStatus};

    use super::*;

    fn subject(version: i64) -> Cached {
        Cached {
            state: Arc::new(AggregateState::Subject(SubjectState {
                id: Uuid::nil(),
                study_id: Uuid::nil(),
                label: "N1A1".into(),
                attributes: Map::new(),
                status: SubjectStatus::Active,
                version,
            })),
            last_at: Utc::now(),
        }
    }

    /// An observation of the nine penguin variables.
    fn observation() -> Cached {
        let values: BTreeMap<String, Value> = [
            ("culmen_length_mm", json!(39.1)),
            ("culmen_depth_mm", json!(18.7)),
            ("flipper_length_mm", json!(181)),
            ("body_mass_g", json!(3750)),
            ("sex", json!("MALE")),
            ("delta_15n", Value::Null),
            ("delta_13c", Value::Null),
            ("clutch_completion", json!(true)),
            ("egg_date", json!("2007-11-11")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Cached {
            state: Arc::new(AggregateState::Observation(ObservationState {
                id: Uuid::nil(),
                study_id: Uuid::nil(),
                subject_id: Uuid::nil(),
                observed_at: Utc::now(),
                values: values.clone(),
                original_values: values,
                comment: None,
                status: ObservationStatus::Recorded,
                corrections: 0,
                signatures: Vec::new(),
                recorded_by: "alice".into(),
                recorded_at: Utc::now(),
                authors: vec!["alice".into()],
                last_changed_by: "alice".into(),
                last_changed_at: Utc::now(),
                last_change_reason: None,
                version: 1,
            })),
            last_at: Utc::now(),
        }
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let cache = StateCache::new(1 << 20);
        let id = Uuid::now_v7();
        cache.put(id, subject(3));
        cache.put(id, subject(2));
        assert_eq!(cache.get(id).unwrap().version(), 3);
        cache.put(id, subject(4));
        assert_eq!(cache.get(id).unwrap().version(), 4);
    }

    #[test]
    fn the_cache_stays_within_its_bytes() {
        let budget = 256 * 1024;
        let cache = StateCache::new(budget);
        for _ in 0..10_000 {
            cache.put(Uuid::now_v7(), observation());
            assert!(cache.bytes() <= budget);
        }
        assert!(cache.len() > 100, "it holds what fits: {}", cache.len());
        let mut removed = 0;
        let ids: Vec<Uuid> = cache.lock().slots.keys().copied().collect();
        for id in ids {
            cache.remove(id);
            removed += 1;
        }
        assert_eq!(cache.bytes(), 0, "{removed} removed, every byte given back");
    }

    #[test]
    fn subjects_and_lately_read_observations_outlive_a_flood_of_new_observations() {
        let cache = StateCache::new(256 * 1024);
        let subjects: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
        for id in &subjects {
            cache.put(*id, subject(1));
        }
        let corrected = Uuid::now_v7();
        cache.put(corrected, observation());
        let mut newest = Vec::new();
        for round in 0..20_000 {
            let id = Uuid::now_v7();
            cache.put(id, observation());
            newest.push(id);
            // Commands read their subject, and one observation is being
            // corrected and signed now and then (more often than the
            // cache turns over).
            cache.get(subjects[round % subjects.len()]);
            if round % 50 == 0 {
                cache.get(corrected);
            }
        }
        assert!(subjects.iter().all(|id| cache.get(*id).is_some()));
        assert!(cache.get(corrected).is_some());
        // New observations leave in the order they came: the latest stay.
        assert!(newest
            .iter()
            .rev()
            .take(20)
            .all(|id| cache.get(*id).is_some()));
        assert!(cache.get(newest[0]).is_none());
    }
}
