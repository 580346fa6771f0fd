//! What ships for operators stays true to the services: the Prometheus
//! configuration and alert rules pass `promtool` (their unit tests
//! included), the Grafana dashboard is well formed, every metric they use
//! is one the runbook (`docs/operations.md`) describes, and every metric the
//! services export is described there.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::hostile::Pipeline;

fn root() -> PathBuf {
    tests::repo_root()
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy/prometheus"))
        .output()
        .expect("promtool (installed with prometheus by scripts/infra.sh)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names in the runbook's metrics table (its first column).
fn documented_metrics() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let table = doc
        .split("## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Metrics section");
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .flat_map(|l| {
            let first = l.split(" |").next().unwrap_or_default();
            first
                .split(", ")
                .map(|m| {
                    m.trim_matches('`')
                        .split('{')
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The series names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names, strings or durations.
fn series_in(expr: &str) -> BTreeSet<String> {
    // Strings, label matchers and range selectors go first.
    let mut clean = String::new();
    let (mut depth, mut quoted) = (0, false);
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            '{' | '[' if !quoted => depth += 1,
            '}' | ']' if !quoted => depth -= 1,
            _ if quoted || depth > 0 => {}
            _ => clean.push(c),
        }
    }
    // Then the label lists of grouping clauses: `by (job, le)`.
    for clause in ["by", "without", "on", "ignoring"] {
        let open = format!("{clause} (");
        while let Some(at) = clean.find(&open) {
            let close = clean[at..].find(')').map_or(clean.len(), |i| at + i + 1);
            clean.replace_range(at..close, " ");
        }
    }
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = clean.as_str();
    while let Some(start) = rest.find(is_word) {
        let len = rest[start..]
            .find(|c| !is_word(c))
            .unwrap_or(rest.len() - start);
        let token = &rest[start..start + len];
        rest = &rest[start + len..];
        let called = rest.trim_start().starts_with('(');
        let keyword = matches!(token, "and" | "or" | "unless" | "bool" | "offset");
        if token.starts_with(|c: char| c.is_ascii_lowercase()) && !called && !keyword {
            names.insert(token.to_owned());
        }
    }
    names
}

/// A series name as the runbook names it: histograms by their family.
fn family(series: &str) -> &str {
    ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

#[test]
fn prometheus_configuration_and_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "rules.yml"]);
    promtool(&["test", "rules", "rules.test.yml"]);
}

#[test]
fn the_dashboard_and_the_rules_use_only_documented_metrics() {
    let documented = documented_metrics();
    assert!(documented.len() > 30, "{documented:?}");
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/rules.yml")).unwrap();
    let recorded: BTreeSet<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record: "))
        .map(str::to_owned)
        .collect();
    let known =
        |name: &str| name == "up" || recorded.contains(name) || documented.contains(family(name));

    // Every expression of the rules file (single-line and folded ones).
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(e) = line.trim().strip_prefix("expr: ") {
            if e == "|" {
                let mut folded = String::new();
                while let Some(next) = lines.peek() {
                    if next.trim().is_empty()
                        || next.trim_start().starts_with("- ")
                        || next.trim_start().starts_with('#')
                    {
                        break;
                    }
                    if next.trim_start().contains(": ") && !next.contains('(') {
                        break;
                    }
                    folded.push_str(lines.next().unwrap().trim());
                    folded.push(' ');
                }
                exprs.push(folded);
            } else {
                exprs.push(e.to_owned());
            }
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/research-records.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "research-records");
    assert!(dashboard["title"].is_string());
    let datasource = &dashboard["templating"]["list"][0];
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        let id = panel["id"].as_u64().expect("a numeric panel id");
        assert!(ids.insert(id), "panel id {id} is unique");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24 && grid["h"].as_u64().unwrap() > 0, "{panel}");
        if panel["type"] == "row" {
            continue;
        }
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(panel["description"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            exprs.push(target["expr"].as_str().expect("an expression").to_owned());
        }
    }
    assert!(panels.len() > 15);

    for expr in &exprs {
        let series = series_in(expr);
        assert!(!series.is_empty(), "{expr} reads a series");
        for name in series {
            assert!(
                known(&name),
                "{name} (in {expr}) is neither a recorded rule nor in docs/operations.md"
            );
        }
    }
}

#[test]
fn series_are_told_from_functions_labels_and_keywords() {
    let names = series_in(
        r#"sum by (job, le) (rate(http_request_duration_seconds_bucket{status=~"5.."}[5m])) / job:http_requests:rate5m > 0.01 and up"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "http_request_duration_seconds_bucket",
            "job:http_requests:rate5m",
            "up"
        ]
    );
    assert_eq!(
        family("projector_apply_seconds_bucket"),
        "projector_apply_seconds"
    );
}

#[tokio::test]
async fn every_metric_the_services_export_is_in_the_runbook() {
    let pipeline = Pipeline::start().await;
    pipeline.flows().await;
    let documented = documented_metrics();
    let text = reqwest::get(pipeline.env.api.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(family)
        .collect();
    // The three services run in this process and share its recorder, so
    // one scrape holds every family the flow touched.
    for expected in [
        "http_request_duration_seconds",
        "process_resident_memory_bytes",
        "outbox_published_position",
        "projector_checkpoint_position",
        "query_cache_lookups_total",
    ] {
        assert!(exported.contains(expected), "{expected} in {exported:?}");
    }
    let undocumented: Vec<&&str> = exported
        .iter()
        .filter(|m| !documented.contains(**m))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/operations.md: {undocumented:?}"
    );
}
