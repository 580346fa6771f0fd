//! The outbox publisher: every committed event goes to JetStream, in
//! position order, exactly once.
//!
//! The events table is the outbox: positions are gap-free, so "what is left
//! to publish" is every position above the last one JetStream holds. One
//! process at a time publishes (a session advisory lock elects it). Each
//! message carries `Nats-Msg-Id` = event id and `Nats-Expected-Last-Msg-Id`
//! = the previous event's id, so JetStream refuses a message that would
//! skip or repeat one; after any failure the publisher reads the stream's
//! last message and resumes after it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, context::Publish, stream};
use shared::envelope::StoredEvent;
use shared::lease::Lease;
use shared::loop_health::LoopHealth;
use shared::store::EventStore;
use sqlx::PgPool;
use std::collections::BTreeMap;

use shared::store::Committed;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Advisory lock key held by the publishing process (`'publish!'`).
pub const PUBLISH_LOCK_KEY: i64 = 0x7075_626c_6973_6821;

/// Header carrying the global position of the event in the message.
pub const POSITION_HEADER: &str = "Research-Position";

const BATCH: i64 = 512;

#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub stream: String,
    pub subject_prefix: String,
    pub duplicate_window: Duration,
    /// Copies JetStream keeps of the stream.
    pub replicas: usize,
}

