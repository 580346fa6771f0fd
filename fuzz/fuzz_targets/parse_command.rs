//! Fuzzes a command body through parsing and validation, as the command API
//! gets it: the first byte picks the command (or the batch endpoint), the
//! rest is the body. Whatever the bytes, parsing must not panic, a refusal
//! must be a 400 (not UTF-8 JSON) or a 422 (wrong shape, broken rule), and
//! an accepted command must carry only clean text.

#![no_main]

use command_api::input::{parse_batch, parse_bytes, parse_item, Kind, Parsed};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

const KINDS: [Kind; 9] = [
    Kind::RegisterStudy,
    Kind::AmendStudy,
    Kind::CloseStudy,
    Kind::RegisterSubject,
    Kind::WithdrawSubject,
    Kind::RecordObservation,
    Kind::CorrectObservation,
    Kind::RetractObservation,
    Kind::SignObservation,
];

fn accepted(parsed: &Parsed) {
    if let Some(reason) = parsed.command.reason() {
        assert!(reason.len() <= 16 * 1024);
        assert!(!reason
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    match KINDS.get(usize::from(*selector) % 10) {
        Some(kind) => match parse_bytes(*kind, Some(Uuid::nil()), body) {
            Ok(parsed) => accepted(&parsed),
            Err(problem) => assert!(matches!(problem.status.as_u16(), 400 | 422), "{problem:?}"),
        },
        None => match parse_batch(body) {
            Ok(batch) => {
                for item in batch.commands.into_iter().take(1000) {
                    match parse_item(item) {
                        Ok(parsed) => accepted(&parsed),
                        Err(problem) => assert_eq!(problem.status.as_u16(), 422, "{problem:?}"),
                    }
                }
            }
            Err(problem) => assert!(matches!(problem.status.as_u16(), 400 | 422), "{problem:?}"),
        },
    }
});
