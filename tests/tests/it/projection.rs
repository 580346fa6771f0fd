//! The projector against a from-scratch replay of the event store: real
//! penguin records with corrections, retractions, signatures, withdrawals
//! and an amendment; with NATS as delivered, with a message lost, with every
//! message delivered twice, and with no NATS at all.

use std::collections::HashMap;
use std::time::Duration;

use projector::read_tables::ViewCache;
use projector::{apply_batch, Applied, Projector, ProjectorConfig, LIVE_SCHEMA};
use serde_json::{json, Value};
use shared::envelope::StoredEvent;
use shared::projection::Views;
use shared::store::EventStore;
use sqlx::PgPool;
use tests::{read_stream, wait_until, DbRole};
use uuid::Uuid;

use crate::env::Env;

/// Loads the first penguin season through the batch endpoint and changes
/// some of it; answers the observation ids.
async fn history(env: &Env) -> Vec<Uuid> {
    let study = env.study().await;
    let data = &tests::penguins()[0];
    let mut commands = Vec::new();
    let mut subjects = Vec::new();
    for s in &data.subjects {
        let id = Uuid::now_v7();
        subjects.push(id);
        commands.push(
            json!({"type": "RegisterSubject", "target": study, "subject_id": id,
                             "label": s.label, "attributes": s.attributes}),
        );
    }
    let mut observations = Vec::new();
    let mut originals = Vec::new();
    for (s, id) in data.subjects.iter().zip(&subjects) {
        for o in &s.observations {
            let oid = Uuid::now_v7();
            observations.push(oid);
            originals.push(o.values.clone());
            let mut item = o.record_body();
            item["type"] = json!("RecordObservation");
            item["target"] = json!(id);
            item["observation_id"] = json!(oid);
            commands.push(item);
        }
    }
    let answer = env
        .api
        .post("/v1/commands", &env.writer, &json!({"commands": commands}))
        .await;
    assert_eq!(answer.status, 200);
    assert!(answer.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"].as_u64().unwrap() < 300));
    for (i, o) in observations.iter().enumerate().take(40) {
        let path = match i % 4 {
            0 => format!("/v1/observations/{o}/corrections"),
            1 => format!("/v1/observations/{o}/retraction"),
            2 => format!("/v1/observations/{o}/signatures"),
            _ => format!("/v1/observations/{o}/corrections"),
        };
        let (token, body) = match i % 4 {
            0 => (
                &env.writer2,
                json!({"values": {"body_mass_g": 3000 + i as i64}, "reason": "re-weighed"}),
            ),
            1 => (&env.writer, json!({"reason": "wrong nest"})),
            2 => (&env.reviewer, json!({"meaning": "approved"})),
            // To null (measured as missing), or from null where it was missing.
            _ if originals[i]["culmen_length_mm"].is_null() => (
                &env.writer2,
                json!({"values": {"culmen_length_mm": 40.0}, "reason": "field sheet found"}),
            ),
            _ => (
                &env.writer2,
                json!({"values": {"culmen_length_mm": null}, "reason": "caliper broken"}),
            ),
        };
        let a = env.api.post(&path, token, &body).await;
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.bytes));
    }
    let withdraw = env
        .api
        .post(
            &format!("/v1/subjects/{}/withdrawal", subjects[3]),
            &env.writer,
            &json!({"reason": "nest abandoned"}),
        )
        .await;
    assert_eq!(withdraw.status, 200);
    let amend = json!({"add_variables": [{"name": "nest_count", "kind": "integer"}], "reason": "protocol v2"});
    assert_eq!(
        env.api
            .post(
                &format!("/v1/studies/{study}/amendments"),
                &env.writer,
                &amend
            )
            .await
            .status,
        200
    );
    observations
}

fn config(env: &Env, consumer: &str) -> ProjectorConfig {
    ProjectorConfig {
        nats_stream: env.stream.name.clone(),
        subject_prefix: env.stream.prefix.clone(),
        consumer: consumer.to_owned(),
        idle_wait: Duration::from_millis(100),
        max_batch: 1000,
    }
}

