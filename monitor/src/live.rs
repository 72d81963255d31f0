//! The live T+60 watch: poll on the configured cadence, evaluate the gates,
//! alert once per alert-gate violation (and once when it clears), and roll
//! back once when an auto-rollback gate is violated.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use gates_core::config::{Action, EnvConfig, GateSpec};
use gates_core::gates::{Decision, Evaluator, Status};
use gates_core::lock::EnvLock;
use gates_core::project::Project;
use gates_core::runlog::{RunKind, RunLog};
use gates_core::watch::{self, Claim, WatchGuard, WatchInfo};
use gates_core::{fsutil, Emitter, Event, Exit, Level, ToolError};
use serde_json::{json, Map, Value};

use crate::attach;
use crate::incident::{self, Incident, Timeline};
use crate::tee::Tee;
use crate::telemetry::{self, Recorder};
use crate::{decision_fields, gates_summary, ts_of, Args, NeverEvaluated, Summary, TOOL};

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
}

/// An interrupted window of the same release that a restarted monitor continues.
#[derive(Debug)]
struct Continuation {
    window_start_ms: i64,
    duration: Duration,
    recording: PathBuf,
    log: PathBuf,
    events: Option<PathBuf>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn stamp(t_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(t_ms)
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| t_ms.to_string())
}

