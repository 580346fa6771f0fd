//! Hostile and careless clients: one test per way the trust boundaries
//! were found broken. Each reproduces the attack against the real services
//! (command API, projector, query API on the hot standby, JetStream),
//! asserts the contract's answer, and then proves that the pipeline still
//! flows: a later command is readable with its `Consistency-Token` and is
//! in JetStream.

use std::time::Duration;

use serde_json::{json, Value};
use shared::auth::{claims_for, mint, Role};
use shared::store::{AppenderConfig, EventStore};
use tests::{
    query_config, read_stream, replica_url, token, token_for_studies, wait_until, Answer, DbRole,
    QueryApi, SECRET,
};
use uuid::Uuid;

use crate::env::{first_row, Env};
use crate::reads::{live_projector, Live};

/// The whole pipeline of one test, with a study and a subject to write to.
pub(crate) struct Pipeline {
    pub env: Env,
    _live: Live,
    pub query: QueryApi,
    pub study: Uuid,
    pub subject: Uuid,
}

impl Pipeline {
    pub async fn start() -> Self {
        Self::start_waiting(Duration::from_secs(2)).await
    }

    /// A pipeline whose query API waits at most `consistency_timeout` for
    /// a `Consistency-Token`.
    pub async fn start_waiting(consistency_timeout: Duration) -> Self {
        let env = Env::start().await;
        let live = live_projector(&env, None).await;
        let read_url = replica_url(&env.db.url_as(DbRole::Query));
        let mut config = query_config(&read_url, "", "");
        config.consistency_timeout = consistency_timeout;
        let query = QueryApi::spawn(&config).await;
        let study = env.study().await;
        let subject = env.subject(study).await;
        Self {
            env,
            _live: live,
            query,
            study,
            subject,
        }
    }

    pub async fn events(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.env.db.pool().await)
            .await
            .unwrap()
    }

    /// The position of the newest event.
    pub async fn head(&self) -> i64 {
        sqlx::query_scalar("SELECT max(position) FROM events")
            .fetch_one(&self.env.db.pool().await)
            .await
            .unwrap()
    }

    /// Reads `path` with `token` once the answer reflects `position`.
    pub async fn read_at(&self, path: &str, token: &str, position: i64) -> Answer {
        let position = position.to_string();
        wait_until(
            Duration::from_secs(20),
            "a read at the position",
            || async {
                let answer = self
                    .query
                    .get_with(path, token, &[("consistency-token", &position)])
                    .await;
                (answer.status != 503).then_some(answer)
            },
        )
        .await
    }

    /// The pipeline still flows: a new observation is readable with its
    /// token and reaches JetStream.
    pub async fn flows(&self) {
        let answer = self.env.record(self.subject, &first_row()).await;
        assert_eq!(
            answer.status,
            201,
            "{}",
            String::from_utf8_lossy(&answer.bytes)
        );
        let id = answer.id();
        let position: i64 = answer
            .header("consistency-token")
            .and_then(|t| t.parse().ok())
            .expect("a Consistency-Token");
        let read = self
            .read_at(
                &format!("/v1/observations/{id}"),
                &self.env.reader,
                position,
            )
            .await;
        assert_eq!(read.status, 200, "{}", String::from_utf8_lossy(&read.bytes));
        assert_eq!(read.json()["id"], id.to_string());
        let js = self.env.stream.jetstream().await;
        let name = self.env.stream.name.clone();
        wait_until(
            Duration::from_secs(20),
            "the event in JetStream",
            || async {
                let messages = read_stream(&js, &name).await.ok()?;
                messages
                    .iter()
                    .any(|(p, _, _)| *p == position)
                    .then_some(())
            },
        )
        .await;
    }
}

fn text(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.bytes).into_owned()
}

