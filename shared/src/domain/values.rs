//! Value objects of the domain: identifiers and definitions that cannot exist
//! in an invalid form past the edge, and the check of one recorded value
//! against the variable it belongs to.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::text::{check_free_text, excerpt, AttributeKey, AttributeText, Category, Unit};

/// A study code: `[A-Za-z0-9._-]{1,64}`, unique across the service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[A-Za-z0-9._-]{1,64}$")]
pub struct StudyCode(String);

impl StudyCode {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must match [A-Za-z0-9._-]{1,64}".to_owned())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for StudyCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for StudyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A variable name: `[a-z][a-z0-9_]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, pattern = "^[a-z][a-z0-9_]{0,63}$")]
pub struct VariableName(String);

impl VariableName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut bytes = raw.bytes();
        let ok = raw.len() <= 64
            && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must match [a-z][a-z0-9_]{0,63}".to_owned())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for VariableName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for VariableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a variable measures, which fixes the JSON type of its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VariableKind {
    Numeric,
    Integer,
    Categorical,
    Text,
    Date,
    Boolean,
}

/// A declared variable of a study, as its events and states hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub name: VariableName,
    pub kind: VariableKind,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub categories: Option<Vec<String>>,
}

/// A variable as a command declares it: every text already parsed; the
/// rules that span fields are checked by [`NewVariable::check`].
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVariable {
    pub name: VariableName,
    pub kind: VariableKind,
    #[serde(default)]
    pub unit: Option<Unit>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    #[serde(default)]
    pub categories: Option<Vec<Category>>,
}

/// Most categories of one variable.
pub const MAX_CATEGORIES: usize = 1_000;

impl NewVariable {
    /// Checks the rules that span fields: range only for numbers, categories
    /// exactly for categorical variables. Returns one message per breach.
    pub fn check(&self) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        let numeric = matches!(self.kind, VariableKind::Numeric | VariableKind::Integer);
        if !numeric && (self.min.is_some() || self.max.is_some()) {
            errors.push((
                "min",
                "min and max apply only to numeric and integer variables".to_owned(),
            ));
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                errors.push(("max", "max must not be below min".to_owned()));
            }
        }
        match (&self.categories, self.kind) {
            (None, VariableKind::Categorical) => {
                errors.push((
                    "categories",
                    "a categorical variable needs categories".to_owned(),
                ));
            }
            (Some(categories), VariableKind::Categorical) => {
                if categories.is_empty() || categories.len() > MAX_CATEGORIES {
                    errors.push((
                        "categories",
                        format!("must hold between 1 and {MAX_CATEGORIES} categories"),
                    ));
                }
                let mut seen = std::collections::HashSet::new();
                if let Some(c) = categories.iter().find(|c| !seen.insert(c.as_str())) {
                    errors.push((
                        "categories",
                        format!("category {:?} is repeated", excerpt(c)),
                    ));
                }
            }
            (Some(_), _) => {
                errors.push((
                    "categories",
                    "categories apply only to categorical variables".to_owned(),
                ));
            }
            (None, _) => {}
        }
        errors
    }

    /// The variable as events hold it.
    pub fn to_variable(&self) -> Variable {
        Variable {
            name: self.name.clone(),
            kind: self.kind,
            unit: self.unit.as_ref().map(|u| u.as_str().to_owned()),
            min: self.min,
            max: self.max,
            categories: self
                .categories
                .as_ref()
                .map(|c| c.iter().map(|c| c.as_str().to_owned()).collect()),
        }
    }
}

/// Most attributes of one subject.
pub const MAX_ATTRIBUTES: usize = 100;

/// A subject's attributes: at most [`MAX_ATTRIBUTES`], each named by an
/// [`AttributeKey`] and holding a string ([`AttributeText`]), a number, a
/// boolean or null.
#[derive(Debug, Clone, PartialEq, Default, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct Attributes(Map<String, Value>);

impl Attributes {
    pub fn parse(raw: Map<String, Value>) -> Result<Self, (String, String)> {
        if raw.len() > MAX_ATTRIBUTES {
            return Err((
                String::new(),
                format!("at most {MAX_ATTRIBUTES} attributes"),
            ));
        }
        for (key, value) in &raw {
            AttributeKey::parse(key.as_str()).map_err(|e| (excerpt(key), e.to_string()))?;
            match value {
                Value::Array(_) | Value::Object(_) => {
                    return Err((
                        key.clone(),
                        "must be a string, number, boolean or null".to_owned(),
                    ))
                }
                Value::String(s) => {
                    AttributeText::parse(s.as_str()).map_err(|e| (key.clone(), e.to_string()))?;
                }
                _ => {}
            }
        }
        Ok(Self(raw))
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Map::deserialize(d)?;
        Self::parse(raw).map_err(|(key, message)| {
            serde::de::Error::custom(if key.is_empty() {
                message
            } else {
                format!("attribute {key:?} {message}")
            })
        })
    }
}

