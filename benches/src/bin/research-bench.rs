//! `research-bench`: the load generator of the benchmarks. `write` records
//! real NYC weather rows as observations through the command API; `visible`
//! measures how soon a command's document is readable with its token; `read`
//! GETs a list of paths (real documents) from any HTTP server; both at a
//! fixed number of connections, closed loop (maximum rate) or at a fixed
//! rate. `static-server` is the ceiling `read` is compared with: a minimal
//! axum handler answering a fixed body. `mix` drives the running services
//! with the mixed, open-loop workload of `benches/report.sh`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use benches::feed::Feed;
use benches::load;
use benches::mix;
use benches::study::{bench_study, weather_data, BenchStudy};
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
        /// Record into the study this file names (made by `prefill` or an
        /// earlier run; created and written when absent) instead of a new
        /// study of its own.
        #[arg(long)]
        study_file: Option<std::path::PathBuf>,
        /// Observations a request: 1 posts single commands; more posts
        /// batches of that many to `/v1/commands` (rates count requests;
        /// the JSON answer adds `events_per_s`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
        batch: u16,
    },
    /// Read-your-writes latency: record observations at RATE in the
    /// background and, PROBES times a second, one more whose document is
    /// then read from the query API with its `Consistency-Token`.
    Visible {
        #[arg(long, env = "COMMAND_API_URL", default_value = "http://127.0.0.1:8081")]
        api: String,
        #[arg(long, env = "QUERY_API_URL", default_value = "http://127.0.0.1:8082")]
        query: String,
        /// Bearer token with the writer and reader roles.
        #[arg(long, env = "RESEARCH_TOKEN", hide_env_values = true)]
        token: String,
        /// Connections of the background load.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Background commands per second (open loop).
        #[arg(long)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Probes per second.
        #[arg(long, default_value_t = 20.0)]
        probes: f64,
        #[arg(long)]
        json: bool,
        /// Record into the study this file names (see `write`).
        #[arg(long)]
        study_file: Option<std::path::PathBuf>,
    },
    /// Grow a benchmark study by EVENTS more observations (rounded up to
    /// whole batches of 1000, 4 requests at a time, through the batch
    /// endpoint), before `write --study-file` measures at that size.
    Prefill {
        #[arg(long, env = "COMMAND_API_URL", default_value = "http://127.0.0.1:8081")]
        api: String,
        #[arg(long, env = "RESEARCH_TOKEN", hide_env_values = true)]
        token: String,
        /// The study's file (created when absent).
        #[arg(long)]
        study_file: std::path::PathBuf,
        /// Observations to record.
        #[arg(long)]
        events: u64,
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
    /// The mixed workload at a fixed arrival rate (open loop) against the
    /// running services: records, corrections, retractions, reviews and
    /// approvals, document and page reads, exports, audit reads, and reads
    /// carrying a write's `Consistency-Token`, from the real weather data;
    /// per operation latency percentiles (HDR histograms), statuses and a
    /// time series; at the end every accepted write is checked against the
    /// log. Writes the JSON report to OUT (standard output when absent).
    Mix {
        #[arg(long, env = "COMMAND_API_URL", default_value = "http://127.0.0.1:8081")]
        api: String,
        #[arg(long, env = "QUERY_API_URL", default_value = "http://127.0.0.1:8082")]
        query: String,
        /// The services' token secret: the run mints a writer, a reviewer,
        /// a reader and an auditor.
        #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
        secret: String,
        /// Operations per second in total.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Seconds per point of the time series.
        #[arg(long, default_value_t = 5.0)]
        interval: f64,
        /// Proportions, `name=weight,…` (record, correct, retract, sign,
        /// token_read, read_observation, read_subject, read_study, page,
        /// export, audit).
        #[arg(long, default_value = mix::DEFAULT_MIX)]
        mix: String,
        /// Seed of the draws (the same seed draws the same sequence).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Operations in flight at most.
        #[arg(long, default_value_t = 256)]
        max_in_flight: usize,
        /// Observations recorded before the clock starts.
        #[arg(long, default_value_t = 200)]
        warm_up: usize,
        #[arg(long)]
        out: Option<std::path::PathBuf>,
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
            study_file,
            batch,
        } => {
            let load = Load {
                connections,
                seconds,
                rate,
            };
            write(api, token, study_file, load, usize::from(batch), as_json).await
        }
        What::Prefill {
            api,
            token,
            study_file,
            events,
        } => prefill(api, token, study_file, events).await,
        What::Visible {
            api,
            query,
            token,
            connections,
            rate,
            seconds,
            probes,
            json: as_json,
            study_file,
        } => {
            let load = Load {
                connections,
                seconds,
                rate: Some(rate),
            };
            visible(api, query, token, study_file, load, probes, as_json).await
        }
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
        What::Mix {
            api,
            query,
            secret,
            rate,
            seconds,
            interval,
            mix: proportions,
            seed,
            max_in_flight,
            warm_up,
            out,
        } => {
            if !(rate > 0.0 && rate.is_finite() && interval > 0.0 && interval.is_finite()) {
                bail!("--rate and --interval must be positive");
            }
            let settings = mix::Settings {
                api,
                query,
                secret,
                rate,
                duration: Duration::from_secs(seconds),
                interval: Duration::from_secs_f64(interval),
                mix: mix::Mix::parse(&proportions)?,
                seed,
                max_in_flight,
                warm_up_records: warm_up,
            };
            let report = mix::run(settings).await?;
            let text = serde_json::to_string_pretty(&report)?;
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("{text}"),
            }
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

/// How `write` loads the command API.
#[derive(Clone, Copy)]
struct Load {
    connections: usize,
    seconds: u64,
    rate: Option<f64>,
}

/// Makes the next request to send: a URL and a body.
type Requests = Arc<dyn Fn() -> (String, Vec<u8>) + Send + Sync>;

/// The benchmark study of `study_file` (or a new one) and the feed going on
/// where its last run stopped.
async fn study_feed(
    client: &reqwest::Client,
    api: &str,
    token: &str,
    study_file: Option<&std::path::Path>,
) -> anyhow::Result<(BenchStudy, Arc<Feed>)> {
    let data = weather_data()?;
    let study = bench_study(client, api, token, &data, study_file).await?;
    let feed = Feed::new(&data, study.recorded)?;
    Ok((study, Arc::new(feed)))
}

/// Records in the study file how far the feed went, so that the next run
/// goes on from there.
fn save_position(
    mut study: BenchStudy,
    feed: &Feed,
    study_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    study.recorded = feed.position();
    study_file.map_or(Ok(()), |file| study.save(file))
}

/// Requests recording the feed's next observations: single commands to
/// their subjects (`batch` 1) or batches of `batch` to `/v1/commands`.
fn observation_requests(api: &str, study: &BenchStudy, feed: Arc<Feed>, batch: usize) -> Requests {
    let subjects: Vec<String> = study.subjects.clone();
    if batch == 1 {
        let urls: Vec<String> = subjects
            .iter()
            .map(|id| format!("{api}/v1/subjects/{id}/observations"))
            .collect();
        return Arc::new(move || {
            let (subject, body) = feed.next();
            (urls[subject].clone(), body.to_string().into_bytes())
        });
    }
    let url = format!("{api}/v1/commands");
    Arc::new(move || {
        let commands: Vec<Value> = (0..batch)
            .map(|_| {
                let (subject, mut item) = feed.next();
                item["type"] = json!("RecordObservation");
                item["target"] = json!(subjects[subject]);
                item
            })
            .collect();
        (
            url.clone(),
            json!({ "commands": commands }).to_string().into_bytes(),
        )
    })
}

/// Whether a batch's answer says every item was recorded (`201`).
fn every_item_recorded(answer: &Value) -> bool {
    answer["results"]
        .as_array()
        .is_some_and(|results| results.iter().all(|r| r["status"] == 201))
}

/// POSTs the requests under `load`. A success is a `201` (a single
/// command), or a batch's `200` whose every item was recorded (`201`).
async fn record_observations(
    client: reqwest::Client,
    requests: Requests,
    token: &str,
    load: &Load,
) -> load::Report {
    let auth = format!("Bearer {token}");
    let duration = Duration::from_secs(load.seconds);
    load::run(load.connections, duration, load.rate, move |_| {
        let (client, auth) = (client.clone(), auth.clone());
        let (url, body) = requests();
        async move {
            let Ok(response) = client
                .post(url)
                .header("authorization", auth)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            else {
                return false;
            };
            match response.status().as_u16() {
                201 => true,
                200 => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|answer| every_item_recorded(&answer)),
                _ => false,
            }
        }
    })
    .await
}

