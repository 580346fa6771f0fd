//! The document reads of the query API against the real replica, Redis and
//! projector: the contract's shapes, ETags and codings, pages, the export,
//! read-your-writes with consistency tokens (also with the replica held
//! back), single flight, the one-statement-per-miss rule, and Redis or the
//! replica going away.

use std::collections::HashSet;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use projector::redis_sink::RedisSink;
use projector::{Projector, ProjectorConfig};
use serde_json::{json, Value};
use shared::auth::Role;
use tests::{
    free_port, query_config, replica_url, start_redis, token, wait_until, Answer, DbRole, QueryApi,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::env::Env;

const REDIS: &str = "redis://127.0.0.1:6379";

fn prefix() -> String {
    format!("t{}", Uuid::new_v4().simple())
}

/// A projector following the test's stream until dropped.
pub(crate) struct Live {
    stop: CancellationToken,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) async fn live_projector(env: &Env, redis: Option<(&str, &str)>) -> Live {
    let pool = env.db.pool_as(DbRole::Projector).await;
    let config = ProjectorConfig {
        nats_stream: env.stream.name.clone(),
        subject_prefix: env.stream.prefix.clone(),
        consumer: "live".into(),
        idle_wait: Duration::from_millis(50),
        max_batch: 1000,
    };
    let js = env.stream.jetstream().await;
    let mut projector = Projector::new(pool.clone(), Some(js), config)
        .await
        .unwrap();
    if let Some((url, prefix)) = redis {
        projector = projector.with_redis(RedisSink::start(url, prefix.to_owned(), pool).unwrap());
    }
    let stop = CancellationToken::new();
    tokio::spawn(projector.run(stop.clone()));
    Live { stop }
}

/// Deletes a test's keys from the shared Redis.
async fn clean_redis(prefix: &str) {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// The observation read with a `Consistency-Token`.
async fn observation_with_token(
    query: &QueryApi,
    env: &Env,
    observation: Uuid,
    token: &str,
) -> Answer {
    query
        .get_with(
            &format!("/v1/observations/{observation}"),
            &env.reader,
            &[("consistency-token", token)],
        )
        .await
}

fn position(answer: &Answer) -> String {
    answer.json()["position"].to_string()
}

/// Registers `study` with its subjects and up to `per_subject` observations
/// each through the batch endpoint; answers the study id, the subject ids
/// and the position of the last event.
async fn load(
    env: &Env,
    study: &benches::datasets::StudyData,
    per_subject: usize,
) -> (Uuid, Vec<Uuid>, i64) {
    let study_id = env.register(study).await;
    let subjects: Vec<Uuid> = study.subjects.iter().map(|_| Uuid::now_v7()).collect();
    let commands = study.batch_commands(&study_id.to_string(), &subjects, per_subject);
    let mut last = 0;
    for chunk in commands.chunks(1000) {
        let answer = env
            .api
            .post("/v1/commands", &env.writer, &json!({ "commands": chunk }))
            .await;
        assert_eq!(answer.status, 200);
        for r in answer.json()["results"].as_array().unwrap() {
            assert!(r["status"].as_u64().unwrap() < 300, "{r}");
            last = last.max(r["position"].as_i64().unwrap());
        }
    }
    (study_id, subjects, last)
}

fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "zstd" => out = zstd::stream::decode_all(bytes).unwrap(),
        "br" => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .unwrap();
        }
        "gzip" => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        other => panic!("unexpected coding {other}"),
    }
    out
}

