//! Opening an auto-rollback incident in a tracker. The local record
//! (`monitor_logs/incident_*.md`) stays the source; the tracker gets a copy
//! and its link is written back into the record. In order of preference:
//!
//! 1. GitHub Issues through `gh issue create` when `gh` is on `PATH` and
//!    `gh auth status` says it is logged in (the repository: `DHASH_TRACKER_REPO`
//!    as `owner/name`, else the checkout's own remote, as gh finds it);
//! 2. GitHub's REST API with `GH_TOKEN` or `GITHUB_TOKEN` and
//!    `DHASH_TRACKER_REPO` (`GITHUB_API_URL` for GitHub Enterprise);
//! 3. a generic incident webhook, `INCIDENT_WEBHOOK_URL` (JSON POST; a
//!    `url` or `html_url` in its answer is taken as the link).
//!
//! None configured is not an error. A tracker that fails leaves the local
//! record complete; the failure is returned for the caller to report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// What became of the tracker copy.
#[derive(Debug, Clone, PartialEq)]
pub enum Tracked {
    /// Opened; `url` when the tracker said where.
    Opened {
        via: &'static str,
        url: Option<String>,
    },
    /// No tracker configured (why, in words).
    NotConfigured(String),
}

/// The issue to open.
pub struct Issue<'a> {
    pub title: &'a str,
    /// The local record (its text is the issue's body).
    pub record: &'a Path,
    pub env: &'a str,
    pub id: &'a str,
}

fn var(name: &str) -> Option<String> {
    crate::dotenv::var(name)
}

/// Opens the incident in the first tracker configured. `Err`: the tracker
/// was tried and failed (the reason is redacted).
pub fn open(issue: &Issue<'_>, timeout: Duration) -> Result<Tracked, String> {
    let redact = |s: String| gates_core::redact::global().redact(&s);
    if let Some(gh) = find_on_path("gh") {
        if gh_authenticated(&gh, timeout) {
            return gh_create(&gh, issue, timeout).map_err(redact);
        }
    }
    let token = var("GH_TOKEN").or_else(|| var("GITHUB_TOKEN"));
    if let (Some(token), Some(repo)) = (token, var("DHASH_TRACKER_REPO")) {
        return rest_create(&token, &repo, issue, timeout).map_err(redact);
    }
    if let Some(url) = var("INCIDENT_WEBHOOK_URL") {
        return webhook_create(&url, issue, timeout).map_err(redact);
    }
    Ok(Tracked::NotConfigured(
        "gh is not installed or not logged in, no GH_TOKEN/GITHUB_TOKEN with DHASH_TRACKER_REPO, \
         no INCIDENT_WEBHOOK_URL"
            .into(),
    ))
}

/// `name` in a folder of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Where gh runs: the project root (so it finds the checkout's remote).
fn workdir() -> Option<PathBuf> {
    std::env::var_os(gates_core::project::ROOT_VAR)
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
}

fn gh_authenticated(gh: &Path, timeout: Duration) -> bool {
    let mut cmd = Command::new(gh);
    cmd.args(["auth", "status"]);
    matches!(run(cmd, timeout), Ok((true, _, _)))
}

fn gh_create(gh: &Path, issue: &Issue<'_>, timeout: Duration) -> Result<Tracked, String> {
    let mut cmd = Command::new(gh);
    cmd.args(["issue", "create", "--title", issue.title, "--body-file"])
        .arg(issue.record);
    if let Some(repo) = var("DHASH_TRACKER_REPO") {
        cmd.args(["--repo", &repo]);
    }
    match run(cmd, timeout)? {
        (true, out, _) => Ok(Tracked::Opened {
            via: "gh",
            url: out
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with("https://") || l.starts_with("http://"))
                .map(str::to_string),
        }),
        (false, _, err) => Err(format!(
            "gh issue create failed: {}",
            crate::truncate::chars(err.trim(), 300)
        )),
    }
}

