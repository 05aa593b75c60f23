//! Kubernetes pod specs run under podman, as a kubelet would run them: one
//! podman pod per Kubernetes pod (one network namespace), init containers
//! in order (a native sidecar is started and waited for by its startup
//! probe), then the app containers. Each container's securityContext,
//! environment (the downward API resolved), volumes and arguments become
//! podman flags, so what runs is exactly what the injector wrote.
//!
//! Every pod, container, volume directory and network made here is
//! removed by id when the [`Podman`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The image names the chart's defaults give (`<registry>/<name>:<appVersion>`).
pub fn image(name: &str) -> String {
    let chart: Value =
        serde_yaml_ng::from_str(include_str!("../../../charts/weft/Chart.yaml")).unwrap();
    let values: Value =
        serde_yaml_ng::from_str(include_str!("../../../charts/weft/values.yaml")).unwrap();
    format!(
        "{}/{name}:{}",
        values["image"]["registry"].as_str().unwrap(),
        chart["appVersion"].as_str().unwrap()
    )
}

/// Why the suite cannot run here, if it cannot: root, podman, the images.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    if Command::new("podman").arg("--version").output().is_err() {
        return Some("podman is not installed".into());
    }
    for name in ["weft-controller", "weft-proxy", "weft-init", "weft-testapp"] {
        let image = image(name);
        let out = Command::new("podman")
            .env("CONTAINERS_CONF", conf())
            .args(["image", "exists", &image])
            .status()
            .ok();
        if !out.is_some_and(|s| s.success()) {
            return Some(format!("image {image} is not built (run scripts/images)"));
        }
    }
    None
}

/// podman's settings for these tests (CONTAINERS_CONF): rlimits the
/// sandbox allows for every container, pods' infra containers included
/// (it cannot raise them: no CAP_SYS_RESOURCE; containerd's defaults
/// stay under them too), and events and logs in files, not syslog.
const CONTAINERS_CONF: &str = r#"[containers]
default_ulimits = ["nofile=10000:10000", "nproc=4096:4096"]
log_driver = "k8s-file"
[engine]
events_logger = "file"
"#;

fn conf() -> &'static Path {
    static CONF: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CONF.get_or_init(|| {
        // One file for every run (same content), so none accumulate.
        let path = std::env::temp_dir().join("weft-test-containers.conf");
        let tmp = path.with_extension(format!("{}", std::process::id()));
        std::fs::write(&tmp, CONTAINERS_CONF).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    })
}

fn run(args: &[&str]) -> Output {
    Command::new("podman")
        .env("CONTAINERS_CONF", conf())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs podman and returns its stdout, trimmed; panics with its output.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the kubelet fills in for one pod.
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The ServiceAccount token the projected volume holds.
    pub token: String,
    pub ip: String,
}

pub struct Podman {
    /// Names start with it, so that a killed run's leftovers are known.
    prefix: String,
    network: String,
    dir: PathBuf,
    pods: Vec<String>,
    containers: Vec<String>,
}

/// A started pod: its podman pod id, and the ids of its long-running
/// containers by Kubernetes name.
pub struct Pod {
    pub id: String,
    pub info: PodInfo,
    pub containers: Vec<(String, String)>,
}

impl Pod {
    pub fn container(&self, name: &str) -> &str {
        &self
            .containers
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no container {name} in {}", self.info.name))
            .1
    }
}

