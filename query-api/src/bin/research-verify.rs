//! `research-verify`: the auditor's verifier of the event log, trusting
//! nothing but what it is given (a verifier key, a pinned head, its own
//! state file).
//!
//! Without a subcommand it replays the log from the database or from a
//! saved NDJSON export: positions, stream versions and the hash chain, a
//! pinned head, and, given the log's verifier key, the Merkle tree against
//! signed checkpoints and against the checkpoint (and leaves) it verified
//! on its last run. `receipt` verifies an observation's receipt offline.
//! Exits 0 when everything verifies, 1 naming what does not, 2 when it
//! cannot read its input.

use std::io::{BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args as ClapArgs, Parser, Subcommand};
use shared::checkpoint::{Checkpoint, GrowthError, NoteVerifier};
use shared::envelope::StoredEvent;
use shared::merkle::{leaf_hash, Frontier, Hash};
use shared::receipt::Receipt;
use shared::store::EventStore;
use shared::verify::{ExpectedRoot, Failure, PinnedHead, TreeCheck, Verifier};
use sqlx::PgPool;

/// Verify the research records event log.
#[derive(Parser)]
#[command(
    name = "research-verify",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    log: LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Verify an observation's receipt (GET /v1/audit/observations/{id}/receipt)
    /// offline: the checkpoint's signature with the trusted key, each
    /// event's hash, each event's inclusion in the signed tree.
    Receipt(ReceiptArgs),
}

#[derive(ClapArgs)]
struct KeyArgs {
    /// The log's verifier key, `<name>+<key id>+<base64 key>` (from
    /// `log-key --verifier-of`, obtained beforehand and out of band).
    #[arg(long, env = "LOG_VERIFIER_KEY")]
    key: Option<String>,
    /// A file holding the verifier key.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The log's origin, the first line of its checkpoints (default: the
    /// key's name).
    #[arg(long)]
    origin: Option<String>,
}

#[derive(ClapArgs)]
struct LogArgs {
    /// A saved NDJSON export (CloudEvents, one a line); `-` reads stdin.
    /// When given, the database is not read.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The event store to read (used when no --file is given); its stored
    /// checkpoints are verified too.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// A head pinned earlier, `position:hash` (from GET /v1/audit/head).
    #[arg(long)]
    pin: Option<PinnedHead>,
    #[command(flatten)]
    key: KeyArgs,
    /// A signed checkpoint to verify the log against (a file holding the
    /// note, e.g. from GET /v1/audit/checkpoint or the checkpoints'
    /// JetStream stream); default: the newest the database stores.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The verifier's memory: the last checkpoint it verified (and, beside
    /// it in `<FILE>.leaves`, the leaves it verified, 32 bytes an event).
    /// Every run demands that the log still has them and only grew, and
    /// on success remembers the new checkpoint. Needs --key.
    #[arg(long)]
    state: Option<PathBuf>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(ClapArgs)]
struct ReceiptArgs {
    /// The receipt (JSON); `-` reads stdin.
    file: PathBuf,
    #[command(flatten)]
    key: KeyArgs,
}

impl KeyArgs {
    /// The trusted key and the origin, if a key is given.
    fn load(&self) -> anyhow::Result<Option<(NoteVerifier, String)>> {
        let text = match (&self.key, &self.key_file) {
            (Some(key), _) if !key.trim().is_empty() => key.clone(),
            (_, Some(file)) => std::fs::read_to_string(file)
                .with_context(|| format!("reading the verifier key from {}", file.display()))?,
            _ => return Ok(None),
        };
        let key = NoteVerifier::parse(&text)
            .context("the verifier key is not a signed-note key (<name>+<key id>+<base64 key>)")?;
        let origin = self.origin.clone().unwrap_or_else(|| key.name().to_owned());
        Ok(Some((key, origin)))
    }
}

fn read_input(path: &Path) -> anyhow::Result<Box<dyn BufRead>> {
    Ok(if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    })
}

/// How a run ended: verified, or failed (named), or unable to read.
enum Outcome {
    Verified(String),
    Failed(String),
}

struct Progress {
    started: Instant,
    shown: Instant,
    quiet: bool,
}