/// The values of an observation or a correction: variable names to a
/// number, a string (free text), a boolean or null. Whether each fits its
/// variable is the domain's to decide ([`Variable::check_value`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct ObservationValues(BTreeMap<VariableName, Value>);

impl ObservationValues {
    pub fn parse(raw: BTreeMap<VariableName, Value>) -> Result<Self, (String, String)> {
        for (name, value) in &raw {
            match value {
                Value::Array(_) | Value::Object(_) => {
                    return Err((
                        name.to_string(),
                        "must be a number, string, boolean or null".to_owned(),
                    ))
                }
                Value::String(s) => {
                    check_free_text(s).map_err(|e| (name.to_string(), e.to_string()))?;
                }
                _ => {}
            }
        }
        Ok(Self(raw))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&VariableName, &Value)> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values as events hold them.
    pub fn to_map(&self) -> BTreeMap<String, Value> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
            .collect()
    }
}

impl<'de> Deserialize<'de> for ObservationValues {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::deserialize(d)?;
        Self::parse(raw)
            .map_err(|(name, message)| serde::de::Error::custom(format!("{name}: {message}")))
    }
}

impl Variable {
    /// Checks one recorded value against the kind, range and categories.
    /// `null` (measured as missing) always fits.
    pub fn check_value(&self, value: &Value) -> Result<(), String> {
        if value.is_null() {
            return Ok(());
        }
        match self.kind {
            VariableKind::Numeric => {
                let n = value.as_f64().ok_or("must be a number")?;
                self.check_range(n)
            }
            VariableKind::Integer => {
                if !(value.is_i64() || value.is_u64()) {
                    return Err("must be an integer".to_owned());
                }
                self.check_range(value.as_f64().unwrap_or(f64::NAN))
            }
            VariableKind::Categorical => {
                let s = value.as_str().ok_or("must be a string naming a category")?;
                let categories = self.categories.as_deref().unwrap_or_default();
                if categories.iter().any(|c| c == s) {
                    Ok(())
                } else {
                    Err(format!(
                        "{:?} is not one of the declared categories",
                        excerpt(s)
                    ))
                }
            }
            VariableKind::Text => match value.as_str() {
                Some(s) => check_free_text(s).map_err(|e| e.to_string()),
                None => Err("must be a string".to_owned()),
            },
            VariableKind::Date => {
                let s = value.as_str().ok_or("must be a YYYY-MM-DD string")?;
                if s.len() == 10 && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
                    Ok(())
                } else {
                    Err("must be a valid YYYY-MM-DD date".to_owned())
                }
            }
            VariableKind::Boolean => value
                .as_bool()
                .map(|_| ())
                .ok_or_else(|| "must be true or false".to_owned()),
        }
    }

    fn check_range(&self, n: f64) -> Result<(), String> {
        if let Some(min) = self.min {
            if n < min {
                return Err(format!("{n} is below the minimum {min}"));
            }
        }
        if let Some(max) = self.max {
            if n > max {
                return Err(format!("{n} is above the maximum {max}"));
            }
        }
        Ok(())
    }
}

