//! The PostgreSQL event store and its group-commit appender.
//!
//! One appender task per process takes every waiting append request, checks
//! each one's expected versions, guards and unique claims in memory under a
//! transaction-scoped advisory lock, and writes them all in one transaction.
//! The lock serialises batches across processes, which makes positions
//! gap-free and in commit order: a batch reads the head and commits while no
//! other batch can. A request that fails its own checks fails alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::domain::{AggregateKind, DomainEvent};
use crate::envelope::{StoredEvent, GENESIS_HASH};

/// Advisory lock key that serialises appends across processes
/// (`'research-events'` in ASCII, as a number).
pub const APPEND_LOCK_KEY: i64 = 0x7265_7365_6172_6368;

/// The columns of `events`, in the order [`event_from_row`] reads them.
pub const EVENT_COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, stream_version, study_id, \
     event_type, schema_version, data::text AS data, actor, reason, correlation_id, causation_id, recorded_at, \
     prevhash, hash";

/// A value that must be unique across aggregates, such as a study code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claim {
    pub scope: &'static str,
    pub key: String,
}

/// The answer of a single command, stored with its idempotency key in the
/// same transaction as its events.
#[derive(Debug, Clone)]
pub struct IdempotencyCompletion {
    pub principal: String,
    pub key: String,
    pub status: u16,
}

/// Events of one command for one aggregate, with what must still hold.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub aggregate_kind: AggregateKind,
    pub aggregate_id: Uuid,
    pub study_id: Uuid,
    /// The stream's version the decision was made on (0 for a new stream).
    pub expected_version: i64,
    pub events: Vec<DomainEvent>,
    /// Other aggregates the decision read, which must still be at these
    /// versions (a study must not have been closed meanwhile, say).
    pub guards: Vec<(Uuid, i64)>,
    pub claims: Vec<Claim>,
    pub actor: String,
    pub reason: Option<String>,
    pub correlation_id: String,
    pub causation_id: String,
    pub idempotency: Option<IdempotencyCompletion>,
}

/// What an accepted request wrote.
#[derive(Debug, Clone)]
pub struct Appended {
    pub version: i64,
    pub position: i64,
    pub events: Vec<StoredEvent>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("stream {aggregate_id} is at version {actual}, not {expected}")]
    Conflict {
        aggregate_id: Uuid,
        expected: i64,
        actual: i64,
    },
    #[error("aggregate {aggregate_id} changed from version {expected} to {actual}")]
    GuardChanged {
        aggregate_id: Uuid,
        expected: i64,
        actual: i64,
    },
    #[error("{scope} {key:?} is already taken")]
    ClaimTaken { scope: &'static str, key: String },
    #[error("the event store failed: {0}")]
    Store(Arc<anyhow::Error>),
    #[error("the event store is shutting down")]
    Closed,
}

/// The JSON body of a successful command: `{id, version, position}`.
pub fn command_answer_body(id: Uuid, version: i64, position: i64) -> Vec<u8> {
    format!(r#"{{"id":"{id}","version":{version},"position":{position}}}"#).into_bytes()
}

type Reply = oneshot::Sender<Vec<Result<Appended, AppendError>>>;

struct Job {
    requests: Vec<AppendRequest>,
    reply: Reply,
}

#[derive(Debug, Clone)]
pub struct AppenderConfig {
    /// Upper bound on the requests written in one transaction.
    pub max_batch: usize,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        Self { max_batch: 2000 }
    }
}

/// Handle to the event store; cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    jobs: mpsc::Sender<Job>,
    committed: watch::Receiver<i64>,
}

impl EventStore {
    /// Starts the appender task. It ends when every handle is dropped, after
    /// writing what it was given.
    pub fn start(pool: PgPool, config: AppenderConfig) -> (Self, JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(4096);
        let (committed_tx, committed) = watch::channel(0);
        let task = tokio::spawn(run_appender(pool.clone(), config, rx, committed_tx));
        (
            Self {
                pool,
                jobs,
                committed,
            },
            task,
        )
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The highest position this process has committed, for the publisher.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.committed.clone()
    }

    pub async fn append(&self, request: AppendRequest) -> Result<Appended, AppendError> {
        self.append_all(vec![request])
            .await
            .pop()
            .unwrap_or(Err(AppendError::Closed))
    }