#[tokio::test]
async fn control_characters_in_any_text_are_refused_naming_the_field() {
    let p = Pipeline::start().await;
    let before = p.events().await;
    let observation = p.env.observation(p.subject).await;
    let cases = [
        (
            format!("/v1/studies/{}/subjects", p.study),
            json!({"label": "poison\u{0}label"}),
            "label",
        ),
        (
            format!("/v1/studies/{}/subjects", p.study),
            json!({"label": "ok", "attributes": {"bell\u{7}": "x"}}),
            "attributes",
        ),
        (
            format!("/v1/studies/{}/subjects", p.study),
            json!({"label": "ok", "attributes": {"k": "esc\u{1b}[2J"}}),
            "attributes",
        ),
        (
            format!("/v1/observations/{observation}/retraction"),
            json!({"reason": "nul\u{0}"}),
            "reason",
        ),
        (
            format!("/v1/observations/{observation}/corrections"),
            json!({"values": {"body_mass_g": 1}, "reason": "c1 control \u{85}"}),
            "reason",
        ),
        (
            format!("/v1/subjects/{}/observations", p.subject),
            json!({"observed_at": "2007-11-11T00:00:00Z", "values": {"body_mass_g": 1}, "comment": "\u{0}"}),
            "comment",
        ),
        (
            format!("/v1/studies/{}/amendments", p.study),
            json!({"title": "t\u{0}", "reason": "r"}),
            "title",
        ),
    ];
    for (path, body, field) in cases {
        let problem = p
            .env
            .api
            .post(&path, &p.env.writer, &body)
            .await
            .problem(422);
        assert!(
            problem["errors"][0]["field"]
                .as_str()
                .is_some_and(|f| f.starts_with(field)),
            "{path}: {problem}"
        );
    }
    assert_eq!(p.events().await, before + 1, "only the observation");
    p.flows().await;
}

#[tokio::test]
async fn text_the_log_already_holds_is_projected_whatever_it_holds() {
    let p = Pipeline::start().await;
    // An event written before text was checked at the edge: the log holds
    // it for ever, so the projection must take it.
    let (store, _appender) = EventStore::start(
        p.env.db.pool_as(DbRole::Command).await,
        AppenderConfig::default(),
    );
    let label = "old\u{0}label\u{1b}";
    let request = crate::store::raw_registration(p.study, label, None);
    let subject = request.aggregate_id;
    let appended = store.append(request).await.unwrap();
    let read = p
        .read_at(
            &format!("/v1/subjects/{subject}"),
            &p.env.reader,
            appended.position,
        )
        .await;
    assert_eq!(read.status, 200, "{}", text(&read));
    assert_eq!(read.json()["label"], label, "the document keeps it exactly");
    let page = p
        .read_at(
            &format!("/v1/studies/{}/subjects?limit=1000", p.study),
            &p.env.reader,
            appended.position,
        )
        .await;
    let labels: Vec<Value> = page.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].clone())
        .collect();
    assert!(labels.contains(&json!(label)), "{labels:?}");
    p.flows().await;
}

#[tokio::test]
async fn a_refused_command_fails_alone_beside_everyone_elses() {
    let p = Pipeline::start().await;
    let observation = p.env.observation(p.subject).await;
    let bad = |i: usize| {
        let api = &p.env.api;
        let token = &p.env.writer;
        async move {
            let path = format!("/v1/observations/{observation}/retraction");
            let body = json!({ "reason": format!("nul {i} \u{0}") });
            api.post(&path, token, &body).await
        }
    };
    let good = |_: usize| {
        let api = &p.env.api;
        let token = &p.env.writer2;
        let path = format!("/v1/subjects/{}/observations", p.subject);
        async move { api.post(&path, token, &first_row()).await }
    };
    let (bads, goods) = tokio::join!(
        futures::future::join_all((0..8).map(bad)),
        futures::future::join_all((0..24).map(good))
    );
    for answer in &bads {
        answer.problem(422);
    }
    for answer in &goods {
        assert_eq!(answer.status, 201, "{}", text(answer));
    }
    // Inside one batch, each item succeeds or fails on its own.
    let batch = json!({"commands": [
        {"type": "RecordObservation", "target": p.subject, "observed_at": "2007-11-11T00:00:00Z",
         "values": {"body_mass_g": 3750}},
        {"type": "RetractObservation", "target": observation, "reason": "nul \u{0}"},
        {"type": "RecordObservation", "target": p.subject, "observed_at": "2007-11-12T00:00:00Z",
         "values": {"body_mass_g": 3800}},
    ]});
    let answer = p.env.api.post("/v1/commands", &p.env.writer, &batch).await;
    assert_eq!(answer.status, 200, "{}", text(&answer));
    let statuses: Vec<u64> = answer.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 422, 201]);
    // A token whose `sub` holds a NUL is a 401, not a 500, on both APIs.
    let nul_sub = mint(
        SECRET.as_bytes(),
        &claims_for("mallory\u{0}", &[Role::Writer, Role::Reader], 60),
    );
    p.env
        .api
        .post(
            &format!("/v1/subjects/{}/observations", p.subject),
            &nul_sub,
            &first_row(),
        )
        .await
        .problem(401);
    p.query
        .get(&format!("/v1/studies/{}", p.study), &nul_sub)
        .await
        .problem(401);
    p.flows().await;
}

