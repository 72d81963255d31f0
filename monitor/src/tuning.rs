//! `--replay FILE… --sweep …`: runs [`crate::sweep`] over recordings and
//! reports each combination (`sweep.combination`), then the suggestion
//! (`sweep.completed`), as JSON lines, with a table on stderr when it is a
//! terminal. The recordings' real outcomes come from every environment's
//! ledger of the project.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gates_core::baseline::Baseline;
use gates_core::config::EnvConfig;
use gates_core::project::Project;
use gates_core::{Emitter, Exit, Level};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::sweep::{self, Actual, Outcome, Pass, SweepArg, Variants};
use crate::{telemetry, WatchResult};

/// Runs the sweep. `baselines` are per variant (see [`Variants::specs`]).
pub fn run(
    project: &Project,
    em: &Emitter,
    variants: &Variants,
    baselines: &[Option<Arc<Baseline>>],
    (files, assume_passed): (&[PathBuf], bool),
) -> anyhow::Result<Exit> {
    // Issue 17: a recording holds no Prometheus figures; refused by name.
    gates_core::promql::refuse_replay(&variants.specs).map_err(gates_core::exit::usage_error)?;
    let started = std::time::Instant::now();
    em.emit(
        "sweep.started",
        Level::Info,
        format!(
            "{} combination(s) over {} recording(s)",
            variants.combinations(),
            files.len()
        ),
        json!({"combinations": variants.combinations(), "variants": variants.specs.len(),
               "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>()}),
    );
    let mut passes = Vec::new();
    for f in files {
        passes.push(sweep::evaluate(
            variants,
            baselines,
            f,
            telemetry::read_samples(f)?,
            false,
        )?);
    }
    let actual: Vec<Actual> = files
        .iter()
        .map(|f| match actual_outcome(project, f) {
            Actual::Unknown if assume_passed => Actual::Passed,
            a => a,
        })
        .collect();
    let outcomes: Vec<Outcome> = (0..variants.combinations())
        .map(|k| sweep::judge(variants, &passes, &actual, k))
        .collect();
    for o in &outcomes {
        em.emit(
            "sweep.combination",
            Level::Info,
            line(o),
            combination_json(o, &passes),
        );
    }
    let best = sweep::suggest(variants, &outcomes);
    if std::io::stderr().is_terminal() {
        eprint!("{}", table(&outcomes, best));
    }
    completed(
        em,
        &outcomes,
        best,
        &passes,
        &actual,
        started.elapsed().as_secs_f64(),
    );
    Ok(Exit::Ok)
}

fn line(o: &Outcome) -> String {
    format!(
        "{}: {} violation(s), {} rollback(s), {} false positive(s), caught {}/{} needed, avoided {}/{} unnecessary",
        sweep::settings_text(&o.settings),
        o.violations,
        o.rollbacks,
        o.false_positives,
        o.caught,
        o.needed,
        o.avoided_unnecessary,
        o.unnecessary
    )
}

fn combination_json(o: &Outcome, passes: &[Pass]) -> Value {
    let settings: BTreeMap<&str, f64> = o.settings.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    json!({
        "settings": settings,
        "violations": o.violations,
        "rollbacks": o.rollbacks,
        "false_positives": o.false_positives,
        "caught": o.caught,
        "needed": o.needed,
        "shift_secs": o.shifts_secs,
        "avoided_unnecessary": o.avoided_unnecessary,
        "unnecessary": o.unnecessary,
        "rollback_at": passes.iter().zip(&o.rollback_at).map(|(p, at)| json!({
            "file": p.file.display().to_string(),
            "at": at.map(crate::ts_of),
        })).collect::<Vec<_>>(),
    })
}

fn completed(
    em: &Emitter,
    outcomes: &[Outcome],
    best: Option<usize>,
    passes: &[Pass],
    actual: &[Actual],
    secs: f64,
) {
    let samples: usize = passes.iter().map(|p| p.samples).sum();
    let known: Vec<Value> = passes
        .iter()
        .zip(actual)
        .map(|(p, a)| json!({"file": p.file.display().to_string(), "samples": p.samples, "actual": actual_str(*a)}))
        .collect();
    let msg = match best {
        Some(k) => format!(
            "suggested (tightest with no false positive on the passed windows): {}; {} combinations over {samples} samples in {secs:.2}s",
            sweep::settings_text(&outcomes[k].settings),
            outcomes.len()
        ),
        None => format!(
            "every combination rolls back a passed window (or one marked unnecessary): widen the ranges; {} combinations over {samples} samples in {secs:.2}s",
            outcomes.len()
        ),
    };
    em.emit(
        "sweep.completed",
        Level::Info,
        msg,
        json!({
            "combinations": outcomes.len(),
            "samples": samples,
            "seconds": secs,
            "recordings": known,
            "suggested": best.map(|k| combination_json(&outcomes[k], passes)),
        }),
    );
}

fn actual_str(a: Actual) -> &'static str {
    match a {
        Actual::Passed => "passed",
        Actual::RolledBack { unnecessary: true } => "rolled-back (marked unnecessary)",
        Actual::RolledBack { unnecessary: false } => "rolled-back",
        Actual::Unknown => "unknown",
    }
}

/// The table a terminal gets: one row per combination, the suggestion marked.
fn table(outcomes: &[Outcome], best: Option<usize>) -> String {
    let mut out = format!(
        "{:<3}{:<48}{:>6}{:>6}{:>6}{:>9}{:>10}{:>9}\n",
        "", "settings", "viol", "rb", "fp", "caught", "shift s", "avoided"
    );
    for (k, o) in outcomes.iter().enumerate() {
        let shift = if o.shifts_secs.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:+.0}",
                o.shifts_secs.iter().sum::<f64>() / o.shifts_secs.len() as f64
            )
        };
        out.push_str(&format!(
            "{:<3}{:<48}{:>6}{:>6}{:>6}{:>9}{:>10}{:>9}\n",
            if Some(k) == best { "=>" } else { "" },
            sweep::settings_text(&o.settings),
            o.violations,
            o.rollbacks,
            o.false_positives,
            format!("{}/{}", o.caught, o.needed),
            shift,
            format!("{}/{}", o.avoided_unnecessary, o.unnecessary)
        ));
    }
    out
}

