//! The command pipeline: find the states a command needs (from memory when
//! possible), check `If-Match`, `decide`, append, and keep the cache current.
//! A decision made on a stale state loses the append's version check and is
//! retried on a fresh load; a real race with another writer answers `409`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use shared::auth::Principal;
use shared::domain::{
    apply, decide, AggregateKind, AggregateState, Command, DomainError, DomainEvent, EventMeta,
    States,
};
use shared::store::{
    AppendError, AppendRequest, Appended, EncodedEvent, EventStore, IdempotencyCompletion,
};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state_cache::{Cached, StateCache};

/// How often a command is decided again after losing to a stale cache.
const MAX_ATTEMPTS: usize = 4;

/// Everything about a command that is not its body.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    pub principal: Principal,
    pub if_match: Option<i64>,
    pub correlation_id: String,
    pub causation_id: String,
    pub idempotency: Option<IdempotencyCompletion>,
    /// The server made the id of the created aggregate, so it is new.
    pub server_made_id: bool,
}

/// The answer of a successful command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub id: Uuid,
    pub version: i64,
    pub position: i64,
    pub created: bool,
}

pub struct Engine {
    pub store: EventStore,
    pub cache: StateCache,
    /// Tells the largest message the NATS server takes (`max_payload`).
    nats: Option<async_nats::Client>,
    /// `max_payload` as last told (0: not yet), asked again once a second
    /// at most (a server restarted with another limit is seen quickly).
    max_payload: AtomicUsize,
    asked_at: AtomicU64,
    started: std::time::Instant,
}

/// Room kept in a NATS message for its headers (`Nats-Msg-Id`,
/// `Nats-Expected-Last-Msg-Id`, the position): about 150 bytes today.
pub const HEADER_ROOM: usize = 1024;

/// NATS's default `max_payload`, assumed until the server has told its own.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// A decided command, ready to append.
struct Prepared {
    request: AppendRequest,
    /// The decided events (the request holds them encoded).
    events: Vec<DomainEvent>,
    /// The written aggregate before the command, and whether it came from
    /// memory rather than a fresh load.
    base: Option<Cached>,
    base_from_memory: bool,
}

enum Step {
    Ready(Box<Prepared>),
    /// `If-Match` names a version newer than the cached one: load afresh.
    Reload,
}

type Overlay = HashMap<Uuid, Cached>;

impl Engine {
    pub fn new(store: EventStore, cache_bytes: usize, nats: Option<async_nats::Client>) -> Self {
        Self {
            store,
            cache: StateCache::new(cache_bytes),
            nats,
            max_payload: AtomicUsize::new(0),
            asked_at: AtomicU64::new(u64::MAX),
            started: std::time::Instant::now(),
        }
    }

    /// The longest published form an event may have: what the NATS server
    /// takes less room for the headers. A longer event is refused before it
    /// is written, since it could never be published (and would stop the
    /// publisher at its position).
    pub fn max_event_bytes(&self) -> usize {
        let second = self.started.elapsed().as_secs();
        if self.asked_at.swap(second, Ordering::Relaxed) != second {
            let told = self
                .nats
                .as_ref()
                .map_or(0, |c| c.server_info().max_payload);
            self.max_payload.store(told, Ordering::Relaxed);
        }
        let told = self.max_payload.load(Ordering::Relaxed);
        let max_payload = if told == 0 { DEFAULT_MAX_PAYLOAD } else { told };
        max_payload.saturating_sub(HEADER_ROOM)
    }

    pub async fn execute(
        &self,
        command: &Command,
        meta: &CommandMeta,
    ) -> Result<Executed, ApiError> {
        let started = Utc::now();
        let mut fresh = false;
        for _ in 0..MAX_ATTEMPTS {
            let prepared = match self.prepare(command, meta, fresh, None).await? {
                Step::Ready(p) => p,
                Step::Reload => {
                    fresh = true;
                    continue;
                }
            };
            let outcome = self.store.append(prepared.request.clone()).await;
            match self
                .settle(command, meta, &prepared, outcome, started)
                .await?
            {
                Some(done) => return Ok(done),
                None => fresh = true,
            }
        }
        metrics::counter!("commands_retries_exhausted_total").increment(1);
        Err(ApiError::Append(AppendError::Conflict {
            aggregate_id: command.written().1,
            expected: -1,
            actual: -1,
        }))
    }

