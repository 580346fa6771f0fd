//! The scaled-out topology of `scripts/cluster.sh` (three NATS nodes with
//! the stream kept three times, a primary with two hot standbys, two command
//! APIs, two projectors of which one leads, three query APIs) under a mixed
//! load, its components killed one at a time and then two at once, a NATS
//! node frozen as a partition freezes it, and a standby whose replay pauses.
//!
//! The clients act as a load balancer would: each request goes to the next
//! instance in turn, and a request that failed (no connection, a 5xx) is
//! tried again on the next one. Writes carry the client's own observation
//! id, so a retry of a write that was committed before its answer was lost
//! is refused as a taken id (409) and never applied twice.
//!
//! For every scenario: no accepted write lost or applied twice (each has
//! exactly one event, and the stream holds every position once), no read
//! with a token older than the token, writes and reads answered by the
//! survivors while components are down (how many attempts failed, and the
//! longest time an operation took to get through, are printed as a table),
//! and at the end the read models equal a replay of the log.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shared::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

/// The cluster of `scripts/cluster.sh`, in a scratch directory, on ports
/// moved by an offset nobody else uses; `down` when dropped.
struct Cluster {
    dir: PathBuf,
    offset: u16,
    urls: HashMap<String, String>,
}

const COMPONENTS: usize = 14;
/// Every port `scripts/cluster.sh` uses, before the offset.
const PORTS: [u16; 20] = [
    14222, 14223, 14224, 16222, 16223, 16224, 18222, 18223, 18224, 15432, 15433, 15434, 16379,
    18081, 18082, 18071, 18072, 18091, 18092, 18093,
];

impl Cluster {
    fn up() -> Self {
        let offset = (1..200)
            .map(|i| i * 37 + (std::process::id() % 31) as u16)
            .find(|offset| {
                PORTS
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", p + offset)).is_ok())
            })
            .expect("a free set of ports");
        let dir = std::env::temp_dir().join(format!("cluster-{}", Uuid::new_v4().simple()));
        let mut cluster = Self {
            dir,
            offset,
            urls: HashMap::new(),
        };
        cluster.ctl(&["up"]);
        for line in cluster.ctl(&["status"]).lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(
                parts.len(),
                3,
                "a status line is `<component> <url> <state>`: {line}"
            );
            assert_eq!(parts[2], "up", "after `up`: {line}");
            cluster
                .urls
                .insert(parts[0].to_owned(), parts[1].to_owned());
        }
        assert_eq!(
            cluster.urls.len(),
            COMPONENTS,
            "one status line per component"
        );
        cluster
    }

    /// Runs `scripts/cluster.sh args` on this cluster; its output.
    fn ctl(&self, args: &[&str]) -> String {
        let root = tests::repo_root();
        let bin = crate::publishing::binary("command-api");
        let out = Command::new("bash")
            .arg(root.join("scripts/cluster.sh"))
            .args(args)
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_PORT_OFFSET", self.offset.to_string())
            .env(
                "CLUSTER_BIN",
                bin.parent().expect("the binaries' directory"),
            )
            .env("JWT_SECRET", tests::SECRET)
            .env("RUST_LOG", "warn")
            .output()
            .expect("running scripts/cluster.sh");
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn url(&self, component: &str) -> String {
        self.urls[component].clone()
    }

    /// The owner's URL of the primary's database.
    fn primary(&self) -> String {
        self.url("postgres-primary")
            .replacen("postgres://", "postgres://research@", 1)
    }

    /// The projector that leads now, if one does.
    async fn leading_projector(&self, http: &reqwest::Client) -> Option<String> {
        for name in ["projector-1", "projector-2"] {
            let ready = http.get(format!("{}/readyz", self.url(name))).send().await;
            if let Ok(answer) = ready {
                let body: Value = answer.json().await.unwrap_or_default();
                if body["role"] == "leading" {
                    return Some(name.to_owned());
                }
            }
        }
        None
    }
}

