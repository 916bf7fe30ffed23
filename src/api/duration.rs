//! Durations as the API spells them: Go's `time.ParseDuration` syntax (`90s`, `1h30m`, `24h`).
//!
//! The CRD enforces [`DURATION_PATTERN`] on every duration field, so the API server rejects what
//! [`parse`] would; the controller still parses defensively and reports a typed error.

use std::time::Duration;

/// The OpenAPI pattern for a duration field: one or more `<number><unit>` terms, units `ns`, `us`,
/// `ms`, `s`, `m`, `h`, optionally fractional (`1.5h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$";

/// Why a duration string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (expected a duration such as 90s, 30m, 1h30m or 24h)")]
pub struct DurationError {
    input: String,
    why: &'static str,
}

/// Parses a duration in Go's syntax. Negative durations and sign prefixes are not accepted.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |why| DurationError {
        input: input.to_owned(),
        why,
    };
    if input.is_empty() {
        return Err(err("empty"));
    }
    let mut total = 0f64;
    let mut rest = input;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty()
            || num.starts_with('.')
            || num.ends_with('.')
            || num.matches('.').count() > 1
        {
            return Err(err("malformed number"));
        }
        let value: f64 = num.parse().map_err(|_| err("malformed number"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        total += value * scale;
        rest = next;
    }
    Duration::try_from_secs_f64(total).map_err(|_| err("out of range"))
}

/// Formats a duration in the same syntax, as compactly as it can (`1h30m`, `45s`, `250ms`).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in [
            "", "24", "h", "1d", "1.h", ".5h", "1..5h", "-1h", "1h-30m", "1 h", "1hx",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn pattern_and_parser_agree() {
        // The parser must accept everything the pattern lets through to the controller.
        let re = regex_lite::Regex::new(DURATION_PATTERN).unwrap();
        for s in ["24h", "1h30m", "90s", "1.5h", "10ms", "3us", "7ns", "0s"] {
            assert!(re.is_match(s), "{s}");
            assert!(parse(s).is_ok(), "{s}");
        }
        for s in ["1d", "-1h", "", "h", "1 h"] {
            assert!(!re.is_match(s), "{s}");
        }
    }

    #[test]
    fn formats_compactly() {
        assert_eq!(format(Duration::from_secs(5_400)), "1h30m");
        assert_eq!(format(Duration::from_secs(45)), "45s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_secs(86_400)), "24h");
    }
}
