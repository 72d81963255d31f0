//! Fleet rollouts: an environment with `instances` is deployed in waves
//! (`rollout.waves`). Each wave moves its instances one by one (drain,
//! single-instance deploy: install, migrate (the shared schema, once: later
//! instances find nothing pending), switch, restart, health, undrain), then
//! bakes: the moved instances must stay healthy, must hold the
//! environment's quality gates, each instance on its own figures ([`gates`]:
//! an auto-rollback gate violated on any of them fails the wave; a gate whose
//! window outlasts the bake is warned about before anything changes and
//! listed `not_judged`, never passed), and, while the fleet is mixed, must
//! not fail more than the unmoved ones over the same minutes ([`canary`]). A
//! failed wave rolls back only the moved instances, newest first; the others
//! are never touched. Every step is journalled ([`journal`]) under the fleet
//! lock.
//!
//! A plan whose pending migrations are not marked compatible with both
//! releases ([`COMPAT_MARKER`] in the `.up.sql`) is refused before anything
//! changes: the old release keeps serving on the unmoved instances against
//! the new schema.
//!
//! Exit codes: 0 all waves passed; 3 a wave's canary comparison, health or
//! an auto-rollback quality gate broke and the moved instances were rolled
//! back; 1 an instance's deploy failed or the comparison was inconclusive
//! (rolled back likewise); 4 a rollback failed; 2 the plan was refused (or
//! the gates file does not load); 75 locked.
//!
//! Events (each carries `instance` when it is about one): `fleet.started`,
//! `fleet.gates.missing`, `fleet.gate.outlasts_bake`,
//! `fleet.instance.drained`, the single-instance `deploy.*`/`service.*`/
//! `migrate.*` events, `fleet.instance.moved`, `fleet.gate.violated`,
//! `fleet.wave.judged`, `fleet.wave.passed`, `fleet.wave.failed`,
//! `fleet.instance.rolled_back`, `fleet.rolled_back`, `fleet.completed`,
//! `fleet.interrupted`, `fleet.instance.undrain_failed`.

pub mod canary;
pub mod gates;
pub mod instance;
pub mod journal;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use dhash_migrate::release::Bundle;
use gates_core::config::fleet::{Fleet, Wave};
use gates_core::config::EnvConfig;
use gates_core::project::Project;
use gates_core::sample::{Health, Sample};
use gates_core::{Emitter, Exit, Level, ToolError};
use serde_json::json;

use crate::{crash_point, DeployOptions, TOOL};
use canary::{Counts, Histogram, Judgment, Reading, Verdict};
use gates::{BakeGates, BakeWatch};
use instance::Member;
use journal::{FleetJournal, FleetStep};

/// The line a migration's `.up.sql` carries when the previous release runs
/// correctly against the schema it produces (expand-only changes).
pub const COMPAT_MARKER: &str = "-- dhash: mixed-fleet-compatible";

/// Consecutive failed health probes of a moved instance that fail a bake.
const BAKE_HEALTH_FAILURES: u32 = 2;

/// A rollout of bundle `b` to fleet environment `env`.
pub fn run_fleet(
    project: &Project,
    env: &EnvConfig,
    opts: &DeployOptions,
    upstream: Option<PathBuf>,
    b: &Bundle,
    em: &Emitter,
) -> anyhow::Result<Exit> {
    let fleet = env
        .fleet
        .as_ref()
        .ok_or_else(|| anyhow!("{} is not a fleet environment", env.name))?;
    let _lock = env.lock(TOOL)?;
    let members: Vec<Member> = fleet
        .instances
        .iter()
        .map(|i| Member {
            inst: i,
            env: env.instance_env(i),
        })
        .collect();
    let mut j = match FleetJournal::load(env)? {
        Some(j) => resume(env, j, b, em)?,
        None => {
            check_compatible(env, &members, b)?;
            new_journal(&members, b)
        }
    };
    if j.step == FleetStep::RollingBack {
        let why = j
            .reason
            .clone()
            .unwrap_or_else(|| "interrupted rollback".into());
        return Ok(roll_back(
            env,
            fleet,
            &members,
            &mut j,
            &why,
            Exit::Failed,
            em,
        ));
    }
    // Before anything changes: a gates file that does not load refuses.
    let bake_gates = gates::load(project, env)?;
    let targets = fleet.targets();
    em.emit(
        "fleet.started",
        Level::Info,
        format!(
            "rolling {} out to {} in {} waves",
            b.manifest.id,
            env.name,
            targets.len()
        ),
        json!({"release": b.manifest.id, "tag": b.manifest.tag, "waves": targets,
               "instances": members.iter().map(|m| m.name()).collect::<Vec<_>>(),
               "gates": bake_gates.probe.iter().chain(&bake_gates.prometheus)
                   .map(|g| &g.name).collect::<Vec<_>>(),
               "gates_file": bake_gates.file}),
    );
    gates::announce(&bake_gates, env, fleet, j.wave, em);
    for (w, &target) in targets.iter().enumerate().skip(j.wave) {
        j.wave = w;
        if let Some(exit) = move_wave(
            project, env, fleet, &members, &mut j, target, opts, &upstream, b, em,
        )? {
            return Ok(exit);
        }
        crash_point(em, &format!("fleet-wave-{}-moved", w + 1));
        if let Some(exit) = judge_wave(env, fleet, &members, &mut j, target, &bake_gates, em)? {
            return Ok(exit);
        }
        crash_point(em, &format!("fleet-wave-{}-passed", w + 1));
    }
    FleetJournal::remove(env)?;
    em.emit(
        "fleet.completed",
        Level::Info,
        format!(
            "{} runs on all {} instances of {}",
            j.release,
            members.len(),
            env.name
        ),
        json!({"release": j.release, "tag": j.tag, "instances": &j.moved}),
    );
    Ok(Exit::Ok)
}