impl Drop for Cluster {
    /// Stops everything; with `CLUSTER_TEST_LOGS=<dir>` the components'
    /// logs are kept there first.
    fn drop(&mut self) {
        if let Ok(keep) = std::env::var("CLUSTER_TEST_LOGS") {
            let _ = std::fs::create_dir_all(&keep);
            for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log") {
                    let _ = std::fs::copy(&path, PathBuf::from(&keep).join(entry.file_name()));
                }
            }
        }
        let root = tests::repo_root();
        let _ = Command::new("bash")
            .arg(root.join("scripts/cluster.sh"))
            .arg("down")
            .env("CLUSTER_DIR", &self.dir)
            .env("CLUSTER_PORT_OFFSET", self.offset.to_string())
            .output();
    }
}

/// What the clients saw while one scenario ran.
#[derive(Default, Clone)]
struct Tally {
    writes_ok: usize,
    reads_ok: usize,
    /// Attempts that failed (no connection, a 5xx) and were tried again.
    failed_attempts: usize,
    /// Answers a client could not take (neither a success nor retriable).
    refused: Vec<String>,
    /// Writes and reads answered while the scenario's components were down.
    writes_ok_while_down: usize,
    reads_ok_while_down: usize,
    /// The longest an operation took from its first failed attempt to its
    /// success.
    longest_window: Duration,
    /// The longest a read took, waits for its token included.
    slowest_read: Duration,
    /// Reads that carried a token and answered something older.
    stale: Vec<String>,
}

/// The load: writers and readers over every instance, tallied per scenario.
struct Load {
    http: reqwest::Client,
    commands: Vec<String>,
    queries: Vec<String>,
    writer: String,
    reader: String,
    subject: Uuid,
    /// Accepted writes: id → answered position (`None`: a retry found the
    /// id taken, so an earlier attempt committed it).
    accepted: Mutex<Vec<(Uuid, Option<i64>)>>,
    tallies: Mutex<Vec<Tally>>,
    scenario: AtomicUsize,
    down: AtomicBool,
    stop: AtomicBool,
    next: AtomicUsize,
}

/// How long one operation keeps trying before it counts as failed.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

impl Load {
    fn tally(&self, change: impl FnOnce(&mut Tally, bool)) {
        let scenario = self.scenario.load(Ordering::SeqCst);
        let down = self.down.load(Ordering::SeqCst);
        let mut tallies = self.tallies.lock().unwrap();
        if tallies.len() <= scenario {
            tallies.resize(scenario + 1, Tally::default());
        }
        change(&mut tallies[scenario], down);
    }

    fn pick(&self, of: &[String]) -> String {
        of[self.next.fetch_add(1, Ordering::Relaxed) % of.len()].clone()
    }

    /// Tries `attempt` on the next instance of `endpoints` until it is done,
    /// refused, or [`GIVE_UP_AFTER`] has passed, counting the failed
    /// attempts; the value, how long it took from the first failure, and
    /// how long in all. `attempt` is told whether an earlier attempt got no
    /// answer (and so may have done its work).
    async fn through<T, F, Fut>(
        &self,
        what: &str,
        endpoints: &[String],
        mut attempt: F,
    ) -> Option<(T, Duration, Duration)>
    where
        F: FnMut(String, bool) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let started = Instant::now();
        let mut first_failure: Option<Instant> = None;
        let mut answer_lost = false;
        while started.elapsed() < GIVE_UP_AFTER {
            match attempt(self.pick(endpoints), answer_lost).await {
                Attempt::Done(value) => {
                    let window = first_failure.map(|f| f.elapsed()).unwrap_or_default();
                    return Some((value, window, started.elapsed()));
                }
                Attempt::Refused(why) => {
                    self.tally(|t, _| t.refused.push(format!("{what}: {why}")));
                    return None;
                }
                Attempt::Retry { answered } => {
                    answer_lost |= !answered;
                    first_failure.get_or_insert_with(Instant::now);
                    self.tally(|t, _| t.failed_attempts += 1);
                    // A client's pause before it tries the next instance.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.tally(|t, _| {
            t.refused
                .push(format!("{what} gave up after {GIVE_UP_AFTER:?}"))
        });
        None
    }

