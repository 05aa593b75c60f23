//! A mesh on test hosts: the real weft-controller with a directory source
//! (host 198.18.0.100) and meshed pods whose proxies stream their config
//! from it. Tests write the directory to change the mesh.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::netns::{Host, Lab, NsRuntime};
use crate::pod::{DISCOVERY_PORT, Pod, start_controller};

pub struct MeshLab {
    pub lab: Arc<Lab>,
    pub ctl: Host,
    pub ctl_rt: NsRuntime,
    pub ctl_pid: u32,
    pub dir: PathBuf,
    pods: Vec<(String, Pod)>,
}

impl MeshLab {
    /// A lab with the controller running over `files` (name, YAML); `None`
    /// (after a loud skip message) where network namespaces are unavailable.
    pub async fn start(test: &str, files: &[(&str, String)]) -> Option<Self> {
        let lab = Lab::new(test)?;
        let dir = std::env::temp_dir().join(format!("weft-e2e-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mesh dir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("mesh file");
        }
        let ctl = lab.host("ctl", 100);
        let ctl_rt = ctl.rt();
        let ctl_pid = start_controller(&ctl, &ctl_rt, &dir).await;
        Some(Self {
            lab,
            ctl,
            ctl_rt,
            ctl_pid,
            dir,
            pods: Vec::new(),
        })
    }

    /// Adds a meshed pod `shop/<name>` at 198.18.0.`octet`, running `apps`
    /// (spawned on the pod's runtime) before its proxy starts.
    pub async fn add_pod<F>(&mut self, name: &str, octet: u8, apps: F, env: &[(&str, &str)])
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut pod = Pod::new(&self.lab, name, octet);
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
        self.ctl_pid = start_controller(&self.ctl, &self.ctl_rt, &self.dir).await;
    }
}

impl Drop for MeshLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a file the way editors and tools do: a temporary file renamed
/// over the old one.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
