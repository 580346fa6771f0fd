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

/// A checkpoint at least this often while idle.
const IDLE_EVERY: Duration = Duration::from_secs(60);
/// And at most this often while the log grows.
const GROWING_EVERY: Duration = Duration::from_secs(1);

pub struct CheckpointerConfig {
    pub signer: NoteSigner,
    pub origin: String,
    /// Most events added to the tree in one transaction.
    pub batch: i64,
    /// JetStream stream and subject of the signed notes.
    pub stream: String,
    pub subject: String,
    /// Copies JetStream keeps of the stream.
    pub replicas: usize,
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
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating or updating JetStream stream {}", config.stream))?;
    Ok(())
}

/// The last checkpoint this log signed, and when this process saw it.
pub struct LastSigned {
    pub checkpoint: Checkpoint,
    at: Instant,
}

/// The newest checkpoint signed with this key: the last note in JetStream
/// (outside the database) when it holds one, else the newest stored row;
/// `None` for a log never checkpointed. Notes that do not verify with the
/// key are not taken for ours.
pub async fn last_signed(
    pool: &PgPool,
    js: &jetstream::Context,
    config: &CheckpointerConfig,
) -> anyhow::Result<Option<LastSigned>> {
    let verifier = config.signer.verifier();
    let open = |note: &str| Checkpoint::verify(note, &verifier, &config.origin).ok();
    let stream = js
        .get_stream(&config.stream)
        .await
        .with_context(|| format!("opening JetStream stream {}", config.stream))?;
    let published = match stream
        .get_last_raw_message_by_subject(&config.subject)
        .await
    {
        Ok(message) => std::str::from_utf8(&message.payload).ok().and_then(open),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => None,
        Err(e) => return Err(e).context("reading the last published checkpoint"),
    };
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT note FROM checkpoints ORDER BY size DESC, signed_at DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .context("reading the newest checkpoint")?;
    let stored = stored.as_deref().and_then(open);
    let newest = match (published, stored) {
        (Some(p), Some(s)) => Some(if s.size > p.size { s } else { p }),
        (p, s) => p.or(s),
    };
    Ok(newest.map(|checkpoint| LastSigned {
        checkpoint,
        at: Instant::now(),
    }))
}

/// Extends the tree once and signs a checkpoint if one is due; answers the
/// tree's size. A checkpoint is signed only when the tree continues the
/// last one signed (`last`): a tree that shrank, forked or changed below
/// it is refused, so the key never vouches for a rewritten past.
pub async fn step(
    pool: &PgPool,
    js: &jetstream::Context,
    config: &CheckpointerConfig,
    last: &mut Option<LastSigned>,
) -> anyhow::Result<u64> {
    let size = merkle_store::catch_up(pool, config.batch)
        .await
        .context("extending the Merkle tree")?;
    let due = match last {
        None => true,
        Some(last) => {
            let elapsed = last.at.elapsed();
            (size > last.checkpoint.size && elapsed >= GROWING_EVERY) || elapsed >= IDLE_EVERY
        }
    };
    if !due || size == 0 {
        return Ok(size);
    }
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let root = merkle_store::root_at(&mut conn, size)
        .await
        .context("computing the tree's root")?;
    let checkpoint = Checkpoint {
        origin: config.origin.clone(),
        size,
        root,
    };
    if let Some(last) = last.as_ref() {
        let old = last.checkpoint.size;
        let proof = if old == 0 || size <= old {
            Vec::new()
        } else {
            merkle_store::prove_consistency(&mut conn, old, size)
                .await
                .context("proving the tree's consistency with the last checkpoint")?
        };
        last.checkpoint
            .continued_by(&checkpoint, &proof)
            .context("refusing to sign the tree")?;
    }
    drop(conn);
    let note = checkpoint.sign(&config.signer);
    sqlx::query("INSERT INTO checkpoints (size, root, note, signed_at) VALUES ($1, $2, $3, now())")
        .bind(size as i64)
        .bind(root.as_slice())
        .bind(&note)
        .execute(pool)
        .await
        .context("storing a checkpoint")?;
    *last = Some(LastSigned {
        checkpoint,
        at: Instant::now(),
    });
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
    let mut leader: Option<shared::lease::Lease> = None;
    let mut last = None;
    while !shutdown.is_cancelled() {
        let held = match leader.as_mut() {
            Some(lease) => lease.held().await,
            None => false,
        };
        if !held {
            leader = None;
        }
        let wait = if leader.is_none() {
            match shared::lease::Lease::try_take(&pool, CHECKPOINT_LOCK_KEY).await {
                Ok(Some(lease)) => match last_signed(&pool, &js, &config).await {
                    Ok(signed) => {
                        last = signed;
                        leader = Some(lease);
                        Duration::ZERO
                    }
                    Err(error) => health.failed(health.position(), &error),
                },
                Ok(None) => Duration::ZERO,
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
