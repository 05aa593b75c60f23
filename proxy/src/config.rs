//! The proxy's settings: environment variables, each also a `--flag`.
//!
//! Settings are read through a [`Source`] so tests pass a map and never touch
//! the process environment. Every bad value is reported with the variable, the
//! value, what is wrong and what is expected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use weft_proto::ports::{PortRange, parse_port_list};

use crate::orig_dst::OrigDst;
use crate::telemetry::TelemetrySettings;
use crate::telemetry::access_log::Format;
use crate::telemetry::export::Collector;

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

/// One setting, for parsing and for `--help`.
pub struct Setting {
    pub var: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Every setting the proxy reads, in `--help` order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        var: "WEFT_PROXY_INBOUND_ADDR",
        default: "0.0.0.0:4143",
        help: "listen address for redirected inbound traffic",
    },
    Setting {
        var: "WEFT_PROXY_OUTBOUND_ADDR",
        default: "127.0.0.1:4140",
        help: "listen address for redirected outbound traffic",
    },
    Setting {
        var: "WEFT_PROXY_OUTBOUND_IPV6_ADDR",
        default: "",
        help: "a second listen address for redirected outbound IPv6 traffic (ip6tables redirects to [::1]:4140); empty: none",
    },
    Setting {
        var: "WEFT_PROXY_INBOUND_ORIG_DST",
        default: "redirect",
        help: "where inbound connections were going: redirect (the iptables REDIRECT's record, SO_ORIGINAL_DST), or an IP:PORT every inbound connection is forwarded to (no iptables: the loopback demo)",
    },
    Setting {
        var: "WEFT_PROXY_OUTBOUND_ORIG_DST",
        default: "redirect",
        help: "where outbound connections were going: redirect, or an IP:PORT every outbound connection is treated as addressed to (no iptables: the app connects to the outbound listener)",
    },
    Setting {
        var: "WEFT_PROXY_ADMIN_ADDR",
        default: "0.0.0.0:4191",
        help: "listen address of the admin server (/live, /ready, /metrics, ...)",
    },
    Setting {
        var: "WEFT_PROXY_NAMESPACE",
        default: "",
        help: "namespace of the pod this proxy serves",
    },
    Setting {
        var: "WEFT_PROXY_POD_NAME",
        default: "",
        help: "name of the pod this proxy serves",
    },
    Setting {
        var: "WEFT_PROXY_SERVICE_ACCOUNT",
        default: "",
        help: "service account of the pod this proxy serves",
    },
    Setting {
        var: "WEFT_PROXY_CONTROLLER_ADDR",
        default: "",
        help: "the controller's discovery endpoint, host:port; unset: no controller",
    },
    Setting {
        var: "WEFT_PROXY_CONFIG",
        default: "",
        help: "a static config file (YAML, the feed's model) to use instead of a controller",
    },
    Setting {
        var: "WEFT_PROXY_DISCOVERY_WAIT",
        default: "1s",
        help: "how long the first connection to a new destination waits for its config before being forwarded as addressed",
    },
    Setting {
        var: "WEFT_PROXY_BALANCER",
        default: "p2c-ewma",
        help: "how endpoints are chosen: p2c-ewma (power of two choices over peak-EWMA latency and load) or round-robin",
    },
    Setting {
        var: "WEFT_PROXY_FAILURE_ACCRUAL",
        default: "7",
        help: "consecutive failures (connect errors, resets, 5xx) that eject an endpoint for a jittered exponential penalty (0: never)",
    },
    Setting {
        var: "WEFT_PROXY_TCP_IDLE_TIMEOUT",
        default: "1h",
        help: "opaque TCP connections with no bytes either way for this long are closed (0: never)",
    },
    Setting {
        var: "WEFT_PROXY_IDENTITY_ADDR",
        default: "",
        help: "the controller's identity endpoint, host:port; unset: no mesh identity (plaintext)",
    },
    Setting {
        var: "WEFT_PROXY_TRUST_ANCHORS",
        default: "",
        help: "the mesh's trust anchors: a PEM file, or the PEM itself (the injector passes it inline) (needed with WEFT_PROXY_IDENTITY_ADDR)",
    },
    Setting {
        var: "WEFT_PROXY_TOKEN_FILE",
        default: "/var/run/secrets/tokens/weft-identity",
        help: "the projected ServiceAccount token (audience identity.weft.dev) presented when certifying",
    },
    Setting {
        var: "WEFT_PROXY_TRUST_DOMAIN",
        default: "cluster.local",
        help: "the SPIFFE trust domain of workload identities",
    },
    Setting {
        var: "WEFT_PROXY_IDENTITY_SERVER_ID",
        default: "spiffe://cluster.local/ns/weft/sa/weft-controller",
        help: "the identity the identity service's certificate must carry",
    },
    Setting {
        var: "WEFT_PROXY_LOG",
        default: "info",
        help: "log filter, e.g. info,weft_proxy=debug",
    },
    Setting {
        var: "WEFT_PROXY_CORES",
        default: "",
        help: "worker threads; default: the CPUs the cgroup quota allows, at least 1",
    },
    Setting {
        var: "WEFT_PROXY_DETECT_TIMEOUT",
        default: "250ms",
        help: "how long to wait for a client's first bytes before treating the connection as server-speaks-first opaque TCP",
    },
    Setting {
        var: "WEFT_PROXY_OPAQUE_PORTS",
        default: "25,587,3306,4444,5432,6379,9300,11211",
        help: "destination ports proxied as opaque TCP without protocol detection (comma list, ranges allowed)",
    },
    Setting {
        var: "WEFT_PROXY_CONNECT_TIMEOUT",
        default: "2s",
        help: "timeout for connecting to an upstream (above 1s, so one lost SYN, retransmitted after 1s, still connects)",
    },
    Setting {
        var: "WEFT_PROXY_SPLICE",
        default: "true",
        help: "move opaque TCP bytes with splice(2), inside the kernel (false: copy through user space)",
    },
    Setting {
        var: "WEFT_PROXY_MAX_CONNECTIONS",
        default: "8000",
        help: "connections both listeners may hold open at once; more are closed as they arrive (overload_shed_total{reason=\"connections\"})",
    },
    Setting {
        var: "WEFT_PROXY_MAX_IN_FLIGHT_REQUESTS",
        default: "10000",
        help: "HTTP requests being served at once; more are answered 503 with weft-proxy-error: overloaded",
    },
    Setting {
        var: "WEFT_PROXY_MAX_HEADER_BYTES",
        default: "65536",
        help: "largest request header block (HTTP/1 head, HTTP/2 header list); larger requests get 431",
    },
    Setting {
        var: "WEFT_PROXY_HEADER_READ_TIMEOUT",
        default: "30s",
        help: "an HTTP/1 request's head must arrive within this, counted from when the connection waits for it (so an idle keep-alive connection closes after it too)",
    },
    Setting {
        var: "WEFT_PROXY_HTTP_IDLE_TIMEOUT",
        default: "1h",
        help: "HTTP connections with no request in flight and no bytes either way for this long are closed (0: never)",
    },
    Setting {
        var: "WEFT_PROXY_H2_MAX_CONCURRENT_STREAMS",
        default: "2000",
        help: "streams one HTTP/2 client connection may have open at once",
    },
    Setting {
        var: "WEFT_PROXY_H2_MAX_CONTROL_FRAMES",
        default: "1000",
        help: "per second, on average, of the frames an HTTP/2 client can flood with (PING, SETTINGS, RST_STREAM, PRIORITY, CONTINUATION, empty DATA); a connection sending more is closed",
    },
    Setting {
        var: "WEFT_PROXY_TRACE_COLLECTOR",
        default: "",
        help: "OTLP endpoint spans are exported to: http://host:4318 (OTLP/HTTP protobuf) or grpc://host:4317; unset: no export (trace headers still pass through)",
    },
    Setting {
        var: "WEFT_PROXY_TRACE_SAMPLING",
        default: "0.01",
        help: "share of new traces sampled, 0.0 to 1.0; a caller's sampling decision is always honoured",
    },
    Setting {
        var: "WEFT_PROXY_ACCESS_LOG",
        default: "",
        help: "access log to stdout: json or apache (combined format); unset: off",
    },
    Setting {
        var: "WEFT_PROXY_TAP",
        default: "false",
        help: "serve live requests at /tap on the admin port (localhost, or the controller over mesh TLS)",
    },
    Setting {
        var: "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD",
        default: "30s",
        help: "on SIGTERM or POST /shutdown, how long in-flight work may take to finish",
    },
];

