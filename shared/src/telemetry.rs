//! Logging set-up shared by the binaries (`RUST_LOG` filters, and
//! `LOG_FORMAT=json` switches to one JSON object a line for log shippers),
//! and the shutdown signal they all wait for.

use std::sync::OnceLock;

pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tracing_subscriber::EnvFilter;

pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
}

/// Buckets of the histograms of durations, in seconds.
const SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The histograms of sizes (items, requests, events), and their buckets.
const COUNTS: [&str; 3] = [
    "command_batch_size",
    "event_store_append_batch_requests",
    "projector_batch_events",
];
const SIZES: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
];

/// Installs the Prometheus recorder once per process, with a thread that
/// folds the recorded histogram samples into their buckets every few
/// seconds (without it they pile up in memory until the next scrape, and
/// without a scraper, forever) and samples the process's own resources
/// ([`sample_process`]).
pub fn install_metrics() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new().set_buckets(&SECONDS).ok()?;
            for name in COUNTS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.to_owned()), &SIZES)
                    .ok()?;
            }
            let handle = builder.install_recorder().ok()?;
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    sample_process();
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    upkeep.run_upkeep();
                })
                .ok()?;
            Some(handle)
        })
        .clone()
}

/// Sets `process_resident_memory_bytes`, `process_open_fds` and
/// `process_max_fds` from `/proc/self` (Linux; elsewhere nothing is set),
/// the figures an operator watches for leaks over a long run.
fn sample_process() {
    if let Some(resident_kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| field(&s, "VmRSS:"))
    {
        metrics::gauge!("process_resident_memory_bytes").set(resident_kib * 1024.0);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(fds.count() as f64);
    }
    if let Some(limit) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| max_open_files(&s))
    {
        metrics::gauge!("process_max_fds").set(limit);
    }
}

/// The soft limit on open files in the text of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    field(limits, "Max open files")
}

/// The first number after `name` on the line that starts with it.
fn field(text: &str, name: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_are_counted_in_buckets_of_sizes_and_durations_in_seconds() {
        let handle = super::install_metrics().unwrap();
        metrics::histogram!("projector_batch_events").record(300.0);
        metrics::histogram!("projector_apply_seconds").record(0.003);
        let text = handle.render();
        for line in [
            "projector_batch_events_bucket{le=\"200\"} 0",
            "projector_batch_events_bucket{le=\"500\"} 1",
            "projector_apply_seconds_bucket{le=\"0.0025\"} 0",
            "projector_apply_seconds_bucket{le=\"0.005\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn the_open_files_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(super::max_open_files(limits), Some(1024.0));
        assert_eq!(super::max_open_files("Max cpu time unlimited"), None);
        assert_eq!(super::field("VmRSS:\t  5120 kB\n", "VmRSS:"), Some(5120.0));
    }
}