/// Creates the stream, or brings its configuration up to date.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &PublisherConfig,
) -> anyhow::Result<()> {
    js.create_or_update_stream(stream::Config {
        name: config.stream.clone(),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        storage: stream::StorageType::File,
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating or updating JetStream stream {}", config.stream))?;
    Ok(())
}

pub fn subject_of(prefix: &str, event: &StoredEvent) -> String {
    format!("{prefix}.{}.{}", event.aggregate_type, event.aggregate_id)
}

/// Runs until `shutdown`, then publishes what is already committed (for a
/// few seconds at most) and returns. A publisher that cannot make progress
/// says so through `health` (readiness, metrics, one log line per retry).
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    config: PublisherConfig,
    committed: broadcast::Sender<Committed>,
    health: Arc<LoopHealth>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let leader = tokio::select! {
            leader = Lease::try_take(&pool, PUBLISH_LOCK_KEY) => leader,
            () = shutdown.cancelled() => return,
        };
        let conn = match leader {
            Ok(Some(conn)) => conn,
            Ok(None) => {
                // Another process publishes; stand by.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
            Err(error) => {
                let retry_in = health.failed(health.position(), &error);
                tokio::select! {
                    () = tokio::time::sleep(retry_in) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
        };
        tracing::info!(stream = config.stream, "publishing events to JetStream");
        // Subscribed before reading the tail, so no commit falls between.
        let mut published = None;
        let outcome = publish(
            &pool,
            &js,
            &config,
            committed.subscribe(),
            &health,
            &mut published,
            &shutdown,
        )
        .await;
        drop(conn);
        let Err(error) = outcome else { return };
        metrics::counter!("outbox_publish_failures_total").increment(1);
        // The backlog is the log's head less what the stream holds, whatever
        // the failure: an alert on it sees a publisher that is stuck.
        let at = published.unwrap_or(0);
        if let Ok(head) = head_position(&pool).await {
            metrics::gauge!("outbox_backlog_events").set((head - at).max(0) as f64);
        }
        let retry_in = health.failed(at, &error.context("publishing to JetStream"));
        tokio::select! {
            () = tokio::time::sleep(retry_in) => {}
            () = shutdown.cancelled() => {}
        }
    }
}

/// The newest position of the log.
async fn head_position(pool: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await
        .context("reading the head of the log")
}

async fn save_checkpoint(pool: &PgPool, position: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE outbox_checkpoint SET position = $1 WHERE position < $1")
        .bind(position)
        .execute(pool)
        .await
        .context("saving the outbox checkpoint")?;
    Ok(())
}

/// Refuses to publish into a stream whose newest message is not this event
/// store's event at that position (a stream kept while the database was
/// restored or replaced): publishing would mix two logs.
async fn check_same_log(
    pool: &PgPool,
    config: &PublisherConfig,
    position: i64,
    id: &str,
) -> anyhow::Result<()> {
    let stored: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM events WHERE position = $1")
            .bind(position)
            .fetch_optional(pool)
            .await
            .context("reading the event at the stream's tail")?;
    if stored.is_some_and(|e| e.to_string() == id) {
        return Ok(());
    }
    metrics::gauge!("outbox_stream_mismatch").set(1.0);
    anyhow::bail!(
        "stream {} ends with event {id} at position {position}, which this event store does not hold there; \
         the stream belongs to another log: point NATS_STREAM at a new stream or restore the matching database",
        config.stream
    )
}

/// The position and id of the newest message in the stream, if any.
async fn stream_tail(js: &jetstream::Context, name: &str) -> anyhow::Result<Option<(i64, String)>> {
    let stream = js.get_stream(name).await.context("looking up the stream")?;
    let info = stream.get_info().await.context("reading stream info")?;
    if info.state.messages == 0 {
        return Ok(None);
    }
    let message = match stream.get_raw_message(info.state.last_sequence).await {
        Ok(m) => m,
        // The newest message was deleted: no tail to chain on.
        Err(_) => return Ok(None),
    };
    let position = message
        .headers
        .get(POSITION_HEADER)
        .and_then(|v| v.as_str().parse::<i64>().ok());
    let id = message
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .map(|v| v.as_str().to_owned());
    Ok(position.zip(id))
}

/// Events this process committed, as the appender tells them, kept in
/// position order: the publisher takes them from here and reads the event
/// store only when they do not continue the stream (events of another
/// process, a lagging receiver, start-up).
struct Feed {
    rx: broadcast::Receiver<Committed>,
    pending: BTreeMap<i64, Committed>,
    /// The receiver lost batches: the store must be read.
    lagged: bool,
}

impl Feed {
    /// The newest position told to this process.
    fn newest(&self) -> i64 {
        self.pending
            .values()
            .filter_map(|b| b.last())
            .map(|e| e.position)
            .max()
            .unwrap_or(0)
    }

    /// Keeps a told batch; an empty one (a large batch, told as a notice)
    /// sends the publisher to the store.
    fn insert(&mut self, batch: Committed) {
        match batch.first() {
            Some(first) => {
                self.pending.insert(first.position, batch);
            }
            None => self.lagged = true,
        }
    }

    fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(batch) => self.insert(batch),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.pending.clear();
                    self.lagged = true;
                }
                Err(_) => return,
            }
        }
    }

    /// The events in memory that continue exactly after `after`.
    fn take_after(&mut self, after: i64, limit: usize) -> Vec<StoredEvent> {
        self.pending
            .retain(|_, b| b.last().is_some_and(|e| e.position > after));
        let mut out: Vec<StoredEvent> = Vec::new();
        let mut next = after + 1;
        while out.len() < limit {
            let Some((_, batch)) = self.pending.range(..=next).next_back() else {
                break;
            };
            let Some(start) = batch.iter().position(|e| e.position == next) else {
                break;
            };
            let batch = batch.clone();
            out.extend(batch[start..].iter().cloned());
            next = out.last().map_or(next, |e| e.position + 1);
        }
        out
    }
}

