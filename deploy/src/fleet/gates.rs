//! The environment's quality gates, judged on each moved instance during a
//! wave's bake (issue 17: "each wave must also pass its gates").
//!
//! The gates are the fleet environment's section of the project's
//! `quality-gates-config.json` (`environments.<fleet>.quality_gates`), the
//! same file and the same [`Evaluator`] the T+60 watch uses. Every moved
//! instance gets its own evaluator, fed once a second with a
//! [`gates_core::probe::poll`] of that instance's `/health` and `/metrics`
//! (so a figure is never pooled across instances).
//!
//! - An `auto-rollback` gate `violated` on any moved instance ends the bake
//!   at once and fails the wave as a violation (exit 3, the moved instances
//!   rolled back as for a failed canary); the reason names the gate, the
//!   instance, the figure and the threshold (`fleet.gate.violated`, critical).
//! - An `alert` or `shadow` gate that is violated is reported
//!   (`fleet.gate.violated`, warning or info) and listed, never acted on.
//! - A bake cannot judge a gate whose window is longer than the bake: a rate
//!   or percentile needs telemetry one window old, a sustained gauge must
//!   breach for the whole window. Before anything changes, each
//!   `auto-rollback` gate whose window outlasts a remaining wave's bake is
//!   named in a `fleet.gate.outlasts_bake` warning. At the end of the bake,
//!   every gate whose last decision on an instance was not `ok` or
//!   `violated` (pending, no-data, error, inconclusive) is listed under
//!   `not_judged` in `fleet.wave.judged`, with why; it is never counted as
//!   passed, and it does not fail the wave by itself (the health probes and
//!   the canary comparison still decide). Consecutive (health) and instant
//!   gates need no window and are judged on every poll.
//! - Gates read through Prometheus give a fleet-wide figure, not one
//!   instance's: the bake does not query them; they are listed `not_judged`.
//! - Baseline-relative gates get no baseline here: they are judged as with
//!   a missing baseline (their `fallback`: the fixed threshold, or
//!   inconclusive, i.e. not judged).
//! - A gates file without a section for the fleet environment leaves the
//!   bakes to health and the canary comparison (`fleet.gates.missing`,
//!   warning); a gates file that does not load refuses the rollout (exit 2)
//!   before anything changes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use gates_core::config::fleet::Fleet;
use gates_core::config::{Action, EnvConfig, GateKind, GateSpec};
use gates_core::gates::{Decision, Evaluator, Status};
use gates_core::project::Project;
use gates_core::sample::Sample;
use gates_core::{Emitter, Exit, Level, ToolError};
use serde::Serialize;
use serde_json::json;

/// The gates every bake of a rollout judges.
#[derive(Debug, Clone)]
pub struct BakeGates {
    pub file: PathBuf,
    /// Gates polled from each instance's `/health` and `/metrics`.
    pub probe: Vec<GateSpec>,
    /// Gates read through Prometheus: listed, not judged by a bake.
    pub prometheus: Vec<GateSpec>,
}

impl BakeGates {
    /// No gate at all: the file has no section (or no gate) for the fleet.
    pub fn is_empty(&self) -> bool {
        self.probe.is_empty() && self.prometheus.is_empty()
    }
}

/// Loads the fleet environment's gates from the project's gates file (empty
/// when it has no section for the environment). A file that does not load
/// refuses the rollout (exit 2).
pub fn load(project: &Project, env: &EnvConfig) -> anyhow::Result<BakeGates> {
    let file = project.gates_path();
    let gates = project.gates(None).map_err(|e| {
        anyhow::Error::from(ToolError::new(
            Exit::Usage,
            anyhow!(
                "refusing the rollout to {}: the quality gates its bakes judge could not be loaded: {e}; nothing was changed",
                env.name
            ),
        ))
    })?;
    let (prometheus, probe) = gates
        .environments
        .get(&env.name)
        .map(|section| section.gates.clone())
        .unwrap_or_default()
        .into_iter()
        .partition(|g| g.promql().is_some());
    Ok(BakeGates {
        file,
        probe,
        prometheus,
    })
}

