//! `LoopHealth`: what a worker loop that must make progress (the outbox
//! publisher, the projector) says when it cannot. A failing step is logged
//! once per retry with the position it is stuck at and the delay before the
//! next try (an exponential back-off, so never a silent hot loop), counted
//! in metrics an alert can fire on, and shown by `/readyz`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// First delay after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The health of one loop, shared with the readiness handler.
pub struct LoopHealth {
    /// Names the loop in logs and metrics (`publisher`, `projector`).
    name: &'static str,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The position the loop has reached (published, projected).
    position: i64,
    failures: u64,
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

impl LoopHealth {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A step succeeded at `position`.
    pub fn progressed(&self, position: i64) {
        let mut state = self.lock();
        if state.failures > 0 {
            tracing::info!(
                position,
                failures = state.failures,
                "{} recovered",
                self.name
            );
        }
        *state = State {
            position,
            ..State::default()
        };
        drop(state);
        metrics::gauge!("loop_consecutive_failures", "loop" => self.name).set(0.0);
    }

    /// A step failed while at `position`: logs it, counts it, and answers
    /// how long to wait before the next try.
    /// `error` is shown with `{:#}` (an error chain on one line).
    pub fn failed(&self, position: i64, error: &(impl std::fmt::Display + ?Sized)) -> Duration {
        let mut state = self.lock();
        state.position = position;
        state.failures += 1;
        let since = *state.failing_since.get_or_insert_with(Instant::now);
        let message = format!("{error:#}");
        let retry_in = backoff(state.failures);
        tracing::error!(
            position,
            failures = state.failures,
            failing_for_s = since.elapsed().as_secs(),
            retry_in_ms = retry_in.as_millis() as u64,
            error = message,
            "{} cannot make progress",
            self.name
        );
        state.last_error = Some(message);
        let failures = state.failures;
        drop(state);
        metrics::counter!("loop_failures_total", "loop" => self.name).increment(1);
        metrics::gauge!("loop_consecutive_failures", "loop" => self.name).set(failures as f64);
        retry_in
    }

    /// Tells where the loop stands without saying it progressed (a
    /// failing loop stays failing).
    pub fn note_position(&self, position: i64) {
        self.lock().position = position;
    }

    /// The position last reported.
    pub fn position(&self) -> i64 {
        self.lock().position
    }

    /// Whether the last step succeeded.
    pub fn is_ok(&self) -> bool {
        self.lock().failures == 0
    }

    /// `{ok, position, failures?, failing_for_seconds?, error?}` for `/readyz`.
    pub fn report(&self) -> Value {
        let state = self.lock();
        let mut report = json!({"ok": state.failures == 0, "position": state.position});
        if state.failures > 0 {
            report["failures"] = json!(state.failures);
            report["failing_for_seconds"] =
                json!(state
                    .failing_since
                    .map_or(0.0, |s| (s.elapsed().as_millis() as f64) / 1000.0));
            report["error"] = json!(state.last_error);
        }
        report
    }
}

/// The delay after `failures` consecutive failures.
pub fn backoff(failures: u64) -> Duration {
    let doublings = failures.saturating_sub(1).min(16) as u32;
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_are_reported_and_clear_on_progress() {
        let health = LoopHealth::new("test");
        assert!(health.is_ok());
        let first = health.failed(7, "refused");
        let second = health.failed(7, "refused again");
        assert!(second > first, "{first:?} then {second:?}");
        assert!(!health.is_ok());
        let report = health.report();
        assert_eq!(report["ok"], false);
        assert_eq!(report["position"], 7);
        assert_eq!(report["failures"], 2);
        assert_eq!(report["error"], "refused again");
        health.progressed(9);
        assert!(health.is_ok());
        assert_eq!(health.report(), json!({"ok": true, "position": 9}));
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
