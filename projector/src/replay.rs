//! Replaying the whole event store into fresh read tables: `rebuild` fills a
//! schema beside the live one and switches to it atomically; `verify` fills a
//! scratch schema and compares every document with the live ones, which is
//! how an auditor shows that the read models follow from the log.

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use shared::store::EventStore;
use sqlx::PgPool;

use crate::read_tables::checkpoint;
use crate::{apply_batch, begin_writer, Applied, LIVE_SCHEMA};

/// Events read and applied per transaction during a replay.
pub const REPLAY_BATCH: i64 = 5000;

const TABLES: [&str; 4] = ["checkpoint", "studies", "subjects", "observations"];

/// Creates `schema` empty, with the live tables' columns, keys, indexes and
/// storage parameters (the hot tables' fillfactor, which `LIKE` leaves out).
pub async fn create_like_live(pool: &PgPool, schema: &str) -> anyhow::Result<()> {
    let parameters: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, array_to_string(c.reloptions, ', ') FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'r' AND c.reloptions IS NOT NULL",
    )
    .bind(LIVE_SCHEMA)
    .fetch_all(pool)
    .await
    .context("reading the live tables' storage parameters")?;
    let mut sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema};");
    for table in TABLES {
        sql.push_str(&format!(
            "CREATE TABLE {schema}.{table} (LIKE {LIVE_SCHEMA}.{table} INCLUDING ALL);"
        ));
        if let Some((_, options)) = parameters.iter().find(|(name, _)| name == table) {
            sql.push_str(&format!("ALTER TABLE {schema}.{table} SET ({options});"));
        }
    }
    sql.push_str(&format!("INSERT INTO {schema}.checkpoint DEFAULT VALUES;"));
    sqlx::raw_sql(&sql)
        .execute(pool)
        .await
        .with_context(|| format!("creating schema {schema}"))?;
    Ok(())
}

/// Replays events into `schema` up to `upto` (or the head), printing
/// progress and the rate to stderr when `progress` is set; answers the
/// position reached.
pub async fn replay_into(
    pool: &PgPool,
    schema: &str,
    upto: Option<i64>,
    progress: bool,
) -> anyhow::Result<i64> {
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await
        .context("reading the head of the log")?;
    let target = upto.unwrap_or(head).min(head);
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    let mut position = checkpoint(&mut *conn, schema).await?;
    let started = Instant::now();
    let from = position;
    let mut cache = crate::read_tables::ViewCache::default();
    while position < target {
        let limit = REPLAY_BATCH.min(target - position);
        let events = EventStore::read_after(pool, position, limit)
            .await
            .context("reading events")?;
        if events.is_empty() {
            break;
        }
        match apply_batch(&mut conn, schema, &events, &mut cache).await? {
            Applied::Done { checkpoint, .. } => position = checkpoint,
            Applied::Moved { checkpoint } => {
                anyhow::bail!("schema {schema} was changed by someone else (at {checkpoint})")
            }
        }
        if progress {
            let rate = (position - from) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            let percent = 100.0 * position as f64 / target.max(1) as f64;
            eprint!("\r{position}/{target} events ({percent:.1} %), {rate:.0} events/s   ");
            let _ = std::io::stderr().flush();
        }
    }
    if progress {
        eprintln!();
    }
    Ok(position)
}

/// Rebuilds the read models beside the live ones and switches to them once
/// caught up; the live tables keep serving (and the live projector keeps
/// projecting) until the switch. Answers the position at the switch.
pub async fn rebuild(pool: &PgPool, progress: bool) -> anyhow::Result<i64> {
    let next = format!("{LIVE_SCHEMA}_next");
    create_like_live(pool, &next).await?;
    replay_into(pool, &next, None, progress).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    // The live writer lock stops the live projector between batches.
    // The live checkpoint cannot move until the transaction ends.
    let mut tx = begin_writer(&mut conn, LIVE_SCHEMA).await?;
    let live = checkpoint(&mut *tx, LIVE_SCHEMA).await?;
    // Catch up with everything committed so far (at least the live state).
    let reached = replay_into(pool, &next, None, false).await?;
    anyhow::ensure!(
        reached >= live,
        "the rebuild ended at {reached}, behind the live {live}"
    );
    let old = format!("{LIVE_SCHEMA}_old");
    sqlx::raw_sql(&format!(
        "DROP SCHEMA IF EXISTS {old} CASCADE; ALTER SCHEMA {LIVE_SCHEMA} RENAME TO {old}; \
         ALTER SCHEMA {next} RENAME TO {LIVE_SCHEMA};"
    ))
    .execute(&mut *tx)
    .await
    .context("switching to the rebuilt tables")?;
    tx.commit().await.context("committing the switch")?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {old} CASCADE"))
        .execute(pool)
        .await
        .context("dropping the old tables")?;
    Ok(reached)
}

/// `(id, live body, replayed body)`.
type BodyPair = (uuid::Uuid, Option<Vec<u8>>, Option<Vec<u8>>);

/// The first document where the live read models and a replay differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: &'static str,
    pub id: uuid::Uuid,
    pub live: Option<String>,
    pub replayed: Option<String>,
}

/// Replays the log into a scratch schema up to the live checkpoint and
/// compares every document; answers the checkpoint compared at and the first
/// difference, if any.
pub async fn verify(pool: &PgPool, progress: bool) -> anyhow::Result<(i64, Option<Difference>)> {
    let scratch = format!("{LIVE_SCHEMA}_verify");
    create_like_live(pool, &scratch).await?;
    replay_into(pool, &scratch, None, progress).await?;
    let mut conn = pool.acquire().await.context("acquiring a connection")?;
    // The live tables hold still while they are compared.
    // The live checkpoint cannot move until the transaction ends.
    let mut tx = begin_writer(&mut conn, LIVE_SCHEMA).await?;
    let live = checkpoint(&mut *tx, LIVE_SCHEMA).await?;
    let replayed = checkpoint(&mut *tx, &scratch).await?;
    if replayed < live {
        replay_into(pool, &scratch, Some(live), false).await?;
    } else if replayed > live {
        // The replay went past the live projection: start again at its point.
        create_like_live(pool, &scratch).await?;
        replay_into(pool, &scratch, Some(live), false).await?;
    }
    let mut difference = None;
    for table in ["studies", "subjects", "observations"] {
        let row: Option<BodyPair> = sqlx::query_as(&format!(
            "SELECT coalesce(l.id, r.id), l.body, r.body FROM {LIVE_SCHEMA}.{table} l \
             FULL JOIN {scratch}.{table} r ON l.id = r.id \
             WHERE l.body IS DISTINCT FROM r.body ORDER BY 1 LIMIT 1"
        ))
        .fetch_optional(&mut *tx)
        .await
        .with_context(|| format!("comparing {table}"))?;
        if let Some((id, l, r)) = row {
            let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
            difference = Some(Difference {
                table,
                id,
                live: text(l),
                replayed: text(r),
            });
            break;
        }
    }
    tx.commit().await?;
    sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS {scratch} CASCADE"))
        .execute(pool)
        .await
        .context("dropping the scratch schema")?;
    Ok((live, difference))
}
