//! `research-report`: turns one run of `benches/report.sh` into
//! `report.json` and a self-contained `report.html`: the mixed workload's
//! figures, the services' figures read from Prometheus's HTTP API over the
//! run's window, the database's, the integrity checks and the raw
//! baselines of the same run; the table against the objectives; with
//! `--soak`, the flatness of memory, descriptors and latency; with
//! `--baseline`, the regressions against an earlier report. Exits 1 when a
//! figure regressed or a soak was not flat.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use benches::report;
use clap::Parser;
use serde_json::{json, Map, Value};

#[derive(Parser)]
#[command(name = "research-report", version, about)]
struct Args {
    /// The run's directory: reads mix.json, baselines.json, database.json,
    /// integrity.json, connections.tsv and env.json from it (those present),
    /// writes report.json and report.html into it.
    #[arg(long)]
    dir: PathBuf,
    /// Prometheus's address; its series over the run's window are read.
    #[arg(long, env = "PROMETHEUS_URL", default_value = "http://127.0.0.1:9090")]
    prometheus: String,
    /// Seconds between the points read from Prometheus.
    #[arg(long, default_value_t = 5.0)]
    step: f64,
    /// Judge the run as a soak: memory, descriptors and latency must stay
    /// flat (exit 1 otherwise).
    #[arg(long)]
    soak: bool,
    /// An earlier report.json to compare with (exit 1 on a regression).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// How much worse a figure may be than the baseline's before it counts
    /// as a regression (a fraction: 0.3 is 30 %).
    #[arg(long, default_value_t = 0.3)]
    tolerance: f64,
}

fn read_json(path: &std::path::Path) -> anyhow::Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

/// Prometheus's HTTP API over one window.
struct Prometheus {
    http: reqwest::Client,
    url: String,
    start: f64,
    end: f64,
    step: f64,
}

impl Prometheus {
    /// The `data.result` series of one call of the API at `path`.
    async fn series(&self, path: &str, params: &[(&str, String)]) -> anyhow::Result<Vec<Value>> {
        let mut answer: Value = self
            .http
            .get(format!("{}/api/v1/{path}", self.url))
            .query(params)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(match answer["data"]["result"].take() {
            Value::Array(series) => series,
            _ => Vec::new(),
        })
    }

    /// `label` value → `[[seconds from the start, value], …]`.
    async fn range(&self, query: &str, label: &str) -> anyhow::Result<Map<String, Value>> {
        let params = [
            ("query", query.to_owned()),
            ("start", self.start.to_string()),
            ("end", self.end.to_string()),
            ("step", self.step.to_string()),
        ];
        let mut out = Map::new();
        for series in self.series("query_range", &params).await? {
            let name = series["metric"][label].as_str().unwrap_or("all").to_owned();
            let points: Vec<Value> = series["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let t = p[0].as_f64()?;
                    let v: f64 = p[1].as_str()?.parse().ok()?;
                    v.is_finite().then(|| json!([t - self.start, v]))
                })
                .collect();
            out.insert(name, Value::Array(points));
        }
        Ok(out)
    }

    /// `label` value → the value at the end of the window.
    async fn at_end(&self, query: &str, label: &str) -> anyhow::Result<Map<String, Value>> {
        let params = [("query", query.to_owned()), ("time", self.end.to_string())];
        let mut out = Map::new();
        for series in self.series("query", &params).await? {
            let name = series["metric"][label].as_str().unwrap_or("all").to_owned();
            if let Some(v) = series["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
            {
                out.insert(name, json!(v));
            }
        }
        Ok(out)
    }
}

/// The services' figures over the run, from Prometheus.
async fn service_figures(p: &Prometheus) -> anyhow::Result<Value> {
    let jobs = r#"job=~"command-api|projector|query-api""#;
    let window = format!("{:.0}s", (p.end - p.start).max(p.step));
    let hits = r#"sum(increase(query_cache_lookups_total{tier=~"memory|redis",result="hit"}[W]))"#;
    let replica = r#"sum(increase(query_cache_lookups_total{tier="replica"}[W]))"#;
    let ratio = |w: &str| {
        format!(
            "{} / ({} + {})",
            hits.replace('W', w),
            hits.replace('W', w),
            replica.replace('W', w)
        )
    };
    let step = format!("{:.0}s", (p.step * 2.0).max(10.0));
    let overall = p.at_end(&ratio(&window), "none").await?;
    let statements = p
        .at_end(
            &format!("sum(increase(query_replica_statements_total[{window}]))"),
            "none",
        )
        .await?;
    let lag_max = p
        .at_end(
            &format!("max(max_over_time(projector_lag_seconds[{window}]))"),
            "none",
        )
        .await?;
    let by_tier = p
        .at_end(
            &format!(
                "sum by (tier) (increase(query_cache_lookups_total{{result=\"hit\"}}[{window}])) \
                 / sum by (tier) (increase(query_cache_lookups_total[{window}]))"
            ),
            "tier",
        )
        .await?;
    Ok(json!({
        "hit_ratio_by_tier": by_tier,
        "memory_bytes": p.range(&format!("process_resident_memory_bytes{{{jobs}}}"), "job").await?,
        "open_fds": p.range(&format!("process_open_fds{{{jobs}}}"), "job").await?,
        "max_memory_bytes": p.at_end(&format!("max_over_time(process_resident_memory_bytes{{{jobs}}}[{window}])"), "job").await?,
        "projection_lag_seconds": p.range("max(projector_lag_seconds)", "none").await?.remove("all").unwrap_or(Value::Null),
        "max_projection_lag_seconds": lag_max.get("all").cloned().unwrap_or(Value::Null),
        "hit_ratio": p.range(&ratio(&step), "none").await?.remove("all").unwrap_or(Value::Null),
        "hit_ratio_overall": overall.get("all").cloned().unwrap_or(Value::Null),
        "replica_statements": statements.get("all").cloned().unwrap_or(Value::Null),
    }))
}

