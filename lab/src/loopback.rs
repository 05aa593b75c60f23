//! A mesh on loopback addresses, for machines where network namespaces and
//! iptables are out of reach (no root): the real controller and real
//! proxies, every "pod" a few addresses of 127.0.0.0/8, no redirection.
//!
//! Without iptables nothing intercepts the app's connections, so each
//! proxy's listeners are told where their connections go
//! (`WEFT_PROXY_*_ORIG_DST`):
//!
//! ```text
//! app ──> 127.77.K.<pod>:4140  outbound listener, "addressed to" the service's cluster IP
//!           └─ endpoints from discovery: 127.77.K.<peer>:8080 (mTLS)
//!                 └─ inbound listener of the peer: its mesh-facing pod IP
//!                       └─ forwarded to its app at 127.78.K.<peer>:8080
//! ```
//!
//! Pod IPs are 127.77.K.n, apps listen on 127.78.K.n, cluster IPs are
//! 127.79.K.n, the controller is 127.77.K.100; K comes from the process ID
//! so two meshes on one machine do not meet. YAML written for a lab
//! (198.18.0.n pods, 198.19.0.n services) is moved onto these addresses by
//! [`LoopbackMesh::relocate`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::mesh::{IDENTITY_PORT, Identity, prepare_identity, write_atomic};
use crate::pod::{ADMIN_PORT, DISCOVERY_PORT, lab_log, sum_metric};
use crate::{bins, client};

/// The controller's last octet, as in the network-namespace lab.
const CONTROLLER: u8 = 100;

pub struct LoopbackMesh {
    /// The K of 127.77.K.n.
    k: u8,
    pub dir: PathBuf,
    pki: Option<PathBuf>,
    children: Vec<(String, Child)>,
}

