//! The observability commands as a user runs them: `weft stat`, `weft top`,
//! `weft tap` and `weft dashboard` (loaded in headless Chromium) against a
//! running `weft demo`; and `weft stat` / `weft tap` against a cluster,
//! through a fake API server whose pod proxy reaches the real proxies (and,
//! for tap, the controller's relay over mesh TLS).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft_tests::apps::{self, HttpVersions};
use weft_tests::bins;
use weft_tests::client::{self, Conn};
use weft_tests::fake_api::FakeApi;
use weft_tests::mesh::{Identity, MeshLab};
use weft_tests::yaml::{NAMESPACE, pod, service};

/// Runs `cmd` to completion within `secs`; its stdout (panics with its
/// stderr when it fails).
fn output(mut cmd: Command, secs: u64) -> String {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{cmd:?} failed: {err}\n{out}");
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Headless Chromium, if this machine has it (CI installs it and sets
/// `WEFT_REQUIRE_CHROMIUM=1`, which makes its absence a failure).
fn chromium() -> Option<PathBuf> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("WEFT_REQUIRE_CHROMIUM").is_none(),
            "Chromium is required here (apt-get install chromium)"
        );
        weft_tests::skip_loudly(
            "the dashboard's browser check: no Chromium (apt-get install chromium)",
        );
    }
    found
}

fn chromium_cmd(browser: &Path, profile: &Path) -> Command {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    cmd
}

/// `name="value"` of an element's attribute in dumped HTML, per element
/// carrying `key="id"`.
fn attribute(dom: &str, key: &str, id: &str, name: &str) -> Option<String> {
    let at = dom.find(&format!("{key}=\"{id}\""))?;
    let tag_start = dom[..at].rfind('<')?;
    let tag_end = at + dom[at..].find('>')?;
    let tag = &dom[tag_start..tag_end];
    let v = tag.split(&format!(" {name}=\"")).nth(1)?;
    Some(v[..v.find('"')?].to_string())
}

struct Demo {
    child: Child,
    state: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.state);
    }
}

fn weft(state: &Path) -> Command {
    let mut cmd = Command::new(bins::path("weft"));
    cmd.env("WEFT_DEMO_STATE", state)
        .env("WEFT_LAB_LOG", "warn");
    cmd
}

