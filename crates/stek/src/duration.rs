//! Durations on the command line and in config files: `4s`, `90m`, `1h30m`, `18h`, `2d`.

use std::fmt;
use std::time::Duration;

/// Why a duration could not be read. Each variant carries the input as given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DurationError {
    /// Nothing but white space.
    Empty {
        /// The input.
        input: String,
    },
    /// A leading `-`.
    Negative {
        /// The input.
        input: String,
    },
    /// A part does not start with a digit (`h`, `1h-`).
    ExpectedNumber {
        /// The input.
        input: String,
    },
    /// A number without a unit (`4`): the unit is never guessed.
    MissingUnit {
        /// The input.
        input: String,
    },
    /// A unit other than `s`, `m`, `h` or `d`.
    UnknownUnit {
        /// The input.
        input: String,
        /// The unit found.
        unit: char,
    },
    /// More seconds than fit in 64 bits.
    TooLarge {
        /// The input.
        input: String,
    },
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (input, why) = match self {
            DurationError::Empty { input } => (input, "empty".to_owned()),
            DurationError::Negative { input } => (input, "negative".to_owned()),
            DurationError::ExpectedNumber { input } => (input, "expected a number".to_owned()),
            DurationError::MissingUnit { input } => (input, "missing unit".to_owned()),
            DurationError::UnknownUnit { input, unit } => {
                (input, format!("unknown unit {unit:?} (use s, m, h or d)"))
            }
            DurationError::TooLarge { input } => (input, "too large".to_owned()),
        };
        write!(
            f,
            "invalid duration {input:?}: {why} (examples: 4s, 90m, 1h30m, 18h, 2d)"
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration made of one or more `<number><unit>` parts, units `s`, `m`, `h`, `d`
/// (e.g. `4s`, `1h30m`). A bare number is refused: the unit is never guessed.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    let input = || input.to_owned();
    if s.is_empty() {
        return Err(DurationError::Empty { input: input() });
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative { input: input() });
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::ExpectedNumber { input: input() });
        }
        // Only digits: the parse fails only when the number exceeds 64 bits.
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLarge { input: input() })?;
        rest = &rest[digits..];
        let unit = rest
            .chars()
            .next()
            .ok_or_else(|| DurationError::MissingUnit { input: input() })?;
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => {
                return Err(DurationError::UnknownUnit {
                    input: input(),
                    unit,
                })
            }
        };
        rest = &rest[unit.len_utf8()..];
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| DurationError::TooLarge { input: input() })?;
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds the way [`parse`] reads them: `1h30m`, `4s`, `0s`.
pub fn format(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        for (text, secs) in [
            ("4s", 4),
            ("1h", 3600),
            ("18h", 64800),
            ("1h30m", 5400),
            ("2d", 172_800),
            ("0s", 0),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_secs(64800)), "18h");
        assert_eq!(format(Duration::from_secs(4)), "4s");
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "4",
            "-4s",
            "4x",
            "h",
            "1h-",
            "99999999999999999999s",
            "4 s",
            "1.5h",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_the_input_and_the_problem() {
        assert_eq!(
            parse("4").unwrap_err(),
            DurationError::MissingUnit { input: "4".into() }
        );
        assert_eq!(
            parse("4x").unwrap_err().to_string(),
            "invalid duration \"4x\": unknown unit 'x' (use s, m, h or d) (examples: 4s, 90m, 1h30m, 18h, 2d)"
        );
        assert!(matches!(
            parse("99999999999999999999s"),
            Err(DurationError::TooLarge { .. })
        ));
        assert!(matches!(
            parse("1h-"),
            Err(DurationError::ExpectedNumber { .. })
        ));
        assert!(matches!(
            parse("1.5h"),
            Err(DurationError::UnknownUnit { unit: '.', .. })
        ));
        assert!(matches!(parse("-4s"), Err(DurationError::Negative { .. })));
        assert!(matches!(parse(" "), Err(DurationError::Empty { .. })));
    }
}