/// Where the proxy gets its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityConfig {
    pub addr: String,
    pub trust_anchors: std::path::PathBuf,
    pub token_file: std::path::PathBuf,
    pub trust_domain: String,
    pub server_id: weft_proto::spiffe::SpiffeId,
}

/// Who this proxy serves (set by the injector from the downward API).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub service_account: Option<String>,
}

/// The proxy's configuration. See [`SETTINGS`] for each field's variable.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub inbound_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    /// The outbound listener for IPv6 (`[::1]:4140` in a dual-stack pod);
    /// the IPv4 one stays on loopback.
    pub outbound_ipv6_addr: Option<SocketAddr>,
    /// How each listener finds its connections' original destination.
    pub inbound_orig_dst: OrigDst,
    pub outbound_orig_dst: OrigDst,
    pub admin_addr: SocketAddr,
    pub workload: Workload,
    /// The controller's discovery address (host:port).
    pub controller_addr: Option<String>,
    /// A static config file, used when there is no controller.
    pub config_file: Option<std::path::PathBuf>,
    pub discovery_wait: Duration,
    /// Mesh identity, when configured.
    pub identity: Option<IdentityConfig>,
    pub balancer: crate::routing::endpoint::BalancerSettings,
    /// Zero: no idle timeout.
    pub tcp_idle_timeout: Duration,
    pub log: String,
    /// Worker threads; `None` means derive from the CPU quota.
    pub cores: Option<usize>,
    pub detect_timeout: Duration,
    pub opaque_ports: Vec<PortRange>,
    pub connect_timeout: Duration,
    /// Opaque TCP moves with splice(2).
    pub splice: bool,
    pub shutdown_grace_period: Duration,
    /// Tracing, access log and tap.
    pub telemetry: TelemetrySettings,
    /// Limits against overload and abuse.
    pub limits: Limits,
}

