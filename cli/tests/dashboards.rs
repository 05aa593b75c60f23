//! The Grafana dashboards (charts/weft/dashboards): valid dashboards whose
//! every query names a metric the proxy or the controller really
//! registers, with the labels the scrape configuration adds.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// Every metric name registered in the proxy's and controller's sources,
/// as exposed: counters with `_total`, histograms with their series. A name
/// is registered by a `register("name", ...)` call, or by a line of the
/// proxy's metrics table (`"name", "help";`).
fn registered() -> BTreeSet<String> {
    let register =
        regex::Regex::new(r#"(?m)register\(\s*"([a-z_]+)"|^\s*"([a-z_]+)",\s*""#).unwrap();
    let mut names = BTreeSet::new();
    for dir in ["../proxy/src", "../controller/src"] {
        for file in walk(Path::new(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for c in register.captures_iter(&text) {
                let n = c.get(1).or(c.get(2)).unwrap().as_str().to_string();
                for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                    names.insert(format!("{n}{suffix}"));
                }
            }
        }
    }
    names
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// Every `expr` and variable query in a dashboard.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains("label_values") => {
                        out.push(s.clone())
                    }
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => queries(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| queries(x, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_queries_only_real_metrics() {
    let known = registered();
    assert!(known.contains("request_total") && known.contains("discovery_streams"));
    let selector = regex::Regex::new(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{").unwrap();
    let label_values = regex::Regex::new(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)").unwrap();
    let mut uids = BTreeSet::new();
    let mut seen = 0;
    for entry in std::fs::read_dir("../charts/weft/dashboards").unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        assert!(
            d["title"].as_str().unwrap().starts_with("Weft / "),
            "{name}"
        );
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{name}: uid taken"
        );
        assert!(
            d["panels"].as_array().is_some_and(|p| p.len() >= 5),
            "{name}: panels"
        );
        let mut qs = Vec::new();
        queries(&d, &mut qs);
        assert!(qs.len() >= 5, "{name}: queries");
        for q in &qs {
            let names = selector
                .captures_iter(q)
                .chain(label_values.captures_iter(q))
                .map(|c| c[1].to_string());
            for m in names {
                assert!(
                    known.contains(&m),
                    "{name}: `{m}` is not a metric Weft exposes, in {q}"
                );
                seen += 1;
            }
        }
    }
    assert_eq!(
        uids,
        [
            "weft-control-plane",
            "weft-proxy",
            "weft-route",
            "weft-service"
        ]
        .map(String::from)
        .into()
    );
    assert!(seen > 50, "{seen} metric references");
}
