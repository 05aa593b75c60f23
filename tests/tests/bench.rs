//! The benchmark harnesses in their `--quick` modes, as CI runs them: they
//! must run every scenario they can and report numbers that hold together.
//! No speed is asserted (CI machines differ); correctness is: no errors,
//! every mTLS scenario really mTLS (the harness checks), every simulated
//! proxy served, bytes per change independent of the mesh's size.

use std::process::Command;

use serde_json::Value;
use weft_tests::bins;

fn run_quick(args: &[&str], out: &std::path::Path, file: &str) -> Value {
    let _ = std::fs::remove_dir_all(out);
    let status = Command::new(bins::path("weft-bench"))
        .args(args)
        .arg("--out")
        .arg(out)
        .env("WEFT_LAB_LOG", "warn")
        .status()
        .expect("run weft-bench");
    assert!(status.success(), "weft-bench {args:?} failed");
    let text = std::fs::read_to_string(out.join(file)).expect("the harness wrote its JSON");
    let _ = std::fs::remove_dir_all(out);
    serde_json::from_str(&text).expect("JSON")
}

#[test]
fn the_load_harness_runs_every_scenario_without_errors() {
    if !weft_tests::netns::available_for("the_load_harness_runs_every_scenario_without_errors") {
        return;
    }
    let out = std::env::temp_dir().join(format!("weft-bench-quick-{}", std::process::id()));
    let report = run_quick(&["--quick"], &out, "quick.json");
    let names: Vec<&str> = report["summaries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    let peers: Vec<&str> = report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for expected in [
        "http1 direct",
        "http1 1 hop",
        "http1 1 hop explicit",
        "tcp 1 hop explicit",
        "http1 2 hops",
        "http1 2 hops routed",
        "http1 2 hops mtls",
        "http2 2 hops mtls",
        "tcp 1 hop",
        "tcp 2 hops mtls",
        "connect 2 hops mtls",
        "bulk 2 hops",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    // A peer is measured exactly when it was found.
    for peer in ["haproxy", "nginx"] {
        let skipped = peers
            .iter()
            .any(|p| p.starts_with(&format!("{peer}: skipped")));
        let measured = names.iter().any(|n| n.ends_with(peer));
        assert_eq!(measured, !skipped, "{peer}: {peers:?} / {names:?}");
    }
    for s in report["summaries"].as_array().unwrap() {
        assert_eq!(s["errors"], 0, "{s}");
        assert!(s["max_rps"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["p50_us"].as_u64().unwrap() > 0, "{s}");
    }
    let open = report["open_connections"].as_array().unwrap();
    assert!(open.iter().any(|o| o["path"] == "http1 1 hop"), "{open:?}");
    for o in open {
        assert_eq!(o["errors"], 0, "{o}");
        assert!(o["open_kib"].as_u64().unwrap() > 0, "{o}");
    }
}

#[test]
fn the_scale_harness_serves_every_simulated_proxy() {
    // No root needed: the controller, fake API and fleet are on loopback.
    let out = std::env::temp_dir().join(format!("weft-bench-scale-{}", std::process::id()));
    let report = run_quick(&["scale", "--quick"], &out, "scale-quick.json");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "two sizes in --quick");
    let mut per_subscriber = Vec::new();
    for r in results {
        let streams = r["size"]["streams"].as_f64().unwrap();
        assert_eq!(r["failed_streams"], 0, "{r}");
        for kind in ["hot", "cold"] {
            assert_eq!(r[kind]["timeouts"], 0, "{kind}: {r}");
            assert!(r[kind]["made"].as_u64().unwrap() > 0, "{r}");
        }
        // Every stream subscribes to the hot service.
        assert_eq!(r["hot"]["subscribers"].as_f64().unwrap(), streams, "{r}");
        assert!(r["controller_rss_kib"].as_u64().unwrap() > 0, "{r}");
        per_subscriber.push(r["cold"]["bytes_per_subscriber"].as_f64().unwrap());
    }
    // A change sends one service's resource to its subscribers, whatever
    // the mesh's size: the bytes per subscriber agree across sizes.
    let (a, b) = (per_subscriber[0], per_subscriber[1]);
    assert!(a > 0.0 && (a - b).abs() / a < 0.2, "{per_subscriber:?}");
}

#[test]
fn the_soak_run_samples_latency_and_memory_and_plots_them() {
    if !weft_tests::netns::available_for("the_soak_run_samples_latency_and_memory_and_plots_them") {
        return;
    }
    let out = std::env::temp_dir().join(format!("weft-bench-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(bins::path("weft-bench"))
        .args([
            "soak",
            "--seconds",
            "6",
            "--sample-secs",
            "2",
            "--rate",
            "200",
            "--connections",
            "4",
        ])
        .arg("--out")
        .arg(&out)
        .env("WEFT_LAB_LOG", "warn")
        .status()
        .expect("run weft-bench soak");
    assert!(status.success(), "weft-bench soak failed");
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("soak.json")).unwrap()).unwrap();
    let svg = std::fs::read_to_string(out.join("soak.svg")).unwrap();
    let md = std::fs::read_to_string(out.join("soak.md")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let samples = json["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 3, "a sample every 2 s for 6 s");
    for s in samples {
        assert_eq!(s["errors"], 0, "{s}");
        // 200 req/s held: the generator is open-loop, so a stall shows.
        let rps = s["rps"].as_f64().unwrap();
        assert!((150.0..=250.0).contains(&rps), "{s}");
        assert!(s["p50_us"].as_u64().unwrap() > 0, "{s}");
        assert!(s["client_proxy_rss_kib"].as_u64().unwrap() > 0, "{s}");
        assert!(s["server_proxy_rss_kib"].as_u64().unwrap() > 0, "{s}");
    }
    assert_eq!(
        svg.matches("<polyline").count(),
        4,
        "RSS of two proxies, p50 and p99"
    );
    assert!(
        md.contains("![soak](soak.svg)") && md.contains("Errors: 0."),
        "{md}"
    );
}