impl LoopbackMesh {
    /// Starts the controller over `files` (name, YAML written for the lab,
    /// [`LoopbackMesh::relocate`]d here), with identity on when `identity`
    /// says so; waits until it is ready.
    pub async fn start(
        test: &str,
        files: &[(&str, String)],
        identity: Option<Identity>,
    ) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("weft-e2e-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut mesh = LoopbackMesh {
            k: free_subnet(std::process::id())?,
            dir,
            pki: None,
            children: Vec::new(),
        };
        for (name, text) in files {
            std::fs::write(mesh.dir.join(name), mesh.relocate(text))
                .map_err(|e| format!("writing {name}: {e}"))?;
        }
        let mut args = Vec::new();
        if let Some(id) = identity {
            let (pki, flags) = prepare_identity(&mesh.dir, &id);
            mesh.pki = Some(pki);
            args = flags;
        }
        let ctl = mesh.pod_ip(CONTROLLER);
        let child = Command::new(bins::path("weft-controller"))
            .arg("--source")
            .arg(format!("dir:{}", mesh.dir.display()))
            .arg(format!("--discovery-addr={ctl}:{DISCOVERY_PORT}"))
            .arg(format!("--identity-addr={ctl}:{IDENTITY_PORT}"))
            .arg(format!("--admin-addr={ctl}:9990"))
            .args(&args)
            .env("WEFT_CONTROLLER_LOG", lab_log())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting weft-controller: {e}"))?;
        mesh.children.push(("weft-controller".into(), child));
        mesh.wait_ready(SocketAddr::from((ctl, 9990)), "the controller")
            .await?;
        Ok(mesh)
    }

    /// Moves YAML written for the network-namespace lab onto this mesh's
    /// loopback addresses: pods 198.18.0.n -> 127.77.K.n, cluster IPs
    /// 198.19.0.n -> 127.79.K.n.
    pub fn relocate(&self, yaml: &str) -> String {
        yaml.replace("198.18.0.", &format!("127.77.{}.", self.k))
            .replace("198.19.0.", &format!("127.79.{}.", self.k))
    }

    /// The mesh-facing address of pod `n` (its pod IP).
    pub fn pod_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 77, self.k, n)
    }

    /// Where the application of pod `n` listens (the pod's "localhost").
    pub fn app_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 78, self.k, n)
    }

    /// Cluster IP `n` of [`LoopbackMesh::relocate`]d services.
    pub fn service_ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 79, self.k, n)
    }

    /// The address the app of pod `n` connects to for `service`: its
    /// proxy's outbound listener, which treats it as addressed to `service`.
    pub fn outbound_of(&self, n: u8) -> SocketAddr {
        SocketAddr::from((self.pod_ip(n), 4140))
    }

    pub fn admin_of(&self, n: u8) -> SocketAddr {
        SocketAddr::from((self.pod_ip(n), ADMIN_PORT))
    }

    /// Starts the proxy of pod `shop/<name>` (number `n`, service account
    /// `sa`): inbound on the pod IP at `app_port`, forwarding to the app at
    /// [`LoopbackMesh::app_ip`]; outbound connections treated as addressed
    /// to `calls` (if the pod calls anything), with `extra` settings on
    /// top. Waits until it is ready.
    pub async fn add_pod(
        &mut self,
        name: &str,
        n: u8,
        sa: &str,
        app_port: u16,
        calls: Option<SocketAddr>,
        extra: &[(&str, &str)],
    ) -> Result<(), String> {
        let ip = self.pod_ip(n);
        let ctl = self.pod_ip(CONTROLLER);
        let mut env: Vec<(String, String)> = vec![
            ("WEFT_PROXY_INBOUND_ADDR".into(), format!("{ip}:{app_port}")),
            (
                "WEFT_PROXY_INBOUND_ORIG_DST".into(),
                format!("{}:{app_port}", self.app_ip(n)),
            ),
            ("WEFT_PROXY_OUTBOUND_ADDR".into(), format!("{ip}:4140")),
            ("WEFT_PROXY_ADMIN_ADDR".into(), format!("{ip}:{ADMIN_PORT}")),
            (
                "WEFT_PROXY_CONTROLLER_ADDR".into(),
                format!("{ctl}:{DISCOVERY_PORT}"),
            ),
            ("WEFT_PROXY_NAMESPACE".into(), "shop".into()),
            ("WEFT_PROXY_POD_NAME".into(), name.into()),
            ("WEFT_PROXY_SERVICE_ACCOUNT".into(), sa.into()),
            ("WEFT_PROXY_LOG".into(), lab_log()),
            ("WEFT_PROXY_CORES".into(), "1".into()),
            ("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD".into(), "2s".into()),
        ];
        if let Some(to) = calls {
            env.push(("WEFT_PROXY_OUTBOUND_ORIG_DST".into(), to.to_string()));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        if let Some(pki) = &self.pki {
            env.push((
                "WEFT_PROXY_IDENTITY_ADDR".into(),
                format!("{ctl}:{IDENTITY_PORT}"),
            ));
            env.push((
                "WEFT_PROXY_TRUST_ANCHORS".into(),
                pki.join("ca.crt").display().to_string(),
            ));
            env.push((
                "WEFT_PROXY_TOKEN_FILE".into(),
                pki.join(format!("{sa}.token")).display().to_string(),
            ));
        }
        let child = Command::new(bins::path("weft-proxy"))
            .envs(env)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting weft-proxy for {name}: {e}"))?;
        self.children.push((name.to_string(), child));
        self.wait_ready(self.admin_of(n), &format!("the proxy of {name}"))
            .await
    }

    /// Waits until `admin` answers /ready, while the process started last
    /// (the one that should answer) is still running: one that exited
    /// (say, its address was taken) is an error, not someone else's 200.
    async fn wait_ready(&mut self, admin: SocketAddr, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((_, child)) = self.children.last_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("{what} exited ({status}) before it was ready"));
            }
            let ready = client::get(admin, "/ready")
                .await
                .map(|r| r.status().as_u16());
            if matches!(ready, Ok(200)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{what} is not ready at {admin}: {ready:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sums metric `name` of pod `n`'s proxy over the series containing
    /// every one of `parts`.
    pub async fn metric(&self, n: u8, name: &str, parts: &[&str]) -> f64 {
        let text = client::metrics(self.admin_of(n)).await;
        sum_metric(&text, name, parts)
    }

    /// Replaces a file of the mesh atomically (write, then rename),
    /// relocated like the files it started with.
    pub fn write(&self, file: &str, text: &str) {
        write_atomic(&self.dir.join(file), &self.relocate(text));
    }
}

impl Drop for LoopbackMesh {
    fn drop(&mut self) {
        // Proxies first, then the controller (started first): SIGTERM, a
        // short grace, then SIGKILL; each by the PID we started.
        for (_, c) in self.children.iter().rev() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for (_, c) in self.children.iter_mut().rev() {
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(pki) = &self.pki {
            let _ = std::fs::remove_dir_all(pki);
        }
    }
}

/// The third octet a process starts looking from: 1..=250.
fn subnet_of(pid: u32) -> u8 {
    (pid % 250) as u8 + 1
}

/// A third octet no other mesh on this machine uses: from the process's
/// own, the first whose controller address is free.
fn free_subnet(pid: u32) -> Result<u8, String> {
    let start = subnet_of(pid);
    (0..250)
        .map(|i| ((start as u32 - 1 + i) % 250) as u8 + 1)
        .find(|&k| {
            std::net::TcpListener::bind((Ipv4Addr::new(127, 77, k, CONTROLLER), DISCOVERY_PORT))
                .is_ok()
        })
        .ok_or_else(|| "every loopback subnet 127.77.1-250.0/24 is in use".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_addresses_move_onto_loopback() {
        let mesh = LoopbackMesh {
            k: 7,
            dir: PathBuf::new(),
            pki: None,
            children: Vec::new(),
        };
        let yaml = "podIP: 198.18.0.3\nclusterIP: 198.19.0.10\n";
        assert_eq!(
            mesh.relocate(yaml),
            "podIP: 127.77.7.3\nclusterIP: 127.79.7.10\n"
        );
        assert_eq!(mesh.outbound_of(2), "127.77.7.2:4140".parse().unwrap());
        assert_eq!(mesh.app_ip(3), Ipv4Addr::new(127, 78, 7, 3));
    }

    #[test]
    fn a_subnet_in_use_is_passed_over() {
        let pid = 4242;
        let mine = free_subnet(pid).unwrap();
        let _taken =
            std::net::TcpListener::bind((Ipv4Addr::new(127, 77, mine, CONTROLLER), DISCOVERY_PORT))
                .unwrap();
        let next = free_subnet(pid).unwrap();
        assert_ne!(next, mine);
    }

    #[test]
    fn subnets_stay_within_an_octet_and_skip_zero() {
        for pid in [0, 1, 249, 250, 251, u32::MAX] {
            assert!((1..=250).contains(&subnet_of(pid)), "{pid}");
        }
    }
}
