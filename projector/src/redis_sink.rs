//! Warming Redis with the documents a batch changed, off the projection
//! path: a task of its own writes them with a version guard (a newer
//! document is never replaced by an older one), moves the `through` mark
//! and announces it on the invalidation channel. When Redis is down nothing
//! waits: the lowest position not written is remembered and everything
//! changed since is written again from the read tables once Redis answers.
//!
//! `<prefix>:through = X` promises that every document whose latest change
//! is at or below position X is in Redis at that version or newer (or is
//! absent). The mark only moves from the position a batch starts after, so a
//! batch that was never written (or a Redis that lost or rolled back its
//! data) stops it until a refill has covered the gap; the query API relies
//! on it to know whether a document from Redis is current.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::read_tables::{changed_by_events, checkpoint, Doc};

/// Sets the document only if the stored one is older: KEYS[1] = key,
/// ARGV[1] = position, ARGV[2] = body, ARGV[3] = study id. Answers 1 if
/// written.
pub const GUARDED_SET: &str = r"
local current = redis.call('HGET', KEYS[1], 'p')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'b', ARGV[2], 's', ARGV[3])
return 1
";

/// Moves the `through` mark (KEYS[1]) to ARGV[2] if it is at least ARGV[1],
/// the position the documents just written start after; a missing mark is
/// 0. Answers the mark as it stands afterwards.
pub const ADVANCE_THROUGH: &str = r"
local through = tonumber(redis.call('GET', KEYS[1]) or '0')
if through >= tonumber(ARGV[1]) and tonumber(ARGV[2]) > through then
  redis.call('SET', KEYS[1], ARGV[2])
  return tonumber(ARGV[2])
end
return through
";

pub use shared::redis_layout::{code_key, doc_key, invalidation_channel, through_key};

/// The documents of one applied batch: every document changed by the events
/// after `after` up to `checkpoint`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub after: i64,
    pub checkpoint: i64,
    pub docs: Vec<Doc>,
}

/// Hands documents to the writer task without ever waiting.
#[derive(Clone)]
pub struct RedisSink {
    tx: mpsc::Sender<Batch>,
    /// Lowest position whose documents may be missing from Redis; -1 when
    /// nothing is missing.
    dirty_from: Arc<AtomicI64>,
}

impl RedisSink {
    pub fn start(url: &str, prefix: String, pool: PgPool) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let (tx, rx) = mpsc::channel(64);
        let dirty_from = Arc::new(AtomicI64::new(-1));
        tokio::spawn(run(client, prefix, pool, rx, dirty_from.clone()));
        Ok(Self { tx, dirty_from })
    }

    pub fn send(&self, batch: Batch) {
        let after = batch.after;
        if self.tx.try_send(batch).is_err() {
            // The writer is behind (Redis slow or down): refill later.
            mark_dirty(&self.dirty_from, after);
        }
    }
}

fn mark_dirty(dirty_from: &AtomicI64, after: i64) {
    let _ = dirty_from.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
        Some(if d < 0 { after } else { d.min(after) })
    });
}

async fn connect(client: &redis::Client) -> redis::RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(Duration::from_secs(2))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client.clone(), config).await
}

/// Writes documents with the guard, in one pipeline.
pub async fn write(
    conn: &mut ConnectionManager,
    prefix: &str,
    docs: &[Doc],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    push_docs(&mut pipe, prefix, docs);
    pipe.query_async::<()>(conn).await
}

fn push_docs(pipe: &mut redis::Pipeline, prefix: &str, docs: &[Doc]) {
    let script = redis::Script::new(GUARDED_SET);
    pipe.cmd("SCRIPT").arg("LOAD").arg(GUARDED_SET).ignore();
    for d in docs {
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(1)
            .arg(doc_key(prefix, d.kind, &d.id))
            .arg(d.position)
            .arg(&d.body[..])
            .arg(d.study_id.to_string())
            .ignore();
        if let Some(code) = &d.code {
            pipe.cmd("SET")
                .arg(code_key(prefix, code))
                .arg(d.id.to_string())
                .ignore();
        }
    }
}

fn push_advance(pipe: &mut redis::Pipeline, prefix: &str, after: i64, checkpoint: i64) {
    let script = redis::Script::new(ADVANCE_THROUGH);
    pipe.cmd("SCRIPT").arg("LOAD").arg(ADVANCE_THROUGH).ignore();
    pipe.cmd("EVALSHA")
        .arg(script.get_hash())
        .arg(1)
        .arg(through_key(prefix))
        .arg(after)
        .arg(checkpoint);
    pipe.cmd("PUBLISH")
        .arg(invalidation_channel(prefix))
        .arg(checkpoint)
        .ignore();
}