    /// Appends requests in order in one transaction; each succeeds or fails
    /// on its own, and a later one sees the versions the earlier ones wrote.
    pub async fn append_all(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Vec<Result<Appended, AppendError>> {
        let n = requests.len();
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job { requests, reply }).await.is_err() {
            return vec![Err(AppendError::Closed); n];
        }
        answer
            .await
            .unwrap_or_else(|_| vec![Err(AppendError::Closed); n])
    }

    /// Every event of one aggregate, in stream order.
    pub async fn load_stream(&self, aggregate_id: Uuid) -> sqlx::Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = $1 ORDER BY stream_version"
        );
        sqlx::query(&sql)
            .bind(aggregate_id)
            .try_map(|row: PgRow| event_from_row(&row))
            .fetch_all(&self.pool)
            .await
    }

    /// Up to `limit` events after `after`, in position order.
    pub async fn read_after(
        pool: &PgPool,
        after: i64,
        limit: i64,
    ) -> sqlx::Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        );
        sqlx::query(&sql)
            .bind(after)
            .bind(limit)
            .try_map(|row: PgRow| event_from_row(&row))
            .fetch_all(pool)
            .await
    }
}

/// Reads one row selected with [`EVENT_COLUMNS`].
pub fn event_from_row(row: &PgRow) -> sqlx::Result<StoredEvent> {
    Ok(StoredEvent {
        position: row.try_get(0)?,
        event_id: row.try_get(1)?,
        aggregate_type: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        stream_version: row.try_get(4)?,
        study_id: row.try_get(5)?,
        event_type: row.try_get(6)?,
        schema_version: row.try_get(7)?,
        data: row.try_get(8)?,
        actor: row.try_get(9)?,
        reason: row.try_get(10)?,
        correlation_id: row.try_get(11)?,
        causation_id: row.try_get(12)?,
        recorded_at: row.try_get(13)?,
        prevhash: hash_column(row, 14)?,
        hash: hash_column(row, 15)?,
    })
}

fn hash_column(row: &PgRow, index: usize) -> sqlx::Result<[u8; 32]> {
    let bytes: Vec<u8> = row.try_get(index)?;
    bytes.try_into().map_err(|_| sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: "a hash is 32 bytes".into(),
    })
}

async fn run_appender(
    pool: PgPool,
    config: AppenderConfig,
    mut rx: mpsc::Receiver<Job>,
    committed: watch::Sender<i64>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut size = jobs[0].requests.len();
        while size < config.max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.requests.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let requests: Vec<&AppendRequest> = jobs.iter().flat_map(|j| j.requests.iter()).collect();
        let started = Instant::now();
        let outcome = write_batch(&pool, &requests).await;
        metrics::histogram!("event_store_append_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("event_store_append_batch_requests").record(requests.len() as f64);
        let mut results = match outcome {
            Ok(results) => {
                if let Some(last) = results
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .map(|a| a.position)
                    .max()
                {
                    committed.send_replace(last);
                }
                results
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    batch_len = requests.len(),
                    "append batch failed"
                );
                let error = Arc::new(error);
                vec![Err(AppendError::Store(error)); requests.len()]
                    .into_iter()
                    .collect()
            }
        }
        .into_iter();
        for job in jobs {
            let answer: Vec<_> = results.by_ref().take(job.requests.len()).collect();
            // The caller may have given up (timeout); its events stand.
            let _ = job.reply.send(answer);
        }
    }
}

