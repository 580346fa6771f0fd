//! Helpers for the integration tests: each test gets its own PostgreSQL
//! database, its own JetStream stream and subject prefix, and services bound
//! to port 0, all against the real servers (see `TEST_*` variables below).

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use command_api::config::Config;
use command_api::App;
use reqwest::header::HeaderMap;
use serde_json::Value;
use shared::auth::{claims_for, mint, Role};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const SECRET: &str = "integration-test-secret";

/// Server for throw-away databases; the role needs CREATEDB.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://research:research@127.0.0.1:5432/postgres".to_owned())
}

/// The root of the checkout the tests run in: `CARGO_MANIFEST_DIR` as cargo
/// and nextest set it when they run a test (a test binary built in a shared
/// target directory from another checkout would otherwise read that one's
/// files), else where it was built.
pub fn repo_root() -> std::path::PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    manifest
        .parent()
        .expect("the tests crate is in the workspace")
        .to_owned()
}

pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A database of its own, dropped when the test ends. `url` is its owner's
/// (who applied the migrations); the services connect with [`TestDb::url_as`].
pub struct TestDb {
    pub name: String,
    pub url: String,
    /// The server's maintenance database, which drops this one at the end.
    admin: String,
}

/// The database roles of the services (made by `scripts/infra.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbRole {
    Command,
    Projector,
    Query,
}

impl DbRole {
    pub const ALL: [DbRole; 3] = [DbRole::Command, DbRole::Projector, DbRole::Query];

    pub fn name(self) -> &'static str {
        match self {
            Self::Command => "research_command",
            Self::Projector => "research_projector",
            Self::Query => "research_query",
        }
    }
}

impl TestDb {
    pub async fn create() -> Self {
        Self::create_on(&admin_url()).await
    }

    /// A database of its own on the server whose maintenance database
    /// `admin_url` names (a role with CREATEDB).
    pub async fn create_on(admin_url: &str) -> Self {
        let name = format!("t_{}", Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(admin_url)
            .await
            .expect("connecting to the test PostgreSQL server (is scripts/infra.sh done?)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("creating a test database");
        admin.close().await;
        let url = format!(
            "{}/{name}",
            &admin_url[..admin_url.rfind('/').expect("a URL with a database")]
        );
        let db = Self {
            name,
            url,
            admin: admin_url.to_owned(),
        };
        let owner = db.pool().await;
        shared::MIGRATOR
            .run(&owner)
            .await
            .expect("applying the migrations as the owner");
        owner.close().await;
        db
    }

    /// The URL a service connects with: its own role, the owner's password
    /// unless `TEST_SERVICE_DB_PASSWORD` says otherwise.
    pub fn url_as(&self, role: DbRole) -> String {
        let mut url = url::Url::parse(&self.url).expect("a database URL");
        url.set_username(role.name()).expect("a URL with a user");
        if let Ok(password) = std::env::var("TEST_SERVICE_DB_PASSWORD") {
            url.set_password(Some(&password))
                .expect("a URL with a password");
        }
        url.to_string()
    }

    pub async fn pool_as(&self, role: DbRole) -> PgPool {
        PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url_as(role))
            .await
            .expect("connecting to the test database as a service role")
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("connecting to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin.clone();
        // Drop runs outside async context guarantees: use a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(admin) = PgPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(Duration::from_secs(5))
                        .connect(&admin_url)
                        .await
                    {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&admin)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

/// A PostgreSQL server of its own (`initdb` in a scratch directory, on a
/// free port, trust authentication, the services' roles made), for a test
/// that stops and restarts it; removed when dropped. When the tests run as
/// root the server runs as `postgres`, as `scripts/infra.sh` does.
pub struct PrivatePostgres {
    pub port: u16,
    dir: std::path::PathBuf,
    bin: std::path::PathBuf,
    as_postgres: bool,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        use std::os::unix::fs::MetadataExt;

        let bin = postgres_bin();
        let dir = std::env::temp_dir().join(format!("pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).expect("a scratch directory");
        let as_postgres = std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0);
        if as_postgres {
            let id = |flag: &str| -> u32 {
                let out = std::process::Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("the postgres user (installed with PostgreSQL)")
            };
            std::os::unix::fs::chown(&dir, Some(id("-u")), Some(id("-g")))
                .expect("handing the scratch directory to postgres");
        }
        let server = Self {
            port: free_port(),
            dir,
            bin,
            as_postgres,
        };
        let data = server.data();
        server.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "research",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 60\n",
            server.port,
            server.dir.display()
        );
        let conf_path = server.dir.join("data/postgresql.auto.conf");
        let mut all = std::fs::read_to_string(&conf_path).unwrap_or_default();
        all.push_str(&conf);
        std::fs::write(&conf_path, all).expect("configuring the private server");
        server.start_server();
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server.admin_url())
            .await
            .expect("connecting to the private server");
        for role in DbRole::ALL {
            sqlx::query(&format!("CREATE ROLE {} LOGIN", role.name()))
                .execute(&admin)
                .await
                .expect("creating a service role");
        }
        admin.close().await;
        server
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://research@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start_server(&self) {
        let log = self.dir.join("server.log").display().to_string();
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "start"]);
    }

