//! Per-variable statistics kept incrementally and exactly: sums in
//! arbitrary-precision decimals (no drift however many corrections and
//! retractions), min and max with how many current values equal each, so
//! that they are recomputed (a scan of the scope's values) only when the
//! last value equal to an extreme goes. Real measurements tie often (no
//! precipitation, visibility at the instrument's maximum): without the
//! counts, every correction of such a value rescanned the whole study. The
//! rendered `stats` equal a recomputation from scratch over the same current
//! values, bit for bit.

use std::collections::BTreeMap;
use std::str::FromStr;

use bigdecimal::{BigDecimal, ToPrimitive, Zero};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::domain::VariableKind;

/// Running statistics of one variable over the current values of the
/// non-retracted observations in one scope (a study or a subject).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accumulator {
    /// Non-null values counted.
    pub n: u64,
    #[serde(with = "decimal_text")]
    sum: BigDecimal,
    #[serde(with = "decimal_text")]
    sumsq: BigDecimal,
    #[serde(with = "option_decimal_text")]
    min: Option<BigDecimal>,
    #[serde(with = "option_decimal_text")]
    max: Option<BigDecimal>,
    /// How many current values equal `min` and `max`; 0 when not known (a
    /// state stored before they were kept), in which case removing an
    /// extreme asks for a recomputation, which sets them.
    #[serde(default, skip_serializing_if = "is_zero")]
    min_count: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    max_count: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    counts: BTreeMap<String, u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counts `x` against the extreme `at` and its count: a value beyond the
/// extreme (`beyond(x, at)`) replaces it; an equal one adds to a known count.
fn extend(
    at: &mut Option<BigDecimal>,
    count: &mut u64,
    x: &BigDecimal,
    beyond: fn(&BigDecimal, &BigDecimal) -> bool,
) {
    match at.as_ref() {
        Some(m) if m == x => {
            if *count > 0 {
                *count += 1;
            }
        }
        Some(m) if !beyond(x, m) => {}
        _ => {
            *at = Some(x.clone());
            *count = 1;
        }
    }
}

/// One value equal to an extreme goes: answers whether the extreme still
/// holds (another value equals it, by a known count).
fn release(count: &mut u64) -> bool {
    if *count >= 2 {
        *count -= 1;
        true
    } else {
        false
    }
}

/// What `remove` left undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Done,
    /// The removed value was the last one equal to the minimum or maximum:
    /// call [`Accumulator::set_extremes`] with the remaining values.
    ExtremesStale,
}

fn decimal(value: &Value) -> Option<BigDecimal> {
    match value {
        Value::Number(n) => BigDecimal::from_str(&n.to_string()).ok(),
        _ => None,
    }
}

fn category(kind: VariableKind, value: &Value) -> Option<String> {
    match (kind, value) {
        (VariableKind::Categorical, Value::String(s)) => Some(s.clone()),
        (VariableKind::Boolean, Value::Bool(b)) => Some(b.to_string()),
        _ => None,
    }
}

fn numeric(kind: VariableKind) -> bool {
    matches!(kind, VariableKind::Numeric | VariableKind::Integer)
}

impl Accumulator {
    /// Counts one current value (`null` is not counted).
    pub fn add(&mut self, kind: VariableKind, value: &Value) {
        if value.is_null() {
            return;
        }
        self.n += 1;
        if numeric(kind) {
            if let Some(x) = decimal(value) {
                self.sumsq += &x * &x;
                self.sum += &x;
                extend(&mut self.min, &mut self.min_count, &x, |x, m| x < m);
                extend(&mut self.max, &mut self.max_count, &x, |x, m| x > m);
            }
        } else if let Some(c) = category(kind, value) {
            *self.counts.entry(c).or_default() += 1;
        }
    }

