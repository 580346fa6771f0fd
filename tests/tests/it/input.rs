//! Bad input of every kind gets the right status and an RFC 9457 body, and
//! writes nothing.

use serde_json::json;
use shared::auth::{claims_for, mint, Role};
use tests::token;

use crate::env::Env;

async fn event_count(env: &Env) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.db.pool().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_bodies_are_400_and_wrong_shapes_422() {
    let env = Env::start().await;
    let study = env.study().await;
    let before = event_count(&env).await;
    let path = format!("/v1/studies/{study}/closure");
    env.api
        .post_raw(&path, Some(&env.writer), b"{\"reason\": ".to_vec())
        .await
        .problem(400);
    env.api
        .post_raw(&path, Some(&env.writer), b"reason=done".to_vec())
        .await
        .problem(400);
    env.api
        .post_raw(&path, Some(&env.writer), b"{} {}".to_vec())
        .await
        .problem(400);
    let p = env
        .api
        .post(&path, &env.writer, &json!({"reason": 42}))
        .await
        .problem(422);
    assert_eq!(p["errors"][0]["field"], "reason");
    let p = env
        .api
        .post(
            &path,
            &env.writer,
            &json!({"reason": "r", "actor": "mallory"}),
        )
        .await
        .problem(422);
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("actor"),
        "{p}"
    );
    let p = env
        .api
        .post(&path, &env.writer, &json!({"reason": "r", "version": 7}))
        .await
        .problem(422);
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("version"),
        "{p}"
    );
    env.api
        .post(&path, &env.writer, &json!({}))
        .await
        .problem(422);
    env.api
        .post(&path, &env.writer, &json!([1, 2]))
        .await
        .problem(422);
    assert_eq!(event_count(&env).await, before, "nothing was written");
}

#[tokio::test]
async fn bodies_over_4_mib_are_413() {
    let env = Env::start().await;
    let study = env.study().await;
    let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(4 * 1024 * 1024 + 1));
    env.api
        .post_raw(
            &format!("/v1/studies/{study}/closure"),
            Some(&env.writer),
            big.into_bytes(),
        )
        .await
        .problem(413);
}

#[tokio::test]
async fn bad_uuids_in_path_are_400_and_in_body_422() {
    let env = Env::start().await;
    env.api
        .post(
            "/v1/studies/not-a-uuid/closure",
            &env.writer,
            &json!({"reason": "r"}),
        )
        .await
        .problem(400);
    let mut body = tests::penguins()[0].register_body();
    body["study_id"] = json!("1234");
    let p = env
        .api
        .post("/v1/studies", &env.writer, &body)
        .await
        .problem(422);
    assert_eq!(p["errors"][0]["field"], "study_id");
}

#[tokio::test]
async fn missing_and_bad_tokens_are_401() {
    let env = Env::start().await;
    let body = tests::penguins()[0].register_body();
    let raw = serde_json::to_vec(&body).unwrap();
    let answer = env.api.post_raw("/v1/studies", None, raw.clone()).await;
    answer.problem(401);
    assert_eq!(answer.header("www-authenticate"), Some("Bearer"));
    env.api
        .post_raw("/v1/studies", Some("not.a.jwt"), raw.clone())
        .await
        .problem(401);
    let expired = mint(
        tests::SECRET.as_bytes(),
        &claims_for("alice", &[Role::Writer], -3600),
    );
    env.api
        .post_raw("/v1/studies", Some(&expired), raw.clone())
        .await
        .problem(401);
    let forged = mint(
        b"another secret",
        &claims_for("alice", &[Role::Writer], 3600),
    );
    env.api
        .post_raw("/v1/studies", Some(&forged), raw)
        .await
        .problem(401);
}

#[tokio::test]
async fn roles_that_may_not_write_are_403() {
    let env = Env::start().await;
    let body = tests::penguins()[0].register_body();
    env.api
        .post("/v1/studies", &env.reader, &body)
        .await
        .problem(403);
    env.api
        .post("/v1/studies", &token("audrey", &[Role::Auditor]), &body)
        .await
        .problem(403);
    env.api
        .post("/v1/studies", &env.reviewer, &body)
        .await
        .problem(403);
    let admin = env
        .api
        .post("/v1/studies", &token("root", &[Role::Admin]), &body)
        .await;
    assert_eq!(admin.status, 201);
}

#[tokio::test]
async fn a_token_limited_to_studies_sees_others_as_unknown() {
    let env = Env::start().await;
    let study = env.study().await;
    let mut claims = claims_for("carol", &[Role::Writer], 3600);
    claims.studies = Some(vec![uuid::Uuid::now_v7()]);
    let limited = mint(tests::SECRET.as_bytes(), &claims);
    env.api
        .post(
            &format!("/v1/studies/{study}/subjects"),
            &limited,
            &json!({"label": "N1A1"}),
        )
        .await
        .problem(404);
}

#[tokio::test]
async fn unknown_paths_and_methods_are_problems_too() {
    let env = Env::start().await;
    env.api
        .post("/v1/nothing", &env.writer, &json!({}))
        .await
        .problem(404);
    let answer = tests::Answer::from(
        env.api
            .http
            .get(env.api.url("/v1/studies"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    answer.problem(405);
    let bad_if_match = env
        .api
        .post_with(
            "/v1/studies",
            &env.writer,
            &tests::penguins()[0].register_body(),
            &[("if-match", "W/x")],
        )
        .await;
    bad_if_match.problem(400);
}

#[tokio::test]
async fn health_endpoints_answer() {
    let env = Env::start().await;
    let live = env
        .api
        .http
        .get(env.api.url("/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = env
        .api
        .http
        .get(env.api.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        body,
        json!({"postgres": true, "nats": true, "publisher": {"ok": true, "position": 0}})
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_command() {
    let env = Env::start().await;
    let doc: serde_json::Value = env
        .api
        .http
        .get(env.api.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/v1/studies",
        "/v1/studies/{id}/amendments",
        "/v1/studies/{id}/closure",
        "/v1/studies/{id}/subjects",
        "/v1/subjects/{id}/withdrawal",
        "/v1/subjects/{id}/observations",
        "/v1/observations/{id}/corrections",
        "/v1/observations/{id}/retraction",
        "/v1/observations/{id}/signatures",
        "/v1/commands",
    ] {
        assert!(
            doc["paths"][path]["post"].is_object(),
            "{path} is documented"
        );
    }
    let record = &doc["components"]["schemas"]["RecordObservationBody"];
    assert!(
        record["required"]
            .as_array()
            .unwrap()
            .contains(&json!("observed_at")),
        "{record}"
    );
}
