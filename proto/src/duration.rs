//! Durations in Go's notation, as Kubernetes users write them (`250ms`,
//! `1.5s`, `1m30s`): in CRDs, annotations and proxy settings alike.

use std::time::Duration;

/// The pattern CRD schemas use to reject what [`parse`] would.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$|^0$";

/// Parses a sequence of decimal numbers each with a unit (`ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`). A bare `0` is zero.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty".to_string());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("'{rest}' has no unit"))?;
        if num_len == 0 {
            return Err(format!("'{rest}' does not start with a number"));
        }
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("'{}' is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => return Err(format!("unknown unit '{other}'")),
        };
        total += number * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    if total > u64::MAX as f64 {
        return Err("too long".to_string());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Formats a duration the way [`parse`] reads it, shortest unit that is exact.
pub fn format(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, per) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns >= per && ns.is_multiple_of(per) {
            return format!("{}{unit}", ns / per);
        }
    }
    if ns == 0 {
        "0".to_string()
    } else {
        format!("{ns}ns")
    }
}

/// serde for `Duration` fields written as Go durations.
pub mod serde_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// serde for `Option<Duration>` fields written as Go durations.
pub mod serde_opt_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_notation() {
        let ok = |s: &str| parse(s).unwrap();
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("2h"), Duration::from_secs(7200));
        assert_eq!(ok("100us"), Duration::from_micros(100));
        assert_eq!(ok("0"), Duration::ZERO);
        for bad in ["", "10", "ms", "1x", "1.2.3s", "-1s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["25ms", "1s", "90s", "2h", "100us", "0", "7ns"] {
            assert_eq!(
                format(parse(s).unwrap()),
                if s == "90s" { "90s" } else { s }
            );
        }
        assert_eq!(format(Duration::from_secs(120)), "2m");
    }
}