/// Bakes the wave just moved and decides: `Some(exit)` when it failed and
/// the moved instances were rolled back; `None` when it passed (recorded).
fn judge_wave(
    env: &EnvConfig,
    fleet: &Fleet,
    members: &[Member],
    j: &mut FleetJournal,
    target: usize,
    bake_gates: &BakeGates,
    em: &Emitter,
) -> anyhow::Result<Option<Exit>> {
    let w = j.wave;
    j.step = FleetStep::Baking;
    j.save(env)?;
    let unmoved = &members[target..];
    let wave = Bake {
        number: w + 1,
        spec: &fleet.waves[w],
        gates: (!bake_gates.is_empty()).then_some(bake_gates),
    };
    let judgment = bake(&members[..target], unmoved, &wave, fleet, em);
    em.emit(
        "fleet.wave.judged",
        level_of(judgment.verdict),
        format!(
            "wave {}: {}: {}",
            w + 1,
            judgment.verdict.as_str(),
            judgment.reason
        ),
        json!({"wave": w + 1, "release": j.release, "moved": &j.moved, "judgment": judgment}),
    );
    if judgment.verdict != Verdict::Pass {
        em.emit(
            "fleet.wave.failed",
            Level::Critical,
            format!("wave {} failed: {}; rolling back the {} moved instances", w + 1, judgment.reason, j.moved.len()),
            json!({"wave": w + 1, "release": j.release, "verdict": judgment.verdict, "reason": judgment.reason}),
        );
        let exit = if judgment.verdict == Verdict::Violation {
            Exit::GateRolledBack
        } else {
            Exit::Failed
        };
        return Ok(Some(roll_back(
            env,
            fleet,
            members,
            j,
            &judgment.reason,
            exit,
            em,
        )));
    }
    em.emit(
        "fleet.wave.passed",
        Level::Info,
        format!(
            "wave {} passed: {} of {} instances on {}",
            w + 1,
            target,
            members.len(),
            j.release
        ),
        json!({"wave": w + 1, "release": j.release, "moved": &j.moved}),
    );
    j.wave = w + 1;
    j.step = FleetStep::Moving;
    j.save(env)?;
    Ok(None)
}

fn level_of(v: Verdict) -> Level {
    match v {
        Verdict::Pass => Level::Info,
        Verdict::Violation => Level::Critical,
        Verdict::Inconclusive => Level::Warning,
    }
}

fn new_journal(members: &[Member], b: &Bundle) -> FleetJournal {
    let now = gates_core::event::now_rfc3339();
    FleetJournal {
        release: b.manifest.id.clone(),
        tag: b.manifest.tag.clone(),
        from: members
            .iter()
            .map(|m| {
                (
                    m.name().to_string(),
                    gates_core::install::current_release_id(&m.env),
                )
            })
            .collect::<BTreeMap<_, _>>(),
        moved: Vec::new(),
        wave: 0,
        step: FleetStep::Moving,
        reason: None,
        pid: std::process::id(),
        started_at: now.clone(),
        updated_at: now,
    }
}

