//! Verification of the event log, one event at a time in position order
//! and in constant memory (but for one version number per aggregate): the
//! hash chain, positions 1..N without a hole, contiguous stream versions,
//! and, given a pinned head, that the log up to it is unchanged. The
//! procedure is specified in `docs/event-log.md`.

use std::collections::HashMap;

use uuid::Uuid;

use crate::envelope::{StoredEvent, GENESIS_HASH};

/// The first position that does not verify, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("position {position}: {reason}")]
pub struct Failure {
    pub position: i64,
    pub reason: String,
}

/// `position:hash` taken earlier by an auditor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedHead {
    pub position: i64,
    pub hash: [u8; 32],
}

impl std::str::FromStr for PinnedHead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (position, hash) = s.split_once(':').ok_or("a pinned head is position:hash")?;
        Ok(Self {
            position: position
                .parse()
                .map_err(|_| "the position is not a number")?,
            hash: crate::envelope::parse_hash(hash).ok_or("the hash is not 64 hex digits")?,
        })
    }
}

#[derive(Debug, Default)]
pub struct Verifier {
    checked: u64,
    last_position: i64,
    last_hash: Option<[u8; 32]>,
    versions: HashMap<Uuid, i64>,
    pinned: Option<PinnedHead>,
}

impl Verifier {
    pub fn new(pinned: Option<PinnedHead>) -> Self {
        Self {
            pinned,
            ..Self::default()
        }
    }

    /// Starts after `position` whose hash is `hash` (to verify a range).
    pub fn starting_after(position: i64, hash: [u8; 32]) -> Self {
        Self {
            last_position: position,
            last_hash: Some(hash),
            ..Self::default()
        }
    }

    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The position and hash of the last event checked.
    pub fn head(&self) -> (i64, [u8; 32]) {
        (self.last_position, self.last_hash.unwrap_or(GENESIS_HASH))
    }

    /// Checks the next event of the log.
    pub fn check(&mut self, e: &StoredEvent) -> Result<(), Failure> {
        let fail = |reason: String| Failure {
            position: self.last_position + 1,
            reason,
        };
        if e.position != self.last_position + 1 {
            return Err(fail(if e.position > self.last_position + 1 {
                format!(
                    "missing: the next event found is at position {}",
                    e.position
                )
            } else {
                format!(
                    "out of order: position {} follows {}",
                    e.position, self.last_position
                )
            }));
        }
        let expected_prev = self.last_hash.unwrap_or(GENESIS_HASH);
        if e.prevhash != expected_prev {
            return Err(fail("prevhash is not the previous event's hash".into()));
        }
        if e.compute_hash() != e.hash {
            return Err(fail("the hash does not match the event's contents".into()));
        }
        // A range verification starts without the earlier versions.
        let version = self
            .versions
            .entry(e.aggregate_id)
            .or_insert(e.stream_version - 1);
        if e.stream_version != *version + 1 {
            return Err(fail(format!(
                "stream {} jumps from version {} to {}",
                e.aggregate_id, version, e.stream_version
            )));
        }
        *version = e.stream_version;
        if let Some(pin) = self.pinned {
            if pin.position == e.position && pin.hash != e.hash {
                return Err(fail(
                    "the hash differs from the pinned head: the log up to it has changed".into(),
                ));
            }
        }
        self.last_position = e.position;
        self.last_hash = Some(e.hash);
        self.checked += 1;
        Ok(())
    }

    /// Ends the verification: a pinned head must have been reached.
    pub fn finish(&self) -> Result<(), Failure> {
        match self.pinned {
            Some(pin) if self.last_position < pin.position => Err(Failure {
                position: self.last_position + 1,
                reason: format!(
                    "the log ends at position {} before the pinned head {}: events were removed",
                    self.last_position, pin.position
                ),
            }),
            _ => Ok(()),
        }
    }
}
