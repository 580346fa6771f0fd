//! What every handler of the query API shares.

use std::sync::Arc;
use std::time::Duration;

use shared::auth::{Authenticator, HasAuthenticator};
use shared::telemetry::PrometheusHandle;

use crate::documents::Documents;
use crate::freshness::Freshness;
use crate::proofs;

pub struct QueryState {
    pub docs: Documents,
    pub freshness: Arc<Freshness>,
    pub auth: Authenticator,
    pub consistency_timeout: Duration,
    pub request_timeout: Duration,
    pub metrics: Option<PrometheusHandle>,
    /// The checkpoints' verifier key, checked at start-up.
    pub log_key: Option<shared::checkpoint::NoteVerifier>,
    /// The newest checkpoint and the tree's tiles, for proofs.
    pub proofs: proofs::Proofs,
}

impl HasAuthenticator for QueryState {
    fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

pub type Shared = Arc<QueryState>;
