//! Code shared by the three services.
//!
//! Layout:
//! - [`domain`]: commands, events, `decide` and `apply` (pure, no I/O);
//! - [`envelope`]: the stored event, its canonical bytes, hash chain and
//!   CloudEvents form;
//! - [`store`]: the PostgreSQL event store with its group-commit appender;
//! - [`api_doc`]: schemas shared by the OpenAPI documents;
//! - [`auth`]: bearer JWT validation and minting;
//! - [`checkpoint`]: signed checkpoints of the Merkle tree (C2SP notes);
//! - [`http`]: the layers and fallbacks every HTTP service uses;
//! - [`listener`]: the listener that answers HTTP parser errors as problems;
//! - [`merkle`]: the Merkle tree over the log (RFC 9162 hashing, proofs,
//!   tiles); [`merkle_store`]: its tiles in PostgreSQL;
//! - [`loop_health`]: how a worker loop that cannot progress says so;
//! - [`redis_layout`]: the Redis keys the projector writes and the query API
//!   reads;
//! - [`config`]: parsing helpers for the services' settings;
//! - [`problem`]: RFC 9457 problem details;
//! - [`receipt`]: verification of an observation's receipt, offline;
//! - [`projection`]: the read models' documents and statistics (pure);
//! - [`telemetry`]: logging, metrics and shutdown set-up of the binaries;
//! - [`verify`]: verification of the hash chain and order of the log, and
//!   of its Merkle tree against known roots.

pub mod api_doc;
pub mod auth;
pub mod checkpoint;
pub mod config;
pub mod domain;
pub mod envelope;
pub mod http;
pub mod lease;
pub mod listener;
pub mod loop_health;
pub mod merkle;
pub mod merkle_store;
pub mod problem;
pub mod projection;
pub mod receipt;
pub mod redis_layout;
pub mod store;
pub mod telemetry;
pub mod verify;

/// The migrations of the whole database. They run as the database's owner,
/// never as a service's role (which may not create or alter anything of the
/// event store): by a service given `MIGRATION_DATABASE_URL` at start-up
/// (sqlx serialises concurrent runs with an advisory lock), or by the tests.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Why the migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("connecting to PostgreSQL as the owner (MIGRATION_DATABASE_URL)")]
    Connect(#[source] sqlx::Error),
    #[error("applying migrations (the service roles must exist: scripts/infra.sh)")]
    Apply(#[source] sqlx::migrate::MigrateError),
}

/// Applies the migrations as the owner at `owner_url`, when one is given.
pub async fn migrate(owner_url: Option<&str>) -> Result<(), MigrateError> {
    let Some(url) = owner_url.filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(MigrateError::Connect)?;
    MIGRATOR.run(&pool).await.map_err(MigrateError::Apply)?;
    pool.close().await;
    Ok(())
}
