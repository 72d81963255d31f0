//! monitor_dhash: the T+60 quality-gate watch after a deploy, with automatic
//! rollback when an `auto-rollback` gate breaks, and the offline replay of
//! recorded telemetry for threshold tuning. Both feed the same
//! `gates_core::gates::Evaluator`.

pub mod attach;
pub mod baseline;
pub mod follow;
pub mod incident;
pub mod judge;
pub mod ledger;
pub mod live;
pub mod replay;
pub mod sweep;
pub mod tee;
pub mod telemetry;
pub mod tuning;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use gates_core::config::GateSpec;
use gates_core::gates::Decision;
use gates_core::project::Project;
use gates_core::{Emitter, Exit};
use serde_json::json;

pub const TOOL: &str = "monitor_dhash";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecisionOutput {
    /// Only when a gate's status changes (and every violation).
    Changes,
    /// Every decision of every sample.
    All,
    /// Only the final summary.
    Summary,
}

/// Watch a deployed dhash release and roll it back when a quality gate breaks.
#[derive(Debug, Parser)]
#[command(
    name = "monitor_dhash",
    version,
    after_help = gates_core::exit::EXIT_CODES_HELP,
    args_conflicts_with_subcommands = true,
    long_about = "Watch a deployed dhash release for the T+60 window: poll health, metrics and the \
low-confidence queue on the configured cadence (30 s for 5 min, then 120 s), evaluate the quality \
gates of quality-gates-config.json, and roll back to this deploy's verified backup when an \
auto-rollback gate is violated. Reads upstream events on stdin (deploy.healthy gives the release \
and its backup). With --replay, evaluates recorded telemetry instead, as fast as possible.

One watcher per environment window: the watcher holds <install_root>/watch.lock and publishes \
itself in <install_root>/watch.json (pid, release, window end, log, events file). A monitor_dhash \
started while a watch of the same release runs attaches to it: it prints that watch's events \
(from its start) on stdout and its log lines on stderr, and exits with its result; it never \
evaluates or rolls back itself. A watch whose release was replaced (a newer deploy, a rollback) \
ends as superseded (exit 6). A window that ends before an auto-rollback gate was ever evaluated \
(its window longer than the watch, or no data) is inconclusive (exit 5), never passed; alert and \
shadow gates never evaluated are listed but do not change the result. A pending rollback journal \
(an interrupted rollback) is finished first: exit 3, or 4 when it cannot be finished."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Environment (from environments.json). Defaults to production, as the seeds' monitor does.
    #[arg(long)]
    pub env: Option<String>,
    /// A custom gates file (seed schema) instead of the project's quality-gates-config.json.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Window length: seconds (600) or humantime (45m). Default: the environment's (60m production, 30m staging).
    #[arg(long, value_parser = gates_core::duration::duration_arg)]
    pub duration: Option<Duration>,
    /// Evaluate and report only: never roll back; notifications go to the fallback file only.
    #[arg(long)]
    pub dry_run: bool,
    /// More detail on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// The backup to roll back to (default: from stdin's deploy.healthy, else the ledger's last healthy deploy).
    #[arg(long)]
    pub backup: Option<PathBuf>,
    /// Start a new window even if an interrupted one for this release could be continued.
    #[arg(long)]
    pub fresh: bool,
    /// The release this watch is for (deploy passes the one it just made live). When `current`
    /// is not this release at start, the watch ends at once as superseded (exit 6).
    #[arg(long, value_name = "ID")]
    pub release: Option<String>,
    /// Run as the background watcher (deploy starts it so): leave the terminal's session,
    /// ignore SIGHUP, and write everything to the log and events files. `kill <pid>` stops it
    /// cleanly (result "interrupted", exit 1).
    #[arg(long)]
    pub detach: bool,
    /// Where to record polled telemetry (CSV). Default: monitor_logs/telemetry_<env>_<ts>.csv.
    #[arg(long)]
    pub record: Option<PathBuf>,
    /// Replay recorded telemetry (CSV or JSON lines) through the gates instead of polling.
    /// Several files (several releases, both environments) are replayed one after the other,
    /// each with fresh gate state.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    pub replay: Vec<PathBuf>,
    /// With --replay: sweep a gate's threshold over a range, GATE.threshold=FROM..TO/STEP
    /// (repeatable; every combination is evaluated in one pass). Prints per combination the
    /// violations, rollbacks, false positives, caught rollbacks (and how much earlier or later)
    /// and rollbacks marked unnecessary it avoids, then the tightest setting with no false
    /// positive on the passed windows.
    #[arg(long, value_name = "SPEC", requires = "replay")]
    pub sweep: Vec<String>,
    /// With --sweep: count recordings that no ledger names (e.g. copied from another host)
    /// as passed windows, so a rollback on them is a false positive. Default: unknown, not counted.
    #[arg(long, requires = "sweep")]
    pub assume_passed: bool,
    /// Which replay decisions to print as events.
    #[arg(long, value_enum, default_value = "changes")]
    pub decisions: DecisionOutput,
    /// Baseline-relative gates: compare with this recording instead of the configured
    /// baseline (repeatable; e.g. the previous release's monitor_logs/telemetry_*.csv).
    #[arg(long, value_name = "FILE")]
    pub baseline_recording: Vec<PathBuf>,
    /// Baseline-relative gates: compare with the passed watches of this release (pinned known-good).
    #[arg(long, value_name = "ID", conflicts_with = "baseline_recording")]
    pub baseline_release: Option<String>,
    /// Replay: also write every decision as CSV, one row per sample (t_ms, then <gate>_status, <gate>_value per gate).
    #[arg(long)]
    pub decisions_csv: Option<PathBuf>,
    /// The operator's dashboard: follow the running watch of --env (each gate's state and
    /// figure against its threshold, time left, the last samples), redrawn in place on a
    /// terminal, plain lines otherwise; exits with the watch's result. Never evaluates.
    #[arg(long, conflicts_with_all = ["replay", "detach", "dry_run"])]
    pub follow: bool,
}