/// Limits against overload and abusive clients (see the settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_in_flight_requests: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// Zero: no idle timeout.
    pub http_idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_control_frames: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Config::default().limits
    }
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
        let get = |var: &'static str| -> String {
            src.get(var).unwrap_or_else(|| default_of(var).to_string())
        };
        let opt = |var: &'static str| src.get(var).filter(|v| !v.is_empty());
        let config = Config {
            inbound_addr: parse_addr("WEFT_PROXY_INBOUND_ADDR", &get("WEFT_PROXY_INBOUND_ADDR"))?,
            outbound_addr: parse_addr(
                "WEFT_PROXY_OUTBOUND_ADDR",
                &get("WEFT_PROXY_OUTBOUND_ADDR"),
            )?,
            outbound_ipv6_addr: opt("WEFT_PROXY_OUTBOUND_IPV6_ADDR")
                .map(|a| parse_addr("WEFT_PROXY_OUTBOUND_IPV6_ADDR", &a))
                .transpose()?,
            inbound_orig_dst: parse_orig_dst(
                "WEFT_PROXY_INBOUND_ORIG_DST",
                &get("WEFT_PROXY_INBOUND_ORIG_DST"),
            )?,
            outbound_orig_dst: parse_orig_dst(
                "WEFT_PROXY_OUTBOUND_ORIG_DST",
                &get("WEFT_PROXY_OUTBOUND_ORIG_DST"),
            )?,
            admin_addr: parse_addr("WEFT_PROXY_ADMIN_ADDR", &get("WEFT_PROXY_ADMIN_ADDR"))?,
            workload: Workload {
                namespace: opt("WEFT_PROXY_NAMESPACE"),
                pod_name: opt("WEFT_PROXY_POD_NAME"),
                service_account: opt("WEFT_PROXY_SERVICE_ACCOUNT"),
            },
            controller_addr: match opt("WEFT_PROXY_CONTROLLER_ADDR") {
                Some(a)
                    if a.rsplit_once(':')
                        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) =>
                {
                    return Err(ConfigError::Invalid {
                        var: "WEFT_PROXY_CONTROLLER_ADDR",
                        value: a,
                        problem: "not host:port".to_string(),
                        expected: "the controller's discovery address, e.g. weft-controller.weft.svc:8086",
                    });
                }
                other => other,
            },
            config_file: opt("WEFT_PROXY_CONFIG").map(std::path::PathBuf::from),
            discovery_wait: parse_duration_var(
                "WEFT_PROXY_DISCOVERY_WAIT",
                &get("WEFT_PROXY_DISCOVERY_WAIT"),
            )?,
            identity: identity_config(src, &get)?,
            balancer: crate::routing::endpoint::BalancerSettings {
                mode: get("WEFT_PROXY_BALANCER")
                    .parse()
                    .map_err(|_| ConfigError::Invalid {
                        var: "WEFT_PROXY_BALANCER",
                        value: get("WEFT_PROXY_BALANCER"),
                        problem: "not a balancer".to_string(),
                        expected: "p2c-ewma or round-robin",
                    })?,
                failure_threshold: match get("WEFT_PROXY_FAILURE_ACCRUAL").trim().parse::<u32>() {
                    Ok(0) => u32::MAX,
                    Ok(n) => n,
                    Err(_) => {
                        return Err(ConfigError::Invalid {
                            var: "WEFT_PROXY_FAILURE_ACCRUAL",
                            value: get("WEFT_PROXY_FAILURE_ACCRUAL"),
                            problem: "not a whole number".to_string(),
                            expected: "consecutive failures before ejection, e.g. 7 (0: never eject)",
                        });
                    }
                },
                ..Default::default()
            },
            tcp_idle_timeout: parse_duration_var(
                "WEFT_PROXY_TCP_IDLE_TIMEOUT",
                &get("WEFT_PROXY_TCP_IDLE_TIMEOUT"),
            )?,
            log: get("WEFT_PROXY_LOG"),
            cores: match opt("WEFT_PROXY_CORES") {
                None => None,
                Some(v) => Some(parse_cores(&v)?),
            },
            detect_timeout: parse_duration_var(
                "WEFT_PROXY_DETECT_TIMEOUT",
                &get("WEFT_PROXY_DETECT_TIMEOUT"),
            )?,
            opaque_ports: parse_port_list(&get("WEFT_PROXY_OPAQUE_PORTS")).map_err(|e| {
                ConfigError::Invalid {
                    var: "WEFT_PROXY_OPAQUE_PORTS",
                    value: get("WEFT_PROXY_OPAQUE_PORTS"),
                    problem: e.to_string(),
                    expected: "a comma separated list of ports and ranges",
                }
            })?,
            connect_timeout: parse_duration_var(
                "WEFT_PROXY_CONNECT_TIMEOUT",
                &get("WEFT_PROXY_CONNECT_TIMEOUT"),
            )?,
            splice: parse_bool("WEFT_PROXY_SPLICE", &get("WEFT_PROXY_SPLICE"))?,
            shutdown_grace_period: parse_duration_var(
                "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD",
                &get("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD"),
            )?,
            telemetry: telemetry_settings(&get, &opt)?,
            limits: Limits {
                max_connections: parse_count("WEFT_PROXY_MAX_CONNECTIONS", &get)?,
                max_in_flight_requests: parse_count("WEFT_PROXY_MAX_IN_FLIGHT_REQUESTS", &get)?,
                max_header_bytes: match parse_count("WEFT_PROXY_MAX_HEADER_BYTES", &get)? {
                    n if n >= 1024 => n,
                    _ => {
                        return Err(ConfigError::Invalid {
                            var: "WEFT_PROXY_MAX_HEADER_BYTES",
                            value: get("WEFT_PROXY_MAX_HEADER_BYTES"),
                            problem: "too small for any request".to_string(),
                            expected: "at least 1024 bytes, e.g. 65536",
                        });
                    }
                },
                header_read_timeout: parse_duration_var(
                    "WEFT_PROXY_HEADER_READ_TIMEOUT",
                    &get("WEFT_PROXY_HEADER_READ_TIMEOUT"),
                )?,
                http_idle_timeout: parse_duration_var(
                    "WEFT_PROXY_HTTP_IDLE_TIMEOUT",
                    &get("WEFT_PROXY_HTTP_IDLE_TIMEOUT"),
                )?,
                h2_max_concurrent_streams: parse_count(
                    "WEFT_PROXY_H2_MAX_CONCURRENT_STREAMS",
                    &get,
                )?
                .min(u32::MAX as usize) as u32,
                h2_max_control_frames: parse_count("WEFT_PROXY_H2_MAX_CONTROL_FRAMES", &get)?
                    .min(u32::MAX as usize) as u32,
            },
        };
        if config.controller_addr.is_some() && config.config_file.is_some() {
            return Err(ConfigError::ControllerAndFile);
        }
        Ok(config)
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

