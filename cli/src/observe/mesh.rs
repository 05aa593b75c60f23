//! Where the proxies are and how to reach their admin ports: the running
//! `weft demo` (it leaves a state file naming its pods), or a cluster (the
//! pods carrying `weft.dev/proxy-version`, reached through the API
//! server's pod proxy; tap goes through the controller's relay, since
//! proxies serve tap only to localhost and to the controller).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{AsyncBufReadExt, StreamExt};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use tokio::sync::mpsc;

use super::stats::PodInfo;

/// One pod of the demo, as its state file lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DemoPod {
    #[serde(flatten)]
    pub info: PodInfo,
    /// The proxy's admin address, inside `netns` when set.
    pub admin: SocketAddr,
    pub netns: Option<String>,
}

/// What `weft demo` writes while it runs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DemoState {
    pub pid: u32,
    pub pods: Vec<DemoPod>,
}

/// Where the running demo's state file is: `WEFT_DEMO_STATE`, else
/// `weft-demo-<uid>.json` in `XDG_RUNTIME_DIR` or the temporary directory.
pub fn demo_state_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_DEMO_STATE") {
        return PathBuf::from(p);
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    dir.join(format!("weft-demo-{uid}.json"))
}

/// The running demo, if any (a state file whose process is alive).
pub fn running_demo() -> Option<DemoState> {
    let text = std::fs::read_to_string(demo_state_path()).ok()?;
    let state: DemoState = serde_json::from_str(&text).ok()?;
    std::path::Path::new(&format!("/proc/{}", state.pid))
        .exists()
        .then_some(state)
}

/// Which mesh the observability commands look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The running `weft demo` if there is one, else the cluster.
    Auto,
    Demo,
    Kubernetes,
}

/// Flags the observability commands share.
#[derive(clap::Args, Clone, Debug)]
pub struct MeshArgs {
    /// The mesh to look at.
    #[arg(long, value_enum, default_value = "auto")]
    pub mesh: Source,
    /// Only this namespace (default: all).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The namespace Weft's controller runs in (for tap in a cluster).
    #[arg(long, default_value = "weft")]
    pub weft_namespace: String,
}

pub enum Mesh {
    Demo(DemoState),
    Kubernetes {
        client: kube::Client,
        namespace: Option<String>,
        weft_namespace: String,
    },
}

/// A proxy to read from.
#[derive(Clone, Debug)]
pub struct Target {
    pub pod: PodInfo,
    access: Access,
}

#[derive(Clone, Debug)]
enum Access {
    Direct(SocketAddr),
    Netns(String, SocketAddr),
    /// Through the API server.
    Api,
}

