//! `research-verify`: the offline verifier of the event log, for auditors.
//! Reads the log from the database or from a saved NDJSON export, checks
//! positions, stream versions and the hash chain, and, given a pinned head,
//! that nothing up to it changed. Exits 0 when everything verifies, 1 at the
//! first position that does not (named on stdout), 2 when it cannot read.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use shared::envelope::StoredEvent;
use shared::store::EventStore;
use shared::verify::{Failure, PinnedHead, Verifier};

/// Verify the research records event log.
#[derive(Parser)]
#[command(name = "research-verify", version, about)]
struct Args {
    /// A saved NDJSON export (CloudEvents, one a line); `-` reads stdin.
    /// When given, the database is not read.
    #[arg(long)]
    file: Option<PathBuf>,
    /// The event store to read (used when no --file is given).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// A head pinned earlier, `position:hash` (from GET /v1/audit/head).
    #[arg(long)]
    pin: Option<PinnedHead>,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
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

async fn verify(
    args: &Args,
    verifier: &mut Verifier,
    progress: &mut Progress,
) -> anyhow::Result<Result<(), Failure>> {
    if let Some(path) = &args.file {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
            ))
        };
        for (n, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading line {}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            let event = match StoredEvent::from_cloud_event(&line) {
                Ok(e) => e,
                Err(e) => {
                    return Ok(Err(Failure {
                        position: verifier.head().0 + 1,
                        reason: format!("line {} is not an event of this log: {e}", n + 1),
                    }))
                }
            };
            if let Err(failure) = verifier.check(&event) {
                return Ok(Err(failure));
            }
            progress.tick(verifier.checked(), event.position);
        }
    } else {
        let url = args
            .database_url
            .as_deref()
            .context("give --file or --database-url (or DATABASE_URL)")?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .context("connecting to the event store")?;
        // Pages of events by position: constant memory for any log size.
        let mut after = 0;
        loop {
            let page = EventStore::read_after(&pool, after, 10_000)
                .await
                .context("reading events")?;
            let Some(last) = page.last().map(|e| e.position) else {
                break;
            };
            for event in &page {
                if let Err(failure) = verifier.check(event) {
                    return Ok(Err(failure));
                }
            }
            after = last;
            progress.tick(verifier.checked(), after);
        }
    }
    Ok(verifier.finish())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut verifier = Verifier::new(args.pin);
    let mut progress = Progress {
        started: Instant::now(),
        shown: Instant::now(),
        quiet: args.quiet,
    };
    let outcome = verify(&args, &mut verifier, &mut progress).await;
    if !args.quiet {
        eprintln!();
    }
    match outcome {
        Ok(Ok(())) => {
            let (position, hash) = verifier.head();
            println!(
                "verified {} events; head {position}:{}",
                verifier.checked(),
                hex::encode(hash)
            );
        }
        Ok(Err(failure)) => {
            println!(
                "FAILED at position {}: {}",
                failure.position, failure.reason
            );
            std::process::exit(1);
        }
        Err(error) => {
            eprintln!("research-verify: {error:#}");
            std::process::exit(2);
        }
    }
}