#[tokio::test]
async fn documents_pages_and_export_answer_the_contract() {
    let env = Env::start().await;
    let _live = live_projector(&env, None).await;
    let query = QueryApi::spawn(&query_config(&env.db.url_as(DbRole::Query), "", "")).await;
    let study = &tests::penguins()[0];
    let (study_id, subjects, last) = load(&env, study, 3).await;
    let token_header = last.to_string();
    let consistent = [("consistency-token", token_header.as_str())];

    let answer = query
        .get_with(&format!("/v1/studies/{study_id}"), &env.reader, &consistent)
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.bytes)
    );
    let doc = answer.json();
    assert_eq!(doc["code"], study.code.as_str());
    assert_eq!(doc["subjects"]["total"], study.subjects.len());
    let observations: usize = study
        .subjects
        .iter()
        .map(|s| s.observations.len().min(3))
        .sum();
    assert_eq!(doc["observations"]["total"], observations);
    let by_code = query
        .get(&format!("/v1/studies/by-code/{}", study.code), &env.reader)
        .await;
    assert_eq!(by_code.json(), doc);

    let subject = query
        .get(&format!("/v1/subjects/{}", subjects[0]), &env.reader)
        .await
        .json();
    assert_eq!(subject["label"], study.subjects[0].label.as_str());
    assert_eq!(subject["study_id"], study_id.to_string());

    // Every subject, page by page, in label order, each once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/v1/studies/{study_id}/subjects?limit=7"),
            Some(c) => format!("/v1/studies/{study_id}/subjects?limit=7&cursor={c}"),
        };
        let page = query.get(&path, &env.reader).await.json();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        seen.extend(
            items
                .iter()
                .map(|i| i["label"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut labels: Vec<String> = study.subjects.iter().map(|s| s.label.clone()).collect();
    labels.sort();
    assert_eq!(seen, labels);

    let page = query
        .get(
            &format!("/v1/subjects/{}/observations", subjects[0]),
            &env.reader,
        )
        .await
        .json();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), study.subjects[0].observations.len().min(3));
    let observation_id = items[0]["id"].as_str().unwrap();
    let observation = query
        .get(&format!("/v1/observations/{observation_id}"), &env.reader)
        .await
        .json();
    assert_eq!(observation, items[0]);
    assert_eq!(observation["status"], "recorded");

    let export = query
        .get(
            &format!("/v1/studies/{study_id}/observations.ndjson"),
            &env.reader,
        )
        .await;
    assert_eq!(export.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = String::from_utf8(export.bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), observations);
    assert!(lines.windows(2).all(|w| {
        (w[0]["observed_at"].as_str(), w[0]["id"].as_str())
            <= (w[1]["observed_at"].as_str(), w[1]["id"].as_str())
    }));

    // Errors are problems.
    query
        .get(&format!("/v1/studies/{}", Uuid::now_v7()), &env.reader)
        .await
        .problem(404);
    query
        .get("/v1/studies/by-code/NOPE", &env.reader)
        .await
        .problem(404);
    query
        .get("/v1/studies/not-a-uuid", &env.reader)
        .await
        .problem(400);
    query
        .get(
            &format!("/v1/studies/{}/subjects", Uuid::now_v7()),
            &env.reader,
        )
        .await
        .problem(404);
    query
        .get("/v1/studies?limit=0", &env.reader)
        .await
        .problem(400);
    query
        .get("/v1/studies?limit=1001", &env.reader)
        .await
        .problem(400);
    query
        .get("/v1/studies?cursor=garbage", &env.reader)
        .await
        .problem(400);
    query
        .get(&format!("/v1/studies/{study_id}"), &env.writer)
        .await
        .problem(403);
    let elsewhere = tests::token_for_studies("lim", &[Role::Reader], &[Uuid::now_v7()]);
    query
        .get(&format!("/v1/studies/{study_id}"), &elsewhere)
        .await
        .problem(404);
    query
        .get(&format!("/v1/studies/{study_id}/subjects"), &elsewhere)
        .await
        .problem(404);
    // A token limited to studies lists only those.
    let second = env
        .api
        .post(
            "/v1/studies",
            &env.writer,
            &tests::penguins()[1].register_body(),
        )
        .await;
    let consistent = [("consistency-token", position(&second))];
    let consistent: Vec<(&str, &str)> = consistent.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let all = query
        .get_with("/v1/studies", &env.reader, &consistent)
        .await
        .json();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);
    let mine = tests::token_for_studies("lim", &[Role::Reader], &[study_id]);
    let limited = query.get("/v1/studies", &mine).await.json();
    let ids: Vec<&str> = limited["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [study_id.to_string()]);
    query
        .get_with(
            &format!("/v1/studies/{study_id}"),
            &env.reader,
            &[("consistency-token", "x")],
        )
        .await
        .problem(400);
    let openapi = query.get("/openapi.json", &env.reader).await.json();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(openapi["paths"]["/v1/studies/{id}"].is_object());
}

