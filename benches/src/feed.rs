//! The observations the write benchmarks record, as a study that keeps
//! measuring would: the weather rows station by station, then the same rows
//! again moved forward by the data set's span, and so on. A study grown to
//! a million observations thus holds them at distinct, advancing times
//! (recording the same year again and again would insert every new
//! observation into the middle of the indexes by time, a different and
//! costlier workload). The feed starts where the study stopped, so that one
//! run goes on in time after another.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::datasets::StudyData;

/// One weather row: the index of its subject (station), its time, and its
/// record body (whose `observed_at` each pass replaces with the moved time).
struct Row {
    subject: usize,
    observed_at: DateTime<Utc>,
    body: Value,
}

/// The endless sequence of observations, handed out in order to any number
/// of tasks.
pub struct Feed {
    rows: Vec<Row>,
    /// How far each pass moves the times: the rows' span in whole days, so
    /// that times of day stay.
    pass: Duration,
    next: AtomicU64,
}

impl Feed {
    /// The feed of `data`'s observations, its first item the `first`th of
    /// the endless sequence (how many the study already recorded).
    pub fn new(data: &StudyData, first: u64) -> anyhow::Result<Feed> {
        let mut rows = Vec::with_capacity(data.observation_count());
        for (subject, s) in data.subjects.iter().enumerate() {
            for o in &s.observations {
                let observed_at = DateTime::parse_from_rfc3339(&o.observed_at)
                    .with_context(|| format!("time {:?}", o.observed_at))?
                    .with_timezone(&Utc);
                rows.push(Row {
                    subject,
                    observed_at,
                    body: o.record_body(),
                });
            }
        }
        let (Some(min), Some(max)) = (
            rows.iter().map(|r| r.observed_at).min(),
            rows.iter().map(|r| r.observed_at).max(),
        ) else {
            anyhow::bail!("the data set has no observations");
        };
        Ok(Feed {
            rows,
            pass: Duration::days((max - min).num_days() + 1),
            next: AtomicU64::new(first),
        })
    }

    /// The next observation: its subject's index and its record body.
    pub fn next(&self) -> (usize, Value) {
        self.item(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The `n`th observation of the endless sequence.
    pub fn item(&self, n: u64) -> (usize, Value) {
        let len = self.rows.len() as u64;
        let row = &self.rows[(n % len) as usize];
        let shift = self.pass * i32::try_from(n / len).unwrap_or(i32::MAX);
        let mut body = row.body.clone();
        body["observed_at"] =
            json!((row.observed_at + shift).to_rfc3339_opts(SecondsFormat::Secs, true));
        (row.subject, body)
    }

    /// Where the next run should start: after every item handed out
    /// (sent, whatever their answers).
    pub fn position(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::study::weather_data;

    fn time(body: &Value) -> DateTime<Utc> {
        body["observed_at"].as_str().unwrap().parse().unwrap()
    }

    #[test]
    fn every_pass_comes_after_the_one_before_and_keeps_the_rows() {
        let data = weather_data().unwrap();
        let feed = Feed::new(&data, 0).unwrap();
        let len = data.observation_count() as u64;
        let last_of_first_pass = (0..len).map(|n| time(&feed.item(n).1)).max().unwrap();
        for n in [0, 1, len / 2, len - 1] {
            let (subject, first) = feed.item(n);
            let (again, second) = feed.item(n + len);
            assert_eq!(subject, again);
            assert!(time(&second) > last_of_first_pass, "item {n}");
            assert_eq!(time(&second) - time(&first), feed.pass);
            assert_eq!(first["values"], second["values"]);
            // Whole days: the time of day is the row's.
            assert_eq!(time(&first).time(), time(&second).time());
        }
        let original = &data.subjects[0].observations[0];
        assert_eq!(feed.item(0).1, original.record_body());
    }

    #[test]
    fn a_feed_goes_on_where_the_study_stopped() {
        let data = weather_data().unwrap();
        let earlier = Feed::new(&data, 0).unwrap();
        for _ in 0..5 {
            earlier.next();
        }
        assert_eq!(earlier.position(), 5);
        let later = Feed::new(&data, earlier.position()).unwrap();
        assert_eq!(later.next(), earlier.item(5));
        assert_eq!(later.position(), 6);
    }
}
