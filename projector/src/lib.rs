//! The projector: turns the event stream into the read models.
//!
//! NATS JetStream is the fast path and the event store is the truth: events
//! arrive through a durable pull consumer, and whenever they do not continue
//! the checkpoint exactly (a gap, a lost or purged message, NATS down) the
//! missing range is read from the event store instead. Each batch is applied
//! in one transaction that also moves the checkpoint; messages are acked
//! only after that commit, and an event at or below the checkpoint is a
//! no-op, so redelivery and duplicates change nothing.
//!
//! Layout: [`read_tables`] loads and stores the read tables; [`redis_sink`]
//! warms Redis; [`replay`] rebuilds and verifies them from the log; this
//! file holds the consumer loop ([`Projector::step`]).

pub mod app;
pub mod config;
pub mod read_tables;
pub mod redis_sink;
pub mod replay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use shared::envelope::StoredEvent;
use shared::lease::Lease;
use shared::loop_health::LoopHealth;
use shared::projection::Views;
use shared::store::EventStore;
use sqlx::{Connection, PgPool};

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    pub nats_stream: String,
    pub subject_prefix: String,
    pub consumer: String,
    /// How long a fetch waits for messages before looking at the store.
    pub idle_wait: Duration,
    /// Most events applied in one transaction.
    pub max_batch: usize,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub applied: usize,
    /// Events read from the event store rather than NATS.
    pub backfilled: usize,
    pub checkpoint: i64,
}

pub struct Projector {
    pool: PgPool,
    js: Option<jetstream::Context>,
    config: ProjectorConfig,
    consumer: Option<consumer::PullConsumer>,
    checkpoint: i64,
    redis: Option<redis_sink::RedisSink>,
    /// The study and subject views as the last batch stored them.
    views: read_tables::ViewCache,
    head_reported: Option<Instant>,
    /// NATS failed: read only the store until then.
    nats_retry_at: Option<Instant>,
    /// Whether the last step made progress, for `/readyz` and metrics.
    pub health: Arc<LoopHealth>,
    leading: Arc<AtomicBool>,
}

impl Projector {
    pub async fn new(
        pool: PgPool,
        js: Option<jetstream::Context>,
        config: ProjectorConfig,
    ) -> anyhow::Result<Self> {
        let checkpoint = read_tables::checkpoint(&pool, LIVE_SCHEMA).await?;
        tracing::info!(checkpoint, "projector starting");
        Ok(Self {
            pool,
            js,
            config,
            consumer: None,
            checkpoint,
            redis: None,
            views: read_tables::ViewCache::default(),
            head_reported: None,
            nats_retry_at: None,
            health: Arc::new(LoopHealth::new("projector")),
            leading: Arc::default(),
        })
    }

    /// Writes every batch's documents to Redis too.
    pub fn with_redis(mut self, sink: redis_sink::RedisSink) -> Self {
        self.redis = Some(sink);
        self
    }

    pub fn checkpoint(&self) -> i64 {
        self.checkpoint
    }

    async fn consumer(&mut self) -> anyhow::Result<&consumer::PullConsumer> {
        if self.consumer.is_none() {
            let js = self.js.as_ref().context("no NATS connection")?;
            let stream = js
                .get_stream(&self.config.nats_stream)
                .await
                .context("looking up the stream")?;
            let consumer = stream
                .get_or_create_consumer(
                    &self.config.consumer,
                    consumer::pull::Config {
                        durable_name: Some(self.config.consumer.clone()),
                        ack_policy: consumer::AckPolicy::All,
                        filter_subject: format!("{}.>", self.config.subject_prefix),
                        max_ack_pending: 100_000,
                        ..Default::default()
                    },
                )
                .await
                .context("creating the durable consumer")?;
            self.consumer = Some(consumer);
        }
        self.consumer.as_ref().context("consumer was just set")
    }

