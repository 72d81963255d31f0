//! monitor_dhash with a gate that reads Prometheus (issue 17), end to end: a
//! real Prometheus (Debian's `prometheus` package, which `.ci/run` installs)
//! scrapes the reference service every second, and a short real watch judges
//! the gate from PromQL, never from `/metrics`. A Prometheus that is down
//! gives `gate.error`, not a silent pass; `--replay` refuses such a gate.
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::{events, TestProject};

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor_dhash");

fn need(program: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{program} is needed for this test: bash .ci/run installs it (apt-get install prometheus)")
    })
}

/// A Prometheus started for one test, killed (by its pid) when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prometheus in `dir`, scraping `target` (host:port, labelled `env`) every
/// second, as gates-core/tests/prometheus.rs starts it; ready and with the
/// target scraped once on return.
fn start_prometheus(dir: &Path, env: &str, target: &str) -> Prometheus {
    let bin = need("prometheus");
    std::fs::create_dir_all(dir).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dhash\n    params:\n      format: [prometheus]\n    static_configs:\n      - targets: ['{target}']\n        labels:\n          env: {env}\n"
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = testkit::free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new(bin)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting prometheus");
    let p = Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let c = gates_core::promql::Client::new(&p.url, Duration::from_secs(1));
    let up = format!("up{{job=\"dhash\",env=\"{env}\"}} == 1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.query(&up, None).is_ok_and(|v| v.len() == 1) {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            panic!("prometheus did not scrape {target} within 20 s:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

fn name_prometheus(tp: &TestProject, env: &str, url: &str) {
    tp.edit_topology(|t| {
        t["environments"][env]["prometheus"] = json!({"url": url, "timeout": "1s"});
    });
}

/// A gates file for `env` with `gates`.
fn gates_file(tp: &TestProject, env: &str, gates: Value) -> PathBuf {
    let path = tp.root().join("prom-gates.json");
    let doc = json!({"environments": {env: {"quality_gates": gates}}});
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

fn watch(tp: &TestProject, env: &str, gates: &Path, secs: &str, extra: &[&str]) -> Output {
    tp.cmd_path(Path::new(MONITOR))
        .args(["--env", env, "--config"])
        .arg(gates)
        .args(["--duration", secs])
        .args(extra)
        .output()
        .unwrap()
}

use testkit::describe;

fn gate_events<'a>(evs: &'a [Value], gate: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e["gate"] == gate && e["event"].as_str().is_some_and(|n| n.starts_with("gate."))
        })
        .collect()
}