#[tokio::test]
async fn etags_answer_304_and_codings_are_negotiated() {
    let env = Env::start().await;
    let _live = live_projector(&env, None).await;
    let query = QueryApi::spawn(&query_config(&env.db.url_as(DbRole::Query), "", "")).await;
    let (study_id, _, last) = load(&env, &tests::penguins()[0], 2).await;
    let path = format!("/v1/studies/{study_id}");
    let last = last.to_string();
    let plain = query
        .get_with(&path, &env.reader, &[("consistency-token", &last)])
        .await;
    assert_eq!(plain.status, 200);
    let etag = plain.header("etag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    assert!(plain.header("content-encoding").is_none());
    let again = query
        .get_with(&path, &env.reader, &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert!(again.bytes.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let other = query
        .get_with(&path, &env.reader, &[("if-none-match", "\"1\"")])
        .await;
    assert_eq!(other.status, 200);

    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, br;q=0.9, zstd", "zstd"),
        ("zstd;q=0.1, gzip;q=0.8", "gzip"),
    ] {
        let answer = query
            .get_with(&path, &env.reader, &[("accept-encoding", accept)])
            .await;
        assert_eq!(answer.header("content-encoding"), Some(coding), "{accept}");
        assert_eq!(answer.header("vary"), Some("accept-encoding"));
        assert_eq!(decode(coding, &answer.bytes), plain.bytes, "{accept}");
        assert!(answer.bytes.len() < plain.bytes.len());
        let encoded_etag = answer.header("etag").unwrap().to_owned();
        assert_ne!(encoded_etag, etag, "each coding is its own representation");
        let again = query
            .get_with(
                &path,
                &env.reader,
                &[
                    ("accept-encoding", accept),
                    ("if-none-match", &encoded_etag),
                ],
            )
            .await;
        assert_eq!(again.status, 304);
    }
    let identity = query
        .get_with(&path, &env.reader, &[("accept-encoding", "identity")])
        .await;
    assert!(identity.header("content-encoding").is_none());

    // A page and the export are compressed as they stream.
    let export = query
        .get_with(
            &format!("/v1/studies/{study_id}/observations.ndjson"),
            &env.reader,
            &[("accept-encoding", "zstd")],
        )
        .await;
    assert_eq!(export.header("content-encoding"), Some("zstd"));
    let text = String::from_utf8(decode("zstd", &export.bytes)).unwrap();
    assert!(text.lines().count() > 10);
}

/// Proxies PostgreSQL's protocol and counts the statements executed
/// (`Query` and `Execute` messages from the client).
async fn counting_proxy(upstream: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                // The start-up message has no type byte; every later one has.
                let mut typed = false;
                loop {
                    let mut head = vec![0u8; if typed { 5 } else { 4 }];
                    if client_read.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len_at = usize::from(typed);
                    let len = u32::from_be_bytes(head[len_at..len_at + 4].try_into().unwrap());
                    let mut body = vec![0u8; len as usize - 4];
                    if client_read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if typed && (head[0] == b'Q' || head[0] == b'E') {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    typed = true;
                    head.extend_from_slice(&body);
                    if server_write.write_all(&head).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, count)
}

#[tokio::test]
async fn a_miss_costs_one_statement_a_hit_none_and_a_thousand_misses_load_once() {
    let env = Env::start().await;
    let _live = live_projector(&env, None).await;
    let (study_id, subjects, last) = load(&env, &tests::penguins()[0], 2).await;
    // The projection is done before the query API starts.
    let pool = env.db.pool().await;
    wait_until(Duration::from_secs(20), "the projection", || async {
        let checkpoint: i64 = sqlx::query_scalar("SELECT position FROM read_model.checkpoint")
            .fetch_one(&pool)
            .await
            .ok()?;
        (checkpoint >= last).then_some(())
    })
    .await;
    let (port, statements) = counting_proxy(5432).await;
    let mut url = url::Url::parse(&env.db.url_as(DbRole::Query)).unwrap();
    url.set_port(Some(port)).unwrap();
    url.set_query(Some("sslmode=disable"));
    let mut config = query_config(url.as_str(), "", "");
    // No poll of the change feed during the count.
    config.poll_interval = Duration::from_secs(3600);
    let query = QueryApi::spawn(&config).await;
    let router = query.app.router();
    let get = |path: String| {
        let router = router.clone();
        let reader = env.reader.clone();
        async move {
            use tower::ServiceExt;
            let request = axum::http::Request::get(path)
                .header("authorization", format!("Bearer {reader}"))
                .body(axum::body::Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, body)
        }
    };
    let before = statements.load(Ordering::SeqCst);

    let path = format!("/v1/subjects/{}", subjects[0]);
    let answers = futures::future::join_all((0..1000).map(|_| get(path.clone()))).await;
    assert!(answers.iter().all(|(s, b)| *s == 200 && *b == answers[0].1));
    assert_eq!(
        statements.load(Ordering::SeqCst) - before,
        1,
        "1000 simultaneous misses, one load"
    );
    let answers = futures::future::join_all((0..1000).map(|_| get(path.clone()))).await;
    assert!(answers.iter().all(|(s, _)| *s == 200));
    assert_eq!(
        statements.load(Ordering::SeqCst) - before,
        1,
        "hits cost nothing"
    );

    for (path, status) in [
        (format!("/v1/studies/{study_id}"), 200),
        (format!("/v1/studies/{}", Uuid::now_v7()), 404),
        (format!("/v1/studies/{study_id}/subjects?limit=3"), 200),
        (format!("/v1/subjects/{}/observations", subjects[1]), 200),
    ] {
        let at = statements.load(Ordering::SeqCst);
        assert_eq!(get(path.clone()).await.0, status, "{path}");
        assert_eq!(
            statements.load(Ordering::SeqCst) - at,
            1,
            "one statement for {path}"
        );
    }
}

#[tokio::test]
async fn replica_reads_see_the_writes_whose_token_they_carry() {
    let env = Env::start().await;
    let prefix = prefix();
    let live = live_projector(&env, Some((REDIS, &prefix))).await;
    let query = QueryApi::spawn(&query_config(
        &replica_url(&env.db.url_as(DbRole::Query)),
        REDIS,
        &prefix,
    ))
    .await;
    let (study, subject, observation) = env.recorded().await;
    for i in 0..200 {
        // A correction, then its effect on the observation, the subject and
        // the study, read from the replica.
        let mass = 3000 + i;
        let answer = env
            .api
            .post(
                &format!("/v1/observations/{observation}/corrections"),
                &env.writer,
                &json!({"values": {"body_mass_g": mass}, "reason": format!("reweighed {i}")}),
            )
            .await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.bytes)
        );
        let token = position(&answer);
        let headers = [("consistency-token", token.as_str())];
        let doc = query
            .get_with(
                &format!("/v1/observations/{observation}"),
                &env.reader,
                &headers,
            )
            .await;
        assert_eq!(doc.status, 200, "{}", String::from_utf8_lossy(&doc.bytes));
        assert_eq!(doc.json()["values"]["body_mass_g"], mass, "iteration {i}");
        let subject_doc = query
            .get_with(&format!("/v1/subjects/{subject}"), &env.reader, &headers)
            .await
            .json();
        assert_eq!(
            subject_doc["latest"]["body_mass_g"]["value"], mass,
            "iteration {i}"
        );
        if i % 20 == 0 {
            // A new record shows in the study's counts at once.
            let mut row = crate::env::first_row();
            // Earlier than the corrected one, which stays the latest.
            row["observed_at"] = json!(format!("2006-01-01T00:00:{:02}Z", i / 20));
            let recorded = env.record(subject, &row).await;
            assert_eq!(recorded.status, 201);
            let token = position(&recorded);
            let study_doc = query
                .get_with(
                    &format!("/v1/studies/{study}"),
                    &env.reader,
                    &[("consistency-token", token.as_str())],
                )
                .await
                .json();
            assert_eq!(
                study_doc["observations"]["total"],
                2 + i / 20,
                "iteration {i}"
            );
        }
    }
    // A study event changes every subject's document (they list the study's
    // variables) and the study's entry by code, both held in memory here.
    let code = query
        .get(&format!("/v1/studies/{study}"), &env.reader)
        .await
        .json()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        let by_code = query
            .get(&format!("/v1/studies/by-code/{code}"), &env.reader)
            .await;
        assert_eq!(by_code.status, 200);
        assert_eq!(
            query
                .get(&format!("/v1/subjects/{subject}"), &env.reader)
                .await
                .status,
            200
        );
    }
    let amend = json!({"add_variables": [{"name": "nest_count", "kind": "integer"}], "reason": "protocol v2"});
    let amended = env
        .api
        .post(
            &format!("/v1/studies/{study}/amendments"),
            &env.writer,
            &amend,
        )
        .await;
    assert_eq!(
        amended.status,
        200,
        "{}",
        String::from_utf8_lossy(&amended.bytes)
    );
    let token = position(&amended);
    let headers = [("consistency-token", token.as_str())];
    let names = |doc: Value| -> Vec<String> {
        doc["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let subject_doc = query
        .get_with(&format!("/v1/subjects/{subject}"), &env.reader, &headers)
        .await
        .json();
    assert!(names(subject_doc).contains(&"nest_count".to_owned()));
    let by_code = query
        .get_with(
            &format!("/v1/studies/by-code/{code}"),
            &env.reader,
            &headers,
        )
        .await
        .json();
    assert!(names(by_code).contains(&"nest_count".to_owned()));
    // The projector's Redis writer is done once its mark passed the last
    // event; only then are the test's keys removed for good.
    let last: i64 = token.parse().unwrap();
    wait_until(
        Duration::from_secs(10),
        "Redis to hold the amendment",
        || {
            let prefix = prefix.clone();
            async move { (redis_through(&prefix).await >= last).then_some(()) }
        },
    )
    .await;
    drop(live);
    clean_redis(&prefix).await;
}

/// The projector's `through` mark under `prefix` (0 when absent).
async fn redis_through(prefix: &str) -> i64 {
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let through: Option<i64> = redis::cmd("GET")
        .arg(format!("{prefix}:through"))
        .query_async(&mut conn)
        .await
        .unwrap();
    through.unwrap_or(0)
}

async fn replay(pause: bool) {
    let url = replica_url(&tests::admin_url());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let function = if pause {
        "pg_wal_replay_pause"
    } else {
        "pg_wal_replay_resume"
    };
    sqlx::query(&format!("SELECT {function}()"))
        .execute(&pool)
        .await
        .unwrap();
}

/// Resumes the standby's replay even when the test fails.
struct ResumeOnDrop;

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        let _ = std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(replay(false));
        })
        .join();
    }
}

