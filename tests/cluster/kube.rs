//! What the cluster suite does to a cluster: kubectl, weft and Helm
//! (tests/cluster/helm.py) run as an operator runs them, and small waits
//! on what they report.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// One command's outcome, with its output for assertion messages.
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn of(what: &str, out: std::io::Result<Output>) -> Ran {
        let out = out.unwrap_or_else(|e| panic!("{what}: {e}"));
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stdout, or a panic with both streams.
    pub fn expect(self, what: &str) -> String {
        assert!(self.ok, "{what} failed:\n{}{}", self.stdout, self.stderr);
        self.stdout
    }

    pub fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

pub fn kubectl(args: &[&str]) -> Ran {
    Ran::of(
        &format!("kubectl {args:?}"),
        Command::new("kubectl").args(args).output(),
    )
}

/// kubectl with a manifest on stdin (`apply -f -`, `delete -f -`).
pub fn kubectl_stdin(args: &[&str], manifest: &str) -> Ran {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    Ran::of("kubectl", child.wait_with_output())
}

pub fn apply(manifest: &str) {
    kubectl_stdin(&["apply", "-f", "-"], manifest).expect("kubectl apply");
}

/// `kubectl get ... -o json`, parsed.
pub fn get(args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(&all).expect("kubectl get")).unwrap()
}

/// A GET through the API server (e.g. the pod proxy), as text.
pub fn raw(path: &str) -> Option<String> {
    let r = kubectl(&["get", "--raw", path]);
    r.ok.then_some(r.stdout)
}

pub fn weft(bin: &Path, args: &[&str]) -> Ran {
    Ran::of(
        &format!("weft {args:?}"),
        Command::new(bin).args(args).output(),
    )
}

/// Runs a command that should end by itself; killed (and failed) after
/// `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Ran {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            return Ran {
                ok: false,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: format!(
                    "{}\n(still running after {limit:?}: killed)",
                    String::from_utf8_lossy(&out.stderr)
                ),
            };
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ran::of("command", child.wait_with_output())
}

/// weft with HOME (and so ~/.config) in `home`.
pub fn weft_in_home(bin: &Path, args: &[&str], home: &Path) -> Ran {
    Ran::of(
        &format!("weft {args:?}"),
        Command::new(bin)
            .args(args)
            .env("HOME", home)
            .env_remove("XDG_CONFIG_HOME")
            .output(),
    )
}

pub fn helm(args: &[&str]) -> Ran {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/helm.py");
    Ran::of(
        &format!("helm.py {args:?}"),
        Command::new("python3").arg(script).args(args).output(),
    )
}

/// Polls `f` until it gives a value, or panics naming `what` and the last
/// thing it said.
pub fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {limit:?} waiting for {what}: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Waits until every pod matching the selector is Ready (and there are
/// `count` of them); returns them.
pub fn ready_pods(ns: &str, selector: &str, count: usize, limit: Duration) -> Vec<Value> {
    until(
        &format!("{count} ready pods {selector} in {ns}"),
        limit,
        || {
            let pods = get(&["pods", "-n", ns, "-l", selector]);
            let items: Vec<Value> = pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .cloned()
                .collect();
            let ready = items
                .iter()
                .filter(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count();
            if items.len() == count && ready == count {
                Ok(items)
            } else {
                Err(format!(
                    "{ready} of {} ready: {}",
                    items.len(),
                    items
                        .iter()
                        .map(|p| format!(
                            "{} {}",
                            p["metadata"]["name"].as_str().unwrap_or(""),
                            p["status"]["phase"].as_str().unwrap_or("")
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        },
    )
}

/// Waits until a namespace is gone.
pub fn namespace_gone(ns: &str, limit: Duration) {
    until(&format!("namespace {ns} to be deleted"), limit, || {
        let r = kubectl(&["get", "namespace", ns]);
        if r.ok {
            Err("still there".into())
        } else {
            Ok(())
        }
    });
}

/// The server's (major, minor).
pub fn server_version() -> (u32, u32) {
    let v: Value =
        serde_json::from_str(&kubectl(&["version", "-o", "json"]).expect("kubectl version"))
            .unwrap();
    let digits = |s: &Value| -> u32 {
        s.as_str()
            .unwrap_or("0")
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    (
        digits(&v["serverVersion"]["major"]),
        digits(&v["serverVersion"]["minor"]),
    )
}

/// A scratch directory for the suite's files.
pub fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-cluster-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The load app's counters, through the API server's pod proxy.
pub fn load_stats(ns: &str, pod: &str) -> Option<Value> {
    let text = raw(&format!(
        "/api/v1/namespaces/{ns}/pods/{pod}:9000/proxy/stats"
    ))?;
    serde_json::from_str(&text).ok()
}

pub fn reset_load(ns: &str, pod: &str) {
    let r = kubectl(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/pods/{pod}:9000/proxy/reset"),
        "-f",
        "/dev/null",
    ]);
    assert!(r.ok, "resetting the load app's counters: {}", r.both());
}

/// A proxy's /metrics, through the API server's pod proxy.
pub fn proxy_metrics(ns: &str, pod: &str) -> String {
    raw(&format!(
        "/api/v1/namespaces/{ns}/pods/{pod}:4191/proxy/metrics"
    ))
    .unwrap_or_default()
}
