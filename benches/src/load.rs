//! A small HTTP load generator: a fixed number of connections, either closed
//! loop (each sends its next request when the last one answered: the
//! maximum rate) or open loop at a fixed rate (latency counted from the
//! scheduled send time, so a stall is not hidden by coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// What one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }

    pub fn summary(&self) -> String {
        format!(
            "{:.0} req/s over {:.1} s ({} ok, {} errors), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.rate(),
            self.elapsed.as_secs_f64(),
            self.requests,
            self.errors,
            self.percentile_ms(50.0),
            self.percentile_ms(99.0),
            self.percentile_ms(100.0)
        )
    }
}

/// The `p`th percentile, in milliseconds, of sorted microseconds (NaN when
/// there are none).
pub fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted_us.len() - 1) as f64).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

/// Runs `send` from `connections` tasks for `duration`. With `rate`, the
/// sends are scheduled evenly at that many per second in total.
pub async fn run<F, Fut>(
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    send: F,
) -> Report
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let send = Arc::new(send);
    run_with(
        connections,
        duration,
        rate,
        |_| async { Some(()) },
        move |(), n| {
            let send = send.clone();
            async move { ((), send(n).await) }
        },
    )
    .await
}

/// Like [`run`], with a state of its own per connection (made by `open`,
/// which answers `None` when it cannot connect): `send` takes the state and
/// gives it back with the outcome.
///
/// Open loop: a thread of its own releases send number `n` at
/// `start + n / rate` (a thread's sleep is precise to tens of microseconds,
/// where the runtime's timer rounds to the millisecond), and the first free
/// connection takes it; its latency counts from that scheduled time, so a
/// backlog shows instead of hiding (no coordinated omission).
pub async fn run_with<S, O, OFut, F, Fut>(
    connections: usize,
    duration: Duration,
    rate: Option<f64>,
    open: O,
    send: F,
) -> Report
where
    S: Send + 'static,
    O: Fn(usize) -> OFut + Send + Sync + 'static,
    OFut: std::future::Future<Output = Option<S>> + Send,
    F: Fn(S, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = (S, bool)> + Send,
{
    let (open, send) = (Arc::new(open), Arc::new(send));
    let started = Instant::now();
    let deadline = started + duration;
    let interval = rate.map(|r| Duration::from_secs_f64(1.0 / r));
    // Closed loop: a shared counter; open loop: the pacer's tickets.
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tickets = interval.map(|interval| pacer(started, deadline, interval));
    let results = Arc::new(Mutex::new((0u64, 0u64, Vec::<u64>::new())));
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (open, send, next, results, tickets) = (
                open.clone(),
                send.clone(),
                next.clone(),
                results.clone(),
                tickets.clone(),
            );
            tokio::spawn(async move {
                let mut local = (0u64, 0u64, Vec::new());
                let Some(mut state) = open(c).await else {
                    results.lock().await.1 += 1;
                    return;
                };
                loop {
                    let (n, scheduled) = match (&tickets, interval) {
                        (Some(tickets), Some(interval)) => {
                            let Some(n) = tickets.lock().await.recv().await else {
                                break;
                            };
                            (n, started + interval.mul_f64(n as f64))
                        }
                        _ => {
                            let now = Instant::now();
                            if now >= deadline {
                                break;
                            }
                            (next.fetch_add(1, std::sync::atomic::Ordering::Relaxed), now)
                        }
                    };
                    let (back, ok) = send(state, n).await;
                    state = back;
                    let latency = scheduled.elapsed().as_micros() as u64;
                    if ok {
                        local.0 += 1;
                        local.2.push(latency);
                    } else {
                        local.1 += 1;
                    }
                }
                let mut all = results.lock().await;
                all.0 += local.0;
                all.1 += local.1;
                all.2.extend(local.2);
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let (requests, errors, mut latencies_us) = std::mem::take(&mut *results.lock().await);
    latencies_us.sort_unstable();
    Report {
        requests,
        errors,
        elapsed,
        latencies_us,
    }
}

/// The open loop's pacer: a thread that hands out ticket `n` at
/// `started + n * interval` until `deadline`.
pub fn pacer(
    started: Instant,
    deadline: Instant,
    interval: Duration,
) -> Arc<Mutex<tokio::sync::mpsc::UnboundedReceiver<u64>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    std::thread::spawn(move || {
        for n in 0u64.. {
            let at = started + interval.mul_f64(n as f64);
            if at >= deadline {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(n).is_err() {
                break;
            }
        }
    });
    Arc::new(Mutex::new(rx))
}
