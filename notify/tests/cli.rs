//! End-to-end tests of `notify` and `deploy-notify`: the real binaries, a
//! scratch project, real loopback HTTP receivers (testkit::receiver) and a
//! real SMTP server (Python's aiosmtpd) on loopback.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::receiver::{Receiver, Reply};

const NOTIFY: &str = env!("CARGO_BIN_EXE_notify");
const DEPLOY_NOTIFY: &str = env!("CARGO_BIN_EXE_deploy-notify");
const MARKER: &str = "… [truncated]";

/// Every variable the tools read, removed from the child's environment so the
/// developer's own secrets never take part.
const ALL_VARS: &[&str] = &[
    "SLACK_WEBHOOK",
    "SLACK_WEBHOOK_URL",
    "TEAMS_WEBHOOK",
    "TEAMS_WEBHOOK_URL",
    "DISCORD_WEBHOOK_URL",
    "DISCORD_WEBHOOK",
    "WEBHOOK_URL",
    "EMAIL_TO",
    "EMAIL_FROM",
    "EMAIL_TRANSPORT",
    "EMAIL_SMTP_HOST",
    "EMAIL_SMTP_PORT",
    "EMAIL_SMTP_TLS",
    "EMAIL_USER",
    "EMAIL_PASSWORD",
    "EMAIL_SENDMAIL",
    "EMAIL_SMTP_PASSWORD",
    "SMTP_HOST",
    "SMTP_PORT",
    "SMTP_USER",
    "SMTP_PASSWORD",
    "DHASH_ROOT",
];

/// A scratch project with one environment, `staging`.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    /// `routes`: (channel, min_level); `timeout`: the whole-call bound.
    fn new(routes: &[(&str, &str)], timeout: &str) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let routes: Vec<Value> = routes
            .iter()
            .map(|(c, l)| json!({"channel": c, "min_level": l}))
            .collect();
        let topology = json!({
            "environments": {"staging": {
                "install_root": ".dhash/staging",
                "data_dir": ".dhash/staging/data",
                "database": ".dhash/staging/data/dhash.sqlite3",
                "service": {"kind": "local", "bind": "127.0.0.1:9"},
                "health_url": "http://127.0.0.1:9/health",
                "metrics_url": "http://127.0.0.1:9/metrics",
                "queue_url": "http://127.0.0.1:9/api/dhash/queue/status",
                "backup_dir": "backups",
                "log_dir": "monitor_logs",
                "notifications": {
                    "fallback_file": "monitor_logs/notification_fallback.jsonl",
                    "out_dir": "notifications_out",
                    "quiet_period": "10m",
                    "timeout": timeout,
                    "routes": routes
                }
            }}
        });
        std::fs::write(
            dir.path().join("environments.json"),
            serde_json::to_string_pretty(&topology).expect("json"),
        )
        .expect("write environments.json");
        Project { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn fallback_file(&self) -> PathBuf {
        self.root().join("monitor_logs/notification_fallback.jsonl")
    }

    fn fallback(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.fallback_file()) {
            Ok(t) => t
                .lines()
                .map(|l| serde_json::from_str(l).expect("fallback line is JSON"))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn out_copies(&self) -> Vec<Value> {
        let dir = self.root().join("notifications_out");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                assert!(
                    name.starts_with("notification_") && name.ends_with(".json"),
                    "unexpected file in out_dir: {name}"
                );
                serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
            })
            .collect()
    }

    fn run(&self, bin: &str, args: &[&str], vars: &[(&str, &str)], stdin: Option<&str>) -> Run {
        self.run_wrapped(&[], bin, args, vars, stdin)
    }

    /// `run`, with the tool started through `wrapper` (e.g. `/usr/bin/time`).
    fn run_wrapped(
        &self,
        wrapper: &[&str],
        bin: &str,
        args: &[&str],
        vars: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Run {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args).current_dir(self.root());
        for v in ALL_VARS {
            cmd.env_remove(v);
        }
        cmd.env("DHASH_ROOT", self.root());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().expect("spawn tool");
        if let Some(input) = stdin {
            let mut si = child.stdin.take().expect("stdin");
            // A tool that refuses before reading stdin (exit 2) closes it:
            // a broken pipe here is that, not a failure of the test.
            if let Err(e) = si.write_all(input.as_bytes()) {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
            }
        }
        let out = child.wait_with_output().expect("wait");
        let elapsed = start.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l}\n{stderr}"))
            })
            .collect();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr,
            lines,
            elapsed,
        }
    }

    fn notify(&self, args: &[&str], vars: &[(&str, &str)]) -> Run {
        self.run(NOTIFY, args, vars, None)
    }

    /// Every file written under the project, as text.
    fn all_files(&self) -> Vec<(PathBuf, String)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
            for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    out.push((p, String::from_utf8_lossy(&bytes).to_string()));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root(), &mut out);
        out
    }

    /// Nothing is lost: every notify.fallback event has its line in the
    /// fallback file, and every (notification, channel) that was attempted
    /// ended as notify.sent or notify.fallback.
    fn assert_nothing_lost(&self, runs: &[&Run]) {
        let lines = self.fallback();
        let mut fallback_events = 0;
        for r in runs {
            for ev in r.events("notify.fallback") {
                fallback_events += 1;
                assert!(
                    lines.iter().any(|l| l["channel"] == ev["channel"]
                        && l["title"] == ev["title"]
                        && l["reason"] == ev["reason"]
                        && l["dry_run"] == false),
                    "notify.fallback {ev} has no line in the fallback file {lines:?}"
                );
            }
            let done = r.events("notify.completed");
            assert_eq!(done.len(), 1, "one notify.completed per run: {}", r.stdout);
        }
        let real_lines = lines.iter().filter(|l| l["dry_run"] == false).count();
        assert_eq!(
            real_lines, fallback_events,
            "fallback lines vs events: {lines:?}"
        );
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    lines: Vec<Value>,
    elapsed: Duration,
}

