//! monitor_dhash end to end: the real service, real faulty bundles, the load
//! driver, real backups and rollbacks, on loopback with windows of seconds.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::receiver::{Receiver, Reply};
use testkit::{events, TestProject};

const MONITOR: &str = env!("CARGO_BIN_EXE_monitor_dhash");

/// Gates with windows of seconds, all auto-rollback, for `env`.
fn fast_gates(tp: &TestProject, env: &str, action: &str, extra: Value) -> PathBuf {
    let mut gates = json!({
        "health_failures": {"threshold": 2, "window_minutes": "5s", "action": action},
        "extraction_failure_rate": {"threshold": 5, "window_minutes": "3s", "action": action},
        // Well above a debug build's p95 under the parallel tests' load
        // (up to ~400 ms seen); the slow-hashing bundle sleeps 1500 ms.
        "p95_hash_time": {"threshold": 1000, "window_minutes": "3s", "action": action},
        "low_confidence_queue": {"threshold": 1000, "window_minutes": 0, "action": action},
        "memory_usage": {"threshold": 85, "window_minutes": "5s", "action": "alert"}
    });
    if let (Value::Object(g), Value::Object(e)) = (&mut gates, extra) {
        g.extend(e);
    }
    let doc = json!({"environments": {env: {"quality_gates": gates}}});
    let path = tp.root().join("fast-gates.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// A healthy v1 with some stored hashes and a verified backup of it.
struct Setup {
    tp: TestProject,
    env: &'static str,
    good: String,
    backup: PathBuf,
    stored_ids: Vec<i64>,
}

fn post_image(base: &str, seed: u8) -> i64 {
    let resp = testkit::post_image(&format!("{base}/api/dhash/hash"), &gradient_png(seed));
    resp["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {resp}"))
}

/// A 16x16 gradient: decodable, with contrast (not low-confidence).
fn gradient_png(seed: u8) -> Vec<u8> {
    let img = image::GrayImage::from_fn(16, 16, |x, y| {
        image::Luma([((x * 16) as u8)
            .wrapping_add(seed)
            .wrapping_mul(if y % 2 == 0 { 1 } else { 3 })])
    });
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png).unwrap();
    buf.into_inner()
}

fn health(tp: &TestProject, env: &str) -> Value {
    let out = Command::new("curl")
        .args(["-s", &format!("{}/health", tp.base_url(env))])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn setup() -> Setup {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.bundle("v1", &[]);
    let good = tp.install_and_start(env, &v1);
    let base = tp.base_url(env);
    let stored_ids = (0..5).map(|i| post_image(&base, i * 7)).collect();
    let out = tp
        .cmd("backup_dhash")
        .args(["--env", env])
        .output()
        .expect("backup");
    assert!(
        out.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let backup = events(&out.stdout)
        .into_iter()
        .find(|e| e["event"] == "backup.verified")
        .and_then(|e| e["path"].as_str().map(PathBuf::from))
        .expect("backup.verified with a path");
    Setup {
        tp,
        env,
        good,
        backup,
        stored_ids,
    }
}

fn deploy_bad(s: &Setup, faults: &[(&str, &str)]) -> String {
    let bad = s.tp.bundle("v2", faults);
    s.tp.stop(s.env).expect("stop v1");
    s.tp.install_and_start(s.env, &bad)
}

/// The load driver, stopped (and reaped) when dropped.
struct Load(Child);

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Valid and low-confidence images only: an undecodable one is an extraction
/// failure, which is what the faulty bundles add.
fn load(tp: &TestProject, env: &str, secs: u32) -> Load {
    Load(
        tp.cmd("dhash-service")
            .args([
                "load",
                "--url",
                &tp.base_url(env),
                "--rate",
                "30",
                "--mix",
                "valid=90,low=10,bad=0",
                "--duration",
                &format!("{secs}s"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("load driver"),
    )
}

fn monitor(tp: &TestProject, args: &[&str]) -> Command {
    let mut c = tp.cmd_path(Path::new(MONITOR));
    c.args(args);
    c
}

/// `monitor_dhash --env ENV --config GATES --duration SECS EXTRA...`
fn watch(tp: &TestProject, env: &str, gates: &Path, secs: &str, extra: &[&str]) -> Command {
    let mut c = tp.cmd_path(Path::new(MONITOR));
    c.args(["--env", env, "--config"])
        .arg(gates)
        .args(["--duration", secs])
        .args(extra);
    c
}

fn find<'a>(evs: &'a [Value], name: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == name).collect()
}

use testkit::describe;

/// Issue 15: after a rollback the watch page (HTML with SVG charts) lies
/// next to the incident record, with its stamp; the record, the
/// `incident.created` event and the rollback notification name it.
fn assert_watch_page(s: &Setup, evs: &[Value], incident: &Path, text: &str) {
    let created = find(evs, "incident.created");
    let page = created
        .first()
        .and_then(|e| e["page"].as_str())
        .unwrap_or_else(|| panic!("incident.created names the page: {created:?}"));
    let page = PathBuf::from(page);
    let html = std::fs::read_to_string(&page).expect("the watch page");
    assert!(html.contains("<html") && html.contains("<svg"), "{html}");
    let name = |p: &Path, prefix: &str| {
        let n = p.file_name().unwrap().to_string_lossy().to_string();
        n.strip_prefix(prefix)
            .map(|r| r.split('.').next().unwrap_or("").to_string())
    };
    let stamp = name(incident, &format!("incident_{}_", s.env));
    assert_eq!(name(&page, &format!("watch_{}_", s.env)), stamp);
    assert_eq!(
        page.parent(),
        incident.parent(),
        "next to the incident record"
    );
    let line = format!("Watch page:** {}", page.display());
    assert!(text.contains(&line), "the incident links the page: {text}");
    let fallback =
        std::fs::read_to_string(s.tp.env(s.env).notify.fallback_file).unwrap_or_default();
    assert!(
        fallback.contains(&format!("Watch page: {}", page.display())),
        "the rollback notification names the page: {fallback}"
    );
}

fn assert_rolled_back(s: &Setup, out: &Output, gate: &str) {
    let evs = events(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{}", describe(out));
    let violated = find(&evs, "gate.violated");
    assert!(
        violated
            .iter()
            .any(|e| e["gate"] == gate && e["action"] == "auto-rollback"),
        "no auto-rollback violation of {gate}: {}",
        describe(out)
    );
    let v = violated.iter().find(|e| e["gate"] == gate).unwrap();
    assert!(
        v["reason"].as_str().unwrap_or("").len() > 10,
        "a reason in words: {v}"
    );
    assert!(
        !find(&evs, "rollback.completed").is_empty(),
        "{}",
        describe(out)
    );
    assert_eq!(
        health(&s.tp, s.env)["release"],
        s.good.as_str(),
        "v1 serves again"
    );
    // Every hash stored before the deploy is still there.
    let db = s.tp.env(s.env).database;
    let conn = rusqlite::Connection::open(&db).unwrap();
    for id in &s.stored_ids {
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM hashes WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 1, "hash {id} survived the rollback");
    }
    let log_dir = s.tp.env(s.env).log_dir;
    let incident = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("incident_"))
        .expect("an incident record");
    let text = std::fs::read_to_string(incident.path()).unwrap();
    assert!(
        text.contains("# Incident Report: Rollback")
            && text.contains(gate)
            && text.contains("## Timeline"),
        "{text}"
    );
    assert_watch_page(s, &evs, &incident.path(), &text);
    let log = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("dhash_{}_", s.env))
        })
        .expect("a monitor log");
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        log.contains("Quality gate failed") && log.contains(gate),
        "{log}"
    );
}

