//! The Redis tier: documents the projector wrote, read together with the
//! `through` mark in one atomic round trip so that the reader knows how
//! current they are. Redis is optional at every moment: when it fails the
//! tier steps aside for a second at a time (reads go on from memory and the
//! replica), says so once in the log and in `query_redis_up`, and is used
//! again as soon as it answers. A subscription to the projector's
//! announcements tells the freshness task which position to expect.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use shared::redis_layout::{code_key, doc_key, invalidation_channel, through_key};
use tokio::sync::watch;
use uuid::Uuid;

use crate::freshness::Freshness;
use crate::memory_tier::{Doc, Kind};

/// How long the tier steps aside after a failure.
const PAUSE: Duration = Duration::from_secs(1);

pub struct RedisTier {
    client: redis::Client,
    prefix: String,
    conn: RwLock<Option<ConnectionManager>>,
    /// Milliseconds since `epoch` before which the tier is not tried.
    paused_until: AtomicU64,
    epoch: Instant,
    down: AtomicBool,
    /// The highest `through` the projector has announced (-1: none heard).
    announced: watch::Sender<i64>,
}

/// A document from Redis with the `through` mark read with it.
pub struct Held {
    pub doc: Option<Arc<Doc>>,
    pub through: i64,
}

impl RedisTier {
    pub fn new(url: &str, prefix: String) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            client: redis::Client::open(url)?,
            prefix,
            conn: RwLock::new(None),
            paused_until: AtomicU64::new(0),
            epoch: Instant::now(),
            down: AtomicBool::new(false),
            announced: watch::Sender::new(-1),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Follows the highest position the projector has announced. A hint
    /// only: an announcement may be lost, or name a batch whose `through`
    /// could not move yet; [`RedisTier::get`]'s mark is what counts.
    pub fn announced(&self) -> watch::Receiver<i64> {
        self.announced.subscribe()
    }

    /// Whether the tier is in use right now.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    fn connection(&self) -> Option<ConnectionManager> {
        if self.now_ms() < self.paused_until.load(Ordering::Relaxed) {
            return None;
        }
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn failed(&self, error: &redis::RedisError) {
        self.paused_until
            .store(self.now_ms() + PAUSE.as_millis() as u64, Ordering::Relaxed);
        metrics::counter!("query_redis_failures_total").increment(1);
        metrics::gauge!("query_redis_up").set(0.0);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "Redis failed; reads are served from memory and the replica until it returns");
        }
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            metrics::gauge!("query_redis_up").set(1.0);
            tracing::info!("Redis answers again; reads use it");
        }
    }

    /// The document of `kind` `id` with the mark; `None` when the tier is
    /// out of use or failed.
    pub async fn get(&self, kind: Kind, id: Uuid) -> Option<Held> {
        let mut conn = self.connection()?;
        type Reply = ((Option<i64>, Option<Vec<u8>>, Option<String>), Option<i64>);
        let reply: redis::RedisResult<Reply> = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(doc_key(&self.prefix, kind.as_str(), &id))
            .arg("p")
            .arg("b")
            .arg("s")
            .cmd("GET")
            .arg(through_key(&self.prefix))
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(((position, body, study), through)) => {
                self.succeeded();
                let study = study.and_then(|s| Uuid::parse_str(&s).ok());
                let doc = match (position, body, study) {
                    (Some(position), Some(body), Some(study_id)) => Some(Arc::new(Doc::new(
                        id,
                        study_id,
                        position,
                        Bytes::from(body),
                    ))),
                    _ => None,
                };
                Some(Held {
                    doc,
                    through: through.unwrap_or(0),
                })
            }
            Err(error) => {
                self.failed(&error);
                None
            }
        }
    }

    /// The id of the study with `code`, if Redis knows it.
    pub async fn study_by_code(&self, code: &str) -> Option<Uuid> {
        let mut conn = self.connection()?;
        let reply: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(code_key(&self.prefix, code))
            .query_async(&mut conn)
            .await;
        match reply {
            Ok(id) => {
                self.succeeded();
                id.and_then(|id| Uuid::parse_str(&id).ok())
            }
            Err(error) => {
                self.failed(&error);
                None
            }
        }
    }

    /// Keeps a connection ready and follows the announcements, until the
    /// process ends.
    pub async fn run(self: Arc<Self>, freshness: Arc<Freshness>) {
        tokio::spawn(self.clone().follow(freshness));
        loop {
            let missing = self
                .conn
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_none();
            if missing {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Duration::from_millis(500))
                    .set_response_timeout(Duration::from_millis(500))
                    .set_number_of_retries(1);
                match ConnectionManager::new_with_config(self.client.clone(), config).await {
                    Ok(conn) => {
                        *self.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                        metrics::gauge!("query_redis_up").set(1.0);
                        tracing::info!("connected to Redis");
                    }
                    Err(error) => self.failed(&error),
                }
            }
            tokio::time::sleep(PAUSE).await;
        }
    }

    async fn follow(self: Arc<Self>, freshness: Arc<Freshness>) {
        let channel = invalidation_channel(&self.prefix);
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(&channel).await.is_ok() {
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            if let Ok(position) = message.get_payload::<i64>() {
                                self.announced.send_if_modified(|p| {
                                    let moved = position > *p;
                                    *p = (*p).max(position);
                                    moved
                                });
                                freshness.want(position);
                            }
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "subscribing to the announcements failed"),
            }
            tokio::time::sleep(PAUSE).await;
        }
    }
}
