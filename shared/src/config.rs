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
    /// NATS servers with JetStream, separated by commas (the nodes of a
    /// cluster; the client also learns the others from the one it reaches).
    #[arg(
        id = "nats_url",
        long = "nats-url",
        value_name = "NATS_URL",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: NatsServers,

    /// Copies JetStream keeps of the event stream (1 on a single server,
    /// 3 on a cluster of three or more); applied when the stream is created
    /// or updated.
    #[arg(
        id = "nats_stream_replicas",
        long = "nats-stream-replicas",
        value_name = "NATS_STREAM_REPLICAS",
        env = "NATS_STREAM_REPLICAS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u8).range(1..=5)
    )]
    pub stream_replicas: u8,

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

impl NatsSettings {
    /// The settings of the servers `url`, with the default stream.
    pub fn at(url: &str) -> Result<Self, ListError> {
        Ok(Self {
            url: url.parse()?,
            stream: "RESEARCH_EVENTS".to_owned(),
            subject_prefix: "research".to_owned(),
            stream_replicas: 1,
        })
    }

    /// Connects as `name` to the first server that answers, trying them
    /// all again and again until one does. A server that stops answering
    /// (partitioned away, frozen) is left for another after about three
    /// missed pings of [`NATS_PING_INTERVAL`], not the client's default
    /// minutes.
    pub async fn connect(
        &self,
        name: &str,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        async_nats::ConnectOptions::new()
            .name(name)
            .ping_interval(NATS_PING_INTERVAL)
            .retry_on_initial_connect()
            .connect(self.url.servers.clone())
            .await
    }
}

/// How often the services ping their NATS server.
pub const NATS_PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// One or more NATS servers, as given: `nats://a:4222,nats://b:4222`.
#[derive(Debug, Clone)]
pub struct NatsServers {
    text: String,
    servers: Vec<async_nats::ServerAddr>,
}

impl NatsServers {
    pub fn servers(&self) -> &[async_nats::ServerAddr] {
        &self.servers
    }
}

impl std::fmt::Display for NatsServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for NatsServers {
    type Err = ListError;

    fn from_str(list: &str) -> Result<Self, ListError> {
        Ok(Self {
            text: list.to_owned(),
            servers: parse_list(list, |s| s.parse::<async_nats::ServerAddr>())?,
        })
    }
}

/// An element of a comma-separated list that is empty or does not parse.
#[derive(Debug, thiserror::Error)]
#[error("element {index} of the list: {reason}")]
pub struct ListError {
    /// From 1.
    pub index: usize,
    pub reason: String,
}

/// Splits a comma-separated list, trimming each element; an empty list or
/// element is refused.
pub fn parse_list<T, E: std::fmt::Display>(
    list: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, ListError> {
    list.split(',')
        .map(str::trim)
        .enumerate()
        .map(|(i, item)| {
            let error = |reason: String| ListError {
                index: i + 1,
                reason,
            };
            if item.is_empty() {
                return Err(error("empty".to_owned()));
            }
            parse(item).map_err(|e| error(e.to_string()))
        })
        .collect()
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
    fn a_list_of_nats_servers_keeps_its_order_and_refuses_empty_elements() {
        let list: NatsServers = "nats://a:4222, nats://b:4223,nats://c:4224"
            .parse()
            .unwrap();
        let ports: Vec<u16> = list.servers().iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(
            list.to_string(),
            "nats://a:4222, nats://b:4223,nats://c:4224"
        );
        let empty = "nats://a:4222,,nats://b:4222"
            .parse::<NatsServers>()
            .unwrap_err();
        assert_eq!(empty.index, 2);
        assert!("".parse::<NatsServers>().is_err());
        assert!("nats://a:4222,ftp://b".parse::<NatsServers>().is_err());
    }

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