impl Progress {
    fn tick(&mut self, checked: u64, position: i64) {
        if self.quiet || self.shown.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.shown = Instant::now();
        let rate = checked as f64 / self.started.elapsed().as_secs_f64();
        eprint!("\r{checked} events verified, at position {position} ({rate:.0} events/s)   ");
        let _ = std::io::stderr().flush();
    }
}

/// The remembered state: the last verified checkpoint's note and the
/// leaves up to its size.
struct State {
    path: PathBuf,
    remembered: Option<(Checkpoint, String)>,
}

impl State {
    fn leaves_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".leaves");
        PathBuf::from(name)
    }

    /// Loads the state, verifying the note with the key and the leaves
    /// against its root; a missing state file is a first run.
    fn load(path: &Path, key: &NoteVerifier, origin: &str) -> anyhow::Result<Result<Self, String>> {
        let note = match std::fs::read_to_string(path) {
            Ok(note) => note,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Ok(Self {
                    path: path.to_owned(),
                    remembered: None,
                }))
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let checkpoint = match Checkpoint::verify(&note, key, origin) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Err(format!(
                    "the remembered checkpoint in {} does not verify with the key: {e}",
                    path.display()
                )))
            }
        };
        let leaves = Self::leaves_path(path);
        let file = std::fs::File::open(&leaves)
            .with_context(|| format!("opening {}", leaves.display()))?;
        if file.metadata()?.len() != checkpoint.size * 32 {
            return Ok(Err(format!(
                "{} does not hold the {} leaves of the remembered checkpoint",
                leaves.display(),
                checkpoint.size
            )));
        }
        let mut reader = std::io::BufReader::new(file);
        let mut frontier = Frontier::default();
        let mut leaf = [0u8; 32];
        for _ in 0..checkpoint.size {
            reader.read_exact(&mut leaf)?;
            frontier.push_with(leaf_hash(&leaf), |_, _, _| {});
        }
        if frontier.root() != checkpoint.root {
            return Ok(Err(format!(
                "the leaves in {} do not have the remembered checkpoint's root",
                leaves.display()
            )));
        }
        Ok(Ok(Self {
            path: path.to_owned(),
            remembered: Some((checkpoint, note)),
        }))
    }

    fn earlier_leaves(&self) -> anyhow::Result<Option<(Box<dyn Read>, u64)>> {
        let Some((checkpoint, _)) = &self.remembered else {
            return Ok(None);
        };
        let file = std::fs::File::open(Self::leaves_path(&self.path))?;
        Ok(Some((
            Box::new(std::io::BufReader::new(file)),
            checkpoint.size,
        )))
    }

    /// The files a replay writes aside before moving them into place.
    fn aside_paths(&self) -> [PathBuf; 2] {
        [
            Self::aside(&Self::leaves_path(&self.path)),
            Self::aside(&self.path),
        ]
    }

    fn aside(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".new");
        PathBuf::from(name)
    }

    /// Where the replay writes the leaves to remember, aside until saved.
    fn leaves_writer(&self) -> anyhow::Result<BufWriter<std::fs::File>> {
        let aside = Self::aside(&Self::leaves_path(&self.path));
        Ok(BufWriter::new(std::fs::File::create(&aside).with_context(
            || format!("creating {}", aside.display()),
        )?))
    }

    /// Remembers `note`, whose leaves the replay wrote: the leaves are
    /// moved into place first, then the note is written aside and moved.
    fn save(&self, note: &str, leaves: BufWriter<std::fs::File>) -> anyhow::Result<()> {
        let leaves_path = Self::leaves_path(&self.path);
        let file = leaves.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(Self::aside(&leaves_path), &leaves_path)
            .with_context(|| format!("writing {}", leaves_path.display()))?;
        let aside = Self::aside(&self.path);
        std::fs::write(&aside, note)
            .and_then(|()| std::fs::rename(&aside, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }
}

/// The checkpoints the database stores, oldest first: every one must
/// verify with the key, and two of one size must agree.
async fn stored_checkpoints(
    pool: &PgPool,
    key: &NoteVerifier,
    origin: &str,
) -> anyhow::Result<Result<Vec<(Checkpoint, String)>, String>> {
    let rows: Vec<(i64, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT size, note, signed_at FROM checkpoints ORDER BY size, signed_at")
            .fetch_all(pool)
            .await
            .context("reading the stored checkpoints")?;
    let mut verified: Vec<(Checkpoint, String)> = Vec::with_capacity(rows.len());
    for (size, note, signed_at) in rows {
        let checkpoint = match Checkpoint::verify(&note, key, origin) {
            Ok(c) if c.size as i64 == size => c,
            Ok(_) => {
                return Ok(Err(format!(
                    "the checkpoint stored at {signed_at} for {size} events signs another size"
                )))
            }
            Err(e) => {
                return Ok(Err(format!(
                    "the checkpoint stored at {signed_at} for {size} events is not signed by the key: {e}"
                )))
            }
        };
        if let Some((before, _)) = verified.last() {
            if before.size == checkpoint.size && before.root != checkpoint.root {
                return Ok(Err(format!(
                    "the log forked: two checkpoints of {size} events with different roots are both signed by the key"
                )));
            }
        }
        verified.push((checkpoint, note));
    }
    Ok(Ok(verified))
}

/// What the log must match: the signed checkpoints, the target checkpoint,
/// and what this verifier remembers; `failures` found on the way that the
/// replay will place.
#[derive(Default)]
struct Expectations {
    expected: Vec<ExpectedRoot>,
    target: Option<(Checkpoint, String)>,
    state: Option<State>,
    failures: Vec<String>,
}

async fn verify_log(args: &LogArgs) -> anyhow::Result<Outcome> {
    let trusted = args.key.load()?;
    if trusted.is_none() && (args.state.is_some() || args.checkpoint.is_some()) {
        anyhow::bail!("--state and --checkpoint need the log's verifier key (--key or --key-file)");
    }
    let pool = match (&args.file, &args.database_url) {
        (Some(_), _) => None,
        (None, Some(url)) => Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(url)
                .await
                .context("connecting to the event store")?,
        ),
        (None, None) => anyhow::bail!("give --file or --database-url (or DATABASE_URL)"),
    };
    let expectations = match &trusted {
        Some((key, origin)) => match expectations(args, pool.as_ref(), key, origin).await? {
            Ok(e) => e,
            Err(failure) => return Ok(Outcome::Failed(failure)),
        },
        None => Expectations::default(),
    };
    replay_against(args, pool.as_ref(), expectations).await
}

/// Reads the stored checkpoints, the target and the remembered state, each
/// checked with the key; `Err` names a failure found before any replay.
async fn expectations(
    args: &LogArgs,
    pool: Option<&PgPool>,
    key: &NoteVerifier,
    origin: &str,
) -> anyhow::Result<Result<Expectations, String>> {
    let mut found = Expectations::default();
    let stored = match pool {
        Some(pool) => match stored_checkpoints(pool, key, origin).await? {
            Ok(stored) => stored,
            Err(failure) => return Ok(Err(failure)),
        },
        None => Vec::new(),
    };
    for (checkpoint, _) in &stored {
        found.expected.push(ExpectedRoot {
            size: checkpoint.size,
            root: checkpoint.root,
            source: format!("the signed checkpoint of {} events", checkpoint.size),
        });
    }
    found.target = match &args.checkpoint {
        Some(path) => {
            let note = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            match Checkpoint::verify(&note, key, origin) {
                Ok(c) => Some((c, note)),
                Err(e) => {
                    return Ok(Err(format!(
                        "the checkpoint in {} does not verify with the key: {e}",
                        path.display()
                    )))
                }
            }
        }
        None => stored.last().cloned(),
    };
    if let Some((checkpoint, _)) = &found.target {
        found.expected.push(ExpectedRoot {
            size: checkpoint.size,
            root: checkpoint.root,
            source: format!("the checkpoint of {} events verified now", checkpoint.size),
        });
    }
    let Some(path) = &args.state else {
        return Ok(Ok(found));
    };
    let loaded = match State::load(path, key, origin)? {
        Ok(s) => s,
        Err(failure) => return Ok(Err(failure)),
    };
    if let Some((remembered, _)) = &loaded.remembered {
        found.expected.push(ExpectedRoot {
            size: remembered.size,
            root: remembered.root,
            source: format!(
                "the checkpoint of {} events this verifier remembers",
                remembered.size
            ),
        });
        if let Some((next, _)) = &found.target {
            if let Err(failure) = grows(pool, remembered, next, &mut found.failures).await? {
                return Ok(Err(failure));
            }
        }
    }
    found.state = Some(loaded);
    Ok(Ok(found))
}

/// The log only grows: `next` must continue the `remembered` checkpoint, by
/// a consistency proof the database gives (from an export, the replay
/// recomputes both roots). An inconsistent proof is a failure the replay
/// will place (pushed to `failures`); any other is final (`Err`).
async fn grows(
    pool: Option<&PgPool>,
    remembered: &Checkpoint,
    next: &Checkpoint,
    failures: &mut Vec<String>,
) -> anyhow::Result<Result<(), String>> {
    let proof = match pool {
        Some(pool) if remembered.size > 0 && next.size > remembered.size => {
            let mut conn = pool.acquire().await?;
            Some(
                shared::merkle_store::prove_consistency(&mut conn, remembered.size, next.size)
                    .await
                    .context("reading a consistency proof")?,
            )
        }
        Some(_) => Some(Vec::new()),
        None => None,
    };
    match (
        remembered.continued_by(next, proof.as_deref().unwrap_or(&[])),
        proof,
    ) {
        (Ok(()), _) | (Err(GrowthError::Inconsistent { .. }), None) => Ok(Ok(())),
        // The replay names where the past differs.
        (Err(e @ GrowthError::Inconsistent { .. }), Some(_)) => {
            failures.push(format!("FAILED: {e}"));
            Ok(Ok(()))
        }
        (Err(e), _) => Ok(Err(format!("FAILED: {e}"))),
    }
}

/// Replays the log against the expectations, remembers what was verified,
/// and says the outcome. Whatever it ends in, nothing written aside for the
/// state stays behind: a verified replay moved it into place, any other end
/// leaves the state as it was.
async fn replay_against(
    args: &LogArgs,
    pool: Option<&PgPool>,
    expectations: Expectations,
) -> anyhow::Result<Outcome> {
    let aside = expectations.state.as_ref().map(State::aside_paths);
    let outcome = replay_and_remember(args, pool, expectations).await;
    for path in aside.into_iter().flatten() {
        let _ = std::fs::remove_file(path);
    }
    outcome
}

async fn replay_and_remember(
    args: &LogArgs,
    pool: Option<&PgPool>,
    expectations: Expectations,
) -> anyhow::Result<Outcome> {
    let Expectations {
        expected,
        target,
        state,
        mut failures,
    } = expectations;
    let mut progress = progress(args.quiet);
    let remember = match (&state, &target) {
        (Some(state), Some((checkpoint, _))) => Some((state.leaves_writer()?, checkpoint.size)),
        _ => None,
    };
    let earlier = match &state {
        Some(state) => state.earlier_leaves()?,
        None => None,
    };
    let replayed = replay(args, pool, expected, earlier, remember, &mut progress).await?;
    let (checked, head, leaves) = match replayed {
        Ok(done) => done,
        Err(failure) => {
            failures.push(format!(
                "FAILED at position {}: {}",
                failure.position, failure.reason
            ));
            return Ok(Outcome::Failed(failures.join("\n")));
        }
    };
    if !failures.is_empty() {
        failures.push(
            "FAILED: yet the events replay to every signed root: the stored tree is damaged".into(),
        );
        return Ok(Outcome::Failed(failures.join("\n")));
    }
    let mut summary = format!(
        "verified {checked} events; head {}:{}",
        head.0,
        hex::encode(head.1)
    );
    if let Some((checkpoint, note)) = &target {
        summary.push_str(&format!(
            "; the signed checkpoint of {} events matches",
            checkpoint.size
        ));
        if let (Some(state), Some(leaves)) = (&state, leaves) {
            state.save(note, leaves)?;
            summary.push_str(&format!("; remembered in {}", state.path.display()));
        }
    }
    Ok(Outcome::Verified(summary))
}

fn progress(quiet: bool) -> Progress {
    Progress {
        started: Instant::now(),
        shown: Instant::now(),
        quiet,
    }
}

/// Replays the log through the chain verifier and the tree check;
/// answers the events checked, the head, and the writer of the leaves to
/// remember (`remember`: the writer and how many leaves it takes).
async fn replay(
    args: &LogArgs,
    pool: Option<&PgPool>,
    expected: Vec<ExpectedRoot>,
    earlier: Option<(Box<dyn Read>, u64)>,
    mut remember: Option<(BufWriter<std::fs::File>, u64)>,
    progress: &mut Progress,
) -> anyhow::Result<Result<(u64, (i64, Hash), Option<BufWriter<std::fs::File>>), Failure>> {
    let mut verifier = Verifier::new(args.pin);
    let mut tree = TreeCheck::new(expected, earlier);
    let mut check = |event: &StoredEvent| -> anyhow::Result<Result<(), Failure>> {
        if let Err(failure) = verifier.check(event).and_then(|()| tree.push(&event.hash)) {
            return Ok(Err(failure));
        }
        if let Some((out, upto)) = remember.as_mut() {
            if event.position as u64 <= *upto {
                out.write_all(&event.hash)
                    .context("writing the remembered leaves")?;
            }
        }
        Ok(Ok(()))
    };
    let mut last = 0;
    if let Some(path) = &args.file {
        for (n, line) in read_input(path)?.lines().enumerate() {
            let line = line.with_context(|| format!("reading line {}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let event = match StoredEvent::from_cloud_event(&line) {
                Ok(e) => e,
                Err(e) => {
                    return Ok(Err(Failure {
                        position: last + 1,
                        reason: format!("line {} is not an event of this log: {e}", n + 1),
                    }))
                }
            };
            if let Err(failure) = check(&event)? {
                return Ok(Err(failure));
            }
            last = event.position;
            progress.tick(last as u64, last);
        }
    } else if let Some(pool) = pool {
        // Pages of events by position: constant memory for any log size.
        loop {
            let page = EventStore::read_after(pool, last, 10_000)
                .await
                .context("reading events")?;
            let Some(end) = page.last().map(|e| e.position) else {
                break;
            };
            for event in &page {
                if let Err(failure) = check(event)? {
                    return Ok(Err(failure));
                }
            }
            last = end;
            progress.tick(last as u64, last);
        }
    }
    if let Err(failure) = verifier.finish().and_then(|()| tree.finish()) {
        return Ok(Err(failure));
    }
    Ok(Ok((
        verifier.checked(),
        verifier.head(),
        remember.map(|(out, _)| out),
    )))
}

fn verify_receipt(args: &ReceiptArgs) -> anyhow::Result<Outcome> {
    let (key, origin) = args
        .key
        .load()?
        .context("a receipt is verified with the log's verifier key (--key or --key-file)")?;
    let mut json = String::new();
    read_input(&args.file)?
        .read_to_string(&mut json)
        .context("reading the receipt")?;
    let receipt = match Receipt::parse(&json) {
        Ok(r) => r,
        Err(e) => return Ok(Outcome::Failed(e.to_string())),
    };
    Ok(match receipt.verify(&key, &origin) {
        Ok(proven) => Outcome::Verified(format!(
            "receipt verified: observation {}, {} events (positions {}) in the signed tree of {} events",
            proven.observation_id,
            proven.positions.len(),
            proven
                .positions
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            proven.checkpoint.size
        )),
        Err(e) => Outcome::Failed(format!("FAILED: {e}")),
    })
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Some(Command::Receipt(args)) => verify_receipt(args),
        None => {
            let outcome = verify_log(&cli.log).await;
            if !cli.log.quiet {
                eprintln!();
            }
            outcome
        }
    };
    match outcome {
        Ok(Outcome::Verified(summary)) => println!("{summary}"),
        Ok(Outcome::Failed(failure)) => {
            let failure = if failure.starts_with("FAILED") || failure.contains("\nFAILED") {
                failure
            } else {
                format!("FAILED: {failure}")
            };
            println!("{failure}");
            std::process::exit(1);
        }
        Err(error) => {
            eprintln!("research-verify: {error:#}");
            std::process::exit(2);
        }
    }
}
