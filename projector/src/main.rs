//! `projector` binary: keeps the read models up to date until SIGTERM, or
//! runs one offline job (`rebuild`, `verify-replay`).

use clap::Parser;
use projector::app::{connect, App};
use projector::config::{Config, Offline};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's allocator: the services make many small,
/// short-lived allocations on every thread, where glibc's arenas spent a
/// quarter of the command API's CPU under load and kept freed memory
/// resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shared::telemetry::init("info,sqlx=warn");
    config.migration.apply().await?;
    if let Some(job) = config.command {
        return offline(&config, job).await;
    }
    let app = App::start(&config).await?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(config.addr, shutdown.clone()));
    shared::telemetry::shutdown_signal().await;
    shutdown.cancel();
    running.await?
}

/// `rebuild` and `verify-replay`.
async fn offline(config: &Config, job: Offline) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    match job {
        Offline::Rebuild => {
            let started = std::time::Instant::now();
            let position = projector::replay::rebuild(&pool, true).await?;
            println!(
                "rebuilt the read models up to position {position} in {:.1} s and switched to them",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Offline::VerifyReplay => {
            let (position, difference) = projector::replay::verify(&pool, true).await?;
            let Some(d) = difference else {
                println!("the read models equal a replay of the log up to position {position}");
                return Ok(());
            };
            println!(
                "first difference at position {position}: {} {}\n  live:     {}\n  replayed: {}",
                d.table,
                d.id,
                d.live.as_deref().unwrap_or("(missing)"),
                d.replayed.as_deref().unwrap_or("(missing)")
            );
            std::process::exit(1);
        }
    }
}
