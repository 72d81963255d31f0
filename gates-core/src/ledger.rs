//! The append-only ledger per environment (JSON lines): the audit trail of
//! deploys, migrations, rollbacks and gate decisions, and the source for
//! reports. One record per line, appended with a single write and synced.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::fsutil;

#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Ledger { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `{ts, kind, who, host, ...fields}`.
    pub fn append(&self, kind: &str, fields: Value) -> anyhow::Result<Value> {
        let mut rec = Map::new();
        rec.insert("ts".into(), Value::String(crate::event::now_rfc3339()));
        rec.insert("kind".into(), Value::String(kind.to_string()));
        rec.insert("who".into(), Value::String(crate::lock::username()));
        rec.insert("host".into(), Value::String(crate::lock::hostname()));
        if let Value::Object(m) = fields {
            rec.extend(m);
        }
        let rec = Value::Object(rec);
        let line = crate::redact::global().redact(&serde_json::to_string(&rec)?);
        fsutil::append_line(&self.path, &line, true)?;
        Ok(rec)
    }

    /// All records in order. A line that does not parse (a torn write from a
    /// crash mid-append) is skipped and counted, never fatal.
    pub fn read(&self) -> anyhow::Result<(Vec<Value>, usize)> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", self.path.display())),
        };
        let mut out = Vec::new();
        let mut bad = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Value>(line) {
                Ok(v @ Value::Object(_)) => out.push(v),
                _ => bad += 1,
            }
        }
        Ok((out, bad))
    }

    /// Records of one kind, in order.
    pub fn records(&self, kind: &str) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .read()?
            .0
            .into_iter()
            .filter(|r| r.get("kind").and_then(Value::as_str) == Some(kind))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_and_skip_torn_line() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = Ledger::new(d.path().join("ledger.jsonl"));
        l.append(
            "deploy",
            serde_json::json!({"from": "a", "to": "b", "result": "healthy"}),
        )
        .expect("append");
        fs::write(
            l.path(),
            format!(
                "{}{{\"kind\":\"dep",
                fs::read_to_string(l.path()).expect("read")
            ),
        )
        .expect("torn");
        l.append("rollback", serde_json::json!({"result": "completed"}))
            .expect("append2");
        let (recs, bad) = l.read().expect("read");
        // The torn fragment is skipped and counted; the record appended after
        // it starts a line of its own, so it is kept.
        assert_eq!(bad, 1);
        assert_eq!(recs.len(), 2);
        assert_eq!(l.records("deploy").expect("deploys").len(), 1);
        let rollbacks = l.records("rollback").expect("rollbacks");
        assert_eq!(rollbacks.len(), 1);
        assert_eq!(rollbacks[0]["result"], "completed");
    }
}
