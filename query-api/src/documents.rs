//! Finding a document: memory, then Redis, then the replica, with one load
//! per key however many requests miss it at once (single flight). Whatever
//! is served is current as of the cache's freshness mark F at least, so no
//! answer is older than one this process gave before; a Redis document is
//! only taken when Redis's `through` mark has reached F. A read with a
//! token the projector has announced may take Redis's document before F
//! reaches the token, when Redis's mark has reached the token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, watch, OnceCell};
use uuid::Uuid;

use crate::memory_tier::{Cache, Doc, Found, Key, Kind};
use crate::redis_tier::RedisTier;
use crate::replica::{Listing, Loaded, Page, Replica, SortKey};

/// Why a load failed; shared by every request of a flight.
#[derive(Debug, Clone)]
pub enum LoadError {
    /// The replica could not be reached in time.
    Unavailable,
    /// Anything else, logged with this correlation id.
    Internal(String),
}

impl From<sqlx::Error> for LoadError {
    fn from(error: sqlx::Error) -> Self {
        if shared::store::outage::is_unavailable(&error) {
            tracing::warn!(%error, "the read replica cannot serve");
            LoadError::Unavailable
        } else {
            let correlation_id = uuid::Uuid::now_v7().to_string();
            tracing::error!(correlation_id, %error, "reading the replica failed");
            LoadError::Internal(correlation_id)
        }
    }
}

type Flight = Arc<OnceCell<Result<Loaded, LoadError>>>;

pub struct Documents {
    cache: Arc<Cache>,
    redis: Option<Arc<RedisTier>>,
    replica: Arc<Replica>,
    flights: Mutex<HashMap<Key, Flight>>,
}

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Memory,
    Redis,
    Replica,
}

impl Documents {
    pub fn new(cache: Arc<Cache>, redis: Option<Arc<RedisTier>>, replica: Arc<Replica>) -> Self {
        Self {
            cache,
            redis,
            replica,
            flights: Mutex::default(),
        }
    }

    /// One page of `listing` after `after`, read from the replica (pages
    /// are not cached: each is one statement), current as of the freshness
    /// mark at least: a page read from a replica that was left behind while
    /// the statement ran is read again, once, from the active one.
    pub async fn page(
        &self,
        listing: Listing,
        after: Option<(SortKey, Uuid)>,
        limit: i64,
        studies: Option<&[Uuid]>,
    ) -> Result<Page, LoadError> {
        let fresh = self.cache.fresh_through();
        let page = self
            .replica
            .page(listing, after.clone(), limit, studies)
            .await?;
        if page.current_as_of >= fresh {
            return Ok(page);
        }
        let page = self.replica.page(listing, after, limit, studies).await?;
        if page.current_as_of >= fresh {
            Ok(page)
        } else {
            Err(LoadError::Unavailable)
        }
    }

