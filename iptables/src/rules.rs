//! The redirection rules as pure data: what `weft-init` installs, computed
//! without touching the system so that every rule can be unit tested.
//!
//! Two chains of our own in the `nat` table, each reached by one jump from a
//! built-in chain:
//!
//! ```text
//! PREROUTING -> WEFT_INBOUND:  RETURN ignored ports, RETURN ignored source subnets,
//!                              REDIRECT the rest of TCP to the inbound listener (4143)
//! OUTPUT     -> WEFT_OUTBOUND: RETURN the proxy's own UID (and GID), RETURN `-o lo`,
//!                              RETURN ignored ports, RETURN ignored destination subnets,
//!                              REDIRECT the rest of TCP to the outbound listener (4140)
//! ```

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::ports::{PortRange, merge};

pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
pub const OUTBOUND_CHAIN: &str = "WEFT_OUTBOUND";
/// Every comment starts with this, so an operator reading `iptables-save`
/// knows whose rule it is.
pub const COMMENT_PREFIX: &str = "weft-init";
/// The proxy's admin ports (4190 reserved, 4191 admin) are never redirected,
/// so that kubelet probes and metric scrapes reach the proxy itself.
pub const ADMIN_PORTS: PortRange = PortRange {
    first: 4190,
    last: 4191,
};

/// What to redirect where. Defaults match the proxy's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The proxy's inbound listener port (redirect target for ingress).
    pub inbound_port: u16,
    /// The proxy's outbound listener port (redirect target for egress).
    pub outbound_port: u16,
    /// Traffic from this UID is the proxy's own and is never redirected.
    pub proxy_uid: u32,
    /// Optionally, traffic from this GID is exempt as well.
    pub proxy_gid: Option<u32>,
    /// Destination ports whose inbound traffic bypasses the proxy.
    pub inbound_ports_to_ignore: Vec<PortRange>,
    /// Destination ports whose outbound traffic bypasses the proxy.
    pub outbound_ports_to_ignore: Vec<PortRange>,
    /// Source subnets (inbound) and destination subnets (outbound) that
    /// bypass the proxy.
    pub subnets_to_ignore: Vec<IpNet>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_uid: 2102,
            proxy_gid: None,
            inbound_ports_to_ignore: Vec::new(),
            outbound_ports_to_ignore: Vec::new(),
            subnets_to_ignore: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// One rule: the chain it is appended to and its match/target arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub args: String,
}

impl Rule {
    fn new(chain: &'static str, matches: &str, comment: &str, target: &str) -> Self {
        let mut args = String::new();
        if !matches.is_empty() {
            args.push_str(matches);
            args.push(' ');
        }
        let _ = write!(
            args,
            "-m comment --comment \"{COMMENT_PREFIX}/{comment}\" -j {target}"
        );
        Self { chain, args }
    }

    /// The rule as an `iptables-restore` append line.
    pub fn append_line(&self) -> String {
        format!("-A {} {}", self.chain, self.args)
    }
}

/// The full set of rules for one address family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub family: Family,
    pub inbound: Vec<Rule>,
    pub outbound: Vec<Rule>,
    /// The jumps from the built-in chains into ours.
    pub jumps: Vec<Rule>,
}

