//! The checkpointer: keeps the log's Merkle tree (`shared::merkle_store`)
//! up with the committed events and signs a checkpoint of it at least once
//! a second while the log grows and once a minute while it is idle; each
//! signed note is stored beside the events and published to a JetStream
//! stream of its own, so that a party outside the database keeps the
//! history of signed heads. One process at a time checkpoints (a session
//! advisory lock elects it); it runs only when a signing key is configured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use shared::checkpoint::{Checkpoint, NoteSigner};
use shared::loop_health::LoopHealth;
use shared::merkle_store;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Advisory lock key held by the checkpointing process (`'treeckpt'`).
pub const CHECKPOINT_LOCK_KEY: i64 = 0x7472_6565_636b_7074;

/// Most events added to the tree in one transaction.
const EXTEND_BATCH: i64 = 10_000;
/// A checkpoint at least this often while idle.
const IDLE_EVERY: Duration = Duration::from_secs(60);
/// And at most this often while the log grows.
const GROWING_EVERY: Duration = Duration::from_secs(1);

pub struct CheckpointerConfig {
    pub signer: NoteSigner,
    pub origin: String,
    /// JetStream stream and subject of the signed notes.
    pub stream: String,
    pub subject: String,
}

/// The signer named by the configuration: the key itself, or a file holding
/// it; `None` when neither is given.
pub fn signer_from(key: &str, file: &str) -> anyhow::Result<Option<NoteSigner>> {
    let text = if !key.is_empty() {
        key.to_owned()
    } else if !file.is_empty() {
        std::fs::read_to_string(file)
            .with_context(|| format!("reading the log signing key from {file}"))?
    } else {
        return Ok(None);
    };
    NoteSigner::parse(&text)
        .map(Some)
        .context("the log signing key is not a signed-note private key (PRIVATE+KEY+…)")
}

/// Creates the checkpoints' stream, or brings its configuration up to date.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &CheckpointerConfig,
) -> anyhow::Result<()> {
    js.create_or_update_stream(stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating or updating JetStream stream {}", config.stream))?;
    Ok(())
}

/// Extends the tree once and signs a checkpoint if one is due; answers the
/// tree's size. `last` is the size and time of the last signed checkpoint.
pub async fn step(
    pool: &PgPool,
    js: &jetstream::Context,
    config: &CheckpointerConfig,
    last: &mut Option<(u64, Instant)>,
) -> anyhow::Result<u64> {
    let size = merkle_store::extend(pool, EXTEND_BATCH)
        .await
        .context("extending the Merkle tree")?;
    let due = match *last {
        None => true,
        Some((signed, at)) => {
            (size > signed && at.elapsed() >= GROWING_EVERY) || at.elapsed() >= IDLE_EVERY
        }
    };
    if !due || size == 0 {
        return Ok(size);
    }
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let root = merkle_store::root_at(&mut conn, size)
        .await
        .context("computing the tree's root")?;
    drop(conn);
    let checkpoint = Checkpoint {
        origin: config.origin.clone(),
        size,
        root,
    };
    let note = checkpoint.sign(&config.signer);
    sqlx::query("INSERT INTO checkpoints (size, root, note, signed_at) VALUES ($1, $2, $3, now())")
        .bind(size as i64)
        .bind(root.as_slice())
        .bind(&note)
        .execute(pool)
        .await
        .context("storing a checkpoint")?;
    *last = Some((size, Instant::now()));
    js.publish(config.subject.clone(), note.into_bytes().into())
        .await
        .context("publishing a checkpoint")?
        .await
        .context("JetStream refused a checkpoint")?;
    metrics::gauge!("checkpoint_tree_size").set(size as f64);
    Ok(size)
}

/// Checkpoints until `shutdown`, while this process holds the lock.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    config: CheckpointerConfig,
    health: Arc<LoopHealth>,
    shutdown: CancellationToken,
) {
    let mut leader: Option<sqlx::PgConnection> = None;
    let mut last = None;
    while !shutdown.is_cancelled() {
        let wait = if leader.is_none() {
            match crate::publisher::become_leader(&pool, CHECKPOINT_LOCK_KEY).await {
                Ok(conn) => {
                    leader = conn;
                    Duration::ZERO
                }
                Err(error) => health.failed(health.position(), &error),
            }
        } else {
            match step(&pool, &js, &config, &mut last).await {
                Ok(size) => {
                    health.progressed(size as i64);
                    GROWING_EVERY
                }
                Err(error) => health.failed(health.position(), &error),
            }
        };
        // Another process checkpoints: look again now and then.
        let wait = if leader.is_none() && wait.is_zero() {
            Duration::from_secs(5)
        } else {
            wait
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => {}
        }
    }
}