impl Run {
    fn events(&self, name: &str) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["event"] == name).collect()
    }

    fn ok(&self) -> &Run {
        assert_eq!(
            self.code, 0,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    fn sent(&self, channel: &str) -> Vec<&Value> {
        self.events("notify.sent")
            .into_iter()
            .filter(|e| e["channel"] == channel)
            .collect()
    }
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

#[test]
fn slack_receives_text_and_blocks() {
    let rx = Receiver::start(vec![Reply::ok_text("ok")]);
    let p = Project::new(&[("slack", "info")], "4s");
    let url = rx.url_with("/services/T000/B000/XXXX");
    let r = p.notify(
        &[
            "--level",
            "warning",
            "--message",
            "Queue is growing",
            "--env",
            "staging",
        ],
        &[("SLACK_WEBHOOK", &url)],
    );
    r.ok();
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/services/T000/B000/XXXX");
    assert!(req
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let body = req.json();
    let t = text(&body["text"], "text");
    assert!(
        t.contains("[WARNING]") && t.contains("Queue is growing"),
        "{t}"
    );
    let blocks = body["blocks"].as_array().expect("blocks");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert!(text(&blocks[0]["text"]["text"], "header").contains("dhash staging: warning"));
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert_eq!(blocks[1]["text"]["text"], "Queue is growing");
    let fields = blocks[2]["fields"].as_array().expect("fields");
    assert_eq!(fields[0]["text"], "*Environment*\nstaging");
    assert_eq!(fields[1]["text"], "*Level*\nWARNING");
    assert_eq!(blocks[3]["type"], "context");

    let sent = r.sent("slack");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["attempts"], 1);
    assert_eq!(sent[0]["status"], 200);
    assert_eq!(sent[0]["tool"], "notify");
    assert_eq!(sent[0]["env"], "staging");
    assert!(p.fallback().is_empty());
    assert!(p.out_copies().is_empty(), "no audit copy when delivered");
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn teams_receives_an_adaptive_card_and_202_is_success() {
    let rx = Receiver::start(vec![Reply::status(202)]);
    let p = Project::new(&[("teams", "warning")], "4s");
    let r = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "p95 above 2000 ms",
            "--title",
            "Gate violated",
            "--field",
            "gate=p95_hash_time",
            "--env",
            "staging",
        ],
        &[(
            "TEAMS_WEBHOOK_URL",
            &rx.url_with("/workflows/abc/triggers/manual/run"),
        )],
    );
    r.ok();
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    let body = reqs[0].json();
    assert_eq!(body["type"], "message");
    let atts = body["attachments"].as_array().expect("attachments");
    assert_eq!(atts.len(), 1);
    assert_eq!(
        atts[0]["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &atts[0]["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    let version: f64 = text(&card["version"], "version").parse().expect("version");
    assert!(version >= 1.4, "Adaptive Card {version}");
    let body_items = card["body"].as_array().expect("card body");
    assert_eq!(body_items[0]["type"], "TextBlock");
    assert!(text(&body_items[0]["text"], "title").contains("Gate violated"));
    assert_eq!(body_items[0]["color"], "Attention");
    assert_eq!(body_items[1]["text"], "p95 above 2000 ms");
    assert_eq!(body_items[1]["wrap"], true);
    let facts = body_items[2]["facts"].as_array().expect("facts");
    assert!(facts.contains(&json!({"title": "gate", "value": "p95_hash_time"})));
    assert!(facts.contains(&json!({"title": "Environment", "value": "staging"})));
    let raw = reqs[0].body_text();
    for retired in ["MessageCard", "@type", "themeColor", "sections"] {
        assert!(
            !raw.contains(retired),
            "retired connector field {retired} in {raw}"
        );
    }
    let sent = r.sent("teams");
    assert_eq!(sent[0]["status"], 202);
    assert_eq!(sent[0]["attempts"], 1);
    assert!(p.fallback().is_empty());
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn discord_embed_is_truncated_to_its_limits() {
    let rx = Receiver::start(vec![Reply::status(204)]);
    let p = Project::new(&[("discord", "info")], "4s");
    let message = "m".repeat(5000);
    let title = "T".repeat(2500);
    let field = format!("detail={}", "d".repeat(3000));
    let r = p.notify(
        &[
            "--level",
            "warning",
            "--message",
            &message,
            "--title",
            &title,
            "--field",
            &field,
            "--env",
            "staging",
        ],
        &[("DISCORD_WEBHOOK_URL", &rx.url_with("/api/webhooks/123/tok"))],
    );
    r.ok();
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "sent, not rejected");
    let body = reqs[0].json();
    let content = text(&body["content"], "content");
    assert!(utf16_len(content) <= 2000, "content {}", utf16_len(content));
    // The title was cut (to 1000 chars, before any channel) and says so.
    assert!(content.contains(MARKER), "{content}");
    let embeds = body["embeds"].as_array().expect("embeds");
    assert_eq!(embeds.len(), 1);
    let e = &embeds[0];
    let etitle = text(&e["title"], "title");
    assert!(
        utf16_len(etitle) <= 256 && etitle.ends_with(MARKER),
        "title {}",
        utf16_len(etitle)
    );
    let desc = text(&e["description"], "description");
    assert!(utf16_len(desc) <= 4096, "description {}", utf16_len(desc));
    assert!(desc.ends_with(MARKER) && desc.starts_with("mmmm"));
    let mut total = utf16_len(etitle) + utf16_len(desc);
    let fields = e["fields"].as_array().expect("fields");
    let mut saw_detail = false;
    for f in fields {
        let v = text(&f["value"], "field value");
        let n = text(&f["name"], "field name");
        assert!(utf16_len(v) <= 1024 && utf16_len(n) <= 256);
        if n == "detail" {
            saw_detail = true;
            assert!(v.ends_with(MARKER));
        }
        total += utf16_len(v) + utf16_len(n);
    }
    total += utf16_len(text(&e["footer"]["text"], "footer"));
    assert!(total <= 6000, "embed total {total}");
    assert!(saw_detail || fields.len() >= 2, "fields {fields:?}");
    assert_eq!(e["color"], 0xF1C40F);
    assert_eq!(body["allowed_mentions"], json!({"parse": []}));
    assert_eq!(r.sent("discord")[0]["status"], 204);
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn generic_webhook_receives_the_notification_json() {
    let rx = Receiver::start(vec![Reply::json(200, r#"{"ok":true}"#)]);
    let p = Project::new(&[("webhook", "info")], "4s");
    let r = p.notify(
        &[
            "--level",
            "info",
            "--message",
            "Pre-deployment test",
            "--field",
            "ticket=OPS-1",
            "--env",
            "staging",
        ],
        &[("WEBHOOK_URL", &rx.url_with("/hook"))],
    );
    r.ok();
    let body = rx.requests()[0].json();
    assert_eq!(body["source"], "dhash-notify");
    assert_eq!(body["env"], "staging");
    assert_eq!(body["level"], "info");
    assert_eq!(body["title"], "dhash staging: info");
    assert_eq!(body["message"], "Pre-deployment test");
    assert_eq!(body["fields"]["ticket"], "OPS-1");
    assert_eq!(body["fields"]["source"], "notify");
    assert!(text(&body["dedup_key"], "dedup_key").starts_with("staging|message:"));
    assert!(text(&body["ts"], "ts").ends_with('Z'));
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn server_errors_are_retried_until_accepted() {
    let rx = Receiver::start(vec![
        Reply::status(500),
        Reply::status(500),
        Reply::ok_text("ok"),
    ]);
    let p = Project::new(&[("slack", "info")], "6s");
    let r = p.notify(
        &[
            "--level",
            "warning",
            "--message",
            "flaky receiver",
            "--env",
            "staging",
        ],
        &[("SLACK_WEBHOOK_URL", &rx.url_with("/services/T1/B1/flaky"))],
    );
    r.ok();
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].body, reqs[2].body, "the same payload each attempt");
    assert!(
        reqs[1].at - reqs[0].at >= Duration::from_millis(250),
        "backoff"
    );
    let sent = r.sent("slack");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["attempts"], 3);
    assert_eq!(sent[0]["status"], 200);
    assert!(r.events("notify.fallback").is_empty());
    assert!(p.fallback().is_empty());
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn rate_limit_retry_after_is_honoured() {
    let rx = Receiver::start(vec![
        Reply::json(
            429,
            r#"{"message":"You are being rate limited.","retry_after":1.2,"global":false}"#,
        ),
        Reply::status(204),
    ]);
    let p = Project::new(&[("discord", "info")], "6s");
    let r = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "rate limited",
            "--env",
            "staging",
        ],
        &[("DISCORD_WEBHOOK_URL", &rx.url_with("/api/webhooks/9/rl"))],
    );
    r.ok();
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1200),
        "retried after {gap:?}, retry_after was 1.2s"
    );
    let sent = r.sent("discord");
    assert_eq!(sent[0]["attempts"], 2);
    assert!(p.fallback().is_empty());
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn a_receiver_that_never_answers_cannot_stall_the_caller() {
    let hang = Receiver::start(vec![Reply::hang()]);
    let ok = Receiver::start(vec![Reply::ok_text("ok")]);
    let p = Project::new(&[("webhook", "info"), ("slack", "info")], "2s");
    let r = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "dead webhook",
            "--env",
            "staging",
        ],
        &[
            ("WEBHOOK_URL", &hang.url_with("/never")),
            ("SLACK_WEBHOOK", &ok.url_with("/services/a/b/c")),
        ],
    );
    r.ok();
    assert!(
        r.elapsed < Duration::from_millis(4000),
        "blocked {:?} with a 2s notification timeout",
        r.elapsed
    );
    assert!(!hang.requests().is_empty());
    assert_eq!(ok.requests().len(), 1, "other channels are not held up");
    assert_eq!(r.sent("slack").len(), 1);
    let fb = r.events("notify.fallback");
    assert_eq!(fb.len(), 1);
    assert_eq!(fb[0]["channel"], "webhook");
    let lines = p.fallback();
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert_eq!(l["channel"], "webhook");
    assert_eq!(l["env"], "staging");
    assert_eq!(l["level"], "critical");
    assert_eq!(l["message"], "dead webhook");
    assert_eq!(l["dry_run"], false);
    assert!(l["attempts"].as_u64().unwrap() >= 1);
    let reason = text(&l["reason"], "reason");
    assert!(
        reason.contains("timed out") || reason.contains("deadline") || reason.contains("timeout"),
        "{reason}"
    );
    for k in ["ts", "title"] {
        assert!(l.get(k).is_some(), "fallback line lacks {k}: {l}");
    }
    let copies = p.out_copies();
    assert_eq!(copies.len(), 1, "one audit copy in notifications_out/");
    let deliveries = copies[0]["deliveries"].as_array().expect("deliveries");
    assert!(deliveries
        .iter()
        .any(|d| d["channel"] == "webhook" && d["status"] == "fallback"));
    assert!(deliveries
        .iter()
        .any(|d| d["channel"] == "slack" && d["status"] == "sent"));
    assert!(r.stderr.contains("fell back"), "{}", r.stderr);
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn client_errors_are_not_retried() {
    let rx = Receiver::start(vec![Reply::text(400, "Bad payload")]);
    let p = Project::new(&[("teams", "info")], "4s");
    let r = p.notify(
        &[
            "--level",
            "warning",
            "--message",
            "rejected",
            "--env",
            "staging",
        ],
        &[("TEAMS_WEBHOOK", &rx.url_with("/workflows/x"))],
    );
    r.ok();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.requests().len(), 1, "a 4xx is permanent");
    let lines = p.fallback();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["channel"], "teams");
    assert_eq!(lines[0]["attempts"], 1);
    assert_eq!(lines[0]["status"], 400);
    let reason = text(&lines[0]["reason"], "reason");
    assert!(
        reason.contains("HTTP 400") && reason.contains("Bad payload"),
        "{reason}"
    );
    assert_eq!(p.out_copies().len(), 1);
    // Seed 002's audit trail, notifications/fallback/, is the same file.
    let seed_002 = p
        .root()
        .join("notifications/fallback/notification_fallback.jsonl");
    assert!(std::fs::symlink_metadata(&seed_002)
        .expect("notifications/fallback/ alias")
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(&seed_002).expect("read alias"),
        std::fs::read_to_string(p.fallback_file()).expect("read fallback")
    );
    p.assert_nothing_lost(&[&r]);
}

