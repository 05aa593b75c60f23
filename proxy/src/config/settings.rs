//! Every setting the proxy reads, with its default and meaning (for
//! parsing and for `--help`), and [`Vars`]: reading them from a
//! [`Source`], each bad value an error naming the variable, the value,
//! what is wrong and what is expected.

use std::net::SocketAddr;
use std::time::Duration;

use super::{ConfigError, Source};
use crate::orig_dst::OrigDst;

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
        var: "WEFT_PROXY_NODE_NAME",
        default: "",
        help: "the node the pod runs on, told to the controller (the injector sets it from the downward API)",
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

fn default_of(var: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.var == var)
        .map(|s| s.default)
        .unwrap_or_default()
}

/// Settings read from a source, defaults applied, values parsed.
pub struct Vars<'a>(pub &'a dyn Source);

impl Vars<'_> {
    /// The value, or the setting's default.
    pub fn get(&self, var: &'static str) -> String {
        self.0
            .get(var)
            .unwrap_or_else(|| default_of(var).to_string())
    }

    /// The value when set and not empty.
    pub fn opt(&self, var: &'static str) -> Option<String> {
        self.0.get(var).filter(|v| !v.is_empty())
    }

    pub fn invalid(
        &self,
        var: &'static str,
        problem: impl Into<String>,
        expected: &'static str,
    ) -> ConfigError {
        ConfigError::Invalid {
            var,
            value: self.get(var),
            problem: problem.into(),
            expected,
        }
    }

    pub fn addr(&self, var: &'static str) -> Result<SocketAddr, ConfigError> {
        parse_addr(var, &self.get(var))
    }

    pub fn opt_addr(&self, var: &'static str) -> Result<Option<SocketAddr>, ConfigError> {
        self.opt(var).map(|a| parse_addr(var, &a)).transpose()
    }

    pub fn duration(&self, var: &'static str) -> Result<Duration, ConfigError> {
        let value = self.get(var);
        weft_proto::duration::parse(&value).map_err(|problem| ConfigError::Invalid {
            var,
            value,
            problem,
            expected: "a duration such as 250ms, 1s, 1m30s",
        })
    }

    pub fn bool(&self, var: &'static str) -> Result<bool, ConfigError> {
        match self.get(var).trim() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(self.invalid(var, "not a boolean", "true or false")),
        }
    }

    /// A whole number of at least 1.
    pub fn count(&self, var: &'static str) -> Result<usize, ConfigError> {
        match self.get(var).trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(self.invalid(
                var,
                "not a positive whole number",
                "a whole number of at least 1",
            )),
        }
    }

    pub fn orig_dst(&self, var: &'static str) -> Result<OrigDst, ConfigError> {
        OrigDst::parse(&self.get(var)).map_err(|e| {
            self.invalid(
                var,
                e.to_string(),
                "redirect, or the IP:PORT every connection of the listener goes to",
            )
        })
    }
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
