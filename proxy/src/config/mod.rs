//! The proxy's settings: environment variables, each also a `--flag`,
//! in documented structs per part:
//!
//! ```text
//! listeners.rs   where it listens; how each listener learns the original destination
//! discovery.rs   who it serves (the workload); the controller or a static file
//! identity.rs    where its certificate comes from (mesh identity)
//! balancer.rs    how endpoints are chosen and judged (failure accrual)
//! limits.rs      limits against overload and abusive clients
//! telemetry.rs   tracing, access log, tap
//! settings.rs    every variable with its default and help; parsing
//! ```
//!
//! Settings are read through a [`Source`] so tests pass a map and never
//! touch the process environment. Every bad value is reported with the
//! variable, the value, what is wrong and what is expected.
//!
//! Why not clap, as the other binaries: the proxy is configured by the
//! environment the injector writes, and tests inject a map of variables.
//! clap's `env` fallback reads the process environment only, so it cannot
//! be handed a map; and a flag-first parser would make every setting's
//! home a flag when its home is the variable. `--flags` are accepted as a
//! layer over the variables instead ([`Config::from_args`]).

pub mod balancer;
pub mod discovery;
pub mod identity;
pub mod limits;
pub mod listeners;
pub mod settings;
pub mod telemetry;

use std::collections::HashMap;
use std::time::Duration;

use weft_proto::ports::{PortRange, parse_port_list};

pub use balancer::{BalanceMode, BalancerSettings};
pub use discovery::{Discovery, Workload};
pub use identity::IdentityConfig;
pub use limits::Limits;
pub use listeners::Listeners;
use settings::Vars;
pub use settings::{SETTINGS, Setting};
pub use telemetry::TelemetrySettings;

/// Where settings come from: the environment, or a map in tests.
pub trait Source {
    fn get(&self, var: &str) -> Option<String>;
}

/// The process environment.
pub struct Env;

impl Source for Env {
    fn get(&self, var: &str) -> Option<String> {
        std::env::var(var).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, var: &str) -> Option<String> {
        HashMap::get(self, var).cloned()
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, var: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == var)
            .map(|(_, v)| v.to_string())
    }
}

/// Flags given on the command line, over another source.
struct Layered<'a> {
    flags: HashMap<String, String>,
    below: &'a dyn Source,
}

impl Source for Layered<'_> {
    fn get(&self, var: &str) -> Option<String> {
        self.flags.get(var).cloned().or_else(|| self.below.get(var))
    }
}

/// The proxy's configuration. See [`SETTINGS`] for each variable.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub listeners: Listeners,
    pub workload: Workload,
    pub discovery: Discovery,
    /// Mesh identity, when configured.
    pub identity: Option<IdentityConfig>,
    pub balancer: BalancerSettings,
    pub limits: Limits,
    pub telemetry: TelemetrySettings,
    pub log: String,
    /// Worker threads; `None` means derive from the CPU quota.
    pub cores: Option<usize>,
    /// How long a client's first bytes are waited for.
    pub detect_timeout: Duration,
    /// Destination ports proxied as opaque TCP without detection.
    pub opaque_ports: Vec<PortRange>,
    pub connect_timeout: Duration,
    /// Opaque TCP moves with splice(2).
    pub splice: bool,
    /// Opaque TCP connections idle this long are closed. Zero: never.
    pub tcp_idle_timeout: Duration,
    pub shutdown_grace_period: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{var}={value:?}: {problem}; expected {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        problem: String,
        expected: &'static str,
    },
    #[error("unknown flag {0}; run weft-proxy --help to list the settings")]
    UnknownFlag(String),
    #[error("flag {0} needs a value")]
    MissingValue(String),
    #[error(
        "WEFT_PROXY_CONTROLLER_ADDR and WEFT_PROXY_CONFIG are both set; set one: the controller, or a static file"
    )]
    ControllerAndFile,
    /// `--help` was asked for: not an error, but no config either.
    #[error("help requested")]
    Help,
}

