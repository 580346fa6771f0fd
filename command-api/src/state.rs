//! What every handler of the command API shares.

use std::sync::Arc;
use std::time::Duration;

use shared::auth::{Authenticator, HasAuthenticator};
use shared::loop_health::LoopHealth;

use crate::engine::Engine;

pub struct AppState {
    pub engine: Engine,
    pub auth: Authenticator,
    pub nats: async_nats::Client,
    /// The outbox publisher's progress (red readiness when it is stuck).
    pub publishing: Arc<LoopHealth>,
    /// The checkpointer's progress, when checkpoints are signed.
    pub checkpointing: Option<Arc<LoopHealth>>,
    pub request_timeout: Duration,
    pub metrics: Option<shared::telemetry::PrometheusHandle>,
}

impl HasAuthenticator for AppState {
    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

pub type Shared = Arc<AppState>;
