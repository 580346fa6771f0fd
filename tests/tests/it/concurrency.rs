//! Races: optimistic concurrency, gap-free positions under many writers in
//! two processes' worth of appenders, and idempotency keys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{json, Value};
use shared::store::EventStore;
use tests::{command_config, CommandApi};
use uuid::Uuid;

use crate::env::{first_row, Env};
use crate::store::assert_chain;

#[tokio::test]
async fn fifty_writers_with_one_if_match_let_exactly_one_win() {
    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let path = format!("/v1/observations/{observation}/corrections");
    let attempts = (0..50).map(|i| {
        let body = json!({"values": {"body_mass_g": 3000 + i}, "reason": format!("re-weighed, attempt {i}")});
        let api = &env.api;
        let path = &path;
        let token = &env.writer;
        async move { api.post_with(path, token, &body, &[("if-match", "\"1\"")]).await }
    });
    let answers = join_all(attempts).await;
    let won = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    for a in answers.iter().filter(|a| a.status != 200) {
        assert!(a.status == 412 || a.status == 409, "{}", a.status);
        a.problem(a.status);
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT stream_version FROM events WHERE aggregate_id = $1 ORDER BY 1")
            .bind(observation)
            .fetch_all(&env.db.pool().await)
            .await
            .unwrap();
    assert_eq!(versions, [1, 2]);
}

#[tokio::test]
async fn positions_stay_gap_free_and_ordered_under_many_writers_in_two_processes() {
    let env = Env::start().await;
    let study = env.study().await;
    let subject = env.subject(study).await;
    // A second command API on the same database: its own appender, pool
    // and publisher, as another process would have.
    let second = CommandApi::spawn(&command_config(&env.db, &env.stream)).await;
    let pool = env.db.pool().await;

    let done = Arc::new(AtomicBool::new(false));
    let tailer = {
        let pool = pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = 0i64;
            let mut reads = 0u32;
            while !done.load(Ordering::Relaxed) {
                let positions: Vec<i64> = sqlx::query_scalar(
                    "SELECT position FROM events WHERE position > $1 ORDER BY position",
                )
                .bind(seen)
                .fetch_all(&pool)
                .await
                .unwrap();
                for p in positions {
                    // Anything new must continue exactly where the reader
                    // stopped: a hole now filled later would break this.
                    assert_eq!(p, seen + 1, "a reader that saw {seen} then saw {p}");
                    seen = p;
                }
                reads += 1;
            }
            (seen, reads)
        })
    };

    let row = first_row();
    let writers = (0..16).map(|w| {
        let api = if w % 2 == 0 { &env.api } else { &second };
        let token = if w % 3 == 0 { &env.writer2 } else { &env.writer };
        let row = row.clone();
        async move {
            let mut ok = 0;
            for i in 0..25 {
                let body = if i % 5 == 4 {
                    // Fails its own checks: it must not disturb the batch.
                    json!({"observed_at": "2007-11-11T00:00:00Z", "values": {"no_such_variable": 1}})
                } else {
                    row.clone()
                };
                let answer = api.post(&format!("/v1/subjects/{subject}/observations"), token, &body).await;
                if answer.status == 201 {
                    ok += 1;
                } else {
                    assert_eq!(answer.status, 422);
                }
            }
            ok
        }
    });
    let recorded: i64 = join_all(writers).await.into_iter().sum();
    done.store(true, Ordering::Relaxed);
    let (seen, reads) = tailer.await.unwrap();
    assert!(reads > 1, "the tailer read while the writers wrote");

    assert_eq!(recorded, 16 * 20);
    let events = EventStore::read_after(&pool, 0, 10_000).await.unwrap();
    assert_eq!(
        events.len() as i64,
        2 + recorded,
        "study, subject and every accepted observation"
    );
    assert!(seen <= events.len() as i64);
    assert_chain(&events);
    second.shutdown().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_byte_for_byte() {
    let env = Env::start().await;
    let study = env.study().await;
    let subject = env.subject(study).await;
    let path = format!("/v1/subjects/{subject}/observations");
    let key = [("idempotency-key", "import-row-1")];
    let first = env
        .api
        .post_with(&path, &env.writer, &first_row(), &key)
        .await;
    assert_eq!(first.status, 201);
    let again = env
        .api
        .post_with(&path, &env.writer, &first_row(), &key)
        .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.bytes, first.bytes);
    assert_eq!(
        again.header("consistency-token"),
        first.header("consistency-token")
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'observation'")
            .fetch_one(&env.db.pool().await)
            .await
            .unwrap();
    assert_eq!(count, 1, "the replay wrote nothing");

    // Another principal's key space is its own.
    let bob = env
        .api
        .post_with(&path, &env.writer2, &first_row(), &key)
        .await;
    assert_eq!(bob.status, 201);
    assert_ne!(bob.id(), first.id());

    // A refusal is an answer too, and replays as such.
    let bad = json!({"observed_at": "2007-11-11T00:00:00Z", "values": {"nope": 1}});
    let key2 = [("idempotency-key", "import-row-2")];
    let refused = env.api.post_with(&path, &env.writer, &bad, &key2).await;
    refused.problem(422);
    let refused_again = env.api.post_with(&path, &env.writer, &bad, &key2).await;
    assert_eq!(refused_again.bytes, refused.bytes);
}