#[test]
fn healthy_release_runs_the_whole_window_and_exits_0() {
    let s = setup();
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    let l = load(&s.tp, s.env, 6);
    let started = Instant::now();
    let out = watch(&s.tp, s.env, &gates, "6", &[]).output().unwrap();
    drop(l);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        started.elapsed() >= Duration::from_secs(6),
        "ran the whole window"
    );
    let evs = events(&out.stdout);
    assert!(
        find(&evs, "monitor.sample").len() >= 5,
        "1-second cadence: {}",
        describe(&out)
    );
    let done = find(&evs, "monitor.completed");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["result"], "passed");
    assert!(
        done[0]["gates"]["extraction_failure_rate"]["ok"]
            .as_u64()
            .unwrap()
            >= 1,
        "{}",
        done[0]
    );
    assert!(find(&evs, "gate.violated").is_empty(), "{}", describe(&out));
}

/// Deploys a faulty v2 over the healthy v1 and watches it with auto-rollback
/// gates (under load when `with_load`): `gate` must trip and v1 come back.
fn trips_and_rolls_back(faults: &[(&str, &str)], with_load: bool, gate: &str) {
    let s = setup();
    deploy_bad(&s, faults);
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    let l = with_load.then(|| load(&s.tp, s.env, 20));
    let out = watch(
        &s.tp,
        s.env,
        &gates,
        "30",
        &["--backup", s.backup.to_str().unwrap()],
    )
    .output()
    .unwrap();
    drop(l);
    assert_rolled_back(&s, &out, gate);
}

#[test]
fn extraction_failures_trip_and_roll_back() {
    trips_and_rolls_back(
        &[("failure_fraction", "0.5")],
        true,
        "extraction_failure_rate",
    );
}

#[test]
fn slow_hashing_trips_p95_and_rolls_back() {
    trips_and_rolls_back(&[("hash_latency_ms", "1500")], true, "p95_hash_time");
}

#[test]
fn low_confidence_flood_trips_the_queue_gate_and_rolls_back() {
    trips_and_rolls_back(
        &[("low_confidence_flood", "1500")],
        false,
        "low_confidence_queue",
    );
}

