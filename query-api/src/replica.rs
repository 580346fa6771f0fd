//! The read tables on the read replicas: every read a request makes is one
//! statement on the active replica, which also returns that replica's
//! projection checkpoint so that the answer says how current it is. The
//! change feed (what changed after a position) is read by the freshness
//! task alone, which also chooses the active replica.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::PgPool;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::memory_tier::{Change, Doc, Found, Key, Kind};

/// A document as read, with the checkpoint it is current as of.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub found: Found,
    pub current_as_of: i64,
}

/// `(checkpoint, id, study id, position, body)`; the document's columns
/// are null when there is no such document.
type DocRow = (
    i64,
    Option<Uuid>,
    Option<Uuid>,
    Option<i64>,
    Option<Vec<u8>>,
);

fn doc_sql(key: &Key) -> &'static str {
    match key {
        Key::Doc(Kind::Study, _) => concat!(
            "SELECT c.position, d.id, d.id, d.position, d.body FROM read_model.checkpoint c ",
            "LEFT JOIN read_model.studies d ON d.id = $1"
        ),
        Key::Doc(Kind::Subject, _) => concat!(
            "SELECT c.position, d.id, d.study_id, d.position, d.body FROM read_model.checkpoint c ",
            "LEFT JOIN read_model.subjects d ON d.id = $1"
        ),
        Key::Doc(Kind::Observation, _) => concat!(
            "SELECT c.position, d.id, d.study_id, d.position, d.body FROM read_model.checkpoint c ",
            "LEFT JOIN read_model.observations d ON d.id = $1"
        ),
        Key::Code(_) => concat!(
            "SELECT c.position, d.id, d.id, d.position, d.body FROM read_model.checkpoint c ",
            "LEFT JOIN read_model.studies d ON d.code = $1"
        ),
    }
}

/// `(checkpoint, the parent's study, sort key, id, body)`; the row's
/// columns are null when the page is empty.
type PageRow<K> = (i64, Option<Uuid>, Option<K>, Option<Uuid>, Option<Vec<u8>>);

/// One page of a listing: the checkpoint, whether the parent exists (and
/// its study), and up to `limit + 1` rows `(sort key, id, body)`.
#[derive(Debug)]
pub struct Page {
    pub current_as_of: i64,
    /// The study the listing belongs to; `None` when its parent does not
    /// exist (always `Some(nil)` for the list of studies).
    pub study_id: Option<Uuid>,
    pub rows: Vec<(SortKey, Uuid, Bytes)>,
}

/// The page the rows of a listing's statement make.
fn page_of<K>(rows: Vec<PageRow<K>>, key: fn(K) -> SortKey) -> Page {
    Page {
        current_as_of: rows.first().map_or(0, |r| r.0),
        study_id: rows.first().and_then(|r| r.1),
        rows: rows
            .into_iter()
            .filter_map(|(_, _, k, id, body)| Some((key(k?), id?, Bytes::from(body?))))
            .collect(),
    }
}

/// What a listing is ordered by, after the id.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Code(String),
    Label(String),
    ObservedAt(DateTime<Utc>),
}

/// The three listings of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Studies,
    SubjectsOfStudy(Uuid),
    ObservationsOfSubject(Uuid),
}

/// The read replicas (hot standbys of one primary), in the configured
/// order of preference. Every statement goes to the active one; the
/// freshness task, which alone moves the freshness mark F, makes another
/// one active only when that one has reached F, so the active replica is
/// always at F or beyond.
pub struct Replica {
    standbys: Vec<Standby>,
    active: AtomicUsize,
}

struct Standby {
    /// `host:port/database`, for logs.
    name: String,
    pool: PgPool,
}

/// What one poll of the change feed saw.
#[derive(Debug)]
pub struct Poll {
    pub checkpoint: i64,
    /// Seconds the replica's replay is behind the primary (0 on the primary).
    pub lag_seconds: f64,
    /// `None` when more changed than a poll reads (the cache must be reset).
    pub changes: Option<Vec<Change>>,
}

/// `(kind, id, study id, subject id, code, position, lag)`: the first row is
/// the checkpoint with the replay lag, the others the events after the last
/// poll with what they changed beside their own aggregate.
type FeedRow = (
    String,
    Option<Uuid>,
    Option<Uuid>,
    Option<Uuid>,
    Option<String>,
    i64,
    Option<f64>,
);

/// Most events (and subjects of changed studies) one poll applies one by one.
const MAX_CHANGES: i64 = 50_000;

impl Replica {
    /// `pools` in order of preference, each with a name for logs; the first
    /// is active. At least one.
    pub fn new(pools: Vec<(String, PgPool)>) -> Self {
        assert!(!pools.is_empty(), "at least one replica");
        Self {
            standbys: pools
                .into_iter()
                .map(|(name, pool)| Standby { name, pool })
                .collect(),
            active: AtomicUsize::new(0),
        }
    }

    /// The active replica's pool.
    pub fn pool(&self) -> &PgPool {
        &self.standbys[self.active()].pool
    }

