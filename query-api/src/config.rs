//! The query API's configuration, read from flags or the environment (every
//! variable is listed with its default in `.env.example`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{parse_duration, RedisSettings, TokenSettings};

/// Serves the read models (from memory, Redis and the read replica) and the
/// audit endpoints over the event log.
#[derive(Debug, Clone, Parser)]
#[command(name = "query-api", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "QUERY_API_ADDR", default_value = "127.0.0.1:8082")]
    pub addr: SocketAddr,

    /// The read replicas (hot standbys of the primary), as the query API's
    /// own read-only role, separated by commas in order of preference (the
    /// first that has reached the wanted position serves; another takes
    /// over when it fails or falls behind); empty means read the primary.
    #[arg(
        long,
        env = "REPLICA_DATABASE_URL",
        default_value = "postgres://research_query:research@127.0.0.1:5433/research"
    )]
    pub replica_database_url: String,

    /// The primary, read only when no replica is configured (same role).
    #[arg(
        long,
        env = "QUERY_API_DATABASE_URL",
        default_value = "postgres://research_query:research@127.0.0.1:5432/research"
    )]
    pub database_url: String,

    /// Connections to each replica.
    #[arg(long, env = "QUERY_API_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,

    #[command(flatten)]
    pub redis: RedisSettings,

    /// Bytes of documents kept in process memory.
    #[arg(long, env = "QUERY_API_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub cache_bytes: usize,

    /// Bytes of Merkle tree tiles (with their inner nodes) kept in process
    /// memory for proofs; 64 MiB hold the tiles of about a million events.
    #[arg(long, env = "QUERY_API_TILE_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub tile_cache_bytes: usize,

    /// Longest wait for a `Consistency-Token` position before a 503.
    #[arg(long, env = "QUERY_API_CONSISTENCY_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub consistency_timeout: Duration,

    /// Interval of the replica's change-feed poll when nobody waits (it
    /// polls every few milliseconds while a wanted position is not there).
    #[arg(long, env = "QUERY_API_POLL_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Longest time a request may take before it is answered 503.
    #[arg(long, env = "QUERY_API_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    #[command(flatten)]
    pub tokens: TokenSettings,

    /// The verifier key of the log's checkpoints (`log-key` prints it),
    /// served at `/v1/audit/log-key`; empty: none is served.
    #[arg(long, env = "LOG_VERIFIER_KEY", default_value = "")]
    pub log_verifier_key: String,
}

impl Config {
    /// The database reads go to.
    pub fn read_url(&self) -> &str {
        if self.replica_database_url.is_empty() {
            &self.database_url
        } else {
            &self.replica_database_url
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_well_formed() {
        super::Config::command().debug_assert();
    }
}
