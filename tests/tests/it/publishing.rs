//! Every committed event reaches JetStream exactly once and in position
//! order, also when the command API is killed in the middle of a load.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shared::envelope::StoredEvent;
use shared::store::EventStore;
use tests::{command_config, free_port, read_stream, wait_until, TestDb, TestStream, SECRET};
use tokio::process::{Child, Command};

use crate::env::{first_row, Env};

/// Waits until the stream holds `n` messages and returns them.
async fn published(stream: &TestStream, n: usize) -> Vec<(i64, String, Value)> {
    let js = stream.jetstream().await;
    wait_until(Duration::from_secs(30), "every event in JetStream", || {
        let js = js.clone();
        async move {
            let messages = read_stream(&js, &stream.name).await.ok()?;
            (messages.len() >= n).then_some(messages)
        }
    })
    .await
}

/// Every stored event appears once, in position order, as its CloudEvent.
fn assert_exactly_once_in_order(events: &[StoredEvent], messages: &[(i64, String, Value)]) {
    let ids: Vec<&str> = messages.iter().map(|(_, id, _)| id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "no message id appears twice");
    assert_eq!(
        messages.len(),
        events.len(),
        "every committed event is published"
    );
    for (event, (position, id, payload)) in events.iter().zip(messages) {
        assert_eq!(*position, event.position, "stream order is position order");
        assert_eq!(*id, event.event_id.to_string());
        assert_eq!(payload["id"], event.event_id.to_string());
        assert_eq!(payload["position"], event.position);
        assert_eq!(payload["hash"], hex::encode(event.hash));
    }
}

#[tokio::test]
async fn committed_events_are_published_as_cloud_events_once_in_order() {
    let env = Env::start().await;
    let (study, subject, observation) = env.recorded().await;
    let answer = env
        .api
        .post(
            &format!("/v1/observations/{observation}/retraction"),
            &env.writer,
            &json!({"reason": "wrong nest"}),
        )
        .await;
    assert_eq!(answer.status, 200);
    let events = EventStore::read_after(&env.db.pool().await, 0, 100)
        .await
        .unwrap();
    let messages = published(&env.stream, events.len()).await;
    assert_exactly_once_in_order(&events, &messages);
    let retraction = &messages[3].2;
    assert_eq!(retraction["specversion"], "1.0");
    assert_eq!(retraction["type"], "research.observation.retracted.v1");
    assert_eq!(retraction["source"], format!("/studies/{study}"));
    assert_eq!(retraction["subject"], observation.to_string());
    assert_eq!(retraction["streamversion"], 2);
    assert_eq!(retraction["reason"], "wrong nest");
    assert_eq!(retraction["actor"], "alice");
    let parsed = StoredEvent::from_cloud_event(&retraction.to_string()).unwrap();
    assert_eq!(parsed, events[3], "the published event is the stored one");

    // A batch larger than what the appender tells the publisher in memory
    // (it is told empty, and read from the store), then single commands.
    let mut item = crate::env::first_row();
    item["type"] = json!("RecordObservation");
    item["target"] = json!(subject);
    let items = vec![item; shared::store::TOLD_EVENTS * 3];
    let batch = env
        .api
        .post("/v1/commands", &env.writer, &json!({ "commands": items }))
        .await;
    assert_eq!(
        batch.status,
        200,
        "{}",
        String::from_utf8_lossy(&batch.bytes)
    );
    for _ in 0..3 {
        assert_eq!(
            env.record(subject, &crate::env::first_row()).await.status,
            201
        );
    }
    let events = EventStore::read_after(&env.db.pool().await, 0, 1000)
        .await
        .unwrap();
    assert_eq!(events.len(), 4 + shared::store::TOLD_EVENTS * 3 + 3);
    let messages = published(&env.stream, events.len()).await;
    assert_exactly_once_in_order(&events, &messages);
}

pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --bins), as scripts/test.sh does",
        path.display()
    );
    path
}

