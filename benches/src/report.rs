//! The benchmark report of `benches/report.sh`: from the figures of one run
//! (the mixed workload's, the services' from Prometheus, the database's,
//! the raw baselines measured in the same run), the table against the
//! service-level objectives and the project's goals, the soak's flatness
//! checks, the comparison with an earlier report on ratios to the raw
//! baselines, and the self-contained HTML page with its charts.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::svg::{escape, line_chart, Line, XAxis};

/// One row of the table: a target, what was measured, and the verdict
/// (`None`: not measured in this run).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub group: String,
    pub name: String,
    pub target: String,
    pub measured: String,
    pub pass: Option<bool>,
}

fn verdict(group: &str, name: &str, target: &str, measured: String, pass: Option<bool>) -> Verdict {
    Verdict {
        group: group.to_owned(),
        name: name.to_owned(),
        target: target.to_owned(),
        measured,
        pass,
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64().filter(|x| x.is_finite())
}

/// The mixed workload's summary of every operation together.
fn all_ops(report: &Value) -> &Value {
    &report["mix"]["all"]
}

/// The operations that only read (compared with the static handler; the
/// others, `token_read` included, begin with a write and are compared with
/// pgbench's insert).
const READS: [&str; 6] = [
    "read_observation",
    "read_subject",
    "read_study",
    "page",
    "export",
    "audit",
];

fn op<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["mix"]["ops"]
        .as_array()?
        .iter()
        .find(|o| o["op"] == name)
}

