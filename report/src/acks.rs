//! Who acknowledged each incident, and how far it escalated, from the
//! ledger records notify writes (issue 19): `acknowledgement` (`by`, `at`,
//! `note`, `incident`) and `escalation` (`level_number`, `incident`). An
//! incident is known by its record's file stem (`incident_<env>_<time>`),
//! the id `notify ack --incident` takes.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::history::{parse_ts, Record};

/// Ledger kinds written by notify.
pub const ACK: &str = "acknowledgement";
pub const ESCALATION: &str = "escalation";

/// The first acknowledgement of one incident (notify keeps the first: a
/// second ack writes no record, but an older ledger may hold one).
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub by: String,
    /// As notify wrote it.
    pub at: String,
    pub time: Option<DateTime<Utc>>,
    pub note: Option<String>,
}

/// Acknowledgements and highest escalation level per incident id.
#[derive(Debug, Default)]
pub struct Acks {
    acks: BTreeMap<String, Ack>,
    levels: BTreeMap<String, u32>,
}

impl Acks {
    /// From the ledger's records up to `until` (a report as of its end).
    pub fn from_records(records: &[Record], until: DateTime<Utc>) -> Acks {
        let mut out = Acks::default();
        for r in records.iter().filter(|r| r.ts <= until) {
            let Some(id) = r.str("incident") else {
                continue;
            };
            match r.kind.as_str() {
                ACK => {
                    let Some(by) = r.str("by") else { continue };
                    let at = r
                        .str("at")
                        .map(str::to_string)
                        .unwrap_or_else(|| crate::figures::rfc3339(r.ts));
                    out.acks.entry(id.to_string()).or_insert(Ack {
                        by: by.to_string(),
                        time: parse_ts(&at),
                        at,
                        note: r.str("note").map(str::to_string),
                    });
                }
                ESCALATION => {
                    let level = r
                        .i64("level_number")
                        .and_then(|l| u32::try_from(l).ok())
                        .unwrap_or(0);
                    let e = out.levels.entry(id.to_string()).or_insert(level);
                    *e = (*e).max(level);
                }
                _ => {}
            }
        }
        out
    }

    pub fn ack(&self, id: &str) -> Option<&Ack> {
        self.acks.get(id)
    }

    /// The highest level an escalation record names for the incident.
    pub fn level(&self, id: &str) -> Option<u32> {
        self.levels.get(id).copied().filter(|l| *l > 0)
    }
}

/// The incident id of a record file: its stem, as notify names it.
pub fn incident_id(record: &Path) -> Option<String> {
    record.file_stem().map(|s| s.to_string_lossy().into_owned())
}

/// Seconds from `from` to the acknowledgement.
pub fn seconds(from: Option<DateTime<Utc>>, ack: &Ack) -> Option<f64> {
    Some((ack.time? - from?).num_milliseconds() as f64 / 1000.0)
}

/// "alice at 2026-…Z" for pages and tables; "not acknowledged" otherwise.
pub fn describe(ack: Option<&Ack>) -> String {
    match ack {
        Some(a) => format!(
            "{} at {}{}",
            a.by,
            a.at,
            a.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
        None => "not acknowledged".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(line: &str) -> Record {
        let raw: serde_json::Value = serde_json::from_str(line).expect("json");
        Record {
            ts: parse_ts(raw["ts"].as_str().expect("ts")).expect("time"),
            kind: raw["kind"].as_str().expect("kind").to_string(),
            raw,
        }
    }

    #[test]
    fn first_ack_and_highest_level_per_incident() {
        let records = [
            rec(
                r#"{"ts":"2026-12-02T08:00:00Z","kind":"escalation","incident":"i1","level_number":2}"#,
            ),
            rec(
                r#"{"ts":"2026-12-02T08:01:00Z","kind":"escalation","incident":"i1","level_number":3}"#,
            ),
            rec(
                r#"{"ts":"2026-12-02T08:02:00Z","kind":"acknowledgement","incident":"i1","by":"alice","at":"2026-12-02T08:02:00.250Z"}"#,
            ),
            rec(
                r#"{"ts":"2026-12-02T08:03:00Z","kind":"acknowledgement","incident":"i1","by":"bob","at":"2026-12-02T08:03:00Z"}"#,
            ),
            rec(
                r#"{"ts":"2026-12-02T08:04:00Z","kind":"acknowledgement","incident":null,"by":"carol"}"#,
            ),
            rec(
                r#"{"ts":"2026-12-02T09:00:00Z","kind":"acknowledgement","incident":"i2","by":"late"}"#,
            ),
        ];
        let until = parse_ts("2026-12-02T08:30:00Z").expect("until");
        let a = Acks::from_records(&records, until);
        let ack = a.ack("i1").expect("acked");
        assert_eq!(ack.by, "alice");
        assert_eq!(a.level("i1"), Some(3));
        assert_eq!(a.ack("i2"), None, "after the period's end");
        assert_eq!(a.level("i2"), None);
        let from = parse_ts("2026-12-02T08:00:00Z");
        assert_eq!(seconds(from, ack), Some(120.25));
    }
}
