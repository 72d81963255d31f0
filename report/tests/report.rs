//! report_dhash end to end: a real history made by the real tools against
//! the reference service (a good release watched to the end, a bad one its
//! watch rolls back), then the report's figures checked against what the
//! tools' own events show, computed here independently.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use testkit::{events, TestProject};

const REPORT: &str = env!("CARGO_BIN_EXE_report_dhash");
const ENV: &str = "staging";

fn report(tp: &TestProject, args: &[&str]) -> Output {
    tp.cmd_path(Path::new(REPORT)).args(args).output().unwrap()
}

use testkit::describe;

/// One auto-rollback gate with no window: the flood trips it on the first
/// sample; and an alert gate with a 2 s window, pending until it is covered
/// (then without data: the watch sends no traffic).
/// The watch polls every 0.5 s for its first second, then every second, so
/// its pages have two cadence phases.
fn queue_gate(tp: &TestProject) -> PathBuf {
    tp.edit_topology(|t| {
        t["environments"][ENV]["monitor"]["cadence"] =
            json!([{"every": "0.5s", "for": "1s"}, {"every": "1s"}]);
        // The runbooks' policy: the rollback's incident gets an ack clock.
        t["environments"][ENV]["escalation"] = json!({"ack_deadline": "5m"});
    });
    let doc = json!({"environments": {ENV: {"quality_gates": {
        "low_confidence_queue": {"threshold": 1000, "window_minutes": 0, "action": "auto-rollback"},
        "extraction_failure_rate": {"threshold": 50, "window_minutes": "2s", "action": "alert"}
    }}}});
    let path = tp.root().join("fast-gates.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

fn deploy(tp: &TestProject, tag: &str) -> Vec<Value> {
    let out = tp
        .cmd("deploy_dhash")
        .args(["--env", ENV, "--no-monitor", "--tag", tag])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "deploy {tag}: {}",
        describe(&out)
    );
    events(&out.stdout)
}

/// A `gh` stand-in that is not logged in, first on the watch's PATH: the
/// escalation policy opens the rollback's incident in a tracker, and a
/// test must never reach a real GitHub (the local record stays complete).
fn path_without_gh(tp: &TestProject) -> std::ffi::OsString {
    let bin = tp.root().join("no-gh-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let gh = bin.join("gh");
    std::fs::write(&gh, "#!/bin/sh\necho 'not logged in' >&2\nexit 1\n").unwrap();
    let mut perms = std::fs::metadata(&gh).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&gh, perms).unwrap();
    let mut dirs = vec![bin];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

fn watch(tp: &TestProject, gates: &Path, secs: &str, code: i32) -> Vec<Value> {
    let out = tp
        .cmd("monitor_dhash")
        .env("PATH", path_without_gh(tp))
        .args(["--env", ENV, "--config"])
        .arg(gates)
        .args(["--duration", secs])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(code), "watch: {}", describe(&out));
    events(&out.stdout)
}

fn named<'a>(evs: &'a [Value], name: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == name).collect()
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

/// MTTR from a watch's events: the violating sample of the auto-rollback
/// gate to the health check that completed the required run of OK checks
/// after the rollback started.
fn mttr_from(evs: &[Value]) -> f64 {
    let v = evs
        .iter()
        .position(|e| e["event"] == "gate.violated" && e["action"] == "auto-rollback")
        .expect("an auto-rollback violation");
    let detected = time(&evs[v]["sample_ts"]);
    let started = v + evs[v..]
        .iter()
        .position(|e| e["event"] == "rollback.started")
        .expect("rollback.started");
    let healthy = evs[started..]
        .iter()
        .find(|e| e["event"] == "health.checked" && e["consecutive_ok"] == e["required"])
        .expect("the restore's last required health check");
    (time(&healthy["ts"]) - detected).num_milliseconds() as f64 / 1000.0
}

fn figure<'a>(evs: &'a [Value], name: &str) -> &'a Value {
    evs.iter()
        .find(|e| e["event"] == "report.figure" && e["name"] == name)
        .unwrap_or_else(|| panic!("no figure {name} in {evs:#?}"))
}