async fn head(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until every stored event is in the stream.
async fn published(env: &Env, pool: &PgPool) -> async_nats::jetstream::Context {
    let js = env.stream.jetstream().await;
    let n = head(pool).await as usize;
    wait_until(Duration::from_secs(30), "publishing", || {
        let js = js.clone();
        let name = env.stream.name.clone();
        async move { (read_stream(&js, &name).await.ok()?.len() >= n).then_some(()) }
    })
    .await;
    js
}

/// Steps until the checkpoint reaches the head of the log.
async fn catch_up(projector: &mut Projector, pool: &PgPool) -> usize {
    let target = head(pool).await;
    let mut backfilled = 0;
    for _ in 0..10_000 {
        if projector.checkpoint() >= target {
            return backfilled;
        }
        backfilled += projector
            .step()
            .await
            .expect("a projection step")
            .backfilled;
    }
    panic!("the projector did not catch up with {target}");
}

/// The documents a from-scratch replay of every stored event renders.
fn replay(events: &[StoredEvent]) -> HashMap<Uuid, Value> {
    let mut views = Views::default();
    for e in events {
        let needs = views.project(e).unwrap();
        views.resolve_in_memory(&needs);
    }
    let mut docs = HashMap::new();
    for s in views.studies.values() {
        docs.insert(s.state.id, s.document());
    }
    for s in views.subjects.values() {
        docs.insert(
            s.state.id,
            s.document(&views.studies[&s.state.study_id].state.variables),
        );
    }
    for o in views.observations.values() {
        docs.insert(o.state.id, serde_json::from_slice(&o.document()).unwrap());
    }
    docs
}

async fn stored_documents(pool: &PgPool) -> HashMap<Uuid, Value> {
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, body FROM read_model.studies UNION ALL SELECT id, body FROM read_model.subjects \
         UNION ALL SELECT id, body FROM read_model.observations",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, body)| (id, serde_json::from_slice(&body).unwrap()))
        .collect()
}

async fn assert_matches_replay(pool: &PgPool) {
    let events = EventStore::read_after(pool, 0, 1_000_000).await.unwrap();
    let expected = replay(&events);
    let stored = stored_documents(pool).await;
    assert_eq!(stored.len(), expected.len(), "one document per aggregate");
    for (id, doc) in &expected {
        assert_eq!(stored.get(id), Some(doc), "document {id}");
    }
}

#[tokio::test]
async fn incremental_projection_equals_a_replay_of_the_log() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    // Everything published first, so that the fast path carries it.
    let js = published(&env, &pool).await;
    // Small batches, so that views and needs cross batch boundaries.
    let small = ProjectorConfig {
        max_batch: 7,
        ..config(&env, "projector")
    };
    let mut projector = Projector::new(pool.clone(), Some(js), small).await.unwrap();
    let backfilled = catch_up(&mut projector, &pool).await;
    assert_eq!(backfilled, 0, "every event came through NATS");
    assert_matches_replay(&pool).await;

    // A study document carries the statistics of the real values.
    let (body,): (Vec<u8>,) = sqlx::query_as("SELECT body FROM read_model.studies")
        .fetch_one(&pool)
        .await
        .unwrap();
    let study: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(study["subjects"]["withdrawn"], 1);
    assert_eq!(study["observations"]["retracted"], 10);
    let mass = study["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "body_mass_g")
        .unwrap();
    assert!(mass["stats"]["n"].as_u64().unwrap() > 90, "{mass}");
}

/// `table:options` of the read tables with storage parameters.
async fn hot_table_parameters(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname || ':' || array_to_string(c.reloptions, ',') FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'read_model' AND c.reloptions IS NOT NULL ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_study_and_subject_rows_are_updated_in_place() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    let small = ProjectorConfig {
        max_batch: 5,
        ..config(&env, "projector")
    };
    let mut projector = Projector::new(pool.clone(), None, small).await.unwrap();
    catch_up(&mut projector, &pool).await;
    drop(projector);
    // Sessions report their statistics when they end.
    pool.close().await;
    let owner = env.db.pool().await;
    let (updates, hot) = wait_until(Duration::from_secs(30), "the projector's statistics", || {
        let owner = owner.clone();
        async move {
            let (updates, hot): (i64, i64) = sqlx::query_as(
                "SELECT sum(n_tup_upd)::bigint, sum(n_tup_hot_upd)::bigint FROM pg_stat_user_tables \
                 WHERE schemaname = 'read_model' AND relname IN ('studies', 'subjects')",
            )
            .fetch_one(&owner)
            .await
            .unwrap();
            (updates > 50).then_some((updates, hot))
        }
    })
    .await;
    // Without pruning (the standby's feedback holds back the horizon for
    // seconds, longer than this run) HOT lasts while a page has room for the
    // next version; with an index on a changing column it would be none.
    assert!(
        hot * 2 > updates,
        "{hot} of {updates} updates of study and subject rows were HOT"
    );
}

#[tokio::test]
async fn a_lost_message_is_backfilled_from_the_event_store() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    let js = published(&env, &pool).await;
    // NATS loses message 5 (its stream sequence is its position).
    let stream = js.get_stream(&env.stream.name).await.unwrap();
    assert!(stream.delete_message(5).await.unwrap());
    let mut projector = Projector::new(pool.clone(), Some(js), config(&env, "lossy"))
        .await
        .unwrap();
    let backfilled = catch_up(&mut projector, &pool).await;
    assert!(backfilled > 0, "the hole was filled from the event store");
    assert_matches_replay(&pool).await;
}

