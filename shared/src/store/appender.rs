//! The group-commit appender.
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
use sqlx::postgres::PgConnectOptions;
use sqlx::{Column, Connection, PgConnection, Row};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use super::reader::hash_column;
use super::{
    AppendError, AppendRequest, Appended, AppenderConfig, Committed, IdempotencyCompletion,
    StoreFault, APPEND_LOCK_KEY, TOLD_EVENTS,
};
use crate::domain::Claim;
use crate::envelope::{StoredEvent, GENESIS_HASH};

pub(super) type Reply = oneshot::Sender<Vec<Result<Appended, AppendError>>>;

pub(super) struct Job {
    pub(super) requests: Vec<AppendRequest>,
    pub(super) reply: Reply,
}

/// One appender connection: takes every waiting job, writes them as one
/// batch, answers them, repeats. Several run side by side; the advisory lock
/// orders their batches in PostgreSQL, so while one commits the next is
/// already queued on the lock with its batch in hand.
pub(super) async fn run_appender(
    options: PgConnectOptions,
    config: AppenderConfig,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    committed: Arc<broadcast::Sender<Committed>>,
) {
    let mut conn: Option<PgConnection> = None;
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { break };
            let mut size = first.requests.len();
            let mut jobs = vec![first];
            while size < config.max_batch {
                match rx.try_recv() {
                    Ok(job) => {
                        size += job.requests.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            jobs
        };
        let requests: Vec<&AppendRequest> = jobs.iter().flat_map(|j| j.requests.iter()).collect();
        let started = Instant::now();
        let connected = match &mut conn {
            Some(c) => Ok(c),
            None => PgConnection::connect_with(&options)
                .await
                .map(|c| conn.insert(c))
                .map_err(StoreFault::doing("connecting the appender to PostgreSQL")),
        };
        let results = match connected {
            Ok(c) => {
                let (results, broken) = write_isolating(c, &requests).await;
                if broken {
                    // The connection's state is unknown: start afresh next time.
                    if let Some(c) = conn.take() {
                        let _ = c.close().await;
                    }
                }
                results
            }
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "appender cannot connect");
                vec![Err(AppendError::Store(Arc::new(error))); requests.len()]
            }
        };
        metrics::histogram!("event_store_append_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("event_store_append_batch_requests").record(requests.len() as f64);
        let count: usize = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|a| a.events.len())
            .sum();
        if count > 0 {
            let events: Vec<StoredEvent> = if count <= TOLD_EVENTS {
                results
                    .iter()
                    .filter_map(|r| r.as_ref().ok())
                    .flat_map(|a| a.events.iter().cloned())
                    .collect()
            } else {
                Vec::new()
            };
            // Nobody listening (no publisher in this process) is fine.
            let _ = committed.send(Arc::new(events));
        }
        let mut results = results.into_iter();
        for job in jobs {
            let answer: Vec<_> = results.by_ref().take(job.requests.len()).collect();
            // The caller may have given up (timeout); its events stand.
            let _ = job.reply.send(answer);
        }
    }
}

/// Writes `requests` in order, isolating refusals: when PostgreSQL refuses
/// the rows of a batch (a data or integrity error), the transaction is
/// rolled back and each half is written on its own, down to the one request
/// that the database refuses, which alone fails with
/// [`AppendError::Refused`]; every other request commits as if it had come
/// alone. Any other fault fails the requests not yet written and reports the
/// connection as broken (`true`); those already committed keep their
/// answers.
async fn write_isolating(
    conn: &mut PgConnection,
    requests: &[&AppendRequest],
) -> (Vec<Result<Appended, AppendError>>, bool) {
    let mut results = Vec::with_capacity(requests.len());
    let mut pending = std::collections::VecDeque::from([requests]);
    while let Some(chunk) = pending.pop_front() {
        let error = match write_batch(conn, chunk).await {
            Ok(written) => {
                results.extend(written);
                continue;
            }
            Err(error) => error,
        };
        let refusal = refusal_of(&error);
        let rolled_back = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await.is_ok();
        match refusal {
            Some(refusal) if rolled_back => {
                metrics::counter!("event_store_append_refusals_total").increment(1);
                if let [request] = chunk {
                    results.push(Err(refused(request, refusal, &error)));
                } else {
                    tracing::warn!(
                        batch_len = chunk.len(),
                        "the event store refused a batch; writing its halves apart"
                    );
                    let (left, right) = chunk.split_at(chunk.len() / 2);
                    pending.push_front(right);
                    pending.push_front(left);
                }
            }
            _ => {
                tracing::error!(
                    error = format!("{error:#}"),
                    batch_len = chunk.len(),
                    "append batch failed"
                );
                let error = Arc::new(error);
                let left = requests.len() - results.len();
                results.extend(std::iter::repeat_n(Err(AppendError::Store(error)), left));
                return (results, true);
            }
        }
    }
    (results, false)
}