/// Subcommands (without one, monitor_dhash watches or replays).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Judge an inconclusive gate a watch is waiting on (environment policy "ask"): --promote keeps
    /// the release, --rollback has the watch roll it back. Recorded in the ledger with who and why.
    Judge(judge::JudgeArgs),
}

pub fn run(args: Args) -> anyhow::Result<Exit> {
    if let Some(Command::Judge(a)) = &args.command {
        return judge::run_judge(a);
    }
    if args.follow {
        let project = Project::discover()?;
        return follow::follow(project.env(args.env.as_deref().unwrap_or("production"))?);
    }
    // Before any thread exists (the signal handler's), so the mask is inherited.
    if args.detach || tee::sighup_ignored() {
        tee::leave_terminal(args.detach);
    }
    let env_name = args.env.clone().unwrap_or_else(|| "production".to_string());
    let tee = tee::Tee::new(TOOL, args.verbose);
    let em = Emitter::to_writer(TOOL, &env_name, Box::new(tee.writer()));
    if args.env.is_none() {
        em.human("no --env given: monitoring production (the seeds' default)");
    }
    let project = Project::discover()?;
    if !args.replay.is_empty() {
        if args.replay.len() > 1 && args.decisions_csv.is_some() {
            return Err(gates_core::exit::usage_error(
                "--decisions-csv takes one --replay file (each file would overwrite it)",
            ));
        }
        // Replay needs only the gates: recorded telemetry may come from any host.
        let gates_file = project.gates(args.config.as_deref())?;
        let gates_env = gates_file.env(&env_name)?;
        let gates = gates_env.gates.clone();
        let source = args.baseline_override().source(&gates_env.baseline);
        // The ledger's passed watches, when this project has the environment.
        let env = project.env(&env_name).ok();
        if !args.sweep.is_empty() {
            let variants = sweep::Variants::new(&gates, &tuning::parse_all(&args.sweep)?)?;
            let baselines = baseline::load(&variants.specs, &source, env, &env_name, None, &em);
            let files = (args.replay.as_slice(), args.assume_passed);
            return tuning::run(&project, &em, &variants, &baselines, files);
        }
        let baselines = baseline::load(&gates, &source, env, &env_name, None, &em);
        for path in &args.replay {
            replay::run(
                &em,
                gates.clone(),
                baselines.clone(),
                path,
                args.decisions,
                args.decisions_csv.as_deref(),
            )?;
        }
        return Ok(Exit::Ok);
    }
    // The gates file may set the watch's duration and cadence for an
    // environment (seed 004's profile, quality-gates-mobius.json); --duration
    // still wins.
    let (env, gates_file) = project.watch_setup(&env_name, args.config.as_deref())?;
    let gates_env = gates_file.env(&env_name)?;
    let gates = gates_env.gates.clone();
    let judgment = judge::Settings {
        source: args.baseline_override().source(&gates_env.baseline),
        policy: gates_env.inconclusive,
    };
    for p in gates_file
        .check_placeholders(&env_name)?
        .iter()
        .chain(project.topology.check_placeholders(&env_name)?)
    {
        em.human(&format!(
            "warning: unresolved placeholder {} = {:?} in {}",
            p.path,
            p.value,
            p.file.display()
        ));
    }
    live::run(&project, &env, (gates, judgment), &args, &em, &tee)
}

