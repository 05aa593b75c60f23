//! `weft-init`: redirect a pod's TCP traffic into the weft-proxy sidecar.

use std::process::ExitCode;

use clap::Parser;
use ipnet::IpNet;
use weft_init::{Family, Mode, Options, PortRange, System, apply, parse_port_list};

/// Redirect this network namespace's TCP traffic into the weft-proxy sidecar.
///
/// With no arguments, installs the default rules for a pod: inbound TCP to
/// port 4143, outbound TCP to port 4140, sparing the proxy's own UID (2102),
/// loopback, and the proxy's admin ports 4190-4191. Running it twice changes
/// nothing; `--remove` takes out exactly what it added.
#[derive(Debug, Parser)]
#[command(name = "weft-init", version)]
struct Args {
    /// Port of the proxy's inbound listener.
    #[arg(long, default_value_t = 4143, value_parser = clap::value_parser!(u16).range(1..))]
    incoming_proxy_port: u16,
    /// Port of the proxy's outbound listener.
    #[arg(long, default_value_t = 4140, value_parser = clap::value_parser!(u16).range(1..))]
    outgoing_proxy_port: u16,
    /// UID the proxy runs as; its traffic is never redirected.
    #[arg(long, default_value_t = 2102)]
    proxy_uid: u32,
    /// GID whose traffic is never redirected (optional).
    #[arg(long)]
    proxy_gid: Option<u32>,
    /// Inbound destination ports that bypass the proxy, e.g. 22,8000-8100
    /// (4190-4191 always do).
    #[arg(long, value_name = "PORTS", value_parser = parse_ports, default_value = "")]
    inbound_ports_to_ignore: PortList,
    /// Outbound destination ports that bypass the proxy, e.g. 443,5432.
    #[arg(long, value_name = "PORTS", value_parser = parse_ports, default_value = "")]
    outbound_ports_to_ignore: PortList,
    /// Subnets (CIDR, comma separated) that bypass the proxy: as source of
    /// inbound traffic and as destination of outbound traffic.
    #[arg(long, value_name = "CIDRS", value_parser = parse_subnets, default_value = "")]
    subnets_to_ignore: SubnetList,
    /// Also install the rules for IPv6 (ip6tables).
    #[arg(long)]
    ipv6: bool,
    /// iptables backend.
    #[arg(long, value_enum, default_value_t = Mode::Nft)]
    iptables_mode: Mode,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules weft-init installed.
    #[arg(long, conflicts_with = "dry_run")]
    remove: bool,
}

#[derive(Clone, Debug)]
struct PortList(Vec<PortRange>);

#[derive(Clone, Debug)]
struct SubnetList(Vec<IpNet>);

fn parse_ports(s: &str) -> Result<PortList, String> {
    parse_port_list(s).map(PortList).map_err(|e| e.to_string())
}

fn parse_subnets(s: &str) -> Result<SubnetList, String> {
    weft_init::parse_subnet_list(s).map(SubnetList)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = Options {
        inbound_port: args.incoming_proxy_port,
        outbound_port: args.outgoing_proxy_port,
        proxy_uid: args.proxy_uid,
        proxy_gid: args.proxy_gid,
        inbound_ports_to_ignore: args.inbound_ports_to_ignore.0,
        outbound_ports_to_ignore: args.outbound_ports_to_ignore.0,
        subnets_to_ignore: args.subnets_to_ignore.0,
    };
    let families: &[Family] = if args.ipv6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };

    if args.dry_run {
        print!("{}", apply::dry_run(&opts, families));
        return ExitCode::SUCCESS;
    }
    let result = if args.remove {
        apply::remove(&System, families, args.iptables_mode)
    } else {
        apply::install(&System, &opts, families, args.iptables_mode)
    };
    match result {
        Ok(report) => {
            for line in report.lines {
                println!("weft-init: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-init: error: {e}");
            ExitCode::FAILURE
        }
    }
}
