//! The audit endpoints of the query API over a real log.

use serde_json::Value;
use shared::auth::Role;
use shared::envelope::StoredEvent;
use shared::store::EventStore;
use tests::{query_config, token, DbRole, QueryApi};
use uuid::Uuid;

use crate::audit::{log, tamper};
use crate::env::Env;

struct Audit {
    api: QueryApi,
    token: String,
}

impl Audit {
    async fn start(env: &Env) -> Self {
        Self {
            api: QueryApi::spawn(&query_config(&env.db.url_as(DbRole::Query), "", "")).await,
            token: token("audrey", &[Role::Auditor]),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let answer = self.api.get(path, &self.token).await;
        (
            answer.status,
            String::from_utf8_lossy(&answer.bytes).into_owned(),
        )
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
    audit.api.get("/v1/audit/head", &writer).await.problem(403);
    let r = audit
        .api
        .http
        .get(audit.api.url("/v1/audit/head"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

/// What an observation looked like after `events` (all of its own, in
/// order), computed without the domain code: the independent reference.
fn reference(events: &[StoredEvent]) -> Value {
    let mut values = serde_json::Map::new();
    let mut status = "recorded";
    let mut signatures = 0;
    let mut corrections = 0;
    for e in events {
        let data: Value = serde_json::from_str(&e.data).unwrap();
        match e.event_type.as_str() {
            "research.observation.recorded.v1" => {
                values = data["values"].as_object().unwrap().clone()
            }
            "research.observation.corrected.v1" => {
                for (k, v) in data["values"].as_object().unwrap() {
                    values.insert(k.clone(), v.clone());
                }
                status = "corrected";
                corrections += 1;
                signatures = 0;
            }
            "research.observation.retracted.v1" => status = "retracted",
            "research.observation.signed.v1" => signatures += 1,
            other => panic!("{other} is not an observation event"),
        }
    }
    serde_json::json!({"values": values, "status": status, "signatures": signatures,
                       "corrections": corrections, "version": events.len()})
}

#[tokio::test]
async fn as_of_answers_match_an_independent_replay_at_every_point_of_random_histories() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRunner};

    let env = Env::start().await;
    let study = env.study().await;
    let subject = env.subject(study).await;
    let audit = Audit::start(&env).await;
    let pool = env.db.pool().await;
    let rows: Vec<_> = tests::penguins()[0]
        .subjects
        .iter()
        .map(|s| s.observations[0].clone())
        .collect();
    // Histories: which change comes next to one observation (0 correct,
    // 1 sign, 2 retract) and the real row whose mass a correction uses.
    let mut runner = TestRunner::new(Config::with_cases(6));
    let strategy = proptest::collection::vec((0..3u8, 0..110usize), 1..8);
    let mut histories = Vec::new();
    for _ in 0..6 {
        histories.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    for history in histories {
        let observation = env.record(subject, &rows[0].record_body()).await.id();
        for (change, row) in history {
            let (path, token, body) = match change {
                0 => (
                    "corrections",
                    &env.writer2,
                    serde_json::json!({"values": {"body_mass_g": rows[row].values["body_mass_g"]}, "reason": "re-weighed"}),
                ),
                1 => (
                    "signatures",
                    &env.reviewer,
                    serde_json::json!({"meaning": "reviewed"}),
                ),
                _ => (
                    "retraction",
                    &env.writer,
                    serde_json::json!({"reason": "wrong bird"}),
                ),
            };
            // Refusals (nothing changed, already signed, retracted) are part
            // of real histories too; they add no event.
            env.api
                .post(
                    &format!("/v1/observations/{observation}/{path}"),
                    token,
                    &body,
                )
                .await;
        }
        let all = EventStore::read_after(&pool, 0, 10_000).await.unwrap();
        let own: Vec<StoredEvent> = all
            .into_iter()
            .filter(|e| e.aggregate_id == observation)
            .collect();
        for (i, e) in own.iter().enumerate() {
            let at = shared::envelope::format_time(&e.recorded_at);
            let (status, body) = audit
                .get(&format!("/v1/audit/observations/{observation}?as_of={at}"))
                .await;
            assert_eq!(status, 200, "{body}");
            let doc: Value = serde_json::from_str(&body).unwrap();
            let seen = serde_json::json!({
                "values": doc["values"], "status": doc["status"],
                "signatures": doc["signatures"].as_array().unwrap().len(),
                "corrections": doc["corrections"], "version": doc["version"],
            });
            assert_eq!(
                seen,
                reference(&own[..=i]),
                "as of event {} of {observation}",
                i + 1
            );
        }
    }
}