#[test]
fn figures_match_the_history_the_tools_recorded() {
    let tp = TestProject::new();
    let gates = queue_gate(&tp);
    tp.bundle("v1", &[]);
    tp.bundle("v2", &[("low_confidence_flood", "1500")]);

    let d1 = deploy(&tp, "v1");
    let w1 = watch(&tp, &gates, "3", 0);
    let d2 = deploy(&tp, "v2");
    let w2 = watch(&tp, &gates, "30", 3);

    // What the tools' own events say.
    let deploys = [&d1, &d2]
        .iter()
        .map(|d| named(d, "deploy.healthy").len())
        .sum::<usize>();
    let results: Vec<String> = [&w1, &w2]
        .iter()
        .map(|w| {
            named(w, "monitor.completed")[0]["result"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let passed = results.iter().filter(|r| *r == "passed").count();
    let rolled_back = named(&w2, "rollback.completed").len();
    let mttr = mttr_from(&w2);
    assert_eq!((deploys, passed, rolled_back), (2, 1, 1), "{results:?}");
    let ack = acknowledge(&tp, &w2);

    let out = report(&tp, &["--env", ENV, "--since", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    assert_eq!(figure(&evs, "deployments")["value"], deploys as f64);
    assert_eq!(
        figure(&evs, "deployment_success_ratio")["value"],
        passed as f64 / deploys as f64
    );
    assert_eq!(figure(&evs, "auto_rollbacks")["value"], rolled_back as f64);
    let incidents = named(&evs, "report.incident");
    assert_eq!(incidents.len(), 1, "{evs:#?}");
    let got = incidents[0]["mttr_seconds"].as_f64().unwrap();
    assert!((got - mttr).abs() < 0.002, "report {got} vs events {mttr}");
    assert_eq!(figure(&evs, "mttr_worst_seconds")["value"], got);
    assert_eq!(incidents[0]["gate"], "low_confidence_queue");
    assert!(
        incidents[0]["incident_record"].is_string(),
        "{}",
        incidents[0]
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("deployment_success_ratio"));
    let row = incidents[0];
    assert_eq!(row["acknowledged_by"], "alice", "{row}");
    assert_eq!(row["acknowledged_at"], ack.at.as_str(), "{row}");
    let secs = row["ack_seconds"].as_f64().unwrap();
    assert!(
        (secs - ack.seconds).abs() < 0.002,
        "report {secs} vs ledger {}",
        ack.seconds
    );
    assert!(
        row["escalation_level"].is_null(),
        "acked before the deadline: {row}"
    );
    assert_eq!(
        row["incident_record"]
            .as_str()
            .and_then(|p| Path::new(p).file_stem()?.to_str()),
        Some(ack.incident.as_str())
    );
    assert_eq!(figure(&evs, "incidents_unacknowledged")["value"], 0.0);
    assert_eq!(figure(&evs, "ack_median_seconds")["value"], secs);
    let table = report(&tp, &["--env", ENV, "--since", "1h", "--table"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&format!("acked by alice at {}", ack.at)),
        "{table}"
    );
    eprintln!("report.incident: {row}\n{table}");

    let bad = named(&d2, "deploy.healthy")[0]["release"]
        .as_str()
        .unwrap()
        .to_string();
    let page = window_page_charts_every_gate(&tp, &bad);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains(&format!("<li>Acknowledged: alice at {}</li>", ack.at)),
        "window summary names the ack: {html}"
    );
    page_renders_in_chromium(&page, &w2);
    history_page_renders_in_chromium(&tp, &[&w1, &w2], mttr);
    let history = std::fs::read_to_string(tp.root().join("history.html")).unwrap();
    assert!(
        history.contains(&format!("<td class=\"ack\">alice at {}</td>", ack.at)),
        "history incident list names the ack: {history}"
    );
    marking_sets_the_false_positive_rate(&tp);
    textfile_is_valid_exposition_format(&tp);
    csv_has_one_row_per_figure(&tp);
}

/// An acknowledgement as the ledger holds it, and its delay measured here.
struct LedgerAck {
    incident: String,
    at: String,
    seconds: f64,
}

/// The real `notify ack` after the rolled-back watch; what it recorded is
/// read back from the ledger, and the delay measured from the watch's own
/// rollback.started event.
fn acknowledge(tp: &TestProject, watch: &[Value]) -> LedgerAck {
    let out = tp
        .cmd("notify")
        .args(["ack", "--env", ENV, "--by", "alice"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "notify ack: {}", describe(&out));
    let ledger =
        std::fs::read_to_string(tp.root().join(".dhash").join(ENV).join("ledger.jsonl")).unwrap();
    let acks: Vec<Value> = ledger
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "acknowledgement")
        .collect();
    assert_eq!(acks.len(), 1, "{ledger}");
    assert_eq!(acks[0]["by"], "alice");
    let started = named(watch, "rollback.started")[0];
    let seconds = (time(&acks[0]["at"]) - time(&started["ts"])).num_milliseconds() as f64 / 1000.0;
    LedgerAck {
        incident: acks[0]["incident"]
            .as_str()
            .expect("the incident acknowledged")
            .to_string(),
        at: acks[0]["at"].as_str().unwrap().to_string(),
        seconds,
    }
}

fn window_page_charts_every_gate(tp: &TestProject, release: &str) -> PathBuf {
    let page = tp.root().join("window.html");
    let out = report(
        tp,
        &[
            "window",
            "--env",
            ENV,
            "--release",
            release,
            "--out",
            page.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "one chart per gate (two gates here)"
    );
    assert!(
        html.contains("data-gate=\"low_confidence_queue\""),
        "{html}"
    );
    for legend in [
        "threshold",
        "violation",
        "rollback started",
        "healthy again",
    ] {
        assert!(html.contains(legend), "{legend} drawn");
    }
    // Self-contained: nothing fetched (the SVG namespace URI is a name, not a fetch).
    assert!(
        !html.contains("<script") && !html.contains("<link") && !html.contains("src="),
        "self-contained"
    );
    assert!(html.contains("Result: <b>rolled-back</b>"), "summary");
    let out = report(tp, &["window", "--env", ENV, "--release", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    page
}

const CHROMIUM: &str = "chromium";
const CHROMIUM_LIMIT: Duration = Duration::from_secs(60);

/// Headless Chromium on `page` with `args`, in a throwaway profile, killed
/// after [`CHROMIUM_LIMIT`]. Started, not waited for: the DOM dump and the
/// screenshot run side by side. Its output goes to files in the profile, as
/// a pipe nobody reads while polling would stall a large DOM dump.
fn chromium(page: &Path, profile: &Path, args: &[&str]) -> (Child, PathBuf) {
    std::fs::create_dir_all(profile).unwrap();
    let file = |name: &str| std::fs::File::create(profile.join(name)).unwrap();
    let child = Command::new(CHROMIUM)
        // --no-sandbox: CI runs as root in a container, where the sandbox cannot start.
        .args(["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run"])
        .args(["--enable-logging=stderr", "--v=0"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(file("stdout"))
        .stderr(file("stderr"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{CHROMIUM} is needed for this test (bash .ci/run installs it: apt-get install chromium): {e}"
            )
        });
    (child, profile.to_path_buf())
}

/// Waits for a [`chromium`] run; its stdout once it exited cleanly with no
/// console message.
fn finish((mut child, profile): (Child, PathBuf), what: &str) -> String {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CHROMIUM_LIMIT {
            child.kill().ok();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |name: &str| std::fs::read_to_string(profile.join(name)).unwrap_or_default();
    let (out, log) = (read("stdout"), read("stderr"));
    assert!(
        start.elapsed() <= CHROMIUM_LIMIT,
        "chromium {what} still running after {CHROMIUM_LIMIT:?}, killed: {log}"
    );
    assert!(status.success(), "chromium {what}: {status}\n{log}");
    // The page has no script, so any console message (this Chromium logs
    // even console.error as INFO:CONSOLE) is a rendering problem.
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "chromium {what} console: {console:#?}");
    out
}

/// The page as a browser sees it: it renders without errors, its DOM holds
/// one chart per gate the watch decided on, each with its threshold line,
/// and the rollback marker; a screenshot is kept as a test artifact.
fn page_renders_in_chromium(page: &Path, watch: &[Value]) {
    let profiles = profiles_dir(page);
    let shot = testkit::target_dir().join("test-artifacts/watch-page.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::remove_file(&shot).ok();
    let started = Instant::now();
    let dom = chromium(page, &profiles.join("dom"), &["--dump-dom"]);
    let screenshot = chromium(
        page,
        &profiles.join("shot"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,1600",
            "--hide-scrollbars",
        ],
    );
    let dom = finish(dom, "--dump-dom");
    finish(screenshot, "--screenshot");
    eprintln!(
        "chromium: {:?}; screenshot of the watch page: {}",
        started.elapsed(),
        shot.display()
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", shot.display());

    assert!(
        dom.contains("Result: <b>rolled-back</b>"),
        "summary rendered: {dom}"
    );
    let mut gates: Vec<&str> = watch
        .iter()
        .filter(|e| e["event"].as_str().unwrap_or("").starts_with("gate."))
        .filter_map(|e| e["gate"].as_str())
        .collect();
    gates.sort_unstable();
    gates.dedup();
    assert!(!gates.is_empty(), "the watch decided on gates");
    let charts: Vec<&str> = dom.split("<figure class=\"gate-chart\"").skip(1).collect();
    assert_eq!(charts.len(), gates.len(), "one chart per gate {gates:?}");
    for gate in &gates {
        let chart = charts
            .iter()
            .find(|c| c.starts_with(&format!(" data-gate=\"{gate}\"")))
            .unwrap_or_else(|| panic!("a chart of {gate}"));
        let chart = &chart[..chart.find("</figure>").unwrap()];
        assert!(chart.contains("<svg"), "{gate}: an SVG chart");
        assert!(
            chart.contains("data-role=\"threshold\""),
            "{gate}: threshold line"
        );
        assert!(
            chart.contains("data-role=\"rollback\""),
            "{gate}: rollback marker"
        );
        let count = |role: &str| chart.matches(&format!("data-role=\"{role}\"")).count();
        assert_eq!(count("phase"), 2, "{gate}: the 0.5 s and the 1 s phase");
        assert_eq!(
            count("release"),
            2,
            "{gate}: the bad release, then the restored one"
        );
        for label in ["every 0.5 s", "every 1 s", "release ", "restored "] {
            assert!(chart.contains(label), "{gate}: {label:?} drawn");
        }
    }
    // The alert gate's 2 s window was not covered when the rollback began.
    let ratio = charts
        .iter()
        .find(|c| c.starts_with(" data-gate=\"extraction_failure_rate\""))
        .expect("the extraction_failure_rate chart");
    assert!(
        ratio.contains("data-role=\"pending\""),
        "the pending stretch is shaded"
    );
}

/// `--html`: the period's page, in Chromium: the weekly chart with a bar of
/// deployments and one of rollbacks, one MTTR bar (the one incident), and a
/// trend chart per gate that had a figure in the watches, each with its
/// threshold; a screenshot is kept as a test artifact.
fn history_page_renders_in_chromium(tp: &TestProject, watches: &[&Vec<Value>], mttr: f64) {
    let page = tp.root().join("history.html");
    let out = report(
        tp,
        &[
            "--env",
            ENV,
            "--since",
            "1h",
            "-q",
            "--html",
            page.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("<script") && !html.contains("<link") && !html.contains("src="),
        "self-contained"
    );
    let shot = testkit::target_dir().join("test-artifacts/history-page.png");
    std::fs::remove_file(&shot).ok();
    let profiles = profiles_dir(&page);
    let dom = chromium(&page, &profiles.join("history-dom"), &["--dump-dom"]);
    let screenshot = chromium(
        &page,
        &profiles.join("history-shot"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1000,2000",
            "--hide-scrollbars",
        ],
    );
    let dom = finish(dom, "--dump-dom history");
    finish(screenshot, "--screenshot history");
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    let chart = |name: &str| -> Vec<&str> {
        dom.split(&format!(
            "<figure class=\"history-chart\" data-chart=\"{name}\""
        ))
        .skip(1)
        .map(|c| &c[..c.find("</figure>").unwrap()])
        .collect()
    };
    let roles = |c: &str, role: &str| c.matches(&format!("data-role=\"{role}\"")).count();
    let weekly = chart("deploys-per-week");
    assert_eq!(weekly.len(), 1, "{dom}");
    // Everything happened in this week (or, just after midnight on Monday, the last one).
    assert!(roles(weekly[0], "deployments") >= 1, "{}", weekly[0]);
    assert!(roles(weekly[0], "rollbacks") >= 1, "{}", weekly[0]);
    let mttr_chart = chart("mttr-per-incident");
    assert_eq!(mttr_chart.len(), 1);
    assert_eq!(roles(mttr_chart[0], "mttr"), 1, "one incident");
    // The gates with a figure in the watches' own events, each with a trend.
    let mut gates: Vec<&str> = watches
        .iter()
        .flat_map(|w| w.iter())
        .filter(|e| {
            e["event"].as_str().unwrap_or("").starts_with("gate.") && e["value"].is_number()
        })
        .filter_map(|e| e["gate"].as_str())
        .collect();
    gates.sort_unstable();
    gates.dedup();
    let trends = chart("gate-trend");
    assert_eq!(trends.len(), gates.len(), "a trend per gate {gates:?}");
    for (t, gate) in trends.iter().zip(&gates) {
        assert!(t.starts_with(&format!(" data-gate=\"{gate}\"")), "{t}");
        assert!(roles(t, "threshold") >= 1, "{gate}: threshold");
    }
    assert!(dom.contains("mttr_worst_seconds"), "the figures table");
    assert!(
        dom.contains(&format!("{}", (mttr * 1000.0).round() / 1000.0)),
        "MTTR {mttr} in the table"
    );
}

/// A fresh folder next to `page` (inside the test project, removed with it).
fn profiles_dir(page: &Path) -> PathBuf {
    let dir = page.parent().unwrap().join("chromium-profiles");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn marking_sets_the_false_positive_rate(tp: &TestProject) {
    let ledger = tp.env(ENV).ledger_path();
    let before = std::fs::read_to_string(&ledger).unwrap();
    let evs = events(&report(tp, &["--env", ENV]).stdout);
    assert_eq!(figure(&evs, "false_positive_ratio")["value"], 0.0);
    let id = named(&evs, "report.rollback")[0]["ts"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix = &id[..id.len() - 3];
    let out = report(
        tp,
        &[
            "mark",
            "--env",
            ENV,
            "--rollback",
            prefix,
            "--unnecessary",
            "--reason",
            "test",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let after = std::fs::read_to_string(&ledger).unwrap();
    assert!(after.starts_with(&before), "mark only appends");
    let evs = events(&report(tp, &["--env", ENV]).stdout);
    assert_eq!(figure(&evs, "false_positive_ratio")["value"], 1.0);
    assert_eq!(named(&evs, "report.rollback")[0]["verdict"], "unnecessary");
    let out = report(
        tp,
        &["mark", "--env", ENV, "--rollback", "1999", "--unnecessary"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&id),
        "lists the rollbacks"
    );
}

fn textfile_is_valid_exposition_format(tp: &TestProject) {
    let path = tp.root().join("dhash.prom");
    let out = report(
        tp,
        &[
            "--env",
            ENV,
            "-q",
            "--prometheus-textfile",
            path.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with("dhash_") && line.contains("env=\"staging\""),
            "{line}"
        );
    }
    assert!(
        text.contains("# TYPE dhash_deployment_success_ratio gauge"),
        "{text}"
    );
    assert!(
        text.contains("dhash_deployment_success_ratio{env=\"staging\"} 0.5"),
        "{text}"
    );
    // Prometheus' own checker, as node_exporter's users would run it.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
    {
        Ok(o) => assert!(
            o.status.success(),
            "promtool check metrics: {}\n{text}",
            describe(&o)
        ),
        Err(e) => panic!(
            "promtool is needed for this test (bash .ci/run installs it: apt-get install prometheus): {e}"
        ),
    }
}

fn csv_has_one_row_per_figure(tp: &TestProject) {
    let out = report(tp, &["--env", ENV, "--csv", "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("env,since,until,figure,labels,value,unit,why")
    );
    assert!(
        text.lines()
            .any(|l| l.contains(",deployment_success_ratio,,0.5,ratio,")),
        "{text}"
    );
}

#[test]
fn an_unknown_environment_is_a_usage_error() {
    let tp = TestProject::new();
    let out = report(&tp, &["--env", "nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nowhere"),
        "{}",
        describe(&out)
    );
}

#[test]
fn a_bad_since_is_a_usage_error_naming_the_flag() {
    let tp = TestProject::new();
    for bad in ["lastweek", "-3d", "2026-13-45"] {
        let out = report(&tp, &["--env", ENV, &format!("--since={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--since") && err.contains(bad), "{bad}: {err}");
    }
    let out = report(
        &tp,
        &[
            "--env",
            ENV,
            "--since",
            "2026-11-02",
            "--until",
            "2026-11-01",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn an_unreadable_ledger_line_is_an_error_naming_file_and_line() {
    let tp = TestProject::new();
    let env = tp.env(ENV);
    std::fs::create_dir_all(&env.install_root).unwrap();
    let good = json!({"ts": "2026-11-01T00:00:00.000Z", "kind": "deploy", "result": "healthy", "release": "r1"});
    std::fs::write(
        env.ledger_path(),
        // A record glued onto a cut (not a cut alone, which is skipped).
        format!("{good}\n{{\"ts\":\"2026-11-01T0{good}\n"),
    )
    .unwrap();
    let out = report(&tp, &["--env", ENV]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ledger.jsonl line 2") && err.contains("unreadable"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "no partial report: {}",
        describe(&out)
    );
}

#[test]
fn an_empty_history_says_which_figures_cannot_be_derived() {
    let tp = TestProject::new();
    let out = report(&tp, &["--env", ENV]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let evs = events(&out.stdout);
    assert_eq!(figure(&evs, "deployments")["value"], 0.0);
    let unavailable: Vec<&str> = named(&evs, "report.unavailable")
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for f in [
        "deployment_success_ratio",
        "mttr_mean_seconds",
        "false_positive_ratio",
        "ack_median_seconds",
    ] {
        assert!(unavailable.contains(&f), "{f} unavailable: {unavailable:?}");
    }
}
