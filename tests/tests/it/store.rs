//! The event store's own guarantees, checked in the database.

use shared::domain::{AggregateKind, DomainEvent, SubjectRegistered};
use shared::envelope::{StoredEvent, GENESIS_HASH};
use shared::store::{AppendError, AppendRequest, AppenderConfig, EncodedEvent, EventStore};

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
    let script = tests::repo_root().join("docs/verify_event.py");
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

/// A subject registration in `study`, as the appender takes it, with
/// `label` and `reason` as given (no check on the way).
pub(crate) fn raw_registration(
    study: uuid::Uuid,
    label: &str,
    reason: Option<&str>,
) -> AppendRequest {
    let subject = uuid::Uuid::now_v7();
    AppendRequest {
        aggregate_kind: AggregateKind::Subject,
        aggregate_id: subject,
        study_id: study,
        expected_version: 0,
        events: vec![EncodedEvent::of(&DomainEvent::SubjectRegistered(
            SubjectRegistered {
                subject_id: subject,
                study_id: study,
                label: label.to_owned(),
                attributes: serde_json::Map::new(),
            },
        ))],
        guards: Vec::new(),
        claims: Vec::new(),
        actor: "alice".to_owned(),
        reason: reason.map(str::to_owned),
        correlation_id: "c".to_owned(),
        causation_id: "c".to_owned(),
        idempotency: None,
    }
}

#[tokio::test]
async fn the_appender_isolates_a_request_the_database_refuses() {
    let db = tests::TestDb::create().await;
    let (store, _appender) = EventStore::start(
        db.pool_as(tests::DbRole::Command).await,
        AppenderConfig::default(),
    );
    let study = uuid::Uuid::now_v7();
    // PostgreSQL's `text` cannot hold NUL: the database refuses that row
    // (the API refuses such text long before; this is the last line).
    let mut requests: Vec<AppendRequest> = (0..7)
        .map(|i| raw_registration(study, &format!("S{i}"), None))
        .collect();
    requests.insert(3, raw_registration(study, "S-bad", Some("nul\0reason")));
    let outcomes = store.append_all(requests).await;
    assert_eq!(outcomes.len(), 8);
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(outcome, Err(AppendError::Refused { .. })),
                "{outcome:?}"
            );
        } else {
            assert!(outcome.is_ok(), "request {i}: {outcome:?}");
        }
    }
    let events = EventStore::read_after(&db.pool().await, 0, 100)
        .await
        .unwrap();
    assert_eq!(events.len(), 7, "every other request committed");
    assert_chain(&events);
    // The appender goes on: its connection was not left in a failed state.
    let next = store
        .append(raw_registration(study, "S-after", None))
        .await
        .unwrap();
    assert_eq!(next.position, 8);
}

#[tokio::test]
async fn the_services_roles_own_nothing_and_cannot_rewrite_history() {
    let env = Env::start().await;
    env.recorded().await;
    let attempts = [
        "UPDATE events SET actor = 'mallory' WHERE position = 1",
        "DELETE FROM events WHERE position = 1",
        "TRUNCATE events",
        "ALTER TABLE events DISABLE TRIGGER USER",
        "ALTER TABLE events DISABLE TRIGGER events_append_only",
        "DROP TRIGGER events_append_only ON events",
        "CREATE OR REPLACE FUNCTION events_are_append_only() RETURNS trigger \
         LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "ALTER FUNCTION events_are_append_only() OWNER TO CURRENT_USER",
        "DROP TABLE events",
        "CREATE TABLE events_copy (x int)",
    ];
    for role in tests::DbRole::ALL {
        let pool = env.db.pool_as(role).await;
        for sql in attempts {
            let error = sqlx::query(sql)
                .execute(&pool)
                .await
                .expect_err(&format!("{} may not {sql}", role.name()));
            let code = error
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.into_owned());
            // 42501 insufficient privilege, 42P01-free: the refusal is about
            // rights (or, for the query API, a read-only transaction).
            assert!(
                matches!(code.as_deref(), Some("42501") | Some("25006")),
                "{}: {sql}: {error}",
                role.name()
            );
        }
        let owned: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = current_user) \
             + (SELECT count(*) FROM pg_proc WHERE pg_get_userbyid(proowner) = current_user) \
             + (SELECT count(*) FROM pg_database WHERE datname = current_database() \
                  AND pg_get_userbyid(datdba) = current_user)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(owned, 0, "{} owns nothing of the event store", role.name());
    }
    // Only the command API appends; the query API writes nothing at all.
    for role in [tests::DbRole::Projector, tests::DbRole::Query] {
        let pool = env.db.pool_as(role).await;
        let error = sqlx::query(
            "INSERT INTO events SELECT position + 1000, gen_random_uuid(), aggregate_type, aggregate_id, \
             stream_version + 1000, study_id, event_type, schema_version, data, actor, reason, correlation_id, \
             causation_id, recorded_at, prevhash, hash FROM events WHERE position = 1",
        )
        .execute(&pool)
        .await
        .expect_err("only the command API appends");
        assert!(error.to_string().contains("denied") || error.to_string().contains("read-only"));
    }
    let query = env.db.pool_as(tests::DbRole::Query).await;
    let error = sqlx::query("UPDATE read_model.checkpoint SET position = 0")
        .execute(&query)
        .await
        .expect_err("the query API's role is read-only");
    assert!(!error.to_string().is_empty());
    let actor: String = sqlx::query_scalar("SELECT actor FROM events WHERE position = 1")
        .fetch_one(&env.db.pool().await)
        .await
        .unwrap();
    assert_eq!(actor, "alice", "history is as it was");
}
