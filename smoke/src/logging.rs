//! `validate_logging`: proves the environment's logs are safe to attach to
//! an incident.
//!
//! 1. Secrets: every file under the log folder, the notification fallback
//!    file, the notifications out folder, the ledger and the service log is
//!    scanned for the value of any environment variable
//!    `gates_core::redact` treats as secret (SLACK_WEBHOOK, *PASSWORD*,
//!    *TOKEN*, ...) and for URL credentials (`scheme://user:pass@host`).
//!    Findings name the file, the line and the variable, never the value.
//! 2. JSON lines: every `*.jsonl` / `*.ndjson` line must be a JSON object.
//! 3. Concurrency: N threads append lines of different lengths to one file
//!    through `gates_core::fsutil::append_line` (the shared writer of every
//!    log and ledger); each line must come back whole, exactly once.
//!
//! Events: `logging.scanned` (debug, per file), `logging.flagged` (error, per
//! finding), `logging.concurrency-tested`, then `logging.passed` or
//! `logging.failed`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use gates_core::config::EnvConfig;
use gates_core::redact::Redactor;
use gates_core::{Emitter, Level};
use serde::Serialize;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct LoggingOptions {
    /// Writer threads of the concurrency self-test.
    pub threads: usize,
    /// Lines each writer appends.
    pub lines_per_thread: usize,
}

impl Default for LoggingOptions {
    fn default() -> Self {
        LoggingOptions {
            threads: 8,
            lines_per_thread: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: Option<usize>,
    pub kind: FindingKind,
    pub detail: String,
}

/// What is wrong with a log line or file (serialized in kebab-case:
/// `secret`, `url-credentials`, `malformed-jsonl`, `interleaved`, `unreadable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A secret's value in clear.
    Secret,
    /// A URL with a password in it.
    UrlCredentials,
    /// A `.jsonl` line that is not one JSON value.
    MalformedJsonl,
    /// Concurrent appends that lost or mixed lines.
    Interleaved,
    /// A file that could not be read.
    Unreadable,
}

impl Finding {
    pub fn location(&self, root: &Path) -> String {
        let f = self
            .file
            .strip_prefix(root)
            .unwrap_or(&self.file)
            .display()
            .to_string();
        match self.line {
            Some(n) => format!("{f}:{n}"),
            None => f,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LoggingReport {
    pub files: usize,
    pub lines: usize,
    pub findings: Vec<Finding>,
    pub concurrency_ok: bool,
}

impl LoggingReport {
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }
}

/// The secret values to look for: one redactor per secret variable (so a
/// finding names it) and the bare URL-credential rule.
pub struct Secrets {
    vars: Vec<(String, Redactor)>,
    plain: Redactor,
}

impl Secrets {
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let r = Redactor::from_vars([(name.clone(), value)]);
                (!r.is_empty()).then_some((name, r))
            })
            .collect();
        Secrets {
            vars,
            plain: Redactor::default(),
        }
    }

    /// The names of the secret variables a line leaks, and whether it holds
    /// URL credentials.
    pub fn leaks(&self, line: &str) -> (Vec<&str>, bool) {
        let base = self.plain.redact(line);
        let url_credentials = base != line;
        let names = self
            .vars
            .iter()
            .filter(|(_, r)| r.redact(line) != base)
            .map(|(n, _)| n.as_str())
            .collect();
        (names, url_credentials)
    }

    pub fn variables(&self) -> Vec<&str> {
        self.vars.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// The files `validate_logging` scans for an environment.
pub fn files_to_scan(env: &EnvConfig) -> Vec<PathBuf> {
    let mut out = BTreeSet::new();
    collect(&env.log_dir, &mut out);
    collect(&env.notify.out_dir, &mut out);
    for f in [
        env.notify.fallback_file.clone(),
        env.ledger_path(),
        env.service_log(),
    ] {
        if f.is_file() {
            out.insert(f);
        }
    }
    // One path per file, even when two settings name it differently.
    let mut seen = BTreeSet::new();
    out.into_iter()
        .filter(|p| seen.insert(fs::canonicalize(p).unwrap_or_else(|_| p.clone())))
        .collect()
}

fn collect(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        // Files being written (temp names) are not logs yet.
        if name.starts_with('.') && name.ends_with(".partial") {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect(&path, out),
            Ok(t) if t.is_file() => {
                out.insert(path);
            }
            _ => {}
        }
    }
}

fn is_jsonl(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl") | Some("ndjson")
    )
}

