//! The one task that follows the replica: it polls the change feed (one
//! statement per poll, never one per request), evicts what changed from the
//! in-process cache, and wakes the requests waiting for a consistency token.
//! It polls every few milliseconds while someone waits for a position the
//! replica has not reached (a request's token, or the projector's
//! announcement through Redis) and otherwise at an idle interval.
//!
//! With several replicas it also chooses the active one: when the active
//! replica fails, or a wanted position waits on it while another has
//! reached further, the freshest replica that has reached the freshness
//! mark F takes over; every few seconds the first-listed one is taken back
//! once it has reached F again. A replica behind F is never made active, so
//! no answer goes back in time.

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
/// How long a wanted position may wait on the active replica before the
/// others are asked whether they have reached further (and between asks).
const SWITCH_AFTER: Duration = Duration::from_millis(100);
/// How often a query API away from its first replica looks whether it can
/// go back to it.
const PREFER_EVERY: Duration = Duration::from_secs(5);

/// What a wait for a position ended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The freshness mark F reached it: every tier answers for it.
    Fresh,
    /// The projector announced a `through` mark on Redis that reached it:
    /// Redis may answer for it before the replica does.
    Announced,
}

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
    /// Since when a wanted position has waited, and when the other replicas
    /// were last asked (several replicas only).
    behind_since: Mutex<Option<Instant>>,
    last_ask: Mutex<Instant>,
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
            behind_since: Mutex::new(None),
            last_ask: Mutex::new(Instant::now()),
        }
    }

    /// Someone wants `position` visible: poll soon and often until it is.
    pub fn want(&self, position: i64) {
        if position <= self.cache.fresh_through() {
            return;
        }
        self.wanted.fetch_max(position, Ordering::Relaxed);
        let now = Instant::now();
        *self.hurry_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(now + HURRY_FOR);
        self.behind_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(now);
        self.wake.notify_one();
    }

    /// Waits until the replica's projection has reached `position` and the
    /// cache reflects it, for at most `bound`.
    pub async fn reach(&self, position: i64, bound: Duration) -> Result<(), Problem> {
        self.reach_or_announced(position, bound, None)
            .await
            .map(|_| ())
    }

    /// Waits, for at most `bound`, until the cache reflects `position`, or
    /// (given the projector's announcements) until the projector announces
    /// that Redis holds it, whichever comes first.
    pub async fn reach_or_announced(
        &self,
        position: i64,
        bound: Duration,
        announced: Option<watch::Receiver<i64>>,
    ) -> Result<Reached, Problem> {
        if self.cache.fresh_through() >= position {
            return Ok(Reached::Fresh);
        }
        let started = Instant::now();
        let mut applied = self.applied.subscribe();
        self.want(position);
        // A closed channel (a process shutting down) never ends the wait.
        let fresh = async {
            let reached = applied.wait_for(|p| *p >= position).await.is_ok();
            if !reached {
                std::future::pending::<()>().await;
            }
            Reached::Fresh
        };
        let heard = async {
            let heard = match announced {
                Some(mut announced) => announced.wait_for(|p| *p >= position).await.is_ok(),
                None => false,
            };
            if !heard {
                std::future::pending::<()>().await;
            }
            Reached::Announced
        };
        let reached = tokio::time::timeout(bound, async {
            tokio::select! {
                biased;
                reached = fresh => reached,
                reached = heard => reached,
            }
        })
        .await;
        metrics::histogram!("query_consistency_wait_seconds")
            .record(started.elapsed().as_secs_f64());
        match reached {
            Ok(reached) => {
                let by = match reached {
                    Reached::Fresh => "replica",
                    Reached::Announced => "announcement",
                };
                metrics::counter!("query_consistency_reached_total", "by" => by).increment(1);
                Ok(reached)
            }
            Err(_) => {
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

    /// One poll of the change feed, applied to the cache; with several
    /// replicas, then the choice of the active one.
    pub async fn poll(&self) -> sqlx::Result<()> {
        let fresh = self.cache.fresh_through();
        let poll = match self.replica.poll(fresh).await {
            Ok(poll) => poll,
            Err(error) => match self.fail_over(fresh, &error).await {
                true => self.replica.poll(fresh).await?,
                false => return Err(error),
            },
        };
        self.apply(fresh, poll);
        if self.replica.count() > 1 {
            self.choose().await;
        }
        Ok(())
    }

    /// The active replica failed: the freshest other one that answers and
    /// has reached `fresh` takes over. Whether one did.
    async fn fail_over(&self, fresh: i64, error: &sqlx::Error) -> bool {
        let failed = self.replica.active();
        let Some((index, _)) = self.freshest_other(fresh).await else {
            return false;
        };
        tracing::warn!(
            %error,
            failed = self.replica.name(failed),
            active = self.replica.name(index),
            "a read replica failed: reading from another"
        );
        self.switch(index, "failed");
        true
    }

    /// The freshest replica other than the active one whose checkpoint is
    /// at least `at_least`, with that checkpoint (one statement each).
    async fn freshest_other(&self, at_least: i64) -> Option<(usize, i64)> {
        let active = self.replica.active();
        let mut best: Option<(usize, i64)> = None;
        for index in (0..self.replica.count()).filter(|i| *i != active) {
            if let Ok(checkpoint) = self.replica.checkpoint_of(index).await {
                if checkpoint >= at_least && best.is_none_or(|(_, c)| checkpoint > c) {
                    best = Some((index, checkpoint));
                }
            }
        }
        best
    }

    /// With several replicas: moves to the freshest when a wanted position
    /// has waited on the active one and another has reached further; goes
    /// back to the first-listed one now and then, once it has reached F.
    async fn choose(&self) {
        let fresh = self.cache.fresh_through();
        let waited = {
            let mut since = self.behind_since.lock().unwrap_or_else(|e| e.into_inner());
            if self.wanted.load(Ordering::Relaxed) <= fresh {
                *since = None;
            }
            since.map(|s| s.elapsed())
        };
        let asked = self
            .last_ask
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        let active = self.replica.active();
        if waited.is_some_and(|w| w >= SWITCH_AFTER) && asked >= SWITCH_AFTER {
            *self.last_ask.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            if let Some((index, checkpoint)) = self.freshest_other(fresh + 1).await {
                tracing::info!(
                    behind = self.replica.name(active),
                    at = fresh,
                    active = self.replica.name(index),
                    checkpoint,
                    "the active read replica is behind a wanted position: reading from a fresher one"
                );
                self.switch(index, "behind");
            }
        } else if active != 0 && asked >= PREFER_EVERY {
            *self.last_ask.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            if self
                .replica
                .checkpoint_of(0)
                .await
                .is_ok_and(|c| c >= fresh)
            {
                tracing::info!(
                    active = self.replica.name(0),
                    "back on the first read replica"
                );
                self.switch(0, "preferred");
            }
        }
    }

    fn switch(&self, index: usize, reason: &'static str) {
        self.replica.activate(index);
        metrics::counter!("query_replica_switches_total", "reason" => reason).increment(1);
    }

    /// Applies what a poll of the active replica saw.
    fn apply(&self, fresh: i64, poll: crate::replica::Poll) {
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