#[tokio::test]
async fn replica_held_back_is_waited_for_and_past_the_bound_answers_503() {
    let env = Env::start().await;
    let _live = live_projector(&env, None).await;
    let mut config = query_config(&replica_url(&env.db.url_as(DbRole::Query)), "", "");
    config.consistency_timeout = Duration::from_millis(1500);
    let query = QueryApi::spawn(&config).await;
    let (_, _, observation) = env.recorded().await;
    let _resume = ResumeOnDrop;
    let correct = |mass: i64| {
        let path = format!("/v1/observations/{observation}/corrections");
        let body = json!({"values": {"body_mass_g": mass}, "reason": "reweighed"});
        let api = &env.api;
        let writer = &env.writer;
        async move { api.post(&path, writer, &body).await }
    };

    // Replay paused for 600 ms: the read waits and then sees the write.
    replay(true).await;
    let answer = correct(4100).await;
    let token = position(&answer);
    let resume = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        replay(false).await;
    });
    let started = std::time::Instant::now();
    let doc = observation_with_token(&query, &env, observation, &token).await;
    assert_eq!(doc.status, 200, "{}", String::from_utf8_lossy(&doc.bytes));
    assert_eq!(doc.json()["values"]["body_mass_g"], 4100);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited for the replica"
    );
    resume.await.unwrap();

    // Replay paused past the bound: 503 with Retry-After, then it recovers.
    replay(true).await;
    let answer = correct(4200).await;
    let token = position(&answer);
    let path = format!("/v1/observations/{observation}");
    let late = query
        .get_with(&path, &env.reader, &[("consistency-token", token.as_str())])
        .await;
    let problem = late.problem(503);
    assert!(late.header("retry-after").is_some(), "{problem}");
    replay(false).await;
    let doc = query
        .get_with(&path, &env.reader, &[("consistency-token", token.as_str())])
        .await;
    assert_eq!(doc.json()["values"]["body_mass_g"], 4200);
}

