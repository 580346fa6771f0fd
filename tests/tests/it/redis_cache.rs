//! The projector warms Redis with every document, never lets an older
//! document replace a newer one, and refills Redis after an outage without
//! slowing the projection down.

use std::time::Duration;

use projector::read_tables::Doc;
use projector::redis_sink::{doc_key, write, RedisSink};
use projector::{Projector, ProjectorConfig};
use redis::AsyncCommands;
use serde_json::json;
use tests::{start_redis, wait_until};
use uuid::Uuid;

use crate::env::Env;

fn prefix() -> String {
    format!("t{}", Uuid::new_v4().simple())
}

async fn manager(url: &str) -> redis::aio::ConnectionManager {
    redis::Client::open(url)
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap()
}

/// Deletes the keys of a test's prefix on the shared Redis.
async fn clean(conn: &mut redis::aio::ConnectionManager, prefix: &str) {
    let keys: Vec<String> = conn.keys(format!("{prefix}:*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

fn doc(id: Uuid, position: i64, body: &str) -> Doc {
    Doc {
        kind: "observation",
        id,
        study_id: Uuid::nil(),
        code: None,
        position,
        body: body.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn an_older_document_never_replaces_a_newer_one() {
    let mut conn = manager("redis://127.0.0.1:6379").await;
    let prefix = prefix();
    let id = Uuid::now_v7();
    write(&mut conn, &prefix, &[doc(id, 10, "new")])
        .await
        .unwrap();
    write(&mut conn, &prefix, &[doc(id, 5, "old")])
        .await
        .unwrap();
    let body: Vec<u8> = conn
        .hget(doc_key(&prefix, "observation", &id), "b")
        .await
        .unwrap();
    assert_eq!(body, b"new");
    write(&mut conn, &prefix, &[doc(id, 11, "newer")])
        .await
        .unwrap();
    let body: Vec<u8> = conn
        .hget(doc_key(&prefix, "observation", &id), "b")
        .await
        .unwrap();
    assert_eq!(body, b"newer");
    clean(&mut conn, &prefix).await;
}

fn config(env: &Env) -> ProjectorConfig {
    ProjectorConfig {
        nats_stream: env.stream.name.clone(),
        subject_prefix: env.stream.prefix.clone(),
        consumer: "projector".into(),
        idle_wait: Duration::from_millis(50),
        max_batch: 1000,
    }
}

/// Every stored document, as `(key, body)`.
async fn stored(env: &Env, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let rows: Vec<(String, Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT 'study', id, body FROM read_model.studies UNION ALL SELECT 'subject', id, body FROM read_model.subjects \
         UNION ALL SELECT 'observation', id, body FROM read_model.observations",
    )
    .fetch_all(&env.db.pool().await)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(kind, id, body)| (doc_key(prefix, &kind, &id), body))
        .collect()
}

async fn redis_holds(url: &str, docs: &[(String, Vec<u8>)]) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    for (key, body) in docs {
        let held: Option<Vec<u8>> = conn.hget(key, "b").await.unwrap_or(None);
        if held.as_deref() != Some(&body[..]) {
            return false;
        }
    }
    true
}

async fn project_all(projector: &mut Projector, env: &Env) {
    let head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&env.db.pool().await)
        .await
        .unwrap();
    while projector.checkpoint() < head {
        projector.step().await.unwrap();
    }
}

#[tokio::test]
async fn every_document_reaches_redis() {
    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let correction = json!({"values": {"body_mass_g": 3800}, "reason": "scale recalibrated"});
    let path = format!("/v1/observations/{observation}/corrections");
    assert_eq!(
        env.api.post(&path, &env.writer2, &correction).await.status,
        200
    );
    let prefix = prefix();
    let url = "redis://127.0.0.1:6379";
    let pool = env.db.pool_as(tests::DbRole::Projector).await;
    let sink = RedisSink::start(url, prefix.clone(), pool.clone()).unwrap();
    let mut projector = Projector::new(pool, None, config(&env))
        .await
        .unwrap()
        .with_redis(sink);
    project_all(&mut projector, &env).await;
    let docs = stored(&env, &prefix).await;
    assert_eq!(docs.len(), 3);
    wait_until(
        Duration::from_secs(10),
        "the documents in Redis",
        || async { redis_holds(url, &docs).await.then_some(()) },
    )
    .await;
    let mut conn = manager(url).await;
    clean(&mut conn, &prefix).await;
}

#[tokio::test]
async fn redis_down_slows_nothing_and_is_refilled_when_it_returns() {
    let env = Env::start().await;
    let (mut redis, port, url) = tests::private_redis().await;
    let prefix = prefix();
    let pool = env.db.pool().await;
    let sink = RedisSink::start(&url, prefix.clone(), pool.clone()).unwrap();
    let mut projector = Projector::new(pool, None, config(&env))
        .await
        .unwrap()
        .with_redis(sink);
    let (_, subject, _) = env.recorded().await;
    project_all(&mut projector, &env).await;

    // Redis goes away; the projection goes on.
    redis.kill().unwrap();
    redis.wait().unwrap();
    let observation = env.observation(subject).await;
    let started = std::time::Instant::now();
    project_all(&mut projector, &env).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the projector does not wait for Redis"
    );

    // Redis returns, empty: everything changed since the outage comes back.
    let mut redis = start_redis(port);
    let docs = stored(&env, &prefix).await;
    let key = doc_key(&prefix, "observation", &observation);
    assert!(docs.iter().any(|(k, _)| *k == key));
    let changed: Vec<(String, Vec<u8>)> = docs.into_iter().filter(|(k, _)| *k == key).collect();
    wait_until(Duration::from_secs(20), "the refill", || async {
        redis_holds(&url, &changed).await.then_some(())
    })
    .await;
    redis.kill().unwrap();
    redis.wait().unwrap();
}