/// How PostgreSQL refused a batch, when it refused its data rather than
/// failed: SQLSTATE classes 22 (data exception), 23 (integrity constraint)
/// and 54 (program limit, such as an index row too large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Another row holds this stream version: a concurrent writer.
    StreamVersionTaken,
    Data,
}

fn refusal_of(error: &StoreFault) -> Option<Refusal> {
    let sqlx::Error::Database(db) = &error.cause else {
        return None;
    };
    if db.constraint() == Some("events_stream_version_key") {
        return Some(Refusal::StreamVersionTaken);
    }
    let class = db.code()?;
    ["22", "23", "54"]
        .iter()
        .any(|c| class.starts_with(c))
        .then_some(Refusal::Data)
}

fn refused(request: &AppendRequest, refusal: Refusal, cause: &StoreFault) -> AppendError {
    if refusal == Refusal::StreamVersionTaken {
        return AppendError::Conflict {
            aggregate_id: request.aggregate_id,
            expected: request.expected_version,
            actual: -1,
        };
    }
    let correlation_id = Uuid::now_v7().to_string();
    tracing::error!(
        correlation_id,
        error = format!("{cause:#}"),
        aggregate_id = %request.aggregate_id,
        "the event store refused one request's data; the others of its batch were written"
    );
    AppendError::Refused { correlation_id }
}

/// Quotes a string as an SQL literal (only the appender's own values, which
/// are UUIDs and validated study codes, ever reach it).
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// What a batch reads under the append lock: the head of the log, the
/// current version of every aggregate it writes or guards, and which of its
/// claims are taken.
struct Head {
    position: i64,
    prevhash: [u8; 32],
    versions: HashMap<Uuid, i64>,
    taken: HashSet<(String, String)>,
}

/// Writes one batch in one transaction, in three round trips: (1) begin,
/// take the append lock, then read the head, the versions and the claims
/// (each statement of a simple query takes a fresh snapshot, so these see
/// every batch committed before the lock was granted); (2) insert events,
/// claims and idempotency answers in one statement; (3) commit.
async fn write_batch(
    conn: &mut PgConnection,
    requests: &[&AppendRequest],
) -> Result<Vec<Result<Appended, AppendError>>, StoreFault> {
    let mut head = lock_and_read(conn, requests).await?;
    let recorded_at: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    let mut rows = Rows::default();
    let results: Vec<_> = requests
        .iter()
        .map(|request| {
            check(request, &head.versions, &head.taken)?;
            Ok(stage(request, &mut head, recorded_at, &mut rows))
        })
        .collect();
    if !rows.events.position.is_empty() {
        insert_all(conn, &rows)
            .await
            .map_err(StoreFault::doing("inserting events"))?;
    }
    sqlx::raw_sql("COMMIT")
        .execute(&mut *conn)
        .await
        .map_err(StoreFault::doing("committing the append transaction"))?;
    Ok(results)
}

