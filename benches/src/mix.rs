//! The mixed workload of `research-bench mix`: real use of the running
//! services at a fixed arrival rate (open loop: each operation's latency
//! counts from the time it was due, so a stall shows instead of hiding),
//! with the operations drawn at random in set proportions: records of real
//! weather readings, corrections with another real reading of the same
//! variable, retractions, reviews and approvals by a second principal,
//! reads of documents and pages, the odd export and audit read, and reads
//! that carry the `Consistency-Token` of a write just made. Latencies go to
//! HDR histograms, per operation and per interval of the run. At the end
//! the log is checked against what was accepted: every accepted command's
//! event is there once, at the position its answer named.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use shared::auth::{claims_for, mint, Role};
use uuid::Uuid;

use crate::datasets::StudyData;
use crate::study::{self, BenchStudy};

/// One kind of operation of the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Record,
    Correct,
    Retract,
    Sign,
    ReadObservation,
    ReadSubject,
    ReadStudy,
    Page,
    Export,
    Audit,
    TokenRead,
}

impl Op {
    pub const ALL: [Op; 11] = [
        Op::Record,
        Op::Correct,
        Op::Retract,
        Op::Sign,
        Op::ReadObservation,
        Op::ReadSubject,
        Op::ReadStudy,
        Op::Page,
        Op::Export,
        Op::Audit,
        Op::TokenRead,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Record => "record",
            Op::Correct => "correct",
            Op::Retract => "retract",
            Op::Sign => "sign",
            Op::ReadObservation => "read_observation",
            Op::ReadSubject => "read_subject",
            Op::ReadStudy => "read_study",
            Op::Page => "page",
            Op::Export => "export",
            Op::Audit => "audit",
            Op::TokenRead => "token_read",
        }
    }

    /// Whether the operation sends a command (a token read's command is
    /// counted with its read).
    pub fn is_write(self) -> bool {
        matches!(self, Op::Record | Op::Correct | Op::Retract | Op::Sign)
    }
}

/// The default proportions, in percent of all operations: writes are about
/// 15 % (corrections about 5 % and retractions 0.5 % of the records,
/// reviews and approvals 10 %), the rest reads.
pub const DEFAULT_MIX: &str = "record=12,correct=0.6,retract=0.06,sign=1.2,token_read=2,\
read_observation=45,read_subject=15,read_study=12,page=10,export=0.04,audit=1.1";

/// Proportions of the operations (any positive weights; normalised).
#[derive(Debug, Clone)]
pub struct Mix {
    weights: Vec<(Op, f64)>,
}

impl Mix {
    /// Parses `name=weight,…` (names as [`Op::name`]); operations left out
    /// are not run.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .with_context(|| format!("{part:?} is not name=weight"))?;
            let op = Op::ALL
                .into_iter()
                .find(|o| o.name() == name.trim())
                .with_context(|| format!("unknown operation {name:?}"))?;
            let weight: f64 = weight
                .trim()
                .parse()
                .with_context(|| format!("weight of {name}"))?;
            if !(weight.is_finite() && weight >= 0.0) {
                bail!("the weight of {name} must be a non-negative number");
            }
            weights.push((op, weight));
        }
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            bail!("the mix has no operation with a positive weight");
        }
        for (_, w) in &mut weights {
            *w /= total;
        }
        Ok(Self { weights })
    }

    /// The operation drawn by `u` in [0, 1).
    pub fn pick(&self, u: f64) -> Op {
        let mut acc = 0.0;
        for (op, w) in &self.weights {
            acc += w;
            if u < acc {
                return *op;
            }
        }
        self.weights
            .last()
            .map(|(op, _)| *op)
            .unwrap_or(Op::ReadStudy)
    }

    pub fn share(&self, op: Op) -> f64 {
        self.weights
            .iter()
            .find(|(o, _)| *o == op)
            .map_or(0.0, |(_, w)| *w)
    }
}

/// How a run is driven.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api: String,
    pub query: String,
    /// The services' `JWT_SECRET`: the run mints its principals' tokens.
    pub secret: String,
    /// Operations per second, in total.
    pub rate: f64,
    pub duration: Duration,
    /// Width of the time series' intervals.
    pub interval: Duration,
    pub mix: Mix,
    pub seed: u64,
    /// Operations in flight at most; beyond, the next waits (and its
    /// latency, counted from when it was due, shows it).
    pub max_in_flight: usize,
    /// Records made before the clock starts, so that reads have documents.
    pub warm_up_records: usize,
}