impl Podman {
    /// A podman network on `subnet` (from 198.18.0.0/15) for this run.
    pub fn new(subnet: &str) -> Self {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("weft-test-{}-{run}", std::process::id());
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let network = prefix.clone();
        ok(&["network", "create", "--subnet", subnet, &network]);
        Podman {
            prefix,
            network,
            dir,
            pods: Vec::new(),
            containers: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs a container outside any pod on the network (the controller).
    pub fn run_detached(&mut self, ip: &str, args: &[String]) -> String {
        let name = format!("{}-c{}", self.prefix, self.containers.len());
        let mut all: Vec<&str> = vec![
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &self.network,
            "--ip",
            ip,
            "--pull",
            "never",
        ];
        all.extend(args.iter().map(String::as_str));
        let id = ok(&all);
        self.containers.push(id.clone());
        id
    }

    /// Starts a Kubernetes pod (a Pod object, injected or not): init
    /// containers in order, native sidecars waited for by their startup
    /// probe, then the containers. An init container that fails, or a
    /// container that cannot start, is an error with the runtime's words.
    pub fn start_pod(&mut self, pod: &Value, info: PodInfo) -> Result<Pod, String> {
        let name = format!("{}-{}", self.prefix, info.name);
        let id = ok(&[
            "pod",
            "create",
            "--name",
            &name,
            "--network",
            &self.network,
            "--ip",
            &info.ip,
            // The test app's image has /pause (weft-testapp pause), what
            // podman runs in an infra container.
            "--infra-image",
            &image("weft-testapp"),
            "--infra-command",
            "/pause",
        ]);
        self.pods.push(id.clone());
        let volumes = self.volumes(pod, &info)?;
        let spec = &pod["spec"];
        let mut containers = Vec::new();
        for c in spec["initContainers"].as_array().into_iter().flatten() {
            let args = container_args(c, spec, &info, &volumes)?;
            let cname = c["name"].as_str().unwrap_or_default().to_string();
            if c["restartPolicy"] == "Always" {
                let cid = self.detached(&id, &args)?;
                wait_for_probe(c, "startupProbe", &info.ip, &cid)?;
                containers.push((cname, cid));
            } else {
                self.run_to_completion(&id, &cname, &args)?;
            }
        }
        for c in spec["containers"].as_array().into_iter().flatten() {
            let args = container_args(c, spec, &info, &volumes)?;
            let cid = self.detached(&id, &args)?;
            containers.push((c["name"].as_str().unwrap_or_default().to_string(), cid));
        }
        Ok(Pod {
            id,
            info,
            containers,
        })
    }

    fn detached(&mut self, pod: &str, args: &[String]) -> Result<String, String> {
        let mut all: Vec<&str> = vec!["run", "-d", "--pod", pod, "--pull", "never"];
        all.extend(args.iter().map(String::as_str));
        let out = run(&all);
        if !out.status.success() {
            return Err(text(&out));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        self.containers.push(id.clone());
        Ok(id)
    }

    /// An init container: runs to its end; a non-zero exit is an error
    /// carrying its output (what `kubectl logs` would show).
    fn run_to_completion(&mut self, pod: &str, name: &str, args: &[String]) -> Result<(), String> {
        let mut all: Vec<&str> = vec!["run", "--rm", "--pod", pod, "--pull", "never"];
        all.extend(args.iter().map(String::as_str));
        let out = run(&all);
        if !out.status.success() {
            return Err(format!("init container {name} failed: {}", text(&out)));
        }
        Ok(())
    }

    /// Host directories for the pod's volumes: emptyDir (mode 0777, as the
    /// kubelet makes it) and the projected ServiceAccount token.
    fn volumes(&self, pod: &Value, info: &PodInfo) -> Result<Vec<(String, PathBuf)>, String> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default();
            let path = self.dir.join(&info.name).join(name);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
            if v.get("emptyDir").is_some() {
            } else if let Some(sources) = v["projected"]["sources"].as_array() {
                for s in sources {
                    let token = &s["serviceAccountToken"];
                    let file = token["path"].as_str().ok_or(format!(
                        "volume {name}: only serviceAccountToken projections"
                    ))?;
                    std::fs::write(path.join(file), &info.token).unwrap();
                    std::fs::set_permissions(
                        path.join(file),
                        std::fs::Permissions::from_mode(0o644),
                    )
                    .unwrap();
                }
            } else {
                return Err(format!(
                    "volume {name}: this runner knows emptyDir and projected tokens"
                ));
            }
            out.push((name.to_string(), path));
        }
        Ok(out)
    }

    /// The pod's infra container, which holds its network namespace.
    pub fn infra(&self, pod: &Pod) -> String {
        ok(&[
            "pod",
            "inspect",
            "--format",
            "{{.InfraContainerID}}",
            &pod.id,
        ])
    }

    /// The logs of a container (stdout and stderr).
    pub fn logs(&self, id: &str) -> String {
        text(&run(&["logs", id]))
    }

    /// A container's main process id on the host (to look at its
    /// credentials or enter its network namespace).
    pub fn pid(&self, id: &str) -> u32 {
        ok(&["inspect", "--format", "{{.State.Pid}}", id])
            .parse()
            .unwrap()
    }

    pub fn inspect(&self, id: &str, format: &str) -> String {
        ok(&["inspect", "--format", format, id])
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in self.containers.iter().rev() {
            let _ = run(&["rm", "-f", "-t", "1", c]);
        }
        for p in self.pods.iter().rev() {
            let _ = run(&["pod", "rm", "-f", "-t", "1", p]);
        }
        let _ = run(&["network", "rm", "-f", &self.network]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The podman flags for one container of a pod spec.
pub fn container_args(
    c: &Value,
    spec: &Value,
    info: &PodInfo,
    volumes: &[(String, PathBuf)],
) -> Result<Vec<String>, String> {
    let name = c["name"].as_str().unwrap_or_default();
    let mut args: Vec<String> = Vec::new();
    let sc = &c["securityContext"];
    let uid = sc["runAsUser"]
        .as_u64()
        .or_else(|| spec["securityContext"]["runAsUser"].as_u64());
    let non_root = sc["runAsNonRoot"]
        .as_bool()
        .or_else(|| spec["securityContext"]["runAsNonRoot"].as_bool())
        .unwrap_or(false);
    match uid {
        Some(0) if non_root => {
            return Err(format!("container {name}: runAsNonRoot with runAsUser 0"));
        }
        Some(u) => args.extend(["--user".into(), u.to_string()]),
        None if non_root => {
            return Err(format!(
                "container {name}: runAsNonRoot needs a numeric runAsUser here"
            ));
        }
        None => {}
    }
    if sc["readOnlyRootFilesystem"] == true {
        args.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if sc["allowPrivilegeEscalation"] == false {
        args.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    if sc["privileged"] == true {
        args.push("--privileged".into());
    }
    for cap in sc["capabilities"]["drop"].as_array().into_iter().flatten() {
        args.extend(["--cap-drop".into(), cap.as_str().unwrap_or_default().into()]);
    }
    for cap in sc["capabilities"]["add"].as_array().into_iter().flatten() {
        args.extend(["--cap-add".into(), cap.as_str().unwrap_or_default().into()]);
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let key = e["name"].as_str().unwrap_or_default();
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(path)) => match path.as_str() {
                "metadata.namespace" => info.namespace.clone(),
                "metadata.name" => info.name.clone(),
                "spec.serviceAccountName" => spec["serviceAccountName"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string(),
                "status.podIP" => info.ip.clone(),
                other => return Err(format!("env {key}: fieldRef {other} is not resolved here")),
            },
            _ => String::new(),
        };
        args.extend(["--env".into(), format!("{key}={value}")]);
    }
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let vname = m["name"].as_str().unwrap_or_default();
        let host = volumes
            .iter()
            .find(|(n, _)| n == vname)
            .map(|(_, p)| p)
            .ok_or(format!(
                "container {name}: volumeMount {vname} has no volume"
            ))?;
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        args.extend([
            "--volume".into(),
            format!(
                "{}:{}{ro}",
                host.display(),
                m["mountPath"].as_str().unwrap_or_default()
            ),
        ]);
    }
    if let Some(cmd) = c["command"].as_array() {
        let cmd: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
        args.extend(["--entrypoint".into(), serde_json::to_string(&cmd).unwrap()]);
    }
    args.push(
        c["image"]
            .as_str()
            .ok_or(format!("container {name}: no image"))?
            .to_string(),
    );
    args.extend(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from),
    );
    Ok(args)
}

/// Waits for a container's httpGet probe to answer 2xx, as the kubelet
/// does before starting the next container; a container that exits first
/// is an error with its logs.
fn wait_for_probe(c: &Value, probe: &str, ip: &str, id: &str) -> Result<(), String> {
    let get = &c[probe]["httpGet"];
    let (Some(path), Some(port)) = (get["path"].as_str(), get["port"].as_u64()) else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http_ok(ip, port as u16, path) {
            return Ok(());
        }
        let state = ok(&["inspect", "--format", "{{.State.Status}}", id]);
        if state != "running" || Instant::now() > deadline {
            return Err(format!(
                "container {} never passed its {probe} ({state}): {}",
                c["name"],
                text(&run(&["logs", id]))
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One plain HTTP/1.1 GET; whether it answered 2xx.
pub fn http_ok(ip: &str, port: u16, path: &str) -> bool {
    http_get(ip, port, path).is_some_and(|(status, _)| (200..300).contains(&status))
}

/// One plain HTTP/1.1 GET: (status, body).
pub fn http_get(ip: &str, port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let addr = format!("{ip}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {ip}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}
