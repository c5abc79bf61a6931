//! The `Code` newtype: the short name after the slash, chosen by the user or generated.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;

/// Longest code a user may choose.
pub const MAX_LEN: usize = 64;

/// Length of a generated code. 62^7 is about 3.5e12, so with a few million links a collision is
/// about one in a million: a handful of retries is plenty.
pub const GENERATED_LEN: usize = 7;

/// Words a code may never be, compared case-insensitively: paths this service, the proxy in front
/// of it or a browser use or may use one day. Some contain a `.` and are refused by the character
/// rule anyway; they are listed so the intent survives a change of that rule.
const RESERVED: &[&str] = &[
    "admin",
    "api",
    "assets",
    "favicon.ico",
    "health",
    "healthz",
    "livez",
    "login",
    "logout",
    "metrics",
    "readyz",
    "robots.txt",
    "sitemap.xml",
    "static",
    "status",
    "your-url",
];

/// A short code: 1 to [`MAX_LEN`] characters of `A-Z a-z 0-9 _ -`, never a reserved word.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Code(String);

/// Why a string is not a [`Code`]; each message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("code must not be empty")]
    Empty,
    #[error("code contains {found:?}; use only letters, digits, `_` and `-`")]
    InvalidChar { found: char },
    #[error("code is {len} characters long; the limit is {MAX_LEN}")]
    TooLong { len: usize },
    #[error("code `{0}` is reserved; choose another")]
    Reserved(String),
}

impl Code {
    /// Parses a user-chosen code.
    pub fn parse(raw: &str) -> Result<Self, CodeError> {
        if raw.is_empty() {
            return Err(CodeError::Empty);
        }
        if let Some(found) = raw.chars().find(|c| !is_code_char(*c)) {
            return Err(CodeError::InvalidChar { found });
        }
        // Every accepted character is ASCII, so bytes and characters agree from here on.
        if raw.len() > MAX_LEN {
            return Err(CodeError::TooLong { len: raw.len() });
        }
        if is_reserved(raw) {
            return Err(CodeError::Reserved(raw.to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Parses the optional code of a create request: missing, empty or blank means "generate one".
    pub fn parse_optional(raw: Option<&str>) -> Result<Option<Self>, CodeError> {
        match raw.map(str::trim) {
            None | Some("") => Ok(None),
            Some(code) => Self::parse(code).map(Some),
        }
    }

    /// A random base62 code of [`GENERATED_LEN`] characters.
    pub fn generate(rng: &mut impl Rng) -> Self {
        loop {
            let code: String = (0..GENERATED_LEN)
                .map(|_| char::from(rng.sample(Alphanumeric)))
                .collect();
            // "healthz" and "metrics" are seven letters too; astronomically unlikely, still refused.
            if !is_reserved(&code) {
                return Self(code);
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_code_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_reserved(code: &str) -> bool {
    RESERVED.iter().any(|word| word.eq_ignore_ascii_case(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet_up_to_the_limit() {
        for ok in ["a", "Z", "0", "_", "-", "my-link_2", &"x".repeat(MAX_LEN)] {
            assert_eq!(Code::parse(ok).map(|c| c.to_string()), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn refuses_bad_codes_naming_the_problem() {
        assert_eq!(Code::parse(""), Err(CodeError::Empty));
        assert_eq!(
            Code::parse("a b"),
            Err(CodeError::InvalidChar { found: ' ' })
        );
        assert_eq!(
            Code::parse("a.b"),
            Err(CodeError::InvalidChar { found: '.' })
        );
        assert_eq!(Code::parse("ü"), Err(CodeError::InvalidChar { found: 'ü' }));
        assert_eq!(
            Code::parse(&"x".repeat(MAX_LEN + 1)),
            Err(CodeError::TooLong { len: MAX_LEN + 1 })
        );
    }

    #[test]
    fn refuses_reserved_words_in_any_case() {
        for word in [
            "api", "API", "Healthz", "your-URL", "static", "metrics", "admin",
        ] {
            assert_eq!(Code::parse(word), Err(CodeError::Reserved(word.to_owned())));
        }
    }

    #[test]
    fn optional_code_treats_blank_as_missing() {
        assert_eq!(Code::parse_optional(None), Ok(None));
        assert_eq!(Code::parse_optional(Some("  ")), Ok(None));
        assert_eq!(
            Code::parse_optional(Some(" abc ")).map(|c| c.map(|c| c.to_string())),
            Ok(Some("abc".to_owned()))
        );
    }

    #[test]
    fn generated_codes_are_seven_base62_characters_that_parse() {
        let mut rng = rand::rng();
        for _ in 0..1_000 {
            let code = Code::generate(&mut rng);
            assert_eq!(code.as_str().len(), GENERATED_LEN);
            assert!(code.as_str().chars().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(Code::parse(code.as_str()), Ok(code));
        }
    }
}
