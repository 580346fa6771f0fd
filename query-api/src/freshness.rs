//! The one task that follows the replica: it polls the change feed (one
//! statement per poll, never one per request), evicts what changed from the
//! in-process cache, and wakes the requests waiting for a consistency token.
//! It polls every few milliseconds while someone waits for a position the
//! replica has not reached (a request's token, or the projector's
//! announcement through Redis) and otherwise at an idle interval.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared::problem::Problem;
use tokio::sync::{watch, Notify};

use crate::memory_tier::Cache;
use crate::replica::Replica;

/// Pause between polls while the replica is behind a wanted position.
const HURRY: Duration = Duration::from_millis(5);
/// How long a wanted position keeps the polls hurried.
const HURRY_FOR: Duration = Duration::from_secs(3);
/// Pause after a failed poll.
const BACKOFF: Duration = Duration::from_millis(500);
/// A replica not heard from for this long is reported down.
const STALE_AFTER: Duration = Duration::from_secs(5);

pub struct Freshness {
    cache: Arc<Cache>,
    replica: Arc<Replica>,
    /// The checkpoint whose changes the cache has applied.
    applied: watch::Sender<i64>,
    /// The highest position someone waits for, and until when to hurry.
    wanted: AtomicI64,
    hurry_until: Mutex<Option<Instant>>,
    wake: Notify,
    idle: Duration,
    last_success: Mutex<Option<Instant>>,
    down_logged: AtomicBool,
    lag_seconds: Mutex<f64>,
}

impl Freshness {
    pub fn new(cache: Arc<Cache>, replica: Arc<Replica>, idle: Duration) -> Self {
        Self {
            cache,
            replica,
            applied: watch::Sender::new(-1),
            wanted: AtomicI64::new(-1),
            hurry_until: Mutex::new(None),
            wake: Notify::new(),
            idle,
            last_success: Mutex::new(None),
            down_logged: AtomicBool::new(false),
            lag_seconds: Mutex::new(0.0),
        }
    }

    /// Someone wants `position` visible: poll soon and often until it is.
    pub fn want(&self, position: i64) {
        if position <= self.cache.fresh_through() {
            return;
        }
        self.wanted.fetch_max(position, Ordering::Relaxed);
        *self.hurry_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + HURRY_FOR);
        self.wake.notify_one();
    }

    /// Waits until the replica's projection has reached `position` and the
    /// cache reflects it, for at most `bound`.
    pub async fn reach(&self, position: i64, bound: Duration) -> Result<(), Problem> {
        if self.cache.fresh_through() >= position {
            return Ok(());
        }
        let started = Instant::now();
        let mut applied = self.applied.subscribe();
        self.want(position);
        let reached = tokio::time::timeout(bound, applied.wait_for(|p| *p >= position)).await;
        metrics::histogram!("query_consistency_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => {
                metrics::counter!("query_consistency_timeouts_total").increment(1);
                let detail = if self.is_up() {
                    format!(
                        "the read models have not reached position {position} within {} ms; retry shortly",
                        bound.as_millis()
                    )
                } else {
                    "the read replica cannot be reached".to_owned()
                };
                Err(Problem::unavailable(detail))
            }
        }
    }

    /// Whether the replica answered a poll recently.
    pub fn is_up(&self) -> bool {
        self.last_success
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < STALE_AFTER.max(self.idle * 3))
    }

    pub fn lag_seconds(&self) -> f64 {
        *self.lag_seconds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The checkpoint the cache reflects (-1 before the first poll).
    pub fn applied(&self) -> i64 {
        *self.applied.borrow()
    }

    fn hurried(&self) -> bool {
        let behind = self.wanted.load(Ordering::Relaxed) > self.cache.fresh_through();
        let until = *self.hurry_until.lock().unwrap_or_else(|e| e.into_inner());
        behind && until.is_some_and(|u| Instant::now() < u)
    }

    /// One poll of the change feed, applied to the cache.
    pub async fn poll(&self) -> sqlx::Result<()> {
        let fresh = self.cache.fresh_through();
        let poll = self.replica.poll(fresh).await?;
        match poll.changes {
            Some(changes) if fresh >= 0 => self.cache.apply(&changes, poll.checkpoint),
            Some(_) => self.cache.reset(poll.checkpoint),
            None => {
                tracing::info!(
                    after = fresh,
                    checkpoint = poll.checkpoint,
                    "too much changed since the last poll: the in-process cache starts over"
                );
                self.cache.reset(poll.checkpoint);
            }
        }
        let applied = self.cache.fresh_through();
        self.applied.send_if_modified(|p| {
            let moved = applied > *p;
            *p = (*p).max(applied);
            moved
        });
        *self.lag_seconds.lock().unwrap_or_else(|e| e.into_inner()) = poll.lag_seconds;
        metrics::gauge!("query_replica_lag_seconds").set(poll.lag_seconds);
        metrics::gauge!("query_replica_checkpoint_position").set(applied as f64);
        metrics::gauge!("query_cache_bytes").set(self.cache.bytes() as f64);
        Ok(())
    }

    /// Polls until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            if self.hurried() {
                tokio::time::sleep(HURRY).await;
            } else {
                let _ = tokio::time::timeout(self.idle, self.wake.notified()).await;
            }
            match self.poll().await {
                Ok(()) => {
                    *self.last_success.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now());
                    metrics::gauge!("query_replica_up").set(1.0);
                    if self.down_logged.swap(false, Ordering::Relaxed) {
                        tracing::info!("the read replica answers again");
                    }
                }
                Err(error) => {
                    metrics::gauge!("query_replica_up").set(0.0);
                    metrics::counter!("query_replica_poll_failures_total").increment(1);
                    if !self.down_logged.swap(true, Ordering::Relaxed) {
                        tracing::error!(%error, "polling the read replica failed; reads that miss the caches answer 503 until it returns");
                    }
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }
}
