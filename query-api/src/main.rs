//! `query-api` binary: serves the audit endpoints until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use query_api::QueryState;
use shared::auth::Authenticator;
use sqlx::postgres::PgPoolOptions;

/// Serves reads: for now the audit endpoints over the event store.
#[derive(Debug, Parser)]
#[command(name = "query-api", version, about)]
struct Config {
    #[arg(long, env = "QUERY_API_ADDR", default_value = "127.0.0.1:8082")]
    addr: SocketAddr,
    /// The read replica; empty means read the primary.
    #[arg(
        long,
        env = "REPLICA_DATABASE_URL",
        default_value = "postgres://research:research@127.0.0.1:5433/research"
    )]
    replica_database_url: String,
    /// The primary, used only when no replica is configured.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://research:research@127.0.0.1:5432/research"
    )]
    database_url: String,
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    #[arg(long, env = "JWT_ISSUER")]
    jwt_issuer: Option<String>,
    #[arg(long, env = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    shared::telemetry::init("info,sqlx=warn");
    let url = if config.replica_database_url.is_empty() {
        &config.database_url
    } else {
        &config.replica_database_url
    };
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .context("connecting to the event store")?;
    let state = Arc::new(QueryState {
        pool,
        auth: Authenticator::new(
            config.jwt_secret.as_bytes(),
            config.jwt_issuer.as_deref(),
            config.jwt_audience.as_deref(),
        ),
    });
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    tracing::info!(addr = %config.addr, "query-api listening");
    axum::serve(listener, query_api::router(state))
        .with_graceful_shutdown(shared::telemetry::shutdown_signal())
        .await
        .context("serving HTTP")
}