/// A real SMTP server (aiosmtpd) on a free loopback port, writing each
/// message and its envelope/auth into a folder outside the project.
struct Smtp {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

const SMTP_SERVER: &str = r#"
import asyncio, json, os, socket, sys
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

OUT = sys.argv[1]

class Handler:
    async def handle_DATA(self, server, session, envelope):
        n = len([f for f in os.listdir(OUT) if f.endswith('.json')])
        base = os.path.join(OUT, 'msg%04d' % n)
        with open(base + '.eml', 'wb') as f:
            f.write(envelope.original_content or envelope.content)
        auth = None
        if isinstance(session.auth_data, LoginPassword):
            auth = [session.auth_data.login.decode(), session.auth_data.password.decode()]
        meta = {'mail_from': envelope.mail_from, 'rcpt_tos': envelope.rcpt_tos, 'auth': auth}
        with open(base + '.tmp', 'w') as f:
            json.dump(meta, f)
        os.rename(base + '.tmp', base + '.json')
        return '250 Message accepted for delivery'

def authenticator(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=True, auth_data=auth_data)

async def main():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(('127.0.0.1', 0))
    sock.listen(16)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Handler(), hostname='localhost', authenticator=authenticator,
                     auth_require_tls=False), sock=sock)
    print(sock.getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"#;

impl Smtp {
    fn start() -> Smtp {
        let check = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .output()
            .expect("python3 is required for the SMTP test");
        assert!(
            check.status.success(),
            "the SMTP test needs Python's aiosmtpd: run `pip install aiosmtpd` ({})",
            String::from_utf8_lossy(&check.stderr).trim()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).expect("write script");
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).expect("mail dir");
        let mut child = Command::new("python3")
            .args(["-W", "ignore"])
            .arg(&script)
            .arg(&mail)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read port");
        let port = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("aiosmtpd did not start (printed {line:?})");
            }
        };
        Smtp { child, port, dir }
    }

    /// (raw message, envelope/auth) of each message received.
    fn messages(&self, n: usize) -> Vec<(String, Value)> {
        let mail = self.dir.path().join("mail");
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let mut metas: Vec<PathBuf> = std::fs::read_dir(&mail)
                .expect("mail dir")
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            if metas.len() >= n || Instant::now() > end {
                metas.sort();
                return metas
                    .iter()
                    .map(|m| {
                        let eml = std::fs::read_to_string(m.with_extension("eml")).expect("eml");
                        let meta = serde_json::from_str(&std::fs::read_to_string(m).expect("meta"))
                            .expect("meta json");
                        (eml, meta)
                    })
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn email_is_delivered_to_a_real_smtp_server() {
    let smtp = Smtp::start();
    let port = smtp.port.to_string();
    let p = Project::new(&[("email", "critical")], "6s");
    let vars = [
        ("EMAIL_TO", "ops@example.com, oncall@example.com"),
        ("EMAIL_FROM", "dhash-rollout@example.com"),
        ("EMAIL_SMTP_HOST", "127.0.0.1"),
        ("EMAIL_SMTP_PORT", port.as_str()),
        ("EMAIL_SMTP_TLS", "none"),
        ("EMAIL_USER", "mailer-account"),
        ("EMAIL_PASSWORD", "Sm7p-Pa55word-xyz"),
    ];
    let r = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "Auto-rollback executed",
            "--title",
            "Rollback on staging",
            "--env",
            "staging",
        ],
        &vars,
    );
    r.ok();
    let msgs = smtp.messages(1);
    assert_eq!(msgs.len(), 1, "{}", r.stderr);
    let (eml, meta) = &msgs[0];
    assert_eq!(meta["mail_from"], "dhash-rollout@example.com");
    assert_eq!(
        meta["rcpt_tos"],
        json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(meta["auth"], json!(["mailer-account", "Sm7p-Pa55word-xyz"]));
    assert!(
        eml.contains("Subject: [dhash][staging][CRITICAL] Rollback on staging"),
        "{eml}"
    );
    assert!(eml.contains("Auto-rollback executed"), "{eml}");
    assert!(eml.contains("Environment: staging"));
    let sent = r.sent("email");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["status"], 250);
    for out in [&r.stdout, &r.stderr] {
        assert!(!out.contains("Sm7p-Pa55word-xyz") && !out.contains("mailer-account"));
    }
    // Below the email route's min_level: not sent.
    let r2 = p.notify(
        &[
            "--level",
            "warning",
            "--message",
            "just a warning",
            "--env",
            "staging",
        ],
        &vars,
    );
    r2.ok();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(smtp.messages(1).len(), 1);
    p.assert_nothing_lost(&[&r, &r2]);
}

#[test]
fn email_through_a_local_sendmail() {
    let p = Project::new(&[("email", "info")], "4s");
    let spool = tempfile::tempdir().expect("tempdir");
    let script = spool.path().join("sendmail");
    let captured = spool.path().join("captured.eml");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"ARGS: $*\" > '{0}'\ncat >> '{0}'\n",
            captured.display()
        ),
    )
    .expect("script");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let r = p.notify(
        &[
            "--level",
            "info",
            "--message",
            "via sendmail",
            "--env",
            "staging",
        ],
        &[
            ("EMAIL_TRANSPORT", "sendmail"),
            ("EMAIL_SENDMAIL", script.to_str().unwrap()),
            ("EMAIL_TO", "ops@example.com"),
        ],
    );
    r.ok();
    let got = std::fs::read_to_string(&captured).expect("sendmail ran");
    assert!(
        got.contains("ops@example.com") && got.contains("via sendmail"),
        "{got}"
    );
    assert_eq!(r.sent("email").len(), 1);
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn the_same_alert_is_not_sent_twice_within_the_quiet_period() {
    let rx = Receiver::start(vec![Reply::status(200)]);
    let p = Project::new(&[("webhook", "info")], "4s");
    let url = rx.url_with("/dedup");
    let vars = [("WEBHOOK_URL", url.as_str())];
    let args = [
        "--level",
        "warning",
        "--message",
        "disk at 91%",
        "--env",
        "staging",
    ];
    let r1 = p.notify(&args, &vars);
    r1.ok();
    let r2 = p.notify(&args, &vars);
    r2.ok();
    assert_eq!(rx.requests().len(), 1, "second alert suppressed");
    let skipped = r2.events("notify.skipped");
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["reason"], "duplicate");
    assert_eq!(r2.events("notify.completed")[0]["deduplicated"], 1);
    let state =
        std::fs::read_to_string(p.root().join("monitor_logs/notify_state.json")).expect("state");
    assert!(!state.contains("disk at 91%"), "keys are hashed: {state}");

    let r3 = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "disk at 91%",
            "--env",
            "staging",
        ],
        &vars,
    );
    r3.ok();
    assert_eq!(rx.requests().len(), 2, "an escalation is another alert");
    let r4 = p.notify(&[&args[..], &["--no-dedup"]].concat(), &vars);
    r4.ok();
    let r5 = p.notify(&[&args[..], &["--type", "test"]].concat(), &vars);
    r5.ok();
    assert_eq!(
        rx.requests().len(),
        4,
        "--no-dedup and --type test always send"
    );
    p.assert_nothing_lost(&[&r1, &r2, &r3, &r4, &r5]);
}