/// Answers with a 5xx status, over every operation.
fn server_errors(report: &Value) -> u64 {
    report["mix"]["ops"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|o| o["statuses"].as_object().into_iter().flatten())
        .filter(|(status, _)| status.starts_with('5'))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

/// Document reads the mix made (every read operation but exports and
/// audit reads, which stream many rows by design).
fn document_reads(report: &Value) -> f64 {
    [
        "read_observation",
        "read_subject",
        "read_study",
        "page",
        "token_read",
    ]
    .iter()
    .filter_map(|n| op(report, n))
    .filter_map(|o| num(&o["count"]))
    .sum()
}

/// The table against the objectives the project started from and its
/// stricter goals.
pub fn verdicts(report: &Value) -> Vec<Verdict> {
    let mut rows = Vec::new();
    let all = all_ops(report);
    let ms = |v: Option<f64>| v.map_or("not measured".to_owned(), |v| format!("{v:.1} ms"));
    let p50 = num(&all["p50_ms"]);
    let p99 = num(&all["p99_ms"]);
    rows.push(verdict(
        "objective",
        "API latency p50, every operation",
        "< 100 ms",
        ms(p50),
        p50.map(|v| v < 100.0),
    ));
    rows.push(verdict(
        "objective",
        "API latency p99, every operation",
        "< 500 ms",
        ms(p99),
        p99.map(|v| v < 500.0),
    ));
    for (server, label) in [("primary", "primary"), ("standby", "standby (reads)")] {
        let mean = num(&report["database"][server]["mean_ms"]);
        rows.push(verdict(
            "objective",
            &format!("mean database time per statement, {label}"),
            "< 5 ms",
            mean.map_or("not measured".to_owned(), |v| format!("{v:.3} ms")),
            mean.map(|v| v < 5.0),
        ));
    }
    let hit = num(&report["service"]["hit_ratio_overall"]);
    let tiers: Vec<String> = report["service"]["hit_ratio_by_tier"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(tier, v)| Some(format!("{tier} {:.1} %", num(v)? * 100.0)))
        .collect();
    rows.push(verdict(
        "objective",
        "cache hit ratio (memory or Redis)",
        "> 90 %",
        hit.map_or("not measured".to_owned(), |v| {
            format!("{:.1} % (per tier: {})", v * 100.0, tiers.join(", "))
        }),
        hit.map(|v| v > 0.9),
    ));
    let memory = report["service"]["max_memory_bytes"].as_object();
    let worst = memory.and_then(|m| {
        m.iter()
            .filter_map(|(job, v)| Some((job.clone(), num(v)?)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    });
    let memory_text = memory.map_or("not measured".to_owned(), |m| {
        m.iter()
            .filter_map(|(job, v)| Some(format!("{job} {:.0} MB", num(v)? / 1e6)))
            .collect::<Vec<_>>()
            .join(", ")
    });
    rows.push(verdict(
        "objective",
        "resident memory per service, peak",
        "< 1 GB",
        memory_text.clone(),
        worst.as_ref().map(|w| w.1 < 1e9),
    ));
    let statements = num(&report["service"]["replica_statements"]);
    let reads = document_reads(report);
    let per_read = statements.map(|s| s / reads.max(1.0));
    rows.push(verdict(
        "objective",
        "no N+1: replica statements per document read",
        "≤ 1",
        per_read.map_or("not measured".to_owned(), |v| format!("{v:.3}")),
        per_read.map(|v| v <= 1.0),
    ));
    let integrity = &report["integrity"];
    let accepted = integrity["mix"]["accepted"].as_u64();
    let found = integrity["mix"]["found_once"].as_u64();
    let problems = integrity["mix"]["problems"].as_array().map_or(0, Vec::len);
    let replay = integrity["verify_replay"]["ok"].as_bool();
    let chain = integrity["chain"]["verified"].as_bool();
    let whole = match (accepted, found, replay, chain) {
        (Some(a), Some(f), Some(r), Some(c)) => Some(a == f && problems == 0 && r && c),
        _ => None,
    };
    rows.push(verdict(
        "objective",
        "data integrity",
        "every accepted write once in the log; read models = replay; chain verified",
        format!(
            "{}/{} accepted writes found once, {problems} problems; replay {}; chain {}",
            found.unwrap_or(0),
            accepted.unwrap_or(0),
            replay.map_or("not checked", |ok| if ok { "equal" } else { "DIFFERS" }),
            chain.map_or("not checked", |ok| if ok { "verified" } else { "BROKEN" }),
        ),
        whole,
    ));
    let errors = server_errors(report);
    rows.push(verdict(
        "objective",
        "server errors",
        "no 5xx",
        format!("{errors} answers 5xx"),
        Some(errors == 0),
    ));

    // The project's stricter goals (README, Benchmarks).
    let visible = &report["mix"]["visible"];
    let (v50, v99) = (num(&visible["p50_ms"]), num(&visible["p99_ms"]));
    rows.push(verdict(
        "goal",
        "command answered → readable with its token, p50",
        "≤ 5 ms",
        ms(v50),
        v50.map(|v| v <= 5.0),
    ));
    rows.push(verdict(
        "goal",
        "command answered → readable with its token, p99",
        "≤ 25 ms",
        ms(v99),
        v99.map(|v| v <= 25.0),
    ));
    let catch_up = num(&integrity["catch_up_seconds"]);
    rows.push(verdict(
        "goal",
        "read side reflects the last event after the run",
        "within 1 s",
        catch_up.map_or("not measured".to_owned(), |v| format!("{v:.2} s")),
        catch_up.map(|v| v <= 1.0),
    ));
    rows.push(verdict(
        "goal",
        "resident memory per service, peak",
        "≤ 100 MB",
        memory_text,
        worst.map(|w| w.1 <= 100e6),
    ));
    let lag = num(&report["service"]["max_projection_lag_seconds"]);
    rows.push(verdict(
        "goal",
        "projection lag during the run, max",
        "≤ 1 s",
        lag.map_or("not measured".to_owned(), |v| format!("{v:.2} s")),
        lag.map(|v| v <= 1.0),
    ));
    rows
}

/// A least-squares line through `points`: `(slope, intercept, residual
/// standard deviation)`; `None` for fewer than three points.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let points: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let n = points.len() as f64;
    if points.len() < 3 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let residual = (points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum::<f64>()
        / (n - 2.0))
        .sqrt();
    Some((slope, intercept, residual))
}

/// Whether a series stayed flat: the change the fitted line makes over the
/// second half of the run is within the noise (three residual standard
/// deviations) or within `relative` of the mean. The first half is left
/// out: the caches fill up to their bounds in it (tens of minutes at the
/// default rate), while a leak grows through the whole run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Flatness {
    pub slope_per_hour: f64,
    pub mean: f64,
    pub change_over_run: f64,
    pub allowed: f64,
    pub flat: bool,
}

/// `points` are `(seconds from the start, value)`.
pub fn flatness(points: &[(f64, f64)], relative: f64) -> Option<Flatness> {
    let end = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let start = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let warm = start + (end - start) / 2.0;
    let steady: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= warm).collect();
    let (slope, _, residual) = fit(&steady)?;
    let mean = steady.iter().map(|p| p.1).sum::<f64>() / steady.len() as f64;
    let change = slope * (end - warm);
    let allowed = (3.0 * residual).max(relative * mean.abs());
    Some(Flatness {
        slope_per_hour: slope * 3600.0,
        mean,
        change_over_run: change,
        allowed,
        flat: change.abs() <= allowed,
    })
}

