//! Every domain rule of the contract, one test each, through HTTP.

use serde_json::json;
use shared::auth::Role;
use tests::token;
use uuid::Uuid;

use crate::env::{first_row, Env};

#[tokio::test]
async fn a_study_code_is_unique() {
    let env = Env::start().await;
    env.study().await;
    let again = tests::penguins()[0].register_body();
    let p = env
        .api
        .post("/v1/studies", &env.writer, &again)
        .await
        .problem(409);
    assert!(p["type"].as_str().unwrap().ends_with("code-taken"), "{p}");
}

#[tokio::test]
async fn a_study_code_and_variable_names_follow_their_patterns() {
    let env = Env::start().await;
    let mut body = tests::penguins()[0].register_body();
    body["code"] = json!("PAL 0708");
    let p = env
        .api
        .post("/v1/studies", &env.writer, &body)
        .await
        .problem(422);
    assert_eq!(p["errors"][0]["field"], "code");
    let mut body = tests::penguins()[0].register_body();
    body["variables"][0]["name"] = json!("Culmen");
    let p = env
        .api
        .post("/v1/studies", &env.writer, &body)
        .await
        .problem(422);
    assert_eq!(p["errors"][0]["field"], "variables[0].name");
    let mut body = tests::penguins()[0].register_body();
    body["variables"][0]["kind"] = json!("colour");
    env.api
        .post("/v1/studies", &env.writer, &body)
        .await
        .problem(422);
}

#[tokio::test]
async fn values_must_fit_their_variables() {
    let env = Env::start().await;
    let study = env.study().await;
    let subject = env.subject(study).await;
    for (variable, value) in [
        ("culmen_length_mm", json!("39.1")),
        ("culmen_length_mm", json!(-3)),
        ("flipper_length_mm", json!(181.5)),
        ("sex", json!("male")),
        ("egg_date", json!("2007-13-01")),
        ("clutch_completion", json!("Yes")),
    ] {
        let body = json!({"observed_at": "2007-11-11T00:00:00Z", "values": {variable: value}});
        let p = env.record(subject, &body).await.problem(422);
        assert_eq!(p["rule"], "value-does-not-fit", "{variable}: {p}");
        assert_eq!(p["errors"][0]["field"], format!("values.{variable}"));
    }
}

#[tokio::test]
async fn observed_at_is_an_rfc3339_timestamp() {
    let env = Env::start().await;
    let subject = env.subject(env.study().await).await;
    let body = json!({"observed_at": "11/11/2007", "values": {"body_mass_g": 3750}});
    let p = env.record(subject, &body).await.problem(422);
    assert_eq!(p["errors"][0]["field"], "observed_at");
}

#[tokio::test]
async fn an_observation_names_only_declared_variables() {
    let env = Env::start().await;
    let subject = env.subject(env.study().await).await;
    let body = json!({"observed_at": "2007-11-11T00:00:00Z", "values": {"wingspan_mm": 1}});
    let p = env.record(subject, &body).await.problem(422);
    assert_eq!(p["rule"], "unknown-variable");
}

#[tokio::test]
async fn null_records_a_value_measured_as_missing() {
    let env = Env::start().await;
    let subject = env.subject(env.study().await).await;
    let body = json!({"observed_at": "2007-11-11T00:00:00Z", "values": {"delta_15n": null, "body_mass_g": 3750}});
    let answer = env.record(subject, &body).await;
    assert_eq!(answer.status, 201);
    assert_eq!(answer.json()["version"], 1);
    assert!(answer.header("consistency-token").is_some());
}

#[tokio::test]
async fn nothing_may_be_added_to_a_closed_study() {
    let env = Env::start().await;
    let study = env.study().await;
    let subject = env.subject(study).await;
    let closed = env
        .api
        .post(
            &format!("/v1/studies/{study}/closure"),
            &env.writer,
            &json!({"reason": "season over"}),
        )
        .await;
    assert_eq!(closed.status, 200);
    let p = env.record(subject, &first_row()).await.problem(422);
    assert_eq!(p["rule"], "study-closed");
    let p = env
        .api
        .post(
            &format!("/v1/studies/{study}/subjects"),
            &env.writer,
            &json!({"label": "N9A9"}),
        )
        .await
        .problem(422);
    assert_eq!(p["rule"], "study-closed");
}