#[tokio::test]
async fn reasons_and_events_too_large_to_publish_are_refused_before_writing() {
    let p = Pipeline::start().await;
    let observation = p.env.observation(p.subject).await;
    let before = p.events().await;
    let retraction = format!("/v1/observations/{observation}/retraction");
    let huge = json!({ "reason": "x".repeat(4 * 1024 * 1024 - 64) });
    let problem = p
        .env
        .api
        .post(&retraction, &p.env.writer, &huge)
        .await
        .problem(422);
    assert_eq!(problem["errors"][0]["field"], "reason");
    let over = json!({ "reason": "x".repeat(16 * 1024 + 1) });
    p.env
        .api
        .post(&retraction, &p.env.writer, &over)
        .await
        .problem(422);
    // The largest reason is taken.
    let correction = json!({"values": {"body_mass_g": 3333}, "reason": "y".repeat(16 * 1024)});
    let answer = p
        .env
        .api
        .post(
            &format!("/v1/observations/{observation}/corrections"),
            &p.env.writer,
            &correction,
        )
        .await;
    assert_eq!(answer.status, 200, "{}", text(&answer));
    // Every field within its bound, the event over what JetStream takes.
    let category = |v: usize, c: usize| format!("{v}-{c}-{}", "c".repeat(240));
    let variables: Vec<Value> = (0..1000)
        .map(|v| {
            json!({"name": format!("v{v}"), "kind": "categorical",
                   "categories": (0..5).map(|c| category(v, c)).collect::<Vec<_>>()})
        })
        .collect();
    let study = json!({"code": "TOO-LARGE", "title": "t", "principal_investigator": "p",
                       "variables": variables});
    assert!(serde_json::to_vec(&study).unwrap().len() < 4 * 1024 * 1024);
    let problem = p
        .env
        .api
        .post("/v1/studies", &p.env.writer, &study)
        .await
        .problem(422);
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("event-too-large")),
        "{problem}"
    );
    assert_eq!(p.events().await, before + 1, "only the correction");
    p.flows().await;
}

