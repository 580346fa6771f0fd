//! `command-api` binary: reads its configuration and serves until SIGTERM.

use anyhow::Context;
use clap::Parser;
use command_api::config::Config;
use command_api::App;

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
    let app = App::start(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    app.serve(listener, shared::telemetry::shutdown_signal())
        .await
}
