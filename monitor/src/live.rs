//! The live T+60 watch: poll on the configured cadence, evaluate the gates,
//! alert once per alert-gate violation (and once when it clears), and roll
//! back once when an auto-rollback gate is violated.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use gates_core::config::{Action, EnvConfig, GateSpec};
use gates_core::gates::{Decision, Evaluator, Status};
use gates_core::lock::EnvLock;
use gates_core::project::Project;
use gates_core::{fsutil, Emitter, Event, Exit, Level};
use serde_json::{json, Map, Value};

use crate::incident::{self, Incident, Timeline};
use crate::telemetry::{self, Recorder};
use crate::{decision_fields, gates_summary, ts_of, Args, Summary, TOOL};

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
    })
}

/// The human log the seeds grep (`Quality gate`, `Quality gate failed`).
struct HumanLog {
    path: PathBuf,
}

impl HumanLog {
    fn line(&self, text: &str) {
        let line = format!("{} {}", gates_core::event::now_rfc3339(), text);
        let line = gates_core::redact::global().redact(&line);
        if let Err(e) = fsutil::append_line(&self.path, &line, false) {
            eprintln!("{TOOL}: cannot write {}: {e:#}", self.path.display());
        }
    }
}

struct Watch<'a> {
    project: &'a Project,
    env: &'a EnvConfig,
    em: &'a Emitter,
    dry_run: bool,
    release: Option<String>,
    backup: Option<PathBuf>,
    log: HumanLog,
    timeline: Timeline,
    alerts_active: HashSet<String>,
    notifications: Vec<String>,
}

pub fn run(
    project: &Project,
    env: &EnvConfig,
    gates: Vec<GateSpec>,
    args: &Args,
    em: &Emitter,
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
    let release = up
        .release
        .clone()
        .or_else(|| gates_core::service::current_release(env));
    let now = now_ms();
    let continuation = if args.fresh {
        None
    } else {
        find_continuation(env, release.as_deref(), now)
    };
    let (window_start_ms, duration, recording, log_path) = match &continuation {
        Some(c) => (
            c.window_start_ms,
            c.duration,
            c.recording.clone(),
            c.log.clone(),
        ),
        None => (
            now,
            args.duration.unwrap_or(env.monitor.duration),
            args.record.clone().unwrap_or_else(|| {
                env.log_dir
                    .join(format!("telemetry_{}_{}.csv", env.name, stamp(now)))
            }),
            env.log_dir
                .join(format!("dhash_{}_{}.log", env.name, stamp(now))),
        ),
    };
    let backup = args
        .backup
        .clone()
        .or(up.backup.clone())
        .or_else(|| ledger_backup(env, release.as_deref()));

    let mut w = Watch {
        project,
        env,
        em,
        dry_run: args.dry_run,
        release: release.clone(),
        backup: backup.clone(),
        log: HumanLog {
            path: log_path.clone(),
        },
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

    let started_fields = json!({
        "release": release,
        "backup": backup.as_ref().map(|p| p.display().to_string()),
        "duration_secs": duration.as_secs_f64(),
        "window_start": ts_of(window_start_ms),
        "window_end": ts_of(window_end_ms),
        "continued": continuation.is_some(),
        "dry_run": args.dry_run,
        "recording": recording.display().to_string(),
        "log": log_path.display().to_string(),
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
            "dry_run": args.dry_run,
        }),
    )?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second handler cannot be installed (tests run one monitor per process); polling goes on without it.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }

    let mut sched_ms = now_ms();
    let outcome = loop {
        if stop.load(Ordering::SeqCst) {
            break Outcome::Interrupted;
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

    let (exit, state, result, level) = match &outcome {
        Outcome::Completed => (Exit::Ok, "completed", "passed", Level::Info),
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
        Outcome::Interrupted => (Exit::Failed, "interrupted", "interrupted", Level::Warning),
    };
    let msg = match &outcome {
        Outcome::Completed => {
            "monitoring window completed: every auto-rollback gate held".to_string()
        }
        Outcome::RolledBack => {
            "a quality gate was violated and the release was rolled back".to_string()
        }
        Outcome::RollbackFailed => {
            "a quality gate was violated and the rollback FAILED: manual intervention required"
                .to_string()
        }
        Outcome::Interrupted => {
            "monitoring interrupted before the window ended; a restart continues it".to_string()
        }
    };
    em.emit(
        "monitor.completed",
        level,
        msg.clone(),
        json!({"result": result, "samples": summary.samples, "release": w.release, "gates": summary.to_json()}),
    );
    w.log.line(&format!("Monitoring {result}: {msg}"));
    env.ledger().append(
        "monitor",
        json!({
            "env": env.name, "state": state, "result": result, "release": w.release,
            "window_start_ms": window_start_ms, "duration_ms": duration.as_millis() as u64,
            "recording": recording.display().to_string(), "log": log_path.display().to_string(),
        }),
    )?;
    Ok(exit)
}

enum Outcome {
    Completed,
    RolledBack,
    RollbackFailed,
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
            self.em.emit(
                d.status.event_name(),
                level,
                d.reason.to_string(),
                decision_fields(d),
            );
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

    fn roll_back(&mut self, cause: &Decision, others: &[Decision]) -> Outcome {
        self.timeline.issue_detected = Some(ts_of(cause.t_ms));
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
        let reason = format!("quality gate {} violated: {}", cause.gate, cause.reason);
        let result = acquire(self.env, self.em).and_then(|lock| {
            let opts = dhash_rollback::RollbackOptions {
                backup: self.backup.clone(),
                skip_validation: false,
                dry_run: false,
                reason: Some(reason.clone()),
            };
            dhash_rollback::rollback(self.project, self.env, &lock, &opts, self.em)
        });
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
                f.insert("gate".into(), json!(cause.gate));
                f.insert("reason".into(), json!(cause.reason));
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
                f.insert("gate".into(), json!(cause.gate));
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

/// The rollback takes the environment lock; another run (a deploy finishing,
/// an operator's manual rollback) may hold it briefly, so wait a little.
fn acquire(env: &EnvConfig, em: &Emitter) -> anyhow::Result<EnvLock> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match env.lock(TOOL) {
            Ok(l) => return Ok(l),
            Err(e)
                if e.downcast_ref::<gates_core::lock::LockBusy>().is_some()
                    && Instant::now() < deadline =>
            {
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