/// The soak's rows: memory and descriptors of every service, and each
/// operation's p99, flat over the run.
pub fn soak_verdicts(report: &Value) -> Vec<Verdict> {
    let mut rows = Vec::new();
    let series = |v: &Value| -> Vec<(f64, f64)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| Some((num(&p[0])?, num(&p[1])?)))
            .collect()
    };
    for (key, what, relative, unit, scale) in [
        ("memory_bytes", "resident memory", 0.05, "MB", 1e6),
        ("open_fds", "open descriptors", 0.10, "", 1.0),
        ("connections", "database sessions", 0.10, "", 1.0),
    ] {
        if let Some(jobs) = report["service"][key].as_object() {
            for (job, points) in jobs {
                let f = flatness(&series(points), relative);
                rows.push(verdict(
                    "soak",
                    &format!("{what} of {job} flat"),
                    "change within noise",
                    f.as_ref().map_or("too few samples".to_owned(), |f| {
                        format!(
                            "{:+.2} {unit}/h (mean {:.1} {unit}, change {:+.2}, allowed ±{:.2})",
                            f.slope_per_hour / scale,
                            f.mean / scale,
                            f.change_over_run / scale,
                            f.allowed / scale
                        )
                    }),
                    f.map(|f| f.flat),
                ));
            }
        }
    }
    let intervals = report["mix"]["intervals"].as_array();
    for name in ["record", "read_observation", "token_read"] {
        let points: Vec<(f64, f64)> = intervals
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let o = i["ops"].as_array()?.iter().find(|o| o["op"] == name)?;
                Some((num(&i["start_s"])?, num(&o["p99_ms"])?))
            })
            .collect();
        let f = flatness(&points, 0.5);
        rows.push(verdict(
            "soak",
            &format!("p99 of {name} does not grow"),
            "change within noise",
            f.as_ref().map_or("too few samples".to_owned(), |f| {
                format!(
                    "{:+.2} ms/h (mean {:.1} ms, change {:+.2}, allowed ±{:.2})",
                    f.slope_per_hour, f.mean, f.change_over_run, f.allowed
                )
            }),
            f.map(|f| f.flat),
        ));
    }
    rows
}

