//! Verification of the event log, one event at a time in position order
//! and in constant memory (but for one version number per aggregate): the
//! hash chain, positions 1..N without a hole, contiguous stream versions,
//! and, given a pinned head, that the log up to it is unchanged. The
//! procedure is specified in `docs/event-log.md`.

use std::collections::HashMap;

use uuid::Uuid;

use crate::envelope::{StoredEvent, GENESIS_HASH};
use crate::merkle::{leaf_hash, Frontier, Hash};

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

/// A tree size the log must have a known root at: a signed checkpoint or
/// the one an auditor's verifier remembers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedRoot {
    pub size: u64,
    pub root: Hash,
    /// What vouches for it, for failure messages.
    pub source: String,
}

/// Rebuilds the Merkle tree over the log while it is replayed (leaf i is
/// the hash of the event at position i + 1), in constant memory, and checks
/// it against known roots and, when given, the leaves an earlier run
/// verified. Names the first position that differs: exactly against
/// earlier leaves, otherwise as the range between the last root the log
/// still matches and the first it does not.
pub struct TreeCheck {
    frontier: Frontier,
    /// Known roots by size, smallest first; `next` is the first not reached.
    expected: Vec<ExpectedRoot>,
    next: usize,
    /// The largest size whose known root matched.
    matched: u64,
    earlier: Option<Box<dyn std::io::Read>>,
    earlier_len: u64,
}

impl TreeCheck {
    /// `earlier` yields the 32-byte leaves of an earlier verification
    /// (`earlier_len` of them).
    pub fn new(
        mut expected: Vec<ExpectedRoot>,
        earlier: Option<(Box<dyn std::io::Read>, u64)>,
    ) -> Self {
        expected.sort_by_key(|e| e.size);
        let (earlier, earlier_len) = match earlier {
            Some((reader, len)) => (Some(reader), len),
            None => (None, 0),
        };
        Self {
            frontier: Frontier::default(),
            expected,
            next: 0,
            matched: 0,
            earlier,
            earlier_len,
        }
    }

    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Adds the next event's hash (position = size + 1).
    pub fn push(&mut self, hash: &Hash) -> Result<(), Failure> {
        let position = self.frontier.size() as i64 + 1;
        if self.frontier.size() < self.earlier_len {
            if let Some(reader) = self.earlier.as_mut() {
                let mut before = [0u8; 32];
                reader.read_exact(&mut before).map_err(|e| Failure {
                    position,
                    reason: format!("the leaves verified earlier cannot be read: {e}"),
                })?;
                if &before != hash {
                    return Err(Failure {
                        position,
                        reason: format!(
                            "the event's hash is {} but was {} when this log was verified before: the log was changed from here on",
                            hex::encode(hash),
                            hex::encode(before)
                        ),
                    });
                }
            }
        }
        self.frontier.push_with(leaf_hash(hash), |_, _, _| {});
        let size = self.frontier.size();
        while let Some(expected) = self.expected.get(self.next).filter(|e| e.size == size) {
            if self.frontier.root() != expected.root {
                return Err(Failure {
                    position: self.matched as i64 + 1,
                    reason: format!(
                        "the first {size} events do not have the root of {} (the last known root they match is at {} events): an event from position {} to {size} was changed",
                        expected.source,
                        self.matched,
                        self.matched + 1
                    ),
                });
            }
            self.matched = size;
            self.next += 1;
        }
        Ok(())
    }

    /// Ends the replay: every known size must have been reached.
    pub fn finish(&self) -> Result<(), Failure> {
        match self.expected.last() {
            Some(largest) if largest.size > self.frontier.size() => Err(Failure {
                position: self.frontier.size() as i64 + 1,
                reason: format!(
                    "the log ends at position {} but {} covers {} events: events were removed",
                    self.frontier.size(),
                    largest.source,
                    largest.size
                ),
            }),
            _ => Ok(()),
        }
    }
}
