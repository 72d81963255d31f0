//! The live T+60 watch: poll on the configured cadence, evaluate the gates,
//! alert once per alert-gate violation (and once when it clears), and roll
//! back once when an auto-rollback gate is violated.
//!
//! [`run`] reads as its steps: read upstream events, decide which release
//! to watch, claim the window (or attach to its watcher), finish an
//! interrupted rollback first, plan the window (new or continued), poll it,
//! then conclude (a pure decision) and report.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use gates_core::baseline::OnInconclusive;
use gates_core::config::{Action, EnvConfig, GateSpec};
use gates_core::gates::{Decision, Evaluator, Status};
use gates_core::lock::EnvLock;
use gates_core::project::Project;
use gates_core::runlog::{RunKind, RunLog};
use gates_core::watch::{self, Claim, WatchGuard, WatchInfo};
use gates_core::{fsutil, install, Emitter, Event, Exit, Level, ToolError};
use serde_json::{json, Map, Value};

use crate::attach;
use crate::baseline;
use crate::incident::{self, DeployStart, Incident, Restore, Timeline};
use crate::judge;
use crate::ledger::{self, WindowState};
use crate::tee::Tee;
use crate::telemetry::{self, Recorder};
use crate::{
    decision_fields, gates_summary, ts_of, Args, NeverEvaluated, Summary, WatchResult, TOOL,
};

/// What upstream tools told us on stdin.
#[derive(Debug, Default)]
struct Upstream {
    release: Option<String>,
    backup: Option<PathBuf>,
    deploy_started: Option<String>,
    deploy_failed: bool,
    deploy_healthy: bool,
}

impl Upstream {
    fn take(&mut self, ev: &Event) {
        match ev.event.as_str() {
            "deploy.started" => self.deploy_started = Some(ev.ts.clone()),
            "deploy.healthy" => {
                self.deploy_healthy = true;
                self.release = ev
                    .str_field("release")
                    .map(str::to_string)
                    .or(self.release.take());
                if let Some(b) = ev.str_field("backup") {
                    self.backup = Some(PathBuf::from(b));
                }
            }
            "deploy.failed" => self.deploy_failed = true,
            "backup.verified" => {
                if let Some(p) = ev.str_field("path") {
                    self.backup = Some(PathBuf::from(p));
                }
            }
            _ => {}
        }
    }

    /// Reads the upstream events on stdin (none when stdin is a terminal).
    fn read(em: &Emitter) -> Upstream {
        let mut up = Upstream::default();
        let bad = gates_core::event::pump_stdin(em, |ev| up.take(ev));
        if bad > 0 {
            em.human(&format!("{bad} malformed line(s) on stdin were ignored"));
        }
        up
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn stamp(t_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t_ms)
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| t_ms.to_string())
}

struct Watch<'a> {
    project: &'a Project,
    env: &'a EnvConfig,
    em: &'a Emitter,
    dry_run: bool,
    release: Option<String>,
    backup: Option<PathBuf>,
    /// The human log the seeds grep (`Quality gate`, `Quality gate failed`).
    log: RunLog,
    timeline: Timeline,
    alerts_active: HashSet<String>,
    notifications: Vec<String>,
    /// This watch's events file, which the watch page after a rollback charts.
    events: Option<PathBuf>,
    /// The baseline source and inconclusive policy (issue 16).
    judgment: judge::Settings,
    /// The open request for a judgment (policy `ask`).
    ask: Option<(judge::Request, Decision)>,
    /// The inconclusive gates are settled (promoted, or kept by the
    /// deadline's default): no more asking.
    settled: Option<judge::Settled>,
    /// The reason a judged rollback records instead of "violated".
    rollback_reason: Option<String>,
    /// The start of the window watched: a request is tied to it, so only a
    /// restart continuing this window takes it up (never a new window).
    window_start_ms: Option<i64>,
}

/// The watch page after a rollback: its stamp (shared with the incident
/// record) and the path written, or why none was.
struct WatchPage {
    t_ms: i64,
    written: Result<PathBuf, String>,
}

impl WatchPage {
    /// `page` (or `page_error`) for a notification's or event's fields.
    fn insert_into(&self, f: &mut Map<String, Value>) {
        match &self.written {
            Ok(p) => f.insert("page".into(), json!(p.display().to_string())),
            Err(e) => f.insert("page_error".into(), json!(e)),
        };
    }

    /// The sentence a notification ends with.
    fn sentence(&self) -> String {
        match &self.written {
            Ok(p) => format!("Watch page: {}", p.display()),
            Err(e) => format!("No watch page: {e}"),
        }
    }
}

/// How long a starting monitor waits for the running watcher to publish
/// itself, or for a superseded one to let go.
const CLAIM_WAIT: Duration = Duration::from_secs(30);

/// Who this monitor is on the environment's window.
enum Role {
    Watcher(WatchGuard),
    /// It attached to the running watch, which ended with this exit.
    Attached(Exit),
}

