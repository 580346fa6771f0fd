//! The services' configuration: the settings more than one service takes,
//! defined once (flattened into each service's flags), and parsing helpers.
//! Every variable is listed with its default in `.env.example`.

use std::time::Duration;

use crate::auth::Authenticator;

/// The bearer tokens every service checks.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenSettings {
    /// Secret of the HS256 bearer tokens (shared by all services).
    #[arg(
        id = "jwt_secret",
        long = "jwt-secret",
        value_name = "JWT_SECRET",
        env = "JWT_SECRET",
        hide_env_values = true
    )]
    pub secret: String,

    /// Required `iss` claim, when set.
    #[arg(
        id = "jwt_issuer",
        long = "jwt-issuer",
        value_name = "JWT_ISSUER",
        env = "JWT_ISSUER"
    )]
    pub issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(
        id = "jwt_audience",
        long = "jwt-audience",
        value_name = "JWT_AUDIENCE",
        env = "JWT_AUDIENCE"
    )]
    pub audience: Option<String>,
}

impl TokenSettings {
    /// Settings that accept tokens signed with `secret`, with no `iss` or
    /// `aud` required.
    pub fn with_secret(secret: &str) -> Self {
        Self {
            secret: secret.to_owned(),
            issuer: None,
            audience: None,
        }
    }

    pub fn authenticator(&self) -> Authenticator {
        Authenticator::new(
            self.secret.as_bytes(),
            self.issuer.as_deref(),
            self.audience.as_deref(),
        )
    }
}

/// NATS JetStream, where the events are published and consumed.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsSettings {
    /// NATS server with JetStream.
    #[arg(
        id = "nats_url",
        long = "nats-url",
        value_name = "NATS_URL",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,

    /// JetStream stream of the events.
    #[arg(
        id = "nats_stream",
        long = "nats-stream",
        value_name = "NATS_STREAM",
        env = "NATS_STREAM",
        default_value = "RESEARCH_EVENTS"
    )]
    pub stream: String,

    /// First token of every event's subject (`<prefix>.<aggregate>.<id>`).
    #[arg(
        id = "nats_subject_prefix",
        long = "nats-subject-prefix",
        value_name = "NATS_SUBJECT_PREFIX",
        env = "NATS_SUBJECT_PREFIX",
        default_value = "research"
    )]
    pub subject_prefix: String,
}

/// Redis, which the projector warms and the query API reads.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisSettings {
    /// Redis URL; empty: no Redis tier.
    #[arg(
        id = "redis_url",
        long = "redis-url",
        value_name = "REDIS_URL",
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub url: String,

    /// Prefix of every Redis key and channel (shared by the projector and
    /// the query API).
    #[arg(
        id = "redis_prefix",
        long = "redis-prefix",
        value_name = "REDIS_PREFIX",
        env = "REDIS_PREFIX",
        default_value = "research"
    )]
    pub prefix: String,
}

/// Who applies the migrations at start-up.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MigrationSettings {
    /// The database's owner, to apply the migrations at start-up; empty:
    /// the migrations are applied by someone else.
    #[arg(
        id = "migration_database_url",
        long = "migration-database-url",
        value_name = "MIGRATION_DATABASE_URL",
        env = "MIGRATION_DATABASE_URL",
        default_value = "",
        hide_env_values = true
    )]
    pub owner_url: String,
}

impl MigrationSettings {
    /// Applies the migrations when an owner is configured.
    pub async fn apply(&self) -> Result<(), crate::MigrateError> {
        crate::migrate(Some(&self.owner_url)).await
    }
}

/// Parses `250ms`, `30s`, `5m` or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| !c.is_ascii_digit())
        .map_or((raw, "s"), |i| raw.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration like 250ms, 30s or 5m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{raw:?} has an unknown unit (use ms, s or m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
