//! The proxies operators would otherwise use, run beside weft in the same
//! configuration: a reverse proxy in the client's pod, one worker thread,
//! keep-alive connections to the same upstream, logging off. Whatever of
//! them is installed (Debian's `haproxy`, `nginx` with
//! `libnginx-mod-stream`) is measured; the rest is skipped with a message.
//!
//! ```text
//! client -> 127.0.0.1:<peer port> (HAProxy / nginx) -> server:8081 / :7001
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use weft_lab::netns::Host;

use crate::load::Workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Peer {
    Haproxy,
    Nginx,
}

impl Peer {
    pub const ALL: [Peer; 2] = [Peer::Haproxy, Peer::Nginx];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Haproxy => "haproxy",
            Peer::Nginx => "nginx",
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Peer::Haproxy => "/usr/sbin/haproxy",
            Peer::Nginx => "/usr/sbin/nginx",
        }
    }

    /// Where it listens in the client's pod for `workload`.
    pub fn addr(self, workload: Workload) -> SocketAddr {
        let base = match self {
            Peer::Haproxy => 9000,
            Peer::Nginx => 9100,
        };
        let port = match workload {
            Workload::Http1Get => 80,
            Workload::Http2Get => 82,
            Workload::TcpEcho | Workload::TcpBulk | Workload::TcpConnect => 70,
        };
        SocketAddr::from(([127, 0, 0, 1], base + port))
    }

    /// Its version line if it is installed and usable, else why not.
    pub fn find(self) -> Result<String, String> {
        let how = match self {
            Peer::Haproxy => "apt-get install haproxy",
            Peer::Nginx => "apt-get install nginx libnginx-mod-stream",
        };
        if !Path::new(self.binary()).exists() {
            return Err(format!("{} is not installed ({how})", self.name()));
        }
        if self == Peer::Nginx && !Path::new(NGINX_STREAM).exists() {
            return Err(format!("nginx has no stream module ({how})"));
        }
        let out = Command::new(self.binary())
            .arg("-v")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.binary()))?;
        // nginx prints its version on stderr, HAProxy on stdout.
        let text = String::from_utf8_lossy(if out.stdout.is_empty() {
            &out.stderr
        } else {
            &out.stdout
        })
        .into_owned();
        Ok(text.lines().next().unwrap_or_default().trim().to_string())
    }

    /// Writes its configuration into `dir` (for an upstream at `server`)
    /// and starts it in `host`; returns its PID (nginx: the master; its
    /// worker is a child).
    pub fn start(self, host: &Host, dir: &Path, server: std::net::Ipv4Addr) -> u32 {
        let dir = dir.join(self.name());
        std::fs::create_dir_all(&dir).expect("peer dir");
        let (file, config) = match self {
            Peer::Haproxy => (dir.join("haproxy.cfg"), haproxy_config(server)),
            Peer::Nginx => (dir.join("nginx.conf"), nginx_config(server, &dir)),
        };
        std::fs::write(&file, config).expect("peer config");
        let mut args: Vec<PathBuf> = match self {
            Peer::Haproxy => vec!["-db".into(), "-f".into()],
            Peer::Nginx => vec![
                "-p".into(),
                dir.clone(),
                "-e".into(),
                dir.join("error.log"),
                "-c".into(),
            ],
        };
        args.push(file);
        let child = host
            .command(self.binary(), None)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name()));
        host.lab().adopt(child)
    }
}

const NGINX_STREAM: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// HTTP/1.1 and HTTP/2 (h2c both ways) keep-alive to the server, TCP
/// passed through; one thread, no logs.
fn haproxy_config(server: std::net::Ipv4Addr) -> String {
    let [http1, http2, tcp] =
        [Workload::Http1Get, Workload::Http2Get, Workload::TcpEcho].map(|w| Peer::Haproxy.addr(w));
    format!(
        "global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend http1
  bind {http1}
  default_backend http1
backend http1
  server s {server}:8081
frontend http2
  bind {http2} proto h2
  default_backend http2
backend http2
  server s {server}:8081 proto h2
listen tcp
  mode tcp
  bind {tcp}
  server s {server}:7001
"
    )
}

/// HTTP/1.1 keep-alive to the server (nginx proxies HTTP/2 clients to
/// HTTP/1.1 upstreams: it has no HTTP/2 upstream), TCP with the stream
/// module; one worker, no access log.
fn nginx_config(server: std::net::Ipv4Addr, dir: &Path) -> String {
    let [http1, http2, tcp] =
        [Workload::Http1Get, Workload::Http2Get, Workload::TcpEcho].map(|w| Peer::Nginx.addr(w));
    let tmp = |name: &str| -> PathBuf { dir.join(name) };
    format!(
        "load_module {NGINX_STREAM};
user root;
worker_processes 1;
daemon off;
pid {pid};
events {{ worker_connections 9000; }}
http {{
  access_log off;
  client_body_temp_path {body};
  proxy_temp_path {proxy};
  fastcgi_temp_path {fastcgi};
  uwsgi_temp_path {uwsgi};
  scgi_temp_path {scgi};
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  upstream server {{ server {server}:8081; keepalive 64; keepalive_requests 10000000; }}
  server {{
    listen {http1};
    listen {http2} http2;
    location / {{ proxy_pass http://server; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}
  }}
}}
stream {{
  server {{ listen {tcp}; proxy_pass {server}:7001; }}
}}
",
        pid = tmp("nginx.pid").display(),
        body = tmp("body").display(),
        proxy = tmp("proxy").display(),
        fastcgi = tmp("fastcgi").display(),
        uwsgi = tmp("uwsgi").display(),
        scgi = tmp("scgi").display(),
    )
}

/// The PIDs whose CPU and memory a peer's scenarios count: the process and
/// its children (nginx's worker).
pub fn processes(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}