/// One actor per environment window: become the watcher, or attach to the
/// running watch of the same release, or end a watch of a release that is
/// no longer current (it records `superseded`) and then become the watcher.
fn claim_or_attach(
    env: &EnvConfig,
    release: Option<&str>,
    args: &Args,
    em: &Emitter,
    tee: &Tee,
) -> anyhow::Result<Role> {
    let mut deadline = Instant::now() + CLAIM_WAIT;
    let mut told: Option<u32> = None;
    loop {
        match watch::claim(env)? {
            Claim::Acquired(g) => return Ok(Role::Watcher(g)),
            Claim::Held(Some(info)) if !crate::tee::pid_alive(info.pid) => {
                // A dead watcher's record while someone (a prober) holds the
                // lock for an instant: try again.
            }
            Claim::Held(Some(info)) if info.release.as_deref() == release => {
                tee.set_echo(false);
                tee.no_file();
                say_what_is_followed(env, &info, args, em);
                return Ok(Role::Attached(attach::follow(env, &info, em)?));
            }
            Claim::Held(Some(_)) if dhash_rollback::pending(env).ok().flatten().is_some() => {
                // The watcher is rolling its release back right now: let it
                // finish (its result is the answer), never signal it mid-way.
                deadline = Instant::now() + CLAIM_WAIT;
            }
            Claim::Held(Some(info)) => {
                if told != Some(info.pid) {
                    supersede_running(env, release, &info, em)?;
                    told = Some(info.pid);
                }
            }
            Claim::Held(None) => {}
        }
        if Instant::now() >= deadline {
            return Err(lock_held(env));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Before attaching: says when the followed watch is a dry run (nothing is
/// rolled back, by it or by this command) and which of this command's
/// settings it ignores (`--duration`, `--config`, `--dry-run`), read from
/// the followed watch's `started` ledger record.
fn say_what_is_followed(env: &EnvConfig, info: &WatchInfo, args: &Args, em: &Emitter) {
    // The watcher publishes watch.json just before it records `started`:
    // give that record a moment to land.
    let until = Instant::now() + Duration::from_secs(3);
    let started = loop {
        let found = env
            .ledger()
            .records(ledger::MONITOR)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|r| {
                r["pid"] == json!(info.pid) && r["state"] == json!(WindowState::Started.as_str())
            });
        if found.is_some() || Instant::now() >= until {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let followed_dry = started.as_ref().and_then(|r| r["dry_run"].as_bool());
    let followed_ms = started.as_ref().and_then(|r| r["duration_ms"].as_i64());
    let mut notes = Vec::new();
    if followed_dry == Some(true) {
        notes.push(format!(
            "the watch followed (pid {}) is a DRY RUN: nothing is rolled back, by it or by this command",
            info.pid
        ));
    }
    if let Some(d) = args.duration {
        let asked_ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if followed_ms != Some(asked_ms) {
            notes.push(format!(
                "this command's --duration {} is ignored: the followed window ends at {}",
                gates_core::duration::human(d),
                info.window_end
            ));
        }
    }
    if let Some(c) = &args.config {
        notes.push(format!(
            "this command's --config {} is ignored: the followed watch judges with its own gates",
            c.display()
        ));
    }
    if args.dry_run && followed_dry == Some(false) {
        notes.push(
            "this command's --dry-run is ignored: the followed watch is not a dry run and rolls back on a violation"
                .into(),
        );
    }
    if notes.is_empty() {
        return;
    }
    let msg = format!("warning: {}", notes.join("; "));
    em.human(&msg);
    em.emit(
        "monitor.attach-differs",
        Level::Warning,
        msg,
        json!({"pid": info.pid, "followed_dry_run": followed_dry, "followed_duration_ms": followed_ms,
               "duration_ms": args.duration.map(|d| d.as_millis() as u64), "dry_run": args.dry_run,
               "config": args.config.as_ref().map(|c| c.display().to_string())}),
    );
}

/// Ends the running watch of a release that is no longer current.
fn supersede_running(
    env: &EnvConfig,
    release: Option<&str>,
    info: &WatchInfo,
    em: &Emitter,
) -> anyhow::Result<()> {
    let reason = format!(
        "{} is current now; the watch of {} is superseded",
        release.unwrap_or("no release"),
        info.release.as_deref().unwrap_or("no release")
    );
    em.human(&format!(
        "a watch of {} (pid {}) is still running but its release is no longer current: ending it",
        info.release.as_deref().unwrap_or("no release"),
        info.pid
    ));
    watch::supersede(env, release, &reason)?;
    Ok(())
}

fn lock_held(env: &EnvConfig) -> anyhow::Error {
    let holder = watch::read_info(env).ok().flatten();
    ToolError::new(
        Exit::Locked,
        anyhow::anyhow!(
            "the watch lock {} is held{} and no watch could be attached to within {}s",
            watch::lock_path(env).display(),
            holder
                .map(|i| format!(" by pid {}", i.pid))
                .unwrap_or_default(),
            CLAIM_WAIT.as_secs()
        ),
    )
    .into()
}

/// Which release this run watches.
enum Target {
    /// Watch this release (None: whatever is current, or nothing deployed).
    Release(Option<String>),
    /// The release asked for is no longer current: nothing to watch.
    NotCurrent {
        asked: String,
        current: Option<String>,
    },
}

/// Decides the release to watch. A pending rollback journal wins, even
/// when the release asked for is no longer current: a rollback killed
/// after its switch leaves exactly that state.
fn choose_release(
    asked: Option<String>,
    current: Option<String>,
    pending: Option<&dhash_rollback::Journal>,
) -> Target {
    match (pending, asked) {
        (Some(j), asked) => Target::Release(j.previous_release.clone().or(asked)),
        (None, Some(r)) if current.as_deref() != Some(r.as_str()) => {
            Target::NotCurrent { asked: r, current }
        }
        (None, asked) => Target::Release(asked.or(current)),
    }
}

/// The journal of an interrupted rollback, if any; unreadable is exit 4.
fn pending_rollback(env: &EnvConfig) -> anyhow::Result<Option<dhash_rollback::Journal>> {
    dhash_rollback::pending(env).map_err(|e| {
        ToolError::new(
            Exit::RollbackFailed,
            e.context("a rollback journal is pending but cannot be read: run rollback_dhash --force to finish it"),
        )
        .into()
    })
}

fn skip_failed_deploy(em: &Emitter) -> Exit {
    em.emit(
        "monitor.skipped",
        Level::Warning,
        "the upstream deploy failed and was switched back: no new release to watch",
        json!({}),
    );
    Exit::Failed
}

fn report_not_current(env: &EnvConfig, em: &Emitter, r: &str, current: Option<String>) -> Exit {
    let msg = format!(
        "release {r} is not the current release of {} (current: {}): it was replaced or rolled back; nothing to watch",
        env.name,
        current.as_deref().unwrap_or("none")
    );
    em.emit(
        "monitor.completed",
        Level::Warning,
        msg,
        json!({"result": WatchResult::Superseded.as_str(), "release": r, "current_release": current, "samples": 0}),
    );
    Exit::Superseded
}

/// The window this run watches: a new one, or the interrupted one it continues.
struct Window {
    start_ms: i64,
    end_ms: i64,
    duration: Duration,
    recording: PathBuf,
    /// The log of the interrupted window this one continues.
    continue_log: Option<PathBuf>,
    events: PathBuf,
}

impl Window {
    /// Decides the window: continue `c` when there is one, else start at `now`.
    fn plan(env: &EnvConfig, args: &Args, c: Option<ledger::Continuation>, now: i64) -> Window {
        let (start_ms, duration, recording, continue_log, events) = match c {
            Some(c) => (
                c.window_start_ms,
                c.duration,
                c.recording,
                Some(c.log),
                c.events.unwrap_or_else(|| events_path(env, now)),
            ),
            None => (
                now,
                args.duration.unwrap_or(env.monitor.duration),
                args.record.clone().unwrap_or_else(|| {
                    env.log_dir
                        .join(format!("telemetry_{}_{}.csv", env.name, stamp(now)))
                }),
                None,
                events_path(env, now),
            ),
        };
        Window {
            start_ms,
            end_ms: start_ms + i64::try_from(duration.as_millis()).unwrap_or(i64::MAX),
            duration,
            recording,
            continue_log,
            events,
        }
    }

    fn continued(&self) -> bool {
        self.continue_log.is_some()
    }

    /// Opens the window's log: the continued one, or a new run log.
    fn open_log(&self, project: &Project, env: &EnvConfig) -> anyhow::Result<RunLog> {
        match &self.continue_log {
            Some(p) => RunLog::open_with_aliases(p.clone(), &[]),
            None => RunLog::create(&project.root, env, RunKind::Monitor, &stamp(self.start_ms)),
        }
    }

    fn duration_ms(&self) -> u64 {
        self.duration.as_millis() as u64
    }
}

/// The end of a watch, decided from its outcome and what it evaluated.
struct Conclusion {
    result: WatchResult,
    state: WindowState,
    level: Level,
    message: String,
    never: Vec<NeverEvaluated>,
}

/// Decides the watch's result: a completed window whose auto-rollback
/// gates were not all evaluated is inconclusive, never passed.
fn conclude(
    outcome: &Outcome,
    never: Vec<NeverEvaluated>,
    gates: &[GateSpec],
    release: Option<&str>,
) -> Conclusion {
    let (undecided, others): (Vec<&NeverEvaluated>, Vec<&NeverEvaluated>) =
        never.iter().partition(|n| n.action == Action::AutoRollback);
    let outcome = match outcome {
        Outcome::Completed if !undecided.is_empty() => &Outcome::Inconclusive,
        o => o,
    };
    let result = outcome.result();
    let (state, level) = match result {
        WatchResult::Passed => (WindowState::Completed, Level::Info),
        WatchResult::Inconclusive | WatchResult::Superseded => {
            (WindowState::Completed, Level::Warning)
        }
        WatchResult::RolledBack | WatchResult::RollbackFailed => {
            (WindowState::Completed, Level::Critical)
        }
        WatchResult::Interrupted => (WindowState::Interrupted, Level::Warning),
    };
    let names = |v: &[&NeverEvaluated]| {
        v.iter()
            .map(|n| format!("{} ({})", n.gate, n.why))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut message = match outcome {
        Outcome::Completed if gates.iter().any(|g| g.action == Action::AutoRollback) => {
            "monitoring window completed: every auto-rollback gate was evaluated and held"
                .to_string()
        }
        Outcome::Completed => {
            "monitoring window completed (no auto-rollback gate is configured: nothing could roll back)"
                .to_string()
        }
        Outcome::Inconclusive => format!(
            "monitoring window ended INCONCLUSIVE, not passed: auto-rollback gate(s) never evaluated: {}",
            names(&undecided)
        ),
        Outcome::RolledBack => {
            "a quality gate was violated and the release was rolled back".to_string()
        }
        Outcome::RollbackFailed => {
            "a quality gate was violated and the rollback FAILED: manual intervention required"
                .to_string()
        }
        Outcome::Superseded(why) => format!(
            "the watch of {} ended before its window closed, superseded: {why}",
            release.unwrap_or("the release")
        ),
        Outcome::Interrupted => {
            "monitoring interrupted before the window ended; a restart continues it".to_string()
        }
    };
    if matches!(outcome, Outcome::Completed | Outcome::Inconclusive) && !others.is_empty() {
        message.push_str(&format!(
            "; alert/shadow gate(s) never evaluated (not counted): {}",
            names(&others)
        ));
    }
    Conclusion {
        result,
        state,
        level,
        message,
        never,
    }
}

pub fn run(
    project: &Project,
    env: &EnvConfig,
    (gates, judgment): (Vec<GateSpec>, judge::Settings),
    args: &Args,
    em: &Emitter,
    tee: &Tee,
) -> anyhow::Result<Exit> {
    let up = Upstream::read(em);
    if up.deploy_failed && !up.deploy_healthy {
        return Ok(skip_failed_deploy(em));
    }
    // Signals are handled from the start: a kill while waiting for the lock
    // still ends with a result and an exit code.
    let stop = stop_flag();
    // An interrupted rollback is finished before anything else (issue 13 #2).
    let pending = pending_rollback(env)?;
    let asked = args.release.clone().or(up.release.clone());
    let current = install::current_release_id(env);
    let release = match choose_release(asked, current, pending.as_ref()) {
        Target::Release(r) => r,
        Target::NotCurrent { asked, current } => {
            return Ok(report_not_current(env, em, &asked, current))
        }
    };
    let guard = match claim_or_attach(env, release.as_deref(), args, em, tee)? {
        Role::Watcher(g) => g,
        Role::Attached(exit) => return Ok(exit),
    };
    let now = now_ms();
    if let Some(j) = pending {
        return finish_interrupted(project, env, args, em, tee, &guard, &j, now);
    }
    let backup = args
        .backup
        .clone()
        .or(up.backup.clone())
        .or_else(|| ledger::healthy_backup(env, release.as_deref()));
    let continuation = match args.fresh {
        true => None,
        false => ledger::find_continuation(env, release.as_deref(), now),
    };
    let window = Window::plan(env, args, continuation, now);
    let log = window.open_log(project, env)?;
    if let Err(e) = tee.set_file(&window.events) {
        em.human(&format!(
            "warning: {e:#}; attached monitors cannot follow this watch"
        ));
    }
    let mut w = Watch::new(project, env, em, args.dry_run, release, backup, log);
    w.events = Some(window.events.clone());
    w.judgment = judgment;
    w.timeline.deploy = up
        .deploy_started
        .clone()
        .map(DeployStart::Started)
        .or_else(|| ledger::deploy_start(env, w.release.as_deref()));
    w.timeline.monitoring_started = Some(ts_of(window.start_ms));
    w.watch_window(&guard, &window, gates, args, &stop)
}

/// Finishes the rollback an interrupted watcher left in its journal, as this
/// run's only work (see [`Watch::finish_pending`]).
// The run's context as `run` holds it; bundling it for one call adds nothing.
#[allow(clippy::too_many_arguments)]
fn finish_interrupted(
    project: &Project,
    env: &EnvConfig,
    args: &Args,
    em: &Emitter,
    tee: &Tee,
    guard: &WatchGuard,
    j: &dhash_rollback::Journal,
    now: i64,
) -> anyhow::Result<Exit> {
    let log = RunLog::create(&project.root, env, RunKind::Monitor, &stamp(now))?;
    let events = events_path(env, now);
    if let Err(e) = tee.set_file(&events) {
        em.human(&format!("warning: {e:#}"));
    }
    let span = (now, now);
    let info = watch_info(
        env,
        &j.previous_release,
        span,
        log.path(),
        &events,
        args.detach,
    );
    publish(guard, &info, em);
    let mut w = Watch::new(
        project,
        env,
        em,
        args.dry_run,
        j.previous_release.clone(),
        Some(j.backup.clone()),
        log,
    );
    w.events = Some(events);
    w.finish_pending(j)
}

/// `<log_dir>/events_<env>_<stamp>.jsonl`: every event of one watch.
fn events_path(env: &EnvConfig, t_ms: i64) -> PathBuf {
    env.log_dir
        .join(format!("events_{}_{}.jsonl", env.name, stamp(t_ms)))
}

/// What `watch.json` says of this watch; `span` is the window (start, end) in ms.
fn watch_info(
    env: &EnvConfig,
    release: &Option<String>,
    span: (i64, i64),
    log: &Path,
    events: &Path,
    detached: bool,
) -> WatchInfo {
    WatchInfo {
        pid: std::process::id(),
        env: env.name.clone(),
        release: release.clone(),
        started_at: ts_of(span.0),
        window_end: ts_of(span.1),
        log: log.to_path_buf(),
        events: events.to_path_buf(),
        detached,
    }
}

/// Writes `watch.json`; a failure is said, not fatal (the lock still
/// keeps a second evaluator out).
fn publish(guard: &WatchGuard, info: &WatchInfo, em: &Emitter) {
    if let Err(e) = guard.publish(info) {
        em.human(&format!("warning: cannot register the watch: {e:#}"));
    }
}

enum Outcome {
    Completed,
    Inconclusive,
    RolledBack,
    RollbackFailed,
    Superseded(String),
    Interrupted,
}

impl Outcome {
    fn result(&self) -> WatchResult {
        match self {
            Outcome::Completed => WatchResult::Passed,
            Outcome::Inconclusive => WatchResult::Inconclusive,
            Outcome::RolledBack => WatchResult::RolledBack,
            Outcome::RollbackFailed => WatchResult::RollbackFailed,
            Outcome::Superseded(_) => WatchResult::Superseded,
            Outcome::Interrupted => WatchResult::Interrupted,
        }
    }
}

/// When the next poll is due: on the cadence for the time elapsed in the
/// window, never in the past, never after the window's end.
fn next_poll(env: &EnvConfig, window: &Window, sched_ms: i64, t: i64) -> i64 {
    let elapsed = Duration::from_millis(u64::try_from(t - window.start_ms).unwrap_or(0));
    let interval = i64::try_from(env.monitor.interval_at(elapsed).as_millis()).unwrap_or(i64::MAX);
    let next = sched_ms.saturating_add(interval).max(t);
    // Past the window's end (a watch waiting for a judgment) the cadence
    // goes on: clamping to the end would be a time already passed, a busy loop.
    if t < window.end_ms {
        next.min(window.end_ms)
    } else {
        next
    }
}

fn sleep_until(t_ms: i64, stop: &AtomicBool) {
    loop {
        let left = t_ms - now_ms();
        if left <= 0 || stop.load(Ordering::SeqCst) {
            return;
        }
        std::thread::sleep(Duration::from_millis(left.min(100) as u64));
    }
}

fn sample_fields(s: &gates_core::sample::Sample) -> Value {
    let mut m = Map::new();
    m.insert("health".into(), json!(s.health.label()));
    match &s.health {
        gates_core::sample::Health::Ok => {}
        gates_core::sample::Health::NotOk { detail }
        | gates_core::sample::Health::Error { detail } => {
            m.insert("health_detail".into(), json!(detail));
        }
    }
    match &s.metrics {
        Ok(x) => {
            m.insert(
                "metrics".into(),
                serde_json::to_value(x).unwrap_or_default(),
            );
        }
        Err(e) => {
            m.insert("metrics_error".into(), json!(e));
        }
    }
    Value::Object(m)
}

impl<'a> Watch<'a> {
    fn new(
        project: &'a Project,
        env: &'a EnvConfig,
        em: &'a Emitter,
        dry_run: bool,
        release: Option<String>,
        backup: Option<PathBuf>,
        log: RunLog,
    ) -> Watch<'a> {
        Watch {
            project,
            env,
            em,
            dry_run,
            release,
            backup,
            log,
            timeline: Timeline::default(),
            alerts_active: HashSet::new(),
            notifications: Vec::new(),
            events: None,
            judgment: judge::Settings::default(),
            ask: None,
            settled: None,
            rollback_reason: None,
            window_start_ms: None,
        }
    }
}

/// The window: restore, announce, poll until it ends, conclude, report.
impl Watch<'_> {
    fn watch_window(
        &mut self,
        guard: &WatchGuard,
        window: &Window,
        gates: Vec<GateSpec>,
        args: &Args,
        stop: &AtomicBool,
    ) -> anyhow::Result<Exit> {
        // Issue 17: the gates that read Prometheus are polled apart, never
        // judged from /metrics; refused here when no server is named.
        let (probe_gates, mut prom) = gates_core::promql::PromGates::split(self.env, gates.clone())
            .map_err(gates_core::exit::usage_error)?;
        let baselines = baseline::load(
            &probe_gates,
            &self.judgment.source,
            Some(self.env),
            &self.env.name,
            self.release.as_deref(),
            self.em,
        );
        let mut evaluator = Evaluator::new(probe_gates).with_baselines(baselines);
        let mut summary = Summary::default();
        if window.continued() && window.recording.exists() {
            self.restore(&window.recording, &mut evaluator, &mut summary)?;
        }
        let mut recorder = Recorder::open(&window.recording)?;
        let span = (window.start_ms, window.end_ms);
        self.window_start_ms = Some(window.start_ms);
        let info = watch_info(
            self.env,
            &self.release,
            span,
            self.log.path(),
            &window.events,
            args.detach,
        );
        publish(guard, &info, self.em);
        self.announce(window, &gates, args)?;
        let judges = (&mut evaluator, &mut prom);
        let outcome = self.poll_window(window, judges, &mut summary, &mut recorder, stop);
        let mut never = summary.never_evaluated(&gates);
        if self.settled == Some(judge::Settled::Promoted) {
            // Judged: the inconclusive gates hold the watch back no more.
            never.retain(|n| !n.inconclusive);
        }
        let end = conclude(&outcome, never, &gates, self.release.as_deref());
        self.report_end(window, &end, &summary)?;
        Ok(end.result.exit())
    }

    /// Restores the window's state from what the interrupted run recorded.
    fn restore(
        &mut self,
        recording: &Path,
        evaluator: &mut Evaluator,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        let mut restored = 0u64;
        for s in telemetry::read_samples(recording)? {
            for d in evaluator.observe(&s?) {
                summary.add(&d);
                match (d.action, d.status) {
                    (Action::Alert, Status::Violated) => {
                        self.alerts_active.insert(d.gate.clone());
                    }
                    (Action::Alert, Status::Ok) => {
                        self.alerts_active.remove(&d.gate);
                    }
                    _ => {}
                }
            }
            restored += 1;
        }
        summary.samples = restored;
        Ok(())
    }

    /// `monitor.started`, its log line and the ledger's `started` record.
    fn announce(&mut self, window: &Window, gates: &[GateSpec], args: &Args) -> anyhow::Result<()> {
        let (env, release) = (self.env, self.release.as_deref());
        let log_path = self.log.path().display().to_string();
        let started_fields = json!({
            "release": release,
            "backup": self.backup.as_ref().map(|p| p.display().to_string()),
            "duration_secs": window.duration.as_secs_f64(),
            "cadence": env.monitor.cadence.iter().map(|p| json!({
                "every_secs": p.every.as_secs_f64(),
                "for_secs": p.for_.map(|d| d.as_secs_f64()),
            })).collect::<Vec<_>>(),
            "window_start": ts_of(window.start_ms),
            "window_end": ts_of(window.end_ms),
            "continued": window.continued(),
            "dry_run": args.dry_run,
            "recording": window.recording.display().to_string(),
            "log": log_path,
            "events": window.events.display().to_string(),
            "pid": std::process::id(),
            "detached": args.detach,
            "gates": gates_summary(gates),
        });
        let what = release.unwrap_or("the current release");
        let msg = match window.continued() {
            true => format!(
                "continuing the interrupted window of {what} until {}",
                ts_of(window.end_ms)
            ),
            false => format!(
                "watching {what} for {}",
                gates_core::duration::human(window.duration)
            ),
        };
        self.em
            .emit("monitor.started", Level::Info, msg.clone(), started_fields);
        self.log.line(&format!("Monitoring started: {msg}"));
        if self.backup.is_none() {
            self.em.human("warning: no verified backup is known for this deploy; a rollback would take the newest verified backup of the environment");
        }
        env.ledger().append(
            ledger::MONITOR,
            json!({
                "env": env.name, "state": WindowState::Started.as_str(), "release": release,
                "window_start_ms": window.start_ms, "duration_ms": window.duration_ms(),
                "recording": window.recording.display().to_string(), "log": log_path,
                "events": window.events.display().to_string(), "pid": std::process::id(),
                "dry_run": args.dry_run,
            }),
        )?;
        Ok(())
    }

    /// Polls on the cadence until the window ends, a rollback ends it, or
    /// the watch is superseded or interrupted.
    fn poll_window(
        &mut self,
        window: &Window,
        (evaluator, prom): (&mut Evaluator, &mut gates_core::promql::PromGates),
        summary: &mut Summary,
        recorder: &mut Recorder,
        stop: &AtomicBool,
    ) -> Outcome {
        let me = std::process::id();
        let mut sched_ms = now_ms();
        let outcome = loop {
            if let Some(o) = self.interruption(me, stop) {
                break o;
            }
            let mut decisions = self.poll_once(evaluator, summary, recorder);
            decisions.extend(prom.poll(now_ms()));
            if let Some(o) = self.handle(&decisions, summary) {
                break o;
            }
            let t = now_ms();
            // A watch waiting for a judgment goes on until it comes or its deadline.
            if t >= window.end_ms && self.ask.is_none() {
                break Outcome::Completed;
            }
            sched_ms = next_poll(self.env, window, sched_ms, t);
            sleep_until(sched_ms, stop);
        };
        // A SIGTERM sent by `watch::supersede` comes with its reason.
        match outcome {
            Outcome::Interrupted => match watch::take_superseded(self.env, me) {
                Some(m) => Outcome::Superseded(m.reason),
                None => Outcome::Interrupted,
            },
            o => o,
        }
    }

    /// Why the watch must stop before its next poll, if it must.
    fn interruption(&self, me: u32, stop: &AtomicBool) -> Option<Outcome> {
        if let Some(m) = watch::take_superseded(self.env, me) {
            return Some(Outcome::Superseded(m.reason));
        }
        if stop.load(Ordering::SeqCst) {
            return Some(Outcome::Interrupted);
        }
        self.replaced().map(Outcome::Superseded)
    }

    /// One poll: sample, record, report, evaluate.
    fn poll_once(
        &self,
        evaluator: &mut Evaluator,
        summary: &mut Summary,
        recorder: &mut Recorder,
    ) -> Vec<Decision> {
        let sample = gates_core::probe::poll(self.env);
        if let Err(e) = recorder.record(&sample) {
            self.em.human(&format!("cannot record telemetry: {e:#}"));
        }
        summary.samples += 1;
        self.em.emit(
            "monitor.sample",
            Level::Debug,
            "poll",
            sample_fields(&sample),
        );
        evaluator.observe(&sample)
    }

    /// `monitor.completed`, its log line and the ledger's closing record.
    fn report_end(
        &mut self,
        window: &Window,
        end: &Conclusion,
        summary: &Summary,
    ) -> anyhow::Result<()> {
        let result = end.result.as_str();
        let never_json: Vec<Value> = end.never.iter().map(NeverEvaluated::to_json).collect();
        self.em.emit(
            "monitor.completed",
            end.level,
            end.message.clone(),
            json!({"result": result, "samples": summary.samples, "release": self.release,
                   "pid": std::process::id(),
                   "never_evaluated": never_json, "gates": summary.to_json()}),
        );
        self.log
            .line(&format!("Monitoring {result}: {}", end.message));
        self.env.ledger().append(
            ledger::MONITOR,
            json!({
                "env": self.env.name, "state": end.state.as_str(), "result": result, "release": self.release,
                "window_start_ms": window.start_ms, "duration_ms": window.duration_ms(),
                "recording": window.recording.display().to_string(),
                "log": self.log.path().display().to_string(),
                "events": window.events.display().to_string(), "never_evaluated": never_json,
            }),
        )?;
        Ok(())
    }
}

/// The level a decision is reported at.
fn decision_level(d: &Decision) -> Level {
    match (d.status, d.action) {
        (Status::Violated, Action::AutoRollback) => Level::Critical,
        (Status::Violated | Status::Error | Status::Inconclusive, _) => Level::Warning,
        (Status::Ok | Status::Pending | Status::NoData, _) => Level::Info,
    }
}

/// The line the seeds grep in the monitor's log for a decision.
fn decision_log_line(d: &Decision) -> String {
    let value = d
        .value
        .map(|v| format!("{v:.2}"))
        .unwrap_or_else(|| "n/a".into());
    if d.status == Status::Violated {
        format!(
            "Quality gate failed: {} ({}) value={value} threshold={} {}: {}",
            d.gate,
            d.action.as_str(),
            d.threshold,
            d.unit,
            d.reason
        )
    } else {
        format!(
            "Quality gate {}: {} value={value}: {}",
            d.gate,
            d.status.as_str(),
            d.reason
        )
    }
}

/// Decisions: report each, act on alerts, roll back on the first auto-rollback violation.
impl Watch<'_> {
    /// Reports the decisions of one poll; returns the outcome when the watch must end.
    fn handle(&mut self, decisions: &[Decision], summary: &mut Summary) -> Option<Outcome> {
        let mut rollback_cause: Option<&Decision> = None;
        let mut unsure: Option<&Decision> = None;
        for d in decisions {
            summary.add(d);
            self.report_decision(d);
            match (d.action, d.status) {
                (Action::AutoRollback, Status::Violated) => {
                    rollback_cause = rollback_cause.or(Some(d))
                }
                (Action::AutoRollback, Status::Inconclusive) => unsure = unsure.or(Some(d)),
                _ => self.track_alert(d),
            }
        }
        let Some(cause) = rollback_cause.cloned() else {
            let unsure = unsure.cloned();
            return self.on_inconclusive(unsure.as_ref());
        };
        let others: Vec<Decision> = decisions
            .iter()
            .filter(|d| d.status == Status::Violated && d.gate != cause.gate)
            .cloned()
            .collect();
        self.ledger_gate(&cause);
        if self.dry_run {
            self.skip_rollback(&cause);
            return None;
        }
        Some(self.roll_back(&cause, &others))
    }

    /// The decision's event (with the release it was measured on: `rollback_dhash
    /// --on-violation` acts only while it is still current) and its log line.
    fn report_decision(&mut self, d: &Decision) {
        let mut fields = decision_fields(d);
        if let Value::Object(m) = &mut fields {
            m.insert("release".into(), json!(self.release));
            m.insert(
                "source".into(),
                json!(gates_core::promql::decision_source(d)),
            );
        }
        self.em.emit(
            d.status.event_name(),
            decision_level(d),
            d.reason.to_string(),
            fields,
        );
        self.log.line(&decision_log_line(d));
    }

    /// The guards record state: an alert is sent when it becomes active,
    /// and a resolved notice only for an alert that was active.
    fn track_alert(&mut self, d: &Decision) {
        match (d.action, d.status) {
            (Action::Alert, Status::Violated) if self.alerts_active.insert(d.gate.clone()) => {
                self.ledger_gate(d);
                self.notify(
                    Level::Warning,
                    &format!("Quality gate alert: {} ({})", d.gate, self.env.name),
                    d,
                    &format!("alert:{}", d.gate),
                );
            }
            (Action::Alert, Status::Ok) if self.alerts_active.remove(&d.gate) => {
                self.em.emit(
                    "gate.resolved",
                    Level::Info,
                    format!("{} is back within its threshold", d.gate),
                    decision_fields(d),
                );
                self.log
                    .line(&format!("Quality gate {} resolved: {}", d.gate, d.reason));
                self.ledger_gate(d);
                self.notify(
                    Level::Info,
                    &format!("Resolved: {} ({})", d.gate, self.env.name),
                    d,
                    &format!("resolved:{}", d.gate),
                );
            }
            (Action::Shadow, Status::Violated) => {
                self.log.line(&format!(
                    "Quality gate {} (shadow) would have failed; not acted on",
                    d.gate
                ));
            }
            _ => {}
        }
    }

    /// A dry run says what it would have rolled back, and goes on watching.
    fn skip_rollback(&mut self, cause: &Decision) {
        self.em.emit(
            "monitor.rollback-skipped",
            Level::Warning,
            format!("dry run: {} would have rolled back the release", cause.gate),
            decision_fields(cause),
        );
        self.log
            .line(&format!("Dry run: rollback skipped for {}", cause.gate));
        self.notify(
            Level::Critical,
            &format!(
                "[dry run] Quality gate failed: {} ({})",
                cause.gate, self.env.name
            ),
            cause,
            &format!("rollback:{}", cause.gate),
        );
    }

    fn ledger_gate(&self, d: &Decision) {
        let mut f = decision_fields(d);
        if let Value::Object(m) = &mut f {
            m.insert("release".into(), json!(self.release));
            m.insert("env".into(), json!(self.env.name));
            m.insert("dry_run".into(), json!(self.dry_run));
        }
        if let Err(e) = self.env.ledger().append(ledger::GATE, f) {
            self.em
                .human(&format!("cannot append to the ledger: {e:#}"));
        }
    }

    fn notify(&mut self, level: Level, title: &str, d: &Decision, key: &str) {
        let mut fields = Map::new();
        if let Value::Object(m) = decision_fields(d) {
            fields = m;
        }
        fields.insert("env".into(), json!(self.env.name));
        fields.insert("release".into(), json!(self.release));
        self.send(level, title, &d.reason.to_string(), fields, key);
    }

    fn send(
        &mut self,
        level: Level,
        title: &str,
        message: &str,
        fields: Map<String, Value>,
        key: &str,
    ) {
        let n = dhash_notify::Notification {
            level,
            title: title.to_string(),
            message: message.to_string(),
            fields,
            dedup_key: Some(format!(
                "{}:{}:{}",
                self.env.name,
                self.release.as_deref().unwrap_or("-"),
                key
            )),
        };
        let report = dhash_notify::send(
            self.env,
            &n,
            &dhash_notify::NotifyOptions {
                dry_run: self.dry_run,
            },
            self.em,
        );
        for c in &report.sent {
            self.notifications
                .push(format!("{title}: delivered to {c}"));
        }
        for (c, why) in &report.fallback {
            self.notifications.push(format!(
                "{title}: {c} undelivered ({why}); written to {}",
                self.env.notify.fallback_file.display()
            ));
        }
    }

    /// Why the watched release is no longer the one serving (None: it still is).
    fn replaced(&self) -> Option<String> {
        let r = self.release.as_deref()?;
        if dhash_rollback::is_current(self.env, r) {
            return None;
        }
        Some(format!(
            "current is now {} (a newer deploy or a rollback replaced {r})",
            install::current_release_id(self.env)
                .as_deref()
                .unwrap_or("nothing")
        ))
    }
}

/// Rolling back: the watch's own rollback, or finishing an interrupted one,
/// then the notification and the incident record.
impl Watch<'_> {
    fn roll_back(&mut self, cause: &Decision, others: &[Decision]) -> Outcome {
        self.timeline.issue_detected = Some(ts_of(cause.t_ms));
        let reason = self
            .rollback_reason
            .take()
            .unwrap_or_else(|| format!("quality gate {} violated: {}", cause.gate, cause.reason));
        // The lock first: under it, the release must still be the current one
        // (another actor may have rolled it back or replaced it meanwhile).
        let lock = match acquire(self.env, self.em) {
            Ok(l) => l,
            Err(e) if e.downcast_ref::<SupersededWhileWaiting>().is_some() => {
                let why = e
                    .downcast_ref::<SupersededWhileWaiting>()
                    .map(|s| s.0.clone())
                    .unwrap_or_default();
                self.log.line(&format!(
                    "Rollback not started: {why}; the release is no longer this watch's to undo"
                ));
                return Outcome::Superseded(why);
            }
            Err(e) => {
                self.timeline.rollback_initiated = Some(gates_core::event::now_rfc3339());
                return self.after_rollback(Some(cause), &reason, others, Err(e));
            }
        };
        let opts = dhash_rollback::RollbackOptions {
            backup: self.backup.clone(),
            skip_validation: false,
            dry_run: false,
            reason: Some(reason.clone()),
        };
        let resuming = dhash_rollback::pending(self.env).ok().flatten().is_some();
        if let (Some(r), false) = (self.release.clone(), resuming) {
            if !dhash_rollback::is_current(self.env, &r) {
                let result = dhash_rollback::rollback_release(
                    self.project,
                    self.env,
                    &lock,
                    &opts,
                    &r,
                    self.em,
                );
                return self.settle(cause, &reason, others, result);
            }
        }
        self.timeline.rollback_initiated = Some(gates_core::event::now_rfc3339());
        let title = format!(
            "Quality gate failed: {} ({}) — rolling back",
            cause.gate, self.env.name
        );
        self.notify(
            Level::Critical,
            &title,
            cause,
            &format!("rollback:{}", cause.gate),
        );
        let result = match self.release.clone() {
            Some(r) => {
                dhash_rollback::rollback_release(self.project, self.env, &lock, &opts, &r, self.em)
            }
            None => dhash_rollback::rollback(self.project, self.env, &lock, &opts, self.em)
                .map(dhash_rollback::RollbackOutcome::Done),
        };
        drop(lock);
        self.settle(cause, &reason, others, result)
    }

    /// The watch's outcome of a rollback it asked for: skipped (the release
    /// was no longer current: superseded), done, or failed.
    fn settle(
        &mut self,
        cause: &Decision,
        reason: &str,
        others: &[Decision],
        result: anyhow::Result<dhash_rollback::RollbackOutcome>,
    ) -> Outcome {
        match result {
            Ok(dhash_rollback::RollbackOutcome::Skipped { reason, .. }) => {
                self.log.line(&format!("Rollback skipped: {reason}"));
                Outcome::Superseded(reason)
            }
            Ok(dhash_rollback::RollbackOutcome::Done(report)) => {
                self.after_rollback(Some(cause), reason, others, Ok(report))
            }
            Err(e) => self.after_rollback(Some(cause), reason, others, Err(e)),
        }
    }

    /// Another actor finished (or took over) the rollback this monitor was
    /// waiting to finish: nothing was done here, the window is superseded.
    fn pending_taken_over(&mut self, why: &str) -> anyhow::Result<Exit> {
        let msg = format!(
            "the rollback of {} was finished by another run: {why}; nothing was done by this monitor",
            self.env.name
        );
        self.em.emit(
            "monitor.completed",
            Level::Warning,
            msg.clone(),
            json!({"result": WatchResult::Superseded.as_str(), "samples": 0, "release": self.release,
                   "pid": std::process::id(), "never_evaluated": [], "gates": {}}),
        );
        self.log.line(&format!("Monitoring superseded: {msg}"));
        Ok(Exit::Superseded)
    }

    /// Finishes the rollback an interrupted watcher left in its journal
    /// (killed mid-rollback), then reports it like its own: notification,
    /// incident record, ledger, `monitor.completed` (exit 3, or 4 when it
    /// cannot be finished). Never `passed`.
    fn finish_pending(&mut self, j: &dhash_rollback::Journal) -> anyhow::Result<Exit> {
        let cause = j
            .reason
            .clone()
            .unwrap_or_else(|| "an interrupted rollback (reason not recorded)".to_string());
        self.announce_pending(j, &cause);
        let interrupted = ledger::interrupted_window(self.env);
        let release = j.previous_release.as_deref();
        self.timeline.deploy = ledger::deploy_start(self.env, release);
        self.timeline.monitoring_started = interrupted.map(|(s, _)| ts_of(s));
        self.timeline.rollback_initiated = Some(j.started_at.clone());
        self.timeline.issue_detected = ledger::last_violation_ts(self.env, release);
        let result = if self.dry_run {
            let journal = install::rollback_journal(self.env);
            self.em.human(&format!(
                "dry run: the pending rollback {} is NOT finished; run monitor_dhash --env {} (or rollback_dhash --env {} --force) to finish it",
                journal.display(),
                self.env.name,
                self.env.name
            ));
            WatchResult::RollbackFailed
        } else {
            match self.resume_rollback() {
                Err(why) => return self.pending_taken_over(&why),
                Ok(res) => self.after_rollback(None, &cause, &[], res).result(),
            }
        };
        self.report_pending(result, &cause, interrupted)
    }

    /// `monitor.rollback-pending` and the log lines of a pending rollback.
    fn announce_pending(&mut self, j: &dhash_rollback::Journal, cause: &str) {
        let journal = install::rollback_journal(self.env);
        let msg = format!(
            "an interrupted rollback of {} is pending (journal {}, step {:?}, backup {}, started {}): finishing it before anything else",
            self.env.name,
            journal.display(),
            j.step,
            j.backup.display(),
            j.started_at
        );
        self.em.emit(
            "monitor.rollback-pending",
            Level::Critical,
            msg.clone(),
            json!({"journal": journal, "backup": j.backup,
                   "step": j.step, "release": j.previous_release, "restoring": j.release,
                   "reason": j.reason, "started_at": j.started_at}),
        );
        self.log
            .line(&format!("Quality gate failed earlier: {cause}"));
        self.log.line(&msg);
    }

    /// Resumes the journal's rollback under the environment lock. Err: another
    /// run finished or took over that rollback meanwhile (why, in words).
    fn resume_rollback(&self) -> Result<anyhow::Result<dhash_rollback::RollbackReport>, String> {
        let res = acquire(self.env, self.em).and_then(|lock| {
            // Under the lock: a journal that is gone now belonged to a
            // rollback that was running, not to an interrupted one.
            if dhash_rollback::pending(self.env)?.is_none() {
                return Err(NothingPending.into());
            }
            // No backup named: the journal's is resumed.
            let opts = dhash_rollback::RollbackOptions {
                backup: None,
                skip_validation: false,
                dry_run: false,
                reason: None,
            };
            dhash_rollback::rollback(self.project, self.env, &lock, &opts, self.em)
        });
        if let Err(e) = &res {
            if e.downcast_ref::<NothingPending>().is_some() {
                return Err(e.to_string());
            }
            if let Some(s) = e.downcast_ref::<SupersededWhileWaiting>() {
                return Err(s.0.clone());
            }
        }
        Ok(res)
    }

    /// `monitor.completed` and the ledger's record of a finished pending rollback.
    fn report_pending(
        &mut self,
        result: WatchResult,
        cause: &str,
        interrupted: Option<(i64, u64)>,
    ) -> anyhow::Result<Exit> {
        let msg = match result {
            WatchResult::RolledBack => format!(
                "the interrupted rollback was finished: {} rolled back ({cause})",
                self.env.name
            ),
            _ => format!(
                "the interrupted rollback of {} could NOT be finished (journal {}): manual intervention required",
                self.env.name,
                install::rollback_journal(self.env).display()
            ),
        };
        let name = result.as_str();
        self.em.emit(
            "monitor.completed",
            Level::Critical,
            msg.clone(),
            json!({"result": name, "samples": 0, "release": self.release, "pid": std::process::id(),
                   "finished_pending_rollback": true, "never_evaluated": [], "gates": {}}),
        );
        self.log.line(&format!("Monitoring {name}: {msg}"));
        let (start, dur) = interrupted.unwrap_or((now_ms(), 0));
        self.env.ledger().append(
            ledger::MONITOR,
            json!({
                "env": self.env.name, "state": WindowState::Completed.as_str(), "result": name,
                "release": self.release, "window_start_ms": start, "duration_ms": dur,
                "log": self.log.path().display().to_string(), "finished_pending_rollback": true,
            }),
        )?;
        Ok(result.exit())
    }

    /// Notifications and the incident record after a rollback attempt. A
    /// restore whose post-rollback smoke tests failed is a failed rollback.
    fn after_rollback(
        &mut self,
        cause: Option<&Decision>,
        cause_text: &str,
        others: &[Decision],
        result: anyhow::Result<dhash_rollback::RollbackReport>,
    ) -> Outcome {
        // The events file holds the rollback now: the page can draw it, and
        // the notification below can name it.
        let page = self.write_page(now_ms());
        let (restore, restored) = match result {
            Ok(report) => (
                self.rolled_back(cause, cause_text, &report, &page),
                report.release,
            ),
            Err(e) => (self.rollback_failed(cause, cause_text, &e, &page), None),
        };
        let outcome = match restore.result() {
            WatchResult::RolledBack => Outcome::RolledBack,
            _ => Outcome::RollbackFailed,
        };
        self.write_incident(
            cause,
            cause_text,
            others,
            restored.as_deref(),
            restore,
            &page,
        );
        outcome
    }

    /// Writes the watch page (`report_dhash window`'s HTML) from this
    /// watch's events. Never fails the watch: a failure is warned of and
    /// named in the notification and the incident record instead.
    fn write_page(&self, t_ms: i64) -> WatchPage {
        let path = incident::page_path_for(&self.env.log_dir, &self.env.name, t_ms);
        let written = match self.events.as_deref().filter(|e| e.exists()) {
            None => Err("this watch has no events file".to_string()),
            Some(events) => {
                // A panic while drawing must not end the watch before its
                // notification and incident record either.
                let render =
                    || dhash_report::window::page(&self.env.name, self.release.as_deref(), events);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(render))
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("drawing the page panicked")))
                    .map(|html| gates_core::redact::global().redact(&html))
                    .and_then(|html| fsutil::write_atomic(&path, html.as_bytes()))
                    .map(|()| path.clone())
                    .map_err(|e| format!("cannot write the watch page {}: {e:#}", path.display()))
            }
        };
        if let Err(e) = &written {
            self.log.line(&format!("warning: {e}"));
            self.em.human(&format!("warning: {e}"));
        }
        WatchPage { t_ms, written }
    }

    /// A rollback that returned its report: restored, or up with failed smoke tests.
    fn rolled_back(
        &mut self,
        cause: Option<&Decision>,
        cause_text: &str,
        report: &dhash_rollback::RollbackReport,
        page: &WatchPage,
    ) -> Restore {
        let now = gates_core::event::now_rfc3339();
        let restore = Restore::of_report(report);
        self.timeline.rollback_completed = Some(now.clone());
        let smoke = match report.smoke_passed {
            Some(true) => "smoke tests passed",
            Some(false) => "smoke tests FAILED",
            None => "smoke tests not run",
        };
        let done = format!(
            "Rolled back {} to {} from {} in {:.1}s; {smoke}",
            self.env.name,
            report.release.as_deref().unwrap_or("the backed-up release"),
            report.backup.display(),
            report.seconds_to_healthy
        );
        let mut f = Map::new();
        f.insert("backup".into(), json!(report.backup.display().to_string()));
        f.insert("restored_release".into(), json!(report.release));
        f.insert("gate".into(), json!(cause.map(|c| c.gate.clone())));
        f.insert("reason".into(), json!(cause_text));
        page.insert_into(&mut f);
        let (msg, title, key) = match restore {
            Restore::Restored => {
                self.timeline.service_restored = Some(now);
                let title = format!("Rollback completed ({})", self.env.name);
                (done, title, "rollback-completed")
            }
            _ => {
                f.insert("smoke_passed".into(), json!(false));
                let msg = format!(
                    "ROLLBACK FAILED for {}: the restored release is up, but its post-rollback smoke tests FAILED ({done})",
                    self.env.name
                );
                let title = format!(
                    "ROLLBACK FAILED ({}): restored release up but smoke tests failed; page the on-call",
                    self.env.name
                );
                (msg, title, "rollback-failed")
            }
        };
        let msg = format!("{msg}. {}", page.sentence());
        self.log.line(&msg);
        self.send(Level::Critical, &title, &msg, f, key);
        self.backup = Some(report.backup.clone());
        restore
    }

    fn rollback_failed(
        &mut self,
        cause: Option<&Decision>,
        cause_text: &str,
        e: &anyhow::Error,
        page: &WatchPage,
    ) -> Restore {
        let msg = format!(
            "ROLLBACK FAILED for {}: {e:#}. {}",
            self.env.name,
            page.sentence()
        );
        self.log.line(&msg);
        let mut f = Map::new();
        f.insert("gate".into(), json!(cause.map(|c| c.gate.clone())));
        f.insert("reason".into(), json!(cause_text));
        f.insert("error".into(), json!(format!("{e:#}")));
        page.insert_into(&mut f);
        self.send(
            Level::Critical,
            &format!("ROLLBACK FAILED ({}): page the on-call", self.env.name),
            &msg,
            f,
            "rollback-failed",
        );
        Restore::Failed(format!("{e:#}"))
    }

    /// Writes the incident record (redacted) and says where.
    fn write_incident(
        &mut self,
        cause: Option<&Decision>,
        cause_text: &str,
        others: &[Decision],
        restored: Option<&str>,
        restore: Restore,
        page: &WatchPage,
    ) {
        let text = incident::render(&Incident {
            env: &self.env.name,
            release: self.release.as_deref(),
            restored_release: restored,
            backup: self.backup.as_deref(),
            operator: gates_core::lock::username(),
            violation: cause,
            cause: cause_text,
            other_violations: others,
            timeline: &self.timeline,
            restore,
            notifications: &self.notifications,
            page: page.written.as_deref().map_err(String::as_str),
        });
        let path = incident::path_for(&self.env.log_dir, &self.env.name, page.t_ms);
        let text = gates_core::redact::global().redact(&text);
        match fsutil::write_atomic(&path, text.as_bytes()) {
            Ok(()) => {
                let mut fields = Map::new();
                fields.insert("path".into(), json!(path.display().to_string()));
                page.insert_into(&mut fields);
                self.em.emit(
                    "incident.created",
                    Level::Info,
                    format!("incident record {}", path.display()),
                    Value::Object(fields),
                );
                // Its ack clock and tracker copy are notify's (issue 19).
                dhash_notify::escalation::incident_opened(self.env, &path, self.em);
            }
            Err(e) => self.em.human(&format!(
                "cannot write the incident record {}: {e:#}",
                path.display()
            )),
        }
    }
}

