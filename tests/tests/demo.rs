//! `weft demo`, the README's main command, run as a user runs it: it must
//! carry traffic through the mesh (every backend served, retries hiding the
//! flaky one, all of it mTLS), stop on its own or on Ctrl-C, and leave
//! nothing behind; as root with network namespaces, and as an unprivileged
//! user on loopback.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use weft_tests::bins;

/// Namespaces and processes a demo with this PID may have left.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("weft-test-{pid}-");
    let mut left: Vec<String> = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .lines()
    .filter(|l| l.starts_with(&prefix))
    .map(String::from)
    .collect();
    let marker = format!("weft-e2e-{pid}-weft-demo");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let text = String::from_utf8_lossy(&[cmdline, environ].concat()).into_owned();
        if text.contains(&marker) {
            left.push(format!("process {}", entry.file_name().to_string_lossy()));
        }
    }
    left
}

/// The count after `label:` in the summary line of `backend`.
fn summary_ok(out: &str, backend: &str) -> u64 {
    out.lines()
        .find(|l| l.trim_start().starts_with(&format!("{backend}:")))
        .and_then(|l| l.split(':').nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no summary line for {backend} in:\n{out}"))
}

/// Runs a bounded demo and checks what it printed: every step of the
/// script ran (v2 took the canary share, v1's two replicas served when the
/// split went back to v1), retries hid the flaky pod, every request the
/// backends received came over mesh TLS, and nothing was left behind.
fn assert_bounded_demo_works(mut demo: Command) {
    let child = demo
        .args([
            "demo",
            "--duration",
            "16",
            "--plain",
            "--step",
            "4",
            "--rate",
            "60",
        ])
        .env("WEFT_LAB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "weft demo failed:\n{text}");
    for backend in ["web-v1-a", "web-v1-b", "web-v2-a"] {
        assert!(
            summary_ok(&text, backend) > 20,
            "{backend} served too little:\n{text}"
        );
    }
    let total = text
        .lines()
        .find(|l| l.trim_start().starts_with("total:"))
        .expect("a total line");
    let success: f64 = total
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    // web-v1-b fails 30% of tries; with 3 retries a request fails only if
    // all 4 tries do (0.3^4 < 1%) or the budget runs out: at most a few
    // percent of all requests, while without retries it would be ~5-10%.
    assert!(
        success >= 97.0,
        "retries should hide the flaky backend: {total}"
    );
    assert!(text.contains("the frontend's proxy retried"), "{text}");
    let mtls = text
        .lines()
        .find(|l| l.trim_start().starts_with("mesh TLS:"))
        .expect("a mesh TLS line");
    let words: Vec<&str> = mtls.split_whitespace().collect();
    let (tls, all): (f64, f64) = (words[2].parse().unwrap(), words[5].parse().unwrap());
    assert!(all > 500.0 && tls == all, "all of it mTLS: {mtls}\n{text}");
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "everything started is gone"
    );
}

#[test]
fn the_demo_carries_traffic_and_cleans_up() {
    if !weft_tests::netns::available_for("the_demo_carries_traffic_and_cleans_up") {
        return;
    }
    assert_bounded_demo_works(Command::new(bins::path("weft")));
}

#[test]
fn ctrl_c_stops_the_demo_and_removes_everything() {
    if !weft_tests::netns::available_for("ctrl_c_stops_the_demo_and_removes_everything") {
        return;
    }
    let mut child = Command::new(bins::path("weft"))
        .args(["demo", "--plain", "--rate", "40"])
        .env("WEFT_LAB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for traffic to show, then interrupt as a user would.
    let start = Instant::now();
    loop {
        let line = lines.next().expect("the demo printed a frame").unwrap();
        if line.contains("frontend saw") && !line.contains("saw 0 ok") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no traffic shown"
        );
    }
    assert!(
        !leftovers(pid).is_empty(),
        "the demo's namespaces exist while it runs"
    );
    kill(Pid::from_raw(pid as i32), Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit after Ctrl-C: {status:?}; {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("weft demo summary")),
        "{rest:?}"
    );
    assert_eq!(
        leftovers(pid),
        Vec::<String>::new(),
        "everything started is gone"
    );
}

/// The demo's binaries copied where an unprivileged user may run them;
/// removed on drop.
struct Unprivileged(std::path::PathBuf);

impl Unprivileged {
    fn new(test: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weft-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for bin in ["weft", "weft-proxy", "weft-controller"] {
            std::fs::copy(bins::path(bin), dir.join(bin)).unwrap();
        }
        Self(dir)
    }

    /// `weft` run as nobody.
    fn weft(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.0.join("weft"));
        cmd.uid(65534).gid(65534).current_dir(&self.0);
        cmd
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn without_root_the_demo_runs_on_loopback() {
    // Root is needed only to become nobody.
    if !weft_tests::netns::available_for("without_root_the_demo_runs_on_loopback") {
        return;
    }
    let bins = Unprivileged::new("demo-nobody");
    assert_bounded_demo_works(bins.weft());
}

#[test]
fn without_root_namespaces_are_refused_with_the_way_out() {
    if !weft_tests::netns::available_for("without_root_namespaces_are_refused_with_the_way_out") {
        return;
    }
    let bins = Unprivileged::new("demo-netns-nobody");
    let out = bins
        .weft()
        .args(["demo", "--mode", "netns", "--duration", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "it cannot build namespaces without root"
    );
    assert!(
        err.contains("needs root") && err.contains("sudo") && err.contains("--mode loopback"),
        "{err}"
    );
}
