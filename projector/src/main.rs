//! `projector` binary: keeps the read models up to date until SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use projector::{Projector, ProjectorConfig};
use serde_json::json;
use shared::problem::Problem;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// Builds the read models from the event stream. Without a command it runs
/// the projection until SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "projector", version, about)]
struct Config {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "PROJECTOR_ADDR", default_value = "127.0.0.1:8083")]
    addr: SocketAddr,
    /// PostgreSQL primary (event store and read tables), as the projector's
    /// own role: it reads events and owns only the read models.
    #[arg(
        long,
        env = "PROJECTOR_DATABASE_URL",
        default_value = "postgres://research_projector:research@127.0.0.1:5432/research"
    )]
    database_url: String,
    /// The database's owner, to apply migrations at start-up; empty: the
    /// migrations are applied by someone else (the command API).
    #[arg(
        long,
        env = "MIGRATION_DATABASE_URL",
        default_value = "",
        hide_env_values = true
    )]
    migration_database_url: String,
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "NATS_STREAM", default_value = "RESEARCH_EVENTS")]
    nats_stream: String,
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = "research")]
    nats_subject_prefix: String,
    /// Name of the durable JetStream consumer.
    #[arg(long, env = "PROJECTOR_CONSUMER", default_value = "projector")]
    consumer: String,
    /// How long to wait for messages before looking at the event store.
    #[arg(long, env = "PROJECTOR_IDLE_WAIT", default_value = "500ms", value_parser = shared::config::parse_duration)]
    idle_wait: Duration,
    /// Most events applied in one transaction.
    #[arg(long, env = "PROJECTOR_MAX_BATCH", default_value_t = 1000)]
    max_batch: usize,
    /// Redis to warm with the documents (empty: none).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Prefix of every Redis key and channel.
    #[arg(long, env = "REDIS_PREFIX", default_value = "research")]
    redis_prefix: String,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Replays the whole event store into fresh tables beside the live ones
    /// and switches to them atomically once caught up.
    Rebuild,
    /// Replays the event store into a scratch schema and compares every
    /// document with the live read models; exits 1 at the first difference.
    VerifyReplay,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shared::telemetry::init("info,sqlx=warn");
    shared::migrate(Some(&config.migration_database_url)).await?;
    if let Some(command) = &config.command {
        return offline(&config, command).await;
    }
    let metrics =
        shared::telemetry::install_metrics().context("installing the metrics recorder")?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&config.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    // The projector works without NATS (from the event store), so a NATS
    // that is down at start is not fatal.
    let js = match async_nats::ConnectOptions::new()
        .name("projector")
        .retry_on_initial_connect()
        .connect(&config.nats_url)
        .await
    {
        Ok(client) => Some(async_nats::jetstream::new(client)),
        Err(error) => {
            tracing::warn!(%error, "NATS unreachable; projecting from the event store");
            None
        }
    };
    let projector = Projector::new(
        pool.clone(),
        js,
        ProjectorConfig {
            nats_stream: config.nats_stream.clone(),
            subject_prefix: config.nats_subject_prefix.clone(),
            consumer: config.consumer.clone(),
            idle_wait: config.idle_wait,
            max_batch: config.max_batch,
        },
    )
    .await?;
    let projector = if config.redis_url.is_empty() {
        projector
    } else {
        let sink = projector::redis_sink::RedisSink::start(
            &config.redis_url,
            config.redis_prefix.clone(),
            pool.clone(),
        )
        .context("configuring Redis")?;
        projector.with_redis(sink)
    };
    let health = projector.health.clone();
    let shutdown = CancellationToken::new();
    let ready_pool = pool.clone();
    let router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let (pool, health) = (ready_pool.clone(), health.clone());
                async move {
                    let db = sqlx::query("SELECT 1").execute(&pool).await.is_ok();
                    let projection = health.report();
                    if db && health.is_ok() {
                        Json(json!({"postgres": db, "projection": projection})).into_response()
                    } else {
                        Problem::unavailable("the projector cannot make progress")
                            .with("postgres", db)
                            .with("projection", projection)
                            .into_response()
                    }
                }
            }),
        )
        .route("/metrics", get(move || async move { metrics.render() }));
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(shared::listener::ProblemListener::new(listener), router)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
    });
    let worker = tokio::spawn(projector.run(shutdown.clone()));
    shared::telemetry::shutdown_signal().await;
    shutdown.cancel();
    let _ = worker.await;
    let _ = http.await;
    Ok(())
}

/// `rebuild` and `verify-replay`.
async fn offline(config: &Config, command: &Command) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&config.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    match command {
        Command::Rebuild => {
            let started = std::time::Instant::now();
            let position = projector::replay::rebuild(&pool, true).await?;
            println!(
                "rebuilt the read models up to position {position} in {:.1} s and switched to them",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::VerifyReplay => {
            let (position, difference) = projector::replay::verify(&pool, true).await?;
            match difference {
                None => {
                    println!("the read models equal a replay of the log up to position {position}");
                    Ok(())
                }
                Some(d) => {
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
    }
}
