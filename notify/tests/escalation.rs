//! Escalation, acknowledgement, on-call channels and the tracker (issue 19):
//! the real `notify` binary, one process per step (so every step is also a
//! restart: the state lives on disk), a scratch project, loopback receivers
//! standing in for PagerDuty and Opsgenie, a `gh` stand-in on `PATH`, and
//! `DHASH_NOW` for the minutes.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use testkit::receiver::{Receiver, Reply};

const NOTIFY: &str = env!("CARGO_BIN_EXE_notify");
/// 2027-01-15T08:00:00Z: the drills' T0.
const T0: i64 = 1_800_000_000;
const MIN: i64 = 60;
const ROUTING_KEY: &str = "R0uTiNgKeY0123456789abcdefABCDEF";
const GENIE_KEY: &str = "genie-api-key-5f1c2b7a";

/// Variables of the developer's shell that must not take part.
const CLEARED: &[&str] = &[
    "SLACK_WEBHOOK",
    "SLACK_WEBHOOK_URL",
    "TEAMS_WEBHOOK",
    "TEAMS_WEBHOOK_URL",
    "DISCORD_WEBHOOK_URL",
    "DISCORD_WEBHOOK",
    "WEBHOOK_URL",
    "EMAIL_TO",
    "EMAIL_SMTP_HOST",
    "PAGERDUTY_ROUTING_KEY",
    "PAGERDUTY_EVENTS_URL",
    "OPSGENIE_API_KEY",
    "OPSGENIE_API_URL",
    "GH_TOKEN",
    "GITHUB_TOKEN",
    "GITHUB_API_URL",
    "DHASH_TRACKER_REPO",
    "INCIDENT_WEBHOOK_URL",
    "DHASH_NOW",
];

struct Project {
    dir: tempfile::TempDir,
    /// `PATH` for the tool: an empty folder unless a test puts a `gh` there.
    bin: PathBuf,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    lines: Vec<Value>,
}

impl Run {
    fn events(&self, name: &str) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["event"] == name).collect()
    }
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "exit {}\n{}\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl Project {
    fn new() -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let topology = json!({"environments": {"staging": {
            "install_root": ".dhash/staging", "data_dir": ".dhash/staging/data",
            "database": ".dhash/staging/data/dhash.sqlite3",
            "service": {"kind": "local", "bind": "127.0.0.1:9"},
            "health_url": "http://127.0.0.1:9/health", "metrics_url": "http://127.0.0.1:9/metrics",
            "queue_url": "http://127.0.0.1:9/api/dhash/queue/status",
            "log_dir": "monitor_logs",
            "notifications": {"quiet_period": "10m", "timeout": "5s",
                "routes": [{"channel": "pagerduty", "min_level": "critical"}]},
            "escalation": {"ack_deadline": "5m"}
        }}});
        std::fs::write(dir.path().join("environments.json"), topology.to_string()).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        Project { dir, bin }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str], now: i64, vars: &[(&str, &str)], stdin: Option<&str>) -> Run {
        let mut cmd = self.command(args, now, vars);
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("spawn notify");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        finish(child)
    }

    /// The notify command of a step, stdout and stderr piped (not started).
    fn command(&self, args: &[&str], now: i64, vars: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(NOTIFY);
        cmd.args(args).current_dir(self.root());
        for v in CLEARED {
            cmd.env_remove(v);
        }
        cmd.env("DHASH_ROOT", self.root())
            .env("PATH", &self.bin)
            .env("DHASH_NOW", now.to_string());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd
    }

    fn alert(&self, level: &str, message: &str, now: i64) -> Run {
        self.run(
            &["--env", "staging", "--level", level, "--message", message],
            now,
            &[],
            None,
        )
        .ok()
    }

    fn state(&self) -> Value {
        let p = self.root().join(".dhash/staging/escalation.json");
        serde_json::from_str(&std::fs::read_to_string(p).expect("escalation state")).unwrap()
    }

    fn ledger(&self, kind: &str) -> Vec<Value> {
        std::fs::read_to_string(self.root().join(".dhash/staging/ledger.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["kind"] == kind)
            .collect()
    }

    /// An incident record as the monitor writes it (template of seed 004).
    fn incident(&self, id: &str) -> PathBuf {
        let dir = self.root().join("monitor_logs");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("{id}.md"));
        std::fs::write(&p, INCIDENT).unwrap();
        p
    }

    /// The monitor's `incident.created`, piped to notify as quick-deploy does.
    fn report_incident(&self, path: &Path, now: i64, vars: &[(&str, &str)]) -> Run {
        let ev = json!({"ts": "2027-01-15T08:00:00.000Z", "tool": "monitor_dhash", "env": "staging",
            "event": "incident.created", "level": "info", "msg": "incident record",
            "path": path.display().to_string()});
        self.run(&["--env", "staging"], now, vars, Some(&format!("{ev}\n")))
            .ok()
    }

    fn escalate(&self, now: i64) -> Run {
        self.run(&["escalate", "--env", "staging"], now, &[], None)
            .ok()
    }
}

/// Waits for a step and reads what it wrote.
fn finish(child: std::process::Child) -> Run {
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        lines,
    }
}

const INCIDENT: &str = "# Incident Report: Rollback 2027-01-15T08:00:00.000Z

## Summary
- **Environment:** staging
- **Release Tag:** v2-bad
- **Outcome:** Rolled back to the previous release; service restored
- **Watch page:** monitor_logs/watch_staging.html
- **Acknowledged:** [not yet]
- **Tracker:** [none]

## Timeline
- Issue detected: 2027-01-15T07:59:30.000Z

## Root Cause
[To be filled by engineering team]
";

