//! Code shared by the three services.
//!
//! Layout:
//! - [`domain`]: commands, events, `decide` and `apply` (pure, no I/O);
//! - [`envelope`]: the stored event, its canonical bytes, hash chain and
//!   CloudEvents form;
//! - [`store`]: the PostgreSQL event store with its group-commit appender;
//! - [`auth`]: bearer JWT validation and minting;
//! - [`config`]: parsing helpers for the services' settings;
//! - [`problem`]: RFC 9457 problem details;
//! - [`projection`]: the read models' documents and statistics (pure);
//! - [`telemetry`]: logging, metrics and shutdown set-up of the binaries;
//! - [`verify`]: verification of the hash chain and order of the log.

pub mod auth;
pub mod config;
pub mod domain;
pub mod envelope;
pub mod problem;
pub mod projection;
pub mod store;
pub mod telemetry;
pub mod verify;

/// The migrations of the whole database, applied at start-up by every
/// service (sqlx serialises concurrent runs with an advisory lock).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