impl Config {
    /// Reads every setting from `src`, applying defaults.
    pub fn load(src: &dyn Source) -> Result<Self, ConfigError> {
        let v = Vars(src);
        Ok(Config {
            listeners: Listeners::load(&v)?,
            workload: Workload::load(&v),
            discovery: Discovery::load(&v)?,
            identity: IdentityConfig::load(&v)?,
            balancer: BalancerSettings::load(&v)?,
            limits: Limits::load(&v)?,
            telemetry: TelemetrySettings::load(&v)?,
            log: v.get("WEFT_PROXY_LOG"),
            cores: v
                .opt("WEFT_PROXY_CORES")
                .map(|c| parse_cores(&c))
                .transpose()?,
            detect_timeout: v.duration("WEFT_PROXY_DETECT_TIMEOUT")?,
            opaque_ports: parse_port_list(&v.get("WEFT_PROXY_OPAQUE_PORTS")).map_err(|e| {
                v.invalid(
                    "WEFT_PROXY_OPAQUE_PORTS",
                    e.to_string(),
                    "a comma separated list of ports and ranges",
                )
            })?,
            connect_timeout: v.duration("WEFT_PROXY_CONNECT_TIMEOUT")?,
            splice: v.bool("WEFT_PROXY_SPLICE")?,
            tcp_idle_timeout: v.duration("WEFT_PROXY_TCP_IDLE_TIMEOUT")?,
            shutdown_grace_period: v.duration("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD")?,
        })
    }

    /// Reads settings from `--flags` (e.g. `--inbound-addr 0.0.0.0:4143` or
    /// `--inbound-addr=...` for `WEFT_PROXY_INBOUND_ADDR`), falling back to
    /// `env`. Flags win.
    pub fn from_args(
        args: impl IntoIterator<Item = String>,
        env: &dyn Source,
    ) -> Result<Self, ConfigError> {
        let mut flags = HashMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "--help" || arg == "-h" {
                return Err(ConfigError::Help);
            }
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(ConfigError::UnknownFlag(arg));
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = args
                        .next()
                        .ok_or_else(|| ConfigError::MissingValue(arg.clone()))?;
                    (flag.to_string(), v)
                }
            };
            let var = format!("WEFT_PROXY_{}", name.replace('-', "_").to_uppercase());
            if !SETTINGS.iter().any(|s| s.var == var) {
                return Err(ConfigError::UnknownFlag(format!("--{name}")));
            }
            flags.insert(var, value);
        }
        Config::load(&Layered { flags, below: env })
    }

    /// "namespace/name" of the pod, when both are known.
    pub fn pod(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.workload.namespace.as_ref()?,
            self.workload.pod_name.as_ref()?
        ))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::load(&HashMap::new()).expect("defaults parse")
    }
}

/// `--help` text: every variable, its flag, default and meaning.
pub fn help() -> String {
    let mut out = String::from(
        "weft-proxy: Weft's transparent sidecar proxy\n\n\
         Every setting is an environment variable and also a --flag:\n\n",
    );
    for s in SETTINGS {
        let flag = s
            .var
            .trim_start_matches("WEFT_PROXY_")
            .to_lowercase()
            .replace('_', "-");
        let default = if s.default.is_empty() {
            String::new()
        } else {
            format!(" (default {})", s.default)
        };
        out.push_str(&format!(
            "  {}, --{flag}{default}\n      {}\n",
            s.var, s.help
        ));
    }
    out
}