    /// Messages from NATS, or an error when NATS cannot deliver now.
    async fn fetch(&mut self) -> anyhow::Result<(Vec<StoredEvent>, Option<jetstream::Message>)> {
        let (wait, max) = (self.config.idle_wait, self.config.max_batch);
        let consumer = self.consumer().await?;
        let mut batch = consumer
            .fetch()
            .max_messages(max)
            .expires(wait)
            .messages()
            .await
            .context("fetching messages")?;
        let mut events = Vec::new();
        let mut last = None;
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "a message could not be fetched; the store fills the gap");
                    break;
                }
            };
            match std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|text| StoredEvent::from_cloud_event(text).ok())
            {
                Some(event) => events.push(event),
                None => {
                    tracing::warn!(subject = %message.subject, "skipping a message that is not an event")
                }
            }
            last = Some(message);
        }
        Ok((events, last))
    }

    /// Applies the next batch, if there is one.
    pub async fn step(&mut self) -> anyhow::Result<Outcome> {
        // After a NATS failure the store alone is read for a while, so that
        // an outage costs no request timeouts on every step.
        let nats_resting = self.nats_retry_at.is_some_and(|t| Instant::now() < t);
        let fetched = if self.js.is_some() && !nats_resting {
            // A fetch waits `idle_wait` at most when NATS answers; beyond
            // that NATS is not answering (a client waiting to reconnect).
            let limit = self.config.idle_wait + Duration::from_secs(1);
            match tokio::time::timeout(limit, self.fetch()).await {
                Ok(fetched) => fetched,
                Err(_) => Err(anyhow::anyhow!("no answer from NATS in {limit:?}")),
            }
        } else {
            Err(anyhow::anyhow!("NATS is not in use right now"))
        };
        let (mut events, last_message) = match fetched {
            Ok(fetched) => {
                self.nats_retry_at = None;
                fetched
            }
            Err(error) => {
                if self.js.is_some() && !nats_resting {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "NATS unavailable; reading the event store"
                    );
                    metrics::counter!("projector_nats_failures_total").increment(1);
                    self.consumer = None;
                    self.nats_retry_at = Some(Instant::now() + Duration::from_secs(2));
                }
                (Vec::new(), None)
            }
        };
        events.retain(|e| e.position > self.checkpoint);
        events.sort_by_key(|e| e.position);
        events.dedup_by_key(|e| e.position);
        let contiguous = events
            .iter()
            .enumerate()
            .all(|(i, e)| e.position == self.checkpoint + 1 + i as i64);
        let mut backfilled = 0;
        if events.is_empty() || !contiguous {
            // Either nothing came (NATS idle, down, or behind) or something
            // is missing: the event store decides.
            let upto = events.last().map(|e| e.position);
            let max = self.config.max_batch as i64;
            let limit = upto.map_or(max, |u| (u - self.checkpoint).min(max));
            events = EventStore::read_after(&self.pool, self.checkpoint, limit)
                .await
                .context("reading events from the event store")?;
            backfilled = events.len();
            if backfilled > 0 {
                metrics::counter!("projector_backfilled_events_total").increment(backfilled as u64);
            }
        }
        if events.is_empty() {
            // Caught up with the event store.
            metrics::gauge!("projector_lag_seconds").set(0.0);
        } else {
            self.apply(&events).await?;
        }
        self.report_head().await;
        if let Some(message) = last_message {
            // AckPolicy::All: acknowledging the last acknowledges the batch.
            if let Err(e) = message.ack_with(AckKind::Ack).await {
                tracing::warn!(error = %e, "ack failed; the messages will be redelivered and skipped");
            }
        }
        Ok(Outcome {
            applied: events.len(),
            backfilled,
            checkpoint: self.checkpoint,
        })
    }

    /// Publishes the head of the log and the lag in events, at most once a
    /// second (one index lookup).
    async fn report_head(&mut self) {
        if self
            .head_reported
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.head_reported = Some(Instant::now());
        if let Ok(head) = sqlx::query_scalar::<_, Option<i64>>("SELECT max(position) FROM events")
            .fetch_one(&self.pool)
            .await
        {
            let head = head.unwrap_or(0);
            metrics::gauge!("projector_head_position").set(head as f64);
            metrics::gauge!("projector_lag_events").set((head - self.checkpoint).max(0) as f64);
        }
    }

    /// Applies contiguous events after the checkpoint in one transaction.
    async fn apply(&mut self, events: &[StoredEvent]) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut conn = self
            .pool
            .acquire()
            .await
            .context("acquiring a connection")?;
        match apply_batch(&mut conn, LIVE_SCHEMA, events, &mut self.views).await? {
            Applied::Moved { checkpoint } => {
                // Another writer (a rebuild that switched tables, a second
                // projector) moved the checkpoint: continue from there.
                tracing::info!(
                    from = self.checkpoint,
                    to = checkpoint,
                    "checkpoint moved by another writer"
                );
                self.checkpoint = checkpoint;
            }
            Applied::Done { checkpoint, docs } => {
                let after = self.checkpoint;
                self.checkpoint = checkpoint;
                if let Some(redis) = &self.redis {
                    redis.send(redis_sink::Batch {
                        after,
                        checkpoint,
                        docs,
                    });
                }
                metrics::histogram!("projector_batch_events").record(events.len() as f64);
                metrics::histogram!("projector_apply_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!("projector_checkpoint_position").set(checkpoint as f64);
                if let Some(e) = events.last() {
                    // From the event's commit to its projection: the staleness
                    // of the read models while events flow.
                    let lag = (chrono::Utc::now() - e.recorded_at)
                        .num_milliseconds()
                        .max(0) as f64
                        / 1000.0;
                    metrics::gauge!("projector_lag_seconds").set(lag);
                    metrics::histogram!("projector_event_delay_seconds").record(lag);
                }
                tracing::debug!(
                    batch_len = events.len(),
                    position = checkpoint,
                    "batch applied"
                );
            }
        }
        Ok(())
    }

    /// Projects until `shutdown` while this process leads (it stands by
    /// while another projector holds the lead), finishing the current
    /// batch first.
    pub async fn run(mut self, shutdown: tokio_util::sync::CancellationToken) {
        let mut standing_by_logged = false;
        while !shutdown.is_cancelled() {
            let lease = tokio::select! {
                lease = Lease::try_take(&self.pool, LEAD_LOCK_KEY) => lease,
                () = shutdown.cancelled() => break,
            };
            let wait = match lease {
                Ok(Some(lease)) => {
                    standing_by_logged = false;
                    self.lead(lease, &shutdown).await;
                    continue;
                }
                Ok(None) => {
                    if !standing_by_logged {
                        tracing::info!("another projector leads: standing by to take over");
                        standing_by_logged = true;
                    }
                    self.health.note_position(self.checkpoint);
                    STANDBY_POLL
                }
                Err(error) => self.health.failed(
                    self.checkpoint,
                    &anyhow::Error::from(error).context("taking the lead"),
                ),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => break,
            }
        }
        tracing::info!(checkpoint = self.checkpoint, "projector stopped");
    }

    /// Steps while `lease` holds, until `shutdown`.
    async fn lead(&mut self, mut lease: Lease, shutdown: &tokio_util::sync::CancellationToken) {
        self.leading.store(true, Ordering::Relaxed);
        metrics::gauge!("projector_leading").set(1.0);
        match read_tables::checkpoint(&self.pool, LIVE_SCHEMA).await {
            Ok(checkpoint) => self.checkpoint = checkpoint,
            Err(error) => tracing::warn!(error = format!("{error:#}"), "reading the checkpoint"),
        }
        tracing::info!(
            checkpoint = self.checkpoint,
            "leading: this projector applies the events"
        );
        while !shutdown.is_cancelled() && lease.held().await {
            // A started batch is finished, never abandoned half-way.
            match self.step().await {
                Ok(_) => self.health.progressed(self.checkpoint),
                Err(error) => {
                    // Stuck after the checkpoint: the next event is the one
                    // that cannot be applied (or the store is unreachable).
                    let retry_in = self.health.failed(self.checkpoint, &error);
                    tokio::select! {
                        () = tokio::time::sleep(retry_in) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        self.leading.store(false, Ordering::Relaxed);
        metrics::gauge!("projector_leading").set(0.0);
        // The lag is the leader's to report: a projector standing by does
        // not keep the figures it had when it led (an alert would see a
        // lag that nobody is behind on).
        metrics::gauge!("projector_lag_events").set(0.0);
        metrics::gauge!("projector_lag_seconds").set(0.0);
        if shutdown.is_cancelled() {
            lease.release().await;
        }
    }

    /// Whether this process leads now.
    pub fn leading(&self) -> Arc<AtomicBool> {
        self.leading.clone()
    }
}

/// The session lock whose holder is the one projector that applies events
/// (the others stand by).
pub const LEAD_LOCK_KEY: i64 = 0x7072_6f6a_6563_7421;

/// How often a projector standing by tries to take the lead.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// The schema of the live read models.
pub const LIVE_SCHEMA: &str = "read_model";

/// What [`apply_batch`] did.
pub enum Applied {
    Done {
        checkpoint: i64,
        docs: Vec<read_tables::Doc>,
    },
    /// The stored checkpoint is not where the events begin; nothing written.
    Moved { checkpoint: i64 },
}

/// The advisory lock that every writer of the read models in `schema`
/// holds for its transaction (FNV-1a of the schema's name).
pub fn writer_lock_key(schema: &str) -> i64 {
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Begins a transaction holding the writer lock of `schema`, in one round
/// trip (a simple query: its statements run one after the other, the lock
/// held from the first on). What the transaction reads next is read after
/// the lock was granted.
pub async fn begin_writer<'c>(
    conn: &'c mut sqlx::PgConnection,
    schema: &str,
) -> anyhow::Result<sqlx::Transaction<'c, sqlx::Postgres>> {
    let begin = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({})",
        writer_lock_key(schema)
    );
    conn.begin_with(begin)
        .await
        .context("beginning a transaction with the read models' writer lock")
}

/// Applies events (contiguous, in position order) to the read models in
/// `schema` in one transaction, from the stored checkpoint on, in four
/// round trips: (1) begin and take the writer lock, (2) read the checkpoint
/// with the views the events touch, (3) store the views and move the
/// checkpoint, (4) commit (and one more for each need a batch resolves,
/// and one when the views `cache` kept were current at another checkpoint).
/// The views read in (2) are those `cache` does not hold; after the commit
/// it keeps the study and subject views stored. The lock comes first and
/// the checkpoint is read after it was granted, by name, so two writers
/// never interleave and a rebuild's switch of tables is seen.
pub async fn apply_batch(
    conn: &mut sqlx::PgConnection,
    schema: &str,
    events: &[StoredEvent],
    cache: &mut read_tables::ViewCache,
) -> anyhow::Result<Applied> {
    let mut tx = begin_writer(conn, schema).await?;
    // The views of every given event are loaded with the checkpoint (but
    // those the cache holds); those of events at or below it (a
    // redelivery) are stored unchanged.
    let touched = read_tables::Touched::by(events);
    let (cached_at, held) = cache.take(&touched);
    let held_any = !held.studies.is_empty() || !held.subjects.is_empty();
    let (mut checkpoint, mut views) = read_tables::load(&mut tx, schema, &touched, held).await?;
    if cached_at != Some(checkpoint) {
        cache.clear();
        if held_any {
            // Held at another checkpoint: read them all from the tables.
            (checkpoint, views) =
                read_tables::load(&mut tx, schema, &touched, Views::default()).await?;
        }
    }
    let owned: Vec<StoredEvent> = events
        .iter()
        .filter(|e| e.position > checkpoint)
        .cloned()
        .collect();
    match owned.first() {
        Some(first) if first.position == checkpoint + 1 => {}
        _ => return Ok(Applied::Moved { checkpoint }),
    }
    for event in &owned {
        let needs = views.project(event)?;
        if !needs.is_empty() {
            read_tables::resolve(&mut tx, schema, &mut views, needs).await?;
        }
    }
    let last = owned.last().map_or(checkpoint, |e| e.position);
    let docs = read_tables::store(&mut tx, schema, &views, last).await?;
    tx.commit().await.context("committing the batch")?;
    cache.keep(last, views);
    Ok(Applied::Done {
        checkpoint: last,
        docs,
    })
}
