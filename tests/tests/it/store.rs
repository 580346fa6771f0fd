//! The event store's own guarantees, checked in the database.

use shared::envelope::{StoredEvent, GENESIS_HASH};
use shared::store::EventStore;

use crate::env::Env;

#[tokio::test]
async fn the_database_refuses_to_update_delete_or_truncate_events() {
    let env = Env::start().await;
    env.recorded().await;
    let pool = env.db.pool().await;
    for sql in [
        "UPDATE events SET actor = 'mallory' WHERE position = 1",
        "DELETE FROM events WHERE position = 1",
        "TRUNCATE events",
    ] {
        let error = sqlx::query(sql).execute(&pool).await.expect_err(sql);
        assert!(error.to_string().contains("append-only"), "{sql}: {error}");
    }
    let actor: String = sqlx::query_scalar("SELECT actor FROM events WHERE position = 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(actor, "alice");
}

/// Recomputes the chain over the whole log.
pub fn assert_chain(events: &[StoredEvent]) {
    let mut prev = GENESIS_HASH;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as i64 + 1, "positions are 1..N");
        assert_eq!(e.prevhash, prev, "prevhash at {}", e.position);
        assert_eq!(e.compute_hash(), e.hash, "hash at {}", e.position);
        prev = e.hash;
    }
}

#[tokio::test]
async fn events_carry_a_verifiable_hash_chain_and_their_metadata() {
    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let correction =
        serde_json::json!({"values": {"body_mass_g": 3800}, "reason": "scale recalibrated"});
    let answer = env
        .api
        .post_with(
            &format!("/v1/observations/{observation}/corrections"),
            &env.writer2,
            &correction,
            &[("x-correlation-id", "import-2024-03")],
        )
        .await;
    assert_eq!(answer.status, 200);
    let events = EventStore::read_after(&env.db.pool().await, 0, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 4);
    assert_chain(&events);
    let last = &events[3];
    assert_eq!(last.event_type, "research.observation.corrected.v1");
    assert_eq!(last.actor, "bob");
    assert_eq!(last.reason.as_deref(), Some("scale recalibrated"));
    assert_eq!(last.correlation_id, "import-2024-03");
    assert_eq!(last.stream_version, 2);
    assert_eq!(last.aggregate_id, observation);
    assert_eq!(answer.json()["position"], 4);
}

#[tokio::test]
async fn an_independent_python_check_recomputes_the_chain_of_real_events() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let correction = serde_json::json!({"values": {"body_mass_g": 3800}, "reason": "scale recalibrated, see log ñ°"});
    let path = format!("/v1/observations/{observation}/corrections");
    assert_eq!(
        env.api.post(&path, &env.writer2, &correction).await.status,
        200
    );
    let events = EventStore::read_after(&env.db.pool().await, 0, 100)
        .await
        .unwrap();
    let mut ndjson = String::new();
    for e in &events {
        ndjson.push_str(&e.to_cloud_event());
        ndjson.push('\n');
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/verify_event.py");
    let run = |input: String| {
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (installed by scripts/infra.sh)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let ok = run(ndjson.clone());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let head = hex::encode(events.last().unwrap().hash);
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        format!("verified 4 events, head {head}")
    );

    // One altered value in an old event is caught at its position.
    let tampered = ndjson.replacen("39.1", "39.2", 1);
    let bad = run(tampered);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("position 3"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test]
async fn every_event_names_its_study() {
    let env = Env::start().await;
    let (study, subject, observation) = env.recorded().await;
    let withdraw = serde_json::json!({"reason": "nest abandoned"});
    let path = format!("/v1/subjects/{subject}/withdrawal");
    assert_eq!(
        env.api.post(&path, &env.writer, &withdraw).await.status,
        200
    );
    let sign = format!("/v1/observations/{observation}/signatures");
    assert_eq!(
        env.api
            .post(
                &sign,
                &env.reviewer,
                &serde_json::json!({"meaning": "reviewed"})
            )
            .await
            .status,
        200
    );
    let events = EventStore::read_after(&env.db.pool().await, 0, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 5);
    assert!(
        events.iter().all(|e| e.study_id == study),
        "{:?}",
        events.iter().map(|e| e.study_id).collect::<Vec<_>>()
    );
}