/// The result of a watch, as `monitor.completed` and the ledger carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchResult {
    Passed,
    Inconclusive,
    RolledBack,
    RollbackFailed,
    Superseded,
    Interrupted,
}

impl WatchResult {
    pub const ALL: [WatchResult; 6] = [
        WatchResult::Passed,
        WatchResult::Inconclusive,
        WatchResult::RolledBack,
        WatchResult::RollbackFailed,
        WatchResult::Superseded,
        WatchResult::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WatchResult::Passed => "passed",
            WatchResult::Inconclusive => "inconclusive",
            WatchResult::RolledBack => "rolled-back",
            WatchResult::RollbackFailed => "rollback-failed",
            WatchResult::Superseded => "superseded",
            WatchResult::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<WatchResult> {
        WatchResult::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn exit(self) -> Exit {
        match self {
            WatchResult::Passed => Exit::Ok,
            WatchResult::RolledBack => Exit::GateRolledBack,
            WatchResult::RollbackFailed => Exit::RollbackFailed,
            WatchResult::Inconclusive => Exit::Inconclusive,
            WatchResult::Superseded => Exit::Superseded,
            WatchResult::Interrupted => Exit::Failed,
        }
    }
}

/// The result a `monitor.completed` event carries, as an exit code (an
/// unknown result is a failure).
pub fn exit_for_result(result: &str) -> Exit {
    WatchResult::parse(result).map_or(Exit::Failed, WatchResult::exit)
}

/// The JSON fields of a decision event.
pub fn decision_fields(d: &Decision) -> serde_json::Value {
    let mut v = json!({
        "gate": d.gate,
        "status": d.status.as_str(),
        "value": d.value,
        "threshold": d.threshold,
        "unit": d.unit,
        "window_secs": d.window_secs,
        "action": d.action.as_str(),
        "reason": d.reason,
        "sample_ts": ts_of(d.t_ms),
    });
    // Only a baseline-relative gate's decisions carry its baseline and limit.
    if let (Some(b), serde_json::Value::Object(m)) = (d.baseline.as_deref(), &mut v) {
        m.insert("limit".into(), json!(d.limit));
        m.insert("baseline".into(), baseline::baseline_json(b));
        // A Mann-Whitney gate's U, p, effect, direction, counts and limits.
        if let Some(r) = &d.mann_whitney {
            m.insert("mann_whitney".into(), json!(r));
        }
    }
    v
}

impl Args {
    /// The baseline source the command line asks for, if any.
    pub fn baseline_override(&self) -> baseline::Override {
        baseline::Override {
            recordings: self.baseline_recording.clone(),
            release: self.baseline_release.clone(),
        }
    }
}

pub fn ts_of(t_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| t_ms.to_string())
}

pub fn gates_summary(gates: &[GateSpec]) -> serde_json::Value {
    serde_json::Value::Array(
        gates
            .iter()
            .map(|g| {
                json!({
                    "gate": g.name,
                    "kind": g.kind,
                    "threshold": g.threshold,
                    "unit": g.unit,
                    "window_secs": g.window.as_secs_f64(),
                    "action": g.action.as_str(),
                })
            })
            .collect(),
    )
}

/// Per-gate counts of each status, the last status and the worst value.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// In the order the gates were first seen.
    per_gate: Vec<(String, GateTally)>,
    /// Where the next decision's gate is expected: decisions come in the
    /// same gate order every sample, so a replay's millions of decisions
    /// each cost one name comparison, not a search.
    next: usize,
    pub samples: u64,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct GateTally {
    ok: u64,
    pending: u64,
    no_data: u64,
    error: u64,
    violated: u64,
    inconclusive: u64,
    last: &'static str,
    max_value: Option<f64>,
    first_violation: Option<String>,
}

impl Summary {
    pub fn add(&mut self, d: &Decision) {
        use gates_core::gates::Status::*;
        let expected = self
            .per_gate
            .get(self.next)
            .is_some_and(|(n, _)| *n == d.gate);
        let at = if expected {
            self.next
        } else if let Some(at) = self.per_gate.iter().position(|(n, _)| *n == d.gate) {
            at
        } else {
            self.per_gate.push((d.gate.clone(), GateTally::default()));
            self.per_gate.len() - 1
        };
        self.next = (at + 1) % self.per_gate.len();
        let t = &mut self.per_gate[at].1;
        match d.status {
            Ok => t.ok += 1,
            Pending => t.pending += 1,
            NoData => t.no_data += 1,
            Error => t.error += 1,
            Inconclusive => t.inconclusive += 1,
            Violated => {
                t.violated += 1;
                if t.first_violation.is_none() {
                    t.first_violation = Some(ts_of(d.t_ms));
                }
            }
        }
        t.last = d.status.as_str();
        if let Some(v) = d.value {
            t.max_value = Some(t.max_value.map_or(v, |m: f64| m.max(v)));
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Keyed by gate name in name order, as readers of the summary expect.
        let by_name: std::collections::BTreeMap<&str, &GateTally> =
            self.per_gate.iter().map(|(n, t)| (n.as_str(), t)).collect();
        serde_json::to_value(by_name).unwrap_or_default()
    }

    /// The gates that never produced a decision (never `ok`, never
    /// `violated`): their window was never covered, or there was no data or
    /// only errors. `gates` gives their order and action.
    pub fn never_evaluated(&self, gates: &[GateSpec]) -> Vec<NeverEvaluated> {
        gates
            .iter()
            .filter_map(|g| {
                let t = self.per_gate.iter().find(|(n, _)| *n == g.name).map(|(_, t)| t);
                if t.is_some_and(|t| t.ok + t.violated > 0) {
                    return None;
                }
                let why = match t {
                    None => "no sample was taken".to_string(),
                    Some(t) if t.inconclusive > 0 => format!(
                        "inconclusive: {} decision(s) with a missing or thin baseline, never held or violated",
                        t.inconclusive
                    ),
                    Some(t) if t.pending > 0 && t.no_data == 0 && t.error == 0 => format!(
                        "its {} window was never covered ({} pending decision(s))",
                        gates_core::duration::human(g.window),
                        t.pending
                    ),
                    Some(t) => format!(
                        "no decision: {} pending (window {}), {} no-data, {} error",
                        t.pending,
                        gates_core::duration::human(g.window),
                        t.no_data,
                        t.error
                    ),
                };
                Some(NeverEvaluated {
                    inconclusive: t.is_some_and(|t| t.inconclusive > 0),
                    gate: g.name.clone(),
                    action: g.action,
                    window_secs: g.window.as_secs_f64(),
                    why,
                })
            })
            .collect()
    }
}

/// A gate the window never evaluated (see [`Summary::never_evaluated`]).
#[derive(Debug, Clone)]
pub struct NeverEvaluated {
    /// Its only decisions were `inconclusive` (a judgment may settle it).
    pub inconclusive: bool,
    pub gate: String,
    pub action: gates_core::config::Action,
    pub window_secs: f64,
    pub why: String,
}

impl NeverEvaluated {
    pub fn to_json(&self) -> serde_json::Value {
        json!({"gate": self.gate, "action": self.action.as_str(),
               "window_secs": self.window_secs, "why": self.why})
    }
}
