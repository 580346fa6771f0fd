//! The audit endpoints of the query API over a real log.

use std::sync::Arc;

use query_api::QueryState;
use serde_json::Value;
use shared::auth::{Authenticator, Role};
use shared::envelope::StoredEvent;
use shared::store::EventStore;
use tests::{token, SECRET};
use uuid::Uuid;

use crate::audit::{log, tamper};
use crate::env::Env;

struct Audit {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Audit {
    async fn start(env: &Env) -> Self {
        let state = Arc::new(QueryState {
            pool: env.db.pool().await,
            auth: Authenticator::new(SECRET.as_bytes(), None, None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, query_api::router(state)).await });
        Self {
            base,
            http: reqwest::Client::new(),
            token: token("audrey", &[Role::Auditor]),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

fn parse(ndjson: &str) -> Vec<StoredEvent> {
    ndjson
        .lines()
        .map(|l| StoredEvent::from_cloud_event(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_log_streams_in_global_order_and_by_aggregate() {
    let env = Env::start().await;
    let pool = log(&env).await;
    let audit = Audit::start(&env).await;
    let (status, body) = audit.get("/v1/audit/events?after=0&limit=1000000").await;
    assert_eq!(status, 200);
    let events = parse(&body);
    assert_eq!(events, EventStore::read_after(&pool, 0, 100).await.unwrap());
    let (_, body) = audit.get("/v1/audit/events?after=3&limit=2").await;
    let positions: Vec<i64> = parse(&body).iter().map(|e| e.position).collect();
    assert_eq!(positions, [4, 5]);
    let observation = events[2].aggregate_id;
    let (_, body) = audit
        .get(&format!("/v1/audit/streams/{observation}/events"))
        .await;
    let versions: Vec<i64> = parse(&body).iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3]);
    let (status, _) = audit.get("/v1/audit/events?limit=0").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn an_observation_as_of_a_time_shows_what_was_known_then() {
    let env = Env::start().await;
    let pool = log(&env).await;
    let audit = Audit::start(&env).await;
    let events = EventStore::read_after(&pool, 0, 100).await.unwrap();
    let observation = events[2].aggregate_id;
    let at = |e: &StoredEvent| shared::envelope::format_time(&e.recorded_at);
    let (status, body) = audit
        .get(&format!(
            "/v1/audit/observations/{observation}?as_of={}",
            at(&events[2])
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let then: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(then["status"], "recorded");
    assert_eq!(then["values"]["body_mass_g"], 3750);
    assert_eq!(then["version"], 1);
    let (_, body) = audit
        .get(&format!("/v1/audit/observations/{observation}"))
        .await;
    let now: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(now["status"], "corrected");
    assert_eq!(now["values"]["body_mass_g"], 3800);
    assert_eq!(now["original_values"]["body_mass_g"], 3750);
    assert_eq!(now["last_change_reason"], "scale recalibrated");
    assert_eq!(now["signatures"].as_array().unwrap().len(), 1);
    let before = "2000-01-01T00:00:00Z";
    let (status, _) = audit
        .get(&format!(
            "/v1/audit/observations/{observation}?as_of={before}"
        ))
        .await;
    assert_eq!(status, 404);
    let (status, _) = audit
        .get(&format!("/v1/audit/observations/{}", Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn head_and_verify_prove_the_chain_and_name_a_tampered_position() {
    let env = Env::start().await;
    let pool = log(&env).await;
    let audit = Audit::start(&env).await;
    let events = EventStore::read_after(&pool, 0, 100).await.unwrap();
    let (_, body) = audit.get("/v1/audit/head").await;
    let head: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(head["position"], 7);
    assert_eq!(head["hash"], hex::encode(events[6].hash));
    let (_, body) = audit.get("/v1/audit/verify").await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"verified": true, "checked": 7})
    );
    let (_, body) = audit.get("/v1/audit/verify?from=4&to=6").await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["checked"], 3);
    tamper(
        &pool,
        "UPDATE events SET actor = 'mallory' WHERE position = 3",
    )
    .await;
    let (_, body) = audit.get("/v1/audit/verify").await;
    let verdict: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(verdict["verified"], false);
    assert_eq!(verdict["first_bad_position"], 3);
}

#[tokio::test]
async fn only_auditors_may_read_the_audit_trail() {
    let env = Env::start().await;
    let audit = Audit::start(&env).await;
    let writer = token("alice", &[Role::Writer]);
    let r = audit
        .http
        .get(format!("{}/v1/audit/head", audit.base))
        .bearer_auth(writer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = audit
        .http
        .get(format!("{}/v1/audit/head", audit.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