fn event(event: &str, level: &str, extra: Value) -> String {
    let mut v = json!({"ts": "2026-11-23T09:00:00.000Z", "tool": "monitor_dhash", "env": "staging",
                       "event": event, "level": level, "msg": format!("{event} happened")});
    if let (Value::Object(m), Value::Object(x)) = (&mut v, extra) {
        m.extend(x);
    }
    v.to_string()
}

#[test]
fn stdin_events_are_forwarded_and_routed_by_level() {
    let slack = Receiver::start(vec![Reply::ok_text("ok")]);
    let teams = Receiver::start(vec![Reply::status(202)]);
    let hook = Receiver::start(vec![Reply::status(204)]);
    let p = Project::new(
        &[
            ("slack", "info"),
            ("teams", "critical"),
            ("webhook", "warning"),
            ("discord", "warning"),
        ],
        "4s",
    );
    let lines = [
        event("deploy.started", "info", json!({"release": "v2-aaaa0000"})),
        event("gate.evaluated", "info", json!({"gate": "p95_hash_time"})),
        event(
            "gate.violated",
            "critical",
            json!({"gate": "p95_hash_time", "value": 2500, "threshold": 2000}),
        ),
        event("memory.high", "warning", json!({"memory_percent": 88.5})),
        "this is not json".to_string(),
        event(
            "gate.violated",
            "critical",
            json!({"gate": "p95_hash_time", "value": 2600, "threshold": 2000}),
        ),
        event("notify.sent", "warning", json!({"channel": "slack"})),
        event("backup.failed", "error", json!({"reason": "disk full"})),
        r#"{"custom":"object without envelope"}"#.to_string(),
    ];
    let input = lines.join("\n") + "\n";
    let r = p.run(
        NOTIFY,
        &["--env", "staging"],
        &[
            ("SLACK_WEBHOOK_URL", &slack.url_with("/services/s")),
            ("TEAMS_WEBHOOK", &teams.url_with("/workflows/t")),
            ("WEBHOOK_URL", &hook.url_with("/h")),
        ],
        Some(&input),
    );
    r.ok();
    // deploy.started (milestone, info): slack; gate.violated (critical): all
    // three; memory.high (warning): slack + webhook; the repeated violation is
    // a duplicate; notify.* is never re-sent; backup.failed (error): all three.
    assert_eq!(slack.requests().len(), 4, "{}", r.stdout);
    assert_eq!(teams.requests().len(), 2);
    assert_eq!(hook.requests().len(), 3);
    let hook_events: Vec<String> = hook
        .requests()
        .iter()
        .map(|q| q.json()["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        hook_events,
        ["gate.violated", "memory.high", "backup.failed"]
    );
    let violated = &hook.requests()[0].json();
    assert_eq!(violated["title"], "gate.violated: p95_hash_time");
    assert_eq!(violated["fields"]["value"], 2500);
    assert_eq!(violated["level"], "critical");
    // Every well-formed upstream line is forwarded unchanged, in order.
    let forwarded: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| !l.contains("\"tool\":\"notify\""))
        .collect();
    let expected: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(String::as_str)
        .collect();
    assert_eq!(forwarded, expected);
    assert!(
        r.stderr.contains("line 5"),
        "malformed line reported: {}",
        r.stderr
    );
    assert_eq!(
        r.events("notify.skipped")
            .iter()
            .filter(|e| e["reason"] == "duplicate")
            .count(),
        1
    );
    // discord is routed but not configured: said once, not per event.
    let discord_skips: Vec<_> = r
        .events("notify.skipped")
        .into_iter()
        .filter(|e| e["channel"] == "discord")
        .collect();
    assert_eq!(discord_skips.len(), 1);
    assert_eq!(discord_skips[0]["level"], "debug");
    assert_eq!(
        r.stderr.matches("discord: skipped").count(),
        1,
        "{}",
        r.stderr
    );
    let done = &r.events("notify.completed")[0];
    assert_eq!(done["notifications"], 5);
    assert_eq!(done["sent"], 9);
    assert_eq!(done["deduplicated"], 1);
    p.assert_nothing_lost(&[&r]);

    // --events/--min-event-level change the selection.
    let r2 = p.run(
        NOTIFY,
        &[
            "--env",
            "staging",
            "--events",
            "none",
            "--min-event-level",
            "critical",
            "--no-dedup",
        ],
        &[("SLACK_WEBHOOK_URL", &slack.url_with("/services/s"))],
        Some(&input),
    );
    r2.ok();
    assert_eq!(
        slack.requests().len(),
        4 + 3,
        "only the critical/error events"
    );
}

#[test]
fn dry_run_sends_nothing_and_records_what_would_be_sent() {
    let rx = Receiver::start(vec![Reply::ok_text("ok")]);
    let p = Project::new(&[("slack", "info"), ("teams", "info")], "4s");
    let vars = [("SLACK_WEBHOOK", rx.url_with("/services/dry"))];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = p.run(
        DEPLOY_NOTIFY,
        &[
            "success",
            "--env",
            "staging",
            "--duration",
            "5m 30s",
            "--release",
            "v3-0123abcd",
            "--dry-run",
        ],
        &vars,
        None,
    );
    r.ok();
    let r2 = p.notify(
        &[
            "--type",
            "test",
            "--env",
            "staging",
            "--message",
            "Test message",
            "--dry-run",
        ],
        &vars,
    );
    r2.ok();
    assert!(rx.requests().is_empty(), "a dry run sends nothing");
    let lines = p.fallback();
    assert_eq!(
        lines.len(),
        4,
        "2 notifications x 2 routed channels: {lines:?}"
    );
    for l in &lines {
        assert_eq!(l["dry_run"], true);
        assert!(l.get("payload").is_some());
    }
    let slack_line = lines
        .iter()
        .find(|l| l["channel"] == "slack" && l["title"] == "Deploy succeeded: dhash staging")
        .expect("slack line");
    let msg = text(&slack_line["message"], "message");
    assert!(
        msg.contains("5m 30s") && msg.contains("v3-0123abcd"),
        "{msg}"
    );
    assert_eq!(slack_line["fields"]["duration"], "5m 30s");
    assert!(slack_line["payload"]["blocks"].is_array());
    let teams_line = lines
        .iter()
        .find(|l| l["channel"] == "teams")
        .expect("teams");
    assert!(text(&teams_line["reason"], "reason").contains("not configured"));
    let copies = p.out_copies();
    assert_eq!(copies.len(), 2, "one audit file per notification");
    assert!(copies.iter().all(|c| c["dry_run"] == true));
    assert_eq!(r.events("notify.recorded").len(), 2);
    assert_eq!(r2.events("notify.recorded").len(), 2);
    assert!(r.events("notify.sent").is_empty());
    let title = text(&r2.events("notify.recorded")[0]["title"], "title");
    assert!(title.contains("test notification"), "{title}");
}

#[test]
fn deploy_notify_phases_are_delivered() {
    let rx = Receiver::start(vec![Reply::status(200)]);
    let p = Project::new(&[("webhook", "info")], "4s");
    let url = rx.url_with("/deploys");
    for (phase, level) in [
        ("start", "info"),
        ("success", "info"),
        ("failure", "critical"),
        ("rollback", "critical"),
    ] {
        let r = p.run(
            DEPLOY_NOTIFY,
            &[
                phase,
                "--env",
                "staging",
                "--duration",
                "90",
                "--release",
                "v9-deadbeef",
            ],
            &[("WEBHOOK_URL", &url)],
            None,
        );
        r.ok();
        let body = rx.requests().last().unwrap().json();
        assert_eq!(body["level"], level, "{phase}");
        assert_eq!(body["fields"]["phase"], phase);
        assert_eq!(body["fields"]["release"], "v9-deadbeef");
        if phase != "start" {
            assert!(
                text(&body["message"], "message").contains("1m 30s"),
                "{body}"
            );
        }
        p.assert_nothing_lost(&[&r]);
    }
    assert_eq!(
        rx.requests().len(),
        4,
        "lifecycle messages are never deduplicated"
    );
}