#[tokio::test]
async fn nothing_may_be_added_to_a_withdrawn_subject() {
    let env = Env::start().await;
    let subject = env.subject(env.study().await).await;
    let withdrawn = env
        .api
        .post(
            &format!("/v1/subjects/{subject}/withdrawal"),
            &env.writer,
            &json!({"reason": "nest abandoned"}),
        )
        .await;
    assert_eq!(withdrawn.status, 200);
    let p = env.record(subject, &first_row()).await.problem(422);
    assert_eq!(p["rule"], "subject-withdrawn");
}

#[tokio::test]
async fn changes_must_give_a_non_empty_reason() {
    let env = Env::start().await;
    let (study, subject, observation) = env.recorded().await;
    for (path, body) in [
        (
            format!("/v1/observations/{observation}/corrections"),
            json!({"values": {"body_mass_g": 3800}, "reason": ""}),
        ),
        (
            format!("/v1/observations/{observation}/retraction"),
            json!({"reason": "  "}),
        ),
        (
            format!("/v1/subjects/{subject}/withdrawal"),
            json!({"reason": ""}),
        ),
        (
            format!("/v1/studies/{study}/closure"),
            json!({"reason": ""}),
        ),
        (
            format!("/v1/studies/{study}/amendments"),
            json!({"title": "New title", "reason": ""}),
        ),
    ] {
        let p = env.api.post(&path, &env.writer, &body).await.problem(422);
        assert_eq!(p["rule"], "reason-required", "{path}");
    }
    // And a missing reason is a missing field.
    let p = env
        .api
        .post(
            &format!("/v1/studies/{study}/closure"),
            &env.writer,
            &json!({}),
        )
        .await
        .problem(422);
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("reason"),
        "{p}"
    );
}

#[tokio::test]
async fn a_correction_must_change_a_value() {
    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let same = json!({"values": {"culmen_length_mm": 39.1}, "reason": "re-measured"});
    let p = env
        .api
        .post(
            &format!("/v1/observations/{observation}/corrections"),
            &env.writer,
            &same,
        )
        .await
        .problem(422);
    assert_eq!(p["rule"], "nothing-changed");
    let changed = json!({"values": {"culmen_length_mm": 39.2}, "reason": "re-measured"});
    let answer = env
        .api
        .post(
            &format!("/v1/observations/{observation}/corrections"),
            &env.writer,
            &changed,
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["version"], 2);
}

#[tokio::test]
async fn a_retracted_observation_cannot_be_corrected_or_signed() {
    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let retracted = env
        .api
        .post(
            &format!("/v1/observations/{observation}/retraction"),
            &env.writer,
            &json!({"reason": "wrong nest"}),
        )
        .await;
    assert_eq!(retracted.status, 200);
    let p = env
        .api
        .post(
            &format!("/v1/observations/{observation}/corrections"),
            &env.writer,
            &json!({"values": {"body_mass_g": 1}, "reason": "x"}),
        )
        .await
        .problem(422);
    assert_eq!(p["rule"], "observation-retracted");
    let p = env
        .api
        .post(
            &format!("/v1/observations/{observation}/signatures"),
            &env.reviewer,
            &json!({"meaning": "reviewed"}),
        )
        .await
        .problem(422);
    assert_eq!(p["rule"], "observation-retracted");
}

