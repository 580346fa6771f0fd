//! Text from outside the service, bounded and clean: one newtype per kind of
//! text a command stores, each built only by `parse`, so that a value past
//! the edge cannot hold a NUL, a control character or more than its bound.
//!
//! Two rules cover every text (`../docs/api.md`, Input handling):
//! - *names* (a unit, a category, a subject label, an attribute key or
//!   string value, a principal investigator, a token's `sub`): at most
//!   [`MAX_NAME_CHARS`] characters, no control character at all;
//! - *free text* (a title, a description, a comment, a reason, the value of
//!   a `text` variable): at most [`MAX_FREE_TEXT_BYTES`] bytes of UTF-8,
//!   no control character but tab, line feed and carriage return.
//!
//! "Control character" is Unicode's general category Cc: U+0000-U+001F,
//! U+007F and U+0080-U+009F ([`char::is_control`]). Everything else of
//! Unicode is accepted; PostgreSQL, JSON and NATS can carry all of it.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// Longest name, in characters.
pub const MAX_NAME_CHARS: usize = 256;
/// Longest free text, in bytes of UTF-8 (16 KiB).
pub const MAX_FREE_TEXT_BYTES: usize = 16 * 1024;

/// Why a text was refused; the message names the rule, never echoes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooManyChars(usize),
    #[error("must be at most {0} bytes")]
    TooManyBytes(usize),
    #[error("must not hold a control character (U+{0:04X} at character {1})")]
    Control(u32, usize),
}

/// Checks a name: 1 or 0 to [`MAX_NAME_CHARS`] characters, no control
/// character.
pub fn check_name(raw: &str, may_be_empty: bool) -> Result<(), TextError> {
    if raw.is_empty() && !may_be_empty {
        return Err(TextError::Empty);
    }
    // A name's bytes are at most four times its characters: a long input is
    // refused before it is walked character by character.
    if raw.len() > 4 * MAX_NAME_CHARS {
        return Err(TextError::TooManyChars(MAX_NAME_CHARS));
    }
    let mut count = 0;
    for (i, c) in raw.chars().enumerate() {
        if c.is_control() {
            return Err(TextError::Control(c as u32, i));
        }
        count += 1;
    }
    if count > MAX_NAME_CHARS {
        return Err(TextError::TooManyChars(MAX_NAME_CHARS));
    }
    Ok(())
}

/// Checks free text: at most [`MAX_FREE_TEXT_BYTES`], no control character
/// but tab, line feed and carriage return.
pub fn check_free_text(raw: &str) -> Result<(), TextError> {
    if raw.len() > MAX_FREE_TEXT_BYTES {
        return Err(TextError::TooManyBytes(MAX_FREE_TEXT_BYTES));
    }
    match raw
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some((i, c)) => Err(TextError::Control(c as u32, i)),
        None => Ok(()),
    }
}

/// At most 64 characters of an outside text, for a message that must name
/// it without echoing megabytes back.
pub fn excerpt(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if out.len() < raw.len() && raw.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: impl Into<String>) -> Result<Self, TextError> {
                let raw = raw.into();
                let check: fn(&str) -> Result<(), TextError> = $check;
                check(&raw)?;
                Ok(Self(raw))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = TextError;

            fn from_str(raw: &str) -> Result<Self, TextError> {
                Self::parse(raw)
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

text_type!(
    /// A subject's label: a non-empty name.
    Label,
    |s| check_name(s, false)
);
text_type!(
    /// A variable's unit: a name, possibly empty.
    Unit,
    |s| check_name(s, true)
);
text_type!(
    /// One category of a categorical variable: a non-empty name.
    Category,
    |s| check_name(s, false)
);
text_type!(
    /// The name of a subject's attribute: a non-empty name.
    AttributeKey,
    |s| check_name(s, false)
);
text_type!(
    /// A string value of a subject's attribute: a name, possibly empty.
    AttributeText,
    |s| check_name(s, true)
);
text_type!(
    /// A person's name, such as a study's principal investigator.
    PersonName,
    |s| check_name(s, false)
);
text_type!(
    /// A principal's id, the `sub` of its token: the actor of its events.
    PrincipalId,
    |s| check_name(s, false)
);
text_type!(
    /// A title, a description or a comment.
    FreeText,
    check_free_text
);
text_type!(
    /// The reason a change gives (its emptiness is a domain rule).
    Reason,
    check_free_text
);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names_refuse_every_control_character_and_long_text() {
        assert!(Label::parse("N1A1").is_ok());
        assert!(Label::parse("Adélie ♀ 🐧").is_ok());
        assert_eq!(Label::parse(""), Err(TextError::Empty));
        assert!(Unit::parse("").is_ok());
        for c in [
            '\0', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}', '\u{9f}',
        ] {
            assert!(
                Label::parse(format!("a{c}b")).is_err(),
                "{:?} is a control character",
                c
            );
        }
        assert!(
            Label::parse("é".repeat(256)).is_ok(),
            "characters, not bytes"
        );
        assert!(Label::parse("é".repeat(257)).is_err());
        assert!(Label::parse("x".repeat(5000)).is_err());
    }

    #[test]
    fn free_text_keeps_tab_and_line_ends_and_counts_bytes() {
        assert!(Reason::parse("typo in\tthe\r\nfield").is_ok());
        assert!(Reason::parse("").is_ok(), "emptiness is a domain rule");
        assert!(Reason::parse("bad\0").is_err());
        assert!(Reason::parse("bell\u{7}").is_err());
        assert!(FreeText::parse("x".repeat(MAX_FREE_TEXT_BYTES)).is_ok());
        assert!(FreeText::parse("x".repeat(MAX_FREE_TEXT_BYTES + 1)).is_err());
        assert!(FreeText::parse("é".repeat(MAX_FREE_TEXT_BYTES / 2 + 1)).is_err());
    }

    #[test]
    fn refusals_do_not_echo_the_text() {
        let e = Label::parse(format!("{}\0", "secret".repeat(10))).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert_eq!(excerpt(&"a".repeat(100)).chars().count(), 65);
        assert_eq!(excerpt("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn deserializing_is_parsing() {
        assert!(serde_json::from_str::<Label>(r#""N1A1""#).is_ok());
        assert!(serde_json::from_str::<Label>(r#""a\u0000b""#).is_err());
        assert!(serde_json::from_str::<Reason>(r#""line\nbreak""#).is_ok());
    }

    proptest! {
        #[test]
        fn a_name_is_accepted_exactly_when_clean_and_short(raw in "\\PC{0,10}[\\x00-\\x1f\\x7f-\\x9f]?\\PC{0,10}") {
            let clean = !raw.chars().any(char::is_control);
            let short = (1..=MAX_NAME_CHARS).contains(&raw.chars().count());
            prop_assert_eq!(Label::parse(raw.clone()).is_ok(), clean && short);
        }

        #[test]
        fn free_text_is_accepted_exactly_when_clean_and_short(raw in "[\\x00-\\x20a-zé\u{85}]{0,40}") {
            let clean = !raw.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'));
            prop_assert_eq!(FreeText::parse(raw.clone()).is_ok(), clean);
        }
    }
}