#[derive(Debug, Default, Deserialize)]
struct MonitorRec {
    state: Option<String>,
    result: Option<String>,
    recording: Option<PathBuf>,
    window_start_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
struct RollbackRec {
    ts: Option<String>,
    result: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ReviewRec {
    rollback_ts: Option<String>,
    verdict: Option<String>,
}

/// What happened to the window `file` recorded, from whichever
/// environment's ledger names it.
pub fn actual_outcome(project: &Project, file: &Path) -> Actual {
    let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    for env in project.topology.environments.values() {
        let recs: Vec<MonitorRec> = typed(env, crate::ledger::MONITOR);
        let Some(rec) = recs.iter().rev().find(|r| {
            r.state.as_deref() == Some(crate::ledger::WindowState::Completed.as_str())
                && r.recording
                    .as_ref()
                    .is_some_and(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()) == want)
        }) else {
            continue;
        };
        return match rec.result.as_deref().and_then(WatchResult::parse) {
            Some(WatchResult::Passed) => Actual::Passed,
            Some(WatchResult::RolledBack) => Actual::RolledBack {
                unnecessary: marked_unnecessary(env, rec.window_start_ms.unwrap_or(0)),
            },
            _ => Actual::Unknown,
        };
    }
    Actual::Unknown
}

/// Whether the first rollback after `since_ms` carries an `unnecessary`
/// verdict (the latest verdict on it counts).
fn marked_unnecessary(env: &EnvConfig, since_ms: i64) -> bool {
    let rollbacks: Vec<RollbackRec> = typed(env, "rollback");
    let Some(ts) = rollbacks
        .into_iter()
        .filter(|r| matches!(r.result.as_deref(), Some("completed" | "failed")))
        .filter_map(|r| r.ts)
        .find(|ts| {
            chrono::DateTime::parse_from_rfc3339(ts).is_ok_and(|t| t.timestamp_millis() >= since_ms)
        })
    else {
        return false;
    };
    let reviews: Vec<ReviewRec> = typed(env, crate::ledger::REVIEW);
    reviews
        .into_iter()
        .rev()
        .find(|r| r.rollback_ts.as_deref() == Some(ts.as_str()))
        .is_some_and(|r| r.verdict.as_deref() == Some("unnecessary"))
}

fn typed<T: serde::de::DeserializeOwned + Default>(env: &EnvConfig, kind: &str) -> Vec<T> {
    env.ledger()
        .records(kind)
        .unwrap_or_default()
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap_or_default())
        .collect()
}

/// Parses every `--sweep` (a clap value parser would hide the range rules).
pub fn parse_all(args: &[String]) -> anyhow::Result<Vec<SweepArg>> {
    args.iter()
        .map(|s| sweep::parse_sweep(s).map_err(gates_core::exit::usage_error))
        .collect()
}
