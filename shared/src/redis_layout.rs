//! The Redis layout shared by its one writer (the projector) and its
//! readers (the query API). Every key starts with a configurable prefix.
//!
//! - `<prefix>:doc:<kind>:<id>`: a hash of `p` (the position of the last
//!   event that changed the document), `b` (the document's JSON bytes) and
//!   `s` (the study it belongs to; its own id for a study).
//! - `<prefix>:code:<code>`: the id of the study with that code.
//! - `<prefix>:through`: a position X such that every document whose latest
//!   change is at or below X is held at that version or newer, or not at
//!   all. Readers use it to know whether a document from Redis is current.
//! - channel `<prefix>:invalidations`: the new `through` each time it moves.

use uuid::Uuid;

pub fn doc_key(prefix: &str, kind: &str, id: &Uuid) -> String {
    format!("{prefix}:doc:{kind}:{id}")
}

pub fn code_key(prefix: &str, code: &str) -> String {
    format!("{prefix}:code:{code}")
}

pub fn through_key(prefix: &str) -> String {
    format!("{prefix}:through")
}

pub fn invalidation_channel(prefix: &str) -> String {
    format!("{prefix}:invalidations")
}