    async fn write(&self, n: usize) {
        let id = Uuid::now_v7();
        let body = json!({
            "observation_id": id,
            "observed_at": "2013-01-01T00:00:00Z",
            "values": {"temp": (n % 1000) as f64 / 10.0},
        });
        let attempt = |api: String, answer_lost: bool| {
            let sent = self
                .http
                .post(format!("{api}/v1/subjects/{}/observations", self.subject))
                .bearer_auth(&self.writer)
                .json(&body)
                .send();
            async move {
                match answer_of(sent.await).await {
                    Some((201, body)) => Attempt::Done(body["position"].as_i64()),
                    // An earlier attempt whose answer was lost committed it.
                    Some((409, _)) if answer_lost => Attempt::Done(None),
                    Some((500..=599, _)) => Attempt::Retry { answered: true },
                    Some((status, body)) => Attempt::Refused(format!("{status}: {body}")),
                    None => Attempt::Retry { answered: false },
                }
            }
        };
        let what = format!("write {id}");
        if let Some((position, window, _)) = self.through(&what, &self.commands, attempt).await {
            self.accepted.lock().unwrap().push((id, position));
            self.tally(|t, down| {
                t.writes_ok += 1;
                t.writes_ok_while_down += usize::from(down);
                t.longest_window = t.longest_window.max(window);
            });
        }
    }

    async fn read(&self) {
        let Some((id, position)) = ({
            let accepted = self.accepted.lock().unwrap();
            let recent = accepted.len().saturating_sub(50);
            accepted[recent..]
                .iter()
                .rev()
                .find_map(|(id, p)| p.map(|p| (*id, p)))
        }) else {
            // Nothing written yet: the writers are starting.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return;
        };
        let attempt = |api: String, _| {
            let sent = self
                .http
                .get(format!("{api}/v1/observations/{id}"))
                .bearer_auth(&self.reader)
                .header("Consistency-Token", position.to_string())
                .send();
            async move {
                match answer_of(sent.await).await {
                    Some((200, body)) => {
                        let seen = body["position"].as_i64().unwrap_or(-1);
                        Attempt::Done((seen < position).then(|| {
                            format!("{api}: observation {id} at {seen}, token {position}")
                        }))
                    }
                    Some((404, _)) => Attempt::Done(Some(format!(
                        "{api}: observation {id} unknown with token {position}"
                    ))),
                    Some((500..=599, _)) => Attempt::Retry { answered: true },
                    Some((status, body)) => Attempt::Refused(format!("{status}: {body}")),
                    None => Attempt::Retry { answered: false },
                }
            }
        };
        let what = format!("read {id}");
        if let Some((stale, window, took)) = self.through(&what, &self.queries, attempt).await {
            self.tally(|t, down| {
                t.stale.extend(stale);
                t.slowest_read = t.slowest_read.max(took);
                t.reads_ok += 1;
                t.reads_ok_while_down += usize::from(down);
                t.longest_window = t.longest_window.max(window);
            });
        }
    }
}

/// What one attempt of an operation came to.
enum Attempt<T> {
    Done(T),
    /// Try the next instance; `answered`: it answered (a 5xx) rather than
    /// not at all.
    Retry {
        answered: bool,
    },
    /// An answer the client cannot take.
    Refused(String),
}

/// The status and JSON body of an answer; `None` when there was none.
async fn answer_of(sent: reqwest::Result<reqwest::Response>) -> Option<(u16, Value)> {
    let answer = sent.ok()?;
    let status = answer.status().as_u16();
    Some((status, answer.json().await.unwrap_or_default()))
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let answer = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("the command API answers");
    assert!(answer.status().is_success(), "{url}: {}", answer.status());
    answer.json().await.expect("a JSON answer")
}