#[test]
fn three_warnings_within_15_minutes_escalate_once_and_two_do_not() {
    let p = Project::new();
    for (i, at) in [0, 5 * MIN].into_iter().enumerate() {
        let r = p.alert("warning", &format!("queue high #{i}"), T0 + at);
        assert!(r.events("escalation.raised").is_empty(), "{}", r.stdout);
    }
    // Each step was its own process: the count lives on disk.
    assert_eq!(p.state()["alerts"].as_array().map(Vec::len), Some(2));
    let r = p.alert("warning", "queue high #2", T0 + 14 * MIN);
    let raised = r.events("escalation.raised");
    assert_eq!(raised.len(), 1, "{}", r.stdout);
    assert_eq!(raised[0]["rule"], "warnings");
    assert_eq!(
        (
            raised[0]["from"].as_u64(),
            raised[0]["level_number"].as_u64()
        ),
        (Some(1), Some(2))
    );
    assert_eq!(raised[0]["level_name"], "sre");
    assert_eq!(raised[0]["alerts"].as_array().map(Vec::len), Some(3));
    assert_eq!(p.state()["level"], 2);
    assert_eq!(p.ledger("escalation").len(), 1);
    // A 4th warning is not a second escalation.
    let r = p.alert("warning", "queue high #3", T0 + 15 * MIN);
    assert!(r.events("escalation.raised").is_empty(), "{}", r.stdout);

    // Two within 15 minutes, the third 16 minutes after the first: none.
    let q = Project::new();
    for (i, at) in [0, 10 * MIN, 16 * MIN].into_iter().enumerate() {
        let r = q.alert("warning", &format!("memory high #{i}"), T0 + at);
        assert!(r.events("escalation.raised").is_empty(), "{}", r.stdout);
    }
    assert_eq!(q.ledger("escalation").len(), 0);
}

#[test]
fn a_second_critical_escalates() {
    let p = Project::new();
    let r = p.alert("critical", "error rate 12 %", T0);
    assert!(r.events("escalation.raised").is_empty(), "{}", r.stdout);
    let r = p.alert("critical", "p95 5400 ms", T0 + 2 * MIN);
    let raised = r.events("escalation.raised");
    assert_eq!(raised.len(), 1, "{}", r.stdout);
    assert_eq!(raised[0]["rule"], "criticals");
    assert_eq!(raised[0]["level_number"], 2);
    assert_eq!(p.ledger("escalation")[0]["rule"], "criticals");
}

#[test]
fn an_unacknowledged_incident_escalates_at_each_deadline_and_an_ack_stops_it() {
    let p = Project::new();
    let path = p.incident("incident_staging_20270115T080000000Z");
    let r = p.report_incident(&path, T0, &[]);
    assert_eq!(r.events("escalation.opened").len(), 1, "{}", r.stdout);
    assert_eq!(
        p.escalate(T0 + 4 * MIN).events("escalation.checked")[0]["raised"],
        0
    );
    let r = p.escalate(T0 + 5 * MIN + 1);
    let raised = r.events("escalation.raised");
    assert_eq!(raised.len(), 1, "{}", r.stdout);
    assert_eq!(
        (
            raised[0]["rule"].as_str(),
            raised[0]["level_number"].as_u64()
        ),
        (Some("ack-deadline"), Some(2))
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("- **Escalation:** level 2 (sre: @sre, SRE on-call); next escalation at 2027-01-15T08:10:00.000Z"), "{text}");
    let r = p.escalate(T0 + 11 * MIN);
    assert_eq!(
        r.events("escalation.raised")[0]["level_number"],
        3,
        "{}",
        r.stdout
    );
    assert_eq!(
        p.escalate(T0 + 40 * MIN).events("escalation.raised").len(),
        0,
        "top reached"
    );
    assert_eq!(p.ledger("escalation").len(), 2);

    // Acknowledged at T+3 min: the deadline passes without an escalation.
    let q = Project::new();
    let path = q.incident("incident_staging_20270115T080000000Z");
    q.report_incident(&path, T0, &[]);
    let r = q
        .run(
            &[
                "ack",
                "--env",
                "staging",
                "--by",
                "alice",
                "--note",
                "looking at p95",
            ],
            T0 + 3 * MIN,
            &[],
            None,
        )
        .ok();
    let acked = r.events("escalation.acknowledged");
    assert_eq!(acked.len(), 1, "{}", r.stdout);
    assert_eq!(
        (acked[0]["by"].as_str(), acked[0]["incident"].as_str()),
        (Some("alice"), Some("incident_staging_20270115T080000000Z"))
    );
    assert_eq!(
        q.escalate(T0 + 6 * MIN).events("escalation.raised").len(),
        0
    );
    assert_eq!(
        q.escalate(T0 + 60 * MIN).events("escalation.raised").len(),
        0
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("- **Acknowledged:** by alice at 2027-01-15T08:03:00.000Z — looking at p95"),
        "{text}"
    );
    assert_eq!(q.ledger("acknowledgement")[0]["by"], "alice");
    // An unknown incident is refused, naming the known ones.
    let r = q.run(
        &[
            "ack",
            "--env",
            "staging",
            "--incident",
            "nope",
            "--by",
            "bob",
        ],
        T0,
        &[],
        None,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("incident_staging_20270115T080000000Z"),
        "{}",
        r.stderr
    );
}

