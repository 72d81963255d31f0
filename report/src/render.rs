//! The report's outputs: JSON-lines events, a table for people, CSV, and
//! the Prometheus text exposition format for node_exporter's textfile
//! collector.

use std::fmt::Write as _;

use gates_core::{Emitter, Level};
use serde_json::{json, Value};

use crate::figures::{Figure, Report};

/// The events of a report, in order: the period, one per deployment,
/// watch, rollback and incident, then one per figure (a figure that cannot
/// be derived is `report.unavailable`, with why).
pub fn emit(report: &Report, em: &Emitter) {
    em.info(
        "report.period",
        format!("{} from {} to {}", report.env, report.since, report.until),
        json!({"since": report.since, "until": report.until}),
    );
    for &line in &report.ledger_torn_lines {
        em.emit(
            "report.ledger-torn",
            Level::Warning,
            torn_text(line),
            json!({"line": line}),
        );
    }
    for d in &report.deploys {
        let msg = format!(
            "{} {}",
            d.release.as_deref().unwrap_or("?"),
            d.outcome.as_str()
        );
        em.info("report.deploy", msg, to_value(d));
    }
    for w in &report.watches {
        let msg = format!("watch of {}", w.release.as_deref().unwrap_or("?"));
        em.info("report.watch", msg, to_value(w));
    }
    for r in &report.rollbacks {
        em.info("report.rollback", format!("rollback {}", r.ts), to_value(r));
    }
    for i in &report.incidents {
        let msg = match i.mttr_seconds {
            Some(s) => format!("incident: recovered in {s:.1}s"),
            None => format!("incident: {}", i.note.as_deref().unwrap_or("MTTR unknown")),
        };
        let msg = match &i.acknowledged_by {
            Some(by) => format!(
                "{msg}; acknowledged by {by} at {}",
                i.acknowledged_at.as_deref().unwrap_or("?")
            ),
            None => format!("{msg}; not acknowledged"),
        };
        em.info("report.incident", msg, to_value(i));
    }
    for f in &report.figures {
        match (&f.value, &f.why) {
            (Some(v), _) => em.info("report.figure", format!("{} {v}", f.name), to_value(f)),
            (None, why) => em.emit(
                "report.unavailable",
                Level::Warning,
                format!(
                    "{}: {}",
                    f.name,
                    why.as_deref().unwrap_or("cannot be derived")
                ),
                to_value(f),
            ),
        };
    }
}

