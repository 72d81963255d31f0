//! The figures of seed 002, computed from the history: deployments and
//! their outcome, success rate, auto-rollbacks, MTTR per incident,
//! violations per gate, time under watch and the false-positive rate.
//! Pure functions of the records read (plus the events files of the watches
//! that rolled back): no I/O beyond reading those files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::acks::{self, Acks};
use crate::history::{self, parse_ts, ts_of_ms, Record, WatchEvent};

/// The period a report covers: records with `since <= ts <= until`.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl Period {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.since <= t && t <= self.until
    }
    pub fn weeks(&self) -> f64 {
        (self.until - self.since).num_milliseconds() as f64 / (7.0 * 86_400_000.0)
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How a deployment ended, as the records tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Live, and its watch passed.
    Succeeded,
    /// The deploy itself failed (and was recovered by deploy_dhash).
    Failed,
    /// Rolled back: by its watch, or by an operator.
    RolledBack,
    /// Its watch rolled it back and the rollback failed.
    RollbackFailed,
    /// Its watch ended without a verdict (inconclusive, interrupted).
    Inconclusive,
    /// A newer deploy replaced it while it was watched.
    Superseded,
    /// Its watch has not closed its window (still running, or killed).
    Watching,
    /// Live, and no watch of it was recorded.
    Unwatched,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::RollbackFailed => "rollback-failed",
            Outcome::Inconclusive => "inconclusive",
            Outcome::Superseded => "superseded",
            Outcome::Watching => "watching",
            Outcome::Unwatched => "unwatched",
        }
    }
    /// Whether the outcome counts in the success rate: a verdict was reached.
    fn decided(self) -> bool {
        matches!(
            self,
            Outcome::Succeeded | Outcome::Failed | Outcome::RolledBack | Outcome::RollbackFailed
        )
    }
    fn of_watch(result: Option<&str>) -> Outcome {
        match result {
            Some("passed") => Outcome::Succeeded,
            Some("rolled-back") => Outcome::RolledBack,
            Some("rollback-failed") => Outcome::RollbackFailed,
            Some("superseded") => Outcome::Superseded,
            Some(_) => Outcome::Inconclusive,
            None => Outcome::Watching,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeployRow {
    pub ts: String,
    pub release: Option<String>,
    pub tag: Option<String>,
    pub from: Option<String>,
    pub outcome: Outcome,
    pub watch_result: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchRow {
    pub release: Option<String>,
    pub window_start: String,
    /// When the window was closed (the closing record's time).
    pub window_end: Option<String>,
    pub seconds: Option<f64>,
    pub result: Option<String>,
    pub events: Option<PathBuf>,
    #[serde(skip)]
    start_ms: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackRow {
    /// The rollback record's time: its id for `report_dhash mark`.
    pub ts: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub result: String,
    pub auto: bool,
    pub reason: Option<String>,
    pub seconds_to_healthy: Option<f64>,
    /// The latest `report_dhash mark` verdict: "unnecessary" or "necessary".
    pub verdict: Option<String>,
    pub verdict_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncidentRow {
    pub release: Option<String>,
    pub result: String,
    pub gate: Option<String>,
    /// The violating sample's time.
    pub detected: Option<String>,
    pub rollback_started: Option<String>,
    /// The last of the required consecutive OK health checks after the restore.
    pub resolved: Option<String>,
    pub mttr_seconds: Option<f64>,
    pub rollback: Option<String>,
    pub incident_record: Option<PathBuf>,
    pub events: Option<PathBuf>,
    /// Why a time is missing, when one is.
    pub note: Option<String>,
    /// Who acknowledged the incident (`notify ack`), and when (issue 19).
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
    /// From the rollback's start (else the detection) to the acknowledgement.
    pub ack_seconds: Option<f64>,
    /// The highest escalation level notify reached for this incident.
    pub escalation_level: Option<u32>,
}

/// One figure; `value` None means it cannot be derived, `why` says why.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: &'static str,
    pub labels: BTreeMap<&'static str, String>,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub help: &'static str,
    pub why: Option<String>,
}

impl Figure {
    fn new(name: &'static str, unit: &'static str, help: &'static str, value: f64) -> Figure {
        Figure {
            name,
            labels: BTreeMap::new(),
            value: Some(value),
            unit,
            help,
            why: None,
        }
    }
    fn or_why(
        name: &'static str,
        unit: &'static str,
        help: &'static str,
        value: Option<f64>,
        why: &str,
    ) -> Figure {
        let mut f = Figure::new(name, unit, help, 0.0);
        f.value = value;
        f.why = value.is_none().then(|| why.to_string());
        f
    }
    fn label(mut self, k: &'static str, v: impl Into<String>) -> Figure {
        self.labels.insert(k, v.into());
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub env: String,
    pub since: String,
    pub until: String,
    pub deploys: Vec<DeployRow>,
    pub watches: Vec<WatchRow>,
    pub rollbacks: Vec<RollbackRow>,
    pub incidents: Vec<IncidentRow>,
    pub figures: Vec<Figure>,
    /// The ledger's torn lines that were skipped (see `history::LedgerRead`).
    pub ledger_torn_lines: Vec<usize>,
}

/// Where the report finds the files the ledger names.
pub struct Inputs<'a> {
    pub env: &'a str,
    pub records: &'a [Record],
    pub log_dir: &'a Path,
    pub period: Period,
    pub torn_lines: &'a [usize],
}

pub fn build(inp: &Inputs<'_>) -> Report {
    let watches = watches(inp.records, inp.period);
    let mut rollbacks = rollbacks(inp.records, inp.period);
    let incidents = incidents(inp, &watches, &mut rollbacks);
    let deploys = deploys(inp.records, inp.period, &watches, &rollbacks);
    let mut figures = deploy_figures(&deploys, &rollbacks, inp.period);
    figures.extend(mttr_figures(&incidents));
    figures.extend(ack_figures(&incidents));
    figures.extend(false_positive_figures(&rollbacks));
    figures.extend(gate_figures(inp.records, inp.period));
    figures.extend(watch_figures(&watches));
    figures.push(Figure::new(
        "ledger_torn_lines",
        "lines",
        "Torn ledger lines (writes cut short) the report skipped.",
        inp.torn_lines.len() as f64,
    ));
    Report {
        env: inp.env.to_string(),
        since: rfc3339(inp.period.since),
        until: rfc3339(inp.period.until),
        deploys,
        watches,
        rollbacks,
        incidents,
        figures,
        ledger_torn_lines: inp.torn_lines.to_vec(),
    }
}

fn of_kind<'r>(records: &'r [Record], kind: &'r str) -> impl Iterator<Item = &'r Record> + 'r {
    records.iter().filter(move |r| r.kind == kind)
}

/// Monitor windows started in the period: the started record joined with the
/// last record that closed the same window (a continued window closes once).
fn watches(records: &[Record], period: Period) -> Vec<WatchRow> {
    let mut rows: Vec<WatchRow> = Vec::new();
    for r in of_kind(records, history::MONITOR) {
        let Some(start_ms) = r.i64("window_start_ms") else {
            continue;
        };
        let release = r.str("release").map(str::to_string);
        let idx = rows
            .iter()
            .position(|w| w.start_ms == start_ms && w.release == release);
        let idx = match idx {
            Some(i) => i,
            None => {
                let Some(start) = ts_of_ms(start_ms).filter(|t| period.contains(*t)) else {
                    continue;
                };
                rows.push(WatchRow {
                    release,
                    window_start: rfc3339(start),
                    window_end: None,
                    seconds: None,
                    result: None,
                    events: None,
                    start_ms,
                });
                rows.len() - 1
            }
        };
        let w = &mut rows[idx];
        w.events = r.str("events").map(PathBuf::from).or(w.events.take());
        if r.str("state").is_some_and(|s| s != "started") {
            w.window_end = Some(rfc3339(r.ts));
            w.seconds = Some((r.ts.timestamp_millis() - start_ms) as f64 / 1000.0);
            w.result = r.str("result").map(str::to_string);
        }
    }
    rows
}

/// A rollback acted on a gate violation: the monitor's reason ("quality
/// gate X violated: ...") or `--on-violation`'s ("X violated: ...").
fn is_auto(reason: Option<&str>) -> bool {
    reason.is_some_and(|r| r.contains(" violated: ") || r.starts_with("quality gate "))
}

/// Rollbacks that touched the environment (skipped ones did nothing), with
/// the latest verdict recorded by `report_dhash mark` (of any time).
fn rollbacks(records: &[Record], period: Period) -> Vec<RollbackRow> {
    let mut verdicts: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for r in of_kind(records, history::REVIEW) {
        if let (Some(id), Some(v)) = (r.str("rollback_ts"), r.str("verdict")) {
            verdicts.insert(
                id.to_string(),
                (v.to_string(), r.str("reason").map(str::to_string)),
            );
        }
    }
    of_kind(records, history::ROLLBACK)
        .filter(|r| period.contains(r.ts))
        .filter(|r| matches!(r.str("result"), Some("completed") | Some("failed")))
        .map(|r| {
            let ts = r.str("ts").unwrap_or_default().to_string();
            let verdict = verdicts.get(&ts).cloned();
            RollbackRow {
                from: r.str("from").map(str::to_string),
                to: r.str("release").map(str::to_string),
                result: r.str("result").unwrap_or_default().to_string(),
                auto: is_auto(r.str("reason")),
                reason: r.str("reason").map(str::to_string),
                seconds_to_healthy: r.f64("seconds_to_healthy"),
                verdict: verdict.as_ref().map(|v| v.0.clone()),
                verdict_reason: verdict.and_then(|v| v.1),
                ts,
            }
        })
        .collect()
}

/// Each deployment that went live or failed in the period, with its outcome:
/// the result of the first watch of it that started after it, else a
/// rollback of it before the next deployment, else unwatched.
fn deploys(
    records: &[Record],
    period: Period,
    watches: &[WatchRow],
    rollbacks: &[RollbackRow],
) -> Vec<DeployRow> {
    let done: Vec<&Record> = of_kind(records, history::DEPLOY)
        .filter(|r| matches!(r.str("result"), Some("healthy") | Some("failed")))
        .collect();
    let mut rows = Vec::new();
    for (i, r) in done.iter().enumerate() {
        if !period.contains(r.ts) {
            continue;
        }
        let next_ms = done.get(i + 1).map(|n| n.ts.timestamp_millis());
        let started_ms = r
            .str("started_at")
            .and_then(parse_ts)
            .unwrap_or(r.ts)
            .timestamp_millis();
        let release = r.str("release").map(str::to_string);
        let (outcome, watch_result) = match r.str("result") {
            Some("failed") => (Outcome::Failed, None),
            _ => live_outcome(&release, started_ms, next_ms, watches, rollbacks, r.ts),
        };
        rows.push(DeployRow {
            ts: rfc3339(r.ts),
            release,
            tag: r.str("tag").map(str::to_string),
            from: r.str("from").map(str::to_string),
            outcome,
            watch_result,
        });
    }
    rows
}

fn live_outcome(
    release: &Option<String>,
    started_ms: i64,
    next_ms: Option<i64>,
    watches: &[WatchRow],
    rollbacks: &[RollbackRow],
    deployed: DateTime<Utc>,
) -> (Outcome, Option<String>) {
    let before_next = |ms: i64| next_ms.is_none_or(|n| ms < n);
    let watch = watches
        .iter()
        .find(|w| &w.release == release && w.start_ms >= started_ms && before_next(w.start_ms));
    if let Some(w) = watch {
        return (Outcome::of_watch(w.result.as_deref()), w.result.clone());
    }
    let rolled_back = rollbacks.iter().any(|rb| {
        rb.from == *release
            && rb.result == "completed"
            && parse_ts(&rb.ts).is_some_and(|t| t >= deployed && before_next(t.timestamp_millis()))
    });
    match rolled_back {
        true => (Outcome::RolledBack, None),
        false => (Outcome::Unwatched, None),
    }
}

/// The times of one incident, from its watch's events: the violating
/// sample, the rollback's start, and the last of the consecutive OK health
/// checks the restore required.
#[derive(Debug, Default, PartialEq)]
pub struct IncidentTimes {
    pub gate: Option<String>,
    pub detected: Option<DateTime<Utc>>,
    pub rollback_started: Option<DateTime<Utc>>,
    pub resolved: Option<DateTime<Utc>>,
}

pub fn incident_times(events: &[WatchEvent]) -> IncidentTimes {
    let mut t = IncidentTimes::default();
    let mut i = 0;
    let trigger = events
        .iter()
        .position(|e| e.event == "gate.violated" && e.str("action") == Some("auto-rollback"));
    if let Some(k) = trigger {
        t.gate = events[k].str("gate").map(str::to_string);
        t.detected = events[k].str("sample_ts").and_then(parse_ts);
        i = k;
    }
    let started = events[i..]
        .iter()
        .position(|e| e.event == "rollback.started")
        .map(|k| k + i);
    if let Some(k) = started {
        t.rollback_started = events[k].time();
        t.resolved = events[k..]
            .iter()
            .find(|e| {
                let n = |f: &str| e.fields.get(f).and_then(serde_json::Value::as_u64);
                e.event == "health.checked"
                    && matches!((n("consecutive_ok"), n("required")), (Some(c), Some(r)) if c >= r)
            })
            .and_then(WatchEvent::time);
    }
    t
}

/// Watches that ended in a rollback, each an incident, with its MTTR.
fn incidents(
    inp: &Inputs<'_>,
    watches: &[WatchRow],
    rollbacks: &mut [RollbackRow],
) -> Vec<IncidentRow> {
    let records = history::incident_records(inp.log_dir, inp.env);
    let acks = Acks::from_records(inp.records, inp.period.until);
    watches
        .iter()
        .filter(|w| matches!(w.result.as_deref(), Some("rolled-back" | "rollback-failed")))
        .map(|w| {
            let mut row = incident_of(w, rollbacks, &records);
            acknowledge(&mut row, &acks);
            row
        })
        .collect()
}

/// The row's acknowledgement and escalation level, by its record's id.
fn acknowledge(row: &mut IncidentRow, acks: &Acks) {
    let Some(id) = row.incident_record.as_deref().and_then(acks::incident_id) else {
        return;
    };
    row.escalation_level = acks.level(&id);
    let Some(ack) = acks.ack(&id) else { return };
    let from = row
        .rollback_started
        .as_deref()
        .or(row.detected.as_deref())
        .and_then(parse_ts);
    row.acknowledged_by = Some(ack.by.clone());
    row.acknowledged_at = Some(ack.at.clone());
    row.ack_seconds = acks::seconds(from, ack);
}

fn incident_of(
    w: &WatchRow,
    rollbacks: &mut [RollbackRow],
    records: &[(PathBuf, Option<String>)],
) -> IncidentRow {
    let (times, note) = match &w.events {
        None => (
            IncidentTimes::default(),
            Some("the watch recorded no events file".to_string()),
        ),
        Some(p) => match history::read_events(p) {
            Ok(evs) => (incident_times(&evs), None),
            Err(e) => (IncidentTimes::default(), Some(format!("{e:#}"))),
        },
    };
    let mttr = crate::mttr_of(&times);
    let note = note.or_else(|| match (&times.detected, &times.resolved) {
        (None, _) => Some("no auto-rollback violation in the watch's events".into()),
        (_, None) => Some("no return to health recorded after the rollback".into()),
        _ => None,
    });
    let end = w.window_end.as_deref().and_then(parse_ts);
    let mut rollback = rollbacks.iter_mut().find(|rb| {
        rb.from == w.release
            && parse_ts(&rb.ts)
                .is_some_and(|t| t.timestamp_millis() >= w.start_ms && end.is_none_or(|e| t <= e))
    });
    if let Some(rb) = rollback.as_deref_mut() {
        rb.auto = true;
    }
    let detected = times.detected.map(rfc3339);
    IncidentRow {
        release: w.release.clone(),
        result: w.result.clone().unwrap_or_default(),
        gate: times.gate,
        incident_record: records
            .iter()
            .find(|(_, d)| d.is_some() && *d == detected)
            .map(|(p, _)| p.clone()),
        detected,
        rollback_started: times.rollback_started.map(rfc3339),
        resolved: times.resolved.map(rfc3339),
        mttr_seconds: mttr,
        rollback: rollback.map(|rb| rb.ts.clone()),
        events: w.events.clone(),
        note,
        acknowledged_by: None,
        acknowledged_at: None,
        ack_seconds: None,
        escalation_level: None,
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn deploy_figures(deploys: &[DeployRow], rollbacks: &[RollbackRow], period: Period) -> Vec<Figure> {
    let count = |o: Outcome| deploys.iter().filter(|d| d.outcome == o).count();
    let mut out = vec![Figure::new(
        "deployments",
        "deployments",
        "Deployments that went live or failed in the period.",
        deploys.len() as f64,
    )];
    for o in [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::RolledBack,
        Outcome::RollbackFailed,
        Outcome::Inconclusive,
        Outcome::Superseded,
        Outcome::Watching,
        Outcome::Unwatched,
    ] {
        out.push(
            Figure::new(
                "deployments_by_outcome",
                "deployments",
                "Deployments in the period by outcome.",
                count(o) as f64,
            )
            .label("outcome", o.as_str()),
        );
    }
    let decided = deploys.iter().filter(|d| d.outcome.decided()).count();
    out.push(Figure::or_why(
        "deployment_success_ratio",
        "ratio",
        "Succeeded deployments over those with a verdict (succeeded, failed, rolled back).",
        ratio(count(Outcome::Succeeded), decided),
        "no deployment in the period reached a verdict",
    ));
    let auto = rollbacks.iter().filter(|r| r.auto).count();
    out.push(Figure::new(
        "rollbacks",
        "rollbacks",
        "Rollbacks (completed or failed) in the period.",
        rollbacks.len() as f64,
    ));
    out.push(Figure::new(
        "auto_rollbacks",
        "rollbacks",
        "Rollbacks in the period that acted on a gate violation.",
        auto as f64,
    ));
    out.push(Figure::or_why(
        "auto_rollbacks_per_deployment",
        "ratio",
        "Auto-rollbacks per deployment in the period.",
        ratio(auto, deploys.len()),
        "no deployment in the period",
    ));
    let weeks = period.weeks();
    out.push(Figure::or_why(
        "auto_rollbacks_per_week",
        "rollbacks/week",
        "Auto-rollbacks per week of the period.",
        (weeks > 0.0).then(|| auto as f64 / weeks),
        "the period is empty",
    ));
    out
}

fn mttr_figures(incidents: &[IncidentRow]) -> Vec<Figure> {
    let mut secs: Vec<f64> = incidents.iter().filter_map(|i| i.mttr_seconds).collect();
    secs.sort_by(f64::total_cmp);
    let why = if incidents.is_empty() {
        "no incident in the period".to_string()
    } else {
        "no incident in the period has both its detection and its return to health recorded"
            .to_string()
    };
    let mean = (!secs.is_empty()).then(|| secs.iter().sum::<f64>() / secs.len() as f64);
    let median = (!secs.is_empty()).then(|| {
        let m = secs.len() / 2;
        match secs.len() % 2 {
            0 => (secs[m - 1] + secs[m]) / 2.0,
            _ => secs[m],
        }
    });
    let help =
        "Time from the violating sample to the last required OK health check after the restore.";
    vec![
        Figure::new(
            "incidents",
            "incidents",
            "Watches in the period that ended in a rollback.",
            incidents.len() as f64,
        ),
        Figure::new(
            "incidents_measured",
            "incidents",
            "Incidents whose MTTR could be derived from the watch's events.",
            secs.len() as f64,
        ),
        Figure::or_why("mttr_mean_seconds", "seconds", help, mean, &why),
        Figure::or_why("mttr_median_seconds", "seconds", help, median, &why),
        Figure::or_why(
            "mttr_worst_seconds",
            "seconds",
            help,
            secs.last().copied(),
            &why,
        ),
    ]
}

/// Unacknowledged incidents, and the median time to acknowledge (never a
/// 0 when nothing was acknowledged: unavailable, with why).
fn ack_figures(incidents: &[IncidentRow]) -> Vec<Figure> {
    let unacked = incidents
        .iter()
        .filter(|i| i.acknowledged_by.is_none())
        .count();
    let mut secs: Vec<f64> = incidents.iter().filter_map(|i| i.ack_seconds).collect();
    secs.sort_by(f64::total_cmp);
    let why = if incidents.is_empty() {
        "no incident in the period"
    } else if unacked == incidents.len() {
        "no incident in the period was acknowledged (notify ack)"
    } else {
        "no acknowledged incident has a rollback or detection time to measure from"
    };
    vec![
        Figure::new(
            "incidents_unacknowledged",
            "incidents",
            "Incidents in the period nobody acknowledged (notify ack).",
            unacked as f64,
        ),
        Figure::or_why(
            "ack_median_seconds",
            "seconds",
            "Median time from the rollback's start to the incident's acknowledgement.",
            median(&secs),
            why,
        ),
    ]
}

/// The median of sorted values.
fn median(sorted: &[f64]) -> Option<f64> {
    let m = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        n if n % 2 == 0 => Some((sorted[m - 1] + sorted[m]) / 2.0),
        _ => Some(sorted[m]),
    }
}

fn false_positive_figures(rollbacks: &[RollbackRow]) -> Vec<Figure> {
    let auto: Vec<&RollbackRow> = rollbacks.iter().filter(|r| r.auto).collect();
    let unnecessary = auto
        .iter()
        .filter(|r| r.verdict.as_deref() == Some("unnecessary"))
        .count();
    vec![
        Figure::new(
            "rollbacks_marked_unnecessary",
            "rollbacks",
            "Auto-rollbacks in the period marked unnecessary with report_dhash mark.",
            unnecessary as f64,
        ),
        Figure::or_why(
            "false_positive_ratio",
            "ratio",
            "Auto-rollbacks marked unnecessary over all auto-rollbacks (unmarked ones count as necessary).",
            ratio(unnecessary, auto.len()),
            "no auto-rollback in the period",
        ),
    ]
}

/// Gate violations the monitor recorded in the ledger (auto-rollback causes
/// and alert onsets; dry runs left out), per gate.
fn gate_figures(records: &[Record], period: Period) -> Vec<Figure> {
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    for r in of_kind(records, history::GATE) {
        if period.contains(r.ts)
            && r.str("status") == Some("violated")
            && r.bool("dry_run") != Some(true)
        {
            *per.entry(r.str("gate").unwrap_or("unknown").to_string())
                .or_default() += 1;
        }
    }
    per.into_iter()
        .map(|(g, n)| {
            Figure::new(
                "gate_violations",
                "violations",
                "Gate violations recorded in the ledger (rollback causes and alert onsets).",
                n as f64,
            )
            .label("gate", g)
        })
        .collect()
}

/// Time each release spent under watch (closed windows only).
fn watch_figures(watches: &[WatchRow]) -> Vec<Figure> {
    let mut per: BTreeMap<String, f64> = BTreeMap::new();
    for w in watches {
        if let Some(s) = w.seconds {
            *per.entry(w.release.clone().unwrap_or_else(|| "unknown".into()))
                .or_default() += s;
        }
    }
    per.into_iter()
        .map(|(r, s)| {
            Figure::new(
                "watch_seconds",
                "seconds",
                "Time a release spent under watch (closed windows started in the period).",
                s,
            )
            .label("release", r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(by: Option<&str>, secs: Option<f64>) -> IncidentRow {
        IncidentRow {
            release: None,
            result: "rolled-back".into(),
            gate: None,
            detected: None,
            rollback_started: None,
            resolved: None,
            mttr_seconds: None,
            rollback: None,
            incident_record: None,
            events: None,
            note: None,
            acknowledged_by: by.map(str::to_string),
            acknowledged_at: None,
            ack_seconds: secs,
            escalation_level: None,
        }
    }

    #[test]
    fn ack_median_is_unavailable_not_zero_when_nothing_was_acked() {
        let f = ack_figures(&[row(None, None), row(None, None)]);
        assert_eq!(
            (f[0].name, f[0].value),
            ("incidents_unacknowledged", Some(2.0))
        );
        assert_eq!((f[1].name, f[1].value), ("ack_median_seconds", None));
        assert!(f[1]
            .why
            .as_deref()
            .is_some_and(|w| w.contains("acknowledged")));
        let f = ack_figures(&[
            row(Some("a"), Some(30.0)),
            row(Some("b"), Some(10.0)),
            row(None, None),
        ]);
        assert_eq!(f[0].value, Some(1.0));
        assert_eq!(f[1].value, Some(20.0));
    }

    fn ev(line: &str) -> WatchEvent {
        serde_json::from_str(line).expect("event")
    }

    #[test]
    fn incident_times_take_the_violating_sample_and_the_last_required_check() {
        let evs = [
            ev(
                r#"{"ts":"2026-01-01T00:00:01.000Z","event":"gate.violated","action":"alert","gate":"m","sample_ts":"2026-01-01T00:00:00.500Z"}"#,
            ),
            ev(
                r#"{"ts":"2026-01-01T00:00:03.000Z","event":"gate.violated","action":"auto-rollback","gate":"q","sample_ts":"2026-01-01T00:00:02.000Z"}"#,
            ),
            ev(r#"{"ts":"2026-01-01T00:00:04.000Z","event":"rollback.started"}"#),
            ev(
                r#"{"ts":"2026-01-01T00:00:05.000Z","event":"health.checked","consecutive_ok":2,"required":3}"#,
            ),
            ev(
                r#"{"ts":"2026-01-01T00:00:06.000Z","event":"health.checked","consecutive_ok":3,"required":3}"#,
            ),
        ];
        let t = incident_times(&evs);
        assert_eq!(t.gate.as_deref(), Some("q"));
        assert_eq!(t.detected, parse_ts("2026-01-01T00:00:02Z"));
        assert_eq!(t.resolved, parse_ts("2026-01-01T00:00:06Z"));
        assert_eq!(
            crate::mttr(&evs),
            Some(4.0),
            "sample at :02 to third OK at :06"
        );
        assert_eq!(crate::mttr(&evs[..4]), None, "no return to health yet");
    }

    #[test]
    fn auto_rollback_reasons() {
        assert!(is_auto(Some("quality gate q violated: too many")));
        assert!(is_auto(Some("q violated: too many")));
        assert!(!is_auto(Some("operator request")));
        assert!(!is_auto(None));
    }
}