fn parse_cores(value: &str) -> Result<usize, ConfigError> {
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::Invalid {
            var: "WEFT_PROXY_CORES",
            value: value.to_string(),
            problem: "not a positive whole number".to_string(),
            expected: "a number of worker threads of at least 1",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orig_dst::OrigDst;
    use telemetry::{AccessLogFormat as Format, Collector};

    #[test]
    fn every_setting_is_documented() {
        let docs = include_str!("../../../docs/proxy.md");
        let missing: Vec<&str> = settings::SETTINGS
            .iter()
            .map(|s| s.var)
            .filter(|var| !docs.contains(&format!("`{var}`")))
            .collect();
        assert!(missing.is_empty(), "not in docs/proxy.md: {missing:?}");
    }

    #[test]
    fn defaults_match_the_design() {
        let c = Config::default();
        assert_eq!(c.listeners.inbound_addr, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(c.listeners.outbound_addr, "127.0.0.1:4140".parse().unwrap());
        assert_eq!(c.listeners.outbound_ipv6_addr, None);
        assert_eq!(c.listeners.admin_addr, "0.0.0.0:4191".parse().unwrap());
        assert_eq!(c.listeners.inbound_orig_dst, OrigDst::Redirected);
        assert_eq!(c.listeners.outbound_orig_dst, OrigDst::Redirected);
        assert_eq!(c.telemetry.collector, None);
        assert_eq!(c.telemetry.sampling, 0.01);
        assert!(c.telemetry.access_log.is_none() && !c.telemetry.tap);
        assert_eq!(c.limits.max_connections, 8_000);
        assert_eq!(c.limits.max_in_flight_requests, 10_000);
        assert_eq!(c.limits.max_header_bytes, 64 * 1024);
        assert_eq!(c.limits.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.limits.http_idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.detect_timeout, Duration::from_millis(250));
        assert!(c.detect_timeout < Duration::from_secs(1));
        assert_eq!(c.cores, None);
        assert_eq!(c.workload, Workload::default());
        assert!(c.opaque_ports.iter().any(|r| r.contains(3306)));
    }

    #[test]
    fn reads_every_variable() {
        let src = [
            ("WEFT_PROXY_INBOUND_ADDR", "[::]:5143"),
            ("WEFT_PROXY_OUTBOUND_ADDR", "127.0.0.1:5140"),
            ("WEFT_PROXY_OUTBOUND_IPV6_ADDR", "[::1]:5140"),
            ("WEFT_PROXY_ADMIN_ADDR", "127.0.0.1:5191"),
            ("WEFT_PROXY_NAMESPACE", "shop"),
            ("WEFT_PROXY_POD_NAME", "orders-0"),
            ("WEFT_PROXY_SERVICE_ACCOUNT", "orders"),
            ("WEFT_PROXY_LOG", "debug"),
            ("WEFT_PROXY_CORES", "3"),
            ("WEFT_PROXY_DETECT_TIMEOUT", "100ms"),
            ("WEFT_PROXY_OPAQUE_PORTS", "9000-9010"),
            ("WEFT_PROXY_CONNECT_TIMEOUT", "2s"),
            ("WEFT_PROXY_SPLICE", "false"),
            (
                "WEFT_PROXY_CONTROLLER_ADDR",
                "weft-controller.weft.svc:8086",
            ),
            ("WEFT_PROXY_DISCOVERY_WAIT", "500ms"),
            ("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "1m"),
            ("WEFT_PROXY_INBOUND_ORIG_DST", "127.0.0.2:8080"),
            ("WEFT_PROXY_OUTBOUND_ORIG_DST", "198.19.0.10:80"),
            ("WEFT_PROXY_TRACE_COLLECTOR", "grpc://otel.monitoring:4317"),
            ("WEFT_PROXY_TRACE_SAMPLING", "0.5"),
            ("WEFT_PROXY_ACCESS_LOG", "apache"),
            ("WEFT_PROXY_TAP", "true"),
        ];
        let c = Config::load(&src).unwrap();
        assert_eq!(c.listeners.inbound_addr, "[::]:5143".parse().unwrap());
        assert_eq!(
            c.listeners.outbound_ipv6_addr,
            Some("[::1]:5140".parse().unwrap())
        );
        assert_eq!(c.workload.namespace.as_deref(), Some("shop"));
        assert_eq!(c.workload.pod_name.as_deref(), Some("orders-0"));
        assert_eq!(c.workload.service_account.as_deref(), Some("orders"));
        assert_eq!(c.log, "debug");
        assert_eq!(c.cores, Some(3));
        assert_eq!(c.detect_timeout, Duration::from_millis(100));
        assert_eq!(
            c.opaque_ports,
            vec![PortRange {
                first: 9000,
                last: 9010
            }]
        );
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert!(!c.splice);
        assert_eq!(
            c.discovery.controller_addr.as_deref(),
            Some("weft-controller.weft.svc:8086")
        );
        assert_eq!(c.discovery.wait, Duration::from_millis(500));
        assert_eq!(c.pod().as_deref(), Some("shop/orders-0"));
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(60));
        assert_eq!(
            c.listeners.inbound_orig_dst,
            OrigDst::Fixed("127.0.0.2:8080".parse().unwrap())
        );
        assert_eq!(
            c.listeners.outbound_orig_dst,
            OrigDst::Fixed("198.19.0.10:80".parse().unwrap())
        );
        assert_eq!(
            c.telemetry,
            TelemetrySettings {
                collector: Some(Collector::Grpc {
                    authority: "otel.monitoring:4317".into()
                }),
                sampling: 0.5,
                access_log: Some(Format::Apache),
                tap: true,
            }
        );
    }

    #[test]
    fn flags_override_the_environment() {
        let env = [
            ("WEFT_PROXY_ADMIN_ADDR", "127.0.0.1:1"),
            ("WEFT_PROXY_LOG", "warn"),
        ];
        let args = ["--admin-addr", "127.0.0.1:2", "--cores=2"].map(String::from);
        let c = Config::from_args(args, &env).unwrap();
        assert_eq!(c.listeners.admin_addr, "127.0.0.1:2".parse().unwrap());
        assert_eq!(c.cores, Some(2));
        assert_eq!(c.log, "warn");
    }

    #[test]
    fn bad_values_name_the_variable_and_what_is_expected() {
        let err = Config::load(&[("WEFT_PROXY_INBOUND_ADDR", "4143")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("WEFT_PROXY_INBOUND_ADDR=\"4143\": "),
            "{msg}"
        );
        assert!(msg.contains("expected an IP:PORT socket address"), "{msg}");

        let err = Config::load(&[("WEFT_PROXY_CORES", "0")]).unwrap_err();
        assert!(err.to_string().contains("WEFT_PROXY_CORES=\"0\""), "{err}");

        let err = Config::load(&[("WEFT_PROXY_DETECT_TIMEOUT", "fast")]).unwrap_err();
        assert!(err.to_string().contains("expected a duration"), "{err}");

        let err = Config::load(&[("WEFT_PROXY_CONTROLLER_ADDR", "no-port")]).unwrap_err();
        assert!(err.to_string().contains("not host:port"), "{err}");
        let err = Config::load(&[
            ("WEFT_PROXY_CONTROLLER_ADDR", "c:8086"),
            ("WEFT_PROXY_CONFIG", "/x"),
        ])
        .unwrap_err();
        assert_eq!(err, ConfigError::ControllerAndFile);

        for (var, value, says) in [
            ("WEFT_PROXY_TRACE_COLLECTOR", "otel:4317", "no scheme"),
            ("WEFT_PROXY_TRACE_SAMPLING", "1.5", "between 0 and 1"),
            ("WEFT_PROXY_ACCESS_LOG", "xml", "json or apache"),
            ("WEFT_PROXY_TAP", "maybe", "true or false"),
            ("WEFT_PROXY_MAX_CONNECTIONS", "0", "positive whole number"),
            ("WEFT_PROXY_MAX_HEADER_BYTES", "100", "at least 1024"),
            ("WEFT_PROXY_HEADER_READ_TIMEOUT", "soon", "duration"),
        ] {
            let err = Config::load(&[(var, value)]).unwrap_err().to_string();
            assert!(err.starts_with(var) && err.contains(says), "{err}");
        }

        let err = Config::load(&[("WEFT_PROXY_OUTBOUND_ORIG_DST", "web:80")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected redirect, or the IP:PORT"),
            "{err}"
        );

        let err = Config::load(&[("WEFT_PROXY_OPAQUE_PORTS", "3306,x")]).unwrap_err();
        assert!(err.to_string().contains("'x' is not a port"), "{err}");
    }

    #[test]
    fn unknown_and_incomplete_flags_are_errors() {
        let none = [("", ""); 0];
        assert_eq!(
            Config::from_args(["--bogus".to_string(), "1".to_string()], &none),
            Err(ConfigError::UnknownFlag("--bogus".to_string()))
        );
        assert_eq!(
            Config::from_args(["--log".to_string()], &none),
            Err(ConfigError::MissingValue("--log".to_string()))
        );
        assert_eq!(
            Config::from_args(["--help".to_string()], &none),
            Err(ConfigError::Help)
        );
    }

    #[test]
    fn help_lists_every_setting_with_its_flag() {
        let h = help();
        for s in SETTINGS {
            assert!(h.contains(s.var), "{}", s.var);
        }
        assert!(h.contains("--inbound-addr (default 0.0.0.0:4143)"));
    }
}