/// Publishes until `shutdown`; `published` follows the newest position
/// the stream holds, for the caller to report when this fails.
async fn publish(
    pool: &PgPool,
    js: &jetstream::Context,
    config: &PublisherConfig,
    committed: broadcast::Receiver<Committed>,
    health: &LoopHealth,
    published: &mut Option<i64>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut feed = Feed {
        rx: committed,
        pending: BTreeMap::new(),
        lagged: false,
    };
    let (mut last_position, mut last_id) = resume_point(pool, js, config).await?;
    *published = Some(last_position);
    // Where publishing stands; not progress (a retry starts here too).
    health.note_position(last_position);
    let mut drain_deadline = None;
    let mut checkpoint_saved = tokio::time::Instant::now();
    let mut known_head = last_position;
    let mut read_store = true;
    loop {
        feed.drain();
        let mut batch = feed.take_after(last_position, BATCH as usize);
        if batch.is_empty() && !feed.pending.is_empty() && !read_store {
            // Two appender connections may tell their batches out of order:
            // give the missing one a moment before reading the store.
            match tokio::time::timeout(Duration::from_millis(2), feed.rx.recv()).await {
                Ok(Ok(b)) => {
                    feed.insert(b);
                    continue;
                }
                _ => read_store = true,
            }
        }
        if batch.is_empty() && (read_store || feed.lagged) {
            batch = EventStore::read_after(pool, last_position, BATCH)
                .await
                .context("reading events to publish")?;
            // A full page means there is more to read.
            read_store = batch.len() == BATCH as usize;
            feed.lagged = false;
        }
        if batch.is_empty() {
            if drain_deadline.is_some() {
                return save_checkpoint(pool, last_position).await;
            }
            tokio::select! {
                received = feed.rx.recv() => match received {
                    Ok(b) => feed.insert(b),
                    Err(_) => read_store = true,
                },
                // Other processes commit too: look at the store now and then.
                () = tokio::time::sleep(Duration::from_millis(250)) => read_store = true,
                () = shutdown.cancelled() => {
                    drain_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                    read_store = true;
                }
            }
            continue;
        }
        if drain_deadline.is_none() && shutdown.is_cancelled() {
            drain_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(5));
            read_store = true;
        }
        if drain_deadline.is_some_and(|d| tokio::time::Instant::now() > d) {
            tracing::warn!(
                last_position,
                "shutdown: leaving the rest to the next publisher"
            );
            return Ok(());
        }
        send(js, config, &batch, &mut last_id).await?;
        last_position = batch.last().map_or(last_position, |e| e.position);
        *published = Some(last_position);
        health.progressed(last_position);
        // The stream's tail is the real checkpoint; this copy only matters
        // after a purge, so it is saved at most once a second.
        // Other processes commit too, unseen by the feed: the log's head is
        // read with it, so that the backlog gauge is the real one.
        if checkpoint_saved.elapsed() >= Duration::from_secs(1) || drain_deadline.is_some() {
            save_checkpoint(pool, last_position).await?;
            known_head = known_head.max(head_position(pool).await?);
            checkpoint_saved = tokio::time::Instant::now();
        }
        metrics::gauge!("outbox_published_position").set(last_position as f64);
        known_head = known_head.max(feed.newest()).max(last_position);
        metrics::gauge!("outbox_backlog_events").set((known_head - last_position) as f64);
    }
}

/// Where publishing resumes: after the stream's tail (checked to be this
/// log's), or after the saved checkpoint when the stream is empty (new or
/// purged).
async fn resume_point(
    pool: &PgPool,
    js: &jetstream::Context,
    config: &PublisherConfig,
) -> anyhow::Result<(i64, Option<String>)> {
    let checkpoint: i64 = sqlx::query_scalar("SELECT position FROM outbox_checkpoint")
        .fetch_one(pool)
        .await
        .context("reading the outbox checkpoint")?;
    Ok(match stream_tail(js, &config.stream).await? {
        Some((position, id)) => {
            check_same_log(pool, config, position, &id).await?;
            (position, Some(id))
        }
        None => (checkpoint, None),
    })
}

/// Publishes `batch` in order, each message expecting the one before it as
/// the stream's last, then waits for every acknowledgement.
async fn send(
    js: &jetstream::Context,
    config: &PublisherConfig,
    batch: &[StoredEvent],
    last_id: &mut Option<String>,
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(batch.len());
    for event in batch {
        let id = event.event_id.to_string();
        let mut message = Publish::build()
            .payload(event.to_cloud_event().into())
            .message_id(&id)
            .header(POSITION_HEADER, event.position.to_string().as_str());
        if let Some(previous) = last_id.as_deref() {
            message = message.expected_last_message_id(previous);
        }
        let ack = js
            .send_publish(subject_of(&config.subject_prefix, event), message)
            .await
            .with_context(|| format!("publishing position {}", event.position))?;
        acks.push((event.position, ack));
        *last_id = Some(id);
    }
    for (position, ack) in acks {
        ack.await
            .with_context(|| format!("JetStream refused position {position}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed() -> Feed {
        let (_, rx) = broadcast::channel(4);
        Feed {
            rx,
            pending: BTreeMap::new(),
            lagged: false,
        }
    }

    #[test]
    fn a_batch_told_empty_sends_the_publisher_to_the_store() {
        let mut feed = feed();
        feed.insert(Arc::new(Vec::new()));
        assert!(feed.lagged, "the events are only in the store");
        assert!(feed.take_after(0, 10).is_empty());
    }
}