/// Scans one file: secrets on every line, JSON objects on every line of a
/// `.jsonl` file. Returns the findings and the number of lines.
pub fn scan_file(path: &Path, secrets: &Secrets) -> (Vec<Finding>, usize) {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return (
                vec![Finding {
                    file: path.to_path_buf(),
                    line: None,
                    kind: FindingKind::Unreadable,
                    detail: format!("cannot read: {e}"),
                }],
                0,
            )
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let jsonl = is_jsonl(path);
    let mut findings = Vec::new();
    let mut lines = 0;
    for (i, line) in text.lines().enumerate() {
        lines += 1;
        let n = i + 1;
        let (names, url_credentials) = secrets.leaks(line);
        for name in names {
            findings.push(Finding {
                file: path.to_path_buf(),
                line: Some(n),
                kind: FindingKind::Secret,
                detail: format!("the value of {name} appears unredacted"),
            });
        }
        if url_credentials {
            findings.push(Finding {
                file: path.to_path_buf(),
                line: Some(n),
                kind: FindingKind::UrlCredentials,
                detail: "a URL with user:password credentials appears unredacted".into(),
            });
        }
        if jsonl && !line.trim().is_empty() {
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(_)) => {}
                Ok(_) => findings.push(Finding {
                    file: path.to_path_buf(),
                    line: Some(n),
                    kind: FindingKind::MalformedJsonl,
                    detail: "a JSON value that is not an object".into(),
                }),
                Err(e) => findings.push(Finding {
                    file: path.to_path_buf(),
                    line: Some(n),
                    kind: FindingKind::MalformedJsonl,
                    detail: format!("not JSON: {e}"),
                }),
            }
        }
    }
    (findings, lines)
}

/// `threads` writers append `lines` lines each (lengths 1 byte to ~8 KiB)
/// to `dir/selftest.log` through `fsutil::append_line`; every line must come
/// back whole and exactly once. Returns the findings (empty = passed).
pub fn concurrency_selftest(
    dir: &Path,
    threads: usize,
    lines: usize,
) -> anyhow::Result<Vec<Finding>> {
    let file = dir.join("selftest.log");
    let threads = threads.clamp(1, 64);
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let file = &file;
                s.spawn(move || -> Result<(), String> {
                    for seq in 0..lines {
                        let line = selftest_line(t, seq);
                        gates_core::fsutil::append_line(file, &line, false)
                            .map_err(|e| format!("writer {t}: {e:#}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("a writer thread panicked".to_string()),
            })
            .collect()
    });
    if let Some(e) = errors.first() {
        anyhow::bail!(
            "concurrency self-test could not write {}: {e}",
            file.display()
        );
    }
    let text = fs::read_to_string(&file)?;
    Ok(check_selftest(&file, &text, threads, lines))
}

fn selftest_line(t: usize, seq: usize) -> String {
    // Lengths vary from 1 byte to about 8 KiB, past the 4 KiB pipe-buffer
    // size where a non-atomic writer would show torn lines.
    let len = 1 + (seq * 997 + t * 131) % 8192;
    let fill = char::from(b'a' + (t % 26) as u8);
    json!({"writer": t, "seq": seq, "len": len, "fill": std::iter::repeat_n(fill, len).collect::<String>()})
        .to_string()
}

fn check_selftest(file: &Path, text: &str, threads: usize, lines: usize) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut seen = vec![vec![false; lines]; threads];
    let bad = |n: usize, detail: String| Finding {
        file: file.to_path_buf(),
        line: Some(n),
        kind: FindingKind::Interleaved,
        detail,
    };
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        count += 1;
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                findings.push(bad(i + 1, format!("partial or interleaved line: {e}")));
                continue;
            }
        };
        let (Some(t), Some(seq)) = (v["writer"].as_u64(), v["seq"].as_u64()) else {
            findings.push(bad(i + 1, "line without writer/seq".into()));
            continue;
        };
        let (t, seq) = (t as usize, seq as usize);
        if t >= threads || seq >= lines || line != selftest_line(t, seq) {
            findings.push(bad(
                i + 1,
                format!("line of writer {t} seq {seq} is not what it wrote"),
            ));
            continue;
        }
        if std::mem::replace(&mut seen[t][seq], true) {
            findings.push(bad(
                i + 1,
                format!("line of writer {t} seq {seq} appears twice"),
            ));
        }
    }
    let missing = seen.iter().flatten().filter(|s| !**s).count();
    if missing > 0 || count != threads * lines {
        findings.push(Finding {
            file: file.to_path_buf(),
            line: None,
            kind: FindingKind::Interleaved,
            detail: format!(
                "{count} lines read, {} written, {missing} missing",
                threads * lines
            ),
        });
    }
    findings
}