/// The figures compared between runs, each a ratio to a raw baseline of its
/// own run where the figure is a time (lower is better for all).
pub fn normalized(report: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let write_raw = num(&report["baselines"]["pgbench_latency_ms"]);
    let read_raw = num(&report["baselines"]["static_p50_ms"]);
    for o in report["mix"]["ops"].as_array().into_iter().flatten() {
        let Some(name) = o["op"].as_str() else {
            continue;
        };
        let raw = if READS.contains(&name) {
            read_raw
        } else {
            write_raw
        };
        for q in ["p50_ms", "p99_ms"] {
            if let (Some(v), Some(raw)) = (num(&o[q]), raw) {
                if raw > 0.0 && o["count"].as_u64().unwrap_or(0) >= 100 {
                    out.insert(format!("{name} {q} / raw"), v / raw);
                }
            }
        }
    }
    let visible = &report["mix"]["visible"];
    for q in ["p50_ms", "p99_ms"] {
        if let (Some(v), Some(raw)) = (num(&visible[q]), read_raw) {
            if raw > 0.0 {
                out.insert(format!("read-your-writes {q} / raw"), v / raw);
            }
        }
    }
    if let (Some(v), Some(raw)) = (num(&report["database"]["primary"]["mean_ms"]), write_raw) {
        if raw > 0.0 {
            out.insert("primary statement mean / raw".to_owned(), v / raw);
        }
    }
    if let Some(jobs) = report["service"]["max_memory_bytes"].as_object() {
        for (job, v) in jobs {
            if let Some(v) = num(v) {
                out.insert(format!("{job} peak memory MB"), v / 1e6);
            }
        }
    }
    if let Some(hit) = num(&report["service"]["hit_ratio_overall"]) {
        out.insert("cache misses (1 - hit ratio)".to_owned(), 1.0 - hit);
    }
    out
}

/// A figure worse than in the earlier run by more than the noise.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Regression {
    pub figure: String,
    pub before: f64,
    pub now: f64,
}

/// Figures that grew by more than `tolerance` (a fraction) over the earlier
/// run's, with an absolute floor for small values (a p50 ratio of 1.0 →
/// 1.2 is noise on a machine like this one; 0.01 → 0.02 of misses is not
/// worth a failure either).
pub fn regressions(
    now: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
    tolerance: f64,
) -> Vec<Regression> {
    now.iter()
        .filter_map(|(figure, v)| {
            let b = *before.get(figure)?;
            let floor = if figure.starts_with("cache misses") {
                0.02
            } else {
                0.0
            };
            (*v > b * (1.0 + tolerance) + floor).then(|| Regression {
                figure: figure.clone(),
                before: b,
                now: *v,
            })
        })
        .collect()
}

fn series_lines(v: &Value, scale: f64) -> Vec<Line> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(name, points)| Line {
            name: name.clone(),
            points: points
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((num(&p[0])?, num(&p[1])? / scale)))
                .collect(),
        })
        .collect()
}

