//! Tracing, access log and tap settings (crate::telemetry).

use super::ConfigError;
use super::settings::Vars;

/// Tracing, access log and tap.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TelemetrySettings {
    pub collector: Option<Collector>,
    /// Share of new traces sampled, 0.0 to 1.0; a caller's decision wins.
    pub sampling: f64,
    pub access_log: Option<AccessLogFormat>,
    /// Whether `/tap` is served at all.
    pub tap: bool,
}

/// Where spans go (`WEFT_PROXY_TRACE_COLLECTOR`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collector {
    /// OTLP/HTTP protobuf: POST `path` on `authority` (host:port).
    Http { authority: String, path: String },
    /// OTLP/gRPC to `http://authority`.
    Grpc { authority: String },
}

impl Collector {
    /// `http://host:4318[/path]` or `grpc://host:4317`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let (scheme, rest) = value
            .split_once("://")
            .ok_or_else(|| "no scheme (http:// or grpc://)".to_string())?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let port_ok = authority
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("'{authority}' is not host:port"));
        }
        match scheme {
            "http" => Ok(Collector::Http {
                authority: authority.to_string(),
                path: if path.is_empty() || path == "/" {
                    "/v1/traces".to_string()
                } else {
                    path.to_string()
                },
            }),
            "grpc" if path.is_empty() || path == "/" => Ok(Collector::Grpc {
                authority: authority.to_string(),
            }),
            "grpc" => Err("a grpc:// collector takes no path".to_string()),
            other => Err(format!("unknown scheme {other}://")),
        }
    }
}

/// The access log's format (`WEFT_PROXY_ACCESS_LOG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line, every field.
    Json,
    /// Apache's combined log format (the client's identity as the user).
    Apache,
}

impl AccessLogFormat {
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim() {
            "json" => Some(Self::Json),
            "apache" => Some(Self::Apache),
            _ => None,
        }
    }
}

impl TelemetrySettings {
    pub(super) fn load(v: &Vars) -> Result<Self, ConfigError> {
        let collector = match v.opt("WEFT_PROXY_TRACE_COLLECTOR") {
            None => None,
            Some(c) => Some(Collector::parse(&c).map_err(|problem| {
                v.invalid(
                    "WEFT_PROXY_TRACE_COLLECTOR",
                    problem,
                    "http://host:4318 (OTLP/HTTP) or grpc://host:4317 (OTLP/gRPC)",
                )
            })?),
        };
        let sampling = match v.get("WEFT_PROXY_TRACE_SAMPLING").trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                return Err(v.invalid(
                    "WEFT_PROXY_TRACE_SAMPLING",
                    "not a ratio between 0 and 1",
                    "a number from 0.0 (none) to 1.0 (every new trace), e.g. 0.01",
                ));
            }
        };
        let access_log = match v.opt("WEFT_PROXY_ACCESS_LOG") {
            None => None,
            Some(f) => Some(AccessLogFormat::parse(&f).ok_or_else(|| {
                v.invalid(
                    "WEFT_PROXY_ACCESS_LOG",
                    "not a log format",
                    "json or apache",
                )
            })?),
        };
        Ok(Self {
            collector,
            sampling,
            access_log,
            tap: v.bool("WEFT_PROXY_TAP")?,
        })
    }
}