impl RuleSet {
    pub fn new(opts: &Options, family: Family) -> Self {
        let subnets: Vec<&IpNet> = opts
            .subnets_to_ignore
            .iter()
            .filter(|n| {
                matches!(
                    (family, n),
                    (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
                )
            })
            .collect();

        let mut inbound_ports = opts.inbound_ports_to_ignore.clone();
        inbound_ports.push(ADMIN_PORTS);
        inbound_ports.sort();
        let inbound_ports = merge(inbound_ports);

        let mut inbound = Vec::new();
        for p in &inbound_ports {
            inbound.push(Rule::new(
                INBOUND_CHAIN,
                &format!("-p tcp --dport {p}"),
                &format!("ignore-inbound-port-{p}"),
                "RETURN",
            ));
        }
        for net in &subnets {
            inbound.push(Rule::new(
                INBOUND_CHAIN,
                &format!("-s {net}"),
                &format!("ignore-inbound-subnet-{net}"),
                "RETURN",
            ));
        }
        inbound.push(Rule::new(
            INBOUND_CHAIN,
            "-p tcp",
            "redirect-inbound-to-proxy",
            &format!("REDIRECT --to-ports {}", opts.inbound_port),
        ));

        let mut outbound = vec![Rule::new(
            OUTBOUND_CHAIN,
            &format!("-m owner --uid-owner {}", opts.proxy_uid),
            "ignore-proxy-uid",
            "RETURN",
        )];
        if let Some(gid) = opts.proxy_gid {
            outbound.push(Rule::new(
                OUTBOUND_CHAIN,
                &format!("-m owner --gid-owner {gid}"),
                "ignore-proxy-gid",
                "RETURN",
            ));
        }
        outbound.push(Rule::new(
            OUTBOUND_CHAIN,
            "-o lo",
            "ignore-loopback",
            "RETURN",
        ));
        for p in &opts.outbound_ports_to_ignore {
            outbound.push(Rule::new(
                OUTBOUND_CHAIN,
                &format!("-p tcp --dport {p}"),
                &format!("ignore-outbound-port-{p}"),
                "RETURN",
            ));
        }
        for net in &subnets {
            outbound.push(Rule::new(
                OUTBOUND_CHAIN,
                &format!("-d {net}"),
                &format!("ignore-outbound-subnet-{net}"),
                "RETURN",
            ));
        }
        outbound.push(Rule::new(
            OUTBOUND_CHAIN,
            "-p tcp",
            "redirect-outbound-to-proxy",
            &format!("REDIRECT --to-ports {}", opts.outbound_port),
        ));

        let jumps = vec![
            Rule::new("PREROUTING", "", "inbound", INBOUND_CHAIN),
            Rule::new("OUTPUT", "", "outbound", OUTBOUND_CHAIN),
        ];
        Self {
            family,
            inbound,
            outbound,
            jumps,
        }
    }

    /// The `iptables-restore --noflush` input that installs this set.
    ///
    /// Declaring our chains flushes them, so they are rewritten whole; a jump
    /// is added only where `existing` shows none yet. Applying it twice thus
    /// leaves the table as applying it once did.
    pub fn install_payload(&self, existing: &SavedNat) -> String {
        let mut out = String::from("*nat\n");
        let _ = writeln!(out, ":{INBOUND_CHAIN} - [0:0]");
        let _ = writeln!(out, ":{OUTBOUND_CHAIN} - [0:0]");
        for rule in self.inbound.iter().chain(&self.outbound) {
            out.push_str(&rule.append_line());
            out.push('\n');
        }
        for jump in &self.jumps {
            if !existing.has_jump(jump.chain, target_of(jump)) {
                out.push_str(&jump.append_line());
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

fn target_of(jump: &Rule) -> &str {
    jump.args.rsplit(' ').next().unwrap_or_default()
}

/// The `nat` table as `iptables-save -t nat` printed it: enough to tell what
/// of ours is already installed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedNat {
    chains: Vec<String>,
    /// `-A CHAIN ...` lines, verbatim.
    rules: Vec<String>,
}

impl SavedNat {
    pub fn parse(save_output: &str) -> Self {
        let mut saved = SavedNat::default();
        let mut in_nat = false;
        for line in save_output.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat {
                continue;
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    saved.chains.push(name.to_string());
                }
            } else if line.starts_with("-A ") {
                saved.rules.push(line.to_string());
            }
        }
        saved
    }

    pub fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    /// Whether `chain` has a rule jumping to `target`.
    pub fn has_jump(&self, chain: &str, target: &str) -> bool {
        self.jumps(chain, target).next().is_some()
    }

    fn jumps<'a>(&'a self, chain: &'a str, target: &'a str) -> impl Iterator<Item = &'a String> {
        self.rules.iter().filter(move |r| {
            let words: Vec<&str> = r.split_whitespace().collect();
            words.get(1) == Some(&chain) && words.windows(2).any(|w| w == ["-j", target])
        })
    }