/// Writes one batch in one transaction and answers each request.
async fn write_batch(
    pool: &PgPool,
    requests: &[&AppendRequest],
) -> anyhow::Result<Vec<Result<Appended, AppendError>>> {
    use anyhow::Context;

    let mut tx = pool
        .begin()
        .await
        .context("beginning the append transaction")?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(APPEND_LOCK_KEY)
        .execute(&mut *tx)
        .await
        .context("taking the append lock")?;
    // A new statement, so its snapshot sees every batch committed before
    // the lock was granted.
    let head: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .context("reading the head of the log")?;
    let (mut position, mut prevhash) = match head {
        Some((p, h)) => (
            p,
            h.try_into()
                .map_err(|_| anyhow::anyhow!("stored hash is not 32 bytes"))?,
        ),
        None => (0, GENESIS_HASH),
    };

    let ids: Vec<Uuid> = requests
        .iter()
        .flat_map(|r| std::iter::once(r.aggregate_id).chain(r.guards.iter().map(|g| g.0)))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut versions: HashMap<Uuid, i64> = sqlx::query_as(
        "SELECT aggregate_id, max(stream_version) FROM events WHERE aggregate_id = ANY($1) GROUP BY aggregate_id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await
    .context("reading stream versions")?
    .into_iter()
    .collect();

    let wanted: Vec<&Claim> = requests.iter().flat_map(|r| r.claims.iter()).collect();
    let mut taken: HashSet<(String, String)> = HashSet::new();
    if !wanted.is_empty() {
        let scopes: Vec<&str> = wanted.iter().map(|c| c.scope).collect();
        let keys: Vec<&str> = wanted.iter().map(|c| c.key.as_str()).collect();
        taken = sqlx::query_as(
            "SELECT scope, key FROM unique_claims WHERE (scope, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        )
        .bind(&scopes)
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await
        .context("reading unique claims")?
        .into_iter()
        .collect();
    }

    let recorded_at: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    let mut rows = EventRows::default();
    let mut claims = ClaimRows::default();
    let mut completions = CompletionRows::default();
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        if let Err(e) = check(request, &versions, &taken) {
            results.push(Err(e));
            continue;
        }
        let mut stored = Vec::with_capacity(request.events.len());
        let mut version = request.expected_version;
        for event in &request.events {
            position += 1;
            version += 1;
            let mut e = StoredEvent {
                position,
                event_id: Uuid::now_v7(),
                aggregate_type: request.aggregate_kind.as_str().to_owned(),
                aggregate_id: request.aggregate_id,
                stream_version: version,
                study_id: request.study_id,
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                data: event.to_data(),
                actor: request.actor.clone(),
                reason: request.reason.clone(),
                correlation_id: request.correlation_id.clone(),
                causation_id: request.causation_id.clone(),
                recorded_at,
                prevhash,
                hash: [0; 32],
            };
            e.hash = e.compute_hash();
            prevhash = e.hash;
            rows.push(&e);
            stored.push(e);
        }
        versions.insert(request.aggregate_id, version);
        for claim in &request.claims {
            taken.insert((claim.scope.to_owned(), claim.key.clone()));
            claims.push(claim, request.aggregate_id, position);
        }
        if let Some(done) = &request.idempotency {
            completions.push(
                done,
                crate::store::command_answer_body(request.aggregate_id, version, position),
            );
        }
        results.push(Ok(Appended {
            version,
            position,
            events: stored,
        }));
    }

    if !rows.position.is_empty() {
        rows.insert(&mut tx).await.context("inserting events")?;
    }
    if !claims.scope.is_empty() {
        claims
            .insert(&mut tx)
            .await
            .context("inserting unique claims")?;
    }
    if !completions.principal.is_empty() {
        completions
            .update(&mut tx)
            .await
            .context("completing idempotency keys")?;
    }
    tx.commit()
        .await
        .context("committing the append transaction")?;
    Ok(results)
}

fn check(
    request: &AppendRequest,
    versions: &HashMap<Uuid, i64>,
    taken: &HashSet<(String, String)>,
) -> Result<(), AppendError> {
    let actual = versions.get(&request.aggregate_id).copied().unwrap_or(0);
    if actual != request.expected_version {
        return Err(AppendError::Conflict {
            aggregate_id: request.aggregate_id,
            expected: request.expected_version,
            actual,
        });
    }
    for &(aggregate_id, expected) in &request.guards {
        let actual = versions.get(&aggregate_id).copied().unwrap_or(0);
        if actual != expected {
            return Err(AppendError::GuardChanged {
                aggregate_id,
                expected,
                actual,
            });
        }
    }
    for claim in &request.claims {
        if taken.contains(&(claim.scope.to_owned(), claim.key.clone())) {
            return Err(AppendError::ClaimTaken {
                scope: claim.scope,
                key: claim.key.clone(),
            });
        }
    }
    Ok(())
}

/// Column arrays for one multi-row `INSERT … SELECT FROM unnest(…)`.
#[derive(Default)]
struct EventRows {
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<Uuid>,
    stream_version: Vec<i64>,
    study_id: Vec<Uuid>,
    event_type: Vec<String>,
    schema_version: Vec<i16>,
    data: Vec<String>,
    actor: Vec<String>,
    reason: Vec<Option<String>>,
    correlation_id: Vec<String>,
    causation_id: Vec<String>,
    recorded_at: Vec<DateTime<Utc>>,
    prevhash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl EventRows {
    fn push(&mut self, e: &StoredEvent) {
        self.position.push(e.position);
        self.event_id.push(e.event_id);
        self.aggregate_type.push(e.aggregate_type.clone());
        self.aggregate_id.push(e.aggregate_id);
        self.stream_version.push(e.stream_version);
        self.study_id.push(e.study_id);
        self.event_type.push(e.event_type.clone());
        self.schema_version.push(e.schema_version);
        self.data.push(e.data.clone());
        self.actor.push(e.actor.clone());
        self.reason.push(e.reason.clone());
        self.correlation_id.push(e.correlation_id.clone());
        self.causation_id.push(e.causation_id.clone());
        self.recorded_at.push(e.recorded_at);
        self.prevhash.push(e.prevhash.to_vec());
        self.hash.push(e.hash.to_vec());
    }

    async fn insert(&self, tx: &mut sqlx::PgConnection) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO events (position, event_id, aggregate_type, aggregate_id, stream_version, study_id, \
             event_type, schema_version, data, actor, reason, correlation_id, causation_id, recorded_at, prevhash, hash) \
             SELECT p, i, at, a, v, s, t, sv, d::json, ac, r, c, ca, ra, ph, h FROM unnest(\
             $1::int8[], $2::uuid[], $3::text[], $4::uuid[], $5::int8[], $6::uuid[], $7::text[], $8::int2[], \
             $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[], $15::bytea[], \
             $16::bytea[]) AS u(p, i, at, a, v, s, t, sv, d, ac, r, c, ca, ra, ph, h)",
        )
        .bind(&self.position)
        .bind(&self.event_id)
        .bind(&self.aggregate_type)
        .bind(&self.aggregate_id)
        .bind(&self.stream_version)
        .bind(&self.study_id)
        .bind(&self.event_type)
        .bind(&self.schema_version)
        .bind(&self.data)
        .bind(&self.actor)
        .bind(&self.reason)
        .bind(&self.correlation_id)
        .bind(&self.causation_id)
        .bind(&self.recorded_at)
        .bind(&self.prevhash)
        .bind(&self.hash)
        .execute(tx)
        .await
        .map(|_| ())
    }
}

