//! The injector's settings: what the chart puts in the `weft-injector`
//! ConfigMap (`--injector-config`), completed by the controller with what it
//! knows itself (trust domain, trust anchors, its own identity).

use serde::Deserialize;
use serde_json::{Value, json};

/// Native sidecars (an init container with `restartPolicy: Always`,
/// Kubernetes >= 1.29) or the classic layout.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NativeSidecars {
    /// Native where the API server is 1.29 or newer.
    #[default]
    Auto,
    Always,
    Never,
}

impl NativeSidecars {
    /// The layout for a cluster of this version (`None`: unknown, as with a
    /// directory source or `weft inject` offline, where native is assumed:
    /// every supported Kubernetes release has it).
    pub fn layout(self, server: Option<(u32, u32)>) -> Layout {
        match self {
            NativeSidecars::Always => Layout::Native,
            NativeSidecars::Never => Layout::Classic,
            NativeSidecars::Auto => match server {
                Some(v) if v < (1, 29) => Layout::Classic,
                _ => Layout::Native,
            },
        }
    }
}

impl std::str::FromStr for NativeSidecars {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(format!("'{s}' is not one of auto, always, never")),
        }
    }
}

/// The iptables backend weft-init drives (`--iptables-mode`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IptablesMode {
    /// iptables over nf_tables: current distributions.
    #[default]
    Nft,
    /// The legacy xtables interface: nodes whose own rules are legacy.
    Legacy,
}

impl IptablesMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IptablesMode::Nft => "nft",
            IptablesMode::Legacy => "legacy",
        }
    }
}

impl std::str::FromStr for IptablesMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nft" => Ok(Self::Nft),
            "legacy" => Ok(Self::Legacy),
            _ => Err(format!("'{s}' is not one of nft, legacy")),
        }
    }
}

/// Where the proxy goes in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// An init container with `restartPolicy: Always` after weft-init: it
    /// is ready (startup probe) before the app starts, stops after it, and
    /// does not keep a Job running.
    Native,
    /// The first app container, holding the others (postStart hook waits
    /// for /ready) until it is ready.
    Classic,
}

/// Parses `v1.29.3`, `1.30+`, `v1.31.0-gke.1` into (major, minor).
pub fn parse_server_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| -> Option<u32> {
        let d: String = s.chars().take_while(char::is_ascii_digit).collect();
        d.parse().ok()
    };
    Some((digits(major.trim_start_matches('v'))?, digits(minor)?))
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectorConfig {
    pub proxy_image: String,
    pub init_image: String,
    pub image_pull_policy: String,
    /// The controller's discovery service, `host:port`.
    pub controller_addr: String,
    /// The controller's identity service, `host:port`; empty: no identity
    /// (the proxies run plaintext).
    pub identity_addr: String,
    /// Default `WEFT_PROXY_LOG` (pods may say otherwise with an annotation).
    pub log_level: String,
    pub native_sidecars: NativeSidecars,
    /// Default proxy resources (a ResourceRequirements object).
    pub resources: Value,
    /// UID the proxy runs as; weft-init exempts it from redirection.
    pub proxy_uid: u32,
    /// Run weft-init as root. The weft-init image grants its iptables
    /// binaries NET_ADMIN/NET_RAW as file capabilities, so it runs as
    /// nobody by default; images without that need root.
    pub init_run_as_root: bool,
    /// weft-init's iptables backend (pods may say otherwise with
    /// `weft.dev/iptables-mode`).
    pub iptables_mode: IptablesMode,
    /// Redirect IPv6 too (ip6tables), and have the proxy listen on IPv6.
    pub ipv6: bool,
    /// Subnets whose traffic bypasses the proxy (`weft.dev/skip-subnets`
    /// adds to them).
    pub ignore_subnets: Vec<String>,
    /// OTLP endpoint of the proxies' spans (`WEFT_PROXY_TRACE_COLLECTOR`);
    /// empty: none. Pods may say otherwise (`weft.dev/trace-collector`).
    pub trace_collector: String,
    /// Share of new traces sampled (`WEFT_PROXY_TRACE_SAMPLING`).
    pub trace_sampling: String,
    /// Access log format, `json` or `apache`; empty: off
    /// (`weft.dev/access-log`).
    pub access_log: String,
    /// Whether proxies serve tap (`weft.dev/tap: enabled|disabled`).
    pub tap: bool,
    /// Filled in by the controller, not read from the file.
    #[serde(skip)]
    pub trust_domain: String,
    /// The identity the identity service's certificate carries.
    #[serde(skip)]
    pub identity_server_id: String,
    /// PEM of the trust anchors, passed to the proxy inline.
    #[serde(skip)]
    pub trust_anchors_pem: String,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        let tag = super::PROXY_VERSION;
        Self {
            proxy_image: format!("ghcr.io/weft-mesh/weft-proxy:{tag}"),
            init_image: format!("ghcr.io/weft-mesh/weft-init:{tag}"),
            image_pull_policy: "IfNotPresent".into(),
            controller_addr: "weft-discovery.weft.svc.cluster.local:8086".into(),
            identity_addr: "weft-identity.weft.svc.cluster.local:8080".into(),
            log_level: "warn,weft_proxy=info".into(),
            native_sidecars: NativeSidecars::Auto,
            resources: json!({
                "requests": {"cpu": "100m", "memory": "20Mi"},
                "limits": {"memory": "250Mi"},
            }),
            proxy_uid: 2102,
            init_run_as_root: false,
            iptables_mode: IptablesMode::Nft,
            ipv6: false,
            ignore_subnets: Vec::new(),
            trace_collector: String::new(),
            trace_sampling: "0.01".into(),
            access_log: String::new(),
            tap: false,
            trust_domain: "cluster.local".into(),
            identity_server_id: "spiffe://cluster.local/ns/weft/sa/weft-controller".into(),
            trust_anchors_pem: String::new(),
        }
    }
}

