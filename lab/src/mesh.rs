//! A mesh on test hosts: the real weft-controller with a directory source
//! (host 198.18.0.100) and meshed pods whose proxies stream their config
//! from it. Tests write the directory to change the mesh.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::apps::{Behaviour, HttpVersions, http_app_with};
use crate::netns::{Host, Lab, NsRuntime};
use crate::pod::{DISCOVERY_PORT, Pod, start_controller};

pub struct MeshLab {
    pub lab: Arc<Lab>,
    pub ctl: Host,
    pub ctl_rt: NsRuntime,
    pub ctl_pid: u32,
    pub dir: PathBuf,
    /// With identity: the CA files (`weft identity init`) and tokens.
    pub pki: Option<PathBuf>,
    ctl_args: Vec<String>,
    pods: Vec<(String, Pod)>,
}

/// Identity for a lab: the controller issues certificates and proxies get
/// them, so pod-to-pod traffic is mesh TLS.
pub struct Identity {
    /// Every service account of namespace `shop` that pods will run as.
    pub service_accounts: Vec<String>,
    /// The controller's `--leaf-lifetime`.
    pub leaf_lifetime: &'static str,
}

/// The identity service's port, as the proxies reach it.
pub const IDENTITY_PORT: u16 = 8080;

/// The static token of a service account of namespace `shop`.
pub fn token_of(service_account: &str) -> String {
    format!("token-shop-{service_account}")
}

impl MeshLab {
    /// A lab with the controller running over `files` (name, YAML); `None`
    /// (after a loud skip message) where network namespaces are unavailable.
    pub async fn start(test: &str, files: &[(&str, String)]) -> Option<Self> {
        Self::start_with(test, files, None).await
    }

    /// Like [`MeshLab::start`], with the identity service on when
    /// `identity` says so (CA files made by the real `weft identity init`).
    pub async fn start_with(
        test: &str,
        files: &[(&str, String)],
        identity: Option<Identity>,
    ) -> Option<Self> {
        let lab = Lab::new(test)?;
        let dir = std::env::temp_dir().join(format!("weft-e2e-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mesh dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("mesh file");
        }
        let (pki, ctl_args) = match identity {
            Some(id) => {
                let (pki, args) = prepare_identity(&dir, &id);
                (Some(pki), args)
            }
            None => (None, Vec::new()),
        };
        let ctl = lab.host("ctl", 100);
        let ctl_rt = ctl.rt();
        let ctl_pid = start_controller(&ctl, &ctl_rt, &dir, &ctl_args).await;
        Some(Self {
            lab,
            ctl,
            ctl_rt,
            ctl_pid,
            dir,
            pki,
            ctl_args,
            pods: Vec::new(),
        })
    }

    /// The proxy settings of a pod running as `service_account`: its
    /// identity when the lab has identity on.
    pub fn identity_env(&self, service_account: &str) -> Vec<(String, String)> {
        let Some(pki) = &self.pki else {
            return vec![];
        };
        vec![
            (
                "WEFT_PROXY_IDENTITY_ADDR".into(),
                format!("198.18.0.100:{IDENTITY_PORT}"),
            ),
            (
                "WEFT_PROXY_TRUST_ANCHORS".into(),
                pki.join("ca.crt").display().to_string(),
            ),
            (
                "WEFT_PROXY_TOKEN_FILE".into(),
                pki.join(format!("{service_account}.token"))
                    .display()
                    .to_string(),
            ),
            ("WEFT_PROXY_SERVICE_ACCOUNT".into(), service_account.into()),
        ]
    }

    /// Adds a meshed pod `shop/<name>` at 198.18.0.`octet`, running `apps`
    /// (spawned on the pod's runtime) before its proxy starts.
    pub async fn add_pod<F>(&mut self, name: &str, octet: u8, apps: F, env: &[(&str, &str)])
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.add_pod_logged(name, octet, apps, env, None).await;
    }

    /// [`MeshLab::add_pod`] with the proxy's stdout (its access log) going
    /// to `stdout` when given.
    pub async fn add_pod_logged<F>(
        &mut self,
        name: &str,
        octet: u8,
        apps: F,
        env: &[(&str, &str)],
        stdout: Option<&Path>,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut pod = Pod::new(&self.lab, name, octet);
        pod.proxy_stdout = stdout.map(Path::to_path_buf);
        pod.rt.run(apps).await;
        let controller = format!("198.18.0.100:{DISCOVERY_PORT}");
        let mut all = vec![
            ("WEFT_PROXY_CONTROLLER_ADDR", controller.as_str()),
            ("WEFT_PROXY_NAMESPACE", "shop"),
            ("WEFT_PROXY_POD_NAME", name),
        ];
        all.extend_from_slice(env);
        pod.mesh(&all).await;
        self.pods.push((name.to_string(), pod));
    }