fn default_of(var: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.var == var)
        .map(|s| s.default)
        .unwrap_or_default()
}

fn parse_addr(var: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
            var,
            value: value.to_string(),
            problem: e.to_string(),
            expected: "an IP:PORT socket address such as 0.0.0.0:4143 or [::]:4143",
        })
}

fn telemetry_settings(
    get: &dyn Fn(&'static str) -> String,
    opt: &dyn Fn(&'static str) -> Option<String>,
) -> Result<TelemetrySettings, ConfigError> {
    let collector = match opt("WEFT_PROXY_TRACE_COLLECTOR") {
        None => None,
        Some(v) => Some(
            Collector::parse(&v).map_err(|problem| ConfigError::Invalid {
                var: "WEFT_PROXY_TRACE_COLLECTOR",
                value: v.clone(),
                problem,
                expected: "http://host:4318 (OTLP/HTTP) or grpc://host:4317 (OTLP/gRPC)",
            })?,
        ),
    };
    let ratio = get("WEFT_PROXY_TRACE_SAMPLING");
    let sampling = match ratio.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => r,
        _ => {
            return Err(ConfigError::Invalid {
                var: "WEFT_PROXY_TRACE_SAMPLING",
                value: ratio,
                problem: "not a ratio between 0 and 1".to_string(),
                expected: "a number from 0.0 (none) to 1.0 (every new trace), e.g. 0.01",
            });
        }
    };
    let access_log = match opt("WEFT_PROXY_ACCESS_LOG") {
        None => None,
        Some(v) => Some(Format::parse(&v).ok_or_else(|| ConfigError::Invalid {
            var: "WEFT_PROXY_ACCESS_LOG",
            value: v.clone(),
            problem: "not a log format".to_string(),
            expected: "json or apache",
        })?),
    };
    Ok(TelemetrySettings {
        collector,
        sampling,
        access_log,
        tap: parse_bool("WEFT_PROXY_TAP", &get("WEFT_PROXY_TAP"))?,
    })
}

fn parse_orig_dst(var: &'static str, value: &str) -> Result<OrigDst, ConfigError> {
    OrigDst::parse(value).map_err(|e| ConfigError::Invalid {
        var,
        value: value.to_string(),
        problem: e.to_string(),
        expected: "redirect, or the IP:PORT every connection of the listener goes to",
    })
}

fn identity_config(
    src: &dyn Source,
    get: &dyn Fn(&'static str) -> String,
) -> Result<Option<IdentityConfig>, ConfigError> {
    let Some(addr) = src
        .get("WEFT_PROXY_IDENTITY_ADDR")
        .filter(|v| !v.is_empty())
    else {
        return Ok(None);
    };
    let missing = |var: &'static str, expected: &'static str| ConfigError::Invalid {
        var,
        value: String::new(),
        problem: "required with WEFT_PROXY_IDENTITY_ADDR".to_string(),
        expected,
    };
    let anchors = src
        .get("WEFT_PROXY_TRUST_ANCHORS")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            missing(
                "WEFT_PROXY_TRUST_ANCHORS",
                "trust anchors: the path of a PEM file, or the PEM itself",
            )
        })?;
    for var in ["WEFT_PROXY_NAMESPACE", "WEFT_PROXY_SERVICE_ACCOUNT"] {
        if src.get(var).is_none_or(|v| v.is_empty()) {
            return Err(missing(
                var,
                "the pod's namespace and service account (the downward API sets them)",
            ));
        }
    }
    let server_id = get("WEFT_PROXY_IDENTITY_SERVER_ID");
    Ok(Some(IdentityConfig {
        addr,
        trust_anchors: anchors.into(),
        token_file: get("WEFT_PROXY_TOKEN_FILE").into(),
        trust_domain: get("WEFT_PROXY_TRUST_DOMAIN"),
        server_id: server_id
            .parse()
            .map_err(|e: weft_proto::spiffe::NotSpiffe| ConfigError::Invalid {
                var: "WEFT_PROXY_IDENTITY_SERVER_ID",
                value: server_id.clone(),
                problem: e.to_string(),
                expected: "a SPIFFE ID",
            })?,
    }))
}

