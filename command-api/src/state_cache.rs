//! The in-memory cache of aggregate states that lets a typical command be
//! decided without reading PostgreSQL. A stale entry is safe: the append's
//! expected-version check rejects a decision made on it, and the command is
//! retried on a fresh load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
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

/// A bounded map. When full, an arbitrary eighth of the entries is dropped:
/// eviction only costs a reload, so no recency bookkeeping is kept on the
/// hot path.
pub struct StateCache {
    entries: Mutex<HashMap<Uuid, Cached>>,
    capacity: usize,
}

impl StateCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(16),
        }
    }

    pub fn get(&self, id: Uuid) -> Option<Cached> {
        self.lock().get(&id).cloned()
    }

    /// Keeps `entry` unless a newer version is already cached.
    pub fn put(&self, id: Uuid, entry: Cached) {
        let mut entries = self.lock();
        if entries
            .get(&id)
            .is_some_and(|c| c.version() >= entry.version())
        {
            return;
        }
        if entries.len() >= self.capacity {
            let drop: Vec<Uuid> = entries.keys().take(self.capacity / 8).copied().collect();
            for key in drop {
                entries.remove(&key);
            }
        }
        entries.insert(id, entry);
    }

    pub fn remove(&self, id: Uuid) {
        self.lock().remove(&id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Cached>> {
        // A panic while holding the lock cannot leave a half-written map.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::Map;
    use shared::domain::{SubjectState, SubjectStatus};

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

    #[test]
    fn an_older_version_never_replaces_a_newer_one() {
        let cache = StateCache::new(100);
        let id = Uuid::now_v7();
        cache.put(id, subject(3));
        cache.put(id, subject(2));
        assert_eq!(cache.get(id).unwrap().version(), 3);
        cache.put(id, subject(4));
        assert_eq!(cache.get(id).unwrap().version(), 4);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let cache = StateCache::new(64);
        for _ in 0..1000 {
            cache.put(Uuid::now_v7(), subject(1));
        }
        assert!(cache.len() <= 64);
        assert!(!cache.is_empty());
    }
}