/// The load driver (valid images only), stopped and reaped when dropped.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn load(tp: &TestProject, env: &str, secs: u32) -> Load {
    let child = tp
        .cmd("dhash-service")
        .args(["load", "--url", &tp.base_url(env), "--rate", "30"])
        .args([
            "--mix",
            "valid=100,low=0,bad=0",
            "--duration",
            &format!("{secs}s"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("load driver");
    Load(child)
}

/// A healthy v1 and its verified backup, then a v2 that fails to extract
/// half the images, watched with one auto-rollback gate read through
/// Prometheus: it trips on the PromQL figure and v1 comes back. The same
/// gate on /metrics would also see the failures; what this proves is that
/// the decision came from Prometheus (`source`, the PromQL figure), and a
/// probe gate held to a threshold no figure reaches stays ok meanwhile.
#[test]
fn prometheus_gate_trips_and_rolls_back() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.bundle("v1", &[]);
    let good = tp.install_and_start(env, &v1);
    let out = tp
        .cmd("backup_dhash")
        .args(["--env", env])
        .output()
        .unwrap();
    assert!(out.status.success(), "backup: {}", describe(&out));
    let backup = events(&out.stdout)
        .into_iter()
        .find(|e| e["event"] == "backup.verified")
        .and_then(|e| e["path"].as_str().map(String::from))
        .expect("backup.verified with a path");
    let bad = tp.bundle("v2", &[("failure_fraction", "0.5")]);
    tp.stop(env).expect("stop v1");
    tp.install_and_start(env, &bad);
    let target = format!("127.0.0.1:{}", tp.port(env));
    let p = start_prometheus(&tp.root().join("prometheus"), env, &target);
    name_prometheus(&tp, env, &p.url);
    let gates = gates_file(
        &tp,
        env,
        json!({
            "extraction_failure_rate": {"threshold": 5, "window_minutes": "4s",
                "action": "auto-rollback", "source": "prometheus"},
            "error_rate": {"threshold": 100, "window_minutes": "3s", "action": "alert"}
        }),
    );
    let l = load(&tp, env, 20);
    let started = Instant::now();
    let out = watch(&tp, env, &gates, "15", &["--backup", &backup]);
    drop(l);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let evs = events(&out.stdout);
    let prom = gate_events(&evs, "extraction_failure_rate");
    let violated = prom
        .iter()
        .find(|e| e["event"] == "gate.violated")
        .unwrap_or_else(|| panic!("no violation: {}", describe(&out)));
    assert_eq!(violated["source"], "prometheus", "{violated}");
    assert_eq!(violated["action"], "auto-rollback");
    let reason = violated["reason"].as_str().unwrap();
    assert!(reason.starts_with("PromQL figure "), "{reason}");
    assert!(violated["value"].as_f64().unwrap() > 5.0, "{violated}");
    assert!(prom.iter().all(|e| e["source"] == "prometheus"), "{prom:?}");
    let probe = gate_events(&evs, "error_rate");
    assert!(
        !probe.is_empty(),
        "the probe gate is still judged: {}",
        describe(&out)
    );
    assert!(probe.iter().all(|e| e["source"] == "probe"), "{probe:?}");
    assert!(
        evs.iter().any(|e| e["event"] == "rollback.completed"),
        "{}",
        describe(&out)
    );
    let health = Command::new("curl")
        .args(["-s", &format!("{}/health", tp.base_url(env))])
        .output()
        .expect("curl");
    let health: Value = serde_json::from_slice(&health.stdout).unwrap_or(Value::Null);
    assert_eq!(health["release"], good.as_str(), "v1 serves again");
    eprintln!("tripped and rolled back in {took:?}: {violated}");
}

/// No server named: the watch refuses (exit 2) naming the gate. A server
/// that is down: every poll of the gate is `gate.error` (source prometheus),
/// never ok, and the watch does not pass (the gate is auto-rollback). `--replay` refuses the gate.
#[test]
fn prometheus_down_is_error_and_replay_refuses() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.bundle("v1", &[]);
    tp.install_and_start(env, &v1);
    let gates = gates_file(
        &tp,
        env,
        json!({"extraction_failure_rate": {"threshold": 5, "window_minutes": "3s",
            "action": "auto-rollback", "source": "prometheus"}}),
    );
    let out = watch(&tp, env, &gates, "2", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("extraction_failure_rate") && err.contains("names no Prometheus server"),
        "{}",
        describe(&out)
    );

    // Nothing listens on this port: connections are refused.
    let down = format!("http://127.0.0.1:{}", testkit::free_port());
    name_prometheus(&tp, env, &down);
    let out = watch(&tp, env, &gates, "3", &[]);
    let evs = events(&out.stdout);
    let decided = gate_events(&evs, "extraction_failure_rate");
    assert!(decided.len() >= 2, "{}", describe(&out));
    for e in &decided {
        assert_eq!(e["event"], "gate.error", "{e}");
        assert_eq!(e["source"], "prometheus", "{e}");
        assert!(e["reason"].as_str().unwrap().contains("unreachable"), "{e}");
    }
    let done = evs
        .iter()
        .find(|e| e["event"] == "monitor.completed")
        .unwrap_or_else(|| panic!("{}", describe(&out)));
    // An auto-rollback gate never judged holds the watch back: not a pass.
    assert_ne!(done["result"], "passed", "{done}");
    assert_eq!(
        done["never_evaluated"][0]["gate"],
        "extraction_failure_rate"
    );
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    eprintln!("prometheus down: {} gate.error, {done}", decided.len());

    let recording = tp.root().join("empty.jsonl");
    std::fs::write(&recording, "").unwrap();
    let out = tp
        .cmd_path(Path::new(MONITOR))
        .args(["--env", env, "--config"])
        .arg(&gates)
        .arg("--replay")
        .arg(&recording)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("extraction_failure_rate") && err.contains("prometheus"),
        "{}",
        describe(&out)
    );
}