    /// Stops counting one value that was counted before.
    pub fn remove(&mut self, kind: VariableKind, value: &Value) -> Removed {
        if value.is_null() || self.n == 0 {
            return Removed::Done;
        }
        self.n -= 1;
        if numeric(kind) {
            if let Some(x) = decimal(value) {
                self.sumsq -= &x * &x;
                self.sum -= &x;
                if self.n == 0 {
                    self.min = None;
                    self.max = None;
                    self.min_count = 0;
                    self.max_count = 0;
                    self.sum = BigDecimal::zero();
                    self.sumsq = BigDecimal::zero();
                } else {
                    let min_stale = self.min.as_ref() == Some(&x) && !release(&mut self.min_count);
                    let max_stale = self.max.as_ref() == Some(&x) && !release(&mut self.max_count);
                    if min_stale || max_stale {
                        return Removed::ExtremesStale;
                    }
                }
            }
        } else if let Some(c) = category(kind, value) {
            if let Some(count) = self.counts.get_mut(&c) {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&c);
                }
            }
        }
        Removed::Done
    }

    /// Sets min and max, and how many values equal each, from the
    /// remaining current values.
    pub fn set_extremes<'a>(&mut self, values: impl IntoIterator<Item = &'a Value>) {
        self.min = None;
        self.max = None;
        self.min_count = 0;
        self.max_count = 0;
        for x in values.into_iter().filter_map(decimal) {
            match self.min.as_ref() {
                Some(m) if *m == x => self.min_count += 1,
                Some(m) if *m < x => {}
                _ => {
                    self.min = Some(x.clone());
                    self.min_count = 1;
                }
            }
            match self.max.as_ref() {
                Some(m) if *m == x => self.max_count += 1,
                Some(m) if *m > x => {}
                _ => {
                    self.max = Some(x);
                    self.max_count = 1;
                }
            }
        }
    }

    /// The `stats` object of the contract for a variable of `kind`.
    pub fn render(&self, kind: VariableKind) -> Value {
        match kind {
            VariableKind::Numeric | VariableKind::Integer => {
                let n = BigDecimal::from(self.n);
                let mean = (self.n > 0).then(|| (&self.sum / &n).to_f64()).flatten();
                let sd = (self.n > 1)
                    .then(|| {
                        let n1 = BigDecimal::from(self.n - 1);
                        let var = (&n * &self.sumsq - &self.sum * &self.sum) / (&n * &n1);
                        // Exact arithmetic keeps it at zero or above.
                        var.sqrt().and_then(|s| s.to_f64())
                    })
                    .flatten();
                let min = self.min.as_ref().and_then(ToPrimitive::to_f64);
                let max = self.max.as_ref().and_then(ToPrimitive::to_f64);
                json!({"n": self.n, "mean": mean, "sd": sd, "min": min, "max": max})
            }
            VariableKind::Categorical | VariableKind::Boolean => {
                json!({"n": self.n, "counts": self.counts})
            }
            VariableKind::Text | VariableKind::Date => json!({"n": self.n}),
        }
    }
}

mod decimal_text {
    use std::str::FromStr;

    use bigdecimal::BigDecimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &BigDecimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BigDecimal, D::Error> {
        let text = String::deserialize(d)?;
        BigDecimal::from_str(&text).map_err(serde::de::Error::custom)
    }
}

mod option_decimal_text {
    use std::str::FromStr;

    use bigdecimal::BigDecimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<BigDecimal>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<BigDecimal>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| BigDecimal::from_str(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn from_scratch(kind: VariableKind, values: &[Value]) -> Value {
        let mut a = Accumulator::default();
        for v in values {
            a.add(kind, v);
        }
        a.render(kind)
    }

    #[test]
    fn stats_follow_the_contract() {
        let values = [json!(39.1), json!(39.5), json!(40.3), Value::Null];
        let stats = from_scratch(VariableKind::Numeric, &values);
        assert_eq!(stats["n"], 3);
        assert_eq!(stats["min"], 39.1);
        assert_eq!(stats["max"], 40.3);
        let mean = stats["mean"].as_f64().unwrap();
        assert!((mean - 39.633_333_333_333_33).abs() < 1e-12, "{mean}");
        let sd = stats["sd"].as_f64().unwrap();
        assert!((sd - 0.611_010_092_660_779).abs() < 1e-12, "{sd}");
        let one = from_scratch(VariableKind::Numeric, &[json!(1)]);
        assert_eq!(one["sd"], Value::Null, "sd needs n >= 2");
        let none = from_scratch(VariableKind::Numeric, &[Value::Null]);
        assert_eq!(
            none,
            json!({"n": 0, "mean": null, "sd": null, "min": null, "max": null})
        );
        let sexes = from_scratch(
            VariableKind::Categorical,
            &[json!("MALE"), json!("FEMALE"), json!("MALE")],
        );
        assert_eq!(sexes, json!({"n": 3, "counts": {"FEMALE": 1, "MALE": 2}}));
        let clutch = from_scratch(
            VariableKind::Boolean,
            &[json!(true), json!(false), json!(true)],
        );
        assert_eq!(clutch["counts"], json!({"true": 2, "false": 1}));
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let mut a = Accumulator::default();
        a.add(VariableKind::Numeric, &json!(10.357019999999999));
        a.add(VariableKind::Numeric, &json!(-24.69454));
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Accumulator>(&text).unwrap(), a);
    }

