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
