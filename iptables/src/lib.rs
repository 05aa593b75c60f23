//! `weft-init`: the init step of a meshed pod. It installs `nat` rules that
//! send the pod's inbound TCP to the proxy's inbound listener and its
//! outbound TCP to the outbound listener, sparing the proxy's own traffic.
//!
//! - [`ports`]: port lists as operators write them.
//! - [`rules`]: the rules as pure data (no system access), and the
//!   `iptables-restore` payloads that install and remove them.
//! - [`apply`]: running `iptables-save`/`iptables-restore` atomically per
//!   family, with clear errors and rollback.

pub mod apply;
pub mod rules;

/// Port lists (shared with the proxy and controller).
pub use weft_proto::ports;

pub use apply::{Error, Mode, Runner, System};
pub use ports::{PortRange, parse_port_list};
pub use rules::{Family, Options, RuleSet};

/// A comma list of subnets in CIDR notation (`--subnets-to-ignore`).
pub fn parse_subnet_list(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.parse::<ipnet::IpNet>().map_err(|_| {
                format!(
                    "'{e}' is not a subnet; expected CIDR notation such as 10.0.0.0/8 or fd00::/8"
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn subnet_lists_parse_or_name_the_bad_entry() {
        let s = super::parse_subnet_list(" 10.0.0.0/8, fd00::/8,,").unwrap();
        assert_eq!(s.len(), 2);
        let e = super::parse_subnet_list("10.0.0.0/8,10.0.0.0/33").unwrap_err();
        assert!(e.contains("'10.0.0.0/33' is not a subnet"), "{e}");
        assert!(super::parse_subnet_list("").unwrap().is_empty());
    }
}
