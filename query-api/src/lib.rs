//! The query API: precomputed documents from three tiers (process memory,
//! Redis, the read replica), consistent with a `Consistency-Token` when one
//! is given, and the audit endpoints over the event log.
//!
//! Layout:
//! - [`routes`]: every route, health, metrics and the OpenAPI document in
//!   the common layers; [`state`]: what the handlers share;
//! - [`reads`]: the reader's endpoints (documents, pages, the export);
//! - [`access`]: what every handler checks at the edge (role, ids,
//!   `Consistency-Token`);
//! - [`audit`]: the auditor's endpoints (event export, as-of replay, chain
//!   verification, checkpoints, proofs, receipts, tiles);
//! - [`proofs`]: the newest checkpoint and the tree's tiles in memory;
//! - [`documents`]: the tiered lookup with single flight;
//! - [`memory_tier`]: the in-process tier, bounded in bytes;
//! - [`redis_tier`]: the Redis tier and the projector's announcements;
//! - [`replica`]: every statement sent to the read replica;
//! - [`freshness`]: the task that follows the replica's change feed;
//! - [`pages`]: keyset cursors and page bodies;
//! - [`encoding`]: content-coding negotiation and compression;
//! - [`openapi`]: the OpenAPI 3.1 document;
//! - [`config`], the settings.

pub mod access;
pub mod audit;
pub mod config;
pub mod documents;
pub mod encoding;
pub mod freshness;
pub mod memory_tier;
pub mod openapi;
pub mod pages;
pub mod proofs;
pub mod reads;
pub mod redis_tier;
pub mod replica;
pub mod routes;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::telemetry::PrometheusHandle;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::documents::Documents;
use crate::freshness::Freshness;
use crate::memory_tier::Cache;
use crate::redis_tier::RedisTier;
use crate::replica::Replica;

/// The state and the background tasks (the change-feed poller and the Redis
/// tier), stopped when this is dropped.
pub struct App {
    pub state: Arc<QueryState>,
    tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Builds the state and starts the background tasks. The replica is
    /// connected to lazily: the service starts (and says it is not ready)
    /// while the replica is down.
    pub async fn start(config: &Config, metrics: Option<PrometheusHandle>) -> anyhow::Result<Self> {
        let urls =
            shared::config::parse_list(config.read_url(), |url| url.parse::<PgConnectOptions>())
                .context("parsing REPLICA_DATABASE_URL (a comma-separated list of URLs)")?;
        // No ping before each use: a read is one statement, and a broken
        // connection fails that statement (a 503) and is dropped anyway.
        let pools = urls
            .into_iter()
            .map(|options| {
                let name = format!(
                    "{}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or_default()
                );
                let pool = PgPoolOptions::new()
                    .max_connections(config.db_pool)
                    .acquire_timeout(Duration::from_secs(1))
                    .test_before_acquire(false)
                    .connect_lazy_with(options.application_name("query-api"));
                (name, pool)
            })
            .collect();
        let replica = Arc::new(Replica::new(pools));
        let cache = Arc::new(Cache::new(config.cache_bytes));
        let freshness = Arc::new(Freshness::new(
            cache.clone(),
            replica.clone(),
            config.poll_interval,
        ));
        let mut tasks = Vec::new();
        let redis = if config.redis.url.is_empty() {
            None
        } else {
            let tier = RedisTier::new(&config.redis.url, config.redis.prefix.clone())
                .context("configuring Redis")?;
            tasks.push(tokio::spawn(tier.clone().run(freshness.clone())));
            Some(tier)
        };
        // The first poll settles the freshness mark; without it nothing is
        // admitted to memory. A replica that does not answer yet is polled
        // again by the task.
        if let Err(error) = freshness.poll().await {
            tracing::warn!(%error, "the read replica does not answer yet");
        }
        tasks.push(tokio::spawn(freshness.clone().run()));
        let state = Arc::new(QueryState {
            docs: Documents::new(cache, redis, replica),
            freshness,
            auth: config.tokens.authenticator(),
            consistency_timeout: config.consistency_timeout,
            request_timeout: config.request_timeout,
            metrics,
            proofs: proofs::Proofs::new(config.tile_cache_bytes),
            log_key: match config.log_verifier_key.as_str() {
                "" => None,
                key => Some(
                    shared::checkpoint::NoteVerifier::parse(key)
                        .context("LOG_VERIFIER_KEY is not a signed-note verifier key")?,
                ),
            },
        });
        Ok(Self { state, tasks })
    }

    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub use state::QueryState;