/// The read tables' checkpoint on the standby (-1 before it has replayed
/// them).
async fn replica_checkpoint(env: &Env) -> i64 {
    let pool = sqlx::PgPool::connect(&replica_url(&env.db.url_as(DbRole::Query)))
        .await
        .unwrap();
    let checkpoint = sqlx::query_scalar("SELECT position FROM read_model.checkpoint")
        .fetch_one(&pool)
        .await
        .unwrap_or(-1);
    pool.close().await;
    checkpoint
}

#[tokio::test]
async fn replica_held_back_a_token_read_is_answered_from_redis_once_the_projector_announced_it() {
    let env = Env::start().await;
    let prefix = prefix();
    let live = live_projector(&env, Some((REDIS, &prefix))).await;
    let mut config = query_config(&replica_url(&env.db.url_as(DbRole::Query)), REDIS, &prefix);
    config.consistency_timeout = Duration::from_millis(1500);
    let query = QueryApi::spawn(&config).await;
    let (_, subject, observation) = env.recorded().await;
    let client = redis::Client::open(REDIS).unwrap();
    let redis = client.get_multiplexed_async_connection().await.unwrap();
    let channel = shared::redis_layout::invalidation_channel(&prefix);
    wait_until(
        Duration::from_secs(10),
        "the query API follows the announcements",
        || {
            let mut redis = redis.clone();
            let channel = channel.clone();
            async move {
                let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(&channel)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                (subscribers > 0).then_some(())
            }
        },
    )
    .await;
    // The standby has replayed the projection of what was recorded (it may
    // lag behind while other tests' queries delay its replay).
    let head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&env.db.pool().await)
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the standby replays the projection",
        || async { (replica_checkpoint(&env).await >= head).then_some(()) },
    )
    .await;
    let _resume = ResumeOnDrop;

    replay(true).await;
    let path = format!("/v1/observations/{observation}/corrections");
    let body = json!({"values": {"body_mass_g": 4100}, "reason": "reweighed"});
    let answer = env.api.post(&path, &env.writer, &body).await;
    assert_eq!(answer.status, 200, "{}", answer.json());
    let token = position(&answer);
    let doc = observation_with_token(&query, &env, observation, &token).await;
    assert_eq!(doc.status, 200, "{}", String::from_utf8_lossy(&doc.bytes));
    assert_eq!(doc.json()["values"]["body_mass_g"], 4100);
    let subject_doc = query
        .get_with(
            &format!("/v1/subjects/{subject}"),
            &env.reader,
            &[("consistency-token", token.as_str())],
        )
        .await;
    assert_eq!(subject_doc.status, 200);
    // The standby had not replayed the correction: Redis answered.
    let token_position: i64 = token.parse().unwrap();
    assert!(
        replica_checkpoint(&env).await < token_position,
        "the replica was held back"
    );
    // A page is read from the replica alone: with the same token it waits
    // for it, here past the bound.
    let page_path = format!("/v1/subjects/{subject}/observations");
    let with_token = [("consistency-token", token.as_str())];
    let page_with_token = || query.get_with(&page_path, &env.reader, &with_token);
    page_with_token().await.problem(503);

    replay(false).await;
    let page = page_with_token().await;
    assert_eq!(page.status, 200);
    assert_eq!(page.json()["items"][0]["values"]["body_mass_g"], 4100);
    drop(live);
    clean_redis(&prefix).await;
}