/// The watch was superseded (a deploy or a manual rollback replaced its
/// release) while it waited for the environment lock to roll back.
#[derive(Debug, thiserror::Error)]
#[error("superseded while waiting for the environment lock: {0}")]
struct SupersededWhileWaiting(String);

/// The process's SIGINT/SIGTERM flag, its handler installed on first use.
fn stop_flag() -> Arc<AtomicBool> {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    STOP.get_or_init(|| {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // A second handler cannot be installed (tests run one monitor per process); polling goes on without it.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
        stop
    })
    .clone()
}

/// The lock was awaited for a rollback journal that was gone once it was
/// had: that rollback was running, not interrupted, and has finished.
#[derive(Debug)]
struct NothingPending;

impl std::fmt::Display for NothingPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the rollback that was running has finished: nothing is pending")
    }
}

impl std::error::Error for NothingPending {}

/// The rollback takes the environment lock; another run (a deploy finishing,
/// an operator's manual rollback) may hold it briefly, so wait a little. A
/// watcher told meanwhile that its release was replaced stops waiting
/// ([`SupersededWhileWaiting`]): the release is no longer its to undo.
fn acquire(env: &EnvConfig, em: &Emitter) -> anyhow::Result<EnvLock> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match env.lock(TOOL) {
            Ok(l) => return Ok(l),
            Err(e)
                if e.downcast_ref::<gates_core::lock::LockBusy>().is_some()
                    && Instant::now() < deadline =>
            {
                if let Some(m) = watch::take_superseded(env, std::process::id()) {
                    return Err(SupersededWhileWaiting(m.reason).into());
                }
                if stop_flag().load(Ordering::SeqCst) {
                    anyhow::bail!("interrupted (signal) while waiting for the environment lock");
                }
                em.debug(&format!("waiting for the environment lock: {e:#}"));
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).context("taking the environment lock for the rollback"),
        }
    }
}