    /// The index of the active replica.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// How many replicas there are (at least one).
    pub fn count(&self) -> usize {
        self.standbys.len()
    }

    /// The name of replica `index`, for logs.
    pub fn name(&self, index: usize) -> &str {
        &self.standbys[index].name
    }

    /// Makes replica `index` the active one (the caller has seen it reach
    /// the freshness mark).
    pub fn activate(&self, index: usize) {
        self.active.store(index, Ordering::Relaxed);
        metrics::gauge!("query_replica_active").set(index as f64);
    }

    /// The projection checkpoint of replica `index`, in one statement.
    pub async fn checkpoint_of(&self, index: usize) -> sqlx::Result<i64> {
        Ok(self.poll_on(index, -1).await?.checkpoint)
    }

    /// The document under `key`, in one statement.
    pub async fn load(&self, key: &Key) -> sqlx::Result<Loaded> {
        let query = sqlx::query_as::<_, DocRow>(doc_sql(key));
        let query = match key {
            Key::Doc(_, id) => query.bind(*id),
            Key::Code(code) => query.bind(code.as_str()),
        };
        let (checkpoint, id, study_id, position, body) = query.fetch_one(self.pool()).await?;
        count_statement();
        let found = match (id, study_id, position, body) {
            (Some(id), Some(study_id), Some(position), Some(body)) => Found::Doc(Arc::new(
                Doc::new(id, study_id, position, Bytes::from(body)),
            )),
            _ => Found::Absent,
        };
        Ok(Loaded {
            found,
            current_as_of: checkpoint,
        })
    }

    /// One page of `listing` after `after` (the last row of the previous
    /// page), in one statement; studies limited to `studies` when given.
    pub async fn page(
        &self,
        listing: Listing,
        after: Option<(SortKey, Uuid)>,
        limit: i64,
        studies: Option<&[Uuid]>,
    ) -> sqlx::Result<Page> {
        let after_id = after.as_ref().map_or(Uuid::nil(), |(_, id)| *id);
        let fetch = limit + 1;
        let page = match listing {
            Listing::Studies => {
                let code = match &after {
                    Some((SortKey::Code(code), _)) => code.clone(),
                    _ => String::new(),
                };
                let rows: Vec<PageRow<String>> =
                    sqlx::query_as(
                        "SELECT c.position, '00000000-0000-0000-0000-000000000000'::uuid, p.code, p.id, p.body \
                         FROM read_model.checkpoint c \
                         LEFT JOIN LATERAL (SELECT code, id, body FROM read_model.studies \
                           WHERE code > $1 AND ($3::uuid[] IS NULL OR id = ANY($3)) \
                           ORDER BY code LIMIT $2) p ON true",
                    )
                    .bind(code)
                    .bind(fetch)
                    .bind(studies)
                    .fetch_all(self.pool())
                    .await?;
                page_of(rows, SortKey::Code)
            }
            Listing::SubjectsOfStudy(study) => {
                let label = match &after {
                    Some((SortKey::Label(label), _)) => label.clone(),
                    _ => String::new(),
                };
                let rows: Vec<PageRow<String>> = sqlx::query_as(
                    "SELECT c.position, s.id, p.label, p.id, p.body FROM read_model.checkpoint c \
                     LEFT JOIN read_model.studies s ON s.id = $1 \
                     LEFT JOIN LATERAL (SELECT label, id, body FROM read_model.subjects \
                       WHERE study_id = $1 AND (label, id) > ($2, $3) \
                       ORDER BY label, id LIMIT $4) p ON s.id IS NOT NULL",
                )
                .bind(study)
                .bind(label)
                .bind(after_id)
                .bind(fetch)
                .fetch_all(self.pool())
                .await?;
                page_of(rows, SortKey::Label)
            }
            Listing::ObservationsOfSubject(subject) => {
                let at = match &after {
                    Some((SortKey::ObservedAt(at), _)) => Some(*at),
                    _ => None,
                };
                let rows: Vec<PageRow<DateTime<Utc>>> = sqlx::query_as(
                    "SELECT c.position, s.study_id, p.observed_at, p.id, p.body \
                     FROM read_model.checkpoint c \
                     LEFT JOIN read_model.subjects s ON s.id = $1 \
                     LEFT JOIN LATERAL (SELECT observed_at, id, body FROM read_model.observations \
                       WHERE subject_id = $1 \
                         AND (observed_at, id) > (COALESCE($2, '-infinity'::timestamptz), $3) \
                       ORDER BY observed_at, id LIMIT $4) p ON s.id IS NOT NULL",
                )
                .bind(subject)
                .bind(at)
                .bind(after_id)
                .bind(fetch)
                .fetch_all(self.pool())
                .await?;
                page_of(rows, SortKey::ObservedAt)
            }
        };
        count_statement();
        Ok(page)
    }

