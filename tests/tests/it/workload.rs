//! The mixed workload of `benches/report.sh` against the real pipeline (the
//! command API, the live projector, the query API on the hot standby): it
//! runs every kind of operation, its read-your-writes probes see their
//! writes, and its integrity check finds every accepted write in the log
//! once, at the position its answer named.

use std::time::Duration;

use benches::mix::{self, Mix, Settings};

use crate::hostile::Pipeline;

#[tokio::test]
async fn the_mixed_workload_runs_every_operation_and_finds_every_accepted_write_in_the_log() {
    let pipeline = Pipeline::start().await;
    // Writes and reads in equal measure, so that a short run has them all.
    let proportions = "record=4,correct=2,retract=1,sign=2,token_read=2,read_observation=3,\
                       read_subject=1,read_study=1,page=1,export=1,audit=1";
    let report = mix::run(Settings {
        api: pipeline.env.api.url(""),
        query: pipeline.query.url(""),
        secret: tests::SECRET.to_owned(),
        rate: 60.0,
        duration: Duration::from_secs(4),
        interval: Duration::from_secs(1),
        mix: Mix::parse(proportions).unwrap(),
        seed: 7,
        max_in_flight: 32,
        warm_up_records: 20,
    })
    .await
    .expect("the workload runs");

    let count = |name: &str| {
        report
            .ops
            .iter()
            .find(|o| o.op == name)
            .map_or(0, |o| o.count)
    };
    for name in [
        "record",
        "correct",
        "sign",
        "read_observation",
        "token_read",
        "audit",
    ] {
        assert!(count(name) > 0, "{name} ran: {:?}", report.ops);
    }
    assert_eq!(
        report.all.count,
        report.ops.iter().map(|o| o.count).sum::<u64>()
    );
    assert!(
        !report.all.statuses.keys().any(|s| s.starts_with('5')),
        "{:?}",
        report.all.statuses
    );
    assert!(!report.intervals.is_empty());
    assert!(report.visible.count > 0, "token reads saw their writes");
    let integrity = &report.integrity;
    assert!(integrity.accepted > 20, "the warm-up and the run's writes");
    assert_eq!(
        integrity.found_once, integrity.accepted,
        "{:?}",
        integrity.problems
    );
    assert!(integrity.problems.is_empty(), "{:?}", integrity.problems);
    assert_eq!(integrity.unanswered_events, 0);
    assert_eq!(
        report.last_position - report.first_position,
        integrity.accepted as i64,
        "every event after the study's registration was answered"
    );
}