/// Latencies and outcomes of one operation.
#[derive(Debug, Serialize)]
pub struct OpSummary {
    /// The operation's name (`all` for every operation together).
    pub op: String,
    pub count: u64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Answers by HTTP status ("transport" when none came).
    pub statuses: BTreeMap<String, u64>,
}

/// One interval of the run: per operation, its count and percentiles.
#[derive(Debug, Serialize)]
pub struct IntervalSummary {
    pub start_s: f64,
    pub ops: Vec<OpSummary>,
    /// Command answered → document read with its token, in this interval.
    pub visible_p50_ms: f64,
    pub visible_p99_ms: f64,
}

/// What the log held against what the run was told.
#[derive(Debug, Serialize)]
pub struct Integrity {
    /// Writes answered 2xx.
    pub accepted: u64,
    /// Accepted writes whose event was found at the answered position, for
    /// the answered record, exactly once.
    pub found_once: u64,
    /// Accepted writes whose event was missing, elsewhere, or repeated.
    pub problems: Vec<String>,
    /// Events of the run's study in the log that no answer named (a write
    /// whose answer was lost may leave one; they are listed, not failed).
    pub unanswered_events: u64,
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct MixReport {
    pub rate: f64,
    pub duration_s: f64,
    pub interval_s: f64,
    pub mix: BTreeMap<String, f64>,
    pub started_unix_s: f64,
    pub ops: Vec<OpSummary>,
    /// Every operation together.
    pub all: OpSummary,
    pub intervals: Vec<IntervalSummary>,
    /// Command answered → its document read with its `Consistency-Token`.
    pub visible: OpSummary,
    /// Operations that were due but could not start on time because
    /// `max_in_flight` were running.
    pub delayed_starts: u64,
    pub first_position: i64,
    pub last_position: i64,
    pub integrity: Integrity,
}

/// An observation the run recorded.
#[derive(Debug, Clone)]
struct Recorded {
    id: Uuid,
    subject: usize,
    row: usize,
    retracted: bool,
}

/// What the run made so far, which later operations pick from.
struct World {
    http: reqwest::Client,
    api: String,
    query: String,
    writer: String,
    reviewer: String,
    reader: String,
    auditor: String,
    study: BenchStudy,
    data: StudyData,
    recorded: RwLock<Vec<Recorded>>,
    /// The next weather row to record, per subject.
    next_row: Mutex<Vec<usize>>,
}

/// Histograms and statuses, per operation (microseconds).
struct Stats {
    latency: HashMap<Op, Histogram<u64>>,
    statuses: HashMap<Op, BTreeMap<String, u64>>,
    visible: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Self {
            latency: HashMap::new(),
            statuses: HashMap::new(),
            visible: histogram(),
        }
    }

    fn record(&mut self, op: Op, micros: u64, status: Option<u16>, problem: Option<&str>) {
        let _ = self
            .latency
            .entry(op)
            .or_insert_with(histogram)
            .record(micros.max(1));
        let key = match (status, problem) {
            (Some(s), Some(p)) => format!("{s} {p}"),
            (Some(s), None) => s.to_string(),
            (None, _) => "transport".to_owned(),
        };
        *self.statuses.entry(op).or_default().entry(key).or_default() += 1;
    }

    /// Every operation's latencies and statuses together.
    fn all(&self, seconds: f64) -> OpSummary {
        let mut merged = histogram();
        let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
        for h in self.latency.values() {
            let _ = merged.add(h);
        }
        for s in self.statuses.values() {
            for (k, n) in s {
                *statuses.entry(k.clone()).or_default() += n;
            }
        }
        summary("all", &merged, statuses, seconds)
    }

