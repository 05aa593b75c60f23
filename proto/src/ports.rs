//! Port lists as operators write them: `22,8000-8100,9090`.

use std::fmt;
use std::str::FromStr;

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    /// Renders in iptables' `--dport` syntax (`a:b` for ranges).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{entry}' is not a port or port range ({why}); expected e.g. 22,8000-8100")]
pub struct PortListError {
    pub entry: String,
    pub why: &'static str,
}

impl PortRange {
    /// The range as operators write it: `8080` or `8000-8100`.
    pub fn to_list_syntax(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}-{}", self.first, self.last)
        }
    }
}

impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_list_syntax())
    }
}

impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for PortRange {
    type Err = PortListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| PortListError {
            entry: s.to_string(),
            why,
        };
        let port = |p: &str| -> Result<u16, PortListError> {
            let p = p.trim();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("not a number"));
            }
            match p.parse::<u32>() {
                Ok(0) => Err(err("port 0 is not a port")),
                Ok(n) if n <= u16::MAX as u32 => Ok(n as u16),
                _ => Err(err("ports go up to 65535")),
            }
        };
        match s.split_once('-') {
            None => Ok(PortRange::single(port(s)?)),
            Some((a, b)) => {
                let (first, last) = (port(a)?, port(b)?);
                if first > last {
                    return Err(err("range start is above its end"));
                }
                Ok(PortRange { first, last })
            }
        }
    }
}

/// Parses a comma separated list of ports and ranges. Empty entries (from
/// `""` or a trailing comma) are ignored; the result is sorted and merged so
/// that rules come out the same whatever order the operator wrote.
pub fn parse_port_list(s: &str) -> Result<Vec<PortRange>, PortListError> {
    let mut ranges = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<PortRange>, _>>()?;
    ranges.sort();
    Ok(merge(ranges))
}

/// Merges overlapping and adjacent ranges of a sorted list.
pub fn merge(sorted: Vec<PortRange>) -> Vec<PortRange> {
    let mut out: Vec<PortRange> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(prev) if r.first as u32 <= prev.last as u32 + 1 => {
                prev.last = prev.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn parses_ports_and_ranges() {
        assert_eq!(
            parse_port_list("22, 8000-8100,9090").unwrap(),
            vec![r(22, 22), r(8000, 8100), r(9090, 9090)]
        );
    }

    #[test]
    fn empty_entries_are_ignored() {
        assert_eq!(parse_port_list("").unwrap(), vec![]);
        assert_eq!(parse_port_list("80,").unwrap(), vec![r(80, 80)]);
    }

    #[test]
    fn sorts_and_merges_overlaps_and_neighbours() {
        assert_eq!(
            parse_port_list("4191,4190,10-20,15-30,31").unwrap(),
            vec![r(10, 31), r(4190, 4191)]
        );
    }

    #[test]
    fn rejects_what_is_not_a_port() {
        for (input, why) in [
            ("80-x", "not a number"),
            ("http", "not a number"),
            ("0", "port 0 is not a port"),
            ("70000", "ports go up to 65535"),
            ("90-80", "range start is above its end"),
            ("-80", "not a number"),
            ("+80", "not a number"),
        ] {
            let e = parse_port_list(input).unwrap_err();
            assert_eq!(e.why, why, "{input}");
            assert!(e.to_string().contains(input), "{e}");
        }
    }

    #[test]
    fn renders_iptables_syntax() {
        assert_eq!(r(22, 22).to_string(), "22");
        assert_eq!(r(8000, 8100).to_string(), "8000:8100");
    }
}