async fn write(
    api: String,
    token: String,
    study_file: Option<std::path::PathBuf>,
    load: Load,
    batch: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(load.connections)
        .build()?;
    let (study, feed) = study_feed(&client, &api, &token, study_file.as_deref()).await?;
    let requests = observation_requests(&api, &study, feed.clone(), batch);
    let report = record_observations(client, requests, &token, &load).await;
    save_position(study, &feed, study_file.as_deref())?;
    if as_json {
        println!(
            "{}",
            json!({
                "connections": load.connections, "rate_target": load.rate, "rate": report.rate(),
                "batch": batch, "events_per_s": report.rate() * batch as f64,
                "ok": report.requests, "errors": report.errors,
                "p50_ms": report.percentile_ms(50.0), "p99_ms": report.percentile_ms(99.0),
            })
        );
    } else {
        print_report(&report, load.connections, load.rate, false);
    }
    Ok(())
}

/// What the read-your-writes probes saw.
#[derive(Default)]
struct Probes {
    /// Microseconds from a command's answer to its document's, sorted.
    visible_us: Vec<u64>,
    /// Reads answered 503 (the token not reached within the query API's
    /// bound).
    unavailable: u64,
    /// Commands or reads that failed otherwise.
    failed: u64,
}

/// Records observations under `load` in the background and, `per_second`
/// times a second, one more whose document is then read from the query API
/// with the command's `Consistency-Token`: the time from the command's
/// answer to the document's is the read-your-writes latency.
async fn visible(
    api: String,
    query: String,
    token: String,
    study_file: Option<std::path::PathBuf>,
    load: Load,
    per_second: f64,
    as_json: bool,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(load.connections + 16)
        .build()?;
    let (study, feed) = study_feed(&client, &api, &token, study_file.as_deref()).await?;
    let requests = observation_requests(&api, &study, feed.clone(), 1);
    let background = {
        let (client, requests, token) = (client.clone(), requests.clone(), token.clone());
        tokio::spawn(async move { record_observations(client, requests, &token, &load).await })
    };
    let probes = Arc::new(std::sync::Mutex::new(Probes::default()));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    let end = std::time::Instant::now() + Duration::from_secs(load.seconds);
    let mut running = tokio::task::JoinSet::new();
    while std::time::Instant::now() < end {
        tick.tick().await;
        let (client, token, query, probes) =
            (client.clone(), token.clone(), query.clone(), probes.clone());
        let (url, body) = requests();
        running.spawn(async move {
            let outcome = probe(&client, &url, body, &query, &token).await;
            let mut probes = probes.lock().unwrap_or_else(|e| e.into_inner());
            match outcome {
                Some(Ok(micros)) => probes.visible_us.push(micros),
                Some(Err(503)) => probes.unavailable += 1,
                _ => probes.failed += 1,
            }
        });
    }
    while running.join_next().await.is_some() {}
    let background = background.await?;
    save_position(study, &feed, study_file.as_deref())?;
    let mut probes = std::mem::take(&mut *probes.lock().unwrap_or_else(|e| e.into_inner()));
    probes.visible_us.sort_unstable();
    let (p50, p99, max) = (
        load::percentile_ms(&probes.visible_us, 50.0),
        load::percentile_ms(&probes.visible_us, 99.0),
        load::percentile_ms(&probes.visible_us, 100.0),
    );
    if as_json {
        println!(
            "{}",
            json!({
                "background_rate": background.rate(), "background_errors": background.errors,
                "probes": probes.visible_us.len(), "unavailable": probes.unavailable,
                "failed": probes.failed, "p50_ms": p50, "p99_ms": p99, "max_ms": max,
            })
        );
    } else {
        println!(
            "background: {}\nread-your-writes: {} probes, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms, {} answered 503, {} failed",
            background.summary(),
            probes.visible_us.len(),
            probes.unavailable,
            probes.failed
        );
    }
    Ok(())
}