#[tokio::test]
async fn redelivered_and_duplicated_events_change_nothing() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    let js = env.stream.jetstream().await;
    let mut projector = Projector::new(pool.clone(), Some(js.clone()), config(&env, "first"))
        .await
        .unwrap();
    catch_up(&mut projector, &pool).await;
    let before = stored_documents(&pool).await;
    // A second consumer delivers the whole stream again.
    let mut again = Projector::new(pool.clone(), Some(js), config(&env, "second"))
        .await
        .unwrap();
    for _ in 0..20 {
        let outcome = again.step().await.unwrap();
        assert_eq!(
            outcome.applied, 0,
            "nothing at or below the checkpoint is applied"
        );
    }
    assert_eq!(stored_documents(&pool).await, before);
    assert_matches_replay(&pool).await;
}

#[tokio::test]
async fn a_batch_that_straddles_the_checkpoint_applies_only_what_follows_it() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    let events = EventStore::read_after(&pool, 0, 1_000_000).await.unwrap();
    let half = events.len() / 2;
    let last = events.last().unwrap().position;
    let mut conn = pool.acquire().await.unwrap();
    let mut cache = ViewCache::default();
    let applied = apply_batch(&mut conn, LIVE_SCHEMA, &events[..half], &mut cache)
        .await
        .unwrap();
    assert!(
        matches!(applied, Applied::Done { checkpoint, .. } if checkpoint == events[half - 1].position)
    );
    // The whole log again (as a second writer's batch would overlap): the
    // first half is at or below the checkpoint and changes nothing.
    let applied = apply_batch(&mut conn, LIVE_SCHEMA, &events, &mut cache)
        .await
        .unwrap();
    assert!(matches!(applied, Applied::Done { checkpoint, .. } if checkpoint == last));
    assert_matches_replay(&pool).await;
    // Once more: everything is at or below it; nothing is written.
    let before = stored_documents(&pool).await;
    let applied = apply_batch(&mut conn, LIVE_SCHEMA, &events, &mut cache)
        .await
        .unwrap();
    assert!(matches!(applied, Applied::Moved { checkpoint } if checkpoint == last));
    assert_eq!(stored_documents(&pool).await, before);
}

/// Views kept between batches are used only at the checkpoint they were
/// kept at: a writer whose views were overtaken by another writer's batch
/// reads them from the tables again.
#[tokio::test]
async fn views_kept_between_batches_are_dropped_once_another_writer_moved_on() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    let events = EventStore::read_after(&pool, 0, 1_000_000).await.unwrap();
    let (a, b) = (events.len() / 3, 2 * events.len() / 3);
    let mut conn = pool.acquire().await.unwrap();
    let mut caches = [ViewCache::default(), ViewCache::default()];
    for (range, writer) in [(0..a, 0), (a..b, 1), (b..events.len(), 0)] {
        let end = events[range.end - 1].position;
        let applied = apply_batch(&mut conn, LIVE_SCHEMA, &events[range], &mut caches[writer])
            .await
            .unwrap();
        assert!(matches!(applied, Applied::Done { checkpoint, .. } if checkpoint == end));
    }
    assert_matches_replay(&pool).await;
    // The first writer's views are current now: one more batch of the
    // same study, taken from them, still matches a replay.
    let study = events.last().unwrap().study_id;
    let path = format!("/v1/studies/{study}/subjects");
    let answer = env
        .api
        .post(&path, &env.writer, &json!({"label": "late arrival"}))
        .await;
    assert_eq!(answer.status, 201);
    let more = EventStore::read_after(&pool, events.last().unwrap().position, 10)
        .await
        .unwrap();
    assert_eq!(more.len(), 1);
    let applied = apply_batch(&mut conn, LIVE_SCHEMA, &more, &mut caches[0])
        .await
        .unwrap();
    assert!(matches!(applied, Applied::Done { .. }));
    assert_matches_replay(&pool).await;
}