/// Round trip (1): begins, takes the append lock, and reads the [`Head`].
async fn lock_and_read(
    conn: &mut PgConnection,
    requests: &[&AppendRequest],
) -> Result<Head, StoreFault> {
    let ids: HashSet<Uuid> = requests
        .iter()
        .flat_map(|r| std::iter::once(r.aggregate_id).chain(r.guards.iter().map(|g| g.0)))
        .collect();
    let id_list = ids
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let wanted: Vec<&Claim> = requests.iter().flat_map(|r| r.claims.iter()).collect();
    let claims_sql = if wanted.is_empty() {
        String::new()
    } else {
        let values = wanted
            .iter()
            .map(|c| format!("({}, {})", literal(c.scope.as_str()), literal(&c.key)))
            .collect::<Vec<_>>()
            .join(",");
        format!(" UNION ALL SELECT 'c', NULL, NULL, NULL, scope, key FROM unique_claims WHERE (scope, key) IN ({values})")
    };
    let read = format!(
        "BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY}); \
         SELECT 'h'::text AS tag, position, hash, NULL::uuid AS id, NULL::text AS scope, NULL::text AS key \
           FROM (SELECT position, hash FROM events ORDER BY position DESC LIMIT 1) AS head \
         UNION ALL SELECT 'v', max(stream_version), NULL, aggregate_id, NULL, NULL FROM events \
           WHERE aggregate_id = ANY('{{{id_list}}}'::uuid[]) GROUP BY aggregate_id{claims_sql}"
    );
    let doing = "locking and reading the head, versions and claims";
    let rows = sqlx::raw_sql(&read)
        .fetch_all(&mut *conn)
        .await
        .map_err(StoreFault::doing(doing))?;
    let mut head = Head {
        position: 0,
        prevhash: GENESIS_HASH,
        versions: HashMap::new(),
        taken: HashSet::new(),
    };
    for row in &rows {
        if row.columns().first().map(|c| c.name()) != Some("tag") {
            continue;
        }
        let mut read_row = || -> sqlx::Result<()> {
            match row.try_get::<&str, _>(0)? {
                "h" => {
                    head.position = row.try_get(1)?;
                    head.prevhash = hash_column(row, 2)?;
                }
                "v" => {
                    head.versions.insert(row.try_get(3)?, row.try_get(1)?);
                }
                _ => {
                    head.taken.insert((row.try_get(4)?, row.try_get(5)?));
                }
            }
            Ok(())
        };
        read_row().map_err(StoreFault::doing(doing))?;
    }
    Ok(head)
}

/// Makes the rows of one checked request: positions after the head, the
/// hash chain, its claims and idempotency answer; moves the head on.
fn stage(
    request: &AppendRequest,
    head: &mut Head,
    recorded_at: DateTime<Utc>,
    rows: &mut Rows,
) -> Appended {
    let mut stored = Vec::with_capacity(request.events.len());
    let mut version = request.expected_version;
    for event in &request.events {
        head.position += 1;
        version += 1;
        let mut e = StoredEvent {
            position: head.position,
            event_id: Uuid::now_v7(),
            aggregate_type: request.aggregate_kind.as_str().to_owned(),
            aggregate_id: request.aggregate_id,
            stream_version: version,
            study_id: request.study_id,
            event_type: event.event_type.to_owned(),
            schema_version: event.schema_version,
            data: event.data.clone(),
            actor: request.actor.clone(),
            reason: request.reason.clone(),
            correlation_id: request.correlation_id.clone(),
            causation_id: request.causation_id.clone(),
            recorded_at,
            prevhash: head.prevhash,
            hash: [0; 32],
        };
        e.hash = e.compute_hash();
        head.prevhash = e.hash;
        rows.events.push(&e);
        stored.push(e);
    }
    let position = head.position;
    head.versions.insert(request.aggregate_id, version);
    for claim in &request.claims {
        head.taken
            .insert((claim.scope.as_str().to_owned(), claim.key.clone()));
        rows.claims.push(claim, request.aggregate_id, position);
    }
    if let Some(done) = &request.idempotency {
        let body = (done.body)(request.aggregate_id, version, position);
        rows.completions.push(done, body);
    }
    Appended {
        version,
        position,
        events: stored,
    }
}