/// One probe: the command, then its document read with its token. Answers
/// the microseconds between the two answers, or the status that failed
/// (`None` when no answer came).
async fn probe(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    query: &str,
    token: &str,
) -> Option<Result<u64, u16>> {
    let answer = client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .ok()?;
    if answer.status().as_u16() != 201 {
        return Some(Err(answer.status().as_u16()));
    }
    let answered = std::time::Instant::now();
    let position = answer
        .headers()
        .get("consistency-token")?
        .to_str()
        .ok()?
        .to_owned();
    let recorded: Value = answer.json().await.ok()?;
    let id = recorded["id"].as_str()?;
    let read = client
        .get(format!("{query}/v1/observations/{id}"))
        .bearer_auth(token)
        .header("consistency-token", position)
        .send()
        .await
        .ok()?;
    let status = read.status().as_u16();
    let _ = read.bytes().await;
    if status != 200 {
        return Some(Err(status));
    }
    Some(Ok(answered.elapsed().as_micros() as u64))
}

/// Records `events` more observations from the feed into the study of
/// `study_file`, 1000 a batch and 4 batches at a time.
async fn prefill(
    api: String,
    token: String,
    study_file: std::path::PathBuf,
    events: u64,
) -> anyhow::Result<()> {
    const BATCH: u64 = 1000;
    let client = reqwest::Client::new();
    let (study, feed) = study_feed(&client, &api, &token, Some(&study_file)).await?;
    let requests = observation_requests(&api, &study, feed.clone(), BATCH as usize);
    let auth = format!("Bearer {token}");
    let started = std::time::Instant::now();
    let batches = events.div_ceil(BATCH);
    let mut done = 0u64;
    let mut next = 0u64;
    let mut running = tokio::task::JoinSet::new();
    while done < batches {
        while next < batches && running.len() < 4 {
            let (url, body) = requests();
            let request = client.post(url).header("authorization", &auth);
            running.spawn(async move {
                let answer = request
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let status = answer.status();
                let text = answer.text().await.unwrap_or_default();
                let recorded = serde_json::from_str(&text).is_ok_and(|a| every_item_recorded(&a));
                if !status.is_success() || !recorded {
                    bail!("POST /v1/commands: {status} {text:.2000}");
                }
                anyhow::Ok(())
            });
            next += 1;
        }
        if let Some(outcome) = running.join_next().await {
            outcome??;
            done += 1;
            if done % (batches / 10).max(1) == 0 || done == batches {
                eprintln!(
                    "[prefill] {}/{} observations, {:.0}/s",
                    done * BATCH,
                    batches * BATCH,
                    (done * BATCH) as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    save_position(study, &feed, Some(&study_file))
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
