//! Applying and removing the rules with `iptables-restore`, atomically per
//! address family, and rolling back the other family if one fails.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::rules::{Family, Options, RuleSet, SavedNat};

/// Which iptables backend to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// iptables over nf_tables (`iptables-nft-restore`); most current distributions.
    Nft,
    /// the legacy xtables kernel interface (`iptables-legacy-restore`).
    Legacy,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Nft => "nft",
            Mode::Legacy => "legacy",
        }
    }

    /// What `--version` prints for a generic `iptables-restore` of this mode.
    fn version_marker(self) -> &'static str {
        match self {
            Mode::Nft => "nf_tables",
            Mode::Legacy => "legacy",
        }
    }
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{program} not found in PATH: install iptables (Debian/Ubuntu: apt-get install iptables, Alpine: apk add iptables) or choose the other backend with --iptables-mode"
    )]
    MissingBinary { program: String },
    #[error(
        "no NET_ADMIN capability: weft-init changes iptables rules, so it must run as root or with NET_ADMIN and NET_RAW in its securityContext"
    )]
    NoNetAdmin,
    #[error("could not run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} {args} failed: {stderr}")]
    Command {
        program: String,
        args: String,
        stderr: String,
    },
    #[error("{family} rules could not be applied ({source}); {rollback}")]
    Partial {
        family: &'static str,
        #[source]
        source: Box<Error>,
        rollback: String,
    },
}

/// How weft-init reaches the system; a fake in tests.
pub trait Runner {
    /// The full path of `program` if it is on the PATH.
    fn find(&self, program: &str) -> Option<PathBuf>;
    fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> io::Result<Output>;
    /// Whether this process may change network configuration.
    fn has_net_admin(&self) -> bool;
}

/// The real system: PATH lookup, child processes, /proc/self/status.
pub struct System;

impl Runner for System {
    fn find(&self, program: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    }

    fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
        use io::Write as _;
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        child.wait_with_output()
    }

    fn has_net_admin(&self) -> bool {
        const CAP_NET_ADMIN: u32 = 12;
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
                u64::from_str_radix(hex.trim(), 16).ok()
            })
            .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
    }
}

/// The save/restore pair for one family and mode.
#[derive(Clone, Debug)]
struct Tools {
    family: Family,
    save: PathBuf,
    restore: PathBuf,
}

impl Tools {
    fn locate(runner: &dyn Runner, mode: Mode, family: Family) -> Result<Self, Error> {
        let find = |tool: &str| -> Result<PathBuf, Error> {
            let specific = format!("{}-{}-{tool}", family.prefix(), mode.name());
            if let Some(path) = runner.find(&specific) {
                return Ok(path);
            }
            // Distributions without the -nft/-legacy names ship one variant
            // under the plain name; use it only if it is the mode asked for.
            let generic = format!("{}-{tool}", family.prefix());
            if let Some(path) = runner.find(&generic) {
                let is_mode = runner.run(&path, &["--version"], None).is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout).contains(mode.version_marker())
                });
                if is_mode {
                    return Ok(path);
                }
            }
            Err(Error::MissingBinary { program: specific })
        };
        Ok(Self {
            family,
            save: find("save")?,
            restore: find("restore")?,
        })
    }

    fn save(&self, runner: &dyn Runner) -> Result<String, Error> {
        run(runner, &self.save, &["-t", "nat"], None)
    }

    fn restore(&self, runner: &dyn Runner, args: &[&str], payload: &str) -> Result<(), Error> {
        run(runner, &self.restore, args, Some(payload)).map(drop)
    }
}