/// A journal left by a killed rollout: the same release resumes (or its
/// rollback finishes); another release is refused until that one is done.
fn resume(
    env: &EnvConfig,
    j: FleetJournal,
    b: &Bundle,
    em: &Emitter,
) -> anyhow::Result<FleetJournal> {
    em.emit(
        "fleet.interrupted",
        Level::Warning,
        format!(
            "a rollout of {} (pid {}) stopped at wave {} ({:?}) with {} instances moved; {}",
            j.release,
            j.pid,
            j.wave + 1,
            j.step,
            j.moved.len(),
            if j.step == FleetStep::RollingBack {
                "finishing its rollback"
            } else {
                "resuming it"
            }
        ),
        json!({"release": j.release, "wave": j.wave + 1, "step": j.step, "moved": j.moved,
               "journal": FleetJournal::path(env)}),
    );
    if j.release != b.manifest.id && j.step != FleetStep::RollingBack {
        return Err(ToolError::new(
            Exit::Failed,
            anyhow!(
                "a rollout of {} to {} is unfinished ({}); rerun deploy_dhash --env {} --tag {} to finish it first; nothing was changed",
                j.release, env.name, FleetJournal::path(env).display(), env.name, j.tag
            ),
        )
        .into());
    }
    Ok(j)
}

/// Moves the wave's instances not yet moved. `Some(exit)`: an instance
/// failed and the moved ones were rolled back.
#[allow(clippy::too_many_arguments)]
fn move_wave(
    project: &Project,
    env: &EnvConfig,
    fleet: &Fleet,
    members: &[Member],
    j: &mut FleetJournal,
    target: usize,
    opts: &DeployOptions,
    upstream: &Option<PathBuf>,
    b: &Bundle,
    em: &Emitter,
) -> anyhow::Result<Option<Exit>> {
    for m in &members[..target] {
        let already = j.moved.iter().any(|n| n == m.name());
        if already && done_moving(m, &j.release) {
            continue;
        }
        if !already {
            j.moved.push(m.name().to_string());
        }
        j.step = FleetStep::Moving;
        j.save(env)?;
        // One backup of the shared database is enough: the first move's.
        let first = j.moved.len() == 1;
        let iopts = DeployOptions {
            no_monitor: true,
            no_backup: opts.no_backup || !first,
            backup_first: opts.backup_first && first,
            ..opts.clone()
        };
        let up = if first { upstream.clone() } else { None };
        match instance::move_instance(project, m, &iopts, up, b, fleet.drain, em) {
            Ok(r) => em.emit(
                "fleet.instance.moved",
                Level::Info,
                format!(
                    "instance {} runs {} (wave {})",
                    m.name(),
                    r.release,
                    j.wave + 1
                ),
                json!({"instance": m.name(), "wave": j.wave + 1, "release": r.release,
                       "from": r.from, "unchanged": r.unchanged}),
            ),
            Err(e) => {
                // The single-instance deploy switched this one back itself.
                let inner = gates_core::exit::exit_for(&e);
                j.moved.retain(|n| n != m.name());
                let why = format!("instance {} failed to deploy: {e:#}", m.name());
                let exit = if inner == Exit::RollbackFailed {
                    inner
                } else {
                    Exit::Failed
                };
                em.human(&why);
                return Ok(Some(roll_back(env, fleet, members, j, &why, exit, em)));
            }
        };
    }
    Ok(None)
}

/// A moved instance (of an earlier wave, or of this one before a kill)
/// that serves `release` with no single-instance deploy left half done.
fn done_moving(m: &Member, release: &str) -> bool {
    gates_core::install::current_release_id(&m.env).as_deref() == Some(release)
        && !gates_core::install::deploy_journal(&m.env).exists()
}