    /// Whether anything weft-init installs is present.
    pub fn has_any_of_ours(&self) -> bool {
        self.has_chain(INBOUND_CHAIN) || self.has_chain(OUTBOUND_CHAIN)
    }

    /// The `iptables-restore --noflush` input that removes exactly what
    /// weft-init installed (the jumps into our chains, then the chains), or
    /// `None` when nothing of ours is there.
    pub fn remove_payload(&self) -> Option<String> {
        if !self.has_any_of_ours() {
            return None;
        }
        let mut out = String::from("*nat\n");
        for (chain, target) in [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTBOUND_CHAIN)] {
            for rule in self.jumps(chain, target) {
                // `-A` lines as saved are exact rule specs; `-D` takes the same.
                let _ = writeln!(out, "-D{}", &rule[2..]);
            }
        }
        for chain in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
            if self.has_chain(chain) {
                let _ = writeln!(out, "-F {chain}");
                let _ = writeln!(out, "-X {chain}");
            }
        }
        out.push_str("COMMIT\n");
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::parse_port_list;

    fn lines(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(Rule::append_line).collect()
    }

    #[test]
    fn default_rules_redirect_everything_but_admin_proxy_and_loopback() {
        let set = RuleSet::new(&Options::default(), Family::V4);
        assert_eq!(
            lines(&set.inbound),
            vec![
                "-A WEFT_INBOUND -p tcp --dport 4190:4191 -m comment --comment \"weft-init/ignore-inbound-port-4190:4191\" -j RETURN",
                "-A WEFT_INBOUND -p tcp -m comment --comment \"weft-init/redirect-inbound-to-proxy\" -j REDIRECT --to-ports 4143",
            ]
        );
        assert_eq!(
            lines(&set.outbound),
            vec![
                "-A WEFT_OUTBOUND -m owner --uid-owner 2102 -m comment --comment \"weft-init/ignore-proxy-uid\" -j RETURN",
                "-A WEFT_OUTBOUND -o lo -m comment --comment \"weft-init/ignore-loopback\" -j RETURN",
                "-A WEFT_OUTBOUND -p tcp -m comment --comment \"weft-init/redirect-outbound-to-proxy\" -j REDIRECT --to-ports 4140",
            ]
        );
        assert_eq!(
            lines(&set.jumps),
            vec![
                "-A PREROUTING -m comment --comment \"weft-init/inbound\" -j WEFT_INBOUND",
                "-A OUTPUT -m comment --comment \"weft-init/outbound\" -j WEFT_OUTBOUND",
            ]
        );
    }

    #[test]
    fn ignored_ports_gid_and_custom_ports() {
        let opts = Options {
            inbound_port: 5143,
            outbound_port: 5140,
            proxy_uid: 1000,
            proxy_gid: Some(1001),
            inbound_ports_to_ignore: parse_port_list("22,4189").unwrap(),
            outbound_ports_to_ignore: parse_port_list("443,8000-8100").unwrap(),
            subnets_to_ignore: vec![],
        };
        let set = RuleSet::new(&opts, Family::V4);
        let inbound = lines(&set.inbound).join("\n");
        assert!(inbound.contains("--dport 22 "));
        // 4189 merges with the admin ports.
        assert!(inbound.contains("--dport 4189:4191 "));
        assert!(inbound.ends_with("REDIRECT --to-ports 5143"));
        let outbound = lines(&set.outbound);
        assert!(outbound[0].contains("--uid-owner 1000"));
        assert!(outbound[1].contains("--gid-owner 1001"));
        assert!(outbound.iter().any(|r| r.contains("--dport 443 ")));
        assert!(outbound.iter().any(|r| r.contains("--dport 8000:8100 ")));
        assert!(
            outbound
                .last()
                .unwrap()
                .ends_with("REDIRECT --to-ports 5140")
        );
    }

    #[test]
    fn subnets_go_to_their_family_only() {
        let opts = Options {
            subnets_to_ignore: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ..Options::default()
        };
        let v4 = RuleSet::new(&opts, Family::V4);
        let v6 = RuleSet::new(&opts, Family::V6);
        let all = |s: &RuleSet| lines(&s.inbound).join("\n") + &lines(&s.outbound).join("\n");
        assert!(all(&v4).contains("-s 10.0.0.0/8 "));
        assert!(all(&v4).contains("-d 10.0.0.0/8 "));
        assert!(!all(&v4).contains("fd00"));
        assert!(all(&v6).contains("-s fd00::/8 "));
        assert!(all(&v6).contains("-d fd00::/8 "));
        assert!(!all(&v6).contains("10.0.0.0"));
    }

    #[test]
    fn subnet_returns_come_before_the_redirect() {
        let opts = Options {
            subnets_to_ignore: vec!["198.18.5.0/24".parse().unwrap()],
            ..Options::default()
        };
        let set = RuleSet::new(&opts, Family::V4);
        for chain in [&set.inbound, &set.outbound] {
            let pos = chain
                .iter()
                .position(|r| r.args.contains("198.18.5.0/24"))
                .unwrap();
            assert!(pos < chain.len() - 1);
            assert!(chain.last().unwrap().args.contains("REDIRECT"));
        }
    }

    const SAVED_WITH_OURS: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j WEFT_INBOUND
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:WEFT_INBOUND - [0:0]
:WEFT_OUTBOUND - [0:0]
-A PREROUTING -m comment --comment "weft-init/inbound" -j WEFT_INBOUND
-A OUTPUT -m comment --comment "weft-init/outbound" -j WEFT_OUTBOUND
-A OUTPUT -d 198.18.0.9/32 -j DNAT --to-destination 198.18.0.10
-A WEFT_INBOUND -p tcp -m comment --comment "weft-init/redirect-inbound-to-proxy" -j REDIRECT --to-ports 4143
COMMIT
"#;

    #[test]
    fn install_on_a_clean_table_adds_chains_and_jumps() {
        let set = RuleSet::new(&Options::default(), Family::V4);
        let payload = set.install_payload(&SavedNat::default());
        assert!(payload.starts_with("*nat\n:WEFT_INBOUND - [0:0]\n:WEFT_OUTBOUND - [0:0]\n"));
        assert!(payload.contains(
            "-A PREROUTING -m comment --comment \"weft-init/inbound\" -j WEFT_INBOUND\n"
        ));
        assert!(
            payload.contains(
                "-A OUTPUT -m comment --comment \"weft-init/outbound\" -j WEFT_OUTBOUND\n"
            )
        );
        assert!(payload.ends_with("COMMIT\n"));
    }

    #[test]
    fn install_again_does_not_add_a_second_jump() {
        let saved = SavedNat::parse(SAVED_WITH_OURS);
        assert!(saved.has_jump("PREROUTING", INBOUND_CHAIN));
        assert!(saved.has_jump("OUTPUT", OUTBOUND_CHAIN));
        // The filter table's jump is not the nat one.
        assert!(!saved.has_jump("INPUT", INBOUND_CHAIN));
        let payload = RuleSet::new(&Options::default(), Family::V4).install_payload(&saved);
        assert!(!payload.contains("-A PREROUTING"));
        assert!(!payload.contains("-A OUTPUT"));
        // Our chains are still rewritten whole.
        assert!(payload.contains(":WEFT_INBOUND - [0:0]"));
        assert!(payload.contains("REDIRECT --to-ports 4140"));
    }

    #[test]
    fn remove_deletes_exactly_our_jumps_and_chains() {
        let saved = SavedNat::parse(SAVED_WITH_OURS);
        let payload = saved.remove_payload().unwrap();
        assert_eq!(
            payload,
            "*nat\n\
             -D PREROUTING -m comment --comment \"weft-init/inbound\" -j WEFT_INBOUND\n\
             -D OUTPUT -m comment --comment \"weft-init/outbound\" -j WEFT_OUTBOUND\n\
             -F WEFT_INBOUND\n-X WEFT_INBOUND\n-F WEFT_OUTBOUND\n-X WEFT_OUTBOUND\nCOMMIT\n"
        );
        assert!(!payload.contains("DNAT"));
    }

    #[test]
    fn remove_with_nothing_installed_is_none() {
        let saved = SavedNat::parse("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(saved.remove_payload(), None);
    }
}