/// Whether a bake of length `bake` can judge `g`: windowed kinds need the
/// whole window inside it; health runs and instant figures need no window.
pub fn judgeable_within(g: &GateSpec, bake: Duration) -> bool {
    match g.kind {
        GateKind::Consecutive | GateKind::Instant => true,
        GateKind::Ratio | GateKind::Percentile | GateKind::Sustained => g.window <= bake,
    }
}

fn human(d: Duration) -> String {
    gates_core::duration::human(d)
}

/// The plan's warnings, before anything changes: no gates at all, or an
/// auto-rollback gate that a remaining wave's bake is too short to judge.
pub fn announce(gates: &BakeGates, env: &EnvConfig, fleet: &Fleet, from_wave: usize, em: &Emitter) {
    if gates.is_empty() {
        em.emit(
            "fleet.gates.missing",
            Level::Warning,
            format!(
                "no quality gates for {} in {} (environments.{}.quality_gates): the bakes judge health and the canary comparison only",
                env.name,
                gates.file.display(),
                env.name
            ),
            json!({"file": gates.file}),
        );
        return;
    }
    for g in gates
        .probe
        .iter()
        .filter(|g| g.action == Action::AutoRollback)
    {
        let short: Vec<(usize, &Duration)> = fleet
            .waves
            .iter()
            .enumerate()
            .skip(from_wave)
            .filter(|(_, w)| !judgeable_within(g, w.bake))
            .map(|(i, w)| (i + 1, &w.bake))
            .collect();
        if short.is_empty() {
            continue;
        }
        let list = short
            .iter()
            .map(|(w, b)| format!("wave {w} ({})", human(**b)))
            .collect::<Vec<_>>()
            .join(", ");
        em.emit(
            "fleet.gate.outlasts_bake",
            Level::Warning,
            format!(
                "auto-rollback gate {} has a {} window, longer than the bake of {list}: those bakes cannot judge it (listed not_judged, never passed)",
                g.name,
                human(g.window)
            ),
            json!({"gate": g.name, "action": g.action, "window_secs": g.window.as_secs_f64(),
                   "waves": short.iter().map(|(w, _)| w).collect::<Vec<_>>(),
                   "bakes_secs": short.iter().map(|(_, b)| b.as_secs_f64()).collect::<Vec<_>>(),
                   "file": gates.file}),
        );
    }
}

/// One gate on one instance, as `fleet.wave.judged` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateResult {
    pub gate: String,
    pub instance: String,
    pub status: Status,
    pub action: Action,
    pub value: Option<f64>,
    pub threshold: f64,
    pub unit: &'static str,
    pub window_secs: f64,
    pub reason: String,
}

/// The gates' outcome of one bake: `judged` (ok or violated on their last
/// poll, or the violation that ended the bake) and `not_judged`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateReport {
    pub file: PathBuf,
    pub judged: Vec<GateResult>,
    pub not_judged: Vec<GateResult>,
}

