//! weft-init against real iptables, in a network namespace of its own.

use std::process::Output;

use weft_tests::bins;
use weft_tests::netns::{Host, Lab};

fn save(host: &Host, tool: &str) -> String {
    host.run(tool, &["-t", "nat"])
}

fn weft_init(host: &Host, args: &[&str]) -> Output {
    host.command(bins::path("weft-init"), None)
        .args(args)
        .output()
        .unwrap()
}

fn jumps(saved: &str) -> usize {
    saved
        .lines()
        .filter(|l| l.contains("-j WEFT_"))
        .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
        .count()
}

#[test]
fn install_twice_changes_nothing_and_remove_takes_exactly_ours() {
    let Some(lab) = Lab::new("install_twice_changes_nothing_and_remove_takes_exactly_ours") else {
        return;
    };
    let host = lab.host("pod", 2);
    // Someone else's rule, which must survive everything weft-init does.
    host.run(
        "iptables-nft",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "198.18.0.99",
            "-j",
            "RETURN",
        ],
    );

    let args = [
        "--inbound-ports-to-ignore",
        "22,8000-8100",
        "--subnets-to-ignore",
        "198.18.5.0/24",
    ];
    host.run(bins::path("weft-init"), &args);
    let once = save(&host, "iptables-nft-save");
    host.run(bins::path("weft-init"), &args);
    let twice = save(&host, "iptables-nft-save");
    let rules = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with('-') || l.starts_with(':'))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(rules(&once), rules(&twice));
    assert_eq!(jumps(&twice), 2);
    for expected in [
        "--dport 22 ",
        "--dport 8000:8100 ",
        "--dport 4190:4191 ",
        "-s 198.18.5.0/24",
        "-d 198.18.5.0/24",
        "--uid-owner 2102",
        "-o lo",
        "REDIRECT --to-ports 4143",
        "REDIRECT --to-ports 4140",
        "weft-init/redirect-inbound-to-proxy",
    ] {
        assert!(twice.contains(expected), "missing {expected}:\n{twice}");
    }

    host.run(bins::path("weft-init"), &["--remove"]);
    let removed = save(&host, "iptables-nft-save");
    assert!(!removed.contains("WEFT"), "{removed}");
    assert!(
        removed.contains("-A OUTPUT -d 198.18.0.99/32 -j RETURN"),
        "{removed}"
    );
    // Removing again is harmless.
    let again = weft_init(&host, &["--remove"]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("no weft-init rules to remove"));
}

#[test]
fn ipv6_and_legacy_backends() {
    let Some(lab) = Lab::new("ipv6_and_legacy_backends") else {
        return;
    };
    let host = lab.host("pod", 2);
    host.run(
        bins::path("weft-init"),
        &["--ipv6", "--subnets-to-ignore", "fd00::/8,198.18.9.0/24"],
    );
    let v6 = save(&host, "ip6tables-nft-save");
    assert!(v6.contains("-s fd00::/8"), "{v6}");
    assert!(!v6.contains("198.18.9.0"), "{v6}");
    assert_eq!(jumps(&v6), 2);
    host.run(bins::path("weft-init"), &["--ipv6", "--remove"]);
    assert!(!save(&host, "ip6tables-nft-save").contains("WEFT"));

    host.run(bins::path("weft-init"), &["--iptables-mode", "legacy"]);
    let legacy = save(&host, "iptables-legacy-save");
    assert_eq!(jumps(&legacy), 2, "{legacy}");
    assert!(
        !save(&host, "iptables-nft-save").contains("WEFT"),
        "legacy mode must not touch nft rules"
    );
}

#[test]
fn clear_errors_and_nothing_half_applied() {
    let Some(lab) = Lab::new("clear_errors_and_nothing_half_applied") else {
        return;
    };
    let host = lab.host("pod", 2);

    // No NET_ADMIN: refused before anything is tried.
    let out = host
        .command(bins::path("weft-init"), Some(65534))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no NET_ADMIN capability"),
        "{out:?}"
    );

    // No iptables binary on the PATH.
    let out = host
        .command(bins::path("weft-init"), None)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found in PATH") && err.contains("apt-get install iptables"),
        "{err}"
    );

    // A port list that does not parse.
    let out = weft_init(&host, &["--outbound-ports-to-ignore", "443,http"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("'http' is not a port"),
        "{out:?}"
    );

    // IPv6 fails (no ip6tables on a PATH holding only the IPv4 tools), so
    // the IPv4 rules are not left behind either.
    let dir = std::env::temp_dir().join(format!("weft-init-v4only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for tool in ["iptables-nft-save", "iptables-nft-restore"] {
        let _ = std::fs::remove_file(dir.join(tool));
        std::os::unix::fs::symlink(format!("/usr/sbin/{tool}"), dir.join(tool)).unwrap();
    }
    let out = host
        .command(bins::path("weft-init"), None)
        .env("PATH", &dir)
        .arg("--ipv6")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ip6tables-nft-save not found"),
        "{out:?}"
    );
    assert!(!save(&host, "iptables-nft-save").contains("WEFT"));
}

#[test]
fn dry_run_prints_and_applies_nothing() {
    let Some(lab) = Lab::new("dry_run_prints_and_applies_nothing") else {
        return;
    };
    let host = lab.host("pod", 2);
    let out = host.run(
        bins::path("weft-init"),
        &["--dry-run", "--proxy-uid", "1337"],
    );
    assert!(
        out.contains("*nat") && out.contains("--uid-owner 1337") && out.contains("COMMIT"),
        "{out}"
    );
    assert!(!save(&host, "iptables-nft-save").contains("WEFT"));
}