fn find_continuation(env: &EnvConfig, release: Option<&str>, now: i64) -> Option<Continuation> {
    let records = env.ledger().records("monitor").ok()?;
    let last = records.last()?;
    let state = last.get("state")?.as_str()?;
    if state == "completed" {
        return None;
    }
    if last.get("release").and_then(Value::as_str) != release {
        return None;
    }
    let start = last.get("window_start_ms")?.as_i64()?;
    let duration = Duration::from_millis(last.get("duration_ms")?.as_u64()?);
    if start + i64::try_from(duration.as_millis()).ok()? <= now {
        return None;
    }
    Some(Continuation {
        window_start_ms: start,
        duration,
        recording: PathBuf::from(last.get("recording")?.as_str()?),
        log: PathBuf::from(last.get("log")?.as_str()?),
        events: last
            .get("events")
            .and_then(Value::as_str)
            .map(PathBuf::from),
    })
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
                return Ok(Role::Attached(attach::follow(env, &info, em)?));
            }
            Claim::Held(Some(_)) if dhash_rollback::pending(env).ok().flatten().is_some() => {
                // The watcher is rolling its release back right now: let it
                // finish (its result is the answer), never signal it mid-way.
                deadline = Instant::now() + CLAIM_WAIT;
            }
            Claim::Held(Some(info)) => {
                if told != Some(info.pid) {
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
                    told = Some(info.pid);
                }
            }
            Claim::Held(None) => {}
        }
        if Instant::now() >= deadline {
            let holder = watch::read_info(env).ok().flatten();
            return Err(ToolError::new(
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
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(
    project: &Project,
    env: &EnvConfig,
    gates: Vec<GateSpec>,
    args: &Args,
    em: &Emitter,
    tee: &Tee,
) -> anyhow::Result<Exit> {
    let mut up = Upstream::default();
    let bad = gates_core::event::pump_stdin(em, |ev| up.take(ev));
    if bad > 0 {
        em.human(&format!("{bad} malformed line(s) on stdin were ignored"));
    }
    if up.deploy_failed && !up.deploy_healthy {
        em.emit(
            "monitor.skipped",
            Level::Warning,
            "the upstream deploy failed and was switched back: no new release to watch",
            json!({}),
        );
        return Ok(Exit::Failed);
    }
    // Signals are handled from the start: a kill while waiting for the lock
    // still ends with a result and an exit code.
    let stop = stop_flag();
    // An interrupted rollback is finished before anything else (issue 13 #2),
    // even when the release asked for is no longer current: a rollback killed
    // after its switch leaves exactly that state.
    let pending = match dhash_rollback::pending(env) {
        Ok(p) => p,
        Err(e) => {
            return Err(ToolError::new(
                Exit::RollbackFailed,
                e.context("a rollback journal is pending but cannot be read: run rollback_dhash --force to finish it"),
            )
            .into())
        }
    };
    let current = gates_core::service::current_release(env);
    let asked = args.release.clone().or(up.release.clone());
    if let Some(r) = asked
        .as_deref()
        .filter(|r| pending.is_none() && current.as_deref() != Some(*r))
    {
        let msg = format!(
            "release {r} is not the current release of {} (current: {}): it was replaced or rolled back; nothing to watch",
            env.name,
            current.as_deref().unwrap_or("none")
        );
        em.emit(
            "monitor.completed",
            Level::Warning,
            msg,
            json!({"result": "superseded", "release": r, "current_release": current, "samples": 0}),
        );
        return Ok(Exit::Superseded);
    }
    let release = match &pending {
        Some(j) => j.previous_release.clone().or(asked),
        None => asked.or(current),
    };

    let guard = match claim_or_attach(env, release.as_deref(), em, tee)? {
        Role::Watcher(g) => g,
        Role::Attached(exit) => return Ok(exit),
    };

    let now = now_ms();
    let backup = args
        .backup
        .clone()
        .or(up.backup.clone())
        .or_else(|| ledger_backup(env, release.as_deref()));

    if let Some(j) = pending {
        let log = RunLog::create(&project.root, env, RunKind::Monitor, &stamp(now))?;
        let events = events_path(env, now);
        if let Err(e) = tee.set_file(&events) {
            em.human(&format!("warning: {e:#}"));
        }
        publish(
            &guard,
            env,
            &j.previous_release,
            now,
            now,
            &log,
            &events,
            args.detach,
            em,
        );
        let mut w = Watch {
            project,
            env,
            em,
            dry_run: args.dry_run,
            release: j.previous_release.clone(),
            backup: Some(j.backup.clone()),
            log,
            timeline: Timeline::default(),
            alerts_active: HashSet::new(),
            notifications: Vec::new(),
        };
        return w.finish_pending(&j);
    }

    let continuation = if args.fresh {
        None
    } else {
        find_continuation(env, release.as_deref(), now)
    };
    let (window_start_ms, duration, recording, log, events) = match &continuation {
        Some(c) => (
            c.window_start_ms,
            c.duration,
            c.recording.clone(),
            RunLog::open_with_aliases(c.log.clone(), &[])?,
            c.events.clone().unwrap_or_else(|| events_path(env, now)),
        ),
        None => (
            now,
            args.duration.unwrap_or(env.monitor.duration),
            args.record.clone().unwrap_or_else(|| {
                env.log_dir
                    .join(format!("telemetry_{}_{}.csv", env.name, stamp(now)))
            }),
            RunLog::create(&project.root, env, RunKind::Monitor, &stamp(now))?,
            events_path(env, now),
        ),
    };
    if let Err(e) = tee.set_file(&events) {
        em.human(&format!(
            "warning: {e:#}; attached monitors cannot follow this watch"
        ));
    }
    let log_path = log.path().to_path_buf();

    let mut w = Watch {
        project,
        env,
        em,
        dry_run: args.dry_run,
        release: release.clone(),
        backup: backup.clone(),
        log,
        timeline: Timeline {
            deploy_started: up
                .deploy_started
                .clone()
                .or_else(|| ledger_deploy_started(env, release.as_deref())),
            monitoring_started: Some(ts_of(window_start_ms)),
            ..Timeline::default()
        },
        alerts_active: HashSet::new(),
        notifications: Vec::new(),
    };

    let mut evaluator = Evaluator::new(gates.clone());
    let mut summary = Summary::default();
    if continuation.is_some() && recording.exists() {
        // Restore the window's state from what the interrupted run recorded.
        let mut restored = 0u64;
        for s in telemetry::read_samples(&recording)? {
            let s = s?;
            for d in evaluator.observe(&s) {
                summary.add(&d);
                if d.action == Action::Alert {
                    if d.status == Status::Violated {
                        w.alerts_active.insert(d.gate.clone());
                    } else if d.status == Status::Ok {
                        w.alerts_active.remove(&d.gate);
                    }
                }
            }
            restored += 1;
        }
        summary.samples = restored;
    }
    let mut recorder = Recorder::open(&recording)?;
    let window_end_ms = window_start_ms + i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    publish(
        &guard,
        env,
        &release,
        window_start_ms,
        window_end_ms,
        &w.log,
        &events,
        args.detach,
        em,
    );

    let started_fields = json!({
        "release": release,
        "backup": backup.as_ref().map(|p| p.display().to_string()),
        "duration_secs": duration.as_secs_f64(),
        "cadence": env.monitor.cadence.iter().map(|p| json!({
            "every_secs": p.every.as_secs_f64(),
            "for_secs": p.for_.map(|d| d.as_secs_f64()),
        })).collect::<Vec<_>>(),
        "window_start": ts_of(window_start_ms),
        "window_end": ts_of(window_end_ms),
        "continued": continuation.is_some(),
        "dry_run": args.dry_run,
        "recording": recording.display().to_string(),
        "log": log_path.display().to_string(),
        "events": events.display().to_string(),
        "pid": std::process::id(),
        "detached": args.detach,
        "gates": gates_summary(&gates),
    });
    let msg = match &continuation {
        Some(_) => format!(
            "continuing the interrupted window of {} until {}",
            release.as_deref().unwrap_or("the current release"),
            ts_of(window_end_ms)
        ),
        None => format!(
            "watching {} for {}",
            release.as_deref().unwrap_or("the current release"),
            gates_core::duration::human(duration)
        ),
    };
    em.emit("monitor.started", Level::Info, msg.clone(), started_fields);
    w.log.line(&format!("Monitoring started: {msg}"));
    if backup.is_none() {
        em.human("warning: no verified backup is known for this deploy; a rollback would take the newest verified backup of the environment");
    }
    env.ledger().append(
        "monitor",
        json!({
            "env": env.name, "state": "started", "release": release,
            "window_start_ms": window_start_ms, "duration_ms": duration.as_millis() as u64,
            "recording": recording.display().to_string(), "log": log_path.display().to_string(),
            "events": events.display().to_string(), "pid": std::process::id(),
            "dry_run": args.dry_run,
        }),
    )?;

    let me = std::process::id();
    let mut sched_ms = now_ms();
    let outcome = loop {
        if let Some(m) = watch::take_superseded(env, me) {
            break Outcome::Superseded(m.reason);
        }
        if stop.load(Ordering::SeqCst) {
            break Outcome::Interrupted;
        }
        if let Some(why) = w.replaced() {
            break Outcome::Superseded(why);
        }
        let sample = gates_core::probe::poll(env);
        if let Err(e) = recorder.record(&sample) {
            em.human(&format!("cannot record telemetry: {e:#}"));
        }
        summary.samples += 1;
        em.emit(
            "monitor.sample",
            Level::Debug,
            "poll",
            sample_fields(&sample),
        );
        let decisions = evaluator.observe(&sample);
        if let Some(exit) = w.handle(&decisions, &mut summary) {
            break exit;
        }
        let t = now_ms();
        if t >= window_end_ms {
            break Outcome::Completed;
        }
        let elapsed = Duration::from_millis(u64::try_from(t - window_start_ms).unwrap_or(0));
        let interval =
            i64::try_from(env.monitor.interval_at(elapsed).as_millis()).unwrap_or(i64::MAX);
        sched_ms = (sched_ms + interval).max(t).min(window_end_ms);
        sleep_until(sched_ms, &stop);
    };
    // A SIGTERM sent by `watch::supersede` comes with its reason.
    let outcome = match outcome {
        Outcome::Interrupted => match watch::take_superseded(env, me) {
            Some(m) => Outcome::Superseded(m.reason),
            None => Outcome::Interrupted,
        },
        o => o,
    };

    let never = summary.never_evaluated(&gates);
    let undecided: Vec<&NeverEvaluated> = never
        .iter()
        .filter(|n| n.action == Action::AutoRollback)
        .collect();
    let outcome = match outcome {
        Outcome::Completed if !undecided.is_empty() => Outcome::Inconclusive,
        o => o,
    };
    let (exit, state, result, level) = match &outcome {
        Outcome::Completed => (Exit::Ok, "completed", "passed", Level::Info),
        Outcome::Inconclusive => (
            Exit::Inconclusive,
            "completed",
            "inconclusive",
            Level::Warning,
        ),
        Outcome::RolledBack => (
            Exit::GateRolledBack,
            "completed",
            "rolled-back",
            Level::Critical,
        ),
        Outcome::RollbackFailed => (
            Exit::RollbackFailed,
            "completed",
            "rollback-failed",
            Level::Critical,
        ),
        Outcome::Superseded(_) => (Exit::Superseded, "completed", "superseded", Level::Warning),
        Outcome::Interrupted => (Exit::Failed, "interrupted", "interrupted", Level::Warning),
    };
    let names = |v: &[&NeverEvaluated]| {
        v.iter()
            .map(|n| format!("{} ({})", n.gate, n.why))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let others: Vec<&NeverEvaluated> = never
        .iter()
        .filter(|n| n.action != Action::AutoRollback)
        .collect();
    let mut msg = match &outcome {
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
            w.release.as_deref().unwrap_or("the release")
        ),
        Outcome::Interrupted => {
            "monitoring interrupted before the window ended; a restart continues it".to_string()
        }
    };
    if matches!(outcome, Outcome::Completed | Outcome::Inconclusive) && !others.is_empty() {
        msg.push_str(&format!(
            "; alert/shadow gate(s) never evaluated (not counted): {}",
            names(&others)
        ));
    }
    let never_json: Vec<Value> = never.iter().map(NeverEvaluated::to_json).collect();
    em.emit(
        "monitor.completed",
        level,
        msg.clone(),
        json!({"result": result, "samples": summary.samples, "release": w.release,
               "pid": std::process::id(),
               "never_evaluated": never_json, "gates": summary.to_json()}),
    );
    w.log.line(&format!("Monitoring {result}: {msg}"));
    env.ledger().append(
        "monitor",
        json!({
            "env": env.name, "state": state, "result": result, "release": w.release,
            "window_start_ms": window_start_ms, "duration_ms": duration.as_millis() as u64,
            "recording": recording.display().to_string(), "log": log_path.display().to_string(),
            "events": events.display().to_string(), "never_evaluated": never_json,
        }),
    )?;
    drop(guard);
    Ok(exit)
}

/// `<log_dir>/events_<env>_<stamp>.jsonl`: every event of one watch.
fn events_path(env: &EnvConfig, t_ms: i64) -> PathBuf {
    env.log_dir
        .join(format!("events_{}_{}.jsonl", env.name, stamp(t_ms)))
}

/// Writes `watch.json`; a failure is said, not fatal (the lock still
/// keeps a second evaluator out).
#[allow(clippy::too_many_arguments)]
fn publish(
    guard: &WatchGuard,
    env: &EnvConfig,
    release: &Option<String>,
    start_ms: i64,
    end_ms: i64,
    log: &RunLog,
    events: &Path,
    detached: bool,
    em: &Emitter,
) {
    let info = WatchInfo {
        pid: std::process::id(),
        env: env.name.clone(),
        release: release.clone(),
        started_at: ts_of(start_ms),
        window_end: ts_of(end_ms),
        log: log.path().to_path_buf(),
        events: events.to_path_buf(),
        detached,
    };
    if let Err(e) = guard.publish(&info) {
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

impl Watch<'_> {
    /// Reports the decisions of one poll; returns the outcome when the watch must end.
    fn handle(&mut self, decisions: &[Decision], summary: &mut Summary) -> Option<Outcome> {
        let mut rollback_cause: Option<&Decision> = None;
        for d in decisions {
            summary.add(d);
            let level = match (d.status, d.action) {
                (Status::Violated, Action::AutoRollback) => Level::Critical,
                (Status::Violated, _) | (Status::Error, _) => Level::Warning,
                (Status::Ok | Status::Pending | Status::NoData, _) => Level::Info,
            };
            // The release the decision was measured on: `rollback_dhash
            // --on-violation` acts only while it is still current.
            let mut fields = decision_fields(d);
            if let Value::Object(m) = &mut fields {
                m.insert("release".into(), json!(self.release));
            }
            self.em
                .emit(d.status.event_name(), level, d.reason.to_string(), fields);
            let value = d
                .value
                .map(|v| format!("{v:.2}"))
                .unwrap_or_else(|| "n/a".into());
            if d.status == Status::Violated {
                self.log.line(&format!(
                    "Quality gate failed: {} ({}) value={value} threshold={} {}: {}",
                    d.gate,
                    d.action.as_str(),
                    d.threshold,
                    d.unit,
                    d.reason
                ));
            } else {
                self.log.line(&format!(
                    "Quality gate {}: {} value={value}: {}",
                    d.gate,
                    d.status.as_str(),
                    d.reason
                ));
            }
            // The guards record state: an alert is sent when it becomes active,
            // and a resolved notice only for an alert that was active.
            match (d.action, d.status) {
                (Action::AutoRollback, Status::Violated) if rollback_cause.is_none() => {
                    rollback_cause = Some(d);
                }
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
        let cause = rollback_cause?.clone();
        let others: Vec<Decision> = decisions
            .iter()
            .filter(|d| d.status == Status::Violated && d.gate != cause.gate)
            .cloned()
            .collect();
        self.ledger_gate(&cause);
        if self.dry_run {
            self.em.emit(
                "monitor.rollback-skipped",
                Level::Warning,
                format!("dry run: {} would have rolled back the release", cause.gate),
                decision_fields(&cause),
            );
            self.log
                .line(&format!("Dry run: rollback skipped for {}", cause.gate));
            self.notify(
                Level::Critical,
                &format!(
                    "[dry run] Quality gate failed: {} ({})",
                    cause.gate, self.env.name
                ),
                &cause,
                &format!("rollback:{}", cause.gate),
            );
            return None;
        }
        Some(self.roll_back(&cause, &others))
    }

    fn ledger_gate(&self, d: &Decision) {
        let mut f = decision_fields(d);
        if let Value::Object(m) = &mut f {
            m.insert("release".into(), json!(self.release));
            m.insert("env".into(), json!(self.env.name));
            m.insert("dry_run".into(), json!(self.dry_run));
        }
        if let Err(e) = self.env.ledger().append("gate", f) {
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
            gates_core::service::current_release(self.env)
                .as_deref()
                .unwrap_or("nothing")
        ))
    }

    fn roll_back(&mut self, cause: &Decision, others: &[Decision]) -> Outcome {
        self.timeline.issue_detected = Some(ts_of(cause.t_ms));
        let reason = format!("quality gate {} violated: {}", cause.gate, cause.reason);
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

    /// Finishes the rollback an interrupted watcher left in its journal
    /// (killed mid-rollback), then reports it like its own: notification,
    /// incident record, ledger, `monitor.completed` (exit 3, or 4 when it
    /// cannot be finished). Never `passed`.
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
            json!({"result": "superseded", "samples": 0, "release": self.release,
                   "pid": std::process::id(), "never_evaluated": [], "gates": {}}),
        );
        self.log.line(&format!("Monitoring superseded: {msg}"));
        Ok(Exit::Superseded)
    }

    fn finish_pending(&mut self, j: &dhash_rollback::Journal) -> anyhow::Result<Exit> {
        let cause = j
            .reason
            .clone()
            .unwrap_or_else(|| "an interrupted rollback (reason not recorded)".to_string());
        let msg = format!(
            "an interrupted rollback of {} is pending (journal {}, step {:?}, backup {}, started {}): finishing it before anything else",
            self.env.name,
            dhash_rollback::journal_path(self.env).display(),
            j.step,
            j.backup.display(),
            j.started_at
        );
        self.em.emit(
            "monitor.rollback-pending",
            Level::Critical,
            msg.clone(),
            json!({"journal": dhash_rollback::journal_path(self.env), "backup": j.backup,
                   "step": j.step, "release": j.previous_release, "restoring": j.release,
                   "reason": j.reason, "started_at": j.started_at}),
        );
        self.log
            .line(&format!("Quality gate failed earlier: {cause}"));
        self.log.line(&msg);
        let interrupted = self.interrupted_window();
        self.timeline.deploy_started =
            ledger_deploy_started(self.env, j.previous_release.as_deref());
        self.timeline.monitoring_started = interrupted.as_ref().map(|(s, _)| ts_of(*s));
        self.timeline.rollback_initiated = Some(j.started_at.clone());
        self.timeline.issue_detected = self.ledger_violation_ts(j.previous_release.as_deref());
        let (exit, result) = if self.dry_run {
            let msg = format!(
                "dry run: the pending rollback {} is NOT finished; run monitor_dhash --env {} (or rollback_dhash --env {} --force) to finish it",
                dhash_rollback::journal_path(self.env).display(),
                self.env.name,
                self.env.name
            );
            self.em.human(&msg);
            (Exit::RollbackFailed, "rollback-failed")
        } else {
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
                let why = if e.downcast_ref::<NothingPending>().is_some() {
                    Some(e.to_string())
                } else {
                    e.downcast_ref::<SupersededWhileWaiting>()
                        .map(|s| s.0.clone())
                };
                if let Some(why) = why {
                    return self.pending_taken_over(&why);
                }
            }
            match self.after_rollback(None, &cause, &[], res) {
                Outcome::RolledBack => (Exit::GateRolledBack, "rolled-back"),
                _ => (Exit::RollbackFailed, "rollback-failed"),
            }
        };
        let level = Level::Critical;
        let msg = match exit {
            Exit::GateRolledBack => format!(
                "the interrupted rollback was finished: {} rolled back ({cause})",
                self.env.name
            ),
            _ => format!(
                "the interrupted rollback of {} could NOT be finished (journal {}): manual intervention required",
                self.env.name,
                dhash_rollback::journal_path(self.env).display()
            ),
        };
        self.em.emit(
            "monitor.completed",
            level,
            msg.clone(),
            json!({"result": result, "samples": 0, "release": self.release, "pid": std::process::id(),
                   "finished_pending_rollback": true, "never_evaluated": [], "gates": {}}),
        );
        self.log.line(&format!("Monitoring {result}: {msg}"));
        let (start, dur) = interrupted.unwrap_or((now_ms(), 0));
        self.env.ledger().append(
            "monitor",
            json!({
                "env": self.env.name, "state": "completed", "result": result, "release": self.release,
                "window_start_ms": start, "duration_ms": dur,
                "log": self.log.path().display().to_string(), "finished_pending_rollback": true,
            }),
        )?;
        Ok(exit)
    }

    /// The window (start ms, duration ms) of the last monitor record, if it was left open.
    fn interrupted_window(&self) -> Option<(i64, u64)> {
        let records = self.env.ledger().records("monitor").ok()?;
        let last = records.last()?;
        if last.get("state").and_then(Value::as_str) == Some("completed") {
            return None;
        }
        Some((
            last.get("window_start_ms")?.as_i64()?,
            last.get("duration_ms")?.as_u64()?,
        ))
    }

    /// When the newest auto-rollback violation of `release` was recorded.
    fn ledger_violation_ts(&self, release: Option<&str>) -> Option<String> {
        let gates = self.env.ledger().records("gate").ok()?;
        gates
            .iter()
            .rev()
            .filter(|g| g.get("status").and_then(Value::as_str) == Some("violated"))
            .filter(|g| g.get("action").and_then(Value::as_str) == Some("auto-rollback"))
            .find(|g| release.is_none() || g.get("release").and_then(Value::as_str) == release)
            .and_then(|g| g.get("sample_ts").and_then(Value::as_str))
            .map(str::to_string)
    }

    /// Notifications and the incident record after a rollback attempt.
    fn after_rollback(
        &mut self,
        cause: Option<&Decision>,
        cause_text: &str,
        others: &[Decision],
        result: anyhow::Result<dhash_rollback::RollbackReport>,
    ) -> Outcome {
        let now = gates_core::event::now_rfc3339();
        let (outcome, restored, error) = match result {
            Ok(report) => {
                self.timeline.rollback_completed = Some(now.clone());
                self.timeline.service_restored = Some(now);
                let smoke = match report.smoke_passed {
                    Some(true) => "smoke tests passed",
                    Some(false) => "smoke tests FAILED",
                    None => "smoke tests not run",
                };
                let msg = format!(
                    "Rolled back {} to {} from {} in {:.1}s; {smoke}",
                    self.env.name,
                    report.release.as_deref().unwrap_or("the backed-up release"),
                    report.backup.display(),
                    report.seconds_to_healthy
                );
                self.log.line(&msg);
                let mut f = Map::new();
                f.insert("backup".into(), json!(report.backup.display().to_string()));
                f.insert("restored_release".into(), json!(report.release));
                f.insert("gate".into(), json!(cause.map(|c| c.gate.clone())));
                f.insert("reason".into(), json!(cause_text));
                self.send(
                    Level::Critical,
                    &format!("Rollback completed ({})", self.env.name),
                    &msg,
                    f,
                    "rollback-completed",
                );
                self.backup = Some(report.backup.clone());
                (Outcome::RolledBack, report.release, None)
            }
            Err(e) => {
                let msg = format!("ROLLBACK FAILED for {}: {e:#}", self.env.name);
                self.log.line(&msg);
                let mut f = Map::new();
                f.insert("gate".into(), json!(cause.map(|c| c.gate.clone())));
                f.insert("reason".into(), json!(cause_text));
                f.insert("error".into(), json!(format!("{e:#}")));
                self.send(
                    Level::Critical,
                    &format!("ROLLBACK FAILED ({}): page the on-call", self.env.name),
                    &msg,
                    f,
                    "rollback-failed",
                );
                (Outcome::RollbackFailed, None, Some(format!("{e:#}")))
            }
        };
        let text = incident::render(&Incident {
            env: &self.env.name,
            release: self.release.as_deref(),
            restored_release: restored.as_deref(),
            backup: self.backup.as_deref(),
            operator: gates_core::lock::username(),
            violation: cause,
            cause: cause_text,
            other_violations: others,
            timeline: &self.timeline,
            rollback_error: error,
            notifications: &self.notifications,
        });
        let path = incident::path_for(&self.env.log_dir, &self.env.name, now_ms());
        let text = gates_core::redact::global().redact(&text);
        match fsutil::write_atomic(&path, text.as_bytes()) {
            Ok(()) => {
                self.em.emit(
                    "incident.created",
                    Level::Info,
                    format!("incident record {}", path.display()),
                    json!({"path": path.display().to_string()}),
                );
            }
            Err(e) => self.em.human(&format!(
                "cannot write the incident record {}: {e:#}",
                path.display()
            )),
        }
        outcome
    }
}

/// The watch was superseded (a deploy or a manual rollback replaced its
/// release) while it waited for the environment lock to roll back.
#[derive(Debug, thiserror::Error)]
#[error("superseded while waiting for the environment lock: {0}")]
struct SupersededWhileWaiting(String);

/// The rollback takes the environment lock; another run (a deploy finishing,
/// an operator's manual rollback) may hold it briefly, so wait a little. A
/// watcher told meanwhile that its release was replaced stops waiting
/// ([`SupersededWhileWaiting`]): the release is no longer its to undo.
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

/// The backup of the newest healthy deploy of this release, from the ledger.
fn ledger_backup(env: &EnvConfig, release: Option<&str>) -> Option<PathBuf> {
    let deploys = env.ledger().records("deploy").ok()?;
    deploys
        .iter()
        .rev()
        .filter(|r| r.get("result").and_then(Value::as_str) == Some("healthy"))
        .find(|r| release.is_none() || r.get("release").and_then(Value::as_str) == release)
        .and_then(|r| r.get("backup").and_then(Value::as_str))
        .map(PathBuf::from)
        .filter(|p| Path::new(p).exists())
}

fn ledger_deploy_started(env: &EnvConfig, release: Option<&str>) -> Option<String> {
    let deploys = env.ledger().records("deploy").ok()?;
    deploys
        .iter()
        .rev()
        .find(|r| release.is_none() || r.get("release").and_then(Value::as_str) == release)
        .and_then(|r| {
            r.get("started_at")
                .or_else(|| r.get("ts"))
                .and_then(Value::as_str)
        })
        .map(str::to_string)
}
