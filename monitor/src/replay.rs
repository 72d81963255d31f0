//! `--replay`: recorded telemetry through the same gate code, as fast as the
//! disk allows, for tuning thresholds on 24–72 h of data.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use gates_core::config::GateSpec;
use gates_core::gates::{Evaluator, Status};
use gates_core::{Emitter, Exit, Level};
use serde_json::json;

use crate::{decision_fields, gates_summary, telemetry, DecisionOutput, Summary};

pub fn run(
    em: &Emitter,
    gates: Vec<GateSpec>,
    path: &Path,
    output: DecisionOutput,
    decisions_csv: Option<&Path>,
) -> anyhow::Result<Exit> {
    em.emit(
        "replay.started",
        Level::Info,
        format!("replaying {}", path.display()),
        json!({"file": path.display().to_string(), "gates": gates_summary(&gates)}),
    );
    let started = std::time::Instant::now();
    let mut csv_out = match decisions_csv {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    if let Some(out) = csv_out.as_mut() {
        let mut header = String::from("t_ms");
        for g in &gates {
            header.push_str(&format!(",{0}_status,{0}_value", g.name));
        }
        writeln!(out, "{header}")?;
    }
    let specs = gates.clone();
    let mut ev = Evaluator::new(gates);
    let mut summary = Summary::default();
    let mut last: Vec<Option<Status>> = vec![None; ev.gates().len()];
    let mut prev_t = i64::MIN;
    for sample in telemetry::read_samples(path)? {
        let sample = sample?;
        if sample.t_ms < prev_t {
            anyhow::bail!(
                "{}: samples must be in time order (t_ms {} after {})",
                path.display(),
                sample.t_ms,
                prev_t
            );
        }
        prev_t = sample.t_ms;
        summary.samples += 1;
        let decisions = ev.observe(&sample);
        if let Some(out) = csv_out.as_mut() {
            write!(out, "{}", sample.t_ms)?;
            for d in &decisions {
                let v = d.value.map(|v| v.to_string()).unwrap_or_default();
                write!(out, ",{},{v}", d.status.as_str())?;
            }
            writeln!(out)?;
        }
        for (i, d) in decisions.into_iter().enumerate() {
            summary.add(&d);
            let changed = last[i].replace(d.status) != Some(d.status);
            let show = match output {
                DecisionOutput::All => true,
                DecisionOutput::Changes => changed,
                DecisionOutput::Summary => false,
            };
            if show {
                let level = if d.status == Status::Violated {
                    Level::Warning
                } else {
                    Level::Info
                };
                em.emit(
                    d.status.event_name(),
                    level,
                    d.reason.to_string(),
                    decision_fields(&d),
                );
            }
        }
    }
    if let Some(mut out) = csv_out {
        out.flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    // A replay decides nothing (no result, exit 0), but says which gates the
    // recording was too short (or too empty) to evaluate, as the live watch does.
    let never = summary.never_evaluated(&specs);
    let mut msg = format!("{} samples replayed in {secs:.2}s", summary.samples);
    if !never.is_empty() {
        msg.push_str(&format!(
            "; never evaluated: {}",
            never
                .iter()
                .map(|n| format!("{} ({})", n.gate, n.why))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    em.emit(
        "replay.completed",
        Level::Info,
        msg,
        json!({
            "samples": summary.samples,
            "seconds": secs,
            "never_evaluated": never.iter().map(crate::NeverEvaluated::to_json).collect::<Vec<_>>(),
            "gates": summary.to_json(),
        }),
    );
    Ok(Exit::Ok)
}
