//! `check_performance ENV` (seed 004's `scripts/check_performance.sh
//! production`, "if available"): each quality gate's figure against its
//! threshold, now. One poll through the monitor's own probes
//! (`gates_core::probe::poll`) and gate evaluation (`gates_core::gates`),
//! so the figures mean what the watch's mean. A gate whose window one poll
//! cannot cover (a rate or percentile over minutes, N failures in a row) is
//! said to be so, with what it would need, never shown as passing.
//!
//! Exit 1 when an `auto-rollback` gate is violated right now, or the
//! service's health check fails now (what the watch would count towards a
//! rollback); 5 (inconclusive) when none is violated but an auto-rollback
//! gate could not be measured (its probe failed, no data): an on-call must
//! not read a dead metrics endpoint as "all clear"; 0 otherwise; 2 for
//! usage and configuration errors.
//!
//! Events (stdout): `performance.gate` per gate (`gate`, `status`, `value`,
//! `threshold`, `unit`, `window_secs`, `action`, `reason`, `covered`),
//! `performance.checked` (`health`, `violated`, `auto_rollback_violated`,
//! `not_covered`, `not_measured`, `exit`). The table is on stderr.

use std::path::PathBuf;

use clap::Parser;
use serde_json::json;

use gates_core::config::Action;
use gates_core::exit::{Exit, EXIT_CODES_HELP};
use gates_core::gates::{fmt_num, Decision, Evaluator, Status};
use gates_core::project::Project;
use gates_core::{Emitter, Level};

pub const TOOL: &str = "check_performance";

/// Each quality gate's current figure against its threshold, from one poll.
#[derive(Debug, Parser)]
#[command(name = "check_performance", version, after_help = format!(
"One poll of the environment's health, metrics and queue URLs, evaluated by
the same gates as monitor_dhash. A gate over a window one poll cannot cover
is reported as not covered (with the window it needs), never as passing.
Exit 1 when an auto-rollback gate is violated now or health fails now;
5 when none is, but an auto-rollback gate could not be measured (never a pass).

{EXIT_CODES_HELP}"))]
pub struct Args {
    /// Environment (as in environments.json); also --env.
    #[arg(value_name = "ENV", conflicts_with = "env_flag")]
    pub env: Option<String>,
    #[arg(long = "env", value_name = "ENV")]
    pub env_flag: Option<String>,
    /// Gates file (default quality-gates-config.json), as monitor_dhash --config.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Accepted for symmetry with the other tools (the table is always shown).
    #[arg(long, short)]
    pub verbose: bool,
}

/// One gate's line: the decision, and whether one poll covered its window.
struct Line<'a> {
    d: &'a Decision,
    covered: bool,
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    let env_name = args
        .env
        .clone()
        .or(args.env_flag.clone())
        .unwrap_or_else(|| "production".to_string());
    // The table below is the human output: events go to stdout without
    // the usual stderr echo, which would say every line twice.
    let em = Emitter::to_writer(TOOL, &env_name, Box::new(std::io::stdout()));
    let project = Project::discover()?;
    let (env, gates_file) = project.watch_setup(&env_name, args.config.as_deref())?;
    let gates = gates_file.env(&env_name)?.gates.clone();
    // Gates that read Prometheus are asked there, as the monitor does;
    // judging them from /metrics would be a silent substitute.
    let (probe_gates, mut prom) =
        gates_core::promql::PromGates::split(&env, gates).map_err(gates_core::exit::usage_error)?;
    let sample = gates_core::probe::poll(&env);
    let mut evaluator = Evaluator::new(probe_gates);
    let mut decisions = evaluator.observe(&sample);
    decisions.extend(prom.poll(sample.t_ms));
    let lines: Vec<Line<'_>> = decisions
        .iter()
        .map(|d| Line {
            d,
            covered: d.status != Status::Pending,
        })
        .collect();
    eprintln!(
        "Performance check of {env_name} at {} (one poll; health: {})",
        gates_core::event::now_rfc3339(),
        sample.health.label()
    );
    for l in &lines {
        report_gate(&em, l);
    }
    let health_ok = sample.health.is_ok();
    Ok(summarise(&em, &lines, health_ok))
}