impl GateReport {
    /// One clause for the wave's reason.
    pub fn summary(&self) -> String {
        let ok = self
            .judged
            .iter()
            .filter(|r| r.status == Status::Ok)
            .count();
        let mut s = format!(
            "quality gates: {ok} of {} gate checks judged ok",
            self.judged.len() + self.not_judged.len()
        );
        let bad: BTreeSet<&str> = self
            .judged
            .iter()
            .filter(|r| r.status == Status::Violated)
            .map(|r| r.gate.as_str())
            .collect();
        if !bad.is_empty() {
            s.push_str(&format!(
                ", violated (not auto-rollback): {}",
                bad.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        let not: BTreeSet<&str> = self.not_judged.iter().map(|r| r.gate.as_str()).collect();
        if !not.is_empty() {
            s.push_str(&format!(
                ", not judged: {}",
                not.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        s
    }
}

/// An auto-rollback gate violated on a moved instance: the wave fails.
#[derive(Debug, Clone)]
pub struct Violation {
    pub reason: String,
}

/// The gates' evaluation during one bake: one evaluator per moved instance.
pub struct BakeWatch<'a> {
    gates: &'a BakeGates,
    bake: Duration,
    wave: usize,
    instances: Vec<String>,
    evaluators: Vec<Evaluator>,
    last: Vec<Vec<Decision>>,
    /// (instance, gate) pairs already reported violated in this bake.
    reported: BTreeSet<(usize, usize)>,
    violated: bool,
}

impl<'a> BakeWatch<'a> {
    pub fn new(gates: &'a BakeGates, instances: Vec<String>, wave: usize, bake: Duration) -> Self {
        let evaluators = instances
            .iter()
            .map(|_| Evaluator::new(gates.probe.clone()))
            .collect();
        BakeWatch {
            gates,
            bake,
            wave,
            last: vec![Vec::new(); instances.len()],
            instances,
            evaluators,
            reported: BTreeSet::new(),
            violated: false,
        }
    }

    /// Feeds moved instance `i`'s poll; `Some` when an auto-rollback gate is
    /// violated on it (the first such gate, reported once).
    pub fn observe(&mut self, i: usize, sample: &Sample, em: &Emitter) -> Option<Violation> {
        let decisions = self.evaluators.get_mut(i)?.observe(sample);
        let name = self.instances.get(i).cloned().unwrap_or_default();
        let mut failed = None;
        for (k, d) in decisions.iter().enumerate() {
            if d.status != Status::Violated || !self.reported.insert((i, k)) {
                continue;
            }
            let level = match d.action {
                Action::AutoRollback => Level::Critical,
                Action::Alert => Level::Warning,
                Action::Shadow => Level::Info,
            };
            let text = describe(d, &name);
            em.emit(
                "fleet.gate.violated",
                level,
                format!("wave {}: {text}", self.wave),
                json!({"instance": name, "wave": self.wave, "gate": d.gate, "action": d.action,
                       "value": d.value, "threshold": d.threshold, "unit": d.unit,
                       "window_secs": d.window_secs, "reason": d.reason.to_string()}),
            );
            if d.action == Action::AutoRollback && !self.violated {
                self.violated = true;
                failed = Some(Violation { reason: text });
            }
        }
        if let Some(slot) = self.last.get_mut(i) {
            *slot = decisions;
        }
        failed
    }

    /// The bake's outcome: each gate's last decision per instance (a bake
    /// ended by a violation ends on it), Prometheus gates and gates never
    /// decided listed not judged.
    pub fn report(&self) -> GateReport {
        let mut judged = Vec::new();
        let mut not_judged = Vec::new();
        for (i, name) in self.instances.iter().enumerate() {
            let last = self.last.get(i).map(Vec::as_slice).unwrap_or_default();
            for (k, g) in self.gates.probe.iter().enumerate() {
                match last.get(k) {
                    Some(d) if matches!(d.status, Status::Ok | Status::Violated) => {
                        judged.push(result(d, name, d.reason.to_string()));
                    }
                    Some(d) => {
                        let why = if judgeable_within(g, self.bake) {
                            d.reason.to_string()
                        } else {
                            format!(
                                "its {} window is longer than this wave's {} bake: {}",
                                human(g.window),
                                human(self.bake),
                                d.reason
                            )
                        };
                        not_judged.push(result(d, name, why));
                    }
                    None => not_judged.push(unpolled(g, name, "no poll reached this gate")),
                }
            }
            for g in &self.gates.prometheus {
                not_judged.push(unpolled(
                    g,
                    name,
                    "read through Prometheus (a fleet-wide figure, not this instance's): a bake does not query it",
                ));
            }
        }
        GateReport {
            file: self.gates.file.clone(),
            judged,
            not_judged,
        }
    }
}

/// "quality gate X (auto-rollback) violated on instance a: <figure against threshold>".
fn describe(d: &Decision, instance: &str) -> String {
    format!(
        "quality gate {} ({}) violated on instance {instance}: {}",
        d.gate,
        d.action.as_str(),
        d.reason
    )
}

fn result(d: &Decision, instance: &str, reason: String) -> GateResult {
    GateResult {
        gate: d.gate.clone(),
        instance: instance.to_string(),
        status: d.status,
        action: d.action,
        value: d.value,
        threshold: d.threshold,
        unit: d.unit,
        window_secs: d.window_secs,
        reason,
    }
}

fn unpolled(g: &GateSpec, instance: &str, why: &str) -> GateResult {
    GateResult {
        gate: g.name.clone(),
        instance: instance.to_string(),
        status: Status::Pending,
        action: g.action,
        value: None,
        threshold: g.threshold,
        unit: g.unit,
        window_secs: g.window.as_secs_f64(),
        reason: why.to_string(),
    }
}
