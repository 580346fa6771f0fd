//! Value objects of the domain: identifiers and definitions that cannot exist
//! in an invalid form past the edge, and the check of one recorded value
//! against the variable it belongs to.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// A declared variable of a study, validated as a whole by [`Variable::check`].
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

impl Variable {
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
        if let Some(unit) = &self.unit {
            if unit.len() > 64 {
                errors.push(("unit", "must be at most 64 bytes".to_owned()));
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
                let mut seen = std::collections::HashSet::new();
                if categories.is_empty() || categories.len() > 1000 {
                    errors.push((
                        "categories",
                        "must hold between 1 and 1000 categories".to_owned(),
                    ));
                }
                for c in categories {
                    if c.is_empty() || c.len() > 256 {
                        errors.push(("categories", "a category is 1 to 256 bytes".to_owned()));
                    } else if !seen.insert(c.as_str()) {
                        errors.push(("categories", format!("category {c:?} is repeated")));
                    }
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
                    Err(format!("{s:?} is not one of the declared categories"))
                }
            }
            VariableKind::Text => match value.as_str() {
                Some(s) if s.len() <= 10_000 => Ok(()),
                Some(_) => Err("must be at most 10000 bytes".to_owned()),
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

    #[test]
    fn variable_definitions_are_checked_across_fields() {
        let mut categorical = var(VariableKind::Categorical);
        assert!(!categorical.check().is_empty());
        categorical.categories = Some(vec!["a".into(), "a".into()]);
        assert!(!categorical.check().is_empty());
        let mut text = var(VariableKind::Text);
        text.min = Some(1.0);
        assert!(!text.check().is_empty());
        let mut numeric = var(VariableKind::Numeric);
        numeric.min = Some(2.0);
        numeric.max = Some(1.0);
        assert!(!numeric.check().is_empty());
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