#[tokio::test]
async fn without_nats_the_projector_reads_the_event_store() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    let mut projector = Projector::new(pool.clone(), None, config(&env, "none"))
        .await
        .unwrap();
    let backfilled = catch_up(&mut projector, &pool).await;
    assert_eq!(backfilled as i64, head(&pool).await);
    assert_matches_replay(&pool).await;
}

#[tokio::test]
async fn a_rebuild_switches_to_equal_tables_and_the_live_projector_carries_on() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    let observations = history(&env).await;
    let mut live = Projector::new(pool.clone(), None, config(&env, "live"))
        .await
        .unwrap();
    catch_up(&mut live, &pool).await;
    let before = stored_documents(&pool).await;

    let reached = projector::replay::rebuild(&pool, false).await.unwrap();
    assert_eq!(reached, head(&pool).await);
    assert_eq!(
        hot_table_parameters(&pool).await,
        [
            "checkpoint:autovacuum_vacuum_scale_factor=0,autovacuum_vacuum_threshold=1000",
            "studies:fillfactor=50,autovacuum_vacuum_scale_factor=0,autovacuum_vacuum_threshold=1000",
            "subjects:fillfactor=50,autovacuum_vacuum_scale_factor=0,autovacuum_vacuum_threshold=1000",
        ],
        "the rebuilt tables keep room for HOT updates and are vacuumed by a fixed count"
    );
    assert_eq!(
        stored_documents(&pool).await,
        before,
        "the rebuilt documents equal the live ones"
    );

    // The live projector goes on, on the new tables, counting nothing twice.
    let more = json!({"values": {"body_mass_g": 4100}, "reason": "re-weighed again"});
    let path = format!("/v1/observations/{}/corrections", observations[100]);
    assert_eq!(env.api.post(&path, &env.writer2, &more).await.status, 200);
    catch_up(&mut live, &pool).await;
    assert_matches_replay(&pool).await;
}

#[tokio::test]
async fn verify_replay_passes_on_true_read_models_and_names_a_tampered_one() {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    let mut live = Projector::new(pool.clone(), None, config(&env, "live"))
        .await
        .unwrap();
    catch_up(&mut live, &pool).await;
    let (position, difference) = projector::replay::verify(&pool, false).await.unwrap();
    assert_eq!(position, head(&pool).await);
    assert_eq!(difference, None);

    // Somebody edits a read row behind the projector's back.
    let (id,): (Uuid,) = sqlx::query_as(
        "UPDATE read_model.observations SET body = convert_to(replace(convert_from(body, 'UTF8'), '\"recorded\"', \
         '\"corrected\"'), 'UTF8') WHERE id = (SELECT id FROM read_model.observations \
         WHERE convert_from(body, 'UTF8')::jsonb->>'status' = 'recorded' \
         ORDER BY id LIMIT 1) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let (_, difference) = projector::replay::verify(&pool, false).await.unwrap();
    let difference = difference.expect("the edit is found");
    assert_eq!((difference.table, difference.id), ("observations", id));
}

#[tokio::test]
async fn a_projector_killed_mid_batch_resumes_without_counting_twice() {
    use tokio::process::Command;

    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    history(&env).await;
    let spawn = || {
        Command::new(crate::publishing::binary("projector"))
            .env("PROJECTOR_DATABASE_URL", env.db.url_as(DbRole::Projector))
            .env("NATS_URL", tests::nats_url())
            .env("NATS_STREAM", &env.stream.name)
            .env("NATS_SUBJECT_PREFIX", &env.stream.prefix)
            .env(
                "PROJECTOR_ADDR",
                format!("127.0.0.1:{}", tests::free_port()),
            )
            .env("PROJECTOR_MAX_BATCH", "3")
            .env("REDIS_URL", "")
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("starting the projector binary")
    };
    let checkpoint = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT position FROM read_model.checkpoint")
            .fetch_one(&pool)
            .await
            .ok()
    };
    let mut first = spawn();
    let target = head(&pool).await;
    wait_until(
        Duration::from_secs(30),
        "the projector to be half-way",
        || {
            let pool = pool.clone();
            async move { checkpoint(pool).await.filter(|c| *c > 30).map(|_| ()) }
        },
    )
    .await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    let at_kill = checkpoint(pool.clone()).await.unwrap();
    assert!(
        at_kill < target,
        "killed before the end ({at_kill} of {target})"
    );

    let mut second = spawn();
    wait_until(
        Duration::from_secs(60),
        "the restarted projector to catch up",
        || {
            let pool = pool.clone();
            async move { checkpoint(pool).await.filter(|c| *c >= target).map(|_| ()) }
        },
    )
    .await;
    second.start_kill().unwrap();
    second.wait().await.unwrap();
    assert_matches_replay(&pool).await;
}