fn torn_text(line: usize) -> String {
    format!(
        "ledger line {line} is torn (a write cut short) and was skipped; \
         the rest of the ledger was read"
    )
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn labels_text(f: &Figure) -> String {
    f.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn value_text(f: &Figure) -> String {
    match f.value {
        Some(v) if f.unit == "ratio" => format!("{:.1}%", v * 100.0),
        Some(v) if v.fract() == 0.0 => format!("{v:.0} {}", f.unit),
        Some(v) => format!("{v:.2} {}", f.unit),
        None => format!("n/a ({})", f.why.as_deref().unwrap_or("cannot be derived")),
    }
}

fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

/// A plain-text table for a terminal.
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dhash report: {} from {} to {}",
        report.env, report.since, report.until
    );
    for &line in &report.ledger_torn_lines {
        let _ = writeln!(s, "warning: {}", torn_text(line));
    }
    let _ = writeln!(s, "\nDeployments");
    for d in &report.deploys {
        let _ = writeln!(
            s,
            "  {:<26} {:<28} {}",
            d.ts,
            or_dash(d.release.as_deref()),
            d.outcome.as_str()
        );
    }
    let _ = writeln!(
        s,
        "\nIncidents (MTTR: violating sample to health proven after the restore)"
    );
    for i in &report.incidents {
        let mttr = i
            .mttr_seconds
            .map(|m| format!("{m:.1}s"))
            .unwrap_or_else(|| format!("n/a: {}", or_dash(i.note.as_deref())));
        let ack = match (&i.acknowledged_by, &i.acknowledged_at) {
            (Some(by), at) => format!(
                "acked by {by} at {}{}",
                or_dash(at.as_deref()),
                i.ack_seconds
                    .map(|a| format!(" (+{a:.1}s)"))
                    .unwrap_or_default()
            ),
            (None, _) => "not acknowledged".to_string(),
        };
        let level = i
            .escalation_level
            .map(|l| format!("; escalated to level {l}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<26} {:<28} {:<24} {mttr:<10} {ack}{level}",
            or_dash(i.detected.as_deref()),
            or_dash(i.release.as_deref()),
            or_dash(i.gate.as_deref())
        );
    }
    let _ = writeln!(
        s,
        "\nRollbacks (id = time; report_dhash mark --rollback <id>)"
    );
    for r in &report.rollbacks {
        let _ = writeln!(
            s,
            "  {:<26} {:<28} {:<10} {:<5} {}",
            r.ts,
            or_dash(r.from.as_deref()),
            r.result,
            if r.auto { "auto" } else { "manual" },
            or_dash(r.verdict.as_deref())
        );
    }
    let _ = writeln!(s, "\nFigures");
    for f in &report.figures {
        let name = match labels_text(f) {
            l if l.is_empty() => f.name.to_string(),
            l => format!("{}{{{l}}}", f.name),
        };
        let _ = writeln!(s, "  {name:<48} {}", value_text(f));
    }
    printable(&s)
}

/// Control characters (other than the line breaks the table is made of) and
/// bidirectional overrides, which a ledger string may carry and a terminal
/// would obey (retitle, clear the screen, reorder text), written out as Rust
/// escapes (`\u{1b}`) so the operator sees them instead.
fn printable(text: &str) -> String {
    let hostile = |c: char| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if hostile(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Figures as CSV: `figure,labels,value,unit,why`.
pub fn csv(report: &Report) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "env", "since", "until", "figure", "labels", "value", "unit", "why",
    ])?;
    for f in &report.figures {
        let value = f.value.map(|v| v.to_string()).unwrap_or_default();
        w.write_record([
            report.env.as_str(),
            &report.since,
            &report.until,
            f.name,
            &labels_text(f),
            &value,
            f.unit,
            f.why.as_deref().unwrap_or(""),
        ])?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

/// `\`, `"` and newlines escaped, as the exposition format wants label values.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text exposition format: one HELP/TYPE pair per metric name, every
/// sample labelled with `env`. Figures that cannot be derived are left out
/// (a missing series, not a fake zero).
pub fn prometheus(report: &Report, generated_unix: i64) -> String {
    let mut s = String::new();
    let mut seen: Vec<&str> = Vec::new();
    for f in report.figures.iter().filter(|f| f.value.is_some()) {
        if !seen.contains(&f.name) {
            seen.push(f.name);
            let _ = writeln!(s, "# HELP dhash_{} {}", f.name, escape_help(f.help));
            let _ = writeln!(s, "# TYPE dhash_{} gauge", f.name);
            for g in report.figures.iter().filter(|g| g.name == f.name) {
                if let Some(v) = g.value {
                    let mut labels = format!("env=\"{}\"", escape(&report.env));
                    for (k, val) in &g.labels {
                        let _ = write!(labels, ",{k}=\"{}\"", escape(val));
                    }
                    let _ = writeln!(s, "dhash_{}{{{labels}}} {v}", g.name);
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "# HELP dhash_report_generated_timestamp_seconds When report_dhash wrote this file."
    );
    let _ = writeln!(s, "# TYPE dhash_report_generated_timestamp_seconds gauge");
    let _ = writeln!(
        s,
        "dhash_report_generated_timestamp_seconds{{env=\"{}\"}} {generated_unix}",
        escape(&report.env)
    );
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}