    /// Stops the server as an operator's restart does (`-m fast`: sessions
    /// are ended, open transactions rolled back).
    pub fn stop_server(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let path = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = command
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let _ = if self.as_postgres {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            std::process::Command::new(&path).args(args).output()
        };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of PostgreSQL's server programs: `TEST_PG_BIN`, or the
/// newest `/usr/lib/postgresql/<major>/bin` (Debian's layout).
fn postgres_bin() -> std::path::PathBuf {
    if let Ok(dir) = std::env::var("TEST_PG_BIN") {
        return dir.into();
    }
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server programs under /usr/lib/postgresql (or TEST_PG_BIN)")
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("an initdb under /usr/lib/postgresql").1
}

/// A JetStream stream and subject prefix of its own, deleted at the end.
pub struct TestStream {
    pub name: String,
    pub prefix: String,
}

impl TestStream {
    pub fn new() -> Self {
        let id = Uuid::new_v4().simple().to_string();
        Self {
            name: format!("T_{id}"),
            prefix: format!("t{id}"),
        }
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(nats_url())
            .await
            .expect("connecting to NATS");
        async_nats::jetstream::new(client)
    }
}

impl Default for TestStream {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    if let Ok(client) = async_nats::connect(nats_url()).await {
                        let js = async_nats::jetstream::new(client);
                        // The events' stream, and the checkpoints' one when
                        // the command API signed checkpoints.
                        let _ = js.delete_stream(&name).await;
                        let _ = js.delete_stream(format!("{name}_CHECKPOINTS")).await;
                    }
                });
            }
        })
        .join();
    }
}

pub fn command_config(db: &TestDb, stream: &TestStream) -> Config {
    Config {
        addr: "127.0.0.1:0".parse().expect("a literal address"),
        database_url: db.url_as(DbRole::Command),
        migration: shared::config::MigrationSettings::default(),
        log_signing_key: String::new(),
        log_signing_key_file: String::new(),
        log_origin: "research-records.test/log".to_owned(),
        log_tree_batch: 10_000,
        db_pool: 8,
        nats: shared::config::NatsSettings {
            stream: stream.name.clone(),
            subject_prefix: stream.prefix.clone(),
            ..shared::config::NatsSettings::at(&nats_url()).expect("NATS_URL is a list of servers")
        },
        tokens: shared::config::TokenSettings::with_secret(SECRET),
        request_timeout: Duration::from_secs(30),
        state_cache_bytes: 8 * 1024 * 1024,
        max_append_batch: 2000,
        appender_connections: 2,
    }
}