    /// Decides the items of a batch in order, each on the states the earlier
    /// ones produced, and appends them together. Items that lost a version
    /// check are then run again one by one, in order.
    pub async fn execute_batch(
        &self,
        items: Vec<Result<(Command, CommandMeta), ApiError>>,
    ) -> Vec<Result<Executed, ApiError>> {
        let started = Utc::now();
        let mut results: Vec<Option<Result<Executed, ApiError>>> = Vec::with_capacity(items.len());
        let mut overlay = Overlay::new();
        let mut pending = Vec::new();
        for (index, item) in items.iter().enumerate() {
            results.push(None);
            let (command, meta) = match item {
                Ok(pair) => pair,
                Err(e) => {
                    results[index] = Some(Err(ApiError::from(e.to_problem())));
                    continue;
                }
            };
            let step = match self.prepare(command, meta, false, Some(&overlay)).await {
                Ok(Step::Reload) => self.prepare(command, meta, true, Some(&overlay)).await,
                other => other,
            };
            match step {
                Ok(Step::Ready(prepared)) => {
                    match fold_onto(
                        prepared.base.as_ref(),
                        command,
                        &prepared.events,
                        meta,
                        started,
                    ) {
                        Ok(next) => {
                            overlay.insert(prepared.request.aggregate_id, next);
                            pending.push((index, prepared));
                        }
                        Err(e) => results[index] = Some(Err(e)),
                    }
                }
                Ok(Step::Reload) => results[index] = Some(Err(stale(command))),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let requests = pending.iter().map(|(_, p)| p.request.clone()).collect();
        let outcomes = self.store.append_all(requests).await;
        let mut retry = Vec::new();
        for ((index, prepared), outcome) in pending.into_iter().zip(outcomes) {
            let Ok((command, meta)) = &items[index] else {
                continue;
            };
            match outcome {
                Ok(appended) => {
                    results[index] = Some(self.remember(command, meta, &prepared, &appended))
                }
                Err(AppendError::Conflict { .. } | AppendError::GuardChanged { .. }) => {
                    retry.push(index)
                }
                Err(e) => results[index] = Some(Err(e.into())),
            }
        }
        for index in retry {
            if let Ok((command, meta)) = &items[index] {
                results[index] = Some(self.execute(command, meta).await);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("batch item was not settled").into())))
            .collect()
    }

    /// Turns an append outcome into the answer, or `None` to decide again.
    async fn settle(
        &self,
        command: &Command,
        meta: &CommandMeta,
        prepared: &Prepared,
        outcome: Result<Appended, AppendError>,
        started: DateTime<Utc>,
    ) -> Result<Option<Executed>, ApiError> {
        match outcome {
            Ok(appended) => self.remember(command, meta, prepared, &appended).map(Some),
            Err(AppendError::Conflict { aggregate_id, .. }) => {
                let (current, _) = self.lookup(aggregate_id, true, None).await?;
                let current_version = current.as_ref().map_or(0, Cached::version);
                if let Some(expected) = meta.if_match {
                    if expected != current_version {
                        return Err(ApiError::PreconditionFailed {
                            current: current_version,
                            expected,
                        });
                    }
                }
                // Every event the winner wrote predates this command: the
                // decision was made on a stale cache, not lost in a race.
                let stale_cache =
                    prepared.base_from_memory && current.is_some_and(|c| c.last_at < started);
                if stale_cache {
                    Ok(None)
                } else {
                    metrics::counter!("commands_conflicts_total").increment(1);
                    Err(AppendError::Conflict {
                        aggregate_id,
                        expected: prepared.request.expected_version,
                        actual: current_version,
                    }
                    .into())
                }
            }
            Err(AppendError::GuardChanged { aggregate_id, .. }) => {
                self.cache.remove(aggregate_id);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn remember(
        &self,
        command: &Command,
        meta: &CommandMeta,
        prepared: &Prepared,
        appended: &Appended,
    ) -> Result<Executed, ApiError> {
        let last_at = appended
            .events
            .last()
            .map_or_else(Utc::now, |e| e.recorded_at);
        let next = fold_onto(
            prepared.base.as_ref(),
            command,
            &prepared.events,
            meta,
            last_at,
        )?;
        self.cache.put(prepared.request.aggregate_id, next);
        Ok(Executed {
            id: prepared.request.aggregate_id,
            version: appended.version,
            position: appended.position,
            created: command.creates(),
        })
    }

    async fn prepare(
        &self,
        command: &Command,
        meta: &CommandMeta,
        fresh: bool,
        overlay: Option<&Overlay>,
    ) -> Result<Step, ApiError> {
        // Scope first, so that no answer below (409, 422) tells a limited
        // token anything about another study's records.
        self.authorize(command, &meta.principal, meta.server_made_id)
            .await?;
        let (written_kind, written_id) = command.written();
        let (found, from_memory) = self.gather(command, meta, fresh, overlay).await?;

        // Every event names its study (the CloudEvents `source`), also when
        // the decision did not need the study's own state.
        let study_id = match command {
            Command::RegisterStudy(c) => Some(c.study_id),
            _ => found.study_id(),
        };
        within_scope(command, &meta.principal, meta.server_made_id, study_id)?;

        let base = found.get(written_kind).cloned();
        let current = base.as_ref().map_or(0, Cached::version);
        if let Some(expected) = meta.if_match {
            if expected > current && from_memory && !fresh {
                return Ok(Step::Reload);
            }
            if expected != current {
                return Err(ApiError::PreconditionFailed { current, expected });
            }
        }

        let events = decide(command, &meta.principal.id, found.states())?;
        let guards = command
            .guards()
            .iter()
            .filter_map(|&kind| found.get(kind))
            .map(|c| (c.state.id(), c.version()))
            .collect();
        let request = AppendRequest {
            aggregate_kind: written_kind,
            aggregate_id: written_id,
            study_id: study_id.unwrap_or(written_id),
            expected_version: current,
            events: events.iter().map(EncodedEvent::of).collect(),
            guards,
            claims: command.claims(),
            actor: meta.principal.id.to_string(),
            reason: command.reason().map(str::to_owned),
            correlation_id: meta.correlation_id.clone(),
            causation_id: meta.causation_id.clone(),
            idempotency: meta.idempotency.clone(),
        };
        self.check_publishable(&request)?;
        Ok(Step::Ready(Box::new(Prepared {
            request,
            events,
            base,
            base_from_memory: from_memory && !fresh,
        })))
    }

    /// The states `command` reads (`Command::reads`), and whether the
    /// written aggregate's came from memory.
    async fn gather(
        &self,
        command: &Command,
        meta: &CommandMeta,
        fresh: bool,
        overlay: Option<&Overlay>,
    ) -> Result<(Found, bool), ApiError> {
        let written_kind = command.written().0;
        let mut found = Found::default();
        let mut from_memory = false;
        for read in command.reads() {
            // A server-made id is new: nothing can hold it yet.
            if read.creates && meta.server_made_id {
                continue;
            }
            let Some(id) = read.id(|kind| found.get(kind).map(|c| c.state.study_id())) else {
                continue;
            };
            let (state, memory) = self
                .typed(id, read.kind, read.creates, fresh, overlay)
                .await?;
            if read.kind == written_kind {
                from_memory = memory;
            }
            *found.slot(read.kind) = state;
        }
        Ok((found, from_memory))
    }

    /// Refuses an event too large to ever be published.
    fn check_publishable(&self, request: &AppendRequest) -> Result<(), ApiError> {
        let published = request.published_len_bound();
        let limit = self.max_event_bytes();
        if published <= limit {
            return Ok(());
        }
        metrics::counter!("commands_too_large_total").increment(1);
        Err(shared::problem::Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "event-too-large",
            "The event would be too large to publish",
            format!(
                "this command makes an event of up to {published} bytes; the event log publishes at most {limit} bytes per event"
            ),
        )
        .into())
    }

    /// Whether `principal` may make `command` as far as study scope goes,
    /// judged on the stored records as a new request would be (an
    /// `Idempotency-Key` replay is authorized with this, so that a stored
    /// answer is never shown to a token that may not make the request).
    pub async fn authorize(
        &self,
        command: &Command,
        principal: &Principal,
        server_made_id: bool,
    ) -> Result<(), ApiError> {
        if principal.studies.is_none() {
            return Ok(());
        }
        let study_id = match command {
            Command::RegisterStudy(c) => Some(c.study_id),
            other => match other.target() {
                Some((_, id)) => self
                    .lookup(id, false, None)
                    .await?
                    .0
                    .map(|c| c.state.study_id()),
                None => None,
            },
        };
        within_scope(command, principal, server_made_id, study_id)
    }

    /// The state of `id` if it is an aggregate of `kind`. An id taken by
    /// another kind is "not found" when addressed, and "already exists" when
    /// a command wants to create it.
    async fn typed(
        &self,
        id: Uuid,
        kind: AggregateKind,
        creating: bool,
        fresh: bool,
        overlay: Option<&Overlay>,
    ) -> Result<(Option<Cached>, bool), ApiError> {
        let (found, from_memory) = self.lookup(id, fresh, overlay).await?;
        match found {
            Some(c) if c.state.kind() != kind => {
                if creating {
                    Err(DomainError::AlreadyExists { kind, id }.into())
                } else {
                    Ok((None, false))
                }
            }
            other => Ok((other, from_memory)),
        }
    }

    /// The state of one aggregate: from the batch overlay, then memory, then
    /// its events in PostgreSQL; and whether it came from memory.
    async fn lookup(
        &self,
        id: Uuid,
        fresh: bool,
        overlay: Option<&Overlay>,
    ) -> Result<(Option<Cached>, bool), ApiError> {
        if let Some(c) = overlay.and_then(|o| o.get(&id)) {
            return Ok((Some(c.clone()), !fresh));
        }
        if !fresh {
            if let Some(c) = self.cache.get(id) {
                return Ok((Some(c), true));
            }
        }
        metrics::counter!("command_state_loads_total").increment(1);
        let events = self
            .store
            .load_stream(id)
            .await
            .context("loading a stream")?;
        let mut state: Option<AggregateState> = None;
        let mut last_at = None;
        for stored in &events {
            let event = stored
                .domain_event()
                .with_context(|| format!("decoding event at position {}", stored.position))?;
            state = Some(
                apply(state, &event, &stored.meta())
                    .with_context(|| format!("applying event at position {}", stored.position))?,
            );
            last_at = Some(stored.recorded_at);
        }
        let Some(state) = state else {
            self.cache.remove(id);
            return Ok((None, false));
        };
        let cached = Cached {
            state: Arc::new(state),
            last_at: last_at.unwrap_or_else(Utc::now),
        };
        self.cache.put(id, cached.clone());
        Ok((Some(cached), false))
    }
}

/// The study-scope rule: a token limited by its `studies` claim registers
/// only studies named there (with their id in the body), and sees every
/// record of another study exactly as if it did not exist: the `404` an
/// unknown id gets. `study_id` is the study of the addressed record, when
/// it exists.
fn within_scope(
    command: &Command,
    principal: &Principal,
    server_made_id: bool,
    study_id: Option<Uuid>,
) -> Result<(), ApiError> {
    if principal.studies.is_none() {
        return Ok(());
    }
    if let Command::RegisterStudy(c) = command {
        if server_made_id || !principal.may_access_study(c.study_id) {
            return Err(shared::problem::Problem::forbidden(
                "a token limited to some studies registers only those studies, named by study_id",
            )
            .into());
        }
        return Ok(());
    }
    match (study_id, command.target()) {
        (Some(study), Some((kind, id))) if !principal.may_access_study(study) => {
            Err(DomainError::NotFound { kind, id }.into())
        }
        _ => Ok(()),
    }
}

fn stale(command: &Command) -> ApiError {
    AppendError::Conflict {
        aggregate_id: command.written().1,
        expected: -1,
        actual: -1,
    }
    .into()
}

fn fold_onto(
    base: Option<&Cached>,
    command: &Command,
    events: &[DomainEvent],
    meta: &CommandMeta,
    at: DateTime<Utc>,
) -> Result<Cached, ApiError> {
    let mut state = base.map(|c| (*c.state).clone());
    let event_meta = EventMeta {
        actor: meta.principal.id.to_string(),
        recorded_at: at,
        reason: command.reason().map(str::to_owned),
    };
    for event in events {
        state = Some(apply(state, event, &event_meta).context("applying a decided event")?);
    }
    let state = state.ok_or_else(|| anyhow::anyhow!("a command decided no event"))?;
    Ok(Cached {
        state: Arc::new(state),
        last_at: at,
    })
}

/// The states a command read, one per kind.
#[derive(Default)]
struct Found {
    study: Option<Cached>,
    subject: Option<Cached>,
    observation: Option<Cached>,
}

impl Found {
    fn slot(&mut self, kind: AggregateKind) -> &mut Option<Cached> {
        match kind {
            AggregateKind::Study => &mut self.study,
            AggregateKind::Subject => &mut self.subject,
            AggregateKind::Observation => &mut self.observation,
        }
    }

    fn get(&self, kind: AggregateKind) -> Option<&Cached> {
        match kind {
            AggregateKind::Study => self.study.as_ref(),
            AggregateKind::Subject => self.subject.as_ref(),
            AggregateKind::Observation => self.observation.as_ref(),
        }
    }

    /// The study of any state read.
    fn study_id(&self) -> Option<Uuid> {
        [&self.study, &self.subject, &self.observation]
            .into_iter()
            .flatten()
            .next()
            .map(|c| c.state.study_id())
    }

    fn states(&self) -> States<'_> {
        States {
            study: self.study.as_ref().and_then(|c| c.state.as_study()),
            subject: self.subject.as_ref().and_then(|c| c.state.as_subject()),
            observation: self
                .observation
                .as_ref()
                .and_then(|c| c.state.as_observation()),
        }
    }
}