/// Runs all three validations for `env` (see the module docs).
pub fn validate(
    env: &EnvConfig,
    root: &Path,
    opts: &LoggingOptions,
    em: &Emitter,
) -> anyhow::Result<LoggingReport> {
    let secrets = Secrets::from_env();
    em.debug(&format!(
        "secret variables set: {}",
        secrets.variables().join(", ")
    ));
    let files = files_to_scan(env);
    let (mut findings, lines) = scan_files(&files, &secrets, root, em);
    let concurrency = test_concurrency(env, opts, em)?;
    let concurrency_ok = concurrency.is_empty();
    findings.extend(concurrency);
    for f in &findings {
        em.emit(
            "logging.flagged",
            Level::Error,
            format!("{}: {}", f.location(root), f.detail),
            json!({"file": f.file, "line": f.line, "kind": f.kind, "detail": f.detail}),
        );
    }
    let report = LoggingReport {
        files: files.len(),
        lines,
        findings,
        concurrency_ok,
    };
    emit_verdict(&report, em);
    Ok(report)
}

/// Scans every file (a `logging.scanned` event each); the findings and the
/// number of lines read.
fn scan_files(
    files: &[PathBuf],
    secrets: &Secrets,
    root: &Path,
    em: &Emitter,
) -> (Vec<Finding>, usize) {
    let mut findings = Vec::new();
    let mut lines = 0;
    for f in files {
        let (found, n) = scan_file(f, secrets);
        lines += n;
        em.emit(
            "logging.scanned",
            Level::Debug,
            format!("{}: {n} line(s), {} finding(s)", rel(f, root), found.len()),
            json!({"file": f, "lines": n, "findings": found.len()}),
        );
        findings.extend(found);
    }
    (findings, lines)
}

/// The concurrent-append self-test, in a temporary folder inside the log
/// folder when there is one (the file system the tools append on).
fn test_concurrency(
    env: &EnvConfig,
    opts: &LoggingOptions,
    em: &Emitter,
) -> anyhow::Result<Vec<Finding>> {
    let dir = if env.log_dir.is_dir() {
        tempfile::Builder::new()
            .prefix(".validate_logging.")
            .suffix(".partial")
            .tempdir_in(&env.log_dir)
    } else {
        tempfile::Builder::new()
            .prefix("validate_logging.")
            .tempdir()
    }?;
    let concurrency = concurrency_selftest(dir.path(), opts.threads, opts.lines_per_thread)?;
    let concurrency_ok = concurrency.is_empty();
    em.emit(
        "logging.concurrency-tested",
        if concurrency_ok { Level::Info } else { Level::Error },
        format!(
            "{} writers × {} lines through fsutil::append_line: {}",
            opts.threads,
            opts.lines_per_thread,
            if concurrency_ok { "no partial or interleaved line".to_string() } else { format!("{} problem(s)", concurrency.len()) }
        ),
        json!({"threads": opts.threads, "lines_per_thread": opts.lines_per_thread, "ok": concurrency_ok}),
    );
    // The self-test's temp file is gone with `dir`; keep the finding's text only.
    Ok(concurrency)
}

/// `logging.passed` or `logging.failed`.
fn emit_verdict(report: &LoggingReport, em: &Emitter) {
    let lines = report.lines;
    if report.passed() {
        em.emit(
            "logging.passed",
            Level::Info,
            format!("{} file(s), {lines} line(s): no unredacted secret, every JSON line well-formed, concurrent appends intact", report.files),
            json!({"files": report.files, "lines": lines}),
        );
    } else {
        em.emit(
            "logging.failed",
            Level::Error,
            format!(
                "{} finding(s) in {} file(s)",
                report.findings.len(),
                report.files
            ),
            json!({"files": report.files, "lines": lines, "findings": report.findings.len()}),
        );
    }
}

fn rel(p: &Path, root: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}
