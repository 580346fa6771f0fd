//! The stored event: its envelope, canonical bytes, SHA-256 hash chain and
//! structured-mode CloudEvents 1.0 JSON form (the published and exported
//! shape). The byte form is specified in `docs/event-log.md`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{AggregateKind, DomainEvent, EventDecodeError, EventMeta};

/// The `prevhash` of position 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Tag that opens the canonical bytes, naming the version of the form.
pub const CANONICAL_TAG: &[u8] = b"research-event/v1";

/// One event as stored in the `events` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub stream_version: i64,
    pub study_id: Uuid,
    pub event_type: String,
    pub schema_version: i16,
    /// The exact JSON text of the payload, as stored and hashed.
    pub data: String,
    pub actor: String,
    pub reason: Option<String>,
    pub correlation_id: String,
    pub causation_id: String,
    pub recorded_at: DateTime<Utc>,
    pub prevhash: [u8; 32],
    pub hash: [u8; 32],
}

/// RFC 3339 in UTC with exactly six fractional digits: the one textual form
/// of a recorded time, in the canonical bytes and in every rendering.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl StoredEvent {
    /// The canonical bytes of the event without its hash: the tag, then each
    /// field as a 4-byte big-endian length followed by its UTF-8 bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let position = self.position.to_string();
        let event_id = self.event_id.to_string();
        let aggregate_id = self.aggregate_id.to_string();
        let stream_version = self.stream_version.to_string();
        let study_id = self.study_id.to_string();
        let schema_version = self.schema_version.to_string();
        let recorded_at = format_time(&self.recorded_at);
        let fields: [&str; 14] = [
            &position,
            &event_id,
            &self.aggregate_type,
            &aggregate_id,
            &stream_version,
            &study_id,
            &self.event_type,
            &schema_version,
            &recorded_at,
            &self.actor,
            self.reason.as_deref().unwrap_or(""),
            &self.correlation_id,
            &self.causation_id,
            &self.data,
        ];
        let len = CANONICAL_TAG.len() + fields.iter().map(|f| 4 + f.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(CANONICAL_TAG);
        for field in fields {
            let n = u32::try_from(field.len()).expect("a field is far below 4 GiB");
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(field.as_bytes());
        }
        out
    }

    /// `SHA-256(prevhash ‖ canonical bytes)`.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.prevhash);
        hasher.update(self.canonical_bytes());
        hasher.finalize().into()
    }

    pub fn domain_event(&self) -> Result<DomainEvent, EventDecodeError> {
        DomainEvent::decode(&self.event_type, &self.data)
    }

    pub fn meta(&self) -> EventMeta {
        EventMeta {
            actor: self.actor.clone(),
            recorded_at: self.recorded_at,
            reason: self.reason.clone(),
        }
    }

    pub fn aggregate_kind(&self) -> Option<AggregateKind> {
        AggregateKind::parse(&self.aggregate_type)
    }

    /// The structured-mode CloudEvents 1.0 JSON of the contract, one line.
    pub fn to_cloud_event(&self) -> String {
        // The column type is `json`, so stored data always parses.
        let data: &RawValue = serde_json::from_str(&self.data).unwrap_or(RawValue::NULL);
        let ce = CloudEventRef {
            specversion: "1.0",
            id: self.event_id,
            source: format!("/studies/{}", self.study_id),
            r#type: &self.event_type,
            time: format_time(&self.recorded_at),
            subject: self.aggregate_id,
            datacontenttype: "application/json",
            position: self.position,
            streamid: self.aggregate_id,
            streamversion: self.stream_version,
            actor: &self.actor,
            reason: self.reason.as_deref(),
            correlationid: &self.correlation_id,
            causationid: &self.causation_id,
            prevhash: hex::encode(self.prevhash),
            hash: hex::encode(self.hash),
            data,
        };
        serde_json::to_string(&ce).expect("a cloud event always serializes")
    }

    /// The largest length the CloudEvents JSON of an event with these
    /// fields can have, whatever position, version, ids and time it gets
    /// when it is appended (each of those has a fixed widest form). Counted,
    /// not serialized: it is asked of every command.
    pub fn cloud_event_len_bound(
        event_type: &str,
        data: &str,
        actor: &str,
        reason: Option<&str>,
        correlation_id: &str,
        causation_id: &str,
    ) -> usize {
        static EMPTY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        // The widest envelope with every text empty, `reason` null and
        // `data` the one byte `0`.
        let empty = *EMPTY.get_or_init(|| {
            Self {
                position: i64::MAX,
                event_id: Uuid::nil(),
                aggregate_type: String::new(),
                aggregate_id: Uuid::nil(),
                stream_version: i64::MAX,
                study_id: Uuid::nil(),
                event_type: String::new(),
                schema_version: 1,
                data: "0".to_owned(),
                actor: String::new(),
                reason: None,
                correlation_id: String::new(),
                causation_id: String::new(),
                recorded_at: DateTime::<Utc>::MAX_UTC,
                prevhash: [0; 32],
                hash: [0; 32],
            }
            .to_cloud_event()
            .len()
        });
        // `reason` is `null` (4 bytes) or a quoted string; `data` is
        // embedded as stored, in place of the `0`.
        let reason = reason.map_or(4, |r| json_escaped_len(r) + 2);
        empty - 1 - 4
            + data.len()
            + json_escaped_len(event_type)
            + json_escaped_len(actor)
            + json_escaped_len(correlation_id)
            + json_escaped_len(causation_id)
            + reason
    }

    /// Parses the CloudEvents JSON back into the stored event, keeping the
    /// exact bytes of `data` so that the hash can be recomputed.
    pub fn from_cloud_event(json: &str) -> Result<Self, CloudEventError> {
        let ce: CloudEventOwned = serde_json::from_str(json).map_err(CloudEventError::Json)?;
        let study_id = ce
            .source
            .strip_prefix("/studies/")
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or(CloudEventError::Field("source"))?;
        let mut parts = ce.r#type.split('.');
        let aggregate_type = parts
            .nth(1)
            .ok_or(CloudEventError::Field("type"))?
            .to_owned();
        let schema_version = ce
            .r#type
            .rsplit('.')
            .next()
            .and_then(|v| v.strip_prefix('v'))
            .and_then(|v| v.parse().ok())
            .ok_or(CloudEventError::Field("type"))?;
        let recorded_at = DateTime::parse_from_rfc3339(&ce.time)
            .map_err(|_| CloudEventError::Field("time"))?
            .with_timezone(&Utc);
        Ok(Self {
            position: ce.position,
            event_id: ce.id,
            aggregate_type,
            aggregate_id: ce.streamid,
            stream_version: ce.streamversion,
            study_id,
            event_type: ce.r#type,
            schema_version,
            data: ce.data.get().to_owned(),
            actor: ce.actor,
            reason: ce.reason,
            correlation_id: ce.correlationid,
            causation_id: ce.causationid,
            recorded_at,
            prevhash: parse_hash(&ce.prevhash).ok_or(CloudEventError::Field("prevhash"))?,
            hash: parse_hash(&ce.hash).ok_or(CloudEventError::Field("hash"))?,
        })
    }
}

