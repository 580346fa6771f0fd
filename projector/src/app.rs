//! A started projector: the projection loop, its Redis sink, and the small
//! HTTP server of `/livez`, `/readyz` and `/metrics`.

use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use shared::problem::Problem;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::redis_sink::RedisSink;
use crate::{Projector, ProjectorConfig};

/// Connects to PostgreSQL as the projector's role.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&config.database_url)
        .await
        .context("connecting to PostgreSQL")
}

/// What `/readyz` looks at.
struct Health {
    pool: PgPool,
    projection: Arc<shared::loop_health::LoopHealth>,
    leading: Arc<std::sync::atomic::AtomicBool>,
}

pub struct App {
    projector: Projector,
    router: Router,
}

impl App {
    /// Connects to PostgreSQL, NATS (when it answers: the projector works
    /// from the event store without it) and Redis, and reads the checkpoint.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let metrics =
            shared::telemetry::install_metrics().context("installing the metrics recorder")?;
        let pool = connect(config).await?;
        let js = match config.nats.connect("projector").await {
            Ok(client) => Some(async_nats::jetstream::new(client)),
            Err(error) => {
                tracing::warn!(%error, "NATS unreachable; projecting from the event store");
                None
            }
        };
        let settings = ProjectorConfig {
            nats_stream: config.nats.stream.clone(),
            subject_prefix: config.nats.subject_prefix.clone(),
            consumer: config.consumer.clone(),
            idle_wait: config.idle_wait,
            max_batch: config.max_batch,
        };
        let mut projector = Projector::new(pool.clone(), js, settings).await?;
        if !config.redis.url.is_empty() {
            let sink =
                RedisSink::start(&config.redis.url, config.redis.prefix.clone(), pool.clone())
                    .context("configuring Redis")?;
            projector = projector.with_redis(sink);
        }
        let health = Arc::new(Health {
            pool,
            projection: projector.health.clone(),
            leading: projector.leading(),
        });
        let router = Router::new()
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(health)
            .route("/metrics", get(move || async move { metrics.render() }));
        Ok(Self { projector, router })
    }

    /// Serves health on `addr` and projects until `shutdown`.
    pub async fn run(
        self,
        addr: std::net::SocketAddr,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let http_shutdown = shutdown.clone();
        let http = tokio::spawn(async move {
            axum::serve(
                shared::listener::ProblemListener::new(listener),
                self.router,
            )
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
            .await
        });
        self.projector.run(shutdown).await;
        let _ = http.await;
        Ok(())
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> Response {
    let db = sqlx::query("SELECT 1").execute(&health.pool).await.is_ok();
    let projection = health.projection.report();
    let role = if health.leading.load(std::sync::atomic::Ordering::Relaxed) {
        "leading"
    } else {
        "standing by"
    };
    if db && health.projection.is_ok() {
        Json(json!({"postgres": db, "role": role, "projection": projection})).into_response()
    } else {
        Problem::unavailable("the projector cannot make progress")
            .with("postgres", db)
            .with("role", role)
            .with("projection", projection)
            .into_response()
    }
}