impl InjectorConfig {
    /// Reads the YAML file the chart mounts; a bad file is an error at
    /// start-up, naming the file and the field.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Completes the file's settings with what the controller knows: its
    /// trust domain and namespace (the identity service's own SPIFFE ID),
    /// and the trust anchors' PEM, `None` when identity is off (proxies
    /// then run without mesh identity).
    pub fn complete(
        &mut self,
        trust_domain: &str,
        controller_namespace: &str,
        anchors_pem: Option<String>,
    ) {
        self.trust_domain = trust_domain.to_string();
        self.identity_server_id =
            format!("spiffe://{trust_domain}/ns/{controller_namespace}/sa/weft-controller");
        match anchors_pem {
            Some(pem) => self.trust_anchors_pem = pem,
            None => self.identity_addr.clear(),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Self = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        if !config.resources.is_object() {
            return Err("resources: must be a mapping (requests/limits)".into());
        }
        if let Some(bad) = config
            .ignore_subnets
            .iter()
            .find(|s| s.trim().parse::<ipnet::IpNet>().is_err())
        {
            return Err(format!(
                "ignoreSubnets: '{bad}' is not a CIDR (e.g. 10.0.0.0/8)"
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_choose_the_layout() {
        let auto = NativeSidecars::Auto;
        assert_eq!(
            auto.layout(parse_server_version("1", "28")),
            Layout::Classic
        );
        assert_eq!(
            auto.layout(parse_server_version("1", "29+")),
            Layout::Native
        );
        assert_eq!(
            auto.layout(parse_server_version("v1", "31-gke")),
            Layout::Native
        );
        assert_eq!(auto.layout(None), Layout::Native);
        assert_eq!(NativeSidecars::Never.layout(Some((1, 33))), Layout::Classic);
        assert_eq!(NativeSidecars::Always.layout(Some((1, 20))), Layout::Native);
        assert_eq!(parse_server_version("x", "29"), None);
    }

    #[test]
    fn the_file_is_checked_field_by_field() {
        let c = InjectorConfig::parse("proxyImage: p:1\nnativeSidecars: never\n").unwrap();
        assert_eq!(c.proxy_image, "p:1");
        assert_eq!(c.native_sidecars, NativeSidecars::Never);
        assert_eq!(c.proxy_uid, 2102, "unset fields keep their defaults");
        let e = InjectorConfig::parse("proxyImg: p:1\n").unwrap_err();
        assert!(e.contains("proxyImg"), "{e}");
        let e = InjectorConfig::parse("nativeSidecars: sometimes\n").unwrap_err();
        assert!(e.contains("sometimes"), "{e}");
        let e = InjectorConfig::parse("resources: 5\n").unwrap_err();
        assert!(e.contains("resources"), "{e}");
        let c = InjectorConfig::parse(
            "iptablesMode: legacy\nipv6: true\nignoreSubnets: [10.0.0.0/8, 'fd00::/8']\n",
        )
        .unwrap();
        assert_eq!(
            (c.iptables_mode, c.ipv6, c.ignore_subnets.len()),
            (IptablesMode::Legacy, true, 2)
        );
        let e = InjectorConfig::parse("iptablesMode: xtables\n").unwrap_err();
        assert!(e.contains("xtables"), "{e}");
        let e = InjectorConfig::parse("ignoreSubnets: [10.0.0.0]\n").unwrap_err();
        assert!(e.contains("ignoreSubnets: '10.0.0.0' is not a CIDR"), "{e}");
    }
}
