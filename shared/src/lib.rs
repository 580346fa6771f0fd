//! Code shared by the three services.
//!
//! Layout:
//! - [`domain`]: commands, events, `decide` and `apply` (pure, no I/O);
//! - [`envelope`]: the stored event, its canonical bytes, hash chain and
//!   CloudEvents form;
//! - [`store`]: the PostgreSQL event store with its group-commit appender;
//! - [`api_doc`]: schemas shared by the OpenAPI documents;
//! - [`auth`]: bearer JWT validation and minting;
//! - [`http`]: the layers and fallbacks every HTTP service uses;
//! - [`loop_health`]: how a worker loop that cannot progress says so;
//! - [`redis_layout`]: the Redis keys the projector writes and the query API
//!   reads;
//! - [`config`]: parsing helpers for the services' settings;
//! - [`problem`]: RFC 9457 problem details;
//! - [`projection`]: the read models' documents and statistics (pure);
//! - [`telemetry`]: logging, metrics and shutdown set-up of the binaries;
//! - [`verify`]: verification of the hash chain and order of the log.

pub mod api_doc;
pub mod auth;
pub mod config;
pub mod domain;
pub mod envelope;
pub mod http;
pub mod loop_health;
pub mod problem;
pub mod projection;
pub mod redis_layout;
pub mod store;
pub mod telemetry;
pub mod verify;

/// The migrations of the whole database, applied at start-up by every
/// service (sqlx serialises concurrent runs with an advisory lock).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