#[tokio::test]
async fn pages_neither_skip_nor_repeat_while_subjects_are_added() {
    let env = Env::start().await;
    let _live = live_projector(&env, None).await;
    let query = QueryApi::spawn(&query_config(&env.db.url_as(DbRole::Query), "", "")).await;
    let study = env.study().await;
    let register = |label: String| {
        let api = &env.api;
        let writer = &env.writer;
        async move {
            let answer = api
                .post(
                    &format!("/v1/studies/{study}/subjects"),
                    writer,
                    &json!({"label": label}),
                )
                .await;
            assert_eq!(answer.status, 201);
            position(&answer)
        }
    };
    let mut before = Vec::new();
    let mut last = String::new();
    for i in 0..60 {
        let label = format!("S{:03}", i * 2);
        last = register(label.clone()).await;
        before.push(label);
    }
    // Page through while odd labels (before and after the cursor) arrive.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut odd = (0..60).map(|i| format!("S{:03}", i * 2 + 1));
    loop {
        let path = match &cursor {
            None => format!("/v1/studies/{study}/subjects?limit=5"),
            Some(c) => format!("/v1/studies/{study}/subjects?limit=5&cursor={c}"),
        };
        let page = query
            .get_with(&path, &env.reader, &[("consistency-token", last.as_str())])
            .await
            .json();
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["label"].as_str().unwrap().to_owned()),
        );
        for _ in 0..2 {
            if let Some(label) = odd.next() {
                last = register(label).await;
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no subject twice");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in label order");
    for label in &before {
        assert!(
            seen.contains(label),
            "{label} existed before paging and was skipped"
        );
    }
}