/// Rolls the moved instances back, newest first, then ends the rollout.
/// Returns `exit`, or 4 when an instance could not be rolled back.
fn roll_back(
    env: &EnvConfig,
    fleet: &Fleet,
    members: &[Member],
    j: &mut FleetJournal,
    reason: &str,
    exit: Exit,
    em: &Emitter,
) -> Exit {
    j.step = FleetStep::RollingBack;
    j.reason = Some(reason.to_string());
    if let Err(e) = j.save(env) {
        em.human(&format!("warning: journal not written: {e:#}"));
    }
    crash_point(em, "fleet-rolling-back");
    let mut failed = Vec::new();
    for name in j.moved.clone().iter().rev() {
        let Some(m) = members.iter().find(|m| m.name() == name) else {
            continue;
        };
        let to = j.from.get(name).cloned().flatten();
        let now = gates_core::install::current_release_id(&m.env);
        let result = match &to {
            Some(to) if now.as_deref() == Some(to.as_str()) => Ok(()),
            Some(to) => instance::roll_back_instance(m, &j.release, to, reason, fleet.drain, em),
            None => Err(anyhow!(
                "instance {name} ran no release before this rollout: nothing to go back to"
            )),
        };
        if let Err(e) = result {
            em.emit(
                "fleet.instance.rollback_failed",
                Level::Critical,
                format!("instance {name} could not be rolled back: {e:#}"),
                json!({"instance": name, "release": j.release, "error": format!("{e:#}")}),
            );
            failed.push(name.clone());
        } else {
            crash_point(em, "fleet-instance-rolled-back");
        }
    }
    let exit = if failed.is_empty() {
        exit
    } else {
        Exit::RollbackFailed
    };
    if failed.is_empty() {
        if let Err(e) = FleetJournal::remove(env) {
            em.human(&format!("warning: {e:#}"));
        }
    }
    em.emit(
        "fleet.rolled_back",
        if failed.is_empty() {
            Level::Warning
        } else {
            Level::Critical
        },
        format!(
            "{} rolled back on {} instances ({}); untouched: {}",
            j.release,
            j.moved.len() - failed.len(),
            reason,
            members
                .iter()
                .filter(|m| !j.moved.iter().any(|n| n == m.name()))
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        json!({"release": j.release, "rolled_back": &j.moved, "failed": failed,
               "reason": reason, "exit": exit.code()}),
    );
    exit
}

/// The wave being baked: its number (1-based), its plan and the gates its
/// bake judges (`None`: the environment has none).
struct Bake<'a> {
    number: usize,
    spec: &'a Wave,
    gates: Option<&'a BakeGates>,
}

/// The wave's bake: the moved instances are polled every second, for
/// health and (when the environment has gates) the quality gates on each
/// one's own figures; at the end, while the fleet is mixed, moved and
/// unmoved are compared over the same period. A full fleet only needs its
/// health and gates.
fn bake(
    moved: &[Member],
    unmoved: &[Member],
    wave: &Bake,
    fleet: &Fleet,
    em: &Emitter,
) -> Judgment {
    let read_all = |ms: &[Member]| -> Result<Vec<Reading>, String> {
        ms.iter()
            .map(|m| canary::read(&m.env).map_err(|e| format!("{}: {e}", m.name())))
            .collect()
    };
    let start = (read_all(moved), read_all(unmoved));
    em.human(&format!(
        "baking for {}",
        gates_core::duration::human(wave.spec.bake)
    ));
    let mut watch = wave.gates.map(|g| {
        let names = moved.iter().map(|m| m.name().to_string()).collect();
        BakeWatch::new(g, names, wave.number, wave.spec.bake)
    });
    let broke = watch_bake(moved, wave.spec.bake, watch.as_mut(), em);
    let report = watch.as_ref().map(BakeWatch::report);
    let completed = broke.is_none();
    let mut j = match broke {
        Some(Broke::Health(bad)) => health_violation(bad),
        Some(Broke::Gate(reason)) => Judgment::without_comparison(Verdict::Violation, reason),
        None => compare(start, (read_all(moved), read_all(unmoved)), unmoved, fleet),
    };
    if let Some(r) = report {
        if completed {
            j.reason = format!("{}; {}", j.reason, r.summary());
        }
        j.gates = Some(r);
    }
    j
}

/// Moved against unmoved growth over the bake (or, with the whole fleet
/// moved, a pass: its health held).
fn compare(
    start: (Result<Vec<Reading>, String>, Result<Vec<Reading>, String>),
    end: (Result<Vec<Reading>, String>, Result<Vec<Reading>, String>),
    unmoved: &[Member],
    fleet: &Fleet,
) -> Judgment {
    let canary_side = growth(start.0, end.0);
    let baseline_side = growth(start.1, end.1);
    if unmoved.is_empty() {
        return Judgment {
            canary: canary_side.map(|s| s.0).unwrap_or_default(),
            ..Judgment::without_comparison(
                Verdict::Pass,
                "the whole fleet runs the release and stayed healthy (no baseline left to compare)"
                    .into(),
            )
        };
    }
    match (canary_side, baseline_side) {
        (Ok((c, ch)), Ok((b, bh))) => canary::judge(c, b, &fleet.canary)
            .with_latency(canary::judge_latency(&ch, &bh, &fleet.canary)),
        (Err(e), _) | (_, Err(e)) => Judgment::without_comparison(
            Verdict::Inconclusive,
            format!("metrics could not be read: {e}"),
        ),
    }
}

