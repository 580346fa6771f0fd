//! The PostgreSQL event store: the append requests and their answers, and
//! the handle every service holds. `appender` writes, `reader` reads.
//!
//! One appender task per process takes every waiting append request, checks
//! each one's expected versions, guards and unique claims in memory under a
//! transaction-scoped advisory lock, and writes them all in one transaction.
//! The lock serialises batches across processes, which makes positions
//! gap-free and in commit order: a batch reads the head and commits while no
//! other batch can. A request that fails its own checks fails alone.

mod appender;
pub mod outage;
mod reader;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::domain::{AggregateKind, Claim, ClaimScope, DomainEvent};
use crate::envelope::StoredEvent;

use appender::{run_appender, Job};
pub use reader::{event_from_row, EVENT_COLUMNS};

/// Advisory lock key that serialises appends across processes
/// (`'research'` in ASCII, as a number).
pub const APPEND_LOCK_KEY: i64 = 0x7265_7365_6172_6368;

/// What a request's `Idempotency-Key` keeps of it, stored in the same
/// transaction as its events: the answer of a single command, or the result
/// of one item of a batch (journaled, so that a retry after a crash resumes
/// the batch instead of running it again).
#[derive(Debug, Clone)]
pub struct IdempotencyCompletion {
    pub principal: String,
    pub key: String,
    pub status: u16,
    /// `None`: the request's whole answer; `Some(i)`: item `i` of a batch.
    pub item: Option<usize>,
    /// Makes the answer's body (or the item's result) from what the request
    /// wrote: the aggregate, its new version and the position of its last
    /// event (known only inside the append transaction).
    pub body: fn(aggregate_id: Uuid, version: i64, position: i64) -> Vec<u8>,
}

/// A decided event as the store writes it: its stable type name, schema
/// version and canonical `data`, encoded once when the command is decided.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    pub event_type: &'static str,
    pub schema_version: i16,
    pub data: String,
}

impl EncodedEvent {
    pub fn of(event: &DomainEvent) -> Self {
        Self {
            event_type: event.event_type(),
            schema_version: event.schema_version(),
            data: event.to_data(),
        }
    }
}

/// Events of one command for one aggregate, with what must still hold.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub aggregate_kind: AggregateKind,
    pub aggregate_id: Uuid,
    pub study_id: Uuid,
    /// The stream's version the decision was made on (0 for a new stream).
    pub expected_version: i64,
    pub events: Vec<EncodedEvent>,
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

impl AppendRequest {
    /// The largest published form (CloudEvents JSON) any of its events can
    /// have once appended.
    pub fn published_len_bound(&self) -> usize {
        self.events
            .iter()
            .map(|event| {
                StoredEvent::cloud_event_len_bound(
                    event.event_type,
                    &event.data,
                    &self.actor,
                    self.reason.as_deref(),
                    &self.correlation_id,
                    &self.causation_id,
                )
            })
            .max()
            .unwrap_or(0)
    }
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
    #[error("{} {key:?} is already taken", .scope.as_str())]
    ClaimTaken { scope: ClaimScope, key: String },
    /// PostgreSQL refused this request's rows when it was written alone (a
    /// value no check before the database caught); the cause is logged
    /// under `correlation_id`.
    #[error("the event store refused the request's data (correlation id {correlation_id})")]
    Refused { correlation_id: String },
    #[error("the event store failed: {0}")]
    Store(Arc<StoreFault>),
    #[error("the event store is shutting down")]
    Closed,
}

#[derive(Debug, Clone)]
pub struct AppenderConfig {
    /// Upper bound on the requests written in one transaction.
    pub max_batch: usize,
    /// Appender connections working side by side (see `run_appender`).
    pub connections: usize,
}

impl Default for AppenderConfig {
    fn default() -> Self {
        Self {
            max_batch: 2000,
            connections: 2,
        }
    }
}

/// A fault of the event store rather than a refusal of a request: what
/// the appender was doing, and PostgreSQL's error.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {cause}")]
pub struct StoreFault {
    pub doing: &'static str,
    pub cause: sqlx::Error,
}

impl StoreFault {
    pub(crate) fn doing(doing: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |cause| Self { doing, cause }
    }
}

/// Handle to the event store; cheap to clone.
#[derive(Clone)]
pub struct EventStore {
    pool: PgPool,
    jobs: mpsc::Sender<Job>,
    committed: broadcast::Sender<Committed>,
}

/// The events one batch committed, in position order, as they are told to
/// the publisher of this process (which then need not read them back). A
/// batch of more than [`TOLD_EVENTS`] events is told empty: a notice that
/// the store holds more, which the publisher reads in pages.
pub type Committed = Arc<Vec<StoredEvent>>;

/// Most events one [`Committed`] carries. With [`TOLD_BATCHES`] it bounds
/// what a publisher that falls behind keeps in memory (a few tens of MB):
/// carrying whole 1000-item batches, a burst kept hundreds of MB of events
/// waiting for a publisher that reads them from the store in the end.
pub const TOLD_EVENTS: usize = 64;

/// Committed batches told and not yet taken by the publisher; beyond that
/// it reads the store.
const TOLD_BATCHES: usize = 256;

impl EventStore {
    /// Starts the appender. It ends when every handle is dropped, after
    /// writing what it was given.
    ///
    /// The appender runs on a thread of its own with its own runtime and
    /// connection: its few round trips per batch are then never queued
    /// behind request handling on a busy runtime, which would stretch every
    /// batch and, through it, every command's latency.
    pub fn start(pool: PgPool, config: AppenderConfig) -> (Self, JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(4096);
        let (committed, _) = broadcast::channel(TOLD_BATCHES);
        let committed_tx = committed.clone();
        let options = (*pool.connect_options()).clone();
        let task = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => {
                    let rx = Arc::new(tokio::sync::Mutex::new(rx));
                    let committed = Arc::new(committed_tx);
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        let workers: Vec<_> = (0..config.connections.max(1))
                            .map(|_| {
                                let worker = run_appender(
                                    options.clone(),
                                    config.clone(),
                                    rx.clone(),
                                    committed.clone(),
                                );
                                tokio::task::spawn_local(worker)
                            })
                            .collect();
                        for worker in workers {
                            let _ = worker.await;
                        }
                    });
                }
                Err(error) => tracing::error!(%error, "cannot start the appender's runtime"),
            }
        });
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

    /// Where every batch this process commits is told (subscribe to it);
    /// holding it does not keep the appender alive.
    pub fn committed(&self) -> broadcast::Sender<Committed> {
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
}
