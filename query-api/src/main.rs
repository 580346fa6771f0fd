//! `query-api` binary: serves reads until SIGTERM or Ctrl-C, then finishes
//! the requests in flight.

use anyhow::Context;
use clap::Parser;
use query_api::config::Config;
use query_api::App;

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
    let metrics = shared::telemetry::install_metrics();
    let app = App::start(&config, metrics).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    tracing::info!(
        addr = %config.addr,
        cache_bytes = config.cache_bytes,
        redis = !config.redis.url.is_empty(),
        "query-api listening"
    );
    axum::serve(
        shared::listener::ProblemListener::new(listener),
        app.router(),
    )
    .with_graceful_shutdown(shared::telemetry::shutdown_signal())
    .await
    .context("serving HTTP")?;
    tracing::info!("query-api stopped");
    Ok(())
}
