//! The in-process tier: documents as the projector stored them, bounded in
//! bytes, evicted by a CLOCK sweep under pressure and by the replica's change
//! feed when a newer version exists.
//!
//! Freshness: `fresh_through` (F) is the replica checkpoint whose changes
//! have all been applied as evictions, so every entry present is current as
//! of F. An entry may only come in if it is current as of F at that moment
//! (checked under the same lock that applies the change feed), which keeps
//! a load that raced with a feed poll from planting an old version.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use uuid::Uuid;

use crate::encoding::Coding;

const SHARDS: usize = 16;
/// Bookkeeping per entry beyond its bytes (key, map slot, ring slot).
const OVERHEAD: usize = 160;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Study,
    Subject,
    Observation,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Study => "study",
            Kind::Subject => "subject",
            Kind::Observation => "observation",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "study" => Some(Kind::Study),
            "subject" => Some(Kind::Subject),
            "observation" => Some(Kind::Observation),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Doc(Kind, Uuid),
    /// A study looked up by its code.
    Code(String),
}

/// One version of a document, immutable once made; the compressed forms are
/// made on first demand.
#[derive(Debug)]
pub struct Doc {
    pub id: Uuid,
    pub study_id: Uuid,
    /// Position of the last event that changed the document: its version
    /// for the ETag.
    pub position: i64,
    pub body: Bytes,
    encoded: [OnceLock<Bytes>; 3],
}

impl Doc {
    pub fn new(id: Uuid, study_id: Uuid, position: i64, body: Bytes) -> Self {
        Self {
            id,
            study_id,
            position,
            body,
            encoded: Default::default(),
        }
    }

    /// The body in `coding`, compressed once and kept; the flag says whether
    /// this call made it.
    pub fn encoded(&self, coding: Coding) -> (Bytes, bool) {
        let Some(slot) = coding.slot() else {
            return (self.body.clone(), false);
        };
        let mut made = false;
        let bytes = self.encoded[slot].get_or_init(|| {
            made = true;
            coding.compress(&self.body)
        });
        (bytes.clone(), made)
    }
}

/// What a lookup found: a document, or that there is none (as of the
/// entry's position).
#[derive(Debug, Clone)]
pub enum Found {
    Doc(Arc<Doc>),
    Absent,
}

impl Found {
    fn position(&self) -> i64 {
        match self {
            Found::Doc(d) => d.position,
            Found::Absent => -1,
        }
    }

    fn weight(&self) -> usize {
        OVERHEAD
            + match self {
                Found::Doc(d) => d.body.len(),
                Found::Absent => 0,
            }
    }
}

struct Slot {
    found: Found,
    weight: usize,
    referenced: AtomicBool,
    generation: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Slot>,
    /// The CLOCK ring: keys with the generation they were inserted with (a
    /// key removed and inserted again leaves a stale ring slot behind).
    ring: VecDeque<(Key, u64)>,
    bytes: usize,
    generation: u64,
}

impl Shard {
    fn remove(&mut self, key: &Key) {
        if let Some(slot) = self.map.remove(key) {
            self.bytes -= slot.weight;
        }
    }

    /// Sweeps until the shard fits `limit`; answers the entries evicted.
    fn shrink(&mut self, limit: usize) -> usize {
        let mut evicted = 0;
        while self.bytes > limit {
            let Some((key, generation)) = self.ring.pop_front() else {
                break;
            };
            let Some(slot) = self.map.get(&key) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            if slot.referenced.swap(false, Ordering::Relaxed) {
                self.ring.push_back((key, generation));
            } else {
                self.remove(&key);
                evicted += 1;
            }
        }
        if self.ring.len() > 2 * self.map.len() + 64 {
            self.ring
                .retain(|(k, g)| self.map.get(k).is_some_and(|s| s.generation == *g));
        }
        evicted
    }
}

pub struct Cache {
    shards: Vec<Mutex<Shard>>,
    shard_limit: usize,
    hasher: std::collections::hash_map::RandomState,
    /// F: see the module comment.
    fresh_through: AtomicI64,
    /// Serialises admissions with the application of the change feed.
    admission: Mutex<()>,
}

/// A change the feed reported: the key's latest version is at `position`.
#[derive(Debug, Clone)]
pub struct Change {
    pub key: Key,
    pub position: i64,
}

impl Cache {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_limit: max_bytes / SHARDS,
            hasher: Default::default(),
            fresh_through: AtomicI64::new(-1),
            admission: Mutex::new(()),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// F, the position every entry is current as of; -1 before the first
    /// poll of the change feed (nothing is admitted until then).
    pub fn fresh_through(&self) -> i64 {
        self.fresh_through.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &Key) -> Option<Found> {
        let shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let slot = shard.map.get(key)?;
        slot.referenced.store(true, Ordering::Relaxed);
        Some(slot.found.clone())
    }