/// Runs a command with a deadline: (success, stdout, stderr). The pipes are
/// drained by threads as the command writes (a chatty gh never blocks on a
/// full pipe), and what they hold is taken a moment after it exits: a child
/// it left behind holding the pipes (a pager, a credential helper) cannot
/// keep notify waiting past the deadline.
fn run(mut cmd: Command, timeout: Duration) -> Result<(bool, String, String), String> {
    if let Some(dir) = workdir() {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let end = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{:?} gave no answer within {}",
                    cmd.get_program(),
                    gates_core::duration::human(timeout)
                ));
            }
        }
    };
    // The last writes reach the threads within a moment of the exit.
    let grace = Instant::now() + Duration::from_millis(200);
    while Instant::now() < grace && !(out.done() && err.done()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok((status.success(), out.text(), err.text()))
}

/// A pipe read on a thread into a shared buffer.
struct Drained {
    buf: std::sync::Arc<std::sync::Mutex<(Vec<u8>, bool)>>,
}

impl Drained {
    fn done(&self) -> bool {
        self.buf.lock().map(|b| b.1).unwrap_or(true)
    }
    fn text(&self) -> String {
        self.buf
            .lock()
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .unwrap_or_default()
    }
}

fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> Drained {
    let buf = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), pipe.is_none())));
    if let Some(mut pipe) = pipe {
        let shared = buf.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                let n = pipe.read(&mut chunk).unwrap_or(0);
                let Ok(mut b) = shared.lock() else { return };
                if n == 0 {
                    b.1 = true;
                    return;
                }
                // gh's answer is a link; a megabyte is plenty of room.
                if b.0.len() < 1 << 20 {
                    b.0.extend_from_slice(&chunk[..n]);
                }
            }
        });
    }
    Drained { buf }
}

fn body(issue: &Issue<'_>) -> Result<String, String> {
    std::fs::read_to_string(issue.record)
        .map(|t| crate::truncate::chars(&t, 60_000))
        .map_err(|e| format!("reading {}: {e}", issue.record.display()))
}

fn rest_create(
    token: &str,
    repo: &str,
    issue: &Issue<'_>,
    timeout: Duration,
) -> Result<Tracked, String> {
    let api = var("GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into());
    let url = format!("{}/repos/{repo}/issues", api.trim_end_matches('/'));
    let payload = json!({"title": issue.title, "body": body(issue)?, "labels": ["incident"]});
    let headers = [
        ("Authorization", format!("Bearer {token}")),
        ("Accept", "application/vnd.github+json".to_string()),
        ("X-GitHub-Api-Version", "2022-11-28".to_string()),
    ];
    let answer = post(&url, &payload, &headers, timeout)?;
    Ok(Tracked::Opened {
        via: "github-rest",
        url: answer["html_url"].as_str().map(str::to_string),
    })
}

fn webhook_create(url: &str, issue: &Issue<'_>, timeout: Duration) -> Result<Tracked, String> {
    let payload = json!({"source": "dhash-notify", "kind": "incident", "env": issue.env,
        "incident": issue.id, "title": issue.title, "body": body(issue)?,
        "path": issue.record.display().to_string()});
    let answer = post(url, &payload, &[], timeout)?;
    let link = answer["html_url"].as_str().or(answer["url"].as_str());
    Ok(Tracked::Opened {
        via: "webhook",
        url: link.map(str::to_string),
    })
}

/// One JSON POST, retried once on a 5xx or no answer; 2xx gives the JSON answer.
fn post(
    url: &str,
    payload: &Value,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<Value, String> {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout / 2))
        .user_agent(concat!("dhash-notify/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    let mut last = String::new();
    for _ in 0..2 {
        let mut req = agent.post(url).header("Content-Type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        match req.send(payload.to_string().as_bytes()) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let text = resp.body_mut().read_to_string().unwrap_or_default();
                if (200..300).contains(&status) {
                    return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
                }
                last = format!(
                    "HTTP {status}: {}",
                    crate::truncate::chars(text.trim(), 200)
                );
                if status < 500 {
                    break;
                }
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("the tracker did not accept the incident: {last}"))
}