/// A side's growth over the bake: counters and hash-time histogram, pooled
/// over its instances.
fn growth(
    start: Result<Vec<Reading>, String>,
    end: Result<Vec<Reading>, String>,
) -> Result<(Counts, Histogram), String> {
    let mut hist = Histogram::default();
    let mut counts = Counts::default();
    for (s, e) in start?.into_iter().zip(end?) {
        counts = counts.plus(e.counts.since(s.counts));
        hist.add_growth(&s.buckets, &e.buckets);
    }
    Ok((counts, hist))
}

/// What ended a bake early.
enum Broke {
    /// A moved instance failed [`BAKE_HEALTH_FAILURES`] probes in a row:
    /// its name and the last answer.
    Health((String, String)),
    /// An auto-rollback gate was violated on a moved instance.
    Gate(String),
}

/// One poll of a moved instance: health, and its metrics when gates read them.
fn poll(m: &Member, with_metrics: bool) -> Sample {
    if with_metrics {
        return gates_core::probe::poll(&m.env);
    }
    Sample {
        t_ms: gates_core::probe::now_ms(),
        health: gates_core::probe::probe_health(&m.env.health_url, m.env.monitor.probe_timeout),
        metrics: Err("not read: no gate needs it".into()),
    }
}

/// Polls the moved instances every second (side by side) for `bake`, the
/// last poll at its end; each poll goes to the instance's gates. Stops at
/// the first health run or auto-rollback gate that breaks.
fn watch_bake(
    moved: &[Member],
    bake: Duration,
    mut watch: Option<&mut BakeWatch>,
    em: &Emitter,
) -> Option<Broke> {
    let started = Instant::now();
    let until = started + bake;
    let t0_ms = gates_core::probe::now_ms();
    let mut misses = vec![0u32; moved.len()];
    let with_metrics = watch.is_some();
    loop {
        // Every sample of a poll round is stamped from the monotonic clock:
        // the last round is a whole bake after the first, so a window as
        // long as the bake is covered (wall-clock stamps taken in each
        // probe thread could come out a millisecond short).
        let tick_ms = t0_ms + i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX / 2);
        let mut samples: Vec<Sample> = std::thread::scope(|s| {
            let polls: Vec<_> = moved
                .iter()
                .map(|m| s.spawn(move || poll(m, with_metrics)))
                .collect();
            polls
                .into_iter()
                .map(|p| {
                    p.join().unwrap_or_else(|_| Sample {
                        t_ms: gates_core::probe::now_ms(),
                        health: Health::Error {
                            detail: "the probe panicked".into(),
                        },
                        metrics: Err("the probe panicked".into()),
                    })
                })
                .collect()
        });
        for sample in &mut samples {
            sample.t_ms = tick_ms;
        }
        for (i, (m, sample)) in moved.iter().zip(&samples).enumerate() {
            if sample.health.is_ok() {
                misses[i] = 0;
            } else {
                misses[i] += 1;
                if misses[i] >= BAKE_HEALTH_FAILURES {
                    let last = sample.health.label().to_string();
                    return Some(Broke::Health((m.name().to_string(), last)));
                }
            }
            if let Some(v) = watch.as_deref_mut().and_then(|w| w.observe(i, sample, em)) {
                return Some(Broke::Gate(v.reason));
            }
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(left.min(Duration::from_secs(1)));
    }
}

fn health_violation((name, health): (String, String)) -> Judgment {
    Judgment::without_comparison(
        Verdict::Violation,
        format!("instance {name} failed {BAKE_HEALTH_FAILURES} health checks in a row during the bake ({health})"),
    )
}

/// Refuses (exit 2, nothing changed) a rollout whose pending migrations
/// lack [`COMPAT_MARKER`] while some instance serves a release: during the
/// waves that release runs against the new schema.
fn check_compatible(env: &EnvConfig, members: &[Member], b: &Bundle) -> anyhow::Result<()> {
    let serving = members
        .iter()
        .any(|m| gates_core::install::current_release_id(&m.env).is_some());
    if !serving || !env.database.is_file() {
        return Ok(());
    }
    let pending = dhash_migrate::pending(&env.database, &b.dir.join("migrations"))?;
    let unmarked: Vec<String> = pending
        .iter()
        .filter(|m| !m.up_sql.lines().any(|l| l.trim() == COMPAT_MARKER))
        .map(|m| m.label())
        .collect();
    if unmarked.is_empty() {
        return Ok(());
    }
    Err(ToolError::new(
        Exit::Usage,
        anyhow!(
            "refusing the rollout of {} to {}: its pending migrations {} are not marked compatible with the release still serving on the unmoved instances (a line `{COMPAT_MARKER}` in the .up.sql says the previous release works against the new schema); nothing was changed",
            b.manifest.id,
            env.name,
            unmarked.join(", ")
        ),
    )
    .into())
}