fn parse_bool(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::Invalid {
            var,
            value: value.to_string(),
            problem: "not a boolean".to_string(),
            expected: "true or false",
        }),
    }
}

/// A whole number of at least 1.
fn parse_count(
    var: &'static str,
    get: &dyn Fn(&'static str) -> String,
) -> Result<usize, ConfigError> {
    let value = get(var);
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::Invalid {
            var,
            value,
            problem: "not a positive whole number".to_string(),
            expected: "a whole number of at least 1",
        }),
    }
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

fn parse_duration_var(var: &'static str, value: &str) -> Result<Duration, ConfigError> {
    weft_proto::duration::parse(value).map_err(|problem| ConfigError::Invalid {
        var,
        value: value.to_string(),
        problem,
        expected: "a duration such as 250ms, 1s, 1m30s",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = Config::default();
        assert_eq!(c.inbound_addr, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(c.outbound_addr, "127.0.0.1:4140".parse().unwrap());
        assert_eq!(c.outbound_ipv6_addr, None);
        assert_eq!(c.admin_addr, "0.0.0.0:4191".parse().unwrap());
        assert_eq!(c.inbound_orig_dst, OrigDst::Redirected);
        assert_eq!(c.outbound_orig_dst, OrigDst::Redirected);
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
        assert_eq!(c.inbound_addr, "[::]:5143".parse().unwrap());
        assert_eq!(c.outbound_ipv6_addr, Some("[::1]:5140".parse().unwrap()));
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
            c.controller_addr.as_deref(),
            Some("weft-controller.weft.svc:8086")
        );
        assert_eq!(c.discovery_wait, Duration::from_millis(500));
        assert_eq!(c.pod().as_deref(), Some("shop/orders-0"));
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(60));
        assert_eq!(
            c.inbound_orig_dst,
            OrigDst::Fixed("127.0.0.2:8080".parse().unwrap())
        );
        assert_eq!(
            c.outbound_orig_dst,
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
        assert_eq!(c.admin_addr, "127.0.0.1:2".parse().unwrap());
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
