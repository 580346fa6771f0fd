//! The command API's configuration, read from flags or the environment
//! (every variable is listed with its default in `.env.example`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{parse_duration, MigrationSettings, NatsSettings, TokenSettings};

/// Validates research commands, appends their events to PostgreSQL and
/// publishes them to NATS JetStream.
#[derive(Debug, Clone, Parser)]
#[command(name = "command-api", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "COMMAND_API_ADDR", default_value = "127.0.0.1:8081")]
    pub addr: SocketAddr,

    /// PostgreSQL primary (the event store), as the command API's own role,
    /// which may only read and append events (docs/security.md).
    #[arg(
        long,
        env = "COMMAND_API_DATABASE_URL",
        default_value = "postgres://research_command:research@127.0.0.1:5432/research"
    )]
    pub database_url: String,

    #[command(flatten)]
    pub migration: MigrationSettings,

    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "COMMAND_API_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    #[command(flatten)]
    pub nats: NatsSettings,

    #[command(flatten)]
    pub tokens: TokenSettings,

    /// The key that signs checkpoints of the log's Merkle tree, in the
    /// signed-note form `PRIVATE+KEY+<name>+<id>+<base64>`; empty: no
    /// checkpoints are signed (the tree is not kept either).
    #[arg(
        long,
        env = "LOG_SIGNING_KEY",
        default_value = "",
        hide_env_values = true
    )]
    pub log_signing_key: String,

    /// A file holding that key (read when `LOG_SIGNING_KEY` is empty).
    #[arg(long, env = "LOG_SIGNING_KEY_FILE", default_value = "")]
    pub log_signing_key_file: String,

    /// The origin line of every checkpoint: the log's name.
    #[arg(
        long,
        env = "LOG_ORIGIN",
        default_value = "research-records.example/log"
    )]
    pub log_origin: String,

    /// Most events added to the Merkle tree in one transaction (the tree
    /// catches up batch after batch; a crash loses at most one).
    #[arg(long, env = "LOG_TREE_BATCH", default_value_t = 10_000,
          value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub log_tree_batch: i64,

    /// Longest time a request may take before it is answered 503.
    #[arg(long, env = "COMMAND_API_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Bytes of aggregate states kept in memory for deciding commands
    /// (estimated); studies, subjects and recently read observations are
    /// kept first.
    #[arg(long, env = "COMMAND_API_STATE_CACHE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub state_cache_bytes: usize,

    /// Most append requests written in one transaction.
    #[arg(long, env = "COMMAND_API_MAX_APPEND_BATCH", default_value_t = 2000)]
    pub max_append_batch: usize,

    /// Connections appending side by side (their batches queue on one lock).
    #[arg(long, env = "COMMAND_API_APPENDER_CONNECTIONS", default_value_t = 2)]
    pub appender_connections: usize,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_well_formed() {
        super::Config::command().debug_assert();
    }
}