/// One command of a random history over two subjects of a penguin study,
/// with values taken from the real rows.
#[derive(Debug, Clone)]
enum Op {
    Record {
        subject: usize,
        row: usize,
    },
    Correct {
        nth: usize,
        row: usize,
        to_null: bool,
    },
    Retract {
        nth: usize,
    },
    Sign {
        nth: usize,
        approve: bool,
    },
    Withdraw {
        subject: usize,
    },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        5 => (0..2usize, 0..110usize).prop_map(|(subject, row)| Op::Record { subject, row }),
        3 => (any::<usize>(), 0..110usize, any::<bool>()).prop_map(|(nth, row, to_null)| Op::Correct { nth, row, to_null }),
        1 => any::<usize>().prop_map(|nth| Op::Retract { nth }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(nth, approve)| Op::Sign { nth, approve }),
        1 => (0..2usize).prop_map(|subject| Op::Withdraw { subject }),
    ]
}

/// Runs a history through the command API (refusals included: they write
/// nothing), projects it in batches of three, and compares with a replay.
async fn run_history(ops: Vec<Op>) {
    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    let study = env.study().await;
    let subjects = [env.subject(study).await, {
        let body = json!({"label": "N1A2"});
        env.api
            .post(&format!("/v1/studies/{study}/subjects"), &env.writer, &body)
            .await
            .id()
    }];
    let rows: Vec<_> = tests::penguins()[0]
        .subjects
        .iter()
        .map(|s| s.observations[0].clone())
        .collect();
    let mut recorded: Vec<Uuid> = Vec::new();
    for op in ops {
        match op {
            Op::Record { subject, row } => {
                let answer = env
                    .record(subjects[subject], &rows[row].record_body())
                    .await;
                if answer.status == 201 {
                    recorded.push(answer.id());
                }
            }
            Op::Correct { nth, row, to_null } if !recorded.is_empty() => {
                let id = recorded[nth % recorded.len()];
                let value = if to_null {
                    Value::Null
                } else {
                    rows[row].values["body_mass_g"].clone()
                };
                let body = json!({"values": {"body_mass_g": value, "culmen_length_mm": rows[row].values["culmen_length_mm"]},
                                  "reason": "re-measured"});
                env.api
                    .post(
                        &format!("/v1/observations/{id}/corrections"),
                        &env.writer2,
                        &body,
                    )
                    .await;
            }
            Op::Retract { nth } if !recorded.is_empty() => {
                let id = recorded[nth % recorded.len()];
                env.api
                    .post(
                        &format!("/v1/observations/{id}/retraction"),
                        &env.writer,
                        &json!({"reason": "wrong bird"}),
                    )
                    .await;
            }
            Op::Sign { nth, approve } if !recorded.is_empty() => {
                let id = recorded[nth % recorded.len()];
                let meaning = if approve { "approved" } else { "reviewed" };
                env.api
                    .post(
                        &format!("/v1/observations/{id}/signatures"),
                        &env.reviewer,
                        &json!({"meaning": meaning}),
                    )
                    .await;
            }
            Op::Withdraw { subject } => {
                env.api
                    .post(
                        &format!("/v1/subjects/{}/withdrawal", subjects[subject]),
                        &env.writer,
                        &json!({"reason": "r"}),
                    )
                    .await;
            }
            _ => {}
        }
    }
    let small = ProjectorConfig {
        max_batch: 3,
        ..config(&env, "random")
    };
    let mut projector = Projector::new(pool.clone(), None, small).await.unwrap();
    catch_up(&mut projector, &pool).await;
    assert_matches_replay(&pool).await;
}

