//! `research-bench`: the load generator of the benchmarks. `write` records
//! real NYC weather rows as observations through the command API; `read`
//! GETs a list of paths (real documents) from any HTTP server; both at a
//! fixed number of connections, closed loop (maximum rate) or at a fixed
//! rate. `static-server` is the ceiling `read` is compared with: a minimal
//! axum handler answering a fixed body.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use benches::datasets;
use benches::load;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

/// Load generator for the research records services.
#[derive(Parser)]
#[command(name = "research-bench", version, about)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// POST RecordObservation commands built from the real weather rows.
    Write {
        #[arg(long, env = "COMMAND_API_URL", default_value = "http://127.0.0.1:8081")]
        api: String,
        /// Bearer token with the writer role.
        #[arg(long, env = "RESEARCH_TOKEN", hide_env_values = true)]
        token: String,
        /// Concurrent connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests per second in total (open loop); closed loop when absent.
        #[arg(long)]
        rate: Option<f64>,
        /// Print one JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// GET the paths listed in a file, in turn, over keep-alive connections.
    Read {
        /// host:port of the server.
        #[arg(long, default_value = "127.0.0.1:8082")]
        target: String,
        /// File with one path a line.
        #[arg(long)]
        paths: std::path::PathBuf,
        /// Bearer token sent with every request.
        #[arg(long, env = "RESEARCH_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Accept-Encoding sent with every request.
        #[arg(long)]
        accept_encoding: Option<String>,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Requests per second in total (open loop); closed loop when absent.
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Serve a fixed body of BYTES bytes on every path (the ceiling).
    StaticServer {
        #[arg(long, default_value = "127.0.0.1:18090")]
        addr: String,
        #[arg(long)]
        bytes: usize,
    },
    /// Extend the log's Merkle tree over every event beyond it, in batches
    /// of BATCH (after its tiles were deleted: a rebuild); prints the rate.
    RebuildTree {
        #[arg(long, env = "COMMAND_API_DATABASE_URL")]
        database_url: String,
        #[arg(long, default_value_t = 100_000)]
        batch: i64,
    },
    /// Delete a JetStream stream left by a benchmark run.
    DropStream {
        name: String,
        #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
        nats: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().what {
        What::Write {
            api,
            token,
            connections,
            seconds,
            rate,
            json: as_json,
        } => write(api, token, connections, seconds, rate, as_json).await,
        What::Read {
            target,
            paths,
            token,
            accept_encoding,
            connections,
            seconds,
            rate,
            json: as_json,
        } => {
            let mut headers = String::new();
            if let Some(token) = token {
                headers.push_str(&format!("Authorization: Bearer {token}\r\n"));
            }
            if let Some(coding) = accept_encoding {
                headers.push_str(&format!("Accept-Encoding: {coding}\r\n"));
            }
            let requests: Vec<Vec<u8>> = std::fs::read_to_string(&paths)
                .with_context(|| format!("reading {}", paths.display()))?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|p| benches::raw_http::request(&target, p.trim(), &headers))
                .collect();
            if requests.is_empty() {
                bail!("{} lists no paths", paths.display());
            }
            let report = read(target, Arc::new(requests), connections, seconds, rate).await;
            print_report(&report, connections, rate, as_json);
            Ok(())
        }
        What::StaticServer { addr, bytes } => {
            let body = axum::body::Bytes::from(vec![b'x'; bytes]);
            let app = axum::Router::new().fallback(move || {
                let body = body.clone();
                async move { ([("content-type", "application/json")], body) }
            });
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            axum::serve(listener, app).await?;
            Ok(())
        }
        What::RebuildTree {
            database_url,
            batch,
        } => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&database_url)
                .await
                .context("connecting to the event store")?;
            let started = std::time::Instant::now();
            let size = shared::merkle_store::catch_up(&pool, batch)
                .await
                .context("extending the tree")?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{size} events in {seconds:.2} s ({:.0} events/s)",
                size as f64 / seconds
            );
            Ok(())
        }
        What::DropStream { name, nats } => {
            let client = async_nats::connect(&nats)
                .await
                .context("connecting to NATS")?;
            async_nats::jetstream::new(client)
                .delete_stream(&name)
                .await
                .with_context(|| format!("deleting stream {name}"))?;
            Ok(())
        }
    }
}

async fn write(
    api: String,
    token: String,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
    as_json: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    let study = datasets::weather(&datasets::data_dir().join("nyc_weather_2013.csv"), "bench")?;
    // A study of its own per run, so runs never collide.
    let mut body = study.register_body();
    body["code"] = json!(format!("BENCH-{}", uuid::Uuid::now_v7().simple()));
    let registered: Value = post(&client, &api, &token, "/v1/studies", &body).await?;
    let study_id = registered["id"].as_str().context("a study id")?.to_owned();
    let mut targets = Vec::new();
    for subject in &study.subjects {
        let body = json!({"label": subject.label, "attributes": subject.attributes});
        let r = post(
            &client,
            &api,
            &token,
            &format!("/v1/studies/{study_id}/subjects"),
            &body,
        )
        .await?;
        let id = r["id"].as_str().context("a subject id")?.to_owned();
        for o in &subject.observations {
            targets.push((
                format!("{api}/v1/subjects/{id}/observations"),
                serde_json::to_vec(&o.record_body())?,
            ));
        }
    }
    let targets = Arc::new(targets);
    let auth = format!("Bearer {token}");
    let report = load::run(connections, Duration::from_secs(seconds), rate, move |n| {
        let (client, targets, auth) = (client.clone(), targets.clone(), auth.clone());
        async move {
            let (url, body) = &targets[n as usize % targets.len()];
            let sent = client
                .post(url)
                .header("authorization", auth)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            matches!(sent, Ok(r) if r.status().as_u16() == 201)
        }
    })
    .await;
    print_report(&report, connections, rate, as_json);
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let r = client
        .post(format!("{api}{path}"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {path}: {status} {body}");
    }
    Ok(body)
}

async fn read(
    target: String,
    requests: Arc<Vec<Vec<u8>>>,
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
) -> load::Report {
    load::run_with(
        connections,
        Duration::from_secs(seconds),
        rate,
        move |_| {
            let target = target.clone();
            async move { benches::raw_http::Conn::open(&target).await.ok().map(Some) }
        },
        move |conn: Option<benches::raw_http::Conn>, n| {
            let requests = requests.clone();
            async move {
                let Some(mut conn) = conn else {
                    return (None, false);
                };
                let request = &requests[n as usize % requests.len()];
                match conn.get(request).await {
                    Ok(200) => (Some(conn), true),
                    Ok(_) => (Some(conn), false),
                    // The connection broke: this task stops counting.
                    Err(_) => (None, false),
                }
            }
        },
    )
    .await
}

fn print_report(report: &load::Report, connections: usize, rate: Option<f64>, as_json: bool) {
    if as_json {
        println!(
            "{}",
            json!({
                "connections": connections, "rate_target": rate, "rate": report.rate(),
                "ok": report.requests, "errors": report.errors,
                "p50_ms": report.percentile_ms(50.0), "p99_ms": report.percentile_ms(99.0),
            })
        );
    } else {
        println!("{connections} connections: {}", report.summary());
    }
}