    #[test]
    fn ties_at_an_extreme_ask_for_a_rescan_only_when_the_last_one_goes() {
        let kind = VariableKind::Numeric;
        let mut a = Accumulator::default();
        for v in [0.0, 0.0, 0.25, 0.0, 1.5] {
            a.add(kind, &json!(v));
        }
        // Three zeros at the minimum: two may go without a rescan.
        assert_eq!(a.remove(kind, &json!(0.0)), Removed::Done);
        assert_eq!(a.remove(kind, &json!(0.0)), Removed::Done);
        assert_eq!(a.render(kind)["min"], 0.0);
        assert_eq!(a.remove(kind, &json!(0.0)), Removed::ExtremesStale);
        a.set_extremes([json!(0.25), json!(1.5)].iter());
        assert_eq!(a.render(kind)["min"], 0.25);
        // A value equal to the new minimum counts with it.
        a.add(kind, &json!(0.25));
        assert_eq!(a.remove(kind, &json!(0.25)), Removed::Done);
        assert_eq!(
            a.render(kind),
            from_scratch(kind, &[json!(0.25), json!(1.5)])
        );
    }

    #[test]
    fn a_state_stored_without_counts_rescans_when_an_extreme_goes() {
        let kind = VariableKind::Numeric;
        let mut a = Accumulator::default();
        for v in [2.0, 2.0, 5.0] {
            a.add(kind, &json!(v));
        }
        let mut stored = serde_json::to_value(&a).unwrap();
        assert_eq!(stored["min_count"], 2);
        let map = stored.as_object_mut().unwrap();
        map.remove("min_count");
        map.remove("max_count");
        let mut old: Accumulator = serde_json::from_value(stored).unwrap();
        assert_eq!(old.remove(kind, &json!(2.0)), Removed::ExtremesStale);
        old.set_extremes([json!(2.0), json!(5.0)].iter());
        assert_eq!(
            old.render(kind),
            from_scratch(kind, &[json!(2.0), json!(5.0)])
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(Option<f64>),
        /// Replace the value at an index (a correction).
        Replace(usize, Option<f64>),
        /// Remove the value at an index (a retraction).
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Real-looking measurements with up to 5 decimals, and values from a
        // handful that tie often (as rain gauges and visibility do).
        let value = prop::option::weighted(
            0.9,
            prop_oneof![
                (-5000i64..5000, 0u32..6).prop_map(|(m, s)| m as f64 / 10f64.powi(s as i32)),
                (0i64..4).prop_map(|m| m as f64 / 2.0),
            ],
        );
        prop_oneof![
            4 => value.clone().prop_map(Op::Add),
            2 => (any::<usize>(), value).prop_map(|(i, v)| Op::Replace(i, v)),
            1 => any::<usize>().prop_map(Op::Remove),
        ]
    }

    fn json_of(v: Option<f64>) -> Value {
        v.map_or(Value::Null, |x| json!(x))
    }

    proptest! {
        #[test]
        fn incremental_stats_equal_a_recomputation(ops in prop::collection::vec(op(), 1..80)) {
            let kind = VariableKind::Numeric;
            let mut current: Vec<Value> = Vec::new();
            let mut acc = Accumulator::default();
            for op in ops {
                let mut removed = Vec::new();
                match op {
                    Op::Add(v) => {
                        acc.add(kind, &json_of(v));
                        current.push(json_of(v));
                    }
                    Op::Replace(i, v) if !current.is_empty() => {
                        let i = i % current.len();
                        removed.push(std::mem::replace(&mut current[i], json_of(v)));
                        acc.add(kind, &current[i]);
                    }
                    Op::Remove(i) if !current.is_empty() => {
                        removed.push(current.remove(i % current.len()));
                    }
                    _ => {}
                }
                for old in removed {
                    if acc.remove(kind, &old) == Removed::ExtremesStale {
                        acc.set_extremes(current.iter());
                    }
                }
                prop_assert_eq!(acc.render(kind), from_scratch(kind, &current));
            }
        }
    }
}