/// `seconds<TAB>role<TAB>sessions` lines → role → points.
fn connections(path: &std::path::Path, start: f64) -> Value {
    let mut by_role: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let mut f = line.split('\t');
        let (Some(t), Some(role), Some(n)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let (Ok(t), Ok(n)) = (t.parse::<f64>(), n.parse::<f64>()) {
            by_role
                .entry(role.to_owned())
                .or_default()
                .push(json!([t - start, n]));
        }
    }
    json!(by_role)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = &args.dir;
    let mix = read_json(&dir.join("mix.json"))?
        .with_context(|| format!("{} holds no mix.json", dir.display()))?;
    let start = mix["started_unix_s"].as_f64().context("the run's start")?;
    let end = start + mix["duration_s"].as_f64().context("the run's duration")?;
    let prometheus = Prometheus {
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?,
        url: args.prometheus.trim_end_matches('/').to_owned(),
        start,
        end,
        step: args.step,
    };
    let service = match service_figures(&prometheus).await {
        Ok(mut figures) => {
            figures["connections"] = connections(&dir.join("connections.tsv"), start);
            figures
        }
        Err(e) => {
            eprintln!(
                "[report] Prometheus at {} could not be read ({e:#}); its figures are left out",
                args.prometheus
            );
            json!({"connections": connections(&dir.join("connections.tsv"), start)})
        }
    };
    let env = read_json(&dir.join("env.json"))?.unwrap_or(Value::Null);
    let mut integrity = read_json(&dir.join("integrity.json"))?.unwrap_or_else(|| json!({}));
    integrity["mix"] = mix["integrity"].clone();
    let mut report = json!({
        "generated_at": env["generated_at"],
        "machine": env["machine"],
        "versions": env["versions"],
        "workload": env["workload"],
        "baselines": read_json(&dir.join("baselines.json"))?.unwrap_or(Value::Null),
        "database": read_json(&dir.join("database.json"))?.unwrap_or(Value::Null),
        "service": service,
        "integrity": integrity,
        "mix": mix,
    });
    let mut rows = report::verdicts(&report);
    let mut failed = Vec::new();
    if args.soak {
        let soak = report::soak_verdicts(&report);
        if soak.iter().any(|r| r.pass == Some(false)) {
            failed.push("the soak was not flat".to_owned());
        }
        rows.extend(soak);
    }
    let normalized = report::normalized(&report);
    report["normalized"] = json!(normalized);
    if let Some(path) = &args.baseline {
        let before = read_json(path)?.with_context(|| format!("{} is missing", path.display()))?;
        let before: BTreeMap<String, f64> =
            serde_json::from_value(before["normalized"].clone()).unwrap_or_default();
        let regressions = report::regressions(&normalized, &before, args.tolerance);
        rows.push(report::Verdict {
            group: "regression".into(),
            name: format!("no figure worse than {} beyond the noise", path.display()),
            target: format!("within {:.0} %", args.tolerance * 100.0),
            measured: format!("{} regressed", regressions.len()),
            pass: Some(regressions.is_empty()),
        });
        if !regressions.is_empty() {
            failed.push(format!("{} figures regressed", regressions.len()));
        }
        report["baseline_comparison"] =
            json!({"file": path.display().to_string(), "regressions": regressions});
    }
    report["verdicts"] = json!(rows);
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(dir.join("report.html"), report::html(&report, &rows))?;

    println!(
        "{:<10} {:<58} {:<12} {:<8} measured",
        "", "figure", "target", "verdict"
    );
    for r in &rows {
        let word = match r.pass {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "n/a",
        };
        println!(
            "{:<10} {:<58} {:<12} {:<8} {}",
            r.group, r.name, r.target, word, r.measured
        );
    }
    println!(
        "\nreport: {} and {}",
        dir.join("report.json").display(),
        dir.join("report.html").display()
    );
    if !failed.is_empty() {
        eprintln!("[report] {}", failed.join("; "));
        std::process::exit(1);
    }
    Ok(())
}