#[test]
fn random_histories_project_like_a_replay() {
    use proptest::prelude::*;
    let config = ProptestConfig {
        cases: 8,
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..30))| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(run_history(ops));
    });
}

#[tokio::test]
async fn nats_stopped_mid_run_costs_nothing_but_speed() {
    use std::process::Stdio;

    use tests::{command_config, CommandApi, TestDb, TestStream};

    let port = tests::free_port();
    let store_dir = std::env::temp_dir().join(format!("nats-{}", Uuid::new_v4().simple()));
    let start_nats = || {
        std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (installed by scripts/infra.sh)")
    };
    let url = format!("nats://127.0.0.1:{port}");
    let mut nats = start_nats();
    wait_until(Duration::from_secs(10), "NATS to start", || async {
        async_nats::connect(url.as_str()).await.ok().map(|_| ())
    })
    .await;

    let db = TestDb::create().await;
    let stream = TestStream::new();
    let mut api_config = command_config(&db, &stream);
    api_config.nats.url = url.parse().expect("one NATS server");
    let api = CommandApi::spawn(&api_config).await;
    let writer = tests::token("alice", &[shared::auth::Role::Writer]);
    let (_, subject) = api.study_with_subject(&writer).await;
    let rows = &tests::penguins()[0].subjects;
    let record = |i: usize| {
        let body = rows[i].observations[0].record_body();
        let (api, writer) = (&api, &writer);
        async move {
            let path = format!("/v1/subjects/{subject}/observations");
            assert_eq!(
                api.post(&path, writer, &body).await.status,
                201,
                "commands never wait for NATS"
            );
        }
    };
    for i in 0..5 {
        record(i).await;
    }
    let pool = db.pool_as(DbRole::Projector).await;
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    let config = ProjectorConfig {
        nats_stream: stream.name.clone(),
        subject_prefix: stream.prefix.clone(),
        consumer: "projector".into(),
        idle_wait: Duration::from_millis(100),
        max_batch: 4,
    };
    let mut projector = Projector::new(pool.clone(), Some(js), config)
        .await
        .unwrap();
    catch_up(&mut projector, &pool).await;

    // NATS goes away: commands still succeed, the projector reads the store.
    nats.kill().unwrap();
    nats.wait().unwrap();
    for i in 5..10 {
        record(i).await;
    }
    let backfilled = catch_up(&mut projector, &pool).await;
    assert!(backfilled > 0, "the event store carried the projection");

    // NATS returns (with its stream on disk) and the rest flows again.
    let mut nats = start_nats();
    for i in 10..15 {
        record(i).await;
    }
    catch_up(&mut projector, &pool).await;
    assert_matches_replay(&pool).await;
    api.shutdown().await;
    nats.kill().unwrap();
    nats.wait().unwrap();
    let _ = std::fs::remove_dir_all(&store_dir);
}