/// The charts of the report, each an SVG, with a caption.
pub fn charts(report: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let intervals = report["mix"]["intervals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = report["mix"]["ops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["count"].as_u64().unwrap_or(0) >= 20)
        .filter_map(|o| o["op"].as_str().map(str::to_owned))
        .collect();
    let per_op = |field: &str, scale: f64| -> Vec<Line> {
        names
            .iter()
            .map(|name| Line {
                name: name.clone(),
                points: intervals
                    .iter()
                    .filter_map(|i| {
                        let o = i["ops"].as_array()?.iter().find(|o| o["op"] == *name)?;
                        Some((num(&i["start_s"])?, num(&o[field])? * scale))
                    })
                    .collect(),
            })
            .collect()
    };
    out.push((
        "p99 latency of each operation per interval (from when it was due: open loop)".to_owned(),
        line_chart(
            "p99 latency over time",
            "seconds",
            "ms",
            &XAxis::Numbers,
            &per_op("p99_ms", 1.0),
        ),
    ));
    out.push((
        "p50 latency of each operation per interval".to_owned(),
        line_chart(
            "p50 latency over time",
            "seconds",
            "ms",
            &XAxis::Numbers,
            &per_op("p50_ms", 1.0),
        ),
    ));
    out.push((
        "Operations per second, per interval".to_owned(),
        line_chart(
            "Throughput",
            "seconds",
            "operations/s",
            &XAxis::Numbers,
            &per_op("per_second", 1.0),
        ),
    ));
    let quantiles = [
        ("p50_ms", "p50"),
        ("p90_ms", "p90"),
        ("p99_ms", "p99"),
        ("p999_ms", "p99.9"),
        ("max_ms", "max"),
    ];
    let distribution: Vec<Line> = report["mix"]["ops"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["count"].as_u64().unwrap_or(0) >= 20)
        .map(|o| Line {
            name: o["op"].as_str().unwrap_or_default().to_owned(),
            points: quantiles
                .iter()
                .enumerate()
                .filter_map(|(i, (q, _))| Some((i as f64, num(&o[*q])?)))
                .collect(),
        })
        .collect();
    let ticks = XAxis::Names(
        quantiles
            .iter()
            .enumerate()
            .map(|(i, (_, n))| (i as f64, (*n).to_owned()))
            .collect(),
    );
    out.push((
        "Latency distribution of each operation over the whole run (HDR histograms)".to_owned(),
        line_chart(
            "Latency distribution",
            "percentile",
            "ms",
            &ticks,
            &distribution,
        ),
    ));
    let visible: Vec<Line> = vec![
        Line {
            name: "p50".into(),
            points: intervals
                .iter()
                .filter_map(|i| Some((num(&i["start_s"])?, num(&i["visible_p50_ms"])?)))
                .collect(),
        },
        Line {
            name: "p99".into(),
            points: intervals
                .iter()
                .filter_map(|i| Some((num(&i["start_s"])?, num(&i["visible_p99_ms"])?)))
                .collect(),
        },
    ];
    out.push((
        "Command answered → its document readable with its Consistency-Token".to_owned(),
        line_chart(
            "Read-your-writes latency",
            "seconds",
            "ms",
            &XAxis::Numbers,
            &visible,
        ),
    ));
    let service = &report["service"];
    let single = |name: &str, v: &Value, scale: f64| {
        vec![Line {
            name: name.to_owned(),
            points: v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((num(&p[0])?, num(&p[1])? * scale)))
                .collect(),
        }]
    };
    out.push((
        "Projection lag (projector_lag_seconds, from Prometheus)".to_owned(),
        line_chart(
            "Projection lag",
            "seconds",
            "lag (s)",
            &XAxis::Numbers,
            &single("projector", &service["projection_lag_seconds"], 1.0),
        ),
    ));
    out.push((
        "Resident memory of each service (process_resident_memory_bytes)".to_owned(),
        line_chart(
            "Memory",
            "seconds",
            "MB",
            &XAxis::Numbers,
            &series_lines(&service["memory_bytes"], 1e6),
        ),
    ));
    out.push((
        "Share of document reads answered from memory or Redis".to_owned(),
        line_chart(
            "Cache hit ratio",
            "seconds",
            "%",
            &XAxis::Numbers,
            &single("memory or Redis", &service["hit_ratio"], 100.0),
        ),
    ));
    out.push((
        "Open file descriptors of each service (process_open_fds)".to_owned(),
        line_chart(
            "Descriptors",
            "seconds",
            "open",
            &XAxis::Numbers,
            &series_lines(&service["open_fds"], 1.0),
        ),
    ));
    out.push((
        "PostgreSQL sessions per service role (pg_stat_activity)".to_owned(),
        line_chart(
            "Database connections",
            "seconds",
            "sessions",
            &XAxis::Numbers,
            &series_lines(&service["connections"], 1.0),
        ),
    ));
    out
}

