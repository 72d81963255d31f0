//! What the tools recorded, read back: the environment's ledger (deploy,
//! rollback, monitor, gate and rollback-review records) and, for each watch
//! that rolled back, its events file. Nothing here writes.
//!
//! The ledger is read strictly: a line that is not a JSON record is an error
//! naming the file and line, because a report that silently drops a deploy
//! or a rollback would give wrong rates (gates-core's `Ledger::read` skips
//! torn lines, which suits the tools but not an audit). The one exception is
//! a torn line: the append of a writer killed mid-line, which never held a
//! whole record. It is a JSON object cut short (or an unreadable last line
//! with no newline after it); since an append after it starts a new line
//! (`gates_core::fsutil::append_line`), it may sit anywhere. It is skipped
//! and reported ([`LedgerRead::torn_lines`]), so that one crash does not stop
//! every report (and the Prometheus textfile) until someone edits the ledger.
//! Any other damage (a line glued onto another, a record that is not JSON)
//! is still refused.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

/// The ledger kinds the report reads.
pub const DEPLOY: &str = "deploy";
pub const ROLLBACK: &str = "rollback";
pub const MONITOR: &str = "monitor";
pub const GATE: &str = "gate";
/// Written by `report_dhash mark`: an operator's verdict on one rollback.
pub const REVIEW: &str = "rollback-review";

/// One ledger record with its parsed time.
#[derive(Debug, Clone)]
pub struct Record {
    pub ts: DateTime<Utc>,
    pub kind: String,
    pub raw: Value,
}

impl Record {
    pub fn str(&self, field: &str) -> Option<&str> {
        self.raw.get(field).and_then(Value::as_str)
    }
    pub fn i64(&self, field: &str) -> Option<i64> {
        self.raw.get(field).and_then(Value::as_i64)
    }
    pub fn f64(&self, field: &str) -> Option<f64> {
        self.raw.get(field).and_then(Value::as_f64)
    }
    pub fn bool(&self, field: &str) -> Option<bool> {
        self.raw.get(field).and_then(Value::as_bool)
    }
}

pub fn parse_ts(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn ts_of_ms(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Every record of the ledger at `path`, in order. A missing ledger is an
/// empty history (an environment nothing was done to yet).
pub fn read_ledger(path: &Path) -> anyhow::Result<Vec<Record>> {
    Ok(read_ledger_noting(path)?.records)
}

/// The ledger's records and the numbers of the torn lines that were skipped.
#[derive(Debug, Default)]
pub struct LedgerRead {
    pub records: Vec<Record>,
    /// The 1-based numbers of the torn lines (writes cut short), skipped.
    pub torn_lines: Vec<usize>,
}

/// [`read_ledger`], also saying which torn lines it skipped.
pub fn read_ledger_noting(path: &Path) -> anyhow::Result<LedgerRead> {
    use gates_core::ledger::RawLine;
    // Bytes, decoded line by line: a write cut inside a multi-byte character
    // must not make the whole ledger unreadable.
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LedgerRead::default()),
        Err(e) => return Err(anyhow!("cannot read the ledger {}: {e}", path.display())),
    };
    let unterminated = !bytes.is_empty() && !bytes.ends_with(b"\n");
    let last = bytes.split(|&b| b == b'\n').count();
    let mut out = LedgerRead::default();
    for (n, line) in gates_core::ledger::lines(&bytes) {
        let parsed = match line {
            RawLine::Text(t) => parse_line(t).map_err(|e| (e, cut_short(t))),
            RawLine::CutInCharacter => Err((anyhow!("a line cut inside a character"), true)),
            RawLine::NotUtf8 => Err((anyhow!("not UTF-8"), false)),
        };
        match parsed {
            Ok(r) => out.records.push(r),
            Err((_, cut)) if cut || (unterminated && n == last) => out.torn_lines.push(n),
            Err((e, _)) => {
                return Err(e.context(format!(
                    "ledger {} line {n}: unreadable record (fix or remove the line; the report \
                     will not guess what it held)",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// A JSON object that ends before it closes: what a writer killed mid-line
/// leaves (not a line glued onto another, which is a syntax error).
fn cut_short(line: &str) -> bool {
    line.trim_start().starts_with('{')
        && matches!(serde_json::from_str::<Value>(line),
            Err(e) if e.classify() == serde_json::error::Category::Eof)
}

fn parse_line(line: &str) -> anyhow::Result<Record> {
    let raw: Value = serde_json::from_str(line).map_err(|e| anyhow!("not JSON: {e}"))?;
    if !raw.is_object() {
        return Err(anyhow!("not a JSON object"));
    }
    let ts = raw
        .get("ts")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no \"ts\""))?;
    let ts = parse_ts(ts).ok_or_else(|| anyhow!("\"ts\" {ts:?} is not an RFC 3339 time"))?;
    let kind = raw
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no \"kind\""))?
        .to_string();
    Ok(Record { ts, kind, raw })
}

/// One event of a watch's events file (only the fields the report uses).
#[derive(Debug, Clone, Deserialize)]
pub struct WatchEvent {
    pub ts: String,
    pub event: String,
    #[serde(flatten)]
    pub fields: serde_json::Map<String, Value>,
}

impl WatchEvent {
    pub fn str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
    pub fn time(&self) -> Option<DateTime<Utc>> {
        parse_ts(&self.ts)
    }
}

/// The events of one watch. Lines that are not events (a torn last line of
/// a killed watcher) are skipped: the events file is a log, the ledger is
/// the record.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<WatchEvent>> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read the events file {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<WatchEvent>(l).ok())
        .collect())
}

/// The incident records (`incident_<env>_*.md`) in the monitor's log folder,
/// with the "Issue detected" time each one gives.
pub fn incident_records(log_dir: &Path, env: &str) -> Vec<(PathBuf, Option<String>)> {
    let prefix = format!("incident_{env}_");
    let Ok(dir) = fs::read_dir(log_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Option<String>)> = dir
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with(&prefix) && n.ends_with(".md")
        })
        .map(|e| {
            let detected = fs::read_to_string(e.path()).ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("- Issue detected: "))
                    .map(|s| s.trim().to_string())
            });
            (e.path(), detected)
        })
        .collect();
    out.sort();
    out
}