/// The Events API v2 request schema (developer.pagerduty.com, "Send an
/// Alert Event" / "Acknowledge" / "Resolve").
fn assert_events_api_v2(body: &Value) {
    let o = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(o["routing_key"], ROUTING_KEY);
    let key = o["dedup_key"].as_str().expect("dedup_key");
    assert!(!key.is_empty() && key.chars().count() <= 255, "{key}");
    match o["event_action"].as_str() {
        Some("trigger") => {
            for k in o.keys() {
                assert!(
                    [
                        "routing_key",
                        "event_action",
                        "dedup_key",
                        "payload",
                        "images",
                        "links",
                        "client",
                        "client_url"
                    ]
                    .contains(&k.as_str()),
                    "{k}"
                );
            }
            let p = o["payload"].as_object().expect("payload");
            for k in p.keys() {
                assert!(
                    [
                        "summary",
                        "source",
                        "severity",
                        "timestamp",
                        "component",
                        "group",
                        "class",
                        "custom_details"
                    ]
                    .contains(&k.as_str()),
                    "{k}"
                );
            }
            let summary = p["summary"].as_str().expect("summary");
            assert!(!summary.is_empty() && summary.chars().count() <= 1024);
            assert!(p["source"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(
                ["critical", "error", "warning", "info"].contains(&p["severity"].as_str().unwrap())
            );
            chrono::DateTime::parse_from_rfc3339(p["timestamp"].as_str().unwrap())
                .expect("ISO 8601 timestamp");
            assert!(p["custom_details"].is_object());
        }
        Some("acknowledge") | Some("resolve") => {
            for k in o.keys() {
                assert!(
                    ["routing_key", "event_action", "dedup_key"].contains(&k.as_str()),
                    "{k}"
                );
            }
        }
        other => panic!("event_action {other:?}"),
    }
}

#[test]
fn pagerduty_and_opsgenie_get_the_documented_requests_with_one_stable_key() {
    let pd = Receiver::start(vec![
        Reply::status(500),
        Reply::json(202, r#"{"status":"success","message":"Event processed"}"#),
    ]);
    let og = Receiver::start(vec![Reply::json(
        202,
        r#"{"result":"Request will be processed"}"#,
    )]);
    let pd_url = pd.url_with("/v2/enqueue");
    let og_url = og.url();
    let vars = [
        ("PAGERDUTY_ROUTING_KEY", ROUTING_KEY),
        ("PAGERDUTY_EVENTS_URL", pd_url.as_str()),
        ("OPSGENIE_API_KEY", GENIE_KEY),
        ("OPSGENIE_API_URL", og_url.as_str()),
    ];
    let p = Project::new();
    // A critical alert: PagerDuty answers 500, then 202; the retry is the same event.
    p.run(
        &[
            "--env",
            "staging",
            "--level",
            "critical",
            "--message",
            "p95 5400 ms",
        ],
        T0,
        &vars,
        None,
    )
    .ok();
    let first = pd.requests();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].body, first[1].body, "a retry sends the same event");
    assert_eq!(first[0].json()["event_action"], "trigger");
    assert_events_api_v2(&first[0].json());

    // An incident escalates at its deadline (level 2 has pagerduty and opsgenie),
    // then is acknowledged and resolved: one key throughout.
    let path = p.incident("incident_staging_20270115T080000000Z");
    p.report_incident(&path, T0, &vars);
    p.run(&["escalate", "--env", "staging"], T0 + 6 * MIN, &vars, None)
        .ok();
    p.run(
        &["ack", "--env", "staging", "--by", "alice"],
        T0 + 7 * MIN,
        &vars,
        None,
    )
    .ok();
    p.run(
        &[
            "ack",
            "--env",
            "staging",
            "--incident",
            "incident_staging_20270115T080000000Z",
            "--by",
            "alice",
            "--resolve",
        ],
        T0 + 9 * MIN,
        &vars,
        None,
    )
    .ok();
    let later: Vec<Value> = pd.requests()[2..].iter().map(|r| r.json()).collect();
    let actions: Vec<&str> = later
        .iter()
        .map(|b| b["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["trigger", "acknowledge", "resolve"], "{later:?}");
    for b in &later {
        assert_events_api_v2(b);
        assert_eq!(
            b["dedup_key"],
            "dhash/staging/incident_staging_20270115T080000000Z"
        );
    }
    assert!(later[0]["payload"]["summary"]
        .as_str()
        .unwrap()
        .contains("Escalated to level 2 (sre)"));

    let og_reqs = og.requests();
    let paths: Vec<&str> = og_reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, [
        "/v2/alerts",
        "/v2/alerts/dhash%2Fstaging%2Fincident_staging_20270115T080000000Z/acknowledge?identifierType=alias",
        "/v2/alerts/dhash%2Fstaging%2Fincident_staging_20270115T080000000Z/close?identifierType=alias",
    ]);
    for r in &og_reqs {
        assert_eq!(
            r.header("authorization"),
            Some(format!("GenieKey {GENIE_KEY}").as_str())
        );
    }
    let create = og_reqs[0].json();
    assert_eq!(
        create["alias"],
        "dhash/staging/incident_staging_20270115T080000000Z"
    );
    assert_eq!(create["priority"], "P1");
    assert!(create["message"].as_str().unwrap().chars().count() <= 130);
    assert_eq!(og_reqs[1].json()["user"], "alice");

    // Neither key is written anywhere under the project.
    for f in walk(p.root()) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).to_string();
        assert!(
            !text.contains(ROUTING_KEY) && !text.contains(GENIE_KEY),
            "{} holds a key",
            f.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A `gh` that records its arguments; `issue create` fails when GH_FAIL is set.
fn gh_stand_in(p: &Project) -> PathBuf {
    let log = p.root().join("gh-args.log");
    let script = format!(
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> '{log}'; done\necho ---- >> '{log}'\n\
         case \"$1 $2\" in\n  'auth status') exit 0 ;;\n  'issue create')\n    \
         if [ -n \"$GH_FAIL\" ]; then echo 'error connecting to api.github.com' >&2; exit 1; fi\n    \
         echo 'https://github.com/acme/dhash/issues/42' ;;\nesac\n",
        log = log.display()
    );
    let gh = p.bin.join("gh");
    std::fs::write(&gh, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

#[test]
fn the_tracker_gets_the_incident_through_gh_and_a_tracker_down_leaves_it_complete_locally() {
    let p = Project::new();
    let log = gh_stand_in(&p);
    let path = p.incident("incident_staging_20270115T080000000Z");
    let r = p.report_incident(&path, T0, &[("DHASH_TRACKER_REPO", "acme/dhash")]);
    let tracked = r.events("incident.tracked");
    assert_eq!(tracked.len(), 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(tracked[0]["url"], "https://github.com/acme/dhash/issues/42");
    let args = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<Vec<&str>> = args
        .split("----\n")
        .filter(|c| !c.is_empty())
        .map(|c| c.lines().collect())
        .collect();
    assert_eq!(calls[0], ["auth", "status"]);
    let title = "Auto-rollback of dhash staging: incident_staging_20270115T080000000Z";
    let record = path.display().to_string();
    assert_eq!(
        calls[1],
        [
            "issue",
            "create",
            "--title",
            title,
            "--body-file",
            &record,
            "--repo",
            "acme/dhash"
        ]
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("- **Tracker:** https://github.com/acme/dhash/issues/42\n"),
        "{text}"
    );
    assert_eq!(text.matches("**Tracker:**").count(), 1);

    // The tracker down: reported, and the record is whole with the reason.
    let q = Project::new();
    gh_stand_in(&q);
    let path = q.incident("incident_staging_20270115T080000000Z");
    let r = q.report_incident(&path, T0, &[("GH_FAIL", "1")]);
    let failed = r.events("incident.tracker-failed");
    assert_eq!(failed.len(), 1, "{}", r.stdout);
    assert_eq!(failed[0]["level"], "warning");
    let text = std::fs::read_to_string(&path).unwrap();
    for line in INCIDENT
        .lines()
        .filter(|l| !l.starts_with("- **Acknowledged") && !l.starts_with("- **Tracker"))
    {
        assert!(text.contains(line), "{line:?} lost from\n{text}");
    }
    assert!(text.contains("- **Tracker:** [not opened: gh issue create failed: error connecting to api.github.com]"), "{text}");
    assert!(
        text.contains("- **Acknowledged:** [not yet: due by 2027-01-15T08:05:00.000Z]"),
        "{text}"
    );
}

#[test]
fn an_auto_rollback_reaches_every_configured_channel_whatever_the_routes() {
    let hook = Receiver::start(vec![Reply::status(204)]);
    let url = hook.url_with("/hooks/incident-bridge");
    let p = Project::new();
    // The routes send critical alerts to pagerduty only (not configured here).
    let violated = json!({"ts": "2027-01-15T08:00:00.000Z", "tool": "monitor_dhash", "env": "staging",
        "event": "gate.violated", "level": "critical", "msg": "p95 above threshold",
        "gate": "p95_hash_time", "action": "auto-rollback", "value": 5400.0});
    let alert = json!({"ts": "2027-01-15T08:00:01.000Z", "tool": "monitor_dhash", "env": "staging",
        "event": "gate.violated", "level": "critical", "msg": "memory above threshold",
        "gate": "memory_usage", "action": "alert", "value": 91.0});
    let r = p
        .run(
            &["--env", "staging"],
            T0,
            &[("WEBHOOK_URL", url.as_str())],
            Some(&format!("{violated}\n{alert}\n")),
        )
        .ok();
    let got: Vec<Value> = hook.requests().iter().map(|q| q.json()).collect();
    assert_eq!(
        got.len(),
        1,
        "only the auto-rollback goes beyond the routes: {}",
        r.stdout
    );
    assert_eq!(got[0]["fields"]["gate"], "p95_hash_time");
}

#[test]
fn without_gh_the_incident_goes_through_the_github_rest_api_with_the_token() {
    let api = Receiver::start(vec![Reply::json(
        201,
        r#"{"number":7,"html_url":"https://github.com/acme/dhash/issues/7"}"#,
    )]);
    let p = Project::new();
    let path = p.incident("incident_staging_20270115T080000000Z");
    let token = "ghp_TestToken0123456789abcdef";
    let api_url = api.url();
    let vars = [
        ("GH_TOKEN", token),
        ("DHASH_TRACKER_REPO", "acme/dhash"),
        ("GITHUB_API_URL", api_url.as_str()),
    ];
    let r = p.report_incident(&path, T0, &vars);
    assert_eq!(
        r.events("incident.tracked")[0]["via"],
        "github-rest",
        "{}",
        r.stdout
    );
    let req = &api.requests()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("POST", "/repos/acme/dhash/issues")
    );
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    let body = req.json();
    assert!(body["title"]
        .as_str()
        .unwrap()
        .contains("incident_staging_20270115T080000000Z"));
    assert!(
        body["body"].as_str().unwrap().contains("## Timeline"),
        "the record is the body"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("- **Tracker:** https://github.com/acme/dhash/issues/7\n"),
        "{text}"
    );
    assert!(!r.stdout.contains(token) && !r.stderr.contains(token));
}

// ---- What an on-call user meets when things go wrong (review of issue 19) ----

/// A monitor event piped to notify, as quick-deploy does.
fn monitor_event(event: &str, extra: Value) -> String {
    let mut ev = json!({"ts": "2027-01-15T08:00:00.000Z", "tool": "monitor_dhash", "env": "staging",
        "event": event, "level": "critical", "msg": event, "release": "v2-bad"});
    for (k, v) in extra.as_object().unwrap() {
        ev[k] = v.clone();
    }
    format!("{ev}\n")
}

#[test]
fn one_rollback_counts_as_one_critical_and_a_failed_rollback_escalates() {
    let p = Project::new();
    // One auto-rollback: the gate violated, then the rollback completed.
    let violated = monitor_event(
        "gate.violated",
        json!({"gate": "p95_hash_time", "action": "auto-rollback"}),
    );
    let done = monitor_event("rollback.completed", json!({}));
    let r = p
        .run(&["--env", "staging"], T0, &[], Some(&(violated + &done)))
        .ok();
    assert!(
        r.events("escalation.raised").is_empty(),
        "one rollback is one critical: level 1 verifies it (ack deadline), not level 2 at once\n{}",
        r.stdout
    );
    assert_eq!(p.state()["alerts"].as_array().unwrap().len(), 2);
    // Seed 004: "Rollback failed - ESCALATE IMMEDIATELY": a second situation.
    let failed = monitor_event("rollback.failed", json!({}));
    let r = p
        .run(&["--env", "staging"], T0 + MIN, &[], Some(&failed))
        .ok();
    let raised = r.events("escalation.raised");
    assert_eq!(raised.len(), 1, "{}", r.stdout);
    assert_eq!(raised[0]["rule"], "criticals");
    assert_eq!(raised[0]["counted"], 2, "{}", r.stdout);
    assert!(
        raised[0]["msg"]
            .as_str()
            .unwrap()
            .starts_with("2 critical incidents (3 alerts"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_corrupt_state_fails_notify_escalate_with_the_file_and_the_way_out_yet_alerts_go_out() {
    let p = Project::new();
    let state = p.root().join(".dhash/staging/escalation.json");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    // What a torn write would leave (write_atomic makes it impossible; a
    // disk or a hand edit still can).
    std::fs::write(&state, r#"{"version":1,"level":2,"alerts":[{"at":1"#).unwrap();
    let r = p.run(&["escalate", "--env", "staging"], T0, &[], None);
    assert_eq!(
        r.code, 1,
        "cron must see it fail\n{}\n{}",
        r.stdout, r.stderr
    );
    assert!(r.stderr.contains("escalation.json"), "{}", r.stderr);
    assert!(r.stderr.contains("move it aside"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    // The alert itself is still delivered (to the fallback, here).
    let r = p.alert("critical", "error rate 12 %", T0);
    assert!(
        r.stderr.contains("escalation state not updated"),
        "{}",
        r.stderr
    );
    // The way out works: moved aside, notify starts again.
    std::fs::rename(&state, state.with_extension("json.broken")).unwrap();
    p.escalate(T0);
    assert_eq!(p.state()["version"], 1);
}

#[test]
fn a_second_ack_keeps_the_first_and_an_unknown_incident_is_refused() {
    let p = Project::new();
    let r = p.run(
        &[
            "ack",
            "--env",
            "staging",
            "--incident",
            "nope",
            "--by",
            "alice",
        ],
        T0,
        &[],
        None,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no incident \"nope\""), "{}", r.stderr);
    let r = p.run(&["ack", "--env", "staging", "--by", " "], T0, &[], None);
    assert_eq!(r.code, 2, "an ack by nobody: {}", r.stderr);
    let rec = p.incident("incident_staging_20270115T080000000Z");
    p.report_incident(&rec, T0, &[]);
    let ack = |by: &str, at: i64| {
        p.run(
            &[
                "ack",
                "--env",
                "staging",
                "--incident",
                "incident_staging_20270115T080000000Z",
                "--by",
                by,
            ],
            at,
            &[],
            None,
        )
        .ok()
    };
    ack("alice", T0 + MIN);
    let r = ack("bob", T0 + 2 * MIN);
    assert!(
        r.stderr.contains("already acknowledged by alice"),
        "{}",
        r.stderr
    );
    let inc = &p.state()["incidents"]["incident_staging_20270115T080000000Z"];
    assert_eq!(inc["acked_by"], "alice");
    assert_eq!(p.ledger("acknowledgement").len(), 1);
    let text = std::fs::read_to_string(&rec).unwrap();
    assert!(
        text.contains("by alice") && !text.contains("by bob"),
        "{text}"
    );
}

#[test]
fn concurrent_escalate_and_ack_act_once_and_a_rerun_does_nothing() {
    let p = Project::new();
    let rec = p.incident("incident_staging_20270115T080000000Z");
    p.report_incident(&rec, T0, &[]);
    let at = T0 + 6 * MIN;
    let spawn = |args: &[&str]| {
        let mut c = p.command(args, at, &[]);
        c.stdin(Stdio::null());
        c.spawn().expect("spawn notify")
    };
    let kids: Vec<_> = (0..4)
        .map(|_| spawn(&["escalate", "--env", "staging"]))
        .chain([spawn(&["ack", "--env", "staging", "--by", "carol"])])
        .collect();
    let runs: Vec<Run> = kids.into_iter().map(|c| finish(c).ok()).collect();
    let raised: usize = runs
        .iter()
        .map(|r| r.events("escalation.raised").len())
        .sum();
    assert!(
        raised <= 1,
        "one deadline, at most one escalation: {raised}"
    );
    assert_eq!(p.ledger("escalation").len(), raised);
    assert_eq!(p.ledger("acknowledgement").len(), 1);
    let inc = &p.state()["incidents"]["incident_staging_20270115T080000000Z"];
    assert_eq!(inc["acked_by"], "carol");
    assert_eq!(inc["level"], 1 + raised as u64);
    // The record has both writers' lines (neither wrote back a stale copy).
    let text = std::fs::read_to_string(&rec).unwrap();
    assert!(text.contains("- **Acknowledged:** by carol"), "{text}");
    assert!(text.contains("- **Escalation:** level"), "{text}");
    // A rerun (cron's next minute, much later) acts on nothing: acked.
    let r = p.escalate(T0 + 30 * MIN);
    assert!(r.events("escalation.raised").is_empty(), "{}", r.stdout);
    assert_eq!(p.ledger("escalation").len(), raised);
}

#[test]
fn concurrent_escalates_raise_a_passed_deadline_exactly_once() {
    let p = Project::new();
    let rec = p.incident("incident_staging_20270115T080000000Z");
    p.report_incident(&rec, T0, &[]);
    let kids: Vec<_> = (0..4)
        .map(|_| {
            let mut c = p.command(&["escalate", "--env", "staging"], T0 + 6 * MIN, &[]);
            c.stdin(Stdio::null());
            c.spawn().expect("spawn notify")
        })
        .collect();
    let raised: usize = kids
        .into_iter()
        .map(|c| finish(c).ok().events("escalation.raised").len())
        .sum();
    assert_eq!(raised, 1);
    assert_eq!(p.ledger("escalation").len(), 1);
    assert!(p
        .escalate(T0 + 6 * MIN)
        .events("escalation.raised")
        .is_empty());
}

#[test]
fn a_garbage_clock_is_refused_by_ack_and_escalate() {
    let p = Project::new();
    let r = p.run(
        &["escalate", "--env", "staging"],
        T0,
        &[("DHASH_NOW", "tomorrow-ish")],
        None,
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("DHASH_NOW=\"tomorrow-ish\""),
        "{}",
        r.stderr
    );
}

#[test]
fn a_hanging_gh_is_cut_at_the_deadline_and_the_record_stays_whole() {
    let p = Project::new();
    let topo = p.root().join("environments.json");
    let mut t: Value = serde_json::from_str(&std::fs::read_to_string(&topo).unwrap()).unwrap();
    t["environments"]["staging"]["notifications"]["timeout"] = json!("1s");
    std::fs::write(&topo, t.to_string()).unwrap();
    // Logged in, but `issue create` never answers (a sh that waits on a
    // child: killing gh leaves the child holding the pipes).
    let gh = p.bin.join("gh");
    std::fs::write(
        &gh,
        "#!/bin/sh\ncase \"$1 $2\" in\n  'auth status') exit 0 ;;\n  'issue create') sleep 20 ;;\nesac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = p.incident("incident_staging_20270115T080000000Z");
    let started = std::time::Instant::now();
    let r = p.report_incident(
        &path,
        T0,
        &[("PATH", &format!("{}:/bin:/usr/bin", p.bin.display()))],
    );
    assert!(
        started.elapsed().as_secs() < 10,
        "not cut: {:?}",
        started.elapsed()
    );
    let failed = r.events("incident.tracker-failed");
    assert_eq!(failed.len(), 1, "{}", r.stdout);
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("no answer within"),
        "{}",
        r.stdout
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("- **Tracker:** [not opened:"), "{text}");
    assert!(
        text.contains("- **Acknowledged:** [not yet: due by"),
        "{text}"
    );
}

#[test]
fn a_gh_that_leaves_a_child_holding_its_output_does_not_hold_notify() {
    let p = Project::new();
    let gh = p.bin.join("gh");
    // Exits at once with the link, but a child it started keeps stdout open.
    std::fs::write(
        &gh,
        "#!/bin/sh\ncase \"$1 $2\" in\n  'auth status') exit 0 ;;\n  'issue create') sleep 20 &\n    echo 'https://github.com/acme/dhash/issues/7' ;;\nesac\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&gh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = p.incident("incident_staging_20270115T080000000Z");
    let started = std::time::Instant::now();
    let r = p.report_incident(
        &path,
        T0,
        &[("PATH", &format!("{}:/bin:/usr/bin", p.bin.display()))],
    );
    assert!(
        started.elapsed().as_secs() < 4,
        "held: {:?}",
        started.elapsed()
    );
    assert_eq!(r.events("incident.tracked").len(), 1, "{}", r.stdout);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("- **Tracker:** https://github.com/acme/dhash/issues/7\n"),
        "{text}"
    );
}

#[test]
fn a_rerun_over_the_same_events_does_not_escalate_again() {
    let p = Project::new();
    let events = monitor_event(
        "gate.violated",
        json!({"gate": "error_rate", "action": "alert"}),
    ) + &monitor_event(
        "gate.violated",
        json!({"gate": "memory_usage", "action": "alert"}),
    );
    let r = p.run(&["--env", "staging"], T0, &[], Some(&events)).ok();
    assert_eq!(r.events("escalation.raised").len(), 1, "{}", r.stdout);
    // The same events file piped again once the quiet period is over (the
    // quiet period keeps the real clock: --no-dedup stands for its end).
    let r = p
        .run(
            &["--env", "staging", "--no-dedup"],
            T0 + 11 * MIN,
            &[],
            Some(&events),
        )
        .ok();
    assert!(r.events("escalation.raised").is_empty(), "{}", r.stdout);
    assert_eq!(p.state()["level"], 2);
    assert_eq!(p.ledger("escalation").len(), 1);
}

/// The escalation's notices that reached the Slack stand-in.
fn escalation_notices(hook: &Receiver) -> usize {
    hook.requests()
        .iter()
        .filter(|q| q.body_text().contains("Escalated to level 2"))
        .count()
}

#[test]
fn a_kill_between_saving_an_escalation_and_sending_it_loses_no_notice_and_sends_it_once() {
    let hook = Receiver::start(vec![Reply::text(200, "ok")]);
    let url = hook.url_with("/services/T0/B0/x");
    let slack = [("SLACK_WEBHOOK_URL", url.as_str())];
    let crash = [
        ("SLACK_WEBHOOK_URL", url.as_str()),
        ("DHASH_TEST_CRASH_AT", "notify-escalation-saved"),
    ];
    let warn = |p: &Project, i: i64, vars: &[(&str, &str)]| {
        let msg = format!("queue high #{i}");
        let args = ["--env", "staging", "--level", "warning", "--message", &msg];
        p.run(&args, T0 + i * MIN, vars, None)
    };
    let p = Project::new();
    warn(&p, 0, &slack).ok();
    warn(&p, 5, &slack).ok();
    // The 3rd warning escalates; the process dies after the save, before the send.
    let r = warn(&p, 10, &crash);
    assert_ne!(r.code, 0, "the crash point killed it: {}", r.stdout);
    assert_eq!(escalation_notices(&hook), 0, "killed before the send");
    let s = p.state();
    assert_eq!(s["level"], 2);
    assert_eq!(s["outbox"].as_array().map(Vec::len), Some(1), "{s}");
    assert_eq!(s["outbox"][0]["raise"]["rule"], "warnings");

    // The next run (here the timer's `notify escalate`) sends it, once.
    let r = p
        .run(
            &["escalate", "--env", "staging"],
            T0 + 11 * MIN,
            &slack,
            None,
        )
        .ok();
    assert_eq!(escalation_notices(&hook), 1, "{}", r.stdout);
    let raised = r.events("escalation.raised");
    assert_eq!(raised.len(), 1, "{}", r.stdout);
    assert_eq!(raised[0]["recovered"], true);
    assert_eq!(r.events("escalation.checked")[0]["recovered"], 1);
    assert_eq!(raised[0]["level_number"], 2);
    assert!(p.state().get("outbox").is_none(), "marked sent");
    // A second run (and an ack) sends nothing more.
    p.run(
        &["escalate", "--env", "staging"],
        T0 + 12 * MIN,
        &slack,
        None,
    )
    .ok();
    p.run(
        &["ack", "--env", "staging", "--by", "alice"],
        T0 + 13 * MIN,
        &slack,
        None,
    )
    .ok();
    assert_eq!(escalation_notices(&hook), 1);
    assert_eq!(p.state()["level"], 1, "the ack brought it back");

    // Without a kill, the raising run sends its notice once and a later run
    // has nothing left to send.
    let q = Project::new();
    for i in [0, 5] {
        warn(&q, i, &slack).ok();
    }
    let before = escalation_notices(&hook);
    let r = warn(&q, 10, &slack).ok();
    assert_eq!(r.events("escalation.raised")[0]["recovered"], false);
    q.run(
        &["escalate", "--env", "staging"],
        T0 + 11 * MIN,
        &slack,
        None,
    )
    .ok();
    assert_eq!(escalation_notices(&hook) - before, 1);
    assert!(q.state().get("outbox").is_none());
}

#[test]
fn the_pagerduty_routing_key_is_hidden_even_before_the_channel_is_used() {
    let p = Project::new();
    let vars = [
        ("PAGERDUTY_ROUTING_KEY", ROUTING_KEY),
        ("PAGERDUTY_EVENTS_URL", "http://127.0.0.1:9/v2/enqueue"),
    ];
    let mut out = String::new();
    let msg = format!("w1 key {ROUTING_KEY}");
    let r = p
        .run(
            &["--env", "staging", "--level", "warning", "--message", &msg],
            T0,
            &vars,
            None,
        )
        .ok();
    out.push_str(&r.stdout);
    out.push_str(&r.stderr);
    let r = p.run(
        &[
            "ack",
            "--env",
            "staging",
            "--by",
            "alice",
            "--note",
            ROUTING_KEY,
            "--resolve",
        ],
        T0 + MIN,
        &vars,
        None,
    );
    out.push_str(&r.stdout);
    out.push_str(&r.stderr);
    assert!(out.contains("[REDACTED]"), "{out}");
    assert!(!out.contains(ROUTING_KEY), "{out}");
    for f in walk(p.root()) {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).to_string();
        assert!(!text.contains(ROUTING_KEY), "{} holds the key", f.display());
    }
}

#[test]
fn only_an_incident_record_of_the_environment_is_put_on_the_clock_and_rewritten() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    let victim = p.root().join("victim.conf");
    std::fs::write(&victim, "important_setting = 1\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let logs = p.root().join("monitor_logs");
    std::fs::create_dir_all(&logs).unwrap();
    let link = logs.join("incident_staging_20270115T070000000Z.md");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let other_env = p.incident("incident_production_20270115T070000000Z");
    let outside = p.root().join("incident_staging_20270115T060000000Z.md");
    std::fs::write(&outside, INCIDENT).unwrap();
    for bad in [victim.clone(), link, other_env, outside.clone()] {
        let r = p.report_incident(&bad, T0, &[]);
        assert!(r.events("escalation.opened").is_empty(), "{}", r.stdout);
        assert_eq!(r.events("incident.rejected").len(), 1, "{}", r.stdout);
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "important_setting = 1\n"
    );
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), INCIDENT);
    assert!(p.state()["incidents"]
        .as_object()
        .is_none_or(|m| m.is_empty()));

    // A damaged escalation.json naming another file: escalating does not rewrite it.
    let mut s = p.state();
    s["incidents"] = json!({"x": {"id": "x", "path": victim.display().to_string(),
        "opened_at": "2027-01-15T08:00:00.000Z", "level": 1, "deadline": 0, "key": "k"}});
    std::fs::write(
        p.root().join(".dhash/staging/escalation.json"),
        s.to_string(),
    )
    .unwrap();
    p.escalate(T0);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "important_setting = 1\n"
    );

    // A real record keeps its mode when notify writes its lines.
    let good = p.incident("incident_staging_20270115T080000000Z");
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = p.report_incident(&good, T0, &[]);
    assert_eq!(r.events("escalation.opened").len(), 1, "{}", r.stdout);
    let text = std::fs::read_to_string(&good).unwrap();
    assert!(text.contains("- **Acknowledged:** [not yet"), "{text}");
    let mode = std::fs::metadata(&good).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_damaged_level_neither_panics_nor_escalates_downwards() {
    for level in [u64::from(u32::MAX), 5] {
        let p = Project::new();
        let state = p.root().join(".dhash/staging/escalation.json");
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        std::fs::write(&state, json!({"version": 1, "level": level}).to_string()).unwrap();
        let mut raised = Vec::new();
        for i in 0..3 {
            let r = p.alert("warning", &format!("w{i}"), T0 + i * MIN);
            assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
            raised.extend(r.events("escalation.raised").into_iter().cloned());
        }
        assert_eq!(raised.len(), 1, "level {level}: {raised:?}");
        let (from, to) = (
            raised[0]["from"].as_u64().unwrap(),
            raised[0]["level_number"].as_u64().unwrap(),
        );
        assert!(from <= to && to <= 3, "level {level}: {from} -> {to}");
    }
}

#[test]
fn a_state_that_is_not_an_object_fails_notify_escalate() {
    for text in ["[]", "[5]", "5", "null"] {
        let p = Project::new();
        let state = p.root().join(".dhash/staging/escalation.json");
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        std::fs::write(&state, text).unwrap();
        let r = p.run(&["escalate", "--env", "staging"], T0, &[], None);
        assert_eq!(r.code, 1, "{text}\n{}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("move it aside"), "{}", r.stderr);
        assert_eq!(std::fs::read_to_string(&state).unwrap(), text);
    }
}

#[test]
fn a_resolve_after_another_ack_keeps_the_first_ack_and_records_the_resolution() {
    let p = Project::new();
    let id = "incident_staging_20270115T080000000Z";
    let rec = p.incident(id);
    p.report_incident(&rec, T0, &[]);
    let ack = |args: &[&str], at: i64| {
        let mut a = vec!["ack", "--env", "staging"];
        a.extend_from_slice(args);
        p.run(&a, at, &[], None).ok()
    };
    ack(&["--by", "alice", "--note", "first on it"], T0 + MIN);
    let r = ack(
        &[
            "--incident",
            id,
            "--by",
            "mallory",
            "--note",
            "late",
            "--resolve",
        ],
        T0 + 2 * MIN,
    );
    assert!(
        r.events("escalation.acknowledged").is_empty(),
        "{}",
        r.stdout
    );
    let resolved = r.events("escalation.resolved");
    assert_eq!(resolved.len(), 1, "{}", r.stdout);
    assert_eq!(
        (
            resolved[0]["by"].as_str(),
            resolved[0]["acknowledged_by"].as_str()
        ),
        (Some("mallory"), Some("alice"))
    );
    let text = std::fs::read_to_string(&rec).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("- **Acknowledged:**"))
        .unwrap();
    assert!(
        line.contains("by alice at 2027-01-15T08:01:00.000Z — first on it")
            && line.contains("resolved by mallory at 2027-01-15T08:02:00.000Z — late"),
        "{line}"
    );
    assert_eq!(p.ledger("acknowledgement").len(), 1);
    assert_eq!(p.ledger("resolution").len(), 1);
    let inc = &p.state()["incidents"][id];
    assert_eq!(
        (inc["acked_by"].as_str(), inc["resolved"].as_bool()),
        (Some("alice"), Some(true))
    );
    // Resolving again changes nothing.
    let r = ack(&["--by", "bob", "--resolve"], T0 + 3 * MIN);
    assert!(
        r.stderr.contains("already acknowledged by alice"),
        "{}",
        r.stderr
    );
    assert_eq!(p.ledger("resolution").len(), 1);
}

#[test]
fn a_second_ack_without_incident_says_who_has_the_newest_incident() {
    let p = Project::new();
    let rec = p.incident("incident_staging_20270115T080000000Z");
    p.report_incident(&rec, T0, &[]);
    let ack = |by: &str, at: i64| {
        p.run(&["ack", "--env", "staging", "--by", by], at, &[], None)
            .ok()
    };
    ack("alice", T0 + MIN);
    let r = ack("bob", T0 + 2 * MIN);
    assert!(
        r.events("escalation.acknowledged").is_empty(),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr
            .contains("incident_staging_20270115T080000000Z was already acknowledged by alice"),
        "{}",
        r.stderr
    );
    assert_eq!(p.ledger("acknowledgement").len(), 1);

    // Escalated alerts (no incident open) are still acknowledged by a plain ack.
    for i in 0..3 {
        p.alert("warning", &format!("queue high #{i}"), T0 + (3 + i) * MIN);
    }
    assert_eq!(p.state()["level"], 2);
    let r = ack("carol", T0 + 7 * MIN);
    assert_eq!(r.events("escalation.acknowledged").len(), 1, "{}", r.stdout);
    assert_eq!(p.state()["level"], 1);
}

#[test]
fn a_kill_during_the_on_call_ack_leaves_it_to_the_next_run() {
    let pd = Receiver::start(vec![Reply::json(
        202,
        r#"{"status":"success","message":"Event processed"}"#,
    )]);
    let pd_url = pd.url_with("/v2/enqueue");
    let vars = [
        ("PAGERDUTY_ROUTING_KEY", ROUTING_KEY),
        ("PAGERDUTY_EVENTS_URL", pd_url.as_str()),
    ];
    let mut crash = vars.to_vec();
    crash.push(("DHASH_TEST_CRASH_AT", "notify-ack-saved"));
    let acks = || {
        pd.requests()
            .iter()
            .filter(|q| q.json()["event_action"] == "acknowledge")
            .count()
    };
    let p = Project::new();
    let rec = p.incident("incident_staging_20270115T080000000Z");
    p.report_incident(&rec, T0, &vars);
    let r = p.run(
        &["ack", "--env", "staging", "--by", "alice"],
        T0 + MIN,
        &crash,
        None,
    );
    assert_ne!(r.code, 0, "the crash point killed it: {}", r.stdout);
    assert_eq!(acks(), 0, "killed before the call");
    let s = p.state();
    assert_eq!(s["oncall_outbox"].as_array().map(Vec::len), Some(1), "{s}");

    // The timer's next `notify escalate` tells PagerDuty, once.
    let r = p
        .run(&["escalate", "--env", "staging"], T0 + 2 * MIN, &vars, None)
        .ok();
    assert_eq!(
        r.events("escalation.oncall-recovered").len(),
        1,
        "{}",
        r.stdout
    );
    assert_eq!(acks(), 1);
    let ack = pd
        .requests()
        .into_iter()
        .find(|q| q.json()["event_action"] == "acknowledge")
        .unwrap();
    assert_eq!(
        ack.json()["dedup_key"],
        "dhash/staging/incident_staging_20270115T080000000Z"
    );
    assert!(p.state().get("oncall_outbox").is_none(), "marked sent");
    p.run(&["escalate", "--env", "staging"], T0 + 3 * MIN, &vars, None)
        .ok();
    assert_eq!(acks(), 1);
}

#[test]
fn a_notice_claimed_by_a_reused_pid_is_still_sent() {
    let p = Project::new();
    for i in 0..2 {
        p.alert("warning", &format!("queue high #{i}"), T0 + i * MIN);
    }
    let crash = [("DHASH_TEST_CRASH_AT", "notify-escalation-saved")];
    let args = [
        "--env",
        "staging",
        "--level",
        "warning",
        "--message",
        "queue high #2",
    ];
    let r = p.run(&args, T0 + 2 * MIN, &crash, None);
    assert_ne!(r.code, 0, "the crash point killed it: {}", r.stdout);
    // After the crash its pid went to another process: this test's own,
    // which runs (the crashed notify's start time is kept beside the pid).
    let mut s = p.state();
    s["outbox"][0]["claimed_by"] = json!(std::process::id());
    std::fs::write(
        p.root().join(".dhash/staging/escalation.json"),
        s.to_string(),
    )
    .unwrap();
    let r = p.escalate(T0 + 3 * MIN);
    let raised = r.events("escalation.raised");
    assert_eq!(raised.len(), 1, "{}", r.stdout);
    assert_eq!(raised[0]["recovered"], true);
    assert!(p.state().get("outbox").is_none(), "marked sent");

    // Claimed by a process that does run (this test, with its own start
    // time): left to it, and said.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    s["outbox"][0]["claimed_start"] = json!(start);
    std::fs::write(
        p.root().join(".dhash/staging/escalation.json"),
        s.to_string(),
    )
    .unwrap();
    let r = p.escalate(T0 + 4 * MIN);
    assert!(r.events("escalation.raised").is_empty(), "{}", r.stdout);
    assert_eq!(r.events("escalation.checked")[0]["held"], 1, "{}", r.stdout);
}
