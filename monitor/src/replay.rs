//! `--replay`: recorded telemetry through the same gate code, as fast as the
//! disk allows, for tuning thresholds on 24–72 h of data.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use gates_core::config::GateSpec;
use gates_core::gates::{Decision, Evaluator, Status};
use gates_core::{Emitter, Exit, Level};
use serde_json::json;

use crate::{decision_fields, gates_summary, telemetry, DecisionOutput, Summary};

pub fn run(
    em: &Emitter,
    gates: Vec<GateSpec>,
    baselines: Vec<Option<std::sync::Arc<gates_core::baseline::Baseline>>>,
    path: &Path,
    output: DecisionOutput,
    decisions_csv: Option<&Path>,
) -> anyhow::Result<Exit> {
    // Issue 17: a recording holds no Prometheus figures; refused by name.
    gates_core::promql::refuse_replay(&gates).map_err(gates_core::exit::usage_error)?;
    em.emit(
        "replay.started",
        Level::Info,
        format!("replaying {}", path.display()),
        json!({"file": path.display().to_string(), "gates": gates_summary(&gates)}),
    );
    let started = std::time::Instant::now();
    let mut csv_out = match decisions_csv {
        Some(p) => Some(DecisionsCsv::create(p, &gates)?),
        None => None,
    };
    let specs = gates.clone();
    let mut ev = Evaluator::new(gates).with_baselines(baselines);
    let mut summary = Summary::default();
    let mut shown = Shown::new(output, ev.gates().len());
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
        let decisions = ev.observe_in_place(&sample);
        if let Some(out) = csv_out.as_mut() {
            out.row(sample.t_ms, decisions)?;
        }
        for (i, d) in decisions.iter().enumerate() {
            summary.add(d);
            if shown.show(i, d.status) {
                emit_decision(em, d);
            }
        }
    }
    if let Some(out) = csv_out {
        out.finish()?;
    }
    completed(em, &summary, &specs, started.elapsed().as_secs_f64());
    Ok(Exit::Ok)
}

/// `--decisions-csv`: one row per sample (t_ms, then <gate>_status, <gate>_value per gate).
struct DecisionsCsv {
    out: BufWriter<File>,
}

impl DecisionsCsv {
    fn create(path: &Path, gates: &[GateSpec]) -> anyhow::Result<DecisionsCsv> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = BufWriter::new(file);
        let mut header = String::from("t_ms");
        for g in gates {
            header.push_str(&format!(",{0}_status,{0}_value", g.name));
        }
        writeln!(out, "{header}")?;
        Ok(DecisionsCsv { out })
    }

    fn row(&mut self, t_ms: i64, decisions: &[Decision]) -> anyhow::Result<()> {
        write!(self.out, "{t_ms}")?;
        for d in decisions {
            let v = d.value.map(|v| v.to_string()).unwrap_or_default();
            write!(self.out, ",{},{v}", d.status.as_str())?;
        }
        writeln!(self.out)?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        Ok(())
    }
}

/// Which decisions `--decisions` prints: all, only a gate's status changes, or none.
struct Shown {
    output: DecisionOutput,
    last: Vec<Option<Status>>,
}

impl Shown {
    fn new(output: DecisionOutput, gates: usize) -> Shown {
        Shown {
            output,
            last: vec![None; gates],
        }
    }

    /// Whether gate `i`'s decision with `status` is printed.
    fn show(&mut self, i: usize, status: Status) -> bool {
        let changed = self.last[i].replace(status) != Some(status);
        match self.output {
            DecisionOutput::All => true,
            DecisionOutput::Changes => changed,
            DecisionOutput::Summary => false,
        }
    }
}

fn emit_decision(em: &Emitter, d: &Decision) {
    let level = match d.status {
        Status::Violated => Level::Warning,
        _ => Level::Info,
    };
    em.emit(
        d.status.event_name(),
        level,
        d.reason.to_string(),
        decision_fields(d),
    );
}

/// `replay.completed`. A replay decides nothing (no result, exit 0), but says
/// which gates the recording was too short (or too empty) to evaluate, as the
/// live watch does.
fn completed(em: &Emitter, summary: &Summary, gates: &[GateSpec], secs: f64) {
    let never = summary.never_evaluated(gates);
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
}