    fn summaries(&self, seconds: f64) -> Vec<OpSummary> {
        Op::ALL
            .iter()
            .filter_map(|op| {
                let h = self.latency.get(op)?;
                Some(summary(
                    op.name(),
                    h,
                    self.statuses.get(op).cloned().unwrap_or_default(),
                    seconds,
                ))
            })
            .collect()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn summary(
    op: &str,
    h: &Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    seconds: f64,
) -> OpSummary {
    let ms = |q: f64| {
        if h.is_empty() {
            f64::NAN
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    OpSummary {
        op: op.to_owned(),
        count: h.len(),
        per_second: h.len() as f64 / seconds.max(1e-9),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: if h.is_empty() {
            f64::NAN
        } else {
            h.max() as f64 / 1000.0
        },
        statuses,
    }
}

/// One accepted write: what it changed and where its answer said its
/// event is.
#[derive(Debug, Clone)]
struct Accepted {
    aggregate: Uuid,
    position: i64,
}

/// A small, fast generator for the draws (xorshift64*), seeded per run so
/// that a run's sequence of operations can be repeated.
struct Draws(u64);

impl Draws {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs the workload and answers what it measured. Progress goes to
/// standard error once per interval.
pub async fn run(settings: Settings) -> anyhow::Result<MixReport> {
    let world = Arc::new(setup(&settings).await?);
    let first_position = head(&world).await?;
    let warmed = warm_up(&world, settings.warm_up_records).await?;

    let stats = Arc::new(Mutex::new(Stats::new()));
    let intervals: Arc<Mutex<Vec<Stats>>> = Arc::new(Mutex::new(Vec::new()));
    let accepted: Arc<Mutex<Vec<Accepted>>> = Arc::new(Mutex::new(warmed));
    let permits = Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight.max(1)));
    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let deadline = started + settings.duration;
    let interval = Duration::from_secs_f64(1.0 / settings.rate);
    let tickets = crate::load::pacer(started, deadline, interval);
    let mut draws = Draws(settings.seed.max(1));
    let mut delayed_starts = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    let mut reported = 0usize;
    loop {
        let Some(n) = tickets.lock().await.recv().await else {
            break;
        };
        let due = started + interval.mul_f64(n as f64);
        let op = settings.mix.pick(draws.next_f64());
        let pick = draws.next_f64();
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                delayed_starts += 1;
                permits.clone().acquire_owned().await?
            }
        };
        let slot = (due - started).as_secs_f64() / settings.interval.as_secs_f64();
        let slot = slot as usize;
        if slot > reported {
            progress(&stats, &settings, started, slot);
            reported = slot;
        }
        let (world, stats, intervals, accepted) = (
            world.clone(),
            stats.clone(),
            intervals.clone(),
            accepted.clone(),
        );
        tasks.spawn(async move {
            let outcome = perform(&world, op, pick).await;
            let micros = due.elapsed().as_micros() as u64;
            let (status, problem) = (outcome.status, outcome.problem.as_deref());
            {
                let mut all = stats.lock().expect("stats lock");
                all.record(op, micros, status, problem);
                if let Some(v) = outcome.visible_us {
                    let _ = all.visible.record(v.max(1));
                }
            }
            {
                let mut per = intervals.lock().expect("intervals lock");
                while per.len() <= slot {
                    per.push(Stats::new());
                }
                per[slot].record(op, micros, status, problem);
                if let Some(v) = outcome.visible_us {
                    let _ = per[slot].visible.record(v.max(1));
                }
            }
            if let Some(a) = outcome.accepted {
                accepted.lock().expect("accepted lock").push(a);
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let seconds = started.elapsed().as_secs_f64();

    let accepted = std::mem::take(&mut *accepted.lock().expect("accepted lock"));
    // The audit endpoints read the replica: wait until it holds the last
    // accepted write before looking for every one of them.
    let newest = accepted.iter().map(|a| a.position).max().unwrap_or(0);
    let last_position = head_reaching(&world, newest, Duration::from_secs(60)).await?;
    let integrity = check_integrity(&world, first_position, last_position, &accepted).await?;
    let stats = std::mem::replace(&mut *stats.lock().expect("stats lock"), Stats::new());
    let per = std::mem::take(&mut *intervals.lock().expect("intervals lock"));
    let width = settings.interval.as_secs_f64();
    Ok(MixReport {
        rate: settings.rate,
        duration_s: seconds,
        interval_s: width,
        mix: Op::ALL
            .iter()
            .map(|op| (op.name().to_owned(), settings.mix.share(*op)))
            .filter(|(_, s)| *s > 0.0)
            .collect(),
        started_unix_s,
        ops: stats.summaries(seconds),
        intervals: per
            .iter()
            .enumerate()
            .map(|(i, s)| IntervalSummary {
                start_s: i as f64 * width,
                ops: s.summaries(width),
                visible_p50_ms: quantile_ms(&s.visible, 0.5),
                visible_p99_ms: quantile_ms(&s.visible, 0.99),
            })
            .collect(),
        all: stats.all(seconds),
        visible: summary("visible", &stats.visible, BTreeMap::new(), seconds),
        delayed_starts,
        first_position,
        last_position,
        integrity,
    })
}

fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

fn progress(stats: &Mutex<Stats>, settings: &Settings, started: Instant, slot: usize) {
    let all = stats.lock().expect("stats lock");
    let done: u64 = all.latency.values().map(Histogram::len).sum();
    let errors: u64 = all
        .statuses
        .values()
        .flat_map(|s| s.iter())
        .filter(|(k, _)| !k.starts_with('2') && k.as_str() != "304")
        .map(|(_, n)| n)
        .sum();
    eprintln!(
        "[mix] {:>5.0} s of {:.0}: {} operations, {} not 2xx, {} read-your-writes p99 {:.1} ms",
        started.elapsed().as_secs_f64(),
        settings.duration.as_secs_f64(),
        done,
        errors,
        all.visible.len(),
        quantile_ms(&all.visible, 0.99)
    );
    let _ = slot;
}

/// The result of one operation.
#[derive(Default)]
struct Outcome {
    status: Option<u16>,
    /// The last part of the problem's `type`, for an error answer.
    problem: Option<String>,
    accepted: Option<Accepted>,
    visible_us: Option<u64>,
}

async fn setup(settings: &Settings) -> anyhow::Result<World> {
    let token = |sub: &str, roles: &[Role]| {
        mint(
            settings.secret.as_bytes(),
            &claims_for(sub, roles, 24 * 3600),
        )
    };
    let writer = token("mix-writer", &[Role::Writer, Role::Reader]);
    let reviewer = token("mix-reviewer", &[Role::Reviewer]);
    let reader = token("mix-reader", &[Role::Reader]);
    let auditor = token("mix-auditor", &[Role::Auditor]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(settings.max_in_flight)
        .timeout(Duration::from_secs(60))
        .build()?;
    let data = study::weather_data()?;
    let study = study::bench_study(&http, &settings.api, &writer, &data, None).await?;
    let subjects = data.subjects.len();
    Ok(World {
        http,
        api: settings.api.clone(),
        query: settings.query.clone(),
        writer,
        reviewer,
        reader,
        auditor,
        study,
        data,
        recorded: RwLock::new(Vec::new()),
        next_row: Mutex::new(vec![0; subjects]),
    })
}

/// Records `records` observations one after the other; answers them, for
/// the integrity check.
async fn warm_up(world: &World, records: usize) -> anyhow::Result<Vec<Accepted>> {
    let mut draws = Draws(0x5eed);
    let mut accepted = Vec::new();
    for _ in 0..records {
        let outcome = record(world, draws.next_f64()).await;
        match outcome.accepted {
            Some(a) if outcome.status == Some(201) => accepted.push(a),
            _ => bail!(
                "warming up: a record answered {:?} {:?}",
                outcome.status,
                outcome.problem
            ),
        }
    }
    Ok(accepted)
}

/// The newest position of the log, from the audit head.
async fn head(world: &World) -> anyhow::Result<i64> {
    let r = world
        .http
        .get(format!("{}/v1/audit/head", world.query))
        .bearer_auth(&world.auditor)
        .send()
        .await?;
    if r.status() == 404 {
        return Ok(0);
    }
    let v: Value = r.error_for_status()?.json().await?;
    v["position"].as_i64().context("a head position")
}

/// The audit head once it has reached `position` (the replica may lag the
/// command answers), or an error after `bound`.
async fn head_reaching(world: &World, position: i64, bound: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + bound;
    loop {
        let at = head(world).await?;
        if at >= position {
            return Ok(at);
        }
        if Instant::now() > deadline {
            bail!("the audit head stayed at {at}, below the accepted position {position}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn perform(world: &World, op: Op, u: f64) -> Outcome {
    match op {
        Op::Record => record(world, u).await,
        Op::Correct => correct(world, u).await,
        Op::Retract => retract(world, u).await,
        Op::Sign => sign(world, u).await,
        Op::ReadObservation => match pick(world, u, false) {
            Some(o) => get(world, &format!("/v1/observations/{}", o.id), None).await,
            None => get(world, &study_path(world), None).await,
        },
        Op::ReadSubject => {
            let s = &world.study.subjects
                [(u * world.study.subjects.len() as f64) as usize % world.study.subjects.len()];
            get(world, &format!("/v1/subjects/{s}"), None).await
        }
        Op::ReadStudy => get(world, &study_path(world), None).await,
        Op::Page => {
            let s = &world.study.subjects
                [(u * world.study.subjects.len() as f64) as usize % world.study.subjects.len()];
            if u < 0.5 {
                get(
                    world,
                    &format!("/v1/subjects/{s}/observations?limit=50"),
                    None,
                )
                .await
            } else {
                get(
                    world,
                    &format!("/v1/studies/{}/subjects", world.study.study_id),
                    None,
                )
                .await
            }
        }
        Op::Export => {
            let path = format!("/v1/studies/{}/observations.ndjson", world.study.study_id);
            get(world, &path, None).await
        }
        Op::Audit => match pick(world, u, false) {
            Some(o) => {
                let path = format!("/v1/audit/streams/{}/events", o.id);
                get_as(world, &path, &world.auditor, None).await
            }
            None => get_as(world, "/v1/audit/events?limit=100", &world.auditor, None).await,
        },
        Op::TokenRead => token_read(world, u).await,
    }
}

fn study_path(world: &World) -> String {
    format!("/v1/studies/{}", world.study.study_id)
}

/// A recorded observation drawn by `u` (newer ones more often: half of the
/// draws come from the newest tenth), not retracted when `live`.
fn pick(world: &World, u: f64, live: bool) -> Option<Recorded> {
    let all = world.recorded.read().expect("recorded lock");
    if all.is_empty() {
        return None;
    }
    let n = all.len();
    let i = if u < 0.5 {
        n - 1 - ((u * 2.0 * (n as f64 / 10.0).max(1.0)) as usize).min(n - 1)
    } else {
        (((u - 0.5) * 2.0) * n as f64) as usize % n
    };
    let found = all[i..]
        .iter()
        .chain(all[..i].iter())
        .find(|o| !live || !o.retracted);
    found.cloned()
}

async fn get(world: &World, path: &str, token: Option<i64>) -> Outcome {
    get_as(world, path, &world.reader, token).await
}

async fn get_as(world: &World, path: &str, auth: &str, token: Option<i64>) -> Outcome {
    let mut request = world
        .http
        .get(format!("{}{path}", world.query))
        .bearer_auth(auth);
    if let Some(t) = token {
        request = request.header("consistency-token", t.to_string());
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            // Read the whole body: an export streams until its end.
            let body = r.bytes().await.unwrap_or_default();
            let problem = (status >= 400)
                .then(|| serde_json::from_slice::<Value>(&body).ok())
                .flatten();
            Outcome {
                status: Some(status),
                problem: problem.as_ref().and_then(problem_slug),
                ..Outcome::default()
            }
        }
        Err(_) => Outcome::default(),
    }
}

/// The last part of an RFC 9457 problem's `type` (`…:problem:<slug>`),
/// with the domain rule it names when that says more.
fn problem_slug(problem: &Value) -> Option<String> {
    let slug = problem["type"].as_str()?.rsplit([':', '/']).next()?;
    Some(match problem["rule"].as_str() {
        Some(rule) if rule != slug => format!("{slug}: {rule}"),
        _ => slug.to_owned(),
    })
}

async fn post(world: &World, path: &str, auth: &str, body: &Value) -> (Option<u16>, Value) {
    let sent = world
        .http
        .post(format!("{}{path}", world.api))
        .bearer_auth(auth)
        .json(body)
        .send()
        .await;
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            (Some(status), r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (None, Value::Null),
    }
}

/// The outcome of a command on `aggregate` answered `status` and `answer`:
/// accepted at the answered position, or refused with its problem.
fn answered(status: Option<u16>, answer: &Value, aggregate: Uuid) -> Outcome {
    let ok = status.is_some_and(|s| (200..300).contains(&s));
    Outcome {
        status,
        problem: status
            .filter(|s| *s >= 400)
            .and_then(|_| problem_slug(answer)),
        accepted: answer["position"]
            .as_i64()
            .filter(|_| ok)
            .map(|position| Accepted {
                aggregate,
                position,
            }),
        visible_us: None,
    }
}

async fn record(world: &World, u: f64) -> Outcome {
    let subjects = world.data.subjects.len();
    let subject = ((u * subjects as f64) as usize).min(subjects - 1);
    let row = {
        let mut next = world.next_row.lock().expect("rows lock");
        let rows = world.data.subjects[subject].observations.len();
        let row = next[subject] % rows;
        next[subject] += 1;
        row
    };
    let id = Uuid::now_v7();
    let mut body = world.data.subjects[subject].observations[row].record_body();
    body["observation_id"] = json!(id);
    let path = format!(
        "/v1/subjects/{}/observations",
        world.study.subjects[subject]
    );
    let (status, answer) = post(world, &path, &world.writer, &body).await;
    let outcome = answered(status, &answer, id);
    if outcome.accepted.is_some() {
        world
            .recorded
            .write()
            .expect("recorded lock")
            .push(Recorded {
                id,
                subject,
                row,
                retracted: false,
            });
    }
    outcome
}

/// Corrects one variable of a recorded observation with the value another
/// real reading of the same subject has for it.
async fn correct(world: &World, u: f64) -> Outcome {
    let Some(o) = pick(world, u, true) else {
        return record(world, u).await;
    };
    let readings = &world.data.subjects[o.subject].observations;
    let own = &readings[o.row].values;
    let mut change = None;
    for step in 1..readings.len() {
        let other = &readings[(o.row + step * 7919) % readings.len()].values;
        if let Some((name, value)) = other
            .iter()
            .find(|(name, value)| !value.is_null() && own.get(*name) != Some(value))
        {
            change = Some((name.clone(), value.clone()));
            break;
        }
    }
    let Some((name, value)) = change else {
        return record(world, u).await;
    };
    let body = json!({"values": {name: value}, "reason": "re-read from the station's log"});
    let path = format!("/v1/observations/{}/corrections", o.id);
    let (status, answer) = post(world, &path, &world.writer, &body).await;
    answered(status, &answer, o.id)
}

async fn retract(world: &World, u: f64) -> Outcome {
    let Some(o) = pick(world, u, true) else {
        return record(world, u).await;
    };
    let body = json!({"reason": "sensor fault reported by the station"});
    let path = format!("/v1/observations/{}/retraction", o.id);
    let (status, answer) = post(world, &path, &world.writer, &body).await;
    let outcome = answered(status, &answer, o.id);
    if outcome.accepted.is_some() {
        let mut all = world.recorded.write().expect("recorded lock");
        if let Some(r) = all.iter_mut().find(|r| r.id == o.id) {
            r.retracted = true;
        }
    }
    outcome
}

/// A review or an approval by the second principal (who recorded and
/// corrected nothing, so may approve).
async fn sign(world: &World, u: f64) -> Outcome {
    let Some(o) = pick(world, u, true) else {
        return record(world, u).await;
    };
    let meaning = if u < 0.5 { "reviewed" } else { "approved" };
    let path = format!("/v1/observations/{}/signatures", o.id);
    let (status, answer) = post(world, &path, &world.reviewer, &json!({"meaning": meaning})).await;
    answered(status, &answer, o.id)
}

/// Records an observation, then reads its document with the answer's
/// `Consistency-Token`; the outcome is the read's, and the time between the
/// two answers is the read-your-writes latency.
async fn token_read(world: &World, u: f64) -> Outcome {
    let written = record(world, u).await;
    let Some(a) = written.accepted.clone() else {
        return written;
    };
    let answered = Instant::now();
    let read = get(
        world,
        &format!("/v1/observations/{}", a.aggregate),
        Some(a.position),
    )
    .await;
    Outcome {
        status: read.status,
        problem: read.problem,
        accepted: Some(a),
        visible_us: (read.status == Some(200)).then(|| answered.elapsed().as_micros() as u64),
    }
}

/// Reads the run's part of the log from the audit endpoint and checks every
/// accepted write against it.
async fn check_integrity(
    world: &World,
    first: i64,
    last: i64,
    accepted: &[Accepted],
) -> anyhow::Result<Integrity> {
    let mut at: HashMap<i64, Uuid> = HashMap::new();
    let mut ids = HashSet::new();
    let mut problems = Vec::new();
    let mut after = first;
    while after < last {
        let path = format!("/v1/audit/events?after={after}&limit=10000");
        let r = world
            .http
            .get(format!("{}{path}", world.query))
            .bearer_auth(&world.auditor)
            .send()
            .await?
            .error_for_status()?;
        let text = r.text().await?;
        let mut read = 0;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let e: Value = serde_json::from_str(line)?;
            let position = e["position"].as_i64().context("an event position")?;
            if position > last {
                break;
            }
            let id = e["id"].as_str().unwrap_or_default().to_owned();
            if !ids.insert(id.clone()) {
                problems.push(format!("event id {id} appears twice"));
            }
            let stream: Uuid = e["streamid"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .context("an event's stream id")?;
            at.insert(position, stream);
            after = position;
            read += 1;
        }
        if read == 0 {
            break;
        }
    }
    let study_streams: HashSet<Uuid> = world
        .recorded
        .read()
        .expect("recorded lock")
        .iter()
        .map(|r| r.id)
        .collect();
    let mut named = HashSet::new();
    let mut found_once = 0;
    for a in accepted {
        match at.get(&a.position) {
            Some(stream) if *stream == a.aggregate && named.insert(a.position) => found_once += 1,
            Some(stream) if *stream == a.aggregate => {
                problems.push(format!("position {} was answered twice", a.position));
            }
            Some(stream) => problems.push(format!(
                "position {} holds {stream}, not {}",
                a.position, a.aggregate
            )),
            None => problems.push(format!(
                "position {} (for {}) is not in the log",
                a.position, a.aggregate
            )),
        }
    }
    let unanswered_events = at
        .iter()
        .filter(|(p, s)| study_streams.contains(s) && !named.contains(p))
        .count() as u64;
    Ok(Integrity {
        accepted: accepted.len() as u64,
        found_once,
        problems,
        unanswered_events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_parses_and_draws_every_operation_in_proportion() {
        let mix = Mix::parse(DEFAULT_MIX).unwrap();
        let total: f64 = Op::ALL.iter().map(|o| mix.share(*o)).sum();
        assert!((total - 1.0).abs() < 1e-9);
        let writes: f64 = Op::ALL
            .iter()
            .filter(|o| o.is_write())
            .map(|o| mix.share(*o))
            .sum();
        assert!((0.12..0.18).contains(&writes), "{writes}");
        let mut draws = Draws(42);
        let mut counts: HashMap<Op, u64> = HashMap::new();
        for _ in 0..1_000_000 {
            *counts.entry(mix.pick(draws.next_f64())).or_default() += 1;
        }
        for op in Op::ALL {
            let seen = counts.get(&op).copied().unwrap_or(0) as f64 / 1e6;
            assert!(
                (seen - mix.share(op)).abs() < 0.002,
                "{op:?}: drawn {seen}, share {}",
                mix.share(op)
            );
        }
    }

    #[test]
    fn an_error_answer_is_named_by_its_problem_and_rule() {
        let problem = json!({"type": "urn:research-records:problem:nothing-changed",
                             "rule": "nothing-changed"});
        assert_eq!(problem_slug(&problem).as_deref(), Some("nothing-changed"));
        let ruled = json!({"type": "urn:research-records:problem:domain-rule", "rule": "closed"});
        assert_eq!(problem_slug(&ruled).as_deref(), Some("domain-rule: closed"));
        assert_eq!(problem_slug(&json!({"title": "no type"})), None);
    }

    #[test]
    fn a_mix_with_an_unknown_or_negative_weight_is_refused() {
        assert!(Mix::parse("record=1,bogus=2").is_err());
        assert!(Mix::parse("record=-1").is_err());
        assert!(Mix::parse("record=0").is_err());
        assert!(Mix::parse("record").is_err());
        assert_eq!(
            Mix::parse("record=3,read_study=1")
                .unwrap()
                .share(Op::Record),
            0.75
        );
    }
}
