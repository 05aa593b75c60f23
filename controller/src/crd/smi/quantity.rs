//! Kubernetes quantities (`500m`, `1`, `1.5k`, `2Ki`, `1e3`), the form of
//! a TrafficSplit v1alpha1 weight, read exactly: as whole nano-units.

/// A quantity's value in nano-units (1 = 1,000,000,000), rounded up to a
/// nano-unit as Kubernetes does. Negative values are refused: a weight
/// cannot be one.
pub fn nanos(q: &str) -> Result<i128, String> {
    let bad = |why: &str| format!("'{q}' is not a quantity: {why}");
    let s = q.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(bad("negative"));
    }
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return Err(bad("no digits"));
    }
    // value = digits x 10^(exp10 - frac.len()) x 2^exp2, in units.
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| bad("bad exponent"))?;
            (exp, 0)
        }
        _ => return Err(bad("unknown suffix")),
    };
    let digits: String = [whole, frac].concat();
    let too_large = || bad("too large");
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| too_large())?
    };
    let scale = exp10 + 9 - frac.len() as i32;
    let mut value = mantissa
        .checked_mul(1i128.checked_shl(exp2).ok_or_else(too_large)?)
        .ok_or_else(too_large)?;
    if scale >= 0 {
        value = value
            .checked_mul(10i128.checked_pow(scale as u32).ok_or_else(too_large)?)
            .ok_or_else(too_large)?;
    } else {
        let div = 10i128.checked_pow((-scale) as u32).ok_or_else(too_large)?;
        // Finer than a nano-unit: rounded up.
        value = value / div + i128::from(value % div != 0);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_and_fractions_read_exactly() {
        let unit = 1_000_000_000;
        for (q, want) in [
            ("1", unit),
            ("500m", unit / 2),
            ("1500m", unit * 3 / 2),
            ("0.5", unit / 2),
            (".25", unit / 4),
            ("10", 10 * unit),
            ("1k", 1000 * unit),
            ("2Ki", 2048 * unit),
            ("1e3", 1000 * unit),
            ("5E-1", unit / 2),
            ("1n", 1),
            ("+7", 7 * unit),
            ("0", 0),
        ] {
            assert_eq!(nanos(q), Ok(want), "{q}");
        }
        // Below a nano-unit: rounded up, as Kubernetes does.
        assert_eq!(nanos("0.1n"), Ok(1));
    }

    #[test]
    fn what_is_not_a_weight_is_refused() {
        for q in [
            "-1",
            "",
            "m",
            "1x",
            "1.2.3",
            "abc",
            "1e",
            "99999999999999999999999999999E",
        ] {
            assert!(nanos(q).is_err(), "{q}");
        }
    }
}