/// One scenario: what was done to which components (brought back after
/// six seconds of load on the survivors).
struct Scenario {
    name: &'static str,
    what: String,
    down: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_component_killed_under_load_loses_nothing_and_the_survivors_keep_serving() {
    let cluster = tokio::task::spawn_blocking(Cluster::up).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(8)
        .build()
        .unwrap();
    let writer = tests::token("cluster-writer", &[Role::Writer]);
    let study = post(
        &http,
        format!("{}/v1/studies", cluster.url("command-api-1")),
        &writer,
        json!({"code": "CLUSTER-1", "title": "Failover", "principal_investigator": "Ops",
               "variables": [{"name": "temp", "kind": "numeric"}]}),
    )
    .await;
    let subject = post(
        &http,
        format!(
            "{}/v1/studies/{}/subjects",
            cluster.url("command-api-2"),
            study["id"].as_str().unwrap()
        ),
        &writer,
        json!({"label": "station-1"}),
    )
    .await;
    let load = Arc::new(Load {
        http: http.clone(),
        commands: vec![cluster.url("command-api-1"), cluster.url("command-api-2")],
        queries: (1..=3)
            .map(|i| cluster.url(&format!("query-api-{i}")))
            .collect(),
        writer,
        reader: tests::token("cluster-reader", &[Role::Reader]),
        subject: subject["id"].as_str().unwrap().parse().unwrap(),
        accepted: Mutex::default(),
        tallies: Mutex::default(),
        scenario: AtomicUsize::new(0),
        down: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        next: AtomicUsize::new(0),
    });
    let mut clients = Vec::new();
    for w in 0..3 {
        let load = load.clone();
        clients.push(tokio::spawn(async move {
            let mut n = w;
            while !load.stop.load(Ordering::SeqCst) {
                load.write(n).await;
                n += 3;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    for _ in 0..3 {
        let load = load.clone();
        clients.push(tokio::spawn(async move {
            while !load.stop.load(Ordering::SeqCst) {
                load.read().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let ctl = |args: Vec<String>| {
        let cluster = &cluster;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tokio::task::block_in_place(|| cluster.ctl(&args))
        }
    };
    let mut scenarios: Vec<Scenario> = Vec::new();
    // Warm-up: nothing is down.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let leader = cluster
        .leading_projector(&http)
        .await
        .expect("one projector leads");
    let plans: Vec<(&'static str, &'static str, Vec<String>)> = vec![
        ("kill -9", "one NATS node", vec!["nats-2".into()]),
        ("kill -9", "the leading projector", vec![leader.clone()]),
        ("kill -9", "one command API", vec!["command-api-1".into()]),
        ("kill -9", "one query API", vec!["query-api-1".into()]),
        ("kill -9", "one standby", vec!["postgres-standby-1".into()]),
        (
            "freeze",
            "one NATS node (a partition)",
            vec!["nats-1".into()],
        ),
        (
            "pause replay",
            "one standby falls behind",
            vec!["postgres-standby-2".into()],
        ),
        (
            "kill -9",
            "a NATS node and the leading projector",
            vec!["nats-3".into(), "LEADER".into()],
        ),
        (
            "kill -9",
            "a command API and a query API",
            vec!["command-api-2".into(), "query-api-2".into()],
        ),
        (
            "kill -9",
            "a standby and a query API",
            vec!["postgres-standby-1".into(), "query-api-3".into()],
        ),
    ];
    for (how, what, targets) in plans {
        let mut down = Vec::new();
        for target in targets {
            let target = if target == "LEADER" {
                cluster
                    .leading_projector(&http)
                    .await
                    .expect("one projector leads")
            } else {
                target
            };
            down.push(target);
        }
        load.scenario.fetch_add(1, Ordering::SeqCst);
        load.down.store(true, Ordering::SeqCst);
        for target in &down {
            let verb = match how {
                "freeze" => "freeze",
                "pause replay" => "pause-replay",
                _ => "kill",
            };
            ctl(vec![verb.into(), target.clone()]).await;
        }
        tokio::time::sleep(Duration::from_secs(6)).await;
        for target in &down {
            match how {
                "freeze" => ctl(vec!["thaw".into(), target.clone()]).await,
                "pause replay" => ctl(vec!["resume-replay".into(), target.clone()]).await,
                _ => ctl(vec!["start".into(), target.clone()]).await,
            };
        }
        load.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        scenarios.push(Scenario {
            name: how,
            what: what.to_owned(),
            down,
        });
    }
    load.stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }

    // Everything came back.
    for line in ctl(vec!["status".into()]).await.lines() {
        assert!(line.ends_with(" up"), "after the scenarios: {line}");
    }

    // The log: every accepted write has exactly one event, at the answered
    // position; positions are gap-free; the stream holds each one once.
    let primary = PgPool::connect(&cluster.primary())
        .await
        .expect("the cluster's primary");
    let accepted = load.accepted.lock().unwrap().clone();
    let ids: Vec<Uuid> = accepted.iter().map(|(id, _)| *id).collect();
    let events: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_id, count(*), min(position) FROM events WHERE aggregate_id = ANY($1) GROUP BY aggregate_id",
    )
    .bind(&ids)
    .fetch_all(&primary)
    .await
    .unwrap();
    let found: HashMap<Uuid, (i64, i64)> =
        events.into_iter().map(|(id, n, p)| (id, (n, p))).collect();
    for (id, position) in &accepted {
        let (count, at) = found.get(id).copied().unwrap_or((0, 0));
        assert_eq!(count, 1, "accepted write {id} has {count} events");
        if let Some(position) = position {
            assert_eq!(
                at, *position,
                "accepted write {id} answered {position}, stored at {at}"
            );
        }
    }
    let (head, rows): (i64, i64) =
        sqlx::query_as("SELECT coalesce(max(position), 0), count(*) FROM events")
            .fetch_one(&primary)
            .await
            .unwrap();
    assert_eq!(head, rows, "positions are gap-free");

    let nats = async_nats::connect(cluster.url("nats-1")).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let info = tests::wait_until(
        Duration::from_secs(60),
        "the stream to hold the head",
        || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream("RESEARCH_EVENTS").await.ok()?;
                let info = stream.info().await.ok()?.clone();
                (info.state.last_sequence == head as u64).then_some(info)
            }
        },
    )
    .await;
    assert_eq!(
        info.state.messages, head as u64,
        "each event published once"
    );
    assert_eq!(
        info.config.num_replicas, 3,
        "the stream is kept three times"
    );

    // The read models caught up, and equal a replay of the log.
    tests::wait_until(
        Duration::from_secs(60),
        "the projection to reach the head",
        || {
            let primary = primary.clone();
            async move {
                let at: i64 = sqlx::query_scalar("SELECT position FROM read_model.checkpoint")
                    .fetch_one(&primary)
                    .await
                    .ok()?;
                (at == head).then_some(())
            }
        },
    )
    .await;
    let (position, difference) = projector::replay::verify(&primary, false).await.unwrap();
    assert_eq!(position, head);
    assert_eq!(difference, None, "the read models equal a replay");

    // The table, and what every scenario must show.
    let tallies = load.tallies.lock().unwrap().clone();
    eprintln!("| scenario | down | attempts failed | longest wait to get through | slowest read | writes / reads answered while down | lost or doubled |");
    eprintln!("|---|---|---|---|---|---|---|");
    for (i, scenario) in scenarios.iter().enumerate() {
        let t = tallies.get(i + 1).cloned().unwrap_or_default();
        eprintln!(
            "| {} {} | {} | {} | {} ms | {} ms | {} / {} | none |",
            scenario.name,
            scenario.what,
            scenario.down.join(", "),
            t.failed_attempts,
            t.longest_window.as_millis(),
            t.slowest_read.as_millis(),
            t.writes_ok_while_down,
            t.reads_ok_while_down,
        );
    }
    eprintln!("{} writes accepted, head {head}", accepted.len());
    for (i, scenario) in scenarios.iter().enumerate() {
        let t = tallies.get(i + 1).cloned().unwrap_or_default();
        let name = format!("{} {}", scenario.name, scenario.what);
        assert!(
            t.stale.is_empty(),
            "{name}: reads older than their token: {:?}",
            t.stale
        );
        assert!(
            t.refused.is_empty(),
            "{name}: answers that are neither success nor retriable: {:?}",
            t.refused
        );
        assert!(
            t.writes_ok_while_down > 0,
            "{name}: no write got through while down"
        );
        assert!(
            t.reads_ok_while_down > 0,
            "{name}: no read got through while down"
        );
        assert!(
            t.longest_window < Duration::from_secs(15),
            "{name}: an operation waited {:?} to get through",
            t.longest_window
        );
    }
}