/// Writes a batch's documents and moves the `through` mark past them, in
/// one pipeline; answers the mark as it stands afterwards (below the batch's
/// checkpoint when an earlier gap holds it back).
pub async fn write_batch(
    conn: &mut ConnectionManager,
    prefix: &str,
    batch: &Batch,
) -> redis::RedisResult<i64> {
    let mut pipe = redis::pipe();
    push_docs(&mut pipe, prefix, &batch.docs);
    push_advance(&mut pipe, prefix, batch.after, batch.checkpoint);
    let (through,): (i64,) = pipe.query_async(conn).await?;
    Ok(through)
}

async fn read_through(conn: &mut ConnectionManager, prefix: &str) -> redis::RedisResult<i64> {
    let through: Option<i64> = redis::cmd("GET")
        .arg(through_key(prefix))
        .query_async(conn)
        .await?;
    Ok(through.unwrap_or(0))
}

async fn run(
    client: redis::Client,
    prefix: String,
    pool: PgPool,
    mut rx: mpsc::Receiver<Batch>,
    dirty_from: Arc<AtomicI64>,
) {
    let mut conn: Option<ConnectionManager> = None;
    let mut down_logged = false;
    // Whether Redis's mark has been compared with the read tables since this
    // process started (documents of a batch committed just before a crash
    // never reached Redis).
    let mut synced = false;
    loop {
        let batch = match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(batch)) => Some(batch),
            Ok(None) => return,
            Err(_) => None,
        };
        if conn.is_none() {
            conn = connect(&client).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            if let Some(batch) = &batch {
                mark_dirty(&dirty_from, batch.after);
            }
            if !down_logged {
                tracing::warn!("Redis unreachable; documents will be written when it returns");
                down_logged = true;
            }
            metrics::counter!("projector_redis_failures_total").increment(1);
            continue;
        };
        if !synced {
            match (
                read_through(c, &prefix).await,
                checkpoint(&pool, crate::LIVE_SCHEMA).await,
            ) {
                (Ok(through), Ok(checkpoint)) => {
                    if through < checkpoint {
                        mark_dirty(&dirty_from, through);
                    }
                    synced = true;
                }
                (Err(error), _) => {
                    tracing::warn!(%error, "reading Redis's mark failed");
                    conn = None;
                }
                (_, Err(error)) => tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the checkpoint failed"
                ),
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Some(batch) = batch {
            match write_batch(c, &prefix, &batch).await {
                // Held back by a gap (or by a Redis that lost its data):
                // refill from where the mark stands.
                Ok(through) if through < batch.checkpoint => mark_dirty(&dirty_from, through),
                Ok(_) => {}
                Err(error) => {
                    mark_dirty(&dirty_from, batch.after);
                    metrics::counter!("projector_redis_failures_total").increment(1);
                    if !down_logged {
                        tracing::warn!(%error, "writing to Redis failed; documents will be written again");
                        down_logged = true;
                    }
                    conn = None;
                    continue;
                }
            }
        }
        let after = dirty_from.swap(-1, Ordering::Relaxed);
        if after >= 0 {
            match refill(c, &prefix, &pool, after).await {
                Ok((n, through, checkpoint)) => {
                    if through < checkpoint {
                        mark_dirty(&dirty_from, through);
                    }
                    tracing::info!(documents = n, after, through, "Redis refilled");
                    down_logged = false;
                }
                Err(error) => {
                    mark_dirty(&dirty_from, after);
                    tracing::warn!(error = format!("{error:#}"), "refilling Redis failed");
                    conn = None;
                }
            }
        } else if down_logged {
            tracing::info!("Redis is back");
            down_logged = false;
        }
    }
}

/// Writes every document changed after position `after` again, then moves
/// the mark to the checkpoint read before the first page (every change up
/// to it is in the pages). Answers the documents written, the mark and that
/// checkpoint. Positions are gap-free, so the log is read in pages of
/// positions.
async fn refill(
    conn: &mut ConnectionManager,
    prefix: &str,
    pool: &PgPool,
    after: i64,
) -> anyhow::Result<(usize, i64, i64)> {
    const PAGE: i64 = 2000;
    let upto = checkpoint(pool, crate::LIVE_SCHEMA).await?;
    let mut total = 0;
    let mut from = after;
    while from < upto {
        let to = upto.min(from + PAGE);
        let docs = changed_by_events(pool, crate::LIVE_SCHEMA, from, to).await?;
        write(conn, prefix, &docs).await?;
        total += docs.len();
        from = to;
    }
    let mut pipe = redis::pipe();
    push_advance(&mut pipe, prefix, after, upto);
    let (through,): (i64,) = pipe.query_async(conn).await?;
    Ok((total, through, upto))
}
