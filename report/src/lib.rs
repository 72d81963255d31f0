//! `report_dhash`: the operation's key figures (seed 002) from what the
//! tools already record: the environment's ledger, the watches' events files
//! and the incident records. `report_dhash mark` records an operator's
//! verdict on a rollback (unnecessary or not) as a new ledger record; no
//! existing line is ever edited.

pub mod acks;
pub mod cli;
pub mod figures;
pub mod history;
pub mod page;
pub mod render;
pub mod roles;
pub mod window;

use std::path::Path;
use std::time::Duration;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use gates_core::config::EnvConfig;
use gates_core::exit::usage_error;
use gates_core::Emitter;
use serde_json::json;

pub use figures::{incident_times, IncidentTimes, Period, Report};
pub use history::{read_events, WatchEvent};

pub const TOOL: &str = "report_dhash";

/// How far back a report looks by default.
pub const DEFAULT_SINCE: &str = "30d";

/// A time as the flags take it: RFC 3339 (`2026-11-01T00:00:00Z`), a date
/// (`2026-11-01`, midnight UTC), or a duration before `now` (`30d`, `12h`).
pub fn parse_time(text: &str, now: DateTime<Utc>, flag: &str) -> anyhow::Result<DateTime<Utc>> {
    let t = text.trim();
    if let Some(ts) = history::parse_ts(t) {
        return Ok(ts);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(dt) = d.and_hms_opt(0, 0, 0) {
            return Ok(dt.and_utc());
        }
    }
    let ago: Duration = gates_core::duration::parse_duration(t).map_err(|e| {
        usage_error(format!(
            "{flag} {t:?}: not a time ({e}); give a duration back from now (30d, 12h), \
             a date (2026-11-01) or an RFC 3339 time (2026-11-01T09:00:00Z)"
        ))
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| {
            usage_error(format!(
                "{flag} {t:?} reaches before any representable time"
            ))
        })
}

/// The period of `--since`/`--until` (default: the last 30 days up to now).
pub fn period(
    since: Option<&str>,
    until: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<Period> {
    let until = match until {
        Some(u) => parse_time(u, now, "--until")?,
        None => now,
    };
    let since = parse_time(since.unwrap_or(DEFAULT_SINCE), until, "--since")?;
    if since > until {
        return Err(usage_error(format!(
            "--since ({}) is after --until ({}): the period is empty",
            figures::rfc3339(since),
            figures::rfc3339(until)
        )));
    }
    Ok(Period { since, until })
}

/// MTTR in seconds, the one definition every figure, page and benchmark
/// uses: from detection (the time of the sample that violated an
/// auto-rollback gate) to resolution (the health check after the restore
/// that completed the required run of consecutive OK checks, the third by
/// default). None when the watch's events hold no such violation or no
/// such return to health.
pub fn mttr(events: &[WatchEvent]) -> Option<f64> {
    mttr_of(&incident_times(events))
}

/// [`mttr`] of incident times already extracted.
pub fn mttr_of(times: &IncidentTimes) -> Option<f64> {
    let (detected, resolved) = (times.detected?, times.resolved?);
    Some((resolved - detected).num_milliseconds() as f64 / 1000.0)
}

/// Reads the environment's history and computes the report for `period`.
pub fn report(env: &EnvConfig, period: Period) -> anyhow::Result<Report> {
    let ledger = history::read_ledger_noting(&env.ledger_path())?;
    Ok(figures::build(&figures::Inputs {
        env: &env.name,
        records: &ledger.records,
        log_dir: &env.log_dir,
        period,
        torn_lines: &ledger.torn_lines,
    }))
}

/// Writes the Prometheus textfile atomically (node_exporter never reads a
/// half-written file).
pub fn write_textfile(report: &Report, path: &Path) -> anyhow::Result<()> {
    let text = render::prometheus(report, Utc::now().timestamp());
    gates_core::fsutil::write_atomic(path, text.as_bytes())
}

/// The operator's verdict on one rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unnecessary,
    Necessary,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unnecessary => "unnecessary",
            Verdict::Necessary => "necessary",
        }
    }
}

/// The id (record time) of the rollback `wanted` names: its exact time, or
/// a prefix of it that only one rollback record has (`2026-11-23T09:4`).
pub fn find_rollback(env: &EnvConfig, wanted: &str) -> anyhow::Result<String> {
    let records = history::read_ledger(&env.ledger_path())?;
    let ids: Vec<String> = records
        .iter()
        .filter(|r| r.kind == history::ROLLBACK)
        .filter(|r| matches!(r.str("result"), Some("completed") | Some("failed")))
        .filter_map(|r| r.str("ts").map(str::to_string))
        .collect();
    if let Some(id) = ids.iter().find(|id| id.as_str() == wanted) {
        return Ok(id.clone());
    }
    let matching: Vec<&String> = ids.iter().filter(|id| id.starts_with(wanted)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(usage_error(format!(
            "no rollback of {} is recorded at {wanted:?}; the rollbacks are: {}",
            env.name,
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
        ))),
        many => Err(usage_error(format!(
            "{wanted:?} names {} rollbacks of {} ({}); give more of the time",
            many.len(),
            env.name,
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Appends the verdict as a `rollback-review` ledger record (the latest
/// verdict on a rollback is the one the report uses).
pub fn mark(
    env: &EnvConfig,
    rollback: &str,
    verdict: Verdict,
    reason: Option<&str>,
    em: &Emitter,
) -> anyhow::Result<()> {
    // As rollback_dhash --mark-unnecessary: a reason given must say something.
    if reason.is_some_and(|r| r.trim().is_empty()) {
        return Err(usage_error(
            "--reason is empty: say why (it is recorded), or leave --reason out",
        ));
    }
    let id = find_rollback(env, rollback)?;
    let fields =
        json!({"env": env.name, "rollback_ts": id, "verdict": verdict.as_str(), "reason": reason});
    env.ledger()
        .append(history::REVIEW, fields.clone())
        .map_err(|e| {
            anyhow!(
                "cannot record the verdict in {}: {e:#}",
                env.ledger_path().display()
            )
        })?;
    em.info(
        "report.marked",
        format!("rollback {id} of {} marked {}", env.name, verdict.as_str()),
        fields,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_three_spellings_and_bad_ones_refused() {
        let now = history::parse_ts("2026-12-02T00:00:00Z").expect("now");
        let p = |s: &str| parse_time(s, now, "--since");
        assert_eq!(p("30d").ok(), history::parse_ts("2026-11-02T00:00:00Z"));
        assert_eq!(
            p("2026-11-01").ok(),
            history::parse_ts("2026-11-01T00:00:00Z")
        );
        assert_eq!(
            p("2026-11-01T09:00:00Z").ok(),
            history::parse_ts("2026-11-01T09:00:00Z")
        );
        let e = p("yesterday").expect_err("refused");
        assert!(format!("{e:#}").contains("--since \"yesterday\""), "{e:#}");
        assert_eq!(gates_core::exit::exit_for(&e), gates_core::Exit::Usage);
        assert!(period(Some("2026-12-01"), Some("2026-11-01"), now).is_err());
    }
}
