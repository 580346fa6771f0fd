//! PostgreSQL restarted under load: while it is down every command answers
//! a `503` problem with `Retry-After` (never a `500`), nothing is
//! half-written, and the command API and its publisher carry on by
//! themselves once it is back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use shared::store::EventStore;
use tests::{command_config, read_stream, wait_until, PrivatePostgres, TestDb, TestStream};
use uuid::Uuid;

use crate::env::first_row;

/// What the load saw, answer by answer.
#[derive(Default)]
struct Seen {
    /// Every status answered, with how often.
    statuses: HashMap<u16, usize>,
    /// `503`s that were not a problem with `Retry-After`.
    bad_unavailable: Vec<String>,
    /// Observation id → position of its accepted answer.
    accepted: HashMap<Uuid, i64>,
}

#[tokio::test]
async fn postgresql_restarted_under_load_is_a_retriable_503_and_loses_nothing() {
    let server = PrivatePostgres::start().await;
    let db = TestDb::create_on(&server.admin_url()).await;
    let stream = TestStream::new();
    let mut config = command_config(&db, &stream);
    config.request_timeout = Duration::from_secs(10);
    let api = tests::CommandApi::spawn(&config).await;
    let writer = tests::token("alice", &[shared::auth::Role::Writer]);
    let (_, subject) = api.study_with_subject(&writer).await;
    let url = api.url(&format!("/v1/subjects/{subject}/observations"));

    // Eight clients record observations, each retrying a command that did
    // not get a definite answer with the same Idempotency-Key until it is
    // accepted, as a careful client does.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, writer) = (http.clone(), url.clone(), writer.clone());
            let (stop, seen, accepted) = (stop.clone(), seen.clone(), accepted.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let id = Uuid::now_v7();
                    let mut body = first_row();
                    body["observation_id"] = serde_json::json!(id);
                    let key = Uuid::new_v4().to_string();
                    loop {
                        let answer = http
                            .post(&url)
                            .bearer_auth(&writer)
                            .header("Idempotency-Key", &key)
                            .json(&body)
                            .send()
                            .await;
                        let Ok(answer) = answer else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        let status = answer.status().as_u16();
                        let retry_after = answer.headers().contains_key("retry-after");
                        let problem = answer
                            .headers()
                            .get("content-type")
                            .is_some_and(|v| v == "application/problem+json");
                        let text = answer.text().await.unwrap_or_default();
                        let done = {
                            let mut seen = seen.lock().unwrap();
                            *seen.statuses.entry(status).or_default() += 1;
                            match status {
                                201 => {
                                    let v: Value = serde_json::from_str(&text).unwrap();
                                    seen.accepted.insert(id, v["position"].as_i64().unwrap());
                                    accepted.fetch_add(1, Ordering::Relaxed);
                                    true
                                }
                                503 => {
                                    if !(retry_after && problem) {
                                        seen.bad_unavailable.push(text);
                                    }
                                    false
                                }
                                // A retry while the first try is still in
                                // flight (its connection died with the
                                // server).
                                409 => false,
                                _ => {
                                    seen.bad_unavailable.push(format!("{status}: {text}"));
                                    true
                                }
                            }
                        };
                        if done {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    let before = |n: usize| {
        let accepted = accepted.clone();
        async move { (accepted.load(Ordering::Relaxed) >= n).then_some(()) }
    };
    wait_until(Duration::from_secs(30), "load before the restart", || {
        before(100)
    })
    .await;
    server.stop_server();
    // Down until the clients have been refused, then back.
    wait_until(
        Duration::from_secs(30),
        "a command refused while down",
        || {
            let refused = seen
                .lock()
                .unwrap()
                .statuses
                .get(&503)
                .copied()
                .unwrap_or(0);
            async move { (refused > 0).then_some(()) }
        },
    )
    .await;
    server.start_server();
    let at_restart = accepted.load(Ordering::Relaxed);
    wait_until(
        Duration::from_secs(60),
        "commands accepted again after the restart",
        || before(at_restart + 200),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Nothing but the outage refuses a command here, so the 503s are its.
    assert!(
        seen.statuses.get(&503).copied().unwrap_or(0) > 0,
        "commands were refused with 503 while PostgreSQL was down: {:?}",
        seen.statuses
    );
    assert!(
        seen.bad_unavailable.is_empty(),
        "every refusal while down is a 503 problem with Retry-After, never a 500: {:?}",
        &seen.bad_unavailable[..seen.bad_unavailable.len().min(5)]
    );

    // Nothing half-written: one event per accepted observation (none for a
    // command that was never accepted), positions gap-free, the chain whole.
    let pool = db.pool().await;
    let events = EventStore::read_after(&pool, 0, 1_000_000).await.unwrap();
    let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "positions are gap-free"
    );
    let recorded: Vec<Uuid> = events
        .iter()
        .filter(|e| e.event_type == "research.observation.recorded.v1")
        .map(|e| e.aggregate_id)
        .collect();
    let distinct: HashSet<&Uuid> = recorded.iter().collect();
    assert_eq!(distinct.len(), recorded.len(), "no observation twice");
    assert_eq!(
        distinct,
        seen.accepted.keys().collect::<HashSet<_>>(),
        "exactly the accepted observations are stored"
    );
    for e in &events {
        if let Some(position) = seen.accepted.get(&e.aggregate_id) {
            assert_eq!(*position, e.position, "the answer named the stored event");
        }
    }
    let mut chain = shared::verify::Verifier::new(None);
    for e in &events {
        chain.check(e).expect("the chain verifies");
    }
    chain.finish().expect("the chain verifies to its end");
    assert_eq!(chain.checked(), events.len() as u64);

    // The publisher carried on by itself: every event once, in order.
    let js = stream.jetstream().await;
    let messages = wait_until(Duration::from_secs(60), "every event in JetStream", || {
        let js = js.clone();
        let name = stream.name.clone();
        let n = events.len();
        async move {
            let messages = read_stream(&js, &name).await.ok()?;
            (messages.len() >= n).then_some(messages)
        }
    })
    .await;
    let published: Vec<i64> = messages.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(published, positions, "published once each, in order");
    api.shutdown().await;
}