#[tokio::test]
async fn a_projector_that_cannot_progress_says_so_and_recovers() {
    use tokio::process::Command;

    let env = Env::start().await;
    let study = env.study().await;
    let owner = env.db.pool().await;
    let addr = format!("127.0.0.1:{}", tests::free_port());
    let mut projector = Command::new(crate::publishing::binary("projector"))
        .env("PROJECTOR_DATABASE_URL", env.db.url_as(DbRole::Projector))
        .env("NATS_URL", tests::nats_url())
        .env("NATS_STREAM", &env.stream.name)
        .env("NATS_SUBJECT_PREFIX", &env.stream.prefix)
        .env("PROJECTOR_ADDR", &addr)
        .env("REDIS_URL", "")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("starting the projector binary");
    let http = reqwest::Client::new();
    let ready = |http: reqwest::Client, addr: String| async move {
        let response = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json::<Value>().await.ok()?))
    };
    // Ready, leading, and caught up with the study: the failure below is
    // then the next event's alone.
    let registered = head(&owner).await;
    wait_until(Duration::from_secs(30), "the projector to be ready", || {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            ready(http, addr)
                .await
                .filter(|(s, r)| {
                    *s == 200 && r["projection"]["position"].as_i64() >= Some(registered)
                })
                .map(|_| ())
        }
    })
    .await;
    // A read table that refuses the next row: the projector is stuck at the
    // event before it, whatever it tries.
    sqlx::query("ALTER TABLE read_model.subjects ADD CONSTRAINT no_x CHECK (label <> 'X')")
        .execute(&owner)
        .await
        .unwrap();
    let answer = env
        .api
        .post(
            &format!("/v1/studies/{study}/subjects"),
            &env.writer,
            &json!({"label": "X"}),
        )
        .await;
    assert_eq!(answer.status, 201);
    let stuck_after = answer.json()["position"].as_i64().unwrap() - 1;
    let (_, report) = wait_until(Duration::from_secs(30), "readiness to turn red", || {
        let (http, addr) = (http.clone(), addr.clone());
        async move { ready(http, addr).await.filter(|(s, _)| *s == 503) }
    })
    .await;
    assert_eq!(report["projection"]["ok"], false, "{report}");
    assert_eq!(report["projection"]["position"], stuck_after, "{report}");
    assert!(report["projection"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("no_x")));
    let metrics = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("loop_consecutive_failures{loop=\"projector\"}")),
        "{metrics}"
    );
    sqlx::query("ALTER TABLE read_model.subjects DROP CONSTRAINT no_x")
        .execute(&owner)
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "readiness to turn green", || {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            ready(http, addr)
                .await
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        }
    })
    .await;
    projector.start_kill().unwrap();
    projector.wait().await.unwrap();
}

#[tokio::test]
async fn of_two_projectors_one_leads_and_the_other_takes_over_when_it_stops() {
    use std::sync::atomic::Ordering;

    let env = Env::start().await;
    let pool = env.db.pool_as(DbRole::Projector).await;
    let js = env.stream.jetstream().await;
    let start = |name: &'static str| {
        let (pool, js, config) = (pool.clone(), js.clone(), config(&env, "shared"));
        async move {
            let projector = Projector::new(pool, Some(js), config).await.unwrap();
            let leading = projector.leading();
            let stop = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(projector.run(stop.clone()));
            (name, leading, stop, task)
        }
    };
    let first = start("first").await;
    let second = start("second").await;
    let both = [&first, &second];
    let leaders = || both.iter().filter(|p| p.1.load(Ordering::SeqCst)).count();
    wait_until(Duration::from_secs(10), "one projector to lead", || async {
        (leaders() == 1).then_some(())
    })
    .await;

    // The leader projects; the other never leads at the same time.
    let observations = history(&env).await;
    let target = head(&pool).await;
    let checkpoint = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT position FROM read_model.checkpoint")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while checkpoint(pool.clone()).await < target {
        assert_eq!(leaders(), 1, "exactly one projector leads");
        assert!(std::time::Instant::now() < deadline, "the leader projects");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The leader stops: the other takes the lead and projects what follows.
    let (leader, standby) = if first.1.load(Ordering::SeqCst) {
        (first, second)
    } else {
        (second, first)
    };
    leader.2.cancel();
    leader.3.await.unwrap();
    let took_over = std::time::Instant::now();
    wait_until(
        Duration::from_secs(5),
        "the other projector to lead",
        || async { standby.1.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    assert!(
        took_over.elapsed() < Duration::from_secs(2),
        "{} took over late",
        standby.0
    );
    let mut corrected = 0;
    for (i, id) in observations.iter().take(10).enumerate() {
        let answer = env
            .api
            .post(
                &format!("/v1/observations/{id}/corrections"),
                &env.writer,
                &json!({"values": {"body_mass_g": 1234 + i}, "reason": "reweighed"}),
            )
            .await;
        corrected += usize::from(answer.status == 200);
    }
    assert!(corrected > 0, "corrections after the takeover");
    let target = head(&pool).await;
    wait_until(Duration::from_secs(30), "the new leader to project", || {
        let pool = pool.clone();
        async move { (checkpoint(pool).await >= target).then_some(()) }
    })
    .await;
    let (position, difference) = projector::replay::verify(&pool, false).await.unwrap();
    assert_eq!((position, difference), (target, None));
    standby.2.cancel();
    standby.3.await.unwrap();
}
