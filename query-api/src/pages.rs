//! Pages of a listing: opaque keyset cursors (the last row's sort key and
//! id, bound to the listing they came from) and the page body assembled from
//! the stored documents without parsing them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Datelike as _, Utc};
use shared::problem::Problem;
use uuid::Uuid;

use crate::replica::{Listing, SortKey};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;

fn tag(listing: Listing) -> (&'static str, Uuid) {
    match listing {
        Listing::Studies => ("st", Uuid::nil()),
        Listing::SubjectsOfStudy(id) => ("su", id),
        Listing::ObservationsOfSubject(id) => ("ob", id),
    }
}

/// The cursor that continues `listing` after the row `(key, id)`.
pub fn encode_cursor(listing: Listing, key: &SortKey, id: Uuid) -> String {
    let (tag, parent) = tag(listing);
    let key = match key {
        SortKey::Code(code) => code.clone(),
        SortKey::Label(label) => label.clone(),
        SortKey::ObservedAt(at) => at.timestamp_micros().to_string(),
    };
    URL_SAFE_NO_PAD.encode(format!("{tag}|{parent}|{id}|{key}"))
}

/// Reads a cursor given for `listing`; anything else is a 400.
pub fn decode_cursor(listing: Listing, raw: &str) -> Result<(SortKey, Uuid), Problem> {
    let invalid = || {
        Problem::bad_request("the cursor is not one this listing gave out; start again without it")
    };
    let text = URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(invalid)?;
    let mut parts = text.splitn(4, '|');
    let (Some(t), Some(parent), Some(id), Some(key)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let (want_tag, want_parent) = tag(listing);
    if t != want_tag || parent != want_parent.to_string() {
        return Err(invalid());
    }
    let id = Uuid::parse_str(id).map_err(|_| invalid())?;
    // A cursor is a client's text: its key must be one a row can have (a
    // valid code, a label as the read table stores it, a time a command can
    // record), or the statement it feeds would be refused by PostgreSQL.
    let key = match listing {
        Listing::Studies => SortKey::Code(
            shared::domain::StudyCode::parse(key)
                .map_err(|_| invalid())?
                .as_str()
                .to_owned(),
        ),
        Listing::SubjectsOfStudy(_) if key.len() <= 4 * 1024 && !key.contains('\0') => {
            SortKey::Label(key.to_owned())
        }
        Listing::SubjectsOfStudy(_) => return Err(invalid()),
        Listing::ObservationsOfSubject(_) => SortKey::ObservedAt(
            key.parse::<i64>()
                .ok()
                .and_then(DateTime::<Utc>::from_timestamp_micros)
                .filter(|at| (0..=9999).contains(&at.year()))
                .ok_or_else(invalid)?,
        ),
    };
    Ok((key, id))
}

/// `limit` from the query: 1 to 1000, 50 when absent.
pub fn parse_limit(raw: Option<&str>) -> Result<i64, Problem> {
    match raw {
        None => Ok(DEFAULT_LIMIT),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                Problem::bad_request(format!("limit must be an integer from 1 to {MAX_LIMIT}"))
                    .with_errors(vec![shared::domain::FieldError::new(
                        "limit",
                        format!("must be an integer from 1 to {MAX_LIMIT}"),
                    )])
            }),
    }
}

/// `{"items":[...],"next_cursor":...}` from up to `limit + 1` rows: the
/// extra row only says that another page follows.
pub fn body(listing: Listing, mut rows: Vec<(SortKey, Uuid, Bytes)>, limit: i64) -> Vec<u8> {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let size: usize = rows.iter().map(|r| r.2.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 100);
    out.extend_from_slice(b"{\"items\":[");
    for (i, (_, _, doc)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(doc);
    }
    out.extend_from_slice(b"],\"next_cursor\":");
    match rows.last().filter(|_| more) {
        Some((key, id, _)) => {
            out.push(b'"');
            out.extend_from_slice(encode_cursor(listing, key, *id).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_is_bound_to_its_listing() {
        let study = Uuid::now_v7();
        let listing = Listing::SubjectsOfStudy(study);
        let id = Uuid::now_v7();
        let key = SortKey::Label("N1A|2".into());
        let cursor = encode_cursor(listing, &key, id);
        assert_eq!(decode_cursor(listing, &cursor).unwrap(), (key, id));
        assert!(decode_cursor(Listing::SubjectsOfStudy(Uuid::now_v7()), &cursor).is_err());
        assert!(decode_cursor(Listing::Studies, &cursor).is_err());
        assert!(decode_cursor(listing, "not a cursor").is_err());
        let at = DateTime::from_timestamp_micros(1_357_000_000_123_456).unwrap();
        let listing = Listing::ObservationsOfSubject(study);
        let cursor = encode_cursor(listing, &SortKey::ObservedAt(at), id);
        assert_eq!(
            decode_cursor(listing, &cursor).unwrap(),
            (SortKey::ObservedAt(at), id)
        );
    }

    #[test]
    fn hand_made_cursors_with_keys_no_row_can_have_are_refused() {
        let study = Uuid::now_v7();
        let id = Uuid::now_v7();
        let forge = |tag: &str, parent: Uuid, key: &str| {
            URL_SAFE_NO_PAD.encode(format!("{tag}|{parent}|{id}|{key}"))
        };
        let subjects = Listing::SubjectsOfStudy(study);
        assert!(decode_cursor(subjects, &forge("su", study, "N1\0A1")).is_err());
        assert!(decode_cursor(subjects, &forge("su", study, "N1A1")).is_ok());
        let observations = Listing::ObservationsOfSubject(study);
        let year_minus_5000 = -220_000_000_000_000_000_i64;
        for key in [
            year_minus_5000.to_string(),
            i64::MAX.to_string(),
            "x".into(),
        ] {
            assert!(
                decode_cursor(observations, &forge("ob", study, &key)).is_err(),
                "{key}"
            );
        }
        assert!(decode_cursor(Listing::Studies, &forge("st", Uuid::nil(), "bad code")).is_err());
        assert!(decode_cursor(Listing::Studies, &forge("st", Uuid::nil(), "PAL0708")).is_ok());
    }

    #[test]
    fn the_page_body_is_the_documents_as_stored() {
        let rows = vec![
            (
                SortKey::Code("A".into()),
                Uuid::nil(),
                Bytes::from_static(b"{\"a\":1}"),
            ),
            (
                SortKey::Code("B".into()),
                Uuid::nil(),
                Bytes::from_static(b"{\"b\":2}"),
            ),
        ];
        let full: serde_json::Value =
            serde_json::from_slice(&body(Listing::Studies, rows.clone(), 2)).unwrap();
        assert_eq!(
            full,
            serde_json::json!({"items": [{"a":1},{"b":2}], "next_cursor": null})
        );
        let first: serde_json::Value =
            serde_json::from_slice(&body(Listing::Studies, rows, 1)).unwrap();
        assert_eq!(first["items"], serde_json::json!([{"a":1}]));
        assert!(first["next_cursor"].is_string());
    }
}