#[test]
fn with_no_channel_configured_notifications_go_to_the_file() {
    let p = Project::new(&[("slack", "info"), ("teams", "warning")], "4s");
    let r = p.notify(
        &[
            "--level",
            "warning",
            "--message",
            "Test notification",
            "--env",
            "staging",
            "--verbose",
        ],
        &[("SLACK_WEBHOOK_URL", ""), ("TEAMS_WEBHOOK_URL", "")],
    );
    r.ok();
    let lines = p.fallback();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["channel"], "none");
    assert_eq!(lines[0]["message"], "Test notification");
    assert!(text(&lines[0]["reason"], "reason").contains("SLACK_WEBHOOK"));
    assert_eq!(p.out_copies().len(), 1);
    assert!(r.stderr.contains("slack: skipped") && r.stderr.contains("teams: skipped"));
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn an_unwritable_fallback_file_is_the_one_failure() {
    let p = Project::new(&[("slack", "info")], "4s");
    // A folder where the fallback file should be: appending must fail.
    std::fs::create_dir_all(p.fallback_file()).expect("mkdir");
    let r = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "lost?",
            "--env",
            "staging",
        ],
        &[],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("fallback file"), "{}", r.stderr);
    assert_eq!(r.events("notify.failed").len(), 1);
}

#[test]
fn secrets_never_reach_any_output_or_file() {
    let failing = Receiver::start(vec![Reply::text(500, "internal error")]);
    let rejecting = Receiver::start(vec![Reply::text(404, "no such workflow")]);
    let accepting = Receiver::start(vec![Reply::status(200)]);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let p = Project::new(
        &[
            ("slack", "info"),
            ("teams", "info"),
            ("discord", "info"),
            ("webhook", "info"),
            ("email", "info"),
        ],
        "3s",
    );
    let slack = failing.url_with("/services/TSECRETSLACK1/B0/tokSLACKsecret9");
    let teams = rejecting.url_with("/workflows/SECRETTEAMSsig77/run?sig=SECRETTEAMSquery");
    let discord = format!("http://127.0.0.1:{closed}/api/webhooks/1/SECRETDISCORDtok5");
    let webhook = accepting.url_with("/hook/SECRETGENERIC3");
    let closed_s = closed.to_string();
    let vars = [
        ("SLACK_WEBHOOK", slack.as_str()),
        ("TEAMS_WEBHOOK_URL", teams.as_str()),
        ("DISCORD_WEBHOOK_URL", discord.as_str()),
        ("WEBHOOK_URL", webhook.as_str()),
        ("EMAIL_TO", "ops@example.com"),
        ("EMAIL_SMTP_HOST", "127.0.0.1"),
        ("EMAIL_SMTP_PORT", closed_s.as_str()),
        ("EMAIL_SMTP_TLS", "none"),
        ("EMAIL_USER", "SecretMailUser42"),
        ("EMAIL_PASSWORD", "SecretMailPassw0rd!"),
    ];
    let secrets = [
        slack.as_str(),
        teams.as_str(),
        discord.as_str(),
        webhook.as_str(),
        "TSECRETSLACK1",
        "tokSLACKsecret9",
        "SECRETTEAMSsig77",
        "SECRETTEAMSquery",
        "SECRETDISCORDtok5",
        "SECRETGENERIC3",
        "SecretMailUser42",
        "SecretMailPassw0rd!",
    ];
    let input = [
        event("gate.violated", "critical", json!({"gate": "error_rate"})),
        event("deploy.started", "info", json!({})),
    ]
    .join("\n");
    let runs = vec![
        p.notify(
            &[
                "--level",
                "critical",
                "--message",
                "secret test",
                "--env",
                "staging",
                "--verbose",
            ],
            &vars,
        ),
        p.notify(
            &[
                "--level",
                "warning",
                "--message",
                "dry",
                "--env",
                "staging",
                "--dry-run",
                "--verbose",
            ],
            &vars,
        ),
        p.run(
            DEPLOY_NOTIFY,
            &[
                "failure",
                "--env",
                "staging",
                "--duration",
                "5m 30s",
                "--verbose",
            ],
            &vars,
            None,
        ),
        p.run(
            NOTIFY,
            &["--env", "staging", "--verbose"],
            &vars,
            Some(&input),
        ),
    ];
    for r in &runs {
        r.ok();
    }
    // The failures really happened (so their error texts were exercised).
    let lines = p.fallback();
    for ch in ["slack", "teams", "discord", "email"] {
        assert!(
            lines
                .iter()
                .any(|l| l["channel"] == ch && l["dry_run"] == false),
            "{ch} should have fallen back: {lines:?}"
        );
    }
    assert!(accepting.requests().len() >= 3, "the webhook delivered");
    assert!(!failing.requests().is_empty() && !rejecting.requests().is_empty());
    for r in &runs {
        for s in secrets {
            assert!(
                !r.stdout.contains(s),
                "secret {s:?} in stdout:\n{}",
                r.stdout
            );
            assert!(
                !r.stderr.contains(s),
                "secret {s:?} in stderr:\n{}",
                r.stderr
            );
        }
    }
    let files = p.all_files();
    assert!(
        files.len() >= 4,
        "fallback, state and audit copies: {files:?}"
    );
    for (path, content) in files {
        for s in secrets {
            assert!(!content.contains(s), "secret {s:?} in {}", path.display());
        }
    }
    p.assert_nothing_lost(&runs.iter().collect::<Vec<_>>());
}

#[test]
fn invalid_arguments_exit_2() {
    let p = Project::new(&[("slack", "info")], "4s");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            NOTIFY,
            vec!["--level", "loud", "--message", "x", "--env", "staging"],
        ),
        (NOTIFY, vec!["--message", "x", "--env", "nowhere"]),
        (
            NOTIFY,
            vec!["--message", "x", "--env", "staging", "--channel", "pager"],
        ),
        (
            NOTIFY,
            vec!["--message", "x", "--env", "staging", "--field", "novalue"],
        ),
        (
            DEPLOY_NOTIFY,
            vec!["success", "--env", "staging", "--duration", "soon"],
        ),
        (DEPLOY_NOTIFY, vec!["success", "--duration", "5m"]),
        (DEPLOY_NOTIFY, vec!["celebrate", "--env", "staging"]),
    ];
    for (bin, args) in cases {
        let r = p.run(bin, &args, &[], None);
        assert_eq!(
            r.code, 2,
            "{bin} {args:?}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        assert!(!r.stderr.trim().is_empty(), "{args:?}: says why");
    }
    // No --env: production, said on stderr; this project has no production.
    let r = p.run(NOTIFY, &["--level", "info", "--message", "x"], &[], None);
    assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("no --env given: using production"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("known: staging"), "{}", r.stderr);
    assert!(p.fallback().is_empty(), "nothing sent on a usage error");
}

#[test]
fn help_names_the_variables_and_exit_codes() {
    for bin in [NOTIFY, DEPLOY_NOTIFY] {
        let out = Command::new(bin).arg("--help").output().expect("help");
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for needle in [
            "SLACK_WEBHOOK_URL",
            "TEAMS_WEBHOOK_URL",
            "DISCORD_WEBHOOK_URL",
            "WEBHOOK_URL",
            "EMAIL_SMTP_HOST",
            "EMAIL_PASSWORD",
            "EMAIL_SMTP_TLS",
            "--dry-run",
            "--env",
            ".env.notifications",
            "exit 2",
            "local sendmail",
            "/usr/sbin and /usr/lib",
            "[truncated]",
            "kept once",
        ] {
            assert!(help.contains(needle), "{bin} --help lacks {needle}");
        }
        assert!(
            help.trim_end()
                .ends_with("another run holds the environment's lock"),
            "{help}"
        );
    }
}

#[test]
fn library_send_never_fails_and_reports() {
    // The monitor's way in: dhash_notify::send with its own emitter.
    let p = Project::new(&[("webhook", "info")], "2s");
    std::fs::create_dir_all(p.root().join("monitor_logs")).expect("mkdir");
    let project = gates_core::project::Project::open(p.root()).expect("project");
    // A caller that knows its project reads that project's secrets file (here
    // none); otherwise `send` finds the project itself, once.
    dhash_notify::dotenv::load(&project.root).expect("no .env.notifications");
    let env = project.env("staging").expect("env");
    let em = gates_core::Emitter::sink("monitor_dhash", "staging");
    let n = dhash_notify::Notification::new(
        gates_core::Level::Critical,
        "gate.violated",
        "p95 2500 ms",
    )
    .field("gate", "p95_hash_time")
    .dedup("gate.violated:p95_hash_time");
    let report = dhash_notify::send(
        env,
        &n,
        &dhash_notify::NotifyOptions { dry_run: false },
        &em,
    );
    if std::env::var_os("WEBHOOK_URL").is_none() {
        assert_eq!(report.skipped, vec!["webhook".to_string()]);
        assert_eq!(report.fallback.len(), 1);
        assert_eq!(report.fallback[0].0, "none");
        assert!(report.sent.is_empty());
    }
    assert!(report.fallback_error.is_none());
    assert!(!p.fallback().is_empty());
}