/// The length of `s` inside a JSON string as serde_json writes it (without
/// the quotes): `"` and `\\` and the short escapes take two bytes, other
/// control characters six, everything else itself.
fn json_escaped_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

pub fn parse_hash(hex_str: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    #[error("not a cloud event of this service: {0}")]
    Json(serde_json::Error),
    #[error("cloud event field {0} is malformed")]
    Field(&'static str),
}

#[derive(Serialize)]
struct CloudEventRef<'a> {
    specversion: &'static str,
    id: Uuid,
    source: String,
    r#type: &'a str,
    time: String,
    subject: Uuid,
    datacontenttype: &'static str,
    position: i64,
    streamid: Uuid,
    streamversion: i64,
    actor: &'a str,
    reason: Option<&'a str>,
    correlationid: &'a str,
    causationid: &'a str,
    prevhash: String,
    hash: String,
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct CloudEventOwned {
    id: Uuid,
    source: String,
    r#type: String,
    time: String,
    position: i64,
    streamid: Uuid,
    streamversion: i64,
    actor: String,
    reason: Option<String>,
    correlationid: String,
    causationid: String,
    prevhash: String,
    hash: String,
    data: Box<RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredEvent {
        let mut e = StoredEvent {
            position: 1,
            event_id: Uuid::parse_str("0192f0c1-0000-7000-8000-000000000001").unwrap(),
            aggregate_type: "study".into(),
            aggregate_id: Uuid::parse_str("0192f0c1-0000-7000-8000-0000000000aa").unwrap(),
            stream_version: 1,
            study_id: Uuid::parse_str("0192f0c1-0000-7000-8000-0000000000aa").unwrap(),
            event_type: "research.study.closed.v1".into(),
            schema_version: 1,
            data: "{}".into(),
            actor: "alice".into(),
            reason: Some("end of season\nline two".into()),
            correlation_id: "c-1".into(),
            causation_id: "c-1".into(),
            recorded_at: DateTime::parse_from_rfc3339("2026-11-28T13:16:27.123456Z")
                .unwrap()
                .into(),
            prevhash: GENESIS_HASH,
            hash: [0; 32],
        };
        e.hash = e.compute_hash();
        e
    }

    #[test]
    fn the_published_length_bound_holds_at_any_position() {
        let mut e = sample();
        e.data = r#"{"label":"a \"quoted\" é label"}"#.into();
        e.reason = Some("a \\ reason with \"quotes\"\ttab".into());
        let bound = StoredEvent::cloud_event_len_bound(
            &e.event_type,
            &e.data,
            &e.actor,
            e.reason.as_deref(),
            &e.correlation_id,
            &e.causation_id,
        );
        for position in [1, 999_999, i64::MAX] {
            e.position = position;
            e.stream_version = position;
            assert!(e.to_cloud_event().len() <= bound, "{position}");
        }
        assert!(bound - e.to_cloud_event().len() < 16, "the bound is tight");
        // Counted as serde_json escapes, whatever the text holds.
        for text in [
            "",
            "plain",
            "quote\" back\\slash",
            "\u{0}\u{1f}\u{7f}\n\r\t\u{8}\u{c}",
            "é🐧",
        ] {
            e.actor = text.to_owned();
            e.reason = Some(text.to_owned());
            e.correlation_id = text.to_owned();
            let bound = StoredEvent::cloud_event_len_bound(
                &e.event_type,
                &e.data,
                &e.actor,
                e.reason.as_deref(),
                &e.correlation_id,
                &e.causation_id,
            );
            let actual = e.to_cloud_event().len();
            assert!(
                actual <= bound && bound - actual < 16,
                "{text:?}: {actual} vs {bound}"
            );
        }
        e.reason = None;
        let bound = StoredEvent::cloud_event_len_bound(
            &e.event_type,
            &e.data,
            &e.actor,
            None,
            &e.correlation_id,
            &e.causation_id,
        );
        assert!(e.to_cloud_event().len() <= bound);
    }

    #[test]
    fn cloud_event_round_trips_with_the_exact_data_bytes() {
        let e = sample();
        let json = e.to_cloud_event();
        let back = StoredEvent::from_cloud_event(&json).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.compute_hash(), e.hash);
    }

    #[test]
    fn any_changed_field_changes_the_hash() {
        let e = sample();
        let mut changed = e.clone();
        changed.reason = Some("end of season".into());
        assert_ne!(changed.compute_hash(), e.hash);
        let mut changed = e.clone();
        changed.position = 2;
        assert_ne!(changed.compute_hash(), e.hash);
        let mut changed = e.clone();
        changed.prevhash[0] = 1;
        assert_ne!(changed.compute_hash(), e.hash);
    }

    #[test]
    fn canonical_bytes_are_length_prefixed() {
        let bytes = sample().canonical_bytes();
        assert!(bytes.starts_with(CANONICAL_TAG));
        // The first field is the position "1": length 1, then the byte.
        assert_eq!(
            &bytes[CANONICAL_TAG.len()..CANONICAL_TAG.len() + 5],
            &[0, 0, 0, 1, b'1']
        );
    }
}