/// An inconclusive auto-rollback gate and the environment's policy (issue
/// 16): roll back, keep, or ask a person and wait for `monitor_dhash judge`
/// until the deadline, then take the policy's default.
impl Watch<'_> {
    fn on_inconclusive(&mut self, unsure: Option<&Decision>) -> Option<Outcome> {
        if self.settled.is_some() {
            return None;
        }
        if self.ask.is_some() {
            return self.poll_judgment();
        }
        let d = unsure?;
        match self.judgment.policy.policy {
            OnInconclusive::Keep => None,
            OnInconclusive::Rollback => {
                self.rollback_reason = Some(format!(
                    "quality gate {} inconclusive ({}); the environment's policy rolls back",
                    d.gate, d.reason
                ));
                self.judged_rollback(d)
            }
            OnInconclusive::Ask => {
                self.request_judgment(d);
                None
            }
        }
    }

    /// A rollback decided by policy or judgment: recorded and done as an
    /// automatic one (same act-once path under the environment lock).
    fn judged_rollback(&mut self, cause: &Decision) -> Option<Outcome> {
        self.ledger_gate(cause);
        if self.dry_run {
            self.skip_rollback(cause);
            return None;
        }
        Some(self.roll_back(cause, &[]))
    }

    /// Asks: a ledger request, an event, a log line and a notification
    /// naming the command that answers.
    fn request_judgment(&mut self, d: &Decision) {
        // A restart of a watch that asked takes its request up: a judgment
        // given meanwhile is acted on, and nobody is asked twice.
        let adopt = self.window_start_ms.and_then(|w| {
            judge::adoptable(self.env, self.release.as_deref(), &d.gate, w, now_ms())
        });
        if let Some(req) = adopt {
            let msg = format!(
                "{} is inconclusive: taking up the judgment requested at {} by the earlier watch (pid {}) instead of asking again",
                d.gate,
                req.ts,
                req.pid.map_or("?".into(), |p| p.to_string())
            );
            self.em.emit(
                "judgment.adopted",
                Level::Info,
                msg.clone(),
                json!({"gate": d.gate, "release": self.release, "request_ts": req.ts,
                       "deadline_ms": req.deadline_ms, "pid": req.pid}),
            );
            self.log.line(&format!("Judgment request taken up: {msg}"));
            self.ask = Some((req, d.clone()));
            return;
        }
        let policy = self.judgment.policy;
        let deadline_ms =
            now_ms() + i64::try_from(policy.deadline.as_millis()).unwrap_or(i64::MAX / 2);
        let fields = json!({"env": self.env.name, "release": self.release, "gate": d.gate,
            "deadline_ms": deadline_ms, "deadline": ts_of(deadline_ms), "pid": std::process::id(),
            "window_start_ms": self.window_start_ms,
            "default": policy.default.as_str(), "reason": d.reason.to_string()});
        let rec = match self.env.ledger().append(judge::REQUEST, fields.clone()) {
            Ok(r) => r,
            Err(e) => {
                self.em.human(&format!(
                    "cannot ask for a judgment (ledger: {e:#}); the policy's default applies"
                ));
                self.settled = Some(judge::Settled::Kept);
                return;
            }
        };
        let req: judge::Request = serde_json::from_value(rec).unwrap_or_default();
        let how = format!(
            "monitor_dhash judge --env {} --promote|--rollback --reason \"...\"",
            self.env.name
        );
        let msg = format!(
            "{} is inconclusive: {}. Judge before {} with: {how} (else: {})",
            d.gate,
            d.reason,
            ts_of(deadline_ms),
            policy.default.as_str()
        );
        self.em.emit(
            "judgment.requested",
            Level::Warning,
            msg.clone(),
            fields.clone(),
        );
        self.log.line(&format!("Judgment requested: {msg}"));
        let mut f = Map::new();
        if let Value::Object(m) = fields {
            f = m;
        }
        f.insert("command".into(), json!(how));
        let title = format!("Judgment needed: {} ({})", d.gate, self.env.name);
        self.send(
            Level::Warning,
            &title,
            &msg,
            f,
            &format!("judgment:{}", d.gate),
        );
        self.ask = Some((req, d.clone()));
    }

    /// The judgment given, or the default once the deadline passed.
    fn poll_judgment(&mut self) -> Option<Outcome> {
        let (req, cause) = self.ask.clone()?;
        let received = |j: judge::Judgment| {
            let call = match j.call.as_deref() {
                Some("rollback") => judge::Call::Rollback,
                _ => judge::Call::Promote,
            };
            (
                call,
                j.by.unwrap_or_default(),
                j.reason.unwrap_or_default(),
                "judgment.received",
            )
        };
        let (call, by, reason, event) = match judge::judgment_for(self.env, &req.ts) {
            Some(j) => received(j),
            None if now_ms() >= req.deadline_ms => 'default: {
                let default = self.judgment.policy.default;
                let reason = "no judgment before the deadline: the policy's default";
                let call_str = default.as_str();
                // Under the judgment lock: a `judge` that got in first counts.
                match judge::record_default(self.env, &req, call_str, reason) {
                    Ok(Some(j)) => break 'default received(j),
                    Ok(None) => {}
                    Err(e) => self
                        .em
                        .human(&format!("cannot record the default in the ledger: {e:#}")),
                }
                let call = match default {
                    OnInconclusive::Rollback => judge::Call::Rollback,
                    _ => judge::Call::Promote,
                };
                (
                    call,
                    "deadline".to_string(),
                    reason.to_string(),
                    "judgment.defaulted",
                )
            }
            None => return None,
        };
        self.ask = None;
        let kept = event == "judgment.defaulted" && call == judge::Call::Promote;
        let what = if kept { "keep" } else { call.as_str() };
        let msg = format!("{}: {what} by {by} ({reason})", cause.gate);
        self.em.emit(
            event,
            Level::Warning,
            msg.clone(),
            json!({"gate": cause.gate, "release": self.release, "call": what, "by": by,
                   "reason": reason, "request_ts": req.ts}),
        );
        self.log.line(&format!("Judgment: {msg}"));
        match call {
            // The deadline's "keep" keeps the release, but the watch stays inconclusive.
            judge::Call::Promote if kept => {
                self.settled = Some(judge::Settled::Kept);
                None
            }
            judge::Call::Promote => {
                self.settled = Some(judge::Settled::Promoted);
                None
            }
            judge::Call::Rollback => {
                self.settled = Some(judge::Settled::RolledBack);
                self.rollback_reason = Some(format!(
                    "quality gate {} inconclusive; judged rollback by {by}: {reason}",
                    cause.gate
                ));
                self.judged_rollback(&cause)
            }
        }
    }
}
