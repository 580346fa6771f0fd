//! Receipts: one JSON document that proves an observation's history
//! offline, years later, with nothing but the log's verifier key trusted
//! beforehand (`GET /v1/audit/observations/{id}/receipt`). Verifying one
//! checks the checkpoint's signature, recomputes each event's hash from
//! its contents and proves each event's inclusion in the signed tree.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::checkpoint::{Checkpoint, NoteError, NoteVerifier};
use crate::envelope::{parse_hash, StoredEvent};
use crate::merkle::{leaf_hash, verify_inclusion, Hash};

/// A receipt as served (the events are the CloudEvents text as it is).
#[derive(Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub observation_id: Uuid,
    /// The signed note of the checkpoint the proofs are against.
    pub checkpoint: String,
    /// The verifier key the service names (never trusted by itself).
    pub log_key: Option<String>,
    pub events: Vec<Box<RawValue>>,
    pub proofs: Vec<InclusionProof>,
}

/// An inclusion proof as the proof endpoint answers it, hashes in hex.
#[derive(Debug, Serialize, Deserialize)]
pub struct InclusionProof {
    pub position: i64,
    pub tree_size: u64,
    pub leaf_hash: String,
    pub hashes: Vec<String>,
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("not a receipt: {0}")]
    Malformed(String),
    #[error("the checkpoint does not verify with the trusted key: {0}")]
    Checkpoint(NoteError),
    #[error("position {position}: {reason}")]
    Event { position: i64, reason: String },
}

/// What a verified receipt proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub observation_id: Uuid,
    pub checkpoint: Checkpoint,
    /// The observation's events, in stream order.
    pub positions: Vec<i64>,
}

impl Receipt {
    pub fn parse(json: &str) -> Result<Self, ReceiptError> {
        serde_json::from_str(json).map_err(|e| ReceiptError::Malformed(e.to_string()))
    }

    /// Verifies the receipt against `key` (trusted beforehand) for the log
    /// named `origin`.
    pub fn verify(&self, key: &NoteVerifier, origin: &str) -> Result<Proven, ReceiptError> {
        let checkpoint =
            Checkpoint::verify(&self.checkpoint, key, origin).map_err(ReceiptError::Checkpoint)?;
        if self.events.is_empty() {
            return Err(ReceiptError::Malformed("it holds no event".into()));
        }
        if self.events.len() != self.proofs.len() {
            return Err(ReceiptError::Malformed(
                "it holds a different number of events and proofs".into(),
            ));
        }
        let mut positions = Vec::with_capacity(self.events.len());
        for (n, (raw, proof)) in self.events.iter().zip(&self.proofs).enumerate() {
            let event = StoredEvent::from_cloud_event(raw.get()).map_err(|e| {
                ReceiptError::Malformed(format!("event {} is not an event of this log: {e}", n + 1))
            })?;
            let fail = |reason: String| ReceiptError::Event {
                position: event.position,
                reason,
            };
            if event.aggregate_id != self.observation_id || event.aggregate_type != "observation" {
                return Err(fail("the event is not one of this observation's".into()));
            }
            if event.stream_version != n as i64 + 1 {
                return Err(fail(format!(
                    "the observation's events must run from version 1 without a gap; this is version {}",
                    event.stream_version
                )));
            }
            if event.compute_hash() != event.hash {
                return Err(fail(
                    "the event's hash does not match its contents (the event was changed)".into(),
                ));
            }
            if proof.position != event.position || proof.tree_size != checkpoint.size {
                return Err(fail(format!(
                    "the proof is for position {} in a tree of {}, not this event in the checkpoint's tree of {}",
                    proof.position, proof.tree_size, checkpoint.size
                )));
            }
            let leaf = leaf_hash(&event.hash);
            if parse_hash(&proof.leaf_hash) != Some(leaf) {
                return Err(fail("the proof's leaf hash is not the event's".into()));
            }
            let hashes: Vec<Hash> = proof
                .hashes
                .iter()
                .map(|h| {
                    parse_hash(h).ok_or_else(|| fail("a proof hash is not 64 hex digits".into()))
                })
                .collect::<Result<_, _>>()?;
            let index = u64::try_from(event.position - 1)
                .map_err(|_| fail("the position is not a position of the log".into()))?;
            verify_inclusion(index, checkpoint.size, &leaf, &hashes, &checkpoint.root).map_err(
                |e| {
                    fail(format!(
                        "the event is not in the signed tree of {} events: {e}",
                        checkpoint.size
                    ))
                },
            )?;
            positions.push(event.position);
        }
        Ok(Proven {
            observation_id: self.observation_id,
            checkpoint,
            positions,
        })
    }
}
