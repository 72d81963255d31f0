//! `scripts/check_performance.sh production` (seed 004) against the
//! reference service on loopback: a healthy release passes, with the gates
//! one poll cannot cover named as such; a release whose low-confidence queue
//! is above production's auto-rollback threshold (1000) fails, exit 1.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use testkit::TestProject;

const BIN: &str = env!("CARGO_BIN_EXE_check_performance");

/// The seed's command, through the drop-in script and run-tool, which runs
/// this test's build of the binary (no release build of the workspace).
fn check(tp: &TestProject) -> (i32, Vec<Value>, String) {
    let bin = Path::new(BIN);
    let target = bin.parent().and_then(Path::parent).unwrap();
    let script: PathBuf = testkit::workspace_root().join("scripts/check_performance.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("production")
        .current_dir(tp.root())
        .env("DHASH_ROOT", tp.root())
        .env("DHASH_NO_BUILD", "1")
        .env("DHASH_PROFILE", bin.parent().unwrap().file_name().unwrap())
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let events = testkit::events(&out.stdout);
    (out.status.code().unwrap_or(-1), events, stderr)
}

fn gate<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "performance.gate" && e["gate"] == name)
        .unwrap_or_else(|| panic!("no performance.gate for {name}: {events:?}"))
}

#[test]
fn a_healthy_release_passes_and_a_flooded_queue_fails_now() {
    let tp = TestProject::new();
    // The tags and faults of the end-to-end tests' bundles: testkit's cache
    // then builds each once for the whole suite.
    let healthy = tp.bundle("v1", &[]);
    tp.install_and_start("production", &healthy);
    let (code, events, stderr) = check(&tp);
    assert_eq!(code, 0, "{stderr}");
    let queue = gate(&events, "low_confidence_queue");
    assert_eq!(
        (queue["status"].as_str(), queue["covered"].as_bool()),
        (Some("ok"), Some(true))
    );
    assert_eq!(queue["threshold"], 1000.0);
    // A rate over 10 minutes is not covered by one poll, and says so.
    let rate = gate(&events, "extraction_failure_rate");
    assert_eq!(
        (rate["status"].as_str(), rate["covered"].as_bool()),
        (Some("pending"), Some(false))
    );
    assert!(
        stderr.contains("extraction_failure_rate") && stderr.contains("NOT COVERED"),
        "{stderr}"
    );
    assert!(stderr.contains("threshold"), "{stderr}");
    let done = events
        .iter()
        .find(|e| e["event"] == "performance.checked")
        .unwrap();
    assert!(done["not_covered"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == "p95_hash_time"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "performance.gate")
            .count(),
        6
    );

    tp.stop("production").unwrap();
    let flooded = tp.bundle("bad", &[("low_confidence_flood", "1500")]);
    tp.install_and_start("production", &flooded);
    let (code, events, stderr) = check(&tp);
    assert_eq!(code, 1, "{stderr}");
    let queue = gate(&events, "low_confidence_queue");
    assert_eq!(queue["status"], "violated");
    assert_eq!(queue["value"], 1500.0);
    let done = events
        .iter()
        .find(|e| e["event"] == "performance.checked")
        .unwrap();
    assert_eq!(done["auto_rollback_violated"][0], "low_confidence_queue");
    assert!(
        stderr.contains("auto-rollback gate(s) violated now: low_confidence_queue"),
        "{stderr}"
    );
    tp.stop("production").unwrap();
}

/// Health answers, but the metrics endpoint is gone (an HTML 404 page): the
/// auto-rollback gates cannot be judged, which is not an all clear.
#[test]
fn a_dead_metrics_endpoint_is_not_judged_as_a_pass() {
    use testkit::receiver::{Receiver, Reply};
    let tp = TestProject::new();
    let health = Receiver::start(vec![Reply::json(200, r#"{"status":"ok"}"#); 4]);
    let page =
        "<!DOCTYPE HTML>\n<html>\n  <body>\n    <h1>Error response</h1>\n  </body>\n</html>\n";
    let gone = Receiver::start(vec![Reply::text(404, page); 8]);
    let topo = tp.root().join("environments.json");
    let mut t: Value = serde_json::from_str(&std::fs::read_to_string(&topo).unwrap()).unwrap();
    let prod = &mut t["environments"]["production"];
    prod["health_url"] = health.url_with("/health").into();
    prod["metrics_url"] = gone.url_with("/metrics").into();
    prod["queue_url"] = gone.url_with("/api/dhash/queue/status").into();
    std::fs::write(&topo, t.to_string()).unwrap();
    let (code, events, stderr) = check(&tp);
    assert_eq!(code, 5, "inconclusive, never 0\n{stderr}");
    let done = events
        .iter()
        .find(|e| e["event"] == "performance.checked")
        .unwrap();
    assert!(done["not_measured"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g == "p95_hash_time"));
    assert!(stderr.contains("NOT JUDGED"), "{stderr}");
    // One table line per gate: the quoted error page is flattened.
    assert!(!stderr.contains("\n    <h1>"), "{stderr}");
}

/// A gate that reads Prometheus is asked there, as the monitor does; with
/// no server named for the environment the check refuses (exit 2, naming
/// the gate) instead of judging it from /metrics.
#[test]
fn a_prometheus_gate_without_a_server_is_refused_not_judged_from_metrics() {
    let tp = TestProject::new();
    let mut gates: Value = serde_json::from_str(
        &std::fs::read_to_string(tp.root().join("quality-gates-config.json")).unwrap(),
    )
    .unwrap();
    gates["environments"]["production"]["quality_gates"]["extraction_failure_rate"]["source"] =
        "prometheus".into();
    let config = tp.root().join("prometheus-gates.json");
    std::fs::write(&config, gates.to_string()).unwrap();
    let out = Command::new(BIN)
        .args(["production", "--config"])
        .arg(&config)
        .current_dir(tp.root())
        .env("DHASH_ROOT", tp.root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("extraction_failure_rate") && stderr.contains("names no Prometheus server"),
        "{stderr}"
    );
    assert!(
        !testkit::events(&out.stdout)
            .iter()
            .any(|e| e["event"] == "performance.gate"),
        "no gate may be judged"
    );
}
