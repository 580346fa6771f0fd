//! `research-load`: loads the real data sets through the command API (the
//! batch endpoint), as an importer would. A study whose code is already
//! taken is skipped, so running it twice loads nothing twice.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use benches::datasets::{self, StudyData};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use uuid::Uuid;

/// Load real research records through the command API.
#[derive(Parser)]
#[command(name = "research-load", version, about)]
struct Args {
    /// Base URL of the command API.
    #[arg(long, env = "COMMAND_API_URL", default_value = "http://127.0.0.1:8081")]
    api: String,
    /// Bearer token with the writer role (see `mint-token`).
    #[arg(long, env = "RESEARCH_TOKEN", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// The Palmer penguins, one study per field season.
    Penguins {
        #[arg(long, default_value_os_t = datasets::data_dir().join("penguins_raw.csv"))]
        file: PathBuf,
    },
    /// NYC airport weather 2013, as one study per replicate code.
    Weather {
        #[arg(long, default_value_os_t = datasets::data_dir().join("nyc_weather_2013.csv"))]
        file: PathBuf,
        /// How many replicate studies (NYC-ASOS-2013-r01 …) to load.
        #[arg(long, default_value_t = 1)]
        replicates: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = reqwest::Client::new();
    let studies = match &args.what {
        What::Penguins { file } => datasets::penguins(file)?,
        What::Weather { file, replicates } => {
            let base = datasets::weather(file, "NYC-ASOS-2013")?;
            (1..=*replicates)
                .map(|r| {
                    let mut s = base.clone();
                    s.code = format!("NYC-ASOS-2013-r{r:02}");
                    s
                })
                .collect()
        }
    };
    for study in &studies {
        load(&client, &args, study).await?;
    }
    Ok(())
}

async fn post(
    client: &reqwest::Client,
    args: &Args,
    path: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let response = client
        .post(format!("{}{path}", args.api))
        .bearer_auth(&args.token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {path}: is the command API running at {}?", args.api))?;
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

async fn load(client: &reqwest::Client, args: &Args, study: &StudyData) -> anyhow::Result<()> {
    let started = Instant::now();
    let (status, answer) = post(client, args, "/v1/studies", &study.register_body()).await?;
    match status {
        201 => {}
        409 => {
            println!("{}: already registered, skipped", study.code);
            return Ok(());
        }
        _ => bail!("registering {}: {status} {answer}", study.code),
    }
    let study_id = answer["id"].as_str().context("an id")?.to_owned();

    let subject_ids: Vec<Uuid> = study.subjects.iter().map(|_| Uuid::now_v7()).collect();
    let commands = study.batch_commands(&study_id, &subject_ids, usize::MAX);
    let total = commands.len();
    let mut done = 0;
    let mut failed = 0;
    for chunk in commands.chunks(1000) {
        let (status, answer) =
            post(client, args, "/v1/commands", &json!({ "commands": chunk })).await?;
        if status != 200 {
            bail!("batch for {}: {status} {answer}", study.code);
        }
        for result in answer["results"].as_array().context("results")? {
            let s = result["status"].as_u64().unwrap_or(0);
            if s >= 300 {
                failed += 1;
                if failed <= 5 {
                    eprintln!("{}: refused: {}", study.code, result["problem"]);
                }
            }
        }
        done += chunk.len();
        let rate = done as f64 / started.elapsed().as_secs_f64();
        eprint!("\r{}: {done}/{total} commands ({rate:.0}/s)   ", study.code);
    }
    eprintln!();
    println!(
        "{}: {} subjects, {} observations in {:.1} s ({failed} refused), study id {study_id}",
        study.code,
        study.subjects.len(),
        study.observation_count(),
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} commands were refused");
    }
    Ok(())
}