async fn start_process(db: &TestDb, stream: &TestStream, port: u16) -> Child {
    let config = command_config(db, stream);
    let child = Command::new(binary("command-api"))
        .env("COMMAND_API_ADDR", format!("127.0.0.1:{port}"))
        .env("COMMAND_API_DATABASE_URL", &config.database_url)
        .env("NATS_URL", config.nats.url.to_string())
        .env("NATS_STREAM", &config.nats.stream)
        .env("NATS_SUBJECT_PREFIX", &config.nats.subject_prefix)
        .env("JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("starting the command-api binary");
    let http = reqwest::Client::new();
    wait_until(
        Duration::from_secs(30),
        "the command API to be ready",
        || {
            let http = http.clone();
            async move {
                let r = http
                    .get(format!("http://127.0.0.1:{port}/readyz"))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        },
    )
    .await;
    child
}

/// Registers a penguin study and a subject through the API at `base`;
/// answers the URL that records the subject's observations.
async fn observations_url(http: &reqwest::Client, base: &str, writer: &str) -> String {
    let post = |url: String, body: Value| async move {
        let r: Value = http
            .post(url)
            .bearer_auth(writer)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["id"].as_str().unwrap().to_owned()
    };
    let study = post(
        format!("{base}/v1/studies"),
        tests::penguins()[0].register_body(),
    )
    .await;
    let subject = post(
        format!("{base}/v1/studies/{study}/subjects"),
        json!({"label": "N1A1"}),
    )
    .await;
    format!("{base}/v1/subjects/{subject}/observations")
}

#[tokio::test]
async fn a_killed_command_api_publishes_every_committed_event_exactly_once_after_restart() {
    let db = TestDb::create().await;
    let stream = TestStream::new();
    let port = free_port();
    let mut child = start_process(&db, &stream, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let writer = tests::token("alice", &[shared::auth::Role::Writer]);

    let url = observations_url(&http, &base, &writer).await;

    // Load from 16 clients, and kill -9 in the middle of it.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (http, writer, stop, accepted, acknowledged) = (
                http.clone(),
                writer.clone(),
                stop.clone(),
                accepted.clone(),
                acknowledged.clone(),
            );
            let url = url.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(r) = http
                        .post(&url)
                        .bearer_auth(&writer)
                        .json(&first_row())
                        .send()
                        .await
                    else {
                        break;
                    };
                    if r.status() == 201 {
                        if let Ok(v) = r.json::<Value>().await {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            acknowledged
                                .lock()
                                .unwrap()
                                .push(v["position"].as_i64().unwrap());
                        }
                    }
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), "some load", || {
        let n = accepted.load(Ordering::Relaxed);
        async move { (n >= 300).then_some(()) }
    })
    .await;
    child.start_kill().expect("SIGKILL");
    child.wait().await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }

    let mut restarted = start_process(&db, &stream, port).await;
    let pool = db.pool().await;
    let events = EventStore::read_after(&pool, 0, 100_000).await.unwrap();
    let committed: HashSet<i64> = events.iter().map(|e| e.position).collect();
    for position in acknowledged.lock().unwrap().iter() {
        assert!(
            committed.contains(position),
            "acknowledged position {position} is stored"
        );
    }
    let messages = published(&stream, events.len()).await;
    assert_exactly_once_in_order(&events, &messages);
    restarted.start_kill().unwrap();
    restarted.wait().await.unwrap();
}

#[tokio::test]
async fn the_publisher_refuses_a_stream_that_belongs_to_another_log() {
    let first = Env::start().await;
    first.recorded().await;
    let events = EventStore::read_after(&first.db.pool().await, 0, 100)
        .await
        .unwrap();
    published(&first.stream, events.len()).await;

    // A new, empty event store pointed at the same stream.
    let other_db = TestDb::create().await;
    let other = tests::CommandApi::spawn(&command_config(&other_db, &first.stream)).await;
    let study = other
        .post(
            "/v1/studies",
            &first.writer,
            &tests::penguins()[1].register_body(),
        )
        .await;
    assert_eq!(study.status, 201);
    let metrics = wait_until(
        Duration::from_secs(10),
        "the mismatch to be reported",
        || {
            let http = other.http.clone();
            let url = other.url("/metrics");
            async move {
                let text = http.get(url).send().await.ok()?.text().await.ok()?;
                text.contains("outbox_stream_mismatch 1").then_some(text)
            }
        },
    )
    .await;
    assert!(metrics.contains("outbox_stream_mismatch 1"));
    let messages = read_stream(&first.stream.jetstream().await, &first.stream.name)
        .await
        .unwrap();
    assert_eq!(
        messages.len(),
        events.len(),
        "nothing of the other log was published"
    );
    other.shutdown().await;
}

#[tokio::test]
async fn sigterm_finishes_in_flight_commands_and_publishes_them_before_exit() {
    let db = TestDb::create().await;
    let stream = TestStream::new();
    let port = free_port();
    let mut child = start_process(&db, &stream, port).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let writer = tests::token("alice", &[shared::auth::Role::Writer]);
    let url = observations_url(&http, &base, &writer).await;

    let accepted = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (http, writer, url, accepted) =
                (http.clone(), writer.clone(), url.clone(), accepted.clone());
            tokio::spawn(async move {
                let mut answered = Vec::new();
                // Until the server stops accepting connections.
                while let Ok(r) = http
                    .post(&url)
                    .bearer_auth(&writer)
                    .json(&first_row())
                    .send()
                    .await
                {
                    let status = r.status().as_u16();
                    assert!(
                        status == 201 || status == 503,
                        "an in-flight command answered {status}"
                    );
                    if status == 201 {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        answered.push(
                            r.json::<Value>().await.unwrap()["position"]
                                .as_i64()
                                .unwrap(),
                        );
                    }
                }
                answered
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), "some load", || {
        let n = accepted.load(Ordering::Relaxed);
        async move { (n >= 200).then_some(()) }
    })
    .await;
    let pid = child.id().expect("a running child").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "a clean exit after SIGTERM: {status}");
    let mut answered = Vec::new();
    for c in clients {
        answered.extend(c.await.unwrap());
    }

    let events = EventStore::read_after(&db.pool().await, 0, 100_000)
        .await
        .unwrap();
    let committed: HashSet<i64> = events.iter().map(|e| e.position).collect();
    assert!(
        answered.iter().all(|p| committed.contains(p)),
        "every answered command is stored"
    );
    // Published before the process exited: nothing restarted it.
    let messages = read_stream(&stream.jetstream().await, &stream.name)
        .await
        .unwrap();
    assert_exactly_once_in_order(&events, &messages);
}
