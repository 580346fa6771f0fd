//! The projector's configuration, read from flags or the environment (every
//! variable is listed with its default in `.env.example`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use shared::config::{parse_duration, MigrationSettings, NatsSettings, RedisSettings};

/// Builds the read models from the event stream. Without a command it runs
/// the projection until SIGTERM.
#[derive(Debug, Clone, Parser)]
#[command(name = "projector", version, about)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Offline>,

    /// Address of /livez, /readyz and /metrics.
    #[arg(long, env = "PROJECTOR_ADDR", default_value = "127.0.0.1:8083")]
    pub addr: SocketAddr,

    /// PostgreSQL primary (event store and read tables), as the projector's
    /// own role: it reads events and owns only the read models.
    #[arg(
        long,
        env = "PROJECTOR_DATABASE_URL",
        default_value = "postgres://research_projector:research@127.0.0.1:5432/research"
    )]
    pub database_url: String,

    #[command(flatten)]
    pub migration: MigrationSettings,

    #[command(flatten)]
    pub nats: NatsSettings,

    /// Name of the durable JetStream consumer.
    #[arg(long, env = "PROJECTOR_CONSUMER", default_value = "projector")]
    pub consumer: String,

    /// How long to wait for messages before looking at the event store.
    #[arg(long, env = "PROJECTOR_IDLE_WAIT", default_value = "500ms", value_parser = parse_duration)]
    pub idle_wait: Duration,

    /// Most events applied in one transaction.
    #[arg(long, env = "PROJECTOR_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,

    #[command(flatten)]
    pub redis: RedisSettings,
}

/// The projector's one-off jobs.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum Offline {
    /// Replays the whole event store into fresh tables beside the live ones
    /// and switches to them atomically once caught up.
    Rebuild,
    /// Replays the event store into a scratch schema and compares every
    /// document with the live read models; exits 1 at the first difference.
    VerifyReplay,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_flags_are_well_formed() {
        super::Config::command().debug_assert();
    }
}