/// A command API serving on an ephemeral port inside the test process.
pub struct CommandApi {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl CommandApi {
    pub async fn spawn(config: &Config) -> Self {
        let app = App::start(config).await.expect("starting the command API");
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .expect("binding port 0");
        let addr = listener.local_addr().expect("a bound address");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(app.serve(listener, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops gracefully: in-flight commands finish, the outbox drains.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub async fn post(&self, path: &str, token: &str, body: &Value) -> Answer {
        self.post_with(path, token, body, &[]).await
    }

    /// Registers the first penguin study and one subject in it with
    /// `writer`; answers their ids.
    pub async fn study_with_subject(&self, writer: &str) -> (Uuid, Uuid) {
        let study = self
            .post("/v1/studies", writer, &penguins()[0].register_body())
            .await
            .id();
        let subject = self
            .post(
                &format!("/v1/studies/{study}/subjects"),
                writer,
                &serde_json::json!({"label": "N1A1"}),
            )
            .await
            .id();
        (study, subject)
    }

    pub async fn post_with(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self.http.post(self.url(path)).bearer_auth(token).json(body);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        Answer::from(request.send().await.expect("the command API answers")).await
    }

    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> Answer {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Answer::from(request.send().await.expect("the command API answers")).await
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A private `redis-server` on `port`, without persistence.
pub fn start_redis(port: u16) -> std::process::Child {
    std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (installed by scripts/infra.sh)")
}

/// A private Redis on a free port, answering: its process, port and URL.
pub async fn private_redis() -> (std::process::Child, u16, String) {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let child = start_redis(port);
    wait_until(Duration::from_secs(10), "redis to start", || async {
        redis::Client::open(url.as_str())
            .ok()?
            .get_multiplexed_async_connection()
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    (child, port, url)
}

/// The replica of a test database: the hot standby (`TEST_REPLICA_PORT`,
/// 5433 by default) replays every database of the primary.
pub fn replica_url(primary_url: &str) -> String {
    let port = std::env::var("TEST_REPLICA_PORT").unwrap_or_else(|_| "5433".to_owned());
    let url = url::Url::parse(primary_url).expect("a database URL");
    let mut replica = url.clone();
    replica
        .set_port(port.parse().ok())
        .expect("a URL that takes a port");
    replica.to_string()
}

/// Settings of a query API reading `read_url`, with Redis under `prefix`
/// (no Redis when `redis_url` is empty).
pub fn query_config(read_url: &str, redis_url: &str, prefix: &str) -> query_api::config::Config {
    query_api::config::Config {
        addr: "127.0.0.1:0".parse().expect("a literal address"),
        replica_database_url: read_url.to_owned(),
        database_url: String::new(),
        db_pool: 8,
        redis: shared::config::RedisSettings {
            url: redis_url.to_owned(),
            prefix: prefix.to_owned(),
        },
        cache_bytes: 16 * 1024 * 1024,
        tile_cache_bytes: 4 * 1024 * 1024,
        consistency_timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(100),
        request_timeout: Duration::from_secs(10),
        tokens: shared::config::TokenSettings::with_secret(SECRET),
        log_verifier_key: String::new(),
    }
}

/// A query API serving on an ephemeral port inside the test process.
pub struct QueryApi {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub app: query_api::App,
    task: JoinHandle<()>,
}

impl QueryApi {
    pub async fn spawn(config: &query_api::config::Config) -> Self {
        let app = query_api::App::start(config, None)
            .await
            .expect("starting the query API");
        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .expect("binding port 0");
        let addr = listener.local_addr().expect("a bound address");
        let router = app.router();
        let task = tokio::spawn(async move {
            let _ = axum::serve(shared::listener::ProblemListener::new(listener), router).await;
        });
        Self {
            addr,
            http: reqwest::Client::new(),
            app,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.get_with(path, token, &[]).await
    }

    pub async fn get_with(&self, path: &str, token: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = self.http.get(self.url(path)).bearer_auth(token);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        Answer::from(request.send().await.expect("the query API answers")).await
    }
}

impl Drop for QueryApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub async fn from(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        Self {
            status,
            headers,
            bytes,
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an RFC 9457 problem with `status` and returns it.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.bytes)
        );
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(p["type"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
        p
    }

    pub fn id(&self) -> Uuid {
        self.json()["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("an id in the answer")
    }
}

pub fn token(sub: &str, roles: &[Role]) -> String {
    mint(SECRET.as_bytes(), &claims_for(sub, roles, 3600))
}

/// A token limited to `studies`.
pub fn token_for_studies(sub: &str, roles: &[Role], studies: &[Uuid]) -> String {
    let mut claims = claims_for(sub, roles, 3600);
    claims.studies = Some(studies.to_vec());
    mint(SECRET.as_bytes(), &claims)
}

/// Polls `check` until it yields `Some`, or fails the test after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads every message of a stream: (position header, message id, payload).
pub async fn read_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> anyhow::Result<Vec<(i64, String, Value)>> {
    let stream = js.get_stream(name).await.context("getting the stream")?;
    let info = stream.get_info().await.context("stream info")?;
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return Ok(out);
    }
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let position = m
            .headers
            .get(command_api::publisher::POSITION_HEADER)
            .and_then(|v| v.as_str().parse().ok())
            .context("a position header")?;
        let id = m
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|v| v.as_str().to_owned())
            .context("a message id")?;
        out.push((position, id, serde_json::from_slice(&m.payload)?));
    }
    Ok(out)
}

/// The penguin study definition and rows, from the repository's data.
pub fn penguins() -> Vec<benches::datasets::StudyData> {
    benches::datasets::penguins(&benches::datasets::data_dir().join("penguins_raw.csv"))
        .expect("reading penguins")
}
