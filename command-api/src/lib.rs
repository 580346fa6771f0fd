//! The command API: validates commands, appends their events to the event
//! store in PostgreSQL and publishes them to NATS JetStream.
//!
//! Layout:
//! - [`config`]: flags and environment;
//! - [`routes`]: the routes, health, metrics and the OpenAPI document in
//!   the common layers; [`handlers`]: the command and batch handlers;
//!   [`state`]: what they share;
//! - [`input`]: request bodies into domain commands;
//! - [`answers`]: the documented answer bodies, serialized;
//! - [`openapi`]: the OpenAPI document, generated from the handlers;
//! - [`engine`]: load state, decide, append, retry;
//! - [`state_cache`]: aggregate states kept in memory;
//! - [`idempotency`]: durable `Idempotency-Key` answers;
//! - [`publisher`]: the outbox that publishes committed events;
//! - [`checkpointer`]: the Merkle tree and its signed checkpoints;
//! - [`error`]: `ApiError` and its problem details.

pub mod answers;
pub mod checkpointer;
pub mod config;
pub mod engine;
pub mod error;
pub mod handlers;
pub mod idempotency;
pub mod input;
pub mod openapi;
pub mod publisher;
pub mod routes;
pub mod state;
pub mod state_cache;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shared::loop_health::LoopHealth;
use shared::store::{AppenderConfig, EventStore};
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::Engine;
use crate::publisher::PublisherConfig;
use crate::state::AppState;

/// A started command API: its state and background tasks, ready to serve.
pub struct App {
    pub state: Arc<AppState>,
    appender: JoinHandle<()>,
    publisher: JoinHandle<()>,
    housekeeping: JoinHandle<()>,
    checkpointer: Option<JoinHandle<()>>,
    stop_background: CancellationToken,
}

impl App {
    /// Applies migrations (when given the owner's URL), connects to
    /// PostgreSQL and NATS, makes sure the
    /// stream exists and starts the appender and the publisher.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        config.migration.apply().await?;
        let pool = PgPoolOptions::new()
            .max_connections(config.db_pool)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&config.database_url)
            .await
            .with_context(|| {
                format!(
                    "connecting to PostgreSQL at {}",
                    redact(&config.database_url)
                )
            })?;
        let nats = config
            .nats
            .connect("command-api")
            .await
            .with_context(|| format!("connecting to NATS at {}", config.nats.url))?;
        let js = async_nats::jetstream::new(nats.clone());
        let publisher_config = PublisherConfig {
            stream: config.nats.stream.clone(),
            subject_prefix: config.nats.subject_prefix.clone(),
            duplicate_window: Duration::from_secs(120),
            replicas: config.nats.stream_replicas.into(),
        };
        publisher::ensure_stream(&js, &publisher_config).await?;

        let (store, appender) = EventStore::start(
            pool.clone(),
            AppenderConfig {
                max_batch: config.max_append_batch,
                connections: config.appender_connections,
            },
        );
        let stop_background = CancellationToken::new();
        let signer =
            checkpointer::signer_from(&config.log_signing_key, &config.log_signing_key_file)?;
        let (checkpointer, checkpointing) = match signer {
            None => (None, None),
            Some(signer) => {
                let checkpoints = checkpointer::CheckpointerConfig {
                    signer,
                    origin: config.log_origin.clone(),
                    batch: config.log_tree_batch,
                    stream: format!("{}_CHECKPOINTS", config.nats.stream),
                    subject: format!("{}-checkpoints", config.nats.subject_prefix),
                    replicas: config.nats.stream_replicas.into(),
                };
                checkpointer::ensure_stream(&js, &checkpoints).await?;
                let health = Arc::new(LoopHealth::new("checkpointer"));
                let task = tokio::spawn(checkpointer::run(
                    pool.clone(),
                    js.clone(),
                    checkpoints,
                    health.clone(),
                    stop_background.clone(),
                ));
                (Some(task), Some(health))
            }
        };
        let publishing = Arc::new(LoopHealth::new("publisher"));
        let publisher = tokio::spawn(publisher::run(
            pool.clone(),
            js,
            publisher_config,
            store.committed(),
            publishing.clone(),
            stop_background.clone(),
        ));
        let housekeeping = tokio::spawn(purge_idempotency_keys(
            pool.clone(),
            stop_background.clone(),
        ));
        let state = Arc::new(AppState {
            engine: Engine::new(store, config.state_cache_bytes, Some(nats.clone())),
            auth: config.tokens.authenticator(),
            nats,
            publishing,
            checkpointing,
            request_timeout: config.request_timeout,
            metrics: shared::telemetry::install_metrics(),
        });
        Ok(Self {
            state,
            appender,
            publisher,
            housekeeping,
            checkpointer,
            stop_background,
        })
    }

    /// Serves until `shutdown` resolves, lets in-flight commands finish,
    /// then drains the appender and the publisher.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let router = routes::router(self.state.clone());
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "command-api listening");
        axum::serve(shared::listener::ProblemListener::new(listener), router)
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving HTTP")?;
        tracing::info!("no more requests; finishing appends and publishing");
        let Self {
            state,
            appender,
            publisher,
            housekeeping,
            checkpointer,
            stop_background,
        } = self;
        // The appender ends once every handle to the store is gone.
        drop(state);
        let _ = tokio::time::timeout(Duration::from_secs(10), appender).await;
        stop_background.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
        let _ = housekeeping.await;
        if let Some(checkpointer) = checkpointer {
            let _ = tokio::time::timeout(Duration::from_secs(10), checkpointer).await;
        }
        tracing::info!("command-api stopped");
        Ok(())
    }
}

async fn purge_idempotency_keys(pool: sqlx::PgPool, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match idempotency::purge_expired(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired idempotency keys deleted"),
            Err(error) => tracing::warn!(
                error = format!("{error:#}"),
                "purging idempotency keys failed"
            ),
        }
    }
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