/// Inserts the batch's events, unique claims and idempotency answers in one
/// statement.
async fn insert_all(conn: &mut PgConnection, rows: &Rows) -> sqlx::Result<()> {
    let Rows {
        events,
        claims,
        completions,
    } = rows;
    sqlx::query(
        "WITH new_events AS ( \
           INSERT INTO events (position, event_id, aggregate_type, aggregate_id, stream_version, study_id, \
             event_type, schema_version, data, actor, reason, correlation_id, causation_id, recorded_at, prevhash, hash) \
           SELECT p, i, at, a, v, s, t, sv, d::json, ac, r, c, ca, ra, ph, h FROM unnest(\
             $1::int8[], $2::uuid[], $3::text[], $4::uuid[], $5::int8[], $6::uuid[], $7::text[], $8::int2[], \
             $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::timestamptz[], $15::bytea[], \
             $16::bytea[]) AS u(p, i, at, a, v, s, t, sv, d, ac, r, c, ca, ra, ph, h) \
         ), new_claims AS ( \
           INSERT INTO unique_claims (scope, key, owner_id, position) \
           SELECT * FROM unnest($17::text[], $18::text[], $19::uuid[], $20::int8[]) \
         ), answers AS ( \
           UPDATE idempotency_keys k SET status = u.s, body = u.b \
           FROM unnest($21::text[], $22::text[], $23::int2[], $24::bytea[]) AS u(p, k, s, b) \
           WHERE k.principal = u.p AND k.key = u.k \
         ), items AS ( \
           UPDATE idempotency_keys k SET progress = coalesce(k.progress, '{}'::jsonb) || u.items \
           FROM (SELECT p, k, jsonb_object_agg(i::text, r::jsonb) AS items \
                 FROM unnest($25::text[], $26::text[], $27::int4[], $28::text[]) AS u(p, k, i, r) \
                 GROUP BY p, k) AS u \
           WHERE k.principal = u.p AND k.key = u.k \
         ) SELECT 1",
    )
    .bind(&events.position)
    .bind(&events.event_id)
    .bind(&events.aggregate_type)
    .bind(&events.aggregate_id)
    .bind(&events.stream_version)
    .bind(&events.study_id)
    .bind(&events.event_type)
    .bind(&events.schema_version)
    .bind(&events.data)
    .bind(&events.actor)
    .bind(&events.reason)
    .bind(&events.correlation_id)
    .bind(&events.causation_id)
    .bind(&events.recorded_at)
    .bind(&events.prevhash)
    .bind(&events.hash)
    .bind(&claims.scope)
    .bind(&claims.key)
    .bind(&claims.owner)
    .bind(&claims.position)
    .bind(&completions.principal)
    .bind(&completions.key)
    .bind(&completions.status)
    .bind(&completions.body)
    .bind(&completions.item_principal)
    .bind(&completions.item_key)
    .bind(&completions.item_index)
    .bind(&completions.item_result)
    .execute(conn)
    .await
    .map(|_| ())
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
        if taken.contains(&(claim.scope.as_str().to_owned(), claim.key.clone())) {
            return Err(AppendError::ClaimTaken {
                scope: claim.scope,
                key: claim.key.clone(),
            });
        }
    }
    Ok(())
}

/// The rows one batch inserts, as column arrays.
#[derive(Default)]
struct Rows {
    events: EventRows,
    claims: ClaimRows,
    completions: CompletionRows,
}

/// Column arrays of the events of one batch.
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
        self.scope.push(claim.scope.as_str());
        self.key.push(claim.key.clone());
        self.owner.push(owner);
        self.position.push(position);
    }
}

#[derive(Default)]
struct CompletionRows {
    principal: Vec<String>,
    key: Vec<String>,
    status: Vec<i16>,
    body: Vec<Vec<u8>>,
    item_principal: Vec<String>,
    item_key: Vec<String>,
    item_index: Vec<i32>,
    item_result: Vec<String>,
}

impl CompletionRows {
    fn push(&mut self, done: &IdempotencyCompletion, body: Vec<u8>) {
        match done.item {
            None => {
                self.principal.push(done.principal.clone());
                self.key.push(done.key.clone());
                self.status.push(i16::try_from(done.status).unwrap_or(200));
                self.body.push(body);
            }
            Some(index) => {
                self.item_principal.push(done.principal.clone());
                self.item_key.push(done.key.clone());
                self.item_index
                    .push(i32::try_from(index).unwrap_or(i32::MAX));
                // The caller's body function makes JSON text.
                self.item_result
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
        }
    }
}