/// The command API's readiness, as JSON.
async fn readiness(p: &Pipeline) -> (u16, Value) {
    let response = p
        .env
        .api
        .http
        .get(p.env.api.url("/readyz"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn set_max_message_size(p: &Pipeline, size: i32) {
    let js = p.env.stream.jetstream().await;
    let mut stream = js.get_stream(&p.env.stream.name).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.max_message_size = size;
    js.update_stream(config).await.unwrap();
}

#[tokio::test]
async fn a_publisher_that_cannot_progress_says_so_and_recovers() {
    let p = Pipeline::start().await;
    p.flows().await;
    // JetStream now refuses every event: the publisher is stuck at the next
    // position, whatever it does.
    set_max_message_size(&p, 300).await;
    let stuck = p.env.record(p.subject, &first_row()).await;
    assert_eq!(stuck.status, 201, "commands do not wait for publishing");
    let position: i64 = stuck.header("consistency-token").unwrap().parse().unwrap();
    let report = wait_until(Duration::from_secs(20), "readiness to turn red", || async {
        let (status, body) = readiness(&p).await;
        (status == 503 && body["publisher"]["ok"] == false).then_some(body)
    })
    .await;
    assert_eq!(report["publisher"]["position"], position - 1, "{report}");
    assert!(report["publisher"]["error"].is_string(), "{report}");
    assert!(report["publisher"]["failures"].as_u64().unwrap() >= 1);
    let metrics = p
        .env
        .api
        .http
        .get(p.env.api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert!(gauge("loop_consecutive_failures{loop=\"publisher\"}").unwrap() >= 1.0);
    assert!(
        gauge("outbox_backlog_events").unwrap() >= 1.0,
        "the backlog is real"
    );
    // Backing off, not spinning: the fifth try comes after 100 + 200 + 400
    // + 800 ms of waiting (a hot loop would be there in milliseconds).
    let report = wait_until(Duration::from_secs(20), "five tries", || async {
        let (_, body) = readiness(&p).await;
        (body["publisher"]["failures"].as_u64()? >= 5).then_some(body)
    })
    .await;
    let failing_for = report["publisher"]["failing_for_seconds"].as_f64().unwrap();
    assert!(failing_for >= 1.4, "{report}");
    set_max_message_size(&p, -1).await;
    wait_until(
        Duration::from_secs(20),
        "readiness to turn green",
        || async { (readiness(&p).await.0 == 200).then_some(()) },
    )
    .await;
    p.flows().await;
}

/// Two studies, A (the pipeline's) and B, each with a subject and an
/// observation: `(B, B's subject, B's observation, A's observation)`.
async fn second_study(p: &Pipeline) -> (Uuid, Uuid, Uuid, Uuid) {
    let a_observation = p.env.observation(p.subject).await;
    let b = p.env.register(&tests::penguins()[1]).await;
    let b_subject = p.env.subject(b).await;
    let b_observation = p.env.observation(b_subject).await;
    (b, b_subject, b_observation, a_observation)
}

#[tokio::test]
async fn a_limited_auditor_reads_its_own_studies_events_only() {
    let p = Pipeline::start().await;
    let (b, b_subject, b_observation, _) = second_study(&p).await;
    let head = p.head().await;
    let limited = token_for_studies("audra", &[Role::Auditor], &[p.study]);
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE study_id = $1")
        .bind(p.study)
        .fetch_one(&p.env.db.pool().await)
        .await
        .unwrap();
    // The audit export reads the standby as it stands: wait until it has
    // replayed A's events (then it must hold exactly those).
    let replayed = Duration::from_secs(20);
    let sources: Vec<String> = wait_until(replayed, "the standby to hold the head", || async {
        let answer = p
            .read_at("/v1/audit/events?limit=100000", &limited, head)
            .await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        let sources: Vec<String> = text(&answer)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["source"].to_string())
            .collect();
        (sources.len() as i64 >= own).then_some(sources)
    })
    .await;
    assert_eq!(sources.len() as i64, own);
    assert!(sources
        .iter()
        .all(|s| s == &format!("\"/studies/{}\"", p.study)));
    // B's streams and as-of values are, to this token, unknown ids.
    let unknown = Uuid::now_v7();
    for (id, path) in [
        (b_subject, "/v1/audit/streams/{}/events"),
        (b, "/v1/audit/streams/{}/events"),
        (
            b_observation,
            "/v1/audit/observations/{}?as_of=2100-01-01T00:00:00Z",
        ),
    ] {
        let hidden = p
            .query
            .get(&path.replace("{}", &id.to_string()), &limited)
            .await
            .problem(404);
        let missing = p
            .query
            .get(&path.replace("{}", &unknown.to_string()), &limited)
            .await
            .problem(404);
        let hidden = hidden.to_string().replace(&id.to_string(), "ID");
        let missing = missing.to_string().replace(&unknown.to_string(), "ID");
        assert_eq!(hidden, missing);
    }
    // What speaks for the whole log needs an unlimited auditor.
    for path in ["/v1/audit/head", "/v1/audit/verify"] {
        let refused = p.query.get(path, &limited).await;
        refused.problem(403);
        assert_eq!(refused.header("cache-control"), Some("no-store"));
        let auditor = token("audrey", &[Role::Auditor]);
        assert_eq!(p.query.get(path, &auditor).await.status, 200);
    }
    p.flows().await;
}

#[tokio::test]
async fn another_studys_records_are_unknown_ids_to_a_limited_token() {
    let p = Pipeline::start().await;
    let (b, b_subject, b_observation, a_observation) = second_study(&p).await;
    let head = p.head().await;
    let reader = token_for_studies("rhea", &[Role::Reader], &[p.study]);
    let code = tests::penguins()[1].code.clone();
    let unknown = Uuid::now_v7();
    for (hidden, missing) in [
        (format!("/v1/studies/{b}"), format!("/v1/studies/{unknown}")),
        (
            format!("/v1/studies/by-code/{code}"),
            "/v1/studies/by-code/NO-SUCH-CODE".to_owned(),
        ),
        (
            format!("/v1/subjects/{b_subject}"),
            format!("/v1/subjects/{unknown}"),
        ),
        (
            format!("/v1/observations/{b_observation}"),
            format!("/v1/observations/{unknown}"),
        ),
        (
            format!("/v1/studies/{b}/subjects"),
            format!("/v1/studies/{unknown}/subjects"),
        ),
        (
            format!("/v1/subjects/{b_subject}/observations"),
            format!("/v1/subjects/{unknown}/observations"),
        ),
        (
            format!("/v1/studies/{b}/observations.ndjson"),
            format!("/v1/studies/{unknown}/observations.ndjson"),
        ),
    ] {
        let hidden = p.read_at(&hidden, &reader, head).await.problem(404);
        let missing = p.read_at(&missing, &reader, head).await.problem(404);
        assert_eq!(hidden["detail"], missing["detail"], "{hidden}");
    }
    let listing = p.read_at("/v1/studies", &reader, head).await;
    let ids: Vec<Value> = listing.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(ids, [json!(p.study)]);
    // Commands and batch items addressed to B: the 404 of an unknown id.
    let writer = token_for_studies("alice", &[Role::Writer], &[p.study]);
    let reviewer = token_for_studies("rita", &[Role::Reviewer], &[p.study]);
    let api = &p.env.api;
    let detail = |answer: Answer, id: Uuid, unknown: Uuid| {
        let problem = answer.problem(404);
        problem["detail"]
            .as_str()
            .unwrap()
            .replace(&id.to_string(), &unknown.to_string())
    };
    for (path, body, token) in [
        (
            "/v1/subjects/{}/observations".to_owned(),
            first_row(),
            &writer,
        ),
        (
            "/v1/observations/{}/corrections".to_owned(),
            json!({"values": {"body_mass_g": 1}, "reason": "r"}),
            &writer,
        ),
        (
            "/v1/observations/{}/retraction".to_owned(),
            json!({"reason": "r"}),
            &writer,
        ),
        (
            "/v1/observations/{}/signatures".to_owned(),
            json!({"meaning": "reviewed"}),
            &reviewer,
        ),
    ] {
        let target = if path.starts_with("/v1/subjects") {
            b_subject
        } else {
            b_observation
        };
        let hidden = api
            .post(&path.replace("{}", &target.to_string()), token, &body)
            .await;
        let missing = api
            .post(&path.replace("{}", &unknown.to_string()), token, &body)
            .await;
        assert_eq!(
            detail(hidden, target, unknown),
            detail(missing, unknown, unknown)
        );
    }
    api.post(
        &format!("/v1/studies/{b}/closure"),
        &writer,
        &json!({"reason": "r"}),
    )
    .await
    .problem(404);
    api.post(
        &format!("/v1/studies/{b}/subjects"),
        &writer,
        &json!({"label": "x"}),
    )
    .await
    .problem(404);
    let batch = json!({"commands": [
        {"type": "RetractObservation", "target": b_observation, "reason": "r"},
        {"type": "RetractObservation", "target": a_observation, "reason": "r"},
    ]});
    let answer = api.post("/v1/commands", &writer, &batch).await;
    let statuses: Vec<u64> = answer.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [404, 200]);
    // A limited token registers only studies it names.
    let mut study = tests::penguins()[2].register_body();
    api.post("/v1/studies", &writer, &study).await.problem(403);
    study["study_id"] = json!(p.study);
    api.post("/v1/studies", &writer, &study).await.problem(409);
    p.flows().await;
}

#[tokio::test]
async fn idempotency_replays_are_authorized_like_new_requests() {
    let p = Pipeline::start().await;
    let (_, b_subject, _, _) = second_study(&p).await;
    let api = &p.env.api;
    let path = format!("/v1/subjects/{b_subject}/observations");
    let key = [("idempotency-key", "replay-1")];
    let alice = token("alice", &[Role::Writer]);
    let first = api.post_with(&path, &alice, &first_row(), &key).await;
    assert_eq!(first.status, 201);
    // The same principal, with a token that may no longer make the request.
    let limited = token_for_studies("alice", &[Role::Writer], &[p.study]);
    api.post_with(&path, &limited, &first_row(), &key)
        .await
        .problem(404);
    let reader = token("alice", &[Role::Reader]);
    api.post_with(&path, &reader, &first_row(), &key)
        .await
        .problem(403);
    let again = api.post_with(&path, &alice, &first_row(), &key).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.bytes, first.bytes, "the stored answer, byte for byte");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // A batch's stored answer holds every item's result: shown only to a
    // token that could make every item now.
    let batch = json!({"commands": [
        {"type": "RecordObservation", "target": b_subject, "observed_at": "2008-11-11T00:00:00Z",
         "values": {"body_mass_g": 3000}},
        {"type": "RecordObservation", "target": p.subject, "observed_at": "2008-11-11T00:00:00Z",
         "values": {"body_mass_g": 3100}},
    ]});
    let key = [("idempotency-key", "replay-batch-1")];
    let first = api.post_with("/v1/commands", &alice, &batch, &key).await;
    assert_eq!(first.status, 200);
    api.post_with("/v1/commands", &limited, &batch, &key)
        .await
        .problem(403);
    api.post_with("/v1/commands", &reader, &batch, &key)
        .await
        .problem(403);
    let again = api.post_with("/v1/commands", &alice, &batch, &key).await;
    assert_eq!(again.bytes, first.bytes);
    p.flows().await;
}

#[tokio::test]
async fn approval_needs_a_signer_who_is_no_author_of_any_version() {
    let p = Pipeline::start().await;
    let observation = p.env.observation(p.subject).await; // recorded by alice
    let correction = json!({"values": {"body_mass_g": 3900}, "reason": "scale"});
    let answer = p
        .env
        .api
        .post(
            &format!("/v1/observations/{observation}/corrections"),
            &p.env.writer2, // bob
            &correction,
        )
        .await;
    assert_eq!(answer.status, 200);
    let path = format!("/v1/observations/{observation}/signatures");
    let approve = json!({"meaning": "approved"});
    for author in ["alice", "bob"] {
        let reviewer = token(author, &[Role::Reviewer]);
        let problem = p
            .env
            .api
            .post(&path, &reviewer, &approve)
            .await
            .problem(422);
        assert_eq!(problem["rule"], "two-person-rule", "{author}");
    }
    let answer = p.env.api.post(&path, &p.env.reviewer, &approve).await;
    assert_eq!(answer.status, 200, "{}", text(&answer));
    p.flows().await;
}

/// Bytes sent as they are over TCP: the status, the head and the body of
/// the answer (the connection is closed by the server after an error).
async fn raw_tcp(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before it has read everything.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A request sent as it is, for the HTTP layer's own answers.
async fn raw(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: &[(String, String)],
) -> Answer {
    let mut request = client.request(method, url);
    for (k, v) in headers {
        request = request.header(k.as_str(), v.as_str());
    }
    Answer::from(request.send().await.expect("an answer")).await
}

#[tokio::test]
async fn the_http_layer_answers_every_error_as_a_problem() {
    let p = Pipeline::start().await;
    let http = reqwest::Client::new();
    let bearer = |t: &str| vec![("authorization".to_owned(), format!("Bearer {t}"))];
    let reader = bearer(&p.env.reader);
    let command = |path: &str| p.env.api.url(path);
    let query = |path: &str| p.query.url(path);
    let get = reqwest::Method::GET;
    // 414: over the service's bound, and over the HTTP parser's (which no
    // HTTP client library here would even send).
    let url = query(&format!("/v1/studies?pad={}", "x".repeat(9 * 1024)));
    raw(&http, get.clone(), &url, &reader).await.problem(414);
    let (status, head, body) = raw_tcp(
        p.query.addr,
        &format!(
            "GET /v1/studies?pad={} HTTP/1.1\r\nhost: x\r\n\r\n",
            "x".repeat(70 * 1024)
        ),
    )
    .await;
    assert_eq!(status, 414, "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["status"], 414);
    let (status, head, _) =
        raw_tcp(p.env.api.addr, "GET /livez HTTP/1.1\r\nbad header\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    // 431: too many headers or header bytes, for the service and the parser.
    for (count, size) in [(70, 10), (120, 10), (1, 20 * 1024), (1, 600 * 1024)] {
        let mut headers = reader.clone();
        headers.extend((0..count).map(|i| (format!("x-pad-{i}"), "v".repeat(size))));
        let answer = raw(&http, get.clone(), &query("/v1/studies"), &headers).await;
        answer.problem(431);
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    }
    // A path or query that does not decode, on both APIs.
    raw(&http, get.clone(), &query("/v1/studies/%FF%FE"), &reader)
        .await
        .problem(400);
    raw(&http, get.clone(), &query("/v1/studies?limit=%FF"), &reader)
        .await
        .problem(400);
    let writer = bearer(&p.env.writer);
    raw(
        &http,
        reqwest::Method::POST,
        &command("/v1/studies/%FF/closure"),
        &writer,
    )
    .await
    .problem(400);
    // 405 names what the endpoint takes.
    let answer = raw(
        &http,
        reqwest::Method::DELETE,
        &command("/v1/studies"),
        &writer,
    )
    .await;
    answer.problem(405);
    assert!(answer.header("allow").is_some_and(|a| a.contains("POST")));
    let answer = raw(&http, reqwest::Method::PUT, &query("/v1/studies"), &reader).await;
    answer.problem(405);
    assert!(answer.header("allow").is_some_and(|a| a.contains("GET")));
    // Every answer says nosniff.
    for answer in [
        raw(&http, get.clone(), &query("/v1/studies"), &reader).await,
        raw(&http, get.clone(), &query("/nowhere"), &reader).await,
        raw(&http, get.clone(), &command("/livez"), &[]).await,
    ] {
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    }
    // Values no row can have: a code with a NUL, hand-made cursors.
    p.query
        .get("/v1/studies/by-code/%00", &p.env.reader)
        .await
        .problem(400);
    use base64::Engine as _;
    let forge = |tag: &str, parent: Uuid, key: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{tag}|{parent}|{}|{key}", Uuid::nil()))
    };
    for cursor in [
        format!(
            "/v1/studies/{}/subjects?cursor={}",
            p.study,
            forge("su", p.study, "a\0b")
        ),
        format!(
            "/v1/subjects/{}/observations?cursor={}",
            p.subject,
            forge("ob", p.subject, "-220000000000000000")
        ),
    ] {
        p.query.get(&cursor, &p.env.reader).await.problem(400);
    }
    // `nbf` in the future.
    let mut claims = claims_for("nora", &[Role::Reader, Role::Writer], 3600);
    claims.nbf = Some(chrono::Utc::now().timestamp() + 3600);
    let early = mint(SECRET.as_bytes(), &claims);
    p.query
        .get(&format!("/v1/studies/{}", p.study), &early)
        .await
        .problem(401);
    p.env
        .api
        .post(
            &format!("/v1/subjects/{}/observations", p.subject),
            &early,
            &first_row(),
        )
        .await
        .problem(401);
    // JSON of the wrong type for an enum is a shape error; bad UTF-8 is not
    // JSON at all, wherever it is.
    let observation = p.env.observation(p.subject).await;
    let signatures = format!("/v1/observations/{observation}/signatures");
    for body in [json!({"meaning": null}), json!({"meaning": ["approved"]})] {
        p.env
            .api
            .post(&signatures, &p.env.reviewer, &body)
            .await
            .problem(422);
    }
    let mut bytes = br#"{"unknown": 1, "reason": "bad "#.to_vec();
    bytes.extend_from_slice(&[0xc3, 0x28]);
    bytes.extend_from_slice(br#""}"#);
    p.env
        .api
        .post_raw(
            &format!("/v1/observations/{observation}/retraction"),
            Some(&p.env.writer),
            bytes,
        )
        .await
        .problem(400);
    p.flows().await;
}