/// Issue 14 (a): a standalone monitor's incident gives the deploy's start
/// from the ledger's healthy deploy record (`started_at`), not the time of
/// a later record of the same release (a no-op redeploy).
#[test]
fn a_standalone_incident_takes_the_deploy_start_from_the_ledger() {
    let s = setup();
    let bad = deploy_bad(&s, &[("low_confidence_flood", "1500")]);
    let ledger = s.tp.env(s.env).ledger();
    let started_at = "2026-01-02T03:04:05.678Z";
    ledger
        .append(
            "deploy",
            json!({"release": bad, "result": "healthy", "started_at": started_at}),
        )
        .unwrap();
    ledger
        .append(
            "deploy",
            json!({"release": bad, "from": bad, "result": "unchanged"}),
        )
        .unwrap();
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    let out = watch(
        &s.tp,
        s.env,
        &gates,
        "30",
        &["--backup", s.backup.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let log_dir = s.tp.env(s.env).log_dir;
    let incident = std::fs::read_dir(&log_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("incident_"))
        .expect("an incident record");
    let text = std::fs::read_to_string(incident.path()).unwrap();
    assert!(
        text.contains(&format!("- Deployment started: {started_at}\n")),
        "{text}"
    );
}

#[test]
fn a_crashed_release_trips_health_and_rolls_back() {
    let s = setup();
    deploy_bad(&s, &[]);
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    let child = watch(
        &s.tp,
        s.env,
        &gates,
        "30",
        &["--backup", s.backup.to_str().unwrap()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // The new release dies: kill -9 its process.
    let pid: i32 = std::fs::read_to_string(s.tp.env(s.env).pid_file())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_rolled_back(&s, &out, "health_failures");
}

#[test]
fn an_alert_gate_notifies_once_and_never_rolls_back() {
    let s = setup();
    let v2 = deploy_bad(&s, &[("failure_fraction", "0.5")]);
    let gates = fast_gates(&s.tp, s.env, "alert", json!({}));
    let hook = Receiver::start(vec![Reply::status(200)]);
    let l = load(&s.tp, s.env, 10);
    let out = watch(&s.tp, s.env, &gates, "10", &[])
        .env("WEBHOOK_URL", hook.url())
        .output()
        .unwrap();
    drop(l);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    let violations = find(&evs, "gate.violated");
    assert!(
        violations
            .iter()
            .filter(|e| e["gate"] == "extraction_failure_rate")
            .count()
            >= 2,
        "violated on several polls: {}",
        describe(&out)
    );
    assert!(
        find(&evs, "rollback.started").is_empty(),
        "alert gates never roll back"
    );
    let alerts: Vec<_> = hook
        .requests()
        .into_iter()
        .filter(|r| {
            r.body_text().contains("extraction_failure_rate") && r.body_text().contains("alert")
        })
        .collect();
    assert_eq!(
        alerts.len(),
        1,
        "one alert, not one per poll: {:?}",
        hook.requests()
            .iter()
            .map(|r| r.body_text())
            .collect::<Vec<_>>()
    );
    assert_eq!(health(&s.tp, s.env)["release"], v2.as_str());
}

#[test]
fn dry_run_never_rolls_back() {
    let s = setup();
    let v2 = deploy_bad(&s, &[("low_confidence_flood", "1500")]);
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    // Traffic, so every gate decides (a gate never evaluated would make the
    // window inconclusive, exit 5).
    let _l = load(&s.tp, s.env, 6);
    let out = watch(&s.tp, s.env, &gates, "4", &["--dry-run"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    assert!(!find(&evs, "gate.violated").is_empty());
    assert!(
        !find(&evs, "monitor.rollback-skipped").is_empty(),
        "{}",
        describe(&out)
    );
    assert!(find(&evs, "rollback.started").is_empty());
    assert_eq!(
        health(&s.tp, s.env)["release"],
        v2.as_str(),
        "the release stays"
    );
    let fallback =
        std::fs::read_to_string(s.tp.env(s.env).notify.fallback_file).unwrap_or_default();
    assert!(
        fallback.contains("low_confidence_queue"),
        "dry-run notifications land in the fallback file: {fallback}"
    );
}

#[test]
fn a_hanging_metrics_endpoint_does_not_stall_the_cadence() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.bundle("v1", &[]);
    tp.install_and_start(env, &v1);
    let hang = Receiver::start(vec![Reply::hang(); 50]);
    let url = hang.url_with("/metrics");
    tp.edit_topology(|t| {
        t["environments"][env]["metrics_url"] = json!(url);
        t["environments"][env]["monitor"]["probe_timeout"] = json!("1s");
    });
    let gates = fast_gates(&tp, env, "alert", json!({}));
    let started = Instant::now();
    let out = watch(&tp, env, &gates, "6", &[]).output().unwrap();
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(took < Duration::from_secs(10), "bounded: {took:?}");
    let evs = events(&out.stdout);
    let samples = find(&evs, "monitor.sample");
    assert!(
        samples.len() >= 4,
        "polls went on: {} in {took:?}",
        samples.len()
    );
    assert!(
        samples
            .iter()
            .all(|s| s["metrics_error"].is_string() && s["health"] == "ok"),
        "{samples:?}"
    );
    assert!(!find(&evs, "gate.error").is_empty());
    // Probe errors in a row count against a gate (violated): that is a
    // decision, so nothing is listed as never evaluated; alert gates only.
    let done = find(&evs, "monitor.completed")[0].clone();
    assert_eq!(done["result"], "passed", "{done}");
    assert_eq!(done["never_evaluated"], json!([]), "{done}");
}

#[test]
fn a_killed_monitor_continues_its_window_when_restarted() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.bundle("v1", &[]);
    tp.install_and_start(env, &v1);
    let gates = fast_gates(&tp, env, "auto-rollback", json!({}));
    // Traffic, so the rate gates decide: without it the window is inconclusive.
    let _l = load(&tp, env, 14);
    let started = Instant::now();
    let mut first = watch(&tp, env, &gates, "10", &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    first.kill().unwrap();
    let first = first.wait_with_output().unwrap();
    let first_start = find(&events(&first.stdout), "monitor.started")[0]["window_start"].clone();
    let out = watch(&tp, env, &gates, "10", &[]).output().unwrap();
    let total = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    let st = find(&evs, "monitor.started");
    assert_eq!(st[0]["continued"], true, "{}", describe(&out));
    assert_eq!(st[0]["window_start"], first_start, "same window");
    assert!(
        total < Duration::from_secs(14),
        "the window was not started over: {total:?}"
    );
    let done = find(&evs, "monitor.completed");
    // Samples of the first run count in the summary of the continued window.
    assert!(done[0]["samples"].as_u64().unwrap() >= 8, "{}", done[0]);
}

#[test]
fn replaying_a_live_recording_reproduces_its_decisions_exactly() {
    let s = setup();
    deploy_bad(&s, &[("failure_fraction", "0.04")]);
    let gates = fast_gates(&s.tp, s.env, "shadow", json!({}));
    let rec = s.tp.root().join("live.csv");
    let l = load(&s.tp, s.env, 8);
    let live = watch(
        &s.tp,
        s.env,
        &gates,
        "7",
        &["--record", rec.to_str().unwrap()],
    )
    .output()
    .unwrap();
    drop(l);
    assert_eq!(live.status.code(), Some(0), "{}", describe(&live));
    let replay = monitor(
        &s.tp,
        &[
            "--env",
            s.env,
            "--config",
            gates.to_str().unwrap(),
            "--replay",
            rec.to_str().unwrap(),
            "--decisions",
            "all",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(replay.status.code(), Some(0), "{}", describe(&replay));
    let key = |e: &Value| {
        (
            e["sample_ts"].to_string(),
            e["gate"].to_string(),
            e["status"].to_string(),
            e["value"].to_string(),
            e["reason"].to_string(),
        )
    };
    let pick = |out: &Output| -> Vec<_> {
        events(&out.stdout)
            .iter()
            .filter(|e| {
                e["event"].as_str().unwrap_or("").starts_with("gate.")
                    && e["event"] != "gate.resolved"
            })
            .map(key)
            .collect()
    };
    let (a, b) = (pick(&live), pick(&replay));
    assert!(a.len() >= 5 * 5, "enough decisions: {}", a.len());
    assert_eq!(a, b);
}

#[test]
fn replay_reports_a_malformed_recording_by_line() {
    let tp = TestProject::new();
    let bad = tp.root().join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "{}\n1000,ok,,,1,1,0,0,0,10,1,1,,\n2000,maybe,,,1,1,0,0,0,10,1,1,,\n",
            monitor_header()
        ),
    )
    .unwrap();
    let out = monitor(
        &tp,
        &["--env", "production", "--replay", bad.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.csv") && err.contains("t_ms 2000") && err.contains("maybe"),
        "{err}"
    );
}

fn monitor_header() -> String {
    dhash_monitor::telemetry::HEADER.join(",")
}

#[test]
fn invalid_arguments_exit_2() {
    let tp = TestProject::new();
    for args in [
        vec!["--env", "staging", "--duration", "soon"],
        vec!["--bogus"],
        vec!["--env", "nowhere"],
    ] {
        let out = monitor(&tp, &args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
    }
    let out = monitor(&tp, &["--env", "nowhere"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("known: production, staging"),
        "{}",
        describe(&out)
    );
}

// ---------------------------------------------------------------------------
// One actor per environment window (issues 12 and 13).

fn ledger(tp: &TestProject, env: &str, kind: &str) -> Vec<Value> {
    tp.env(env).ledger().records(kind).unwrap()
}

fn incidents(tp: &TestProject, env: &str) -> usize {
    std::fs::read_dir(tp.env(env).log_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("incident_"))
                .count()
        })
        .unwrap_or(0)
}

fn quarantines(tp: &TestProject, env: &str) -> usize {
    std::fs::read_dir(tp.env(env).quarantine_dir())
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits (bounded) for `watch.json` of a live watcher (of `pid` when given).
fn wait_for_watch(tp: &TestProject, env: &str, pid: Option<u32>) -> gates_core::watch::WatchInfo {
    let env = tp.env(env);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(i)) = gates_core::watch::read_info(&env) {
            if pid.is_none_or(|p| p == i.pid) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no watch.json within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) for a child; kills it and fails the test on timeout.
fn wait_bounded(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let started = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if started.elapsed() > limit {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("pid {pid} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    waiter.join().unwrap()
}

fn completed_result(out: &Output) -> String {
    let evs = events(&out.stdout);
    let done = find(&evs, "monitor.completed");
    assert_eq!(done.len(), 1, "one final summary: {}", describe(out));
    done[0]["result"].as_str().unwrap().to_string()
}

/// Issue 13 #1: two monitors started at once on a flooding release. One
/// watches and rolls back; the other attaches, reports that same rollback
/// and exits with the same code. One rollback, one quarantine, one incident.
#[test]
fn two_monitors_at_once_roll_back_exactly_once() {
    let s = setup();
    let bad = deploy_bad(&s, &[("low_confidence_flood", "1500")]);
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    let spawn = || {
        watch(
            &s.tp,
            s.env,
            &gates,
            "30",
            &["--backup", s.backup.to_str().unwrap()],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let a = wait_bounded(a, Duration::from_secs(90));
    let b = wait_bounded(b, Duration::from_secs(90));
    let (watcher, attached) = if find(&events(&a.stdout), "monitor.attached").is_empty() {
        (a, b)
    } else {
        (b, a)
    };
    assert_rolled_back(&s, &watcher, "low_confidence_queue");
    let att = events(&attached.stdout);
    assert_eq!(
        find(&att, "monitor.attached").len(),
        1,
        "the second one attached: {}",
        describe(&attached)
    );
    assert_eq!(attached.status.code(), Some(3), "{}", describe(&attached));
    assert_eq!(completed_result(&attached), "rolled-back");
    // What it reports is the watcher's rollback, not one of its own.
    let theirs = find(&events(&watcher.stdout), "rollback.completed")[0].clone();
    let seen = find(&att, "rollback.completed");
    assert_eq!(seen.len(), 1, "{}", describe(&attached));
    assert_eq!(seen[0], &theirs);
    assert!(find(&att, "rollback.started")
        .iter()
        .all(|e| e["ts"] == find(&events(&watcher.stdout), "rollback.started")[0]["ts"]));
    let rollbacks: Vec<Value> = ledger(&s.tp, s.env, "rollback")
        .into_iter()
        .filter(|r| r["result"] == "completed")
        .collect();
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    assert_eq!(rollbacks[0]["from"], bad.as_str());
    assert_eq!(quarantines(&s.tp, s.env), 1);
    assert_eq!(incidents(&s.tp, s.env), 1);
    assert_eq!(
        ledger(&s.tp, s.env, "monitor")
            .iter()
            .filter(|r| r["state"] == "started")
            .count(),
        1,
        "one evaluator"
    );
    assert!(!s.tp.env(s.env).install_root.join("watch.json").exists());
}

/// Issue 13 #2: a monitor killed (-9) in the middle of its rollback leaves
/// the journal; the rerun finishes that rollback, writes the incident and
/// reports rolled-back (exit 3), never passed.
#[test]
fn a_monitor_killed_mid_rollback_is_finished_by_the_rerun() {
    killed_mid_rollback_then_rerun("rollback-data-restored", false);
}

/// Killed after the switch, `current` is already the old release: a rerun
/// that names the bad release (as a detached watcher is started) must still
/// finish the journal, not call the window superseded (fault matrix).
#[test]
fn a_rerun_naming_the_rolled_back_release_still_finishes_the_rollback() {
    killed_mid_rollback_then_rerun("rollback-switched", true);
}

fn killed_mid_rollback_then_rerun(point: &str, rerun_names_release: bool) {
    let s = setup();
    let bad = deploy_bad(&s, &[("low_confidence_flood", "1500")]);
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    let env = s.tp.env(s.env);
    let out = watch(
        &s.tp,
        s.env,
        &gates,
        "30",
        &["--backup", s.backup.to_str().unwrap()],
    )
    .env("DHASH_TEST_CRASH_AT", point)
    .output()
    .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "{}", describe(&out));
    assert!(env.install_root.join("rollback.journal").is_file());
    assert_eq!(incidents(&s.tp, s.env), 0);

    let backup = s.backup.to_str().unwrap();
    let rerun_args: Vec<&str> = if rerun_names_release {
        vec!["--release", bad.as_str(), "--backup", backup]
    } else {
        vec![]
    };
    let rerun = watch(&s.tp, s.env, &gates, "30", &rerun_args)
        .output()
        .unwrap();
    assert_eq!(rerun.status.code(), Some(3), "{}", describe(&rerun));
    let evs = events(&rerun.stdout);
    let pending = find(&evs, "monitor.rollback-pending");
    assert_eq!(pending.len(), 1, "{}", describe(&rerun));
    assert_eq!(pending[0]["release"], bad.as_str());
    assert!(pending[0]["msg"]
        .as_str()
        .unwrap()
        .contains("rollback.journal"));
    assert!(!find(&evs, "rollback.completed").is_empty());
    assert_eq!(completed_result(&rerun), "rolled-back");
    assert!(
        find(&evs, "monitor.sample").is_empty(),
        "no watch of a half-restored state"
    );
    assert_eq!(health(&s.tp, s.env)["release"], s.good.as_str());
    assert!(!env.install_root.join("rollback.journal").exists());
    assert!(!env.install_root.join(".rollback.partial").exists());
    assert_eq!(incidents(&s.tp, s.env), 1);
    let monitor = ledger(&s.tp, s.env, "monitor");
    assert_eq!(monitor.last().unwrap()["result"], "rolled-back");
    assert!(monitor.iter().all(|r| r["result"] != "passed"));
}

/// Issue 12: a `--detach`ed watcher (as deploy starts it) registers itself;
/// a later `monitor_dhash --env E` attaches, follows it from the start and
/// ends with its result; `kill <pid>` stops the watcher cleanly.
#[test]
fn a_second_monitor_attaches_to_the_detached_watcher_and_kill_stops_it_cleanly() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.install_and_start(env, &tp.bundle("v1", &[]));
    let gates = fast_gates(&tp, env, "alert", json!({}));
    let _l = load(&tp, env, 40);
    let detached = watch(&tp, env, &gates, "60", &["--release", &v1, "--detach"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let info = wait_for_watch(&tp, env, Some(detached.id()));
    assert_eq!(info.release.as_deref(), Some(v1.as_str()));
    assert!(info.detached);
    // It left our session.
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(info.pid as i32))).unwrap();
    assert_eq!(sid.as_raw(), info.pid as i32, "a session of its own");

    let attached = monitor(&tp, &["--env", env])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(info.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let watcher = wait_bounded(detached, Duration::from_secs(20));
    assert_eq!(watcher.status.code(), Some(1), "interrupted");
    let attached = wait_bounded(attached, Duration::from_secs(20));
    assert_eq!(attached.status.code(), Some(1), "{}", describe(&attached));
    let evs = events(&attached.stdout);
    assert_eq!(find(&evs, "monitor.attached").len(), 1);
    let started = find(&evs, "monitor.started");
    assert_eq!(
        started.len(),
        1,
        "followed from the start: {}",
        describe(&attached)
    );
    assert_eq!(started[0]["pid"], info.pid);
    assert!(find(&evs, "monitor.sample").len() >= 2);
    assert_eq!(completed_result(&attached), "interrupted");
    let stderr = String::from_utf8_lossy(&attached.stderr);
    assert!(
        stderr.contains("Monitoring started") && stderr.contains("Monitoring interrupted"),
        "the watcher's log on stderr: {stderr}"
    );
    // Everything the detached watcher said is in its files.
    let file = std::fs::read_to_string(&info.events).unwrap();
    assert!(file.contains("\"monitor.completed\"") && file.contains("\"interrupted\""));
    assert!(std::fs::read_to_string(&info.log)
        .unwrap()
        .contains("Monitoring interrupted"));
    assert!(!tp.env(env).install_root.join("watch.json").exists());
    let monitor = ledger(&tp, env, "monitor");
    assert_eq!(monitor.last().unwrap()["state"], "interrupted");
    // The runbooks' names for its log.
    let stamp = info
        .log
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches(&format!("dhash_{env}_"))
        .to_string();
    assert!(tp
        .root()
        .join("logs")
        .join(format!("monitor_{env}_{stamp}"))
        .exists());
}

/// Issue 12: a bad release under the background watcher is rolled back once;
/// a monitor attached meanwhile reports the same outcome and exit code.
#[test]
fn a_bad_release_under_the_detached_watcher_is_rolled_back_once() {
    let s = setup();
    let bad = deploy_bad(&s, &[("low_confidence_flood", "1500")]);
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    let detached = watch(
        &s.tp,
        s.env,
        &gates,
        "30",
        &[
            "--release",
            &bad,
            "--backup",
            s.backup.to_str().unwrap(),
            "--detach",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for_watch(&s.tp, s.env, Some(detached.id()));
    let attached = watch(&s.tp, s.env, &gates, "30", &[]).output().unwrap();
    let watcher = wait_bounded(detached, Duration::from_secs(90));
    assert_eq!(watcher.status.code(), Some(3));
    assert_eq!(attached.status.code(), Some(3), "{}", describe(&attached));
    let evs = events(&attached.stdout);
    assert_eq!(
        find(&evs, "monitor.attached").len(),
        1,
        "{}",
        describe(&attached)
    );
    assert_eq!(find(&evs, "rollback.completed").len(), 1);
    assert_eq!(completed_result(&attached), "rolled-back");
    assert_eq!(health(&s.tp, s.env)["release"], s.good.as_str());
    let rollbacks = ledger(&s.tp, s.env, "rollback");
    assert_eq!(
        rollbacks
            .iter()
            .filter(|r| r["result"] == "completed")
            .count(),
        1,
        "{rollbacks:?}"
    );
    assert_eq!(quarantines(&s.tp, s.env), 1);
    assert_eq!(incidents(&s.tp, s.env), 1);
}

/// Issue 12: a new deploy ends the watch of the release it replaced: the
/// watcher records `superseded` (exit 6), whether told by
/// `watch::supersede` or finding `current` changed at its next poll; and a
/// watch asked for a release that is not current ends at once (exit 6).
#[test]
fn a_replaced_release_ends_its_watch_as_superseded() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.install_and_start(env, &tp.bundle("v1", &[]));
    let gates = fast_gates(&tp, env, "alert", json!({}));
    let child = watch(&tp, env, &gates, "60", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let info = wait_for_watch(&tp, env, Some(child.id()));
    assert_eq!(info.release.as_deref(), Some(v1.as_str()));
    // What deploy does right after switching to v2.
    tp.stop(env).unwrap();
    let v2 = tp.install_and_start(env, &tp.bundle("v2", &[]));
    let told = gates_core::watch::supersede(&tp.env(env), Some(&v2), "deploy of v2").unwrap();
    assert_eq!(told.map(|i| i.pid), Some(info.pid));
    let out = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert_eq!(completed_result(&out), "superseded");
    let done = find(&events(&out.stdout), "monitor.completed")[0].clone();
    assert!(
        done["msg"].as_str().unwrap().contains("deploy of v2"),
        "{done}"
    );
    assert_eq!(
        ledger(&tp, env, "monitor").last().unwrap()["result"],
        "superseded"
    );

    // Without being told: the next poll sees current changed.
    let child = watch(&tp, env, &gates, "60", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_watch(&tp, env, Some(child.id()));
    tp.stop(env).unwrap();
    let v3 = tp.install_and_start(env, &tp.bundle("v3", &[]));
    let out = wait_bounded(child, Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    let done = find(&events(&out.stdout), "monitor.completed")[0].clone();
    assert!(done["msg"].as_str().unwrap().contains(&v3), "{done}");

    // A watch for a release that is no longer current does not start.
    let out = watch(&tp, env, &gates, "60", &["--release", &v1])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert!(find(&events(&out.stdout), "monitor.started").is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the current release"));
}

/// Issue 12: a window that ends before an auto-rollback gate's window was
/// ever covered is inconclusive (exit 5) and names the gate; an alert gate
/// never evaluated is listed but does not change the result.
#[test]
fn a_window_shorter_than_a_gate_is_inconclusive_and_names_it() {
    let tp = TestProject::new();
    let env = tp.env_name();
    tp.install_and_start(env, &tp.bundle("v1", &[]));
    let gates = fast_gates(
        &tp,
        env,
        "auto-rollback",
        json!({
            "extraction_failure_rate": {"threshold": 5, "window_minutes": 10, "action": "auto-rollback"},
            // Not what this test is about: a loaded debug build may be slow.
            "p95_hash_time": {"threshold": 60000, "window_minutes": "3s", "action": "auto-rollback"},
            "error_rate": {"threshold": 3, "window_minutes": 10, "action": "alert"}
        }),
    );
    let _l = load(&tp, env, 8);
    let out = watch(&tp, env, &gates, "5", &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let evs = events(&out.stdout);
    let done = find(&evs, "monitor.completed")[0].clone();
    assert_eq!(done["result"], "inconclusive");
    let never: Vec<(String, String)> = done["never_evaluated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["gate"].as_str().unwrap().to_string(),
                n["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        never.contains(&("extraction_failure_rate".into(), "auto-rollback".into())),
        "{done}"
    );
    assert!(
        never.contains(&("error_rate".into(), "alert".into())),
        "{done}"
    );
    assert!(
        !never
            .iter()
            .any(|(g, _)| g == "low_confidence_queue" || g == "memory_usage"),
        "gates that decided are not listed: {done}"
    );
    let msg = done["msg"].as_str().unwrap();
    assert!(
        msg.contains("INCONCLUSIVE") && msg.contains("extraction_failure_rate"),
        "{msg}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("extraction_failure_rate"));
    let log = std::fs::read_to_string(done_log(&evs)).unwrap();
    assert!(log.contains("Monitoring inconclusive") && log.contains("extraction_failure_rate"));
    assert_eq!(
        ledger(&tp, env, "monitor").last().unwrap()["result"],
        "inconclusive"
    );
}

fn done_log(evs: &[Value]) -> PathBuf {
    PathBuf::from(find(evs, "monitor.started")[0]["log"].as_str().unwrap())
}

/// Issue 12: a manual `rollback_dhash` ends the running watch of the
/// release it replaced (superseded, exit 6), so the watcher never acts on
/// a release that is no longer current.
#[test]
fn a_manual_rollback_ends_the_watch_of_the_release_it_replaced() {
    // Built (if stale) before the window starts, not during it.
    testkit::bin_path("rollback_dhash");
    let s = setup();
    let v2 = deploy_bad(&s, &[]);
    let gates = fast_gates(&s.tp, s.env, "alert", json!({}));
    let child = watch(&s.tp, s.env, &gates, "120", &["--release", &v2])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_watch(&s.tp, s.env, Some(child.id()));
    let rb =
        s.tp.cmd("rollback_dhash")
            .args(["--env", s.env, "--force", "--backup"])
            .arg(&s.backup)
            .output()
            .unwrap();
    assert_eq!(rb.status.code(), Some(0), "{}", describe(&rb));
    // Either the rollback told it (watch::supersede) or it saw `current`
    // change at its next poll, whichever came first.
    let out = wait_bounded(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    assert_eq!(completed_result(&out), "superseded");
    let evs = events(&out.stdout);
    assert!(
        find(&evs, "rollback.started").is_empty(),
        "the watcher did not act"
    );
    assert_eq!(health(&s.tp, s.env)["release"], s.good.as_str());
}

/// Issue 12 acceptance: a release is live (as after `deploy_dhash`), then
/// two `monitor_dhash --env staging`: one watcher, the second attached and
/// ending with the same result and exit code (passed, 0).
#[test]
fn a_second_monitor_of_a_healthy_window_attaches_and_ends_with_the_same_result() {
    let tp = TestProject::new();
    let env = tp.env_name();
    tp.install_and_start(env, &tp.bundle("v1", &[]));
    // p95 far above what a debug build reaches under the whole suite's load
    // (1.3 s seen): this test is about attaching, not latency.
    let gates = fast_gates(
        &tp,
        env,
        "auto-rollback",
        json!({"p95_hash_time": {"threshold": 60000, "window_minutes": "3s", "action": "auto-rollback"}}),
    );
    let _l = load(&tp, env, 12);
    let first = watch(&tp, env, &gates, "7", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_watch(&tp, env, Some(first.id()));
    let second = monitor(&tp, &["--env", env]).output().unwrap();
    let first = wait_bounded(first, Duration::from_secs(30));
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    assert_eq!(second.status.code(), Some(0), "{}", describe(&second));
    assert_eq!(completed_result(&first), "passed");
    assert_eq!(completed_result(&second), "passed");
    let evs = events(&second.stdout);
    assert_eq!(find(&evs, "monitor.attached").len(), 1);
    // The attached one printed the watcher's events, not its own.
    assert_eq!(
        find(&evs, "monitor.completed")[0],
        find(&events(&first.stdout), "monitor.completed")[0]
    );
    assert_eq!(
        ledger(&tp, env, "monitor")
            .iter()
            .filter(|r| r["state"] == "started")
            .count(),
        1,
        "one evaluator"
    );
}

/// A watcher killed (-9) while a monitor is attached: the attached one says
/// the watcher died without a result (exit 1); the next monitor recovers the
/// stale lock and continues the same window.
#[test]
fn an_attached_monitor_reports_a_dead_watcher_and_the_window_is_continued() {
    let tp = TestProject::new();
    let env = tp.env_name();
    tp.install_and_start(env, &tp.bundle("v1", &[]));
    let gates = fast_gates(&tp, env, "alert", json!({}));
    let mut first = watch(&tp, env, &gates, "60", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let info = wait_for_watch(&tp, env, Some(first.id()));
    let attached = monitor(&tp, &["--env", env])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    first.kill().unwrap();
    let first = first.wait_with_output().unwrap();
    let start = find(&events(&first.stdout), "monitor.started")[0]["window_start"].clone();
    let attached = wait_bounded(attached, Duration::from_secs(20));
    assert_eq!(attached.status.code(), Some(1), "{}", describe(&attached));
    let lost = find(&events(&attached.stdout), "monitor.watcher-lost")
        .first()
        .map(|e| (*e).clone())
        .unwrap_or_else(|| panic!("{}", describe(&attached)));
    assert_eq!(lost["pid"], info.pid);
    assert!(lost["msg"].as_str().unwrap().contains("without a result"));

    let again = watch(&tp, env, &gates, "60", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let info2 = wait_for_watch(&tp, env, Some(again.id()));
    assert_eq!(info2.started_at, info.started_at, "the same window");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(info2.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let again = wait_bounded(again, Duration::from_secs(20));
    let st = find(&events(&again.stdout), "monitor.started")[0].clone();
    assert_eq!(st["continued"], true, "{st}");
    assert_eq!(st["window_start"], start);
}

/// A watcher that saw a violation but waits for the environment lock (a
/// deploy holds it) and is then superseded by that deploy never rolls back
/// the release that deploy replaced: it ends superseded (exit 6).
#[test]
fn a_watcher_superseded_while_waiting_for_the_lock_does_not_roll_back() {
    let s = setup();
    let bad = deploy_bad(&s, &[("low_confidence_flood", "1500")]);
    let env = s.tp.env(s.env);
    // What a deploy holds while it switches.
    let lock = gates_core::lock::EnvLock::acquire(&env.lock_path(), s.env, "deploy_dhash").unwrap();
    let gates = fast_gates(&s.tp, s.env, "auto-rollback", json!({}));
    let child = watch(
        &s.tp,
        s.env,
        &gates,
        "60",
        &["--release", &bad, "--backup", s.backup.to_str().unwrap()],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let info = wait_for_watch(&s.tp, s.env, Some(child.id()));
    // Let it see the violation and start waiting for the lock.
    std::thread::sleep(Duration::from_secs(3));
    let told = std::thread::spawn(move || {
        gates_core::watch::supersede(&env, Some("v9-next"), "deploy of v9-next").unwrap()
    });
    let out = wait_bounded(child, Duration::from_secs(30));
    assert_eq!(told.join().unwrap().map(|i| i.pid), Some(info.pid));
    drop(lock);
    assert_eq!(out.status.code(), Some(6), "{}", describe(&out));
    let evs = events(&out.stdout);
    assert!(
        !find(&evs, "gate.violated").is_empty(),
        "{}",
        describe(&out)
    );
    assert!(
        find(&evs, "rollback.started").is_empty(),
        "{}",
        describe(&out)
    );
    assert_eq!(completed_result(&out), "superseded");
    assert_eq!(quarantines(&s.tp, s.env), 0);
    assert_eq!(incidents(&s.tp, s.env), 0);
}

/// Issue 12: a gates file's `monitoring` section (seed 004's profile,
/// `--config quality-gates-mobius.json`) sets the watch's duration and
/// cadence; `--duration` still wins over it.
#[test]
fn a_gates_profile_sets_the_watch_duration_and_cadence() {
    let tp = TestProject::new();
    let env = tp.env_name();
    tp.install_and_start(env, &tp.bundle("v1", &[]));
    let mobius: Value = serde_json::from_slice(
        &std::fs::read(testkit::workspace_root().join("quality-gates-mobius.json")).unwrap(),
    )
    .unwrap();
    let phases = &mobius["environments"]["production"]["monitoring"]["cadence"];
    assert_eq!(phases.as_array().map(Vec::len), Some(3), "{mobius}");
    // The shipped profile's own phases, scaled down to a 3 s window here.
    let mut gates = mobius.clone();
    gates["environments"][env] = mobius["environments"]["production"].clone();
    gates["environments"][env]["monitoring"] =
        json!({"duration": "3s", "cadence": [{"every": "1s", "until": "2s"}, {"every": "2s"}]});
    let path = tp.root().join("profile.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&gates).unwrap()).unwrap();
    let out = tp
        .cmd_path(Path::new(MONITOR))
        .args(["--env", env, "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let evs = events(&out.stdout);
    let started = find(&evs, "monitor.started");
    assert_eq!(started.len(), 1, "{}", describe(&out));
    assert_eq!(started[0]["duration_secs"], 3.0, "{}", started[0]);
    assert_eq!(
        started[0]["cadence"][0]["every_secs"], 1.0,
        "{}",
        started[0]
    );
    assert_eq!(
        started[0]["cadence"][1]["every_secs"], 2.0,
        "{}",
        started[0]
    );
    // --duration wins over the profile.
    let out = tp
        .cmd_path(Path::new(MONITOR))
        .args(["--env", env, "--duration", "2", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let evs = events(&out.stdout);
    assert_eq!(
        find(&evs, "monitor.started")[0]["duration_secs"],
        2.0,
        "{}",
        describe(&out)
    );
}

/// A monitor attaching to a `--dry-run` watch says that it is a dry run
/// (nothing is rolled back, by it or by the attached command) and that its
/// own `--duration` is ignored (attacker2 G6); it ends with the watch's result.
#[test]
fn attaching_to_a_dry_run_watch_says_so() {
    let tp = TestProject::new();
    let env = tp.env_name();
    let v1 = tp.install_and_start(env, &tp.bundle("v1", &[]));
    let gates = fast_gates(&tp, env, "alert", json!({}));
    let _l = load(&tp, env, 20);
    let dry = watch(&tp, env, &gates, "6", &["--release", &v1, "--dry-run"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_watch(&tp, env, Some(dry.id()));
    let attached = monitor(&tp, &["--env", env, "--release", &v1, "--duration", "60m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let attached = wait_bounded(attached, Duration::from_secs(40));
    let watcher = wait_bounded(dry, Duration::from_secs(40));
    assert_eq!(
        attached.status.code(),
        watcher.status.code(),
        "{}",
        describe(&attached)
    );
    let evs = events(&attached.stdout);
    assert_eq!(
        find(&evs, "monitor.attached").len(),
        1,
        "{}",
        describe(&attached)
    );
    let differs = find(&evs, "monitor.attach-differs");
    assert_eq!(differs.len(), 1, "{}", describe(&attached));
    assert_eq!(differs[0]["followed_dry_run"], true);
    let stderr = String::from_utf8_lossy(&attached.stderr);
    assert!(
        stderr.contains("DRY RUN") && stderr.contains("--duration 1h is ignored"),
        "{stderr}"
    );
}