    /// Every observation of a study as NDJSON lines, streamed from the
    /// replica.
    pub fn export(&self, study_id: Uuid) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
        self.replica.export(study_id)
    }

    /// The replica's pool (the audit endpoints read the log from it).
    pub fn pool(&self) -> &sqlx::PgPool {
        self.replica.pool()
    }

    /// Whether Redis answers (`None`: no Redis tier).
    pub fn redis_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.is_up())
    }

    /// Counts the bytes of a coding made for a document held in memory.
    pub fn grew(&self, key: &Key, doc: &Arc<Doc>, extra: usize) {
        self.cache.grew(key, doc, extra);
    }

    /// The document under `key`, current as of position `min` at least (the
    /// caller has waited until F reached it; -1 when anything goes).
    pub async fn get(&self, key: &Key, min: i64) -> Result<(Found, Tier), LoadError> {
        if let Some(found) = self.cache.get(key) {
            hit("memory");
            return Ok((found, Tier::Memory));
        }
        miss("memory");
        let (loaded, tier) = self.flight(key).await?;
        if loaded.current_as_of >= min {
            return Ok((loaded.found, tier));
        }
        // Joined a flight that started before the wanted position was
        // visible: read again, from the active replica, which has reached
        // it (never answer older than asked: a replica that went back, as
        // one restarted from an older restartpoint may, is a 503).
        let loaded = self.read_replica(key).await?;
        if loaded.current_as_of < min {
            return Err(LoadError::Unavailable);
        }
        Ok((loaded.found, Tier::Replica))
    }

    async fn flight(&self, key: &Key) -> Result<(Loaded, Tier), LoadError> {
        let cell = self
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let mut tier = Tier::Memory;
        let result = cell
            .get_or_init(|| async {
                let (loaded, from) = self.load(key).await?;
                tier = from;
                Ok(loaded)
            })
            .await
            .clone();
        {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            if flights.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                flights.remove(key);
            }
        }
        // Requests that joined the flight were answered from memory, in
        // effect: they cost no load.
        result.map(|loaded| (loaded, tier))
    }

    /// The projector's announcements of what Redis holds (`None`: no Redis
    /// tier).
    pub fn announced(&self) -> Option<watch::Receiver<i64>> {
        self.redis.as_ref().map(|r| r.announced())
    }

    /// The document under `key` from Redis, if Redis's `through` mark has
    /// reached `min` (read with the document, atomically) and it holds the
    /// document; `None` otherwise, and the caller waits for the freshness
    /// mark instead. Taken by a request whose token the projector has
    /// announced before the replica has replayed it.
    pub async fn get_announced(&self, key: &Key, min: i64) -> Option<Found> {
        self.read_redis(key, min).await.map(|loaded| loaded.found)
    }

    async fn load(&self, key: &Key) -> Result<(Loaded, Tier), LoadError> {
        let fresh = self.cache.fresh_through();
        if let Some(loaded) = self.read_redis(key, fresh).await {
            return Ok((loaded, Tier::Redis));
        }
        Ok((self.read_replica(key).await?, Tier::Replica))
    }

    /// The document from Redis if Redis's `through` mark has reached `min`
    /// (a position seen: the freshness mark, or a token's).
    async fn read_redis(&self, key: &Key, min: i64) -> Option<Loaded> {
        let redis = self.redis.as_ref()?;
        let id = match key {
            Key::Doc(_, id) => *id,
            Key::Code(code) => match redis.study_by_code(code).await {
                Some(id) => id,
                None => {
                    miss("redis");
                    return None;
                }
            },
        };
        let kind = match key {
            Key::Doc(kind, _) => *kind,
            Key::Code(_) => Kind::Study,
        };
        let held = redis.get(kind, id).await?;
        match held.doc {
            Some(doc) if held.through >= min && min >= 0 => {
                hit("redis");
                let loaded = Loaded {
                    found: Found::Doc(doc),
                    current_as_of: held.through,
                };
                self.admit(key, &loaded);
                Some(loaded)
            }
            Some(_) => {
                // Redis has not caught up with what this process has seen
                // (or the token asks for).
                lookups("redis", "behind").increment(1);
                None
            }
            None => {
                miss("redis");
                None
            }
        }
    }

    async fn read_replica(&self, key: &Key) -> Result<Loaded, LoadError> {
        let loaded = self.replica.load(key).await?;
        hit("replica");
        self.admit(key, &loaded);
        Ok(loaded)
    }

    /// Offers what was loaded to memory; a study found by its code is also
    /// kept under its id.
    fn admit(&self, key: &Key, loaded: &Loaded) {
        if let (Key::Code(_), Found::Doc(doc)) = (key, &loaded.found) {
            self.cache.admit(
                Key::Doc(Kind::Study, doc.id),
                loaded.found.clone(),
                loaded.current_as_of,
            );
        }
        self.cache
            .admit(key.clone(), loaded.found.clone(), loaded.current_as_of);
    }
}

fn hit(tier: &'static str) {
    lookups(tier, "hit").increment(1);
}

fn miss(tier: &'static str) {
    lookups(tier, "miss").increment(1);
}

/// `query_cache_lookups_total{tier, result}`, each handle made once (made
/// after the recorder is installed: at the first request).
fn lookups(tier: &'static str, result: &'static str) -> &'static metrics::Counter {
    static HANDLES: OnceLock<Vec<(&str, &str, metrics::Counter)>> = OnceLock::new();
    let handles = HANDLES.get_or_init(|| {
        let mut all = Vec::new();
        for tier in ["memory", "redis", "replica"] {
            for result in ["hit", "miss", "behind"] {
                let counter = metrics::counter!("query_cache_lookups_total", "tier" => tier, "result" => result);
                all.push((tier, result, counter));
            }
        }
        all
    });
    handles
        .iter()
        .find(|(t, r, _)| *t == tier && *r == result)
        .map(|(_, _, c)| c)
        .unwrap_or(&handles[0].2)
}
