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
                let min = self.min.as_ref().and_then(ToPrimitive::to_f64);
                let max = self.max.as_ref().and_then(ToPrimitive::to_f64);
                json!({"n": self.n, "mean": self.mean(), "sd": self.sd(), "min": min, "max": max})
            }
            VariableKind::Categorical | VariableKind::Boolean => {
                json!({"n": self.n, "counts": self.counts})
            }
            VariableKind::Text | VariableKind::Date => json!({"n": self.n}),
        }
    }

    /// The mean: `sum / n`, the `f64` nearest to the exact quotient.
    fn mean(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let n = BigDecimal::from(self.n);
        nearest(&self.sum, &n, Power::Value).or_else(|| (&self.sum / &n).to_f64())
    }

    /// The sample standard deviation: the square root of
    /// `(n·sumsq − sum²) / (n·(n − 1))`, the `f64` nearest to the exact root
    /// (exact arithmetic keeps the variance at zero or above).
    fn sd(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = BigDecimal::from(self.n);
        let spread = &n * &self.sumsq - &self.sum * &self.sum;
        let pairs = &n * BigDecimal::from(self.n - 1);
        nearest(&spread, &pairs, Power::Root)
            .or_else(|| (&spread / &pairs).sqrt().and_then(|s| s.to_f64()))
    }
}

/// Which function of a quotient [`nearest`] rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    /// The quotient itself.
    Value,
    /// Its square root.
    Root,
}

/// How far from a rounding boundary, relative to the value, [`nearest`]
/// must find it before it answers: more than the error of the decimal
/// route it stands in for (a quotient and a root each to 100 digits, read
/// as `f64` from their first 43 digits, so below 1e-41 relative).
const ROOM_DIGITS: u32 = 38;

/// 2^53: [`nearest`] answers only below it.
const LARGEST_EXACT: f64 = 9_007_199_254_740_992.0;

/// `a / b` (with `Power::Root`, its square root) rounded to the nearest
/// `f64`, computed in `f64` and proven right with exact integers; `None`
/// when the proof does not hold (an exact tie, a value too close to a
/// rounding boundary, too large or too small, or `b` not positive), and the
/// caller computes the decimal way, whose answer this equals whenever it
/// answers: the exact value lies more than 1e-38 of itself away from every
/// boundary between two `f64`s, farther than that route's error can move
/// it. Every study and subject document renders this for each numeric
/// variable in every batch, so it matters: the decimal route costs about
/// 100 times more.
fn nearest(a: &BigDecimal, b: &BigDecimal, power: Power) -> Option<f64> {
    use bigdecimal::num_bigint::{BigInt, Sign};

    let (num, num_scale) = a.as_bigint_and_scale();
    let (den, den_scale) = b.as_bigint_and_scale();
    if den.sign() != Sign::Plus {
        return None;
    }
    if num.sign() == Sign::NoSign {
        return Some(0.0);
    }
    let negative = num.sign() == Sign::Minus;
    if negative && power == Power::Root {
        return None;
    }
    // a / b = num / den as integers: the scales moved onto one side.
    let shift = u32::try_from((num_scale - den_scale).unsigned_abs())
        .ok()
        .filter(|&k| k <= 64)?;
    let ten = BigInt::from(10u32).pow(shift);
    let (num, den) = if num_scale >= den_scale {
        (num.magnitude().clone().into(), &*den * &ten)
    } else {
        (
            BigInt::from(num.magnitude().clone()) * &ten,
            den.into_owned(),
        )
    };
    let quotient = num.to_f64()? / den.to_f64()?;
    let guess = match power {
        Power::Value => quotient,
        Power::Root => quotient.sqrt(),
    };
    // Beyond 2^53 the decimal route may read an integer through a power of
    // ten that `f64` does not hold exactly: it is left to answer there.
    if !guess.is_normal() || guess >= LARGEST_EXACT {
        return None;
    }
    let exponent = power as u32 + 1;
    let room = BigInt::from(10u128.pow(ROOM_DIGITS));
    // The guess, or one of its neighbours when the division above rounded
    // its operands.
    let bits = guess.to_bits();
    let answer = [bits, bits + 1, bits - 1]
        .into_iter()
        .map(f64::from_bits)
        .find(|&r| {
            r.is_normal() && r < LARGEST_EXACT && rounds_to(r, &num, &den, exponent, &room)
        })?;
    Some(if negative { -answer } else { answer })
}