impl Mesh {
    pub async fn open(args: &MeshArgs) -> anyhow::Result<Self> {
        let demo = || {
            running_demo().with_context(|| {
                format!(
                    "no weft demo is running (no live {}); start one with ./scripts/demo",
                    demo_state_path().display()
                )
            })
        };
        let kube = || async {
            kube::Client::try_default()
                .await
                .context("cannot reach a cluster (KUBECONFIG, or in-cluster config)")
        };
        Ok(match args.mesh {
            Source::Demo => Mesh::Demo(demo()?),
            Source::Auto if running_demo().is_some() => Mesh::Demo(demo()?),
            Source::Auto | Source::Kubernetes => Mesh::Kubernetes {
                client: kube().await?,
                namespace: args.namespace.clone(),
                weft_namespace: args.weft_namespace.clone(),
            },
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Mesh::Demo(_) => "demo",
            Mesh::Kubernetes { .. } => "kubernetes",
        }
    }

    /// Every meshed pod (of the namespace, if one was given).
    pub async fn targets(&self) -> anyhow::Result<Vec<Target>> {
        match self {
            Mesh::Demo(state) => Ok(state
                .pods
                .iter()
                .map(|p| Target {
                    pod: p.info.clone(),
                    access: match &p.netns {
                        Some(ns) => Access::Netns(ns.clone(), p.admin),
                        None => Access::Direct(p.admin),
                    },
                })
                .collect()),
            Mesh::Kubernetes {
                client, namespace, ..
            } => {
                let api: Api<Pod> = match namespace {
                    Some(ns) => Api::namespaced(client.clone(), ns),
                    None => Api::all(client.clone()),
                };
                let pods = api
                    .list(&ListParams::default())
                    .await
                    .context("listing pods")?;
                Ok(pods
                    .items
                    .iter()
                    .filter_map(pod_info)
                    .map(|pod| Target {
                        pod,
                        access: Access::Api,
                    })
                    .collect())
            }
        }
    }

    /// GETs `path` of a proxy's admin server.
    pub async fn get(&self, target: &Target, path: &str) -> anyhow::Result<String> {
        let p = &target.pod;
        match (&target.access, self) {
            (Access::Api, Mesh::Kubernetes { client, .. }) => {
                let req = http::Request::get(format!(
                    "/api/v1/namespaces/{}/pods/{}:4191/proxy{path}",
                    p.namespace, p.name
                ))
                .body(Vec::new())?;
                client
                    .request_text(req)
                    .await
                    .with_context(|| format!("{}/{}: GET {path}", p.namespace, p.name))
            }
            (access, _) => {
                let (status, body) = direct_get(access, path).await?;
                let text = String::from_utf8_lossy(&body).into_owned();
                if status != 200 {
                    bail!(
                        "{}/{}: GET {path}: {status} {}",
                        p.namespace,
                        p.name,
                        text.trim()
                    );
                }
                Ok(text)
            }
        }
    }

    /// Streams a proxy's tap (`query` holds the filters): each line, as it
    /// comes, on the returned channel; it closes when the stream ends.
    pub async fn tap(
        &self,
        target: &Target,
        query: &str,
    ) -> anyhow::Result<mpsc::UnboundedReceiver<String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let p = &target.pod;
        match (&target.access, self) {
            (
                Access::Api,
                Mesh::Kubernetes {
                    client,
                    weft_namespace,
                    ..
                },
            ) => {
                // Through the API server to the controller, which relays.
                let controllers: Api<Pod> = Api::namespaced(client.clone(), weft_namespace);
                let lp = ListParams::default().labels("app.kubernetes.io/name=weft-controller");
                let ctl = controllers
                    .list(&lp)
                    .await
                    .context("finding the controller")?
                    .items
                    .into_iter()
                    .find_map(|c| c.metadata.name)
                    .with_context(|| {
                        format!("no weft-controller pod in namespace {weft_namespace}")
                    })?;
                let sep = if query.is_empty() { "" } else { "&" };
                let req = http::Request::get(format!(
                    "/api/v1/namespaces/{weft_namespace}/pods/{ctl}:9990/proxy/tap?namespace={}&pod={}{sep}{query}",
                    p.namespace, p.name
                ))
                .body(Vec::new())?;
                let lines = client.request_stream(req).await.with_context(|| {
                    format!("tap of {}/{} through the controller", p.namespace, p.name)
                })?;
                tokio::spawn(async move {
                    let mut lines = lines.lines();
                    while let Some(Ok(line)) = lines.next().await {
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                });
            }
            (access, _) => {
                let rsp = direct_request(access, &format!("/tap?{query}")).await?;
                let status = rsp.status().as_u16();
                if status != 200 {
                    let body = rsp.into_body().collect().await?.to_bytes();
                    bail!(
                        "{}/{}: tap: {status} {}",
                        p.namespace,
                        p.name,
                        String::from_utf8_lossy(&body).trim()
                    );
                }
                let mut body = rsp.into_body();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(Ok(frame)) = body.frame().await {
                        let Some(d) = frame.data_ref() else { continue };
                        buf.extend_from_slice(d);
                        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                            let line: Vec<u8> = buf.drain(..=i).collect();
                            let line = String::from_utf8_lossy(&line).trim().to_string();
                            if tx.send(line).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        }
        Ok(rx)
    }
}

/// A meshed pod of the cluster, with the workload it belongs to.
fn pod_info(pod: &Pod) -> Option<PodInfo> {
    let meta = &pod.metadata;
    meta.annotations.as_ref()?.get("weft.dev/proxy-version")?;
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") || status.pod_ip.is_none() {
        return None;
    }
    let name = meta.name.clone()?;
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"))
        .cloned();
    let workload = meta
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|r| r.controller == Some(true)))
        .map(|owner| match (owner.kind.as_str(), &hash) {
            // A Deployment's pods belong to its ReplicaSet `<deployment>-<hash>`.
            ("ReplicaSet", Some(h)) => owner
                .name
                .strip_suffix(&format!("-{h}"))
                .unwrap_or(&owner.name)
                .to_string(),
            _ => owner.name.clone(),
        })
        .unwrap_or_else(|| name.clone());
    Some(PodInfo {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
        workload,
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
    })
}

/// A TCP connection to `addr`, opened inside network namespace `netns`
/// when given (the demo's pods, as root).
async fn connect(access: &Access) -> anyhow::Result<tokio::net::TcpStream> {
    match access {
        Access::Direct(addr) => Ok(tokio::net::TcpStream::connect(addr).await?),
        Access::Netns(ns, addr) => {
            let (ns, addr) = (ns.clone(), *addr);
            // A socket belongs to the namespace it was created in: create it
            // on a thread that entered the pod's namespace.
            let std =
                tokio::task::spawn_blocking(move || -> anyhow::Result<std::net::TcpStream> {
                    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
                        .with_context(|| format!("the demo pod's namespace {ns}"))?;
                    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("entering the demo's namespace (run as root, as the demo does)")?;
                    let s = std::net::TcpStream::connect(addr)?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .await??;
            Ok(tokio::net::TcpStream::from_std(std)?)
        }
        Access::Api => bail!("not a direct address"),
    }
}

async fn direct_request(
    access: &Access,
    path: &str,
) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    let stream = connect(access).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "weft-admin")
        .body(http_body_util::Empty::<Bytes>::new())?;
    Ok(send.send_request(req).await?)
}

async fn direct_get(access: &Access, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let rsp = direct_request(access, path).await?;
    let status = rsp.status().as_u16();
    Ok((status, rsp.into_body().collect().await?.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployments_pod_belongs_to_the_deployment() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-v1-5d9f8b7c4-x2k9p", "namespace": "shop",
                "labels": {"pod-template-hash": "5d9f8b7c4"},
                "annotations": {"weft.dev/proxy-version": "v0.1.0"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-v1-5d9f8b7c4", "uid": "u", "controller": true}]
            },
            "spec": {"serviceAccountName": "web", "containers": []},
            "status": {"phase": "Running", "podIP": "10.0.0.3"}
        }))
        .unwrap();
        let info = pod_info(&pod).unwrap();
        assert_eq!(info.workload, "web-v1");
        assert_eq!(info.service_account, "web");
        let mut unmeshed = pod.clone();
        unmeshed.metadata.annotations = None;
        assert!(pod_info(&unmeshed).is_none());
        let mut pending = pod;
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        assert!(pod_info(&pending).is_none());
    }
}