    /// Streams every observation document of a study, ordered by
    /// `(observed_at, id)`, one per line, in chunks of about 64 KiB through a
    /// short channel: one statement whose rows are read as the client takes
    /// them, so memory stays constant however large the study.
    pub fn export(&self, study_id: Uuid) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
        const CHUNK: usize = 64 * 1024;
        let (tx, rx) = mpsc::channel(4);
        let pool = self.pool().clone();
        tokio::spawn(async move {
            count_statement();
            let mut rows = sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT body FROM read_model.observations WHERE study_id = $1 ORDER BY observed_at, id",
            )
            .bind(study_id)
            .fetch(&pool);
            let mut chunk = Vec::with_capacity(CHUNK + 4096);
            loop {
                match rows.try_next().await {
                    Ok(Some(body)) => {
                        chunk.extend_from_slice(&body);
                        chunk.push(b'\n');
                        if chunk.len() >= CHUNK {
                            let full =
                                std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK + 4096));
                            if tx.send(Ok(Bytes::from(full))).await.is_err() {
                                return; // The client went away.
                            }
                        }
                    }
                    Ok(None) => {
                        if !chunk.is_empty() {
                            let _ = tx.send(Ok(Bytes::from(chunk))).await;
                        }
                        return;
                    }
                    Err(error) => {
                        tracing::error!(%error, %study_id, "the export stopped: reading the replica failed");
                        let _ = tx
                            .send(Err(std::io::Error::other("the export stopped")))
                            .await;
                        return;
                    }
                }
            }
        });
        rx
    }

    /// The checkpoint, the replay lag and every document changed by the
    /// events after `after` up to the checkpoint, in one statement (one
    /// snapshot). The log is the change feed: an event at position p changed
    /// its own aggregate's document, its study's (and the study's entry by
    /// code), an observation's subject, and (for a study event, which may add
    /// variables every subject document lists) the study's subjects. So the
    /// read tables need no index on the position their hot rows change with
    /// every event, and their updates stay HOT. With `after` below zero only
    /// the checkpoint is read.
    pub async fn poll(&self, after: i64) -> sqlx::Result<Poll> {
        self.poll_on(self.active(), after).await
    }

    /// [`Replica::poll`] on replica `index`.
    pub async fn poll_on(&self, index: usize, after: i64) -> sqlx::Result<Poll> {
        let pool = &self.standbys[index].pool;
        const HEAD: &str = "SELECT 'checkpoint'::text, NULL::uuid, NULL::uuid, NULL::uuid, NULL::text, \
             c.position, \
             CASE WHEN NOT pg_is_in_recovery() \
                    OR pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
                  ELSE COALESCE(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0) \
             END FROM read_model.checkpoint c";
        let rows: Vec<FeedRow> = if after < 0 {
            sqlx::query_as(HEAD).fetch_all(pool).await?
        } else {
            sqlx::query_as(&format!(
                "{HEAD} \
                 UNION ALL (SELECT e.aggregate_type, e.aggregate_id, e.study_id, \
                                   COALESCE(o.subject_id, sub.id), s.code, e.position, NULL \
                            FROM events e \
                            LEFT JOIN read_model.studies s ON s.id = e.study_id \
                            LEFT JOIN read_model.observations o \
                                   ON e.aggregate_type = 'observation' AND o.id = e.aggregate_id \
                            LEFT JOIN read_model.subjects sub \
                                   ON e.aggregate_type = 'study' AND sub.study_id = e.aggregate_id \
                            WHERE e.position > $1 \
                              AND e.position <= (SELECT position FROM read_model.checkpoint) \
                            LIMIT $2)"
            ))
            .bind(after)
            .bind(MAX_CHANGES + 2)
            .fetch_all(pool)
            .await?
        };
        let overflow = rows.len() as i64 > MAX_CHANGES + 1;
        let mut checkpoint = None;
        let mut lag_seconds = 0.0;
        let mut latest: HashMap<Key, i64> = HashMap::with_capacity(rows.len());
        let mut changed = |key: Key, position: i64| {
            let at = latest.entry(key).or_insert(position);
            *at = (*at).max(position);
        };
        for (kind, id, study_id, subject_id, code, position, lag) in rows {
            if kind == "checkpoint" {
                checkpoint = Some(position);
                lag_seconds = lag.unwrap_or(0.0);
                continue;
            }
            let (Some(kind), Some(id), Some(study_id)) = (Kind::parse(&kind), id, study_id) else {
                continue;
            };
            changed(Key::Doc(kind, id), position);
            changed(Key::Doc(Kind::Study, study_id), position);
            if let Some(subject_id) = subject_id {
                changed(Key::Doc(Kind::Subject, subject_id), position);
            }
            if let Some(code) = code {
                changed(Key::Code(code), position);
            }
        }
        let checkpoint = checkpoint.ok_or_else(|| {
            sqlx::Error::Protocol("the change feed did not return the checkpoint".into())
        })?;
        let changes = latest
            .into_iter()
            .map(|(key, position)| Change { key, position })
            .collect();
        Ok(Poll {
            checkpoint,
            lag_seconds,
            changes: (!overflow || after < 0).then_some(changes),
        })
    }
}

/// Counts statements sent on behalf of requests (exposed as a metric).
fn count_statement() {
    metrics::counter!("query_replica_statements_total").increment(1);
}