/// Whether the positive normal `r` is the `f64` nearest to `x`, where
/// `x^exponent = num / den`, with room to spare: `x^exponent` lies more than
/// `1 / room` of itself inside both midpoints between `r` and its
/// neighbours.
fn rounds_to(
    r: f64,
    num: &bigdecimal::num_bigint::BigInt,
    den: &bigdecimal::num_bigint::BigInt,
    exponent: u32,
    room: &bigdecimal::num_bigint::BigInt,
) -> bool {
    use bigdecimal::num_bigint::BigInt;

    // r = m · 2^e with m of 53 bits.
    let bits = r.to_bits();
    let m = ((bits & ((1 << 52) - 1)) | (1 << 52)) as i64;
    let e = ((bits >> 52) & 0x7ff) as i64 - 1075;
    // The midpoints as odd multiples of a power of two: above, (2m + 1)·2^(e−1);
    // below, (2m − 1)·2^(e−1), or (4m − 1)·2^(e−2) when r is a power of two
    // (the neighbour below is closer).
    let below = if m == 1 << 52 {
        (4 * m - 1, e - 2)
    } else {
        (2 * m - 1, e - 1)
    };
    // Compares midpoint^exponent · den with num, both made integers.
    let scaled = |(mantissa, power): (i64, i64)| -> (BigInt, BigInt) {
        let shift = power * i64::from(exponent);
        let mid = BigInt::from(mantissa).pow(exponent) * den;
        if shift >= 0 {
            (mid << shift.unsigned_abs(), num.clone())
        } else {
            (mid, num << shift.unsigned_abs())
        }
    };
    let (low, value_low) = scaled(below);
    let (high, value_high) = scaled((2 * m + 1, e - 1));
    (&value_low - &low) * room > value_low && (&high - &value_high) * room > value_high
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

    /// The decimal route alone (what [`nearest`] stands in for): the
    /// oracle the fast route must equal bit for bit.
    fn decimal_route(acc: &Accumulator) -> (Option<f64>, Option<f64>) {
        let n = BigDecimal::from(acc.n);
        let mean = (acc.n > 0).then(|| (&acc.sum / &n).to_f64()).flatten();
        let sd = (acc.n > 1)
            .then(|| {
                let n1 = BigDecimal::from(acc.n - 1);
                let var = (&n * &acc.sumsq - &acc.sum * &acc.sum) / (&n * &n1);
                var.sqrt().and_then(|s| s.to_f64())
            })
            .flatten();
        (mean, sd)
    }

    fn bits(x: Option<f64>) -> Option<u64> {
        x.map(f64::to_bits)
    }

    fn decimal(text: &str) -> BigDecimal {
        BigDecimal::from_str(text).unwrap()
    }

    #[test]
    fn measurements_are_rendered_by_the_fast_route() {
        let mut a = Accumulator::default();
        for v in [39.1, 39.5, 40.3, -0.25, 1013.2] {
            a.add(VariableKind::Numeric, &json!(v));
        }
        let n = BigDecimal::from(a.n);
        assert!(nearest(&a.sum, &n, Power::Value).is_some());
        let spread = &n * &a.sumsq - &a.sum * &a.sum;
        let pairs = &n * BigDecimal::from(a.n - 1);
        assert!(nearest(&spread, &pairs, Power::Root).is_some());
        assert_eq!((bits(a.mean()), bits(a.sd())), {
            let (mean, sd) = decimal_route(&a);
            (bits(mean), bits(sd))
        });
    }

    #[test]
    fn an_exact_tie_is_left_to_the_decimal_route() {
        // 1 + 2^-53 lies halfway between 1 and the next f64, and 4 + 2^-50
        // halfway between 4 and the next: no room either way.
        let halfway = decimal("1.00000000000000011102230246251565404236316680908203125");
        assert_eq!(nearest(&halfway, &BigDecimal::from(1), Power::Value), None);
        let square = &halfway * &halfway;
        assert_eq!(nearest(&square, &BigDecimal::from(1), Power::Root), None);
        // Just inside, with room: answered, the nearest of the two.
        let near_one = decimal("1.0000000000000001");
        assert_eq!(
            nearest(&near_one, &BigDecimal::from(1), Power::Value),
            Some(1.0)
        );
        // A power of two: the neighbour below is half as far.
        let below_two = decimal("1.99999999999999995");
        assert_eq!(
            nearest(&below_two, &BigDecimal::from(1), Power::Value),
            Some(2.0)
        );
        assert_eq!(
            nearest(&decimal("-6.25"), &BigDecimal::from(1), Power::Root),
            None,
            "no root of a negative"
        );
        assert_eq!(
            nearest(&decimal("-6.25"), &BigDecimal::from(2), Power::Value),
            Some(-3.125)
        );
    }

    /// Sums of large studies, built directly (n up to 2^40 observations,
    /// sums of up to 19 digits at up to 12 places), from a fixed seed: the
    /// fast route answers nearly all of them, and as the decimal route does.
    #[test]
    fn the_fast_route_answers_large_studies_as_the_decimal_route_does() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (cases, mut answered) = (2_000, 0);
        for _ in 0..cases {
            let n = 2 + next() % (1 << 40);
            let sum = BigDecimal::new((next() as i64).into(), (next() % 12) as i64);
            // At least sum² / n, so that the variance is not negative.
            let spread = BigDecimal::new((next() >> 1).into(), (next() % 24) as i64);
            let sumsq = (&sum * &sum / BigDecimal::from(n)).with_scale(24) + spread;
            let acc = Accumulator {
                n,
                sum,
                sumsq,
                ..Accumulator::default()
            };
            let (mean, sd) = decimal_route(&acc);
            assert_eq!(bits(acc.mean()), bits(mean), "mean of {acc:?}");
            assert_eq!(bits(acc.sd()), bits(sd), "sd of {acc:?}");
            let n = BigDecimal::from(acc.n);
            let pairs = &n * BigDecimal::from(acc.n - 1);
            let fast_mean = nearest(&acc.sum, &n, Power::Value);
            let fast_sd = nearest(
                &(&n * &acc.sumsq - &acc.sum * &acc.sum),
                &pairs,
                Power::Root,
            );
            answered += usize::from(fast_mean.is_some() && fast_sd.is_some());
        }
        assert!(
            answered * 100 >= cases * 95,
            "{answered} of {cases} answered fast"
        );
    }

    fn measurement() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => (-50_000i64..50_000, 0u32..6).prop_map(|(m, s)| m as f64 / 10f64.powi(s as i32)),
            1 => (0i64..4).prop_map(|m| m as f64 / 2.0),
            1 => any::<f64>().prop_filter("a JSON number", |x| x.is_finite()),
            1 => -1e-300f64..1e-300,
        ]
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

        #[test]
        fn the_fast_route_equals_the_decimal_route(values in prop::collection::vec(measurement(), 1..200)) {
            let mut acc = Accumulator::default();
            for v in &values {
                acc.add(VariableKind::Numeric, &json!(v));
            }
            let (mean, sd) = decimal_route(&acc);
            prop_assert_eq!(bits(acc.mean()), bits(mean));
            prop_assert_eq!(bits(acc.sd()), bits(sd));
        }
    }
}