/// The gate's event and table line.
fn report_gate(em: &Emitter, l: &Line<'_>) {
    let d = l.d;
    let figure = d
        .value
        .map(|v| format!("{} {}", fmt_num(v), d.unit))
        .unwrap_or_else(|| "-".into());
    let verdict = match (d.status, l.covered) {
        (_, false) => format!(
            "NOT COVERED: its {} window needs more than one poll ({})",
            gates_core::duration::human(std::time::Duration::from_secs_f64(d.window_secs)),
            d.reason
        ),
        (Status::Violated, _) => format!("VIOLATED: {}", d.reason),
        (s, _) => format!("{}: {}", s.as_str(), d.reason),
    };
    // One line per gate, whatever a failed probe quoted (an HTML error page).
    let verdict = one_line(&verdict, 200);
    eprintln!(
        "  {:<24} {:>14}  threshold {:>8} {:<6} [{}] {}",
        d.gate,
        figure,
        fmt_num(d.threshold),
        d.unit,
        d.action.as_str(),
        verdict
    );
    let level = match (d.status, d.action) {
        (Status::Violated, Action::AutoRollback) => Level::Critical,
        (Status::Violated, _) | (Status::Error, _) => Level::Warning,
        _ => Level::Info,
    };
    em.emit(
        "performance.gate",
        level,
        format!("{}: {verdict}", d.gate),
        json!({"gate": d.gate, "status": d.status, "value": d.value, "threshold": d.threshold,
               "unit": d.unit, "window_secs": d.window_secs, "action": d.action.as_str(),
               "reason": d.reason.to_string(), "covered": l.covered}),
    );
}

/// `text` on one line (runs of whitespace as one space), at most `max` chars.
fn one_line(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

/// `performance.checked` and the exit code.
fn summarise(em: &Emitter, lines: &[Line<'_>], health_ok: bool) -> Exit {
    let violated: Vec<&str> = lines
        .iter()
        .filter(|l| l.d.status == Status::Violated)
        .map(|l| l.d.gate.as_str())
        .collect();
    let rollback: Vec<&str> = lines
        .iter()
        .filter(|l| l.d.status == Status::Violated && l.d.action == Action::AutoRollback)
        .map(|l| l.d.gate.as_str())
        .collect();
    let not_covered: Vec<&str> = lines
        .iter()
        .filter(|l| !l.covered)
        .map(|l| l.d.gate.as_str())
        .collect();
    let not_measured: Vec<&str> = lines
        .iter()
        .filter(|l| l.d.action == Action::AutoRollback)
        .filter(|l| matches!(l.d.status, Status::Error | Status::NoData))
        .map(|l| l.d.gate.as_str())
        .collect();
    let exit = match (rollback.is_empty() && health_ok, not_measured.is_empty()) {
        (false, _) => Exit::Failed,
        (true, false) => Exit::Inconclusive,
        (true, true) => Exit::Ok,
    };
    let msg = match (rollback.is_empty(), health_ok) {
        (false, _) => format!(
            "auto-rollback gate(s) violated now: {}",
            rollback.join(", ")
        ),
        (true, false) => "the health check fails now".to_string(),
        (true, true) if !not_measured.is_empty() => format!(
            "NOT JUDGED: auto-rollback gate(s) could not be measured now: {} (not a pass)",
            not_measured.join(", ")
        ),
        (true, true) => format!(
            "no auto-rollback gate violated now ({} violated, {} not covered by one poll)",
            violated.len(),
            not_covered.len()
        ),
    };
    eprintln!("{msg}");
    em.emit(
        "performance.checked",
        if exit == Exit::Ok {
            Level::Info
        } else {
            Level::Critical
        },
        msg,
        json!({"health": health_ok, "violated": violated, "auto_rollback_violated": rollback,
               "not_covered": not_covered, "not_measured": not_measured, "exit": exit.code()}),
    );
    exit
}