#[tokio::test]
async fn the_export_of_a_large_study_streams_every_observation() {
    let env = Env::start().await;
    let _live = live_projector(&env, None).await;
    let query = QueryApi::spawn(&query_config(&env.db.url_as(DbRole::Query), "", "")).await;
    let weather = benches::datasets::weather(
        &benches::datasets::data_dir().join("nyc_weather_2013.csv"),
        "WX-TEST",
    )
    .unwrap();
    let (study, _, last) = load(&env, &weather, 1500).await;
    let expected: usize = weather
        .subjects
        .iter()
        .map(|s| s.observations.len().min(1500))
        .sum();
    let export = query
        .get_with(
            &format!("/v1/studies/{study}/observations.ndjson"),
            &env.reader,
            &[("consistency-token", &last.to_string())],
        )
        .await;
    assert_eq!(export.status, 200);
    let text = String::from_utf8(export.bytes).unwrap();
    let ids: HashSet<&str> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["study_id"], study.to_string());
            v["id"].as_str().map(|_| l).unwrap()
        })
        .collect();
    assert_eq!(ids.len(), expected);
}

fn redis_up(query: &QueryApi) -> bool {
    query.app.state.docs.redis_up() == Some(true)
}

#[tokio::test]
async fn reads_go_on_while_redis_stops_and_use_it_again_when_it_returns() {
    let env = Env::start().await;
    let (mut redis, port, url) = tests::private_redis().await;
    let prefix = prefix();
    let _live = live_projector(&env, Some((&url, &prefix))).await;
    let (study, subjects, last) = load(&env, &tests::penguins()[0], 2).await;
    let mut config = query_config(&env.db.url_as(DbRole::Query), &url, &prefix);
    // A small memory tier: most reads reach Redis or the replica.
    config.cache_bytes = 16 * 1024;
    let query = Arc::new(QueryApi::spawn(&config).await);
    let paths: Vec<String> = subjects
        .iter()
        .map(|s| format!("/v1/subjects/{s}"))
        .chain([format!("/v1/studies/{study}")])
        .collect();
    let first = query
        .get_with(
            &paths[0],
            &env.reader,
            &[("consistency-token", &last.to_string())],
        )
        .await;
    assert_eq!(first.status, 200);
    wait_until(Duration::from_secs(10), "Redis in use", || async {
        redis_up(&query).then_some(())
    })
    .await;

    let stop = CancellationToken::new();
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (query, paths, stop) = (query.clone(), paths.clone(), stop.clone());
            let (failures, served) = (failures.clone(), served.clone());
            let reader = env.reader.clone();
            tokio::spawn(async move {
                let mut i = r;
                while !stop.is_cancelled() {
                    let answer = query.get(&paths[i % paths.len()], &reader).await;
                    if answer.status == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Each phase (Redis up, down, back) serves a share of the reads.
    let served_more = |n: usize| {
        let served = served.clone();
        let from = served.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(10), "reads being served", move || {
            let served = served.clone();
            async move { (served.load(Ordering::Relaxed) >= from + n).then_some(()) }
        })
    };
    served_more(100).await;
    redis.kill().unwrap();
    redis.wait().unwrap();
    wait_until(Duration::from_secs(10), "Redis reported down", || async {
        (!redis_up(&query)).then_some(())
    })
    .await;
    let ready = query.get("/readyz", &env.reader).await;
    assert_eq!(ready.status, 200, "readiness stays green without Redis");
    assert_eq!(ready.json()["redis"], false);
    served_more(100).await;
    let mut redis = start_redis(port);
    wait_until(Duration::from_secs(15), "Redis used again", || async {
        redis_up(&query).then_some(())
    })
    .await;
    served_more(100).await;
    stop.cancel();
    for r in readers {
        r.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed");
    assert!(served.load(Ordering::Relaxed) > 50);
    redis.kill().unwrap();
    redis.wait().unwrap();
}

#[tokio::test]
async fn a_replica_that_is_down_is_reported_not_waited_for() {
    let port = free_port();
    let url = format!("postgres://research:research@127.0.0.1:{port}/nothing");
    let query = QueryApi::spawn(&query_config(&url, "", "")).await;
    let reader = token("rex", &[Role::Reader]);
    let started = std::time::Instant::now();
    query.get("/readyz", &reader).await.problem(503);
    query
        .get(&format!("/v1/studies/{}", Uuid::now_v7()), &reader)
        .await
        .problem(503);
    query
        .get_with(
            &format!("/v1/studies/{}", Uuid::now_v7()),
            &reader,
            &[("consistency-token", "5")],
        )
        .await
        .problem(503);
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn a_query_api_given_several_replicas_reads_from_one_that_answers() {
    let env = Env::start().await;
    let _live = live_projector(&env, None).await;
    // The first replica listed is down from the start.
    let dead = format!(
        "postgres://research_query:research@127.0.0.1:{}/nothing",
        free_port()
    );
    let replicas = format!("{dead},{}", replica_url(&env.db.url_as(DbRole::Query)));
    let query = QueryApi::spawn(&query_config(&replicas, "", "")).await;
    let (_, _, observation) = env.recorded().await;
    for mass in [3100, 3200, 3300] {
        let answer = env
            .api
            .post(
                &format!("/v1/observations/{observation}/corrections"),
                &env.writer,
                &json!({"values": {"body_mass_g": mass}, "reason": "reweighed"}),
            )
            .await;
        assert_eq!(answer.status, 200);
        let token = position(&answer);
        let doc = observation_with_token(&query, &env, observation, &token).await;
        assert_eq!(doc.status, 200, "{}", String::from_utf8_lossy(&doc.bytes));
        assert_eq!(doc.json()["values"]["body_mass_g"], mass);
    }
    let ready = query.get("/readyz", &env.reader).await;
    assert_eq!(
        ready.status,
        200,
        "{}",
        String::from_utf8_lossy(&ready.bytes)
    );
}
