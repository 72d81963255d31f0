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
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", self.path.display())),
        };
        let mut out = Vec::new();
        let mut bad = 0;
        for (_, line) in lines(&bytes) {
            match line {
                RawLine::Text(t) => match serde_json::from_str::<Value>(t) {
                    Ok(v @ Value::Object(_)) => out.push(v),
                    _ => bad += 1,
                },
                RawLine::CutInCharacter | RawLine::NotUtf8 => bad += 1,
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

/// One line of a JSON-lines file as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawLine<'a> {
    Text(&'a str),
    /// Valid UTF-8 up to a character cut short at its end: a write cut
    /// inside a multi-byte character (free text such as a reason is written
    /// raw), i.e. a torn line.
    CutInCharacter,
    /// Invalid UTF-8 before its end: damage, not a cut.
    NotUtf8,
}

/// The non-blank lines of `bytes` with their 1-based numbers, each decoded
/// on its own: one torn line never makes the rest of the file unreadable.
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, RawLine<'_>)> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let line = match std::str::from_utf8(raw) {
                Ok(t) => RawLine::Text(t),
                Err(e) if e.error_len().is_none() => RawLine::CutInCharacter,
                Err(_) => RawLine::NotUtf8,
            };
            (i + 1, line)
        })
        .filter(|(_, l)| !matches!(l, RawLine::Text(t) if t.trim().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cut_inside_a_character_is_torn_and_the_rest_is_read() {
        let d = tempfile::tempdir().expect("tempdir");
        let l = Ledger::new(d.path().join("ledger.jsonl"));
        l.append("judgment", serde_json::json!({"reason": "p50 doubl\u{e9}"}))
            .expect("append");
        let cut = "{\"kind\":\"judgment\",\"reason\":\"doubl\u{e9}\"}";
        let cut = &cut.as_bytes()[..cut.find('\u{e9}').expect("é") + 1];
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(l.path())
            .expect("open");
        std::io::Write::write_all(&mut f, cut).expect("torn append");
        l.append("deploy", serde_json::json!({"release": "r2"}))
            .expect("append after the cut");
        let (recs, bad) = l.read().expect("the ledger stays readable");
        assert_eq!((recs.len(), bad), (2, 1));
        assert_eq!(recs[1]["release"], "r2");
        let bytes = fs::read(l.path()).expect("read");
        let kinds: Vec<_> = lines(&bytes)
            .map(|(n, l)| (n, matches!(l, RawLine::Text(_))))
            .collect();
        assert_eq!(kinds, [(1, true), (2, false), (3, true)]);
        assert_eq!(
            lines(b"{\"a\":\"\xff\"}\n").next().map(|x| x.1),
            Some(RawLine::NotUtf8)
        );
    }

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
