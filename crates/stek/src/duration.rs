//! Durations on the command line and in config files: `4s`, `90m`, `1h30m`, `18h`, `2d`.

use std::fmt;
use std::time::Duration;

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration made of one or more `<number><unit>` parts, units `s`, `m`, `h`, `d`
/// (e.g. `4s`, `1h30m`). A bare number is refused: the unit is never guessed.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    let bad = |why: &str| {
        DurationError(format!(
            "invalid duration {input:?}: {why} (examples: 4s, 90m, 1h30m, 18h, 2d)"
        ))
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.starts_with('-') {
        return Err(bad("negative"));
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("number too large"))?;
        rest = &rest[digits..];
        let unit = rest.chars().next().ok_or_else(|| bad("missing unit"))?;
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit.len_utf8()..];
        total = n
            .checked_mul(mult)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| bad("too large"))?;
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
}