#[test]
fn stat_top_tap_and_the_dashboard_show_the_demo() {
    let state = std::env::temp_dir().join(format!("weft-observe-demo-{}.json", std::process::id()));
    let child = weft(&state)
        .args([
            "demo",
            "--mode",
            "loopback",
            "--duration",
            "90",
            "--plain",
            "--rate",
            "60",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let demo = Demo {
        child,
        state: state.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !demo.state.exists() {
        assert!(Instant::now() < deadline, "the demo wrote no state file");
        std::thread::sleep(Duration::from_millis(100));
    }

    // stat: every workload, the service, its route, and who calls whom.
    let mut cmd = weft(&state);
    cmd.args([
        "stat", "all", "-o", "json", "--window", "4s", "--mesh", "demo",
    ]);
    let stat: Value = serde_json::from_str(&output(cmd, 30)).unwrap();
    let row = |kind: &str, name: &str| -> Value {
        stat[kind]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {name}: {stat:#}"))
    };
    let web = row("services", "web");
    // 60 requests a second, over a window of 4 s.
    let rps = web["rps"].as_f64().unwrap();
    assert!((40.0..=80.0).contains(&rps), "{web}");
    assert!(
        web["success_rate"].as_f64().unwrap() > 0.95,
        "retries hide the flaky pod: {web}"
    );
    let v1 = row("deployments", "web-v1");
    assert_eq!(v1["pods"], 2);
    assert!(
        v1["success_rate"].as_f64().unwrap() < 1.0,
        "web-v1-b fails on purpose: {v1}"
    );
    assert_eq!(v1["mtls_share"], 1.0);
    assert_eq!(stat["routes"][0]["route"], "shop/web-split");
    let edges = stat["edges"].as_array().unwrap();
    assert!(!edges.is_empty());
    for e in edges {
        assert_eq!(e["from"], "shop/frontend", "{e}");
        assert!(e["to"].as_str().unwrap().starts_with("shop/web-v"), "{e}");
        assert_eq!(e["mtls"], true);
    }

    // top: one refresh, printed.
    let mut cmd = weft(&state);
    cmd.args([
        "top",
        "--count",
        "1",
        "--plain",
        "--interval",
        "2s",
        "--mesh",
        "demo",
    ]);
    let top = output(cmd, 30);
    assert!(
        top.contains("weft top") && top.contains("web-v1") && top.contains("shop/frontend"),
        "{top}"
    );

    // tap: web-v1's inbound requests as they happen.
    let mut cmd = weft(&state);
    cmd.args([
        "tap",
        "web-v1",
        "--direction",
        "inbound",
        "--max",
        "4",
        "-o",
        "json",
        "--mesh",
        "demo",
    ]);
    let events: Vec<Value> = output(cmd, 30)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let responses: Vec<&Value> = events.iter().filter(|e| e["type"] == "response").collect();
    assert_eq!(responses.len(), 4, "{events:#?}");
    for e in &events {
        assert!(
            e["pod"].as_str().unwrap().starts_with("shop/web-v1-"),
            "{e}"
        );
        assert_eq!(e["direction"], "inbound");
        assert_eq!(e["client_id"], "spiffe://cluster.local/ns/shop/sa/frontend");
    }

    // The dashboard, in a browser.
    let port = free_port();
    let mut dashboard = weft(&state)
        .args([
            "dashboard",
            "--mesh",
            "demo",
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = rt
            .block_on(client::get(addr, "/api/stat"))
            .map(|r| r.status() == 200);
        if matches!(ok, Ok(true)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never served stats"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its tap is an event stream of the proxies' events.
    let first = rt.block_on(async {
        let mut conn = Conn::http1(addr).await.unwrap();
        let req = http::Request::get("/api/tap?path=/hello")
            .body(client::empty())
            .unwrap();
        let rsp = conn.send(req).await.unwrap();
        assert_eq!(rsp.headers()["content-type"], "text/event-stream");
        let mut body = rsp.into_body();
        let frame = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::BodyExt::frame(&mut body),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap();
        String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
    });
    assert!(
        first.starts_with("data: {") && first.contains("\"path\":\"/hello\""),
        "{first}"
    );

    if let Some(browser) = chromium() {
        let profile = std::env::temp_dir().join(format!("weft-chromium-{}", std::process::id()));
        let url = format!("http://127.0.0.1:{port}/");
        let mut cmd = chromium_cmd(&browser, &profile);
        cmd.args(["--dump-dom", &url]);
        let dom = output(cmd, 60);
        for node in ["shop/frontend", "shop/web-v1", "shop/web-v2"] {
            assert!(
                dom.contains(&format!("data-node=\"{node}\"")),
                "{node} not drawn:\n{dom}"
            );
        }
        let rps = |node| {
            attribute(&dom, "data-node", node, "data-rps")
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // The split sends traffic to at least one version at every step.
        assert!(
            rps("shop/web-v1") + rps("shop/web-v2") > 10.0,
            "no rates drawn:\n{dom}"
        );
        let edge = "shop/frontend-&gt;shop/web-v";
        assert!(
            dom.contains(&format!("data-edge=\"{edge}")),
            "no edge drawn"
        );
        assert!(dom.contains("data-mtls=\"true\""), "edges are mTLS");
        assert!(
            dom.contains("data-row=\"route\" data-name=\"shop/web/shop/web-split\""),
            "route table"
        );
        assert!(
            dom.contains("<div id=\"error\" role=\"alert\" hidden=\"\"></div>"),
            "no error shown"
        );

        // A screenshot, kept as the test's artifact.
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target"))
            .join("test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let shot = dir.join("dashboard.png");
        let _ = std::fs::remove_file(&shot);
        let mut cmd = chromium_cmd(&browser, &profile);
        cmd.args([
            "--window-size=1400,1000",
            &format!("--screenshot={}", shot.display()),
            &url,
        ]);
        output(cmd, 60);
        let png = std::fs::read(&shot).expect("a screenshot");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a real picture"
        );
        eprintln!("dashboard screenshot: {}", shot.display());
        let _ = std::fs::remove_dir_all(&profile);
    }
    let _ = dashboard.kill();
    let _ = dashboard.wait();
    drop(demo);
}

/// The cluster as the fake API server holds it: web (a Deployment's pod)
/// and frontend in shop, the controller in weft, at their lab addresses.
fn cluster_objects() -> Vec<Value> {
    let pod =
        |ns: &str, name: &str, sa: &str, ip: &str, labels: Value, owner: Option<(&str, &str)>| {
            let mut p = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": ns, "labels": labels,
                    "annotations": {"weft.dev/proxy-version": "test"}},
                "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "x"}]},
                "status": {"phase": "Running", "podIP": ip}
            });
            if let Some((kind, owner)) = owner {
                p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind,
                "name": owner, "uid": "u", "controller": true}]);
            }
            p
        };
    vec![
        pod(
            "shop",
            "web-7c9d8-abcde",
            "web",
            "198.18.0.3",
            json!({"app": "web", "pod-template-hash": "7c9d8"}),
            Some(("ReplicaSet", "web-7c9d8")),
        ),
        pod(
            "shop",
            "frontend-0",
            "frontend",
            "198.18.0.2",
            json!({"app": "frontend"}),
            Some(("StatefulSet", "frontend")),
        ),
        {
            let mut c = pod(
                "weft",
                "weft-controller-1",
                "weft-controller",
                "198.18.0.100",
                json!({"app.kubernetes.io/name": "weft-controller"}),
                None,
            );
            c["metadata"]["annotations"] = json!({});
            c
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_tap_reach_a_cluster_through_the_api_server() {
    let files = vec![(
        "mesh.yaml",
        format!(
            "{NAMESPACE}{}{}{}",
            service("web", "198.19.0.10", 80, 8080, "web"),
            // The controller's directory names the pods as the API does.
            pod("web-7c9d8-abcde", "web", "web", "198.18.0.3"),
            pod("frontend-0", "frontend", "frontend", "198.18.0.2"),
        ),
    )];
    let identity = Identity {
        service_accounts: vec!["web".into(), "frontend".into()],
        leaf_lifetime: "1h",
    };
    let Some(mut mesh) = MeshLab::start_with("observe-cluster", &files, Some(identity)).await
    else {
        return;
    };
    for (name, octet, sa, tap) in [
        ("web-7c9d8-abcde", 3, "web", "true"),
        ("frontend-0", 2, "frontend", "false"),
    ] {
        let mut env = mesh.identity_env(sa);
        env.push(("WEFT_PROXY_TAP".into(), tap.into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let apps = async move {
            if sa == "web" {
                let any = SocketAddr::from(([0, 0, 0, 0], 8080));
                apps::http_app(any, "web", HttpVersions::Both)
                    .await
                    .unwrap();
            }
        };
        mesh.add_pod(name, octet, apps, &env).await;
    }
    // The API server, in the controller's host (it reaches the pods).
    let api = mesh
        .ctl_rt
        .run(async {
            let api = FakeApi::start().await;
            for o in cluster_objects() {
                api.apply_object(o);
            }
            api
        })
        .await;
    let kubeconfig = mesh.dir.with_extension("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://{}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\ncurrent-context: c\n",
            api.addr
        ),
    )
    .unwrap();
    // Load from the frontend for the rest of the test.
    let load = mesh.pod("frontend-0").rt.spawn(async {
        let mut conn = Conn::http1("198.19.0.10:80".parse().unwrap())
            .await
            .unwrap();
        loop {
            let req = http::Request::get("/hello")
                .header("host", "web.shop.svc.cluster.local")
                .body(client::empty())
                .unwrap();
            let _ = conn.fetch(req).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let weft = |args: &[&str]| {
        let mut cmd = mesh.ctl.command(bins::path("weft"), None);
        cmd.args(args)
            .args(["--mesh", "kubernetes"])
            .env("KUBECONFIG", &kubeconfig);
        cmd
    };

    let out = tokio::task::block_in_place(|| {
        output(
            weft(&["stat", "deployments", "-o", "json", "--window", "3s"]),
            60,
        )
    });
    let stat: Value = serde_json::from_str(&out).unwrap();
    let web = stat["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "web")
        .unwrap_or_else(|| panic!("the Deployment's name, from its ReplicaSet: {stat:#}"))
        .clone();
    assert_eq!(web["namespace"], "shop");
    assert!(web["rps"].as_f64().unwrap() > 5.0, "{web}");
    assert_eq!(web["mtls_share"], 1.0);
    assert!(
        stat["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "frontend")
    );

    // Tap goes API server -> controller -> (mesh TLS, as the controller)
    // the pod's proxy.
    let out = tokio::task::block_in_place(|| {
        output(
            weft(&[
                "tap",
                "web",
                "--max",
                "2",
                "-o",
                "json",
                "--namespace",
                "shop",
            ]),
            60,
        )
    });
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events.iter().filter(|e| e["type"] == "response").count() == 2,
        "{events:#?}"
    );
    assert!(
        events.iter().all(|e| e["pod"] == "shop/web-7c9d8-abcde"),
        "{events:#?}"
    );

    // The frontend's proxy has tap off: the relay says so.
    let failed =
        tokio::task::block_in_place(|| weft(&["tap", "frontend", "--max", "1"]).output().unwrap());
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && err.contains("tap is off"),
        "{err}"
    );
    load.abort();
    let _ = std::fs::remove_file(&kubeconfig);
}