    /// Admits `found`, read from a source current as of `current_as_of`,
    /// unless the change feed has moved past that (it may have reported a
    /// newer version this load did not see) or a newer version is already
    /// held. Answers whether it was admitted.
    pub fn admit(&self, key: Key, found: Found, current_as_of: i64) -> bool {
        let _admission = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = self.fresh_through.load(Ordering::Acquire);
        if fresh < 0 || current_as_of < fresh {
            return false;
        }
        let weight = found.weight() + key_weight(&key);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = shard.map.get(&key) {
            if held.found.position() > found.position() {
                return false;
            }
            shard.remove(&key);
        }
        shard.generation += 1;
        let generation = shard.generation;
        shard.bytes += weight;
        shard.ring.push_back((key.clone(), generation));
        shard.map.insert(
            key,
            Slot {
                found,
                weight,
                referenced: AtomicBool::new(false),
                generation,
            },
        );
        let evicted = shard.shrink(self.shard_limit);
        drop(shard);
        if evicted > 0 {
            metrics::counter!("query_cache_evictions_total", "reason" => "size")
                .increment(evicted as u64);
        }
        true
    }

    /// Counts bytes a compressed form added to the entry holding `doc`.
    pub fn grew(&self, key: &Key, doc: &Arc<Doc>, extra: usize) {
        let mut shard = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        let same = matches!(shard.map.get(key), Some(Slot { found: Found::Doc(d), .. }) if Arc::ptr_eq(d, doc));
        if same {
            if let Some(slot) = shard.map.get_mut(key) {
                slot.weight += extra;
            }
            shard.bytes += extra;
            shard.shrink(self.shard_limit);
        }
    }

    /// Applies the change feed up to `through`: evicts every entry older
    /// than its key's latest version, then moves F.
    pub fn apply(&self, changes: &[Change], through: i64) {
        let _admission = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = 0u64;
        for change in changes {
            let mut shard = self
                .shard(&change.key)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let stale = shard
                .map
                .get(&change.key)
                .is_some_and(|s| s.found.position() < change.position);
            if stale {
                shard.remove(&change.key);
                evicted += 1;
            }
        }
        if evicted > 0 {
            metrics::counter!("query_cache_evictions_total", "reason" => "changed")
                .increment(evicted);
        }
        self.fresh_through.fetch_max(through, Ordering::AcqRel);
    }

    /// Forgets everything and restarts freshness at `through` (when the
    /// feed cannot say what changed, for instance after a long gap).
    pub fn reset(&self, through: i64) {
        let _admission = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.map.clear();
            shard.ring.clear();
            shard.bytes = 0;
        }
        self.fresh_through.fetch_max(through, Ordering::AcqRel);
    }

    /// Bytes held, summed over the shards (read by the freshness task for
    /// the `query_cache_bytes` gauge, never on a request).
    pub fn bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).bytes)
            .sum()
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key_weight(key: &Key) -> usize {
    match key {
        Key::Doc(..) => 0,
        Key::Code(code) => code.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(position: i64, size: usize) -> Found {
        Found::Doc(Arc::new(Doc::new(
            Uuid::now_v7(),
            Uuid::nil(),
            position,
            Bytes::from(vec![b'x'; size]),
        )))
    }

    fn key() -> Key {
        Key::Doc(Kind::Observation, Uuid::new_v4())
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let cache = Cache::new(1 << 20);
        cache.apply(&[], 0);
        for _ in 0..10_000 {
            assert!(cache.admit(key(), doc(1, 1000), 0));
        }
        assert!(cache.bytes() <= 1 << 20, "{} bytes", cache.bytes());
        assert!(cache.len() > 500, "it still holds most of what fits");
    }

    #[test]
    fn a_recently_used_entry_survives_the_sweep() {
        let cache = Cache::new(SHARDS * 20_000);
        cache.apply(&[], 0);
        let hot = key();
        cache.admit(hot.clone(), doc(1, 1000), 0);
        for _ in 0..2_000 {
            assert!(cache.get(&hot).is_some(), "the hot key was evicted");
            cache.admit(key(), doc(1, 1000), 0);
        }
    }

    #[test]
    fn nothing_is_admitted_older_than_the_feed() {
        let cache = Cache::new(1 << 20);
        let k = key();
        assert!(!cache.admit(k.clone(), doc(1, 10), 5), "no feed yet");
        cache.apply(&[], 10);
        assert!(!cache.admit(k.clone(), doc(1, 10), 9));
        assert!(cache.admit(k.clone(), doc(1, 10), 10));
        assert!(
            !cache.admit(k.clone(), doc(0, 10), 12),
            "an older version never replaces a newer one"
        );
        assert!(cache.admit(k.clone(), doc(11, 10), 12));
    }

    #[test]
    fn the_feed_evicts_only_older_versions() {
        let cache = Cache::new(1 << 20);
        cache.apply(&[], 0);
        let (a, b, c) = (key(), key(), key());
        cache.admit(a.clone(), doc(5, 10), 5);
        cache.admit(b.clone(), doc(5, 10), 5);
        cache.admit(c.clone(), Found::Absent, 5);
        cache.apply(
            &[
                Change {
                    key: a.clone(),
                    position: 5,
                },
                Change {
                    key: b.clone(),
                    position: 7,
                },
                Change {
                    key: c.clone(),
                    position: 6,
                },
            ],
            7,
        );
        assert!(cache.get(&a).is_some(), "the held version is the latest");
        assert!(cache.get(&b).is_none());
        assert!(cache.get(&c).is_none(), "a document that now exists");
        assert_eq!(cache.fresh_through(), 7);
    }
}
