//! The Prometheus text exposition of the proxies and the controller, read
//! back: by `weft check`, `weft stat` and `top`, the demo, and the tests.
//! Parsed by the prometheus-parse crate; a histogram comes back as its
//! `_bucket` samples (with their `le` label), as it is written.

use prometheus_parse::{Scrape, Value};

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// A label's value; empty when absent (as PromQL treats it).
    pub fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Whether every `(key, value)` of `want` matches exactly.
    pub fn has(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == *v)
    }
}

/// Every sample of the exposition; lines that are not samples (comments,
/// blanks, anything malformed) are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let Ok(scrape) = Scrape::parse(lines) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(scrape.samples.len());
    for s in scrape.samples {
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), unescape(v)))
            .collect();
        labels.sort();
        let value = match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            Value::Histogram(buckets) => {
                for b in buckets {
                    let mut with_le = labels.clone();
                    with_le.push(("le".to_string(), le(b.less_than)));
                    out.push(Sample {
                        name: format!("{}_bucket", s.metric),
                        labels: with_le,
                        value: b.count,
                    });
                }
                continue;
            }
            Value::Summary(_) => continue,
        };
        out.push(Sample {
            name: s.metric,
            labels,
            value,
        });
    }
    out
}

/// The sum of the samples of metric `name` whose labels include every
/// `(key, value)` of `labels`.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse(text)
        .iter()
        .filter(|s| s.name == name && s.has(labels))
        .map(|s| s.value)
        .sum()
}

/// A label value as written (`\\`, `\"` and `\n` escaped), as it is.
fn unescape(v: &str) -> String {
    if !v.contains('\\') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some(e @ ('\\' | '"'))) => {
                out.push(e);
                chars.next();
            }
            (c, _) => out.push(c),
        }
    }
    out
}

/// A bucket bound as the exposition writes it.
fn le(bound: f64) -> String {
    if bound.is_infinite() {
        "+Inf".to_string()
    } else {
        let s = format!("{bound}");
        if s.contains('.') { s } else { format!("{s}.0") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_labels_histograms_and_timestamps() {
        let text = "# HELP request_total HTTP requests received.\n\
            # TYPE request_total counter\n\
            request_total{direction=\"inbound\",authority=\"a\\\"b\",tls=\"true\"} 12\n\
            request_total{direction=\"inbound\",tls=\"false\"} 3\n\
            # TYPE response_latency_ms histogram\n\
            response_latency_ms_bucket{le=\"1.0\"} 1\n\
            response_latency_ms_bucket{le=\"+Inf\"} 3 1700000000000\n\
            response_latency_ms_sum 4.5\n\
            response_latency_ms_count 3\n\
            config_version 5\n\
            bad line here\n";
        let s = parse(text);
        let by = |name: &str| s.iter().filter(|x| x.name == name).count();
        assert_eq!(
            (by("request_total"), by("response_latency_ms_bucket")),
            (2, 2),
            "{s:?}"
        );
        let r = s.iter().find(|x| x.label("tls") == "true").unwrap();
        assert_eq!(r.label("authority"), "a\"b");
        assert_eq!(r.label("missing"), "");
        assert_eq!(r.value, 12.0);
        let inf = s.iter().find(|x| x.label("le") == "+Inf").unwrap();
        assert_eq!(inf.value, 3.0);
        assert_eq!(
            sum(text, "request_total", &[("direction", "inbound")]),
            15.0
        );
        assert_eq!(sum(text, "request_total", &[("tls", "true")]), 12.0);
        // Exact values: "true" does not match "true-ish", nor a label's substring.
        assert_eq!(sum(text, "request_total", &[("tls", "tru")]), 0.0);
        assert_eq!(sum(text, "config_version", &[]), 5.0);
    }
}