    /// Adds a meshed pod running the test HTTP app as `name` on port 8080
    /// (HTTP/1 and HTTP/2), its `/hello` behaving as given.
    pub async fn add_app_pod(&mut self, name: &'static str, octet: u8, behaviour: Behaviour) {
        let app = async move {
            http_app_with(
                std::net::SocketAddr::from(([0, 0, 0, 0], 8080)),
                name,
                HttpVersions::Both,
                behaviour,
            )
            .await
            .expect("the test app serves");
        };
        self.add_pod(name, octet, app, &[]).await;
    }

    /// Adds a meshed pod running as service account `sa`, with its
    /// identity when the lab has identity on.
    pub async fn add_pod_as<F>(&mut self, name: &str, octet: u8, sa: &str, apps: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let env = self.identity_env(sa);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.add_pod(name, octet, apps, &env).await;
    }

    pub fn pod(&self, name: &str) -> &Pod {
        &self
            .pods
            .iter()
            .find(|(n, _)| n == name)
            .expect("a pod of that name")
            .1
    }

    /// Removes a pod from the mesh: its proxy killed, its applications gone,
    /// as when the pod's process dies.
    pub fn kill_pod(&mut self, name: &str) {
        let i = self
            .pods
            .iter()
            .position(|(n, _)| n == name)
            .expect("a pod of that name");
        let (_, pod) = self.pods.remove(i);
        if let Some(pid) = pod.proxy_pid {
            self.lab.kill(pid);
        }
        drop(pod);
    }

    /// Replaces a file of the mesh atomically (write, then rename).
    pub fn write(&self, file: &str, text: &str) {
        write_atomic(&self.dir.join(file), text);
    }

    pub async fn restart_controller(&mut self) {
        self.ctl_pid = start_controller(&self.ctl, &self.ctl_rt, &self.dir, &self.ctl_args).await;
    }
}

impl Drop for MeshLab {
    fn drop(&mut self) {
        // Proxies, then the controller, then its directory: nothing is left
        // to report the others vanishing.
        for (_, pod) in &self.pods {
            if let Some(pid) = pod.proxy_pid {
                self.lab.kill(pid);
            }
        }
        self.lab.kill(self.ctl_pid);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(pki) = &self.pki {
            let _ = std::fs::remove_dir_all(pki);
        }
    }
}

/// The CA files (`<dir>.pki`: trust anchor, issuer, one token per service
/// account) of a mesh with identity, and the controller flags that use them.
pub fn prepare_identity(dir: &Path, id: &Identity) -> (PathBuf, Vec<String>) {
    let pki = dir.with_extension("pki");
    let _ = std::fs::remove_dir_all(&pki);
    identity_init(&pki);
    let tokens: String = id
        .service_accounts
        .iter()
        .map(|sa| {
            let token = token_of(sa);
            std::fs::write(pki.join(format!("{sa}.token")), &token).expect("token file");
            format!("- {{token: {token}, namespace: shop, serviceAccount: {sa}}}\n")
        })
        .collect();
    std::fs::write(pki.join("tokens.yaml"), tokens).expect("tokens");
    let mut args = Vec::new();
    for (flag, file) in [
        ("--trust-anchors", "ca.crt"),
        ("--issuer-cert", "issuer.crt"),
        ("--issuer-key", "issuer.key"),
        ("--static-tokens", "tokens.yaml"),
    ] {
        args.push(flag.to_string());
        args.push(pki.join(file).display().to_string());
    }
    args.push("--leaf-lifetime".into());
    args.push(id.leaf_lifetime.into());
    (pki, args)
}

/// Creates CA files in `dir` with the real `weft identity init`.
pub fn identity_init(dir: &Path) {
    let out = std::process::Command::new(crate::bins::path("weft"))
        .args(["identity", "init", "--out"])
        .arg(dir)
        .output()
        .expect("run weft identity init");
    assert!(
        out.status.success(),
        "weft identity init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a file the way editors and tools do: a temporary file renamed
/// over the old one.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