#[derive(Default)]
struct ClaimRows {
    scope: Vec<&'static str>,
    key: Vec<String>,
    owner: Vec<Uuid>,
    position: Vec<i64>,
}

impl ClaimRows {
    fn push(&mut self, claim: &Claim, owner: Uuid, position: i64) {
        self.scope.push(claim.scope);
        self.key.push(claim.key.clone());
        self.owner.push(owner);
        self.position.push(position);
    }

    async fn insert(&self, tx: &mut sqlx::PgConnection) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO unique_claims (scope, key, owner_id, position) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int8[])",
        )
        .bind(&self.scope)
        .bind(&self.key)
        .bind(&self.owner)
        .bind(&self.position)
        .execute(tx)
        .await
        .map(|_| ())
    }
}

#[derive(Default)]
struct CompletionRows {
    principal: Vec<String>,
    key: Vec<String>,
    status: Vec<i16>,
    body: Vec<Vec<u8>>,
}

impl CompletionRows {
    fn push(&mut self, done: &IdempotencyCompletion, body: Vec<u8>) {
        self.principal.push(done.principal.clone());
        self.key.push(done.key.clone());
        self.status.push(i16::try_from(done.status).unwrap_or(200));
        self.body.push(body);
    }

    async fn update(&self, tx: &mut sqlx::PgConnection) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE idempotency_keys k SET status = u.s, body = u.b \
             FROM unnest($1::text[], $2::text[], $3::int2[], $4::bytea[]) AS u(p, k, s, b) \
             WHERE k.principal = u.p AND k.key = u.k",
        )
        .bind(&self.principal)
        .bind(&self.key)
        .bind(&self.status)
        .bind(&self.body)
        .execute(tx)
        .await
        .map(|_| ())
    }
}