#[tokio::test]
async fn an_idempotency_key_with_another_body_is_422() {
    let env = Env::start().await;
    let subject = env.subject(env.study().await).await;
    let path = format!("/v1/subjects/{subject}/observations");
    let key = [("idempotency-key", "k-1")];
    assert_eq!(
        env.api
            .post_with(&path, &env.writer, &first_row(), &key)
            .await
            .status,
        201
    );
    let mut other = first_row();
    other["values"]["body_mass_g"] = json!(4000);
    let p = env
        .api
        .post_with(&path, &env.writer, &other, &key)
        .await
        .problem(422);
    assert!(p["type"]
        .as_str()
        .unwrap()
        .ends_with("idempotency-key-reused"));
}

#[tokio::test]
async fn an_idempotency_key_in_flight_is_409_and_runs_once() {
    let env = Env::start().await;
    let subject = env.subject(env.study().await).await;
    let path = format!("/v1/subjects/{subject}/observations");
    let body = first_row();
    let pool = env.db.pool().await;

    // Another process holds the key and has not answered yet.
    let hash =
        command_api::idempotency::request_hash("POST", &path, &serde_json::to_vec(&body).unwrap());
    let claimed =
        command_api::idempotency::claim(&pool, "alice", "held", &hash, Duration::from_secs(60))
            .await
            .unwrap();
    assert!(matches!(
        claimed,
        command_api::idempotency::Claimed::Fresh { ref done } if done.is_empty()
    ));
    let p = env
        .api
        .post_with(&path, &env.writer, &body, &[("idempotency-key", "held")])
        .await
        .problem(409);
    assert!(p["type"]
        .as_str()
        .unwrap()
        .ends_with("idempotency-key-in-flight"));

    // Twenty identical retries at once: one runs, the rest wait or replay.
    let key = [("idempotency-key", "burst")];
    let answers =
        join_all((0..20).map(|_| env.api.post_with(&path, &env.writer, &body, &key))).await;
    let created: Vec<_> = answers.iter().filter(|a| a.status == 201).collect();
    assert!(!created.is_empty());
    assert!(
        created.iter().all(|a| a.bytes == created[0].bytes),
        "every 201 is the same answer"
    );
    assert!(answers.iter().all(|a| a.status == 201 || a.status == 409));
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'observation'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(count, 1, "the burst recorded one observation");
}

/// A batch's process dies after its items committed but before its answer
/// was stored (simulated by taking the stored answer away and letting the
/// lease lapse): a retry with the same key resumes it from the items
/// journaled with their events, and nothing runs twice.
#[tokio::test]
async fn a_batch_whose_answer_was_lost_is_resumed_not_run_twice() {
    let env = Env::start().await;
    let study = env.study().await;
    let pool = env.db.pool().await;
    // Server-made ids: running an item twice would register a second
    // subject rather than fail.
    let batch = json!({"commands": [
        {"type": "RegisterSubject", "target": study, "label": "N90A1", "attributes": {}},
        {"type": "RegisterSubject", "target": Uuid::now_v7(), "label": "N90A2", "attributes": {}},
        {"type": "RegisterSubject", "target": study, "label": "N90A3", "attributes": {}},
    ]});
    let key = [("idempotency-key", "batch-resume-1")];
    let first = env
        .api
        .post_with("/v1/commands", &env.writer, &batch, &key)
        .await;
    assert_eq!(first.status, 200);
    let first_results = first.json()["results"].clone();
    assert_eq!(first_results[0]["status"], 201);
    assert_eq!(first_results[1]["status"], 404);
    assert_eq!(first_results[2]["status"], 201);

    // The committed items were journaled with their events.
    let progress: Value = sqlx::query_scalar(
        "SELECT progress FROM idempotency_keys WHERE principal = 'alice' AND key = 'batch-resume-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(progress["0"], first_results[0]);
    assert_eq!(progress["2"], first_results[2]);
    assert!(progress.get("1").is_none(), "a refusal wrote no event");

    // The process "dies" before storing the answer.
    sqlx::query(
        "UPDATE idempotency_keys SET status = NULL, body = NULL, lease_until = now() - interval '1 second' \
         WHERE principal = 'alice' AND key = 'batch-resume-1'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let retry = env
        .api
        .post_with("/v1/commands", &env.writer, &batch, &key)
        .await;
    assert_eq!(retry.status, 200);
    assert_eq!(
        retry.header("idempotent-replayed"),
        None,
        "it ran (resumed), it did not replay"
    );
    let retried = retry.json()["results"].clone();
    assert_eq!(
        retried[0], first_results[0],
        "the same subject, not a second"
    );
    assert_eq!(retried[2], first_results[2]);
    assert_eq!(retried[1]["status"], 404);
    let subjects: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'subject'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(subjects, 2, "each subject was registered once");

    // Now the answer is stored, and replays byte for byte.
    let replayed = env
        .api
        .post_with("/v1/commands", &env.writer, &batch, &key)
        .await;
    assert_eq!(replayed.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed.bytes, retry.bytes);
}
