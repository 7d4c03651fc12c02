//! Human-friendly durations: `30s`, `10m`, `2h`, `1h30m`, `500ms`, `1d`.

use std::time::Duration;

/// The longest duration accepted anywhere (a year), so deadlines never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Parses a duration made of `<number><unit>` parts (units `ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration '{text}' (expected e.g. 30s, 10m, 2h, 1h30m)");
    let trimmed = text.trim();
    // humantime also reads spaces, long names (`1hour`), weeks, months,
    // years, `us` and a bare `0`; digits and these four letters, ending in a
    // unit, leave our five units.
    let ours = trimmed.chars().all(|c| c.is_ascii_digit() || "mshd".contains(c))
        && trimmed.ends_with(|c: char| c.is_ascii_alphabetic());
    let total = humantime::parse_duration(trimmed).ok().filter(|_| ours).ok_or_else(invalid)?;
    if total.is_zero() {
        return Err(format!("duration '{text}' must be longer than zero"));
    }
    if total > MAX_DURATION {
        return Err(format!("duration '{text}' is longer than the maximum of 366d"));
    }
    Ok(total)
}

/// Formats a duration the way `parse_duration` reads it, to the second.
/// Not humantime's formatter: it writes `1day 2h 3m`, which is not our syntax.
pub fn format_duration(duration: Duration) -> String {
    let mut secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_compounds() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_garbage_zero_and_huge() {
        for bad in [
            "",
            "abc",
            "10",
            "s",
            "10x",
            "-5s",
            "1.5h",
            "0s",
            "400d",
            "99999999999999999999s",
            // humantime's own syntax
            "1h 30m",
            "1hour",
            "2w",
            "1y",
            "10us",
            "1M",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["30s", "10m", "2h", "1h30m", "1d2h3m4s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