/// The meaning of a reviewer's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureMeaning {
    Reviewed,
    Approved,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn var(kind: VariableKind) -> Variable {
        Variable {
            name: VariableName::parse("x").unwrap(),
            kind,
            unit: None,
            min: None,
            max: None,
            categories: None,
        }
    }

    #[test]
    fn study_code_accepts_the_documented_alphabet_only() {
        assert!(StudyCode::parse("PAL0708").is_ok());
        assert!(StudyCode::parse("NYC-ASOS-2013.r_01").is_ok());
        assert!(StudyCode::parse("").is_err());
        assert!(StudyCode::parse("a b").is_err());
        assert!(StudyCode::parse(&"a".repeat(65)).is_err());
        assert!(StudyCode::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn variable_name_must_start_with_a_lowercase_letter() {
        assert!(VariableName::parse("body_mass_g").is_ok());
        assert!(VariableName::parse("Body").is_err());
        assert!(VariableName::parse("1x").is_err());
        assert!(VariableName::parse("").is_err());
        assert!(VariableName::parse(&format!("a{}", "b".repeat(63))).is_ok());
        assert!(VariableName::parse(&format!("a{}", "b".repeat(64))).is_err());
    }

    #[test]
    fn values_must_fit_kind_range_and_categories() {
        let mut numeric = var(VariableKind::Numeric);
        numeric.min = Some(0.0);
        numeric.max = Some(10.0);
        assert!(numeric.check_value(&json!(3.5)).is_ok());
        assert!(numeric.check_value(&json!(3)).is_ok());
        assert!(numeric.check_value(&json!(11)).is_err());
        assert!(numeric.check_value(&json!("3")).is_err());
        assert!(numeric.check_value(&Value::Null).is_ok());

        let integer = var(VariableKind::Integer);
        assert!(integer.check_value(&json!(3)).is_ok());
        assert!(integer.check_value(&json!(3.5)).is_err());

        let mut categorical = var(VariableKind::Categorical);
        categorical.categories = Some(vec!["MALE".into(), "FEMALE".into()]);
        assert!(categorical.check_value(&json!("MALE")).is_ok());
        assert!(categorical.check_value(&json!("male")).is_err());

        let date = var(VariableKind::Date);
        assert!(date.check_value(&json!("2007-11-11")).is_ok());
        assert!(date.check_value(&json!("2007-02-30")).is_err());
        assert!(date.check_value(&json!("2007-1-1")).is_err());

        assert!(var(VariableKind::Boolean).check_value(&json!(true)).is_ok());
        assert!(var(VariableKind::Boolean)
            .check_value(&json!("yes"))
            .is_err());
        assert!(var(VariableKind::Text)
            .check_value(&json!("a note"))
            .is_ok());
        assert!(var(VariableKind::Text).check_value(&json!(1)).is_err());
    }

    fn new_var(kind: VariableKind) -> NewVariable {
        NewVariable {
            name: VariableName::parse("x").unwrap(),
            kind,
            unit: None,
            min: None,
            max: None,
            categories: None,
        }
    }

    #[test]
    fn variable_definitions_are_checked_across_fields() {
        let mut categorical = new_var(VariableKind::Categorical);
        assert!(!categorical.check().is_empty());
        let a = Category::parse("a").unwrap();
        categorical.categories = Some(vec![a.clone(), a.clone()]);
        assert!(!categorical.check().is_empty());
        categorical.categories = Some(vec![a; MAX_CATEGORIES + 1]);
        assert!(!categorical.check().is_empty());
        let mut text = new_var(VariableKind::Text);
        text.min = Some(1.0);
        assert!(!text.check().is_empty());
        let mut numeric = new_var(VariableKind::Numeric);
        numeric.min = Some(2.0);
        numeric.max = Some(1.0);
        assert!(!numeric.check().is_empty());
        assert!(new_var(VariableKind::Numeric).check().is_empty());
    }

    #[test]
    fn attributes_and_values_hold_scalars_of_clean_text_only() {
        let ok = json!({"sex": "FEMALE", "mass": 3.5, "tagged": true, "ring": null});
        assert!(Attributes::parse(ok.as_object().unwrap().clone()).is_ok());
        for bad in [
            r#"{"a\u0000": 1}"#,
            r#"{"": 1}"#,
            r#"{"k": "nul\u0000"}"#,
            r#"{"k": [1]}"#,
            r#"{"k": {"x": 1}}"#,
        ] {
            assert!(serde_json::from_str::<Attributes>(bad).is_err(), "{bad}");
        }
        let many: Map<String, Value> = (0..=MAX_ATTRIBUTES)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert!(Attributes::parse(many).is_err());
        assert!(serde_json::from_str::<ObservationValues>(r#"{"x": "a\tb", "y": 1}"#).is_ok());
        assert!(serde_json::from_str::<ObservationValues>(r#"{"x": "a\u0000b"}"#).is_err());
        assert!(serde_json::from_str::<ObservationValues>(r#"{"x": [1]}"#).is_err());
        assert!(serde_json::from_str::<ObservationValues>(r#"{"X": 1}"#).is_err());
    }

    proptest! {
        #[test]
        fn study_code_parsing_matches_its_pattern(raw in "\\PC{0,70}") {
            let expected = (1..=64).contains(&raw.len())
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            prop_assert_eq!(StudyCode::parse(&raw).is_ok(), expected);
        }

        #[test]
        fn variable_name_parsing_matches_its_pattern(raw in "[a-zA-Z0-9_ -]{0,70}") {
            let expected = !raw.is_empty() && raw.len() <= 64
                && raw.starts_with(|c: char| c.is_ascii_lowercase())
                && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            prop_assert_eq!(VariableName::parse(&raw).is_ok(), expected);
        }

        #[test]
        fn numeric_range_is_inclusive(min in -1e6f64..1e6, span in 0f64..1e6, x in -3e6f64..3e6) {
            let mut v = var(VariableKind::Numeric);
            v.min = Some(min);
            v.max = Some(min + span);
            prop_assert_eq!(v.check_value(&json!(x)).is_ok(), x >= min && x <= min + span);
        }
    }
}