// ---------------------------------------------------------------------------
// Email through the local sendmail, .env.notifications, redaction of quoted
// secret parts, and size caps.

/// A stand-in `sendmail` in a folder of its own (put first on PATH): records
/// its arguments, one a line, and the message it reads on stdin.
struct Sendmail {
    dir: tempfile::TempDir,
}

impl Sendmail {
    fn install() -> Sendmail {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let script = bin.join("sendmail");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{0}/args'\ncat > '{0}/message.eml'\n",
                dir.path().display()
            ),
        )
        .expect("script");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        Sendmail { dir }
    }

    /// PATH with the stand-in first (the script itself needs `cat`).
    fn path_var(&self) -> String {
        format!("{}:/usr/bin:/bin", self.dir.path().join("bin").display())
    }

    fn args(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("args"))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn message(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("message.eml")).ok()
    }
}

/// Checks the RFC 5322 shape of a raw message and returns its (unfolded)
/// header fields and body.
fn rfc5322(raw: &str) -> (Vec<(String, String)>, String) {
    assert!(
        !raw.replace("\r\n", "").contains('\n') && !raw.replace("\r\n", "").contains('\r'),
        "every line ends in CRLF"
    );
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .expect("an empty line separates header and body");
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        assert!(line.len() <= 998, "line longer than 998 octets: {line}");
        assert!(line.is_ascii(), "header lines are ASCII: {line}");
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().expect("a folded line follows a field");
            last.1.push_str(line);
        } else {
            let (name, value) = line.split_once(':').expect("name: value");
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_graphic() && c != ':'),
                "field name {name:?}"
            );
            fields.push((name.to_string(), value.trim().to_string()));
        }
    }
    for line in body.split("\r\n") {
        assert!(line.len() <= 998, "body line longer than 998 octets");
    }
    (fields, body.to_string())
}

fn header<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    let found: Vec<&(String, String)> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {name} field: {fields:?}");
    &found[0].1
}

/// Asserts that none of `secrets` is in any run's stdout or stderr, nor in
/// any file under the project (but `.env.notifications`, which holds them).
fn assert_no_secret(p: &Project, runs: &[&Run], secrets: &[&str]) {
    for r in runs {
        for s in secrets {
            assert!(
                !r.stdout.contains(s),
                "secret {s:?} in stdout:\n{}",
                r.stdout
            );
            assert!(
                !r.stderr.contains(s),
                "secret {s:?} in stderr:\n{}",
                r.stderr
            );
        }
    }
    for (path, content) in p.all_files() {
        if path.file_name().is_some_and(|n| n == ".env.notifications") {
            continue;
        }
        for s in secrets {
            assert!(!content.contains(s), "secret {s:?} in {}", path.display());
        }
    }
}

#[test]
fn email_to_alone_sends_an_rfc5322_message_through_sendmail_on_path() {
    let sm = Sendmail::install();
    let p = Project::new(&[("email", "warning")], "5s");
    let token = "mailToken0123456789abcdef";
    let slack = format!("https://hooks.slack.com/services/T0MAIL123/B0MAIL456/{token}");
    let path = sm.path_var();
    let r = p.notify(
        &[
            "--level",
            "warning",
            "--title",
            "Sendmail check",
            "--message",
            &format!("p95 is high; the hook /services/T0MAIL123/B0MAIL456/{token} answered 500"),
            "--env",
            "staging",
        ],
        &[
            ("PATH", path.as_str()),
            ("EMAIL_TO", "ops@example.com, oncall@example.com"),
            ("EMAIL_FROM", "dhash-rollout@example.com"),
            ("SLACK_WEBHOOK_URL", slack.as_str()),
        ],
    );
    r.ok();
    assert_eq!(r.sent("email").len(), 1, "{}", r.stdout);
    assert!(
        p.fallback().is_empty(),
        "delivered, nothing in the fallback file"
    );
    assert_eq!(
        sm.args(),
        vec![
            "-i",
            "-f",
            "dhash-rollout@example.com",
            "--",
            "ops@example.com",
            "oncall@example.com"
        ]
    );
    let raw = sm.message().expect("sendmail received a message on stdin");
    let (fields, body) = rfc5322(&raw);
    assert_eq!(header(&fields, "From"), "dhash-rollout@example.com");
    assert_eq!(header(&fields, "To"), "ops@example.com, oncall@example.com");
    assert_eq!(
        header(&fields, "Subject"),
        "[dhash][staging][WARNING] Sendmail check"
    );
    let date = header(&fields, "Date");
    assert!(
        chrono::DateTime::parse_from_rfc2822(date).is_ok(),
        "Date is RFC 5322: {date}"
    );
    let id = header(&fields, "Message-ID");
    assert!(
        id.starts_with('<') && id.ends_with('>') && id.contains('@'),
        "Message-ID {id}"
    );
    assert_eq!(header(&fields, "MIME-Version"), "1.0");
    assert!(header(&fields, "Content-Type").starts_with("text/plain"));
    assert_eq!(header(&fields, "Auto-Submitted"), "auto-generated");
    assert!(
        body.contains("p95 is high; the hook [REDACTED] answered 500"),
        "{body}"
    );
    assert!(body.contains("Environment: staging"), "{body}");
    assert_no_secret(&p, &[&r], &[&slack, token, "T0MAIL123", "B0MAIL456"]);
    assert!(!raw.contains(token), "the token is not mailed either");
    p.assert_nothing_lost(&[&r]);
}

#[test]
fn email_to_without_any_sendmail_goes_to_the_fallback_file_with_the_reason() {
    for dir in ["/usr/sbin", "/usr/lib"] {
        if Path::new(dir).join("sendmail").exists() {
            eprintln!("skipped: {dir}/sendmail is installed on this machine");
            return;
        }
    }
    let p = Project::new(&[("email", "info")], "4s");
    let empty = tempfile::tempdir().expect("tempdir");
    let path = empty.path().to_string_lossy().to_string();
    let r = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "no MTA here",
            "--env",
            "staging",
        ],
        &[("PATH", path.as_str()), ("EMAIL_TO", "ops@example.com")],
    );
    r.ok();
    assert!(r.sent("email").is_empty());
    let fb = r.events("notify.fallback");
    assert_eq!(fb.len(), 1, "{}", r.stdout);
    let reason = text(&fb[0]["reason"], "reason");
    for needle in [
        "no sendmail program found",
        "PATH",
        "/usr/sbin",
        "/usr/lib",
        "EMAIL_SMTP_HOST",
    ] {
        assert!(reason.contains(needle), "reason lacks {needle:?}: {reason}");
    }
    let lines = p.fallback();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["channel"], "email");
    assert_eq!(lines[0]["message"], "no MTA here");
    assert_eq!(lines[0]["reason"], fb[0]["reason"]);
    assert_eq!(p.out_copies().len(), 1);
    // A sendmail named explicitly that is not there: said as such.
    let r2 = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "named sendmail",
            "--env",
            "staging",
        ],
        &[
            ("PATH", path.as_str()),
            ("EMAIL_TO", "ops@example.com"),
            ("EMAIL_SENDMAIL", "/nonexistent/sbin/sendmail"),
        ],
    );
    r2.ok();
    let lines = p.fallback();
    assert_eq!(lines.len(), 2);
    let reason = text(&lines[1]["reason"], "reason");
    assert!(
        reason.contains("/nonexistent/sbin/sendmail is not an executable file"),
        "{reason}"
    );
    // EMAIL_TRANSPORT=smtp without a host is a misconfiguration, not a skip.
    let r3 = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "smtp?",
            "--env",
            "staging",
        ],
        &[
            ("PATH", path.as_str()),
            ("EMAIL_TO", "ops@example.com"),
            ("EMAIL_TRANSPORT", "smtp"),
        ],
    );
    r3.ok();
    let lines = p.fallback();
    assert!(
        text(&lines[2]["reason"], "reason").contains("EMAIL_SMTP_HOST is not set"),
        "{lines:?}"
    );
    // A dry run says the email would not go out, and why.
    let r4 = p.notify(
        &[
            "--level",
            "critical",
            "--message",
            "dry",
            "--dry-run",
            "--env",
            "staging",
        ],
        &[("PATH", path.as_str()), ("EMAIL_TO", "ops@example.com")],
    );
    r4.ok();
    let lines = p.fallback();
    let dry = lines.last().expect("dry-run line");
    assert_eq!(dry["dry_run"], true);
    let reason = text(&dry["reason"], "reason");
    assert!(
        reason.contains("it would fail") && reason.contains("no sendmail program found"),
        "{reason}"
    );
    p.assert_nothing_lost(&[&r, &r2, &r3, &r4]);
}

