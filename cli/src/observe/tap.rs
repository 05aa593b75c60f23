//! `weft tap`: live requests of the mesh's proxies, as they happen, with
//! filters; one line per event (or the raw JSON).

use clap::Args;
use serde_json::Value;

use super::mesh::{Mesh, MeshArgs};
use super::stat::{Output, runtime};

#[derive(Args, Debug)]
pub struct TapArgs {
    /// Only this workload's pods (deployment name), or one pod
    /// (`namespace/pod`); default: every meshed pod.
    pub target: Option<String>,
    /// inbound or outbound.
    #[arg(long)]
    pub direction: Option<String>,
    #[arg(long)]
    pub method: Option<String>,
    /// A substring of the authority.
    #[arg(long)]
    pub authority: Option<String>,
    /// A prefix of the path.
    #[arg(long)]
    pub path: Option<String>,
    /// Stop after this many responses (default: until Ctrl-C).
    #[arg(long)]
    pub max: Option<u64>,
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: Output,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

impl TapArgs {
    /// The proxies' filter query.
    pub fn query(&self) -> String {
        [
            ("direction", &self.direction),
            ("method", &self.method),
            ("authority", &self.authority),
            ("path", &self.path),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One event as a line, in the spirit of `linkerd viz tap`.
pub fn format_event(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
    let dir = if s("direction") == "inbound" {
        "in "
    } else {
        "out"
    };
    let who = e["client_id"]
        .as_str()
        .map(short_id)
        .unwrap_or_else(|| "-".into());
    match e["type"].as_str() {
        Some("request") => format!(
            "req {dir} {} {} {}{} from={who} src={}",
            s("pod"),
            s("method"),
            s("authority"),
            s("path"),
            s("client_addr")
        ),
        _ => {
            let mut line = format!(
                "rsp {dir} {} {} {}{} :status={} {:.1}ms {}B",
                s("pod"),
                s("method"),
                s("authority"),
                s("path"),
                e["status"],
                e["duration_ms"].as_f64().unwrap_or(0.0),
                e["response_bytes"]
            );
            if let Some(to) = e["server_id"].as_str() {
                line += &format!(" to={}", short_id(to));
            }
            if let Some(b) = e["backend"].as_str() {
                line += &format!(" backend={b}");
            }
            if e["retries"].as_u64().unwrap_or(0) > 0 {
                line += &format!(" retries={}", e["retries"]);
            }
            if let Some(err) = e["error"].as_str() {
                line += &format!(" error={err}");
            }
            line
        }
    }
}

/// `spiffe://td/ns/shop/sa/web` -> `shop/web`.
pub fn short_id(id: &str) -> String {
    id.split_once("/ns/")
        .and_then(|(_, r)| r.split_once("/sa/"))
        .map_or(id.to_string(), |(ns, sa)| format!("{ns}/{sa}"))
}

pub fn run(args: TapArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mesh = Mesh::open(&args.mesh).await?;
        let targets: Vec<_> = mesh
            .targets()
            .await?
            .into_iter()
            .filter(|t| match &args.target {
                None => true,
                Some(x) if x.contains('/') => *x == format!("{}/{}", t.pod.namespace, t.pod.name),
                Some(x) => *x == t.pod.workload,
            })
            .collect();
        anyhow::ensure!(!targets.is_empty(), "no meshed pod matches");
        let query = args.query();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for t in &targets {
            let mut lines = mesh.tap(t, &query).await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(l) = lines.recv().await {
                    let _ = tx.send(l);
                }
            });
        }
        drop(tx);
        eprintln!(
            "weft tap: watching {} pod(s) of the {} mesh{}",
            targets.len(),
            mesh.name(),
            if query.is_empty() {
                String::new()
            } else {
                format!(" ({query})")
            }
        );
        let mut responses = 0;
        loop {
            let line = tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                l = rx.recv() => match l {
                    Some(l) => l,
                    None => anyhow::bail!("every tap stream ended"),
                },
            };
            let Ok(event) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            match args.output {
                Output::Json => println!("{line}"),
                Output::Table => println!("{}", format_event(&event)),
            }
            if event["type"] == "response" {
                responses += 1;
                if args.max.is_some_and(|m| responses >= m) {
                    return Ok(());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_like_tap_lines() {
        let e = serde_json::json!({"type": "response", "pod": "shop/web-v1-a", "direction": "inbound",
            "method": "GET", "authority": "web.shop", "path": "/hello", "status": 503,
            "duration_ms": 1.26, "response_bytes": 17, "client_id": "spiffe://cluster.local/ns/shop/sa/frontend",
            "retries": 0, "error": null});
        assert_eq!(
            format_event(&e),
            "rsp in  shop/web-v1-a GET web.shop/hello :status=503 1.3ms 17B"
        );
        let r = serde_json::json!({"type": "request", "pod": "shop/web", "direction": "outbound",
            "method": "POST", "authority": "a:80", "path": "/x", "client_addr": "1.2.3.4:5", "client_id": null});
        assert_eq!(
            format_event(&r),
            "req out shop/web POST a:80/x from=- src=1.2.3.4:5"
        );
        assert_eq!(short_id("spiffe://td/ns/a/sa/b"), "a/b");
    }

    #[test]
    fn filters_become_an_encoded_query() {
        let args = TapArgs {
            target: None,
            direction: Some("inbound".into()),
            method: None,
            authority: Some("web shop".into()),
            path: Some("/a&b".into()),
            max: None,
            output: Output::Table,
            mesh: MeshArgs {
                mesh: super::super::mesh::Source::Auto,
                namespace: None,
                weft_namespace: "weft".into(),
            },
        };
        assert_eq!(
            args.query(),
            "direction=inbound&authority=web%20shop&path=/a%26b"
        );
    }
}
