//! Warming Redis with the documents a batch changed, off the projection
//! path: a task of its own writes them with a version guard (a newer
//! document is never replaced by an older one) and announces them on the
//! invalidation channel. When Redis is down nothing waits: the lowest
//! position not written is remembered and everything changed since is
//! written again from the read tables once Redis answers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::views::{changed_after, Doc};

/// Sets the document only if the stored one is older:
/// KEYS[1] = key, ARGV[1] = position, ARGV[2] = body. Answers 1 if written.
pub const GUARDED_SET: &str = r"
local current = redis.call('HGET', KEYS[1], 'p')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'b', ARGV[2])
return 1
";

/// `<prefix>:doc:<kind>:<id>`, a hash of `p` (position) and `b` (body).
pub fn doc_key(prefix: &str, kind: &str, id: &uuid::Uuid) -> String {
    format!("{prefix}:doc:{kind}:{id}")
}

/// Channel on which `<kind> <id> <position>` lines announce new documents.
pub fn invalidation_channel(prefix: &str) -> String {
    format!("{prefix}:invalidations")
}

/// Hands documents to the writer task without ever waiting.
#[derive(Clone)]
pub struct RedisSink {
    tx: mpsc::Sender<Vec<Doc>>,
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

    pub fn send(&self, docs: Vec<Doc>) {
        let Some(lowest) = docs.iter().map(|d| d.position).min() else {
            return;
        };
        if self.tx.try_send(docs).is_err() {
            // The writer is behind (Redis slow or down): refill later.
            mark_dirty(&self.dirty_from, lowest - 1);
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

/// Writes documents with the guard, in one pipeline, and announces them.
pub async fn write(
    conn: &mut ConnectionManager,
    prefix: &str,
    docs: &[Doc],
) -> redis::RedisResult<()> {
    let script = redis::Script::new(GUARDED_SET);
    let mut pipe = redis::pipe();
    pipe.cmd("SCRIPT").arg("LOAD").arg(GUARDED_SET).ignore();
    let mut announcement = String::new();
    for d in docs {
        pipe.cmd("EVALSHA")
            .arg(script.get_hash())
            .arg(1)
            .arg(doc_key(prefix, d.kind, &d.id))
            .arg(d.position)
            .arg(&d.body[..])
            .ignore();
        if let Some(code) = &d.code {
            pipe.cmd("SET")
                .arg(format!("{prefix}:code:{code}"))
                .arg(d.id.to_string())
                .ignore();
        }
        announcement.push_str(&format!("{} {} {}\n", d.kind, d.id, d.position));
    }
    pipe.cmd("PUBLISH")
        .arg(invalidation_channel(prefix))
        .arg(announcement)
        .ignore();
    pipe.query_async::<()>(conn).await
}

async fn run(
    client: redis::Client,
    prefix: String,
    pool: PgPool,
    mut rx: mpsc::Receiver<Vec<Doc>>,
    dirty_from: Arc<AtomicI64>,
) {
    let mut conn: Option<ConnectionManager> = None;
    let mut down_logged = false;
    loop {
        let docs = match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
            Ok(Some(docs)) => Some(docs),
            Ok(None) => return,
            Err(_) => None,
        };
        if conn.is_none() {
            conn = connect(&client).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            if let Some(docs) = &docs {
                mark_dirty(
                    &dirty_from,
                    docs.iter().map(|d| d.position).min().unwrap_or(0) - 1,
                );
            }
            if !down_logged {
                tracing::warn!("Redis unreachable; documents will be written when it returns");
                down_logged = true;
            }
            metrics::counter!("projector_redis_failures_total").increment(1);
            continue;
        };
        if let Some(docs) = docs {
            if let Err(error) = write(c, &prefix, &docs).await {
                mark_dirty(
                    &dirty_from,
                    docs.iter().map(|d| d.position).min().unwrap_or(0) - 1,
                );
                metrics::counter!("projector_redis_failures_total").increment(1);
                if !down_logged {
                    tracing::warn!(%error, "writing to Redis failed; documents will be written again");
                    down_logged = true;
                }
                conn = None;
                continue;
            }
        }
        let after = dirty_from.swap(-1, Ordering::Relaxed);
        if after >= 0 {
            match refill(c, &prefix, &pool, after).await {
                Ok(n) => {
                    tracing::info!(documents = n, after, "Redis refilled");
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

/// Writes every document changed after position `after` again.
async fn refill(
    conn: &mut ConnectionManager,
    prefix: &str,
    pool: &PgPool,
    after: i64,
) -> anyhow::Result<usize> {
    const PAGE: i64 = 2000;
    let mut total = 0;
    let mut key = (after, uuid::Uuid::max());
    loop {
        let docs = changed_after(pool, crate::LIVE_SCHEMA, key, PAGE).await?;
        let Some(last) = docs.last() else {
            return Ok(total);
        };
        key = (last.position, last.id);
        write(conn, prefix, &docs).await?;
        total += docs.len();
        if docs.len() < PAGE as usize {
            return Ok(total);
        }
    }
}