#[tokio::test]
async fn a_correction_voids_earlier_signatures() {
    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let sign = format!("/v1/observations/{observation}/signatures");
    assert_eq!(
        env.api
            .post(&sign, &env.reviewer, &json!({"meaning": "approved"}))
            .await
            .status,
        200
    );
    let p = env
        .api
        .post(&sign, &env.reviewer, &json!({"meaning": "approved"}))
        .await
        .problem(422);
    assert_eq!(p["rule"], "already-signed");
    let correction = json!({"values": {"body_mass_g": 3800}, "reason": "scale recalibrated"});
    let answer = env
        .api
        .post(
            &format!("/v1/observations/{observation}/corrections"),
            &env.writer2,
            &correction,
        )
        .await;
    assert_eq!(answer.status, 200);
    // The earlier approval is void, so the same reviewer may approve again.
    assert_eq!(
        env.api
            .post(&sign, &env.reviewer, &json!({"meaning": "approved"}))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn signing_needs_the_reviewer_role_and_approval_a_second_person() {
    let env = Env::start().await;
    let (_, _, observation) = env.recorded().await;
    let sign = format!("/v1/observations/{observation}/signatures");
    let p = env
        .api
        .post(&sign, &env.writer, &json!({"meaning": "reviewed"}))
        .await
        .problem(403);
    assert!(p["detail"].as_str().unwrap().contains("reviewer"));
    // alice recorded it; alice as a reviewer may not approve her own record.
    let alice_reviewer = token("alice", &[Role::Writer, Role::Reviewer]);
    let p = env
        .api
        .post(&sign, &alice_reviewer, &json!({"meaning": "approved"}))
        .await
        .problem(422);
    assert_eq!(p["rule"], "two-person-rule");
    assert_eq!(
        env.api
            .post(&sign, &env.reviewer, &json!({"meaning": "approved"}))
            .await
            .status,
        200
    );
    let p = env
        .api
        .post(&sign, &env.reviewer, &json!({"meaning": "endorsed"}))
        .await
        .problem(422);
    assert_eq!(p["errors"][0]["field"], "meaning");
}

#[tokio::test]
async fn unknown_targets_are_404_and_taken_ids_are_409() {
    let env = Env::start().await;
    let (study, subject, observation) = env.recorded().await;
    let nobody = Uuid::now_v7();
    env.record(nobody, &first_row()).await.problem(404);
    env.api
        .post(
            &format!("/v1/studies/{nobody}/closure"),
            &env.writer,
            &json!({"reason": "r"}),
        )
        .await
        .problem(404);
    // A subject id addressed as an observation does not exist as one.
    env.api
        .post(
            &format!("/v1/observations/{subject}/retraction"),
            &env.writer,
            &json!({"reason": "r"}),
        )
        .await
        .problem(404);
    let mut body = first_row();
    body["observation_id"] = json!(observation);
    env.record(subject, &body).await.problem(409);
    body["observation_id"] = json!(study);
    env.record(subject, &body).await.problem(409);
}

#[tokio::test]
async fn an_amendment_adds_variables_that_can_then_be_recorded() {
    let env = Env::start().await;
    let study = env.study().await;
    let subject = env.subject(study).await;
    let amend = json!({
        "add_variables": [{"name": "nest_count", "kind": "integer", "min": 0}],
        "reason": "protocol v2 counts nests"
    });
    let answer = env
        .api
        .post(
            &format!("/v1/studies/{study}/amendments"),
            &env.writer,
            &amend,
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.bytes)
    );
    assert_eq!(answer.json()["version"], 2);
    let body = json!({"observed_at": "2007-11-11T00:00:00Z", "values": {"nest_count": 2}});
    assert_eq!(env.record(subject, &body).await.status, 201);
    let p = env
        .api
        .post(
            &format!("/v1/studies/{study}/amendments"),
            &env.writer,
            &json!({"reason": "nothing"}),
        )
        .await
        .problem(422);
    assert_eq!(p["rule"], "nothing-changed");
}

#[tokio::test]
async fn the_batch_endpoint_answers_each_item_on_its_own() {
    let env = Env::start().await;
    let study = env.study().await;
    let subject = Uuid::now_v7();
    let row = first_row();
    let mut record = row.clone();
    record["type"] = json!("RecordObservation");
    record["target"] = json!(subject);
    let commands = json!({"commands": [
        {"type": "RegisterSubject", "target": study, "subject_id": subject, "label": "N1A1"},
        record,
        {"type": "RecordObservation", "target": subject, "observed_at": "2007-11-11T00:00:00Z", "values": {"wingspan": 1}},
        {"type": "Explode"},
        {"type": "SignObservation", "target": Uuid::now_v7(), "meaning": "reviewed"},
    ]});
    let answer = env.api.post("/v1/commands", &env.writer, &commands).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.bytes)
    );
    let results = answer.json()["results"].as_array().unwrap().clone();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 422, 422, 403]);
    assert_eq!(results[2]["problem"]["rule"], "unknown-variable");
    let highest = results[1]["position"].as_i64().unwrap();
    assert_eq!(
        answer.header("consistency-token"),
        Some(highest.to_string().as_str())
    );
    let too_many = json!({"commands": vec![json!({"type": "CloseStudy"}); 1001]});
    env.api
        .post("/v1/commands", &env.writer, &too_many)
        .await
        .problem(422);
}