#[test]
fn env_notifications_file_is_read_the_environment_wins_and_values_are_redacted() {
    let slack_rx = Receiver::start(vec![Reply::ok_text("ok")]);
    let file_hook_rx = Receiver::start(vec![Reply::status(200)]);
    let env_hook_rx = Receiver::start(vec![Reply::status(200)]);
    let p = Project::new(&[("slack", "info"), ("webhook", "info")], "4s");
    let slack_token = "fileSlackToken0123456789";
    let slack = slack_rx.url_with(&format!("/services/T0FILE123/B0FILE456/{slack_token}"));
    let file_hook = file_hook_rx.url_with("/hook/FileHookSecret98765");
    let env_hook = env_hook_rx.url_with("/hook/EnvHookSecret4321");
    let old_slack = "https://hooks.slack.com/services/T0OLD0001/B0OLD0002/oldSlackToken999999";
    // As seed 003 builds it: lines appended with `echo ... >> .env.notifications`,
    // the later Slack line an update of the first.
    std::fs::write(
        p.root().join(".env.notifications"),
        format!(
            "# notification secrets (git-ignored)\n\
             SLACK_WEBHOOK_URL={old_slack}\n\
             export WEBHOOK_URL=\"{file_hook}\"\n\
             EMAIL_PASSWORD='File Passw0rd-42'\n\
             SLACK_WEBHOK=typo-is-ignored\n\
             SLACK_WEBHOOK_URL={slack}\n"
        ),
    )
    .expect("write .env.notifications");
    let message = format!(
        "quoting {slack_token}, /services/T0FILE123/B0FILE456/{slack_token}, \
         FileHookSecret98765, oldSlackToken999999 and File Passw0rd-42"
    );
    let r = p.notify(
        &[
            "--level",
            "warning",
            "--message",
            &message,
            "--env",
            "staging",
        ],
        &[("WEBHOOK_URL", env_hook.as_str())],
    );
    r.ok();
    // The file's (latest) Slack URL is used; the environment's WEBHOOK_URL
    // wins over the file's.
    assert_eq!(slack_rx.requests().len(), 1, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(env_hook_rx.requests().len(), 1);
    assert!(file_hook_rx.requests().is_empty(), "the environment wins");
    assert_eq!(r.sent("slack").len(), 1);
    assert_eq!(r.sent("webhook").len(), 1);
    assert!(
        r.stderr
            .contains(".env.notifications: SLACK_WEBHOK ignored: not a notification variable"),
        "{}",
        r.stderr
    );
    let slack_body = slack_rx.requests()[0].json();
    assert!(
        text(&slack_body["text"], "text").contains("quoting [REDACTED], [REDACTED], [REDACTED]"),
        "{slack_body}"
    );
    // Set but empty in the environment: the environment still wins (the
    // channel is off for this run), the file is not consulted.
    let r2 = p.notify(
        &[
            "--level",
            "warning",
            "--message",
            "slack off",
            "--channel",
            "slack",
            "--env",
            "staging",
        ],
        &[("SLACK_WEBHOOK_URL", "")],
    );
    r2.ok();
    assert_eq!(slack_rx.requests().len(), 1, "not sent to the file's URL");
    assert_eq!(p.fallback().len(), 1);
    assert_eq!(p.fallback()[0]["channel"], "none");
    // deploy-notify reads the file too; the file's WEBHOOK_URL is used when
    // the environment has none.
    let r3 = p.run(
        DEPLOY_NOTIFY,
        &["success", "--env", "staging", "--message", slack_token],
        &[],
        None,
    );
    r3.ok();
    assert_eq!(slack_rx.requests().len(), 2);
    assert_eq!(file_hook_rx.requests().len(), 1);
    let secrets = [
        slack.as_str(),
        slack_token,
        "T0FILE123",
        "B0FILE456",
        file_hook.as_str(),
        "FileHookSecret98765",
        env_hook.as_str(),
        "EnvHookSecret4321",
        old_slack,
        "oldSlackToken999999",
        "File Passw0rd-42",
    ];
    assert_no_secret(&p, &[&r, &r2, &r3], &secrets);
    for rx in [&slack_rx, &file_hook_rx, &env_hook_rx] {
        for req in rx.requests() {
            let body = String::from_utf8_lossy(&req.body).to_string();
            for s in secrets {
                assert!(!body.contains(s), "secret {s:?} sent in a payload: {body}");
            }
        }
    }
    p.assert_nothing_lost(&[&r, &r2, &r3]);
}

#[test]
fn a_broken_env_notifications_line_is_a_configuration_error_naming_file_and_line() {
    let p = Project::new(&[("slack", "info")], "4s");
    let file = p.root().join(".env.notifications");
    let cases = [
        (
            "EMAIL_TO=ops@example.com\n# fine\nSLACK_WEBHOOK_URL \"https://hooks.slack.com/services/T0BRK1234/B0BRK5678/brokenLineToken12345\"\n",
            3,
            "no \"=\" on this line",
        ),
        (
            "SLACK_WEBHOOK_URL='https://hooks.slack.com/services/T0BRK1234/B0BRK5678/brokenLineToken12345\n",
            1,
            "unterminated single-quoted value",
        ),
        (
            "\n\n2SLACK_WEBHOOK_URL=brokenLineToken12345\n",
            3,
            "invalid variable name",
        ),
    ];
    let input = event("gate.violated", "critical", json!({"gate": "error_rate"}));
    for (content, line, problem) in cases {
        std::fs::write(&file, content).expect("write");
        let runs = [
            p.notify(
                &["--level", "critical", "--message", "x", "--env", "staging"],
                &[],
            ),
            p.run(NOTIFY, &["--env", "staging"], &[], Some(&input)),
            p.run(DEPLOY_NOTIFY, &["failure", "--env", "staging"], &[], None),
        ];
        for r in &runs {
            assert_eq!(r.code, 2, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
            let where_ = format!("{}:{line}: {problem}", file.display());
            assert!(r.stderr.contains(&where_), "{where_:?} in {}", r.stderr);
            assert!(r.stderr.contains("expected NAME=VALUE"), "{}", r.stderr);
            assert!(r.stdout.is_empty(), "nothing done: {}", r.stdout);
        }
        assert_no_secret(
            &p,
            &runs.iter().collect::<Vec<_>>(),
            &["brokenLineToken12345", "T0BRK1234"],
        );
        assert!(p.fallback().is_empty(), "nothing sent or recorded");
    }
    // Not a file at all.
    std::fs::remove_file(&file).expect("rm");
    std::fs::create_dir(&file).expect("mkdir");
    let r = p.notify(&["--message", "x", "--env", "staging"], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("is not a regular file"), "{}", r.stderr);
}

#[test]
fn env_notifications_is_git_ignored() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("git")
        .args(["check-ignore", "-q", "--no-index", ".env.notifications"])
        .current_dir(&root)
        .output();
    match out {
        Ok(o) if o.status.code() == Some(128) => {
            eprintln!(
                "skipped: not a git checkout ({})",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(o) => assert!(o.status.success(), "add .env.notifications to .gitignore"),
        Err(e) => eprintln!("skipped: git not available ({e})"),
    }
}

#[test]
fn secret_parts_quoted_in_messages_and_upstream_events_never_reach_any_output() {
    let slack_rx = Receiver::start(vec![Reply::text(500, "internal error")]);
    let hook_rx = Receiver::start(vec![Reply::status(200)]);
    let p = Project::new(&[("slack", "info"), ("webhook", "info")], "2s");
    let token = "quotedToken0123456789ab";
    let slack_path = format!("/services/T0QUOTE12/B0QUOTE34/{token}");
    let slack = slack_rx.url_with(&slack_path);
    let schemeless = slack.trim_start_matches("http://").to_string();
    let hook = hook_rx.url_with("/hook/GenericSecretSeg77?sig=QuerySignature0123");
    let vars = [
        ("SLACK_WEBHOOK_URL", slack.as_str()),
        ("WEBHOOK_URL", hook.as_str()),
    ];
    let quoted = format!(
        "upstream said: POST {schemeless} failed; path {slack_path}; token={token}; \
         glued x{token}x; sig QuerySignature0123; seg GenericSecretSeg77"
    );
    // A Slack cut (3000 chars) that would land inside the token.
    let long = format!("{}{token} and more", "x".repeat(2990));
    let events = [
        event(
            "gate.violated",
            "critical",
            json!({"gate": "error_rate", "msg": quoted, "detail": format!("retry {slack_path}"),
                   format!("key_{token}"): token}),
        ),
        event(
            "deploy.failed",
            "error",
            json!({"msg": format!("hook {token}")}),
        ),
    ]
    .join("\n");
    let runs = [
        p.notify(
            &[
                "--level",
                "critical",
                "--message",
                &quoted,
                "--env",
                "staging",
            ],
            &vars,
        ),
        p.notify(
            &["--level", "warning", "--message", &long, "--env", "staging"],
            &vars,
        ),
        p.notify(
            &[
                "--level",
                "warning",
                "--message",
                &quoted,
                "--field",
                &format!("hook={slack_path}"),
                "--dry-run",
                "--env",
                "staging",
                "--verbose",
            ],
            &vars,
        ),
        p.run(
            NOTIFY,
            &["--env", "staging", "--verbose"],
            &vars,
            Some(&events),
        ),
    ];
    for r in &runs {
        r.ok();
    }
    // Slack failed each time: the fallback file and audit copies were written
    // with the quoted text, redacted.
    let lines = p.fallback();
    assert!(lines
        .iter()
        .any(|l| l["channel"] == "slack" && l["dry_run"] == false));
    assert!(lines.iter().any(|l| l["dry_run"] == true));
    assert!(!p.out_copies().is_empty());
    assert!(
        lines.iter().any(
            |l| text(&l["message"], "message").contains("token=[REDACTED]; glued x[REDACTED]x")
        ),
        "{lines:?}"
    );
    // Upstream events are still forwarded, redacted.
    let fwd = runs[3].events("gate.violated");
    assert_eq!(fwd.len(), 1);
    assert!(text(&fwd[0]["msg"], "msg").contains("path [REDACTED]"));
    let secrets = [
        slack.as_str(),
        schemeless.as_str(),
        slack_path.as_str(),
        token,
        "quotedToken0",
        "T0QUOTE12",
        "B0QUOTE34",
        hook.as_str(),
        "GenericSecretSeg77",
        "QuerySignature0123",
    ];
    assert_no_secret(&p, &runs.iter().collect::<Vec<_>>(), &secrets);
    for rx in [&slack_rx, &hook_rx] {
        for req in rx.requests() {
            let body = String::from_utf8_lossy(&req.body).to_string();
            for s in secrets {
                assert!(!body.contains(s), "secret {s:?} sent in a payload");
            }
        }
    }
    assert!(hook_rx.requests().len() >= 3, "the webhook delivered");
}

/// Peak RSS of a run in kB, from GNU time's output file (`-f %M -o FILE`).
fn peak_rss_kb(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
}

#[test]
fn a_10_mb_message_is_cut_per_channel_kept_once_and_costs_bounded_memory() {
    let slack_rx = Receiver::start(vec![Reply::ok_text("ok")]);
    let teams_rx = Receiver::start(vec![Reply::status(202)]);
    let discord_rx = Receiver::start(vec![Reply::status(204)]);
    let hook_rx = Receiver::start(vec![Reply::text(404, "no such hook")]);
    let sm = Sendmail::install();
    let p = Project::new(
        &[
            ("slack", "info"),
            ("teams", "info"),
            ("discord", "info"),
            ("webhook", "info"),
            ("email", "info"),
        ],
        "10s",
    );
    let mut message = String::from("BEGIN-OF-MESSAGE\n");
    let line = format!("{}\n", "0123456789abcdef".repeat(6));
    while message.len() < 10 * 1024 * 1024 {
        message.push_str(&line);
    }
    message.push_str("END-OF-MESSAGE-SENTINEL");
    let full_chars = message.chars().count();
    let input = event(
        "gate.violated",
        "critical",
        json!({"gate": "p95_hash_time", "msg": message}),
    );
    let (slack, teams, discord, hook) = (
        slack_rx.url_with("/services/T0/B0/big"),
        teams_rx.url_with("/workflows/big"),
        discord_rx.url_with("/api/webhooks/1/big"),
        hook_rx.url_with("/hook/big"),
    );
    let path = sm.path_var();
    let vars = [
        ("SLACK_WEBHOOK_URL", slack.as_str()),
        ("TEAMS_WEBHOOK_URL", teams.as_str()),
        ("DISCORD_WEBHOOK_URL", discord.as_str()),
        ("WEBHOOK_URL", hook.as_str()),
        ("EMAIL_TO", "ops@example.com"),
        ("PATH", path.as_str()),
    ];
    let time = Path::new("/usr/bin/time");
    let rss_file = p
        .dir
        .path()
        .join("..")
        .join(format!("notify-rss-{}.txt", std::process::id()));
    let rss_arg = rss_file.to_string_lossy().to_string();
    let wrapper: Vec<&str> = if time.exists() {
        vec!["/usr/bin/time", "-f", "%M", "-o", rss_arg.as_str()]
    } else {
        Vec::new()
    };
    let r = p.run_wrapped(&wrapper, NOTIFY, &["--env", "staging"], &vars, Some(&input));
    r.ok();
    // Forwarded unchanged (the pipeline contract), once.
    assert_eq!(r.events("gate.violated").len(), 1);
    // Each channel got its limit, with the marker, and the start of the text.
    let body = |rx: &Receiver| {
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 1);
        assert!(
            reqs[0].body.len() < 64 * 1024,
            "{} bytes",
            reqs[0].body.len()
        );
        reqs[0].json()
    };
    let s = body(&slack_rx);
    let st = text(&s["text"], "slack text");
    assert!(st.chars().count() <= 3000 && st.ends_with(MARKER) && st.contains("BEGIN-OF-MESSAGE"));
    let t = body(&teams_rx);
    let tt = text(
        &t["attachments"][0]["content"]["body"][1]["text"],
        "teams text",
    );
    assert!(tt.chars().count() <= 12_000 && tt.ends_with(MARKER));
    let d = body(&discord_rx);
    let dd = text(&d["embeds"][0]["description"], "discord description");
    assert!(utf16_len(dd) <= 4096 && dd.ends_with(MARKER));
    let hook_reqs = hook_rx.requests();
    assert_eq!(hook_reqs.len(), 1, "404 is permanent");
    let h = hook_reqs[0].json();
    let hm = text(&h["message"], "webhook message");
    assert!(hm.chars().count() <= 65_536 && hm.ends_with(MARKER));
    assert!(hook_reqs[0].body.len() < 128 * 1024);
    let mail = sm.message().expect("mailed");
    assert!(mail.len() < 128 * 1024, "email of {} bytes", mail.len());
    assert!(mail.contains("BEGIN-OF-MESSAGE") && mail.contains("[truncated]"));
    // The webhook's failure is recorded with the start of the text and a
    // pointer to the full text, kept once in the audit copy.
    let lines = p.fallback();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fl = &lines[0];
    assert_eq!(fl["channel"], "webhook");
    assert_eq!(fl["message_truncated"], true);
    assert_eq!(fl["message_chars"], full_chars);
    let fm = text(&fl["message"], "fallback message");
    assert!(fm.chars().count() <= 8192 && fm.ends_with(MARKER));
    let full_path = PathBuf::from(text(&fl["full_text"], "full_text"));
    let copies = p.out_copies();
    assert_eq!(copies.len(), 1, "one audit copy");
    assert!(full_path.is_file(), "{}", full_path.display());
    let copy: Value =
        serde_json::from_str(&std::fs::read_to_string(&full_path).expect("read")).expect("json");
    assert_eq!(
        text(&copy["message"], "full message"),
        message,
        "kept whole"
    );
    assert_eq!(copy["truncated_for_channels"], true);
    // Kept once: the end of the text is in exactly one file, once.
    let mut written = 0usize;
    let mut sentinels = 0usize;
    for (_, content) in p.all_files() {
        written += content.len();
        sentinels += content.matches("END-OF-MESSAGE-SENTINEL").count();
    }
    assert_eq!(sentinels, 1, "the full text is written once");
    assert!(
        written < message.len() + message.len() / 10 + 512 * 1024,
        "{written} bytes written for a message of {}",
        message.len()
    );
    match peak_rss_kb(&rss_file) {
        Some(kb) => {
            eprintln!(
                "notify, 10 MB message, 5 channels: peak RSS {} MB, {} MB written",
                kb / 1024,
                written / (1024 * 1024)
            );
            assert!(kb < 100 * 1024, "peak RSS {kb} kB for a 10 MB message");
        }
        None => eprintln!("RSS not measured: /usr/bin/time (GNU time) is not installed"),
    }
    let _ = std::fs::remove_file(&rss_file);
    p.assert_nothing_lost(&[&r]);
}