fn run(
    runner: &dyn Runner,
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, Error> {
    let name = program.display().to_string();
    let out = runner
        .run(program, args, stdin)
        .map_err(|source| Error::Spawn {
            program: name.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
        return Err(Error::NoNetAdmin);
    }
    Err(Error::Command {
        program: name,
        args: args.join(" "),
        stderr,
    })
}

/// What an apply or remove did, for the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub lines: Vec<String>,
}

/// Installs the rules for each family, each family in one atomic
/// `iptables-restore`. Every payload is checked with `--test` before any is
/// applied; if a later family still fails, the earlier ones are put back as
/// they were, so nothing is left half-applied.
pub fn install(
    runner: &dyn Runner,
    opts: &Options,
    families: &[Family],
    mode: Mode,
) -> Result<Report, Error> {
    if !runner.has_net_admin() {
        return Err(Error::NoNetAdmin);
    }
    let mut plans = Vec::new();
    for &family in families {
        let tools = Tools::locate(runner, mode, family)?;
        let before = tools.save(runner)?;
        let payload = RuleSet::new(opts, family).install_payload(&SavedNat::parse(&before));
        tools.restore(runner, &["--noflush", "--test"], &payload)?;
        plans.push((tools, before, payload));
    }

    let mut report = Report::default();
    for (i, (tools, _, payload)) in plans.iter().enumerate() {
        if let Err(e) = tools.restore(runner, &["--noflush"], payload) {
            let rollback = roll_back(runner, &plans[..i]);
            return Err(Error::Partial {
                family: tools.family.name(),
                source: Box::new(e),
                rollback,
            });
        }
        report.lines.push(format!(
            "{}: inbound TCP -> port {}, outbound TCP -> port {} (proxy uid {}, {} backend)",
            tools.family.name(),
            opts.inbound_port,
            opts.outbound_port,
            opts.proxy_uid,
            mode.name()
        ));
    }
    Ok(report)
}

/// Restores the nat tables saved before `applied` were changed.
fn roll_back(runner: &dyn Runner, applied: &[(Tools, String, String)]) -> String {
    if applied.is_empty() {
        return "nothing had been changed".to_string();
    }
    let mut failures = Vec::new();
    for (tools, before, _) in applied {
        if let Err(e) = tools.restore(runner, &["--table", "nat"], before) {
            failures.push(format!("{}: {e}", tools.family.name()));
        }
    }
    if failures.is_empty() {
        "the rules applied before it were rolled back".to_string()
    } else {
        format!("rolling back also failed: {}", failures.join("; "))
    }
}

/// Removes exactly what [`install`] added, for each family.
pub fn remove(runner: &dyn Runner, families: &[Family], mode: Mode) -> Result<Report, Error> {
    if !runner.has_net_admin() {
        return Err(Error::NoNetAdmin);
    }
    let mut report = Report::default();
    for &family in families {
        let tools = Tools::locate(runner, mode, family)?;
        let saved = SavedNat::parse(&tools.save(runner)?);
        match saved.remove_payload() {
            Some(payload) => {
                tools.restore(runner, &["--noflush"], &payload)?;
                report
                    .lines
                    .push(format!("{}: removed weft-init's rules", family.name()));
            }
            None => report
                .lines
                .push(format!("{}: no weft-init rules to remove", family.name())),
        }
    }
    Ok(report)
}

/// The rules as `iptables-restore` input, as they would be installed on a
/// table holding none of ours (for `--dry-run`).
pub fn dry_run(opts: &Options, families: &[Family]) -> String {
    families
        .iter()
        .map(|&family| {
            format!(
                "# {} ({}-restore --noflush)\n{}",
                family.name(),
                family.prefix(),
                RuleSet::new(opts, family).install_payload(&SavedNat::default())
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    /// Records every command; fails restores of the families listed.
    #[derive(Default)]
    struct Fake {
        missing: Vec<&'static str>,
        fail_apply: Vec<&'static str>,
        no_caps: bool,
        calls: RefCell<Vec<String>>,
    }

    impl Runner for Fake {
        fn find(&self, program: &str) -> Option<PathBuf> {
            (!self.missing.contains(&program)).then(|| PathBuf::from(program))
        }

        fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
            let name = program.display().to_string();
            self.calls
                .borrow_mut()
                .push(format!("{name} {}", args.join(" ")).trim().to_string());
            let fails =
                args == ["--noflush"] && self.fail_apply.iter().any(|f| name.starts_with(f));
            let stdout = if name.ends_with("save") {
                "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n".into()
            } else {
                let _ = stdin;
                Vec::new()
            };
            Ok(Output {
                status: ExitStatus::from_raw(if fails { 1 << 8 } else { 0 }),
                stdout,
                stderr: if fails {
                    b"iptables-restore: line 3 failed".to_vec()
                } else {
                    vec![]
                },
            })
        }

        fn has_net_admin(&self) -> bool {
            !self.no_caps
        }
    }

    #[test]
    fn tests_every_family_before_applying_any() {
        let fake = Fake::default();
        install(
            &fake,
            &Options::default(),
            &[Family::V4, Family::V6],
            Mode::Nft,
        )
        .unwrap();
        assert_eq!(
            *fake.calls.borrow(),
            vec![
                "iptables-nft-save -t nat",
                "iptables-nft-restore --noflush --test",
                "ip6tables-nft-save -t nat",
                "ip6tables-nft-restore --noflush --test",
                "iptables-nft-restore --noflush",
                "ip6tables-nft-restore --noflush",
            ]
        );
    }

    #[test]
    fn a_failing_second_family_rolls_the_first_back() {
        let fake = Fake {
            fail_apply: vec!["ip6tables"],
            ..Fake::default()
        };
        let err = install(
            &fake,
            &Options::default(),
            &[Family::V4, Family::V6],
            Mode::Legacy,
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::Partial { family: "IPv6", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("rolled back"), "{err}");
        assert_eq!(
            fake.calls.borrow().last().unwrap(),
            "iptables-legacy-restore --table nat"
        );
    }

    #[test]
    fn missing_binary_is_named_and_nothing_runs() {
        let fake = Fake {
            missing: vec!["iptables-nft-restore", "iptables-restore"],
            ..Fake::default()
        };
        let err = install(&fake, &Options::default(), &[Family::V4], Mode::Nft).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("iptables-nft-restore not found in PATH"),
            "{err}"
        );
        assert!(fake.calls.borrow().iter().all(|c| !c.contains("restore")));
    }

    #[test]
    fn no_net_admin_is_refused_up_front() {
        let fake = Fake {
            no_caps: true,
            ..Fake::default()
        };
        let err = install(&fake, &Options::default(), &[Family::V4], Mode::Nft).unwrap_err();
        assert!(matches!(err, Error::NoNetAdmin));
        assert!(fake.calls.borrow().is_empty());
        assert!(matches!(
            remove(&fake, &[Family::V4], Mode::Nft),
            Err(Error::NoNetAdmin)
        ));
    }

    #[test]
    fn remove_with_nothing_installed_changes_nothing() {
        let fake = Fake::default();
        let report = remove(&fake, &[Family::V4], Mode::Nft).unwrap();
        assert_eq!(report.lines, vec!["IPv4: no weft-init rules to remove"]);
        assert_eq!(*fake.calls.borrow(), vec!["iptables-nft-save -t nat"]);
    }

    #[test]
    fn dry_run_prints_both_families() {
        let out = dry_run(&Options::default(), &[Family::V4, Family::V6]);
        assert!(out.contains("# IPv4 (iptables-restore --noflush)\n*nat\n"));
        assert!(out.contains("# IPv6 (ip6tables-restore --noflush)\n*nat\n"));
        assert_eq!(out.matches("REDIRECT --to-ports 4143").count(), 2);
    }
}