/// The report as one self-contained HTML page.
pub fn html(report: &Value, rows: &[Verdict]) -> String {
    let mut page = String::new();
    let title = format!(
        "Research records: benchmark report {}",
        report["generated_at"].as_str().unwrap_or_default()
    );
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
         body{{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}\
         .pass{{background:#e6f4e6}}.fail{{background:#fbe3e3}}.none{{background:#f3f3f3}}\
         figure{{margin:1.5em 0}}figcaption{{color:#555}}code{{background:#f3f3f3;padding:1px 3px}}\
         </style></head><body><h1>{}</h1>",
        escape(&title),
        escape(&title)
    );
    let workload = &report["workload"];
    let _ = write!(
        page,
        "<p>Open-loop mixed workload at <b>{} operations/s</b> for {:.0} s on {} ({} cores, {}); \
         commit <code>{}</code>. Raw baselines measured in the same run: pgbench single-row inserts \
         {:.0}/s at {:.2} ms, a static axum handler {:.0} reads/s at p50 {:.2} ms.</p>",
        workload["rate"],
        num(&report["mix"]["duration_s"]).unwrap_or(0.0),
        escape(report["machine"]["host"].as_str().unwrap_or("?")),
        report["machine"]["cores"],
        escape(report["machine"]["cpu"].as_str().unwrap_or("?")),
        escape(report["versions"]["commit"].as_str().unwrap_or("?")),
        num(&report["baselines"]["pgbench_rows_per_s"]).unwrap_or(f64::NAN),
        num(&report["baselines"]["pgbench_latency_ms"]).unwrap_or(f64::NAN),
        num(&report["baselines"]["static_reads_per_s"]).unwrap_or(f64::NAN),
        num(&report["baselines"]["static_p50_ms"]).unwrap_or(f64::NAN),
    );
    page.push_str("<h2>Objectives and goals</h2><table><tr><th></th><th>figure</th><th>target</th><th>measured</th><th>verdict</th></tr>");
    for r in rows {
        let (class, word) = match r.pass {
            Some(true) => ("pass", "pass"),
            Some(false) => ("fail", "FAIL"),
            None => ("none", "not measured"),
        };
        let _ = write!(
            page,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{word}</td></tr>",
            escape(&r.group),
            escape(&r.name),
            escape(&r.target),
            escape(&r.measured)
        );
    }
    page.push_str("</table>");
    page.push_str("<h2>Operations</h2><table><tr><th>operation</th><th>count</th><th>per s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>max ms</th><th>statuses</th></tr>");
    let mut summaries: Vec<&Value> = report["mix"]["ops"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    summaries.push(&report["mix"]["all"]);
    for o in summaries {
        let statuses = o["statuses"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let f = |k: &str| num(&o[k]).map_or("-".to_owned(), |v| format!("{v:.2}"));
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(o["op"].as_str().unwrap_or("all")),
            o["count"],
            f("per_second"),
            f("p50_ms"),
            f("p90_ms"),
            f("p99_ms"),
            f("p999_ms"),
            f("max_ms"),
            escape(&statuses)
        );
    }
    page.push_str("</table>");
    if let Some(regressions) = report["baseline_comparison"]["regressions"].as_array() {
        let _ = write!(
            page,
            "<h2>Against {}</h2>",
            escape(
                report["baseline_comparison"]["file"]
                    .as_str()
                    .unwrap_or("the baseline")
            )
        );
        if regressions.is_empty() {
            page.push_str("<p>No figure regressed beyond the noise.</p>");
        } else {
            page.push_str("<table><tr><th>figure</th><th>before</th><th>now</th></tr>");
            for r in regressions {
                let _ = write!(
                    page,
                    "<tr class=\"fail\"><td>{}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                    escape(r["figure"].as_str().unwrap_or_default()),
                    num(&r["before"]).unwrap_or(f64::NAN),
                    num(&r["now"]).unwrap_or(f64::NAN)
                );
            }
            page.push_str("</table>");
        }
    }
    page.push_str("<h2>Charts</h2>");
    for (caption, svg) in charts(report) {
        let _ = write!(
            page,
            "<figure>{svg}<figcaption>{}</figcaption></figure>",
            escape(&caption)
        );
    }
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_line_fit_finds_the_slope_and_flatness_tells_growth_from_noise() {
        let line: Vec<(f64, f64)> = (0..20).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        let (slope, intercept, residual) = fit(&line).unwrap();
        assert!((slope - 2.0).abs() < 1e-9 && (intercept - 3.0).abs() < 1e-9);
        assert!(residual < 1e-9);
        assert!(fit(&line[..2]).is_none());

        // 100 MB ± 1 MB of noise for an hour: flat.
        let noisy: Vec<(f64, f64)> = (0..120)
            .map(|i| (i as f64 * 30.0, 100e6 + if i % 2 == 0 { 1e6 } else { -1e6 }))
            .collect();
        assert!(flatness(&noisy, 0.05).unwrap().flat);
        // Filling a cache in the first half, then level: flat.
        let filling: Vec<(f64, f64)> = (0..120)
            .map(|i| (i as f64 * 30.0, 40e6 + (i.min(40) as f64) * 1e6))
            .collect();
        assert!(flatness(&filling, 0.05).unwrap().flat);
        // 100 MB growing by 20 MB an hour: not flat.
        let leak: Vec<(f64, f64)> = (0..120)
            .map(|i| (i as f64 * 30.0, 100e6 + i as f64 * 30.0 * 20e6 / 3600.0))
            .collect();
        let f = flatness(&leak, 0.05).unwrap();
        assert!(!f.flat, "{f:?}");
        assert!((f.slope_per_hour - 20e6).abs() < 1e3);
    }

    fn sample(p99_record: f64, misses: f64, memory: f64) -> Value {
        json!({
            "baselines": {"pgbench_latency_ms": 1.0, "static_p50_ms": 0.2},
            "mix": {
                "ops": [
                    {"op": "record", "count": 1000, "p50_ms": 4.0, "p99_ms": p99_record,
                     "statuses": {"201": 1000}},
                    {"op": "read_observation", "count": 5000, "p50_ms": 0.5, "p99_ms": 3.0,
                     "statuses": {"200": 4990, "503": 10}},
                ],
                "all": {"p50_ms": 1.0, "p99_ms": 20.0},
                "visible": {"p50_ms": 6.0, "p99_ms": 20.0},
            },
            "service": {"hit_ratio_overall": 1.0 - misses, "replica_statements": 300.0,
                        "max_memory_bytes": {"query-api": memory}},
            "database": {"primary": {"mean_ms": 0.2}},
            "integrity": {"mix": {"accepted": 1000, "found_once": 1000, "problems": []},
                          "verify_replay": {"ok": true}, "chain": {"verified": true},
                          "catch_up_seconds": 0.3},
        })
    }

    #[test]
    fn the_table_judges_each_objective_from_the_figures() {
        let rows = verdicts(&sample(40.0, 0.05, 80e6));
        let find = |name: &str| rows.iter().find(|r| r.name.starts_with(name)).unwrap();
        assert_eq!(find("API latency p50").pass, Some(true));
        assert_eq!(find("cache hit ratio").pass, Some(true));
        assert_eq!(
            find("server errors").pass,
            Some(false),
            "10 answers were 503"
        );
        assert_eq!(find("no N+1").pass, Some(true));
        assert_eq!(find("mean database time per statement, standby").pass, None);
        assert_eq!(find("data integrity").pass, Some(true));
        assert_eq!(
            find("command answered → readable with its token, p50").pass,
            Some(false)
        );
        let low = verdicts(&sample(40.0, 0.2, 2e9));
        let find = |name: &str| low.iter().find(|r| r.name.starts_with(name)).unwrap();
        assert_eq!(find("cache hit ratio").pass, Some(false));
        assert_eq!(find("resident memory per service, peak").pass, Some(false));
    }

    #[test]
    fn a_regression_is_a_ratio_worse_than_the_noise_allows() {
        let before = normalized(&sample(40.0, 0.05, 80e6));
        assert_eq!(before["record p99_ms / raw"], 40.0);
        assert_eq!(before["read_observation p50_ms / raw"], 2.5);
        assert!(regressions(&normalized(&sample(44.0, 0.06, 82e6)), &before, 0.3).is_empty());
        let worse = regressions(&normalized(&sample(80.0, 0.05, 80e6)), &before, 0.3);
        assert_eq!(worse.len(), 1);
        assert_eq!(worse[0].figure, "record p99_ms / raw");
        let html = html(
            &sample(40.0, 0.05, 80e6),
            &verdicts(&sample(40.0, 0.05, 80e6)),
        );
        assert!(html.contains("<svg") && html.contains("FAIL") && html.ends_with("</html>\n"));
    }
}
