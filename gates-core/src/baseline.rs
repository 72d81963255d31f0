//! Baseline-relative gates (issue 16): a gate may compare its figure with
//! the same figure measured on a baseline (recorded windows of releases that
//! passed their watch, a pinned release, or an explicit recording) instead
//! of, or as well as, its fixed threshold.
//!
//! The baseline figure of a gate is the median of the figures the gate
//! measured over the baseline recordings, each recording evaluated on its
//! own by the same [`Evaluator`] (so a window never spans two recordings):
//! the p95 of a typical window of the known-good release, not of its worst.
//! The limit is `baseline × (1 + max_increase_percent / 100)` or
//! `baseline + max_increase` (in the gate's unit: percentage points for a
//! rate); with both set, the larger (the absolute slack keeps a near-zero
//! baseline from tripping on noise).
//!
//! A baseline with no recording is `missing`; one with fewer figures than
//! the rule's `min_figures` is `thin`. Neither is ever a silent pass: per
//! gate, `fallback` says whether the fixed threshold then decides alone
//! (`threshold`, the default) or the gate turns `inconclusive`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{ConfigError, GateSpec};
use crate::gates::{fmt_num, Evaluator, Status};
use crate::sample::Sample;

/// `quality_gates.<gate>.baseline` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBaselineRule {
    #[serde(default)]
    pub max_increase_percent: Option<f64>,
    #[serde(default)]
    pub max_increase: Option<f64>,
    #[serde(default)]
    pub fallback: Option<Fallback>,
    #[serde(default)]
    pub min_figures: Option<u64>,
    /// Whether the fixed threshold still applies (default true).
    #[serde(default)]
    pub threshold_too: Option<bool>,
}

/// What a gate does when its baseline is missing or thin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    /// The fixed threshold decides alone (and says so).
    Threshold,
    /// The gate is `inconclusive`; the environment's policy decides.
    Inconclusive,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Threshold => "threshold",
            Fallback::Inconclusive => "inconclusive",
        }
    }
}

/// A validated baseline rule of one gate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineRule {
    pub max_increase_percent: Option<f64>,
    pub max_increase: Option<f64>,
    pub fallback: Fallback,
    pub min_figures: u64,
    pub threshold_too: bool,
}

/// Figures a baseline needs by default to be more than thin.
pub const DEFAULT_MIN_FIGURES: u64 = 5;

impl BaselineRule {
    /// The highest figure the rule allows over `baseline`.
    pub fn limit(&self, baseline: f64) -> f64 {
        let rel = self
            .max_increase_percent
            .map(|p| baseline * (1.0 + p / 100.0));
        let abs = self.max_increase.map(|a| baseline + a);
        match (rel, abs) {
            (Some(r), Some(a)) => r.max(a),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => baseline,
        }
    }

    /// "+20 %", "+1.5 %" (points), or both.
    pub fn describe(&self, unit: &str) -> String {
        let pct = self
            .max_increase_percent
            .map(|p| format!("+{} %", fmt_num(p)));
        let abs = self.max_increase.map(|a| {
            let unit = if unit == "%" { "pp" } else { unit };
            format!("+{} {unit}", fmt_num(a))
        });
        match (pct, abs) {
            (Some(p), Some(a)) => format!("{p} or {a}, the larger"),
            (Some(x), None) | (None, Some(x)) => x,
            (None, None) => "+0".into(),
        }
    }
}

/// Checks `quality_gates.<gate>.baseline`.
pub fn validate_rule(
    file: &Path,
    path: &str,
    raw: &RawBaselineRule,
) -> Result<BaselineRule, ConfigError> {
    let err = |field: &str, msg: &str| ConfigError::new(file, format!("{path}.{field}"), msg);
    for (field, v) in [
        ("max_increase_percent", raw.max_increase_percent),
        ("max_increase", raw.max_increase),
    ] {
        if v.is_some_and(|v| !(0.0..=1e6).contains(&v) || !v.is_finite()) {
            return Err(err(field, "expected a number from 0 to 1000000"));
        }
    }
    if raw.max_increase_percent.is_none() && raw.max_increase.is_none() {
        return Err(ConfigError::new(
            file,
            path,
            "a baseline rule needs \"max_increase_percent\" (20 allows 20 % above the baseline) or \"max_increase\" (in the gate's unit; percentage points for a rate)",
        ));
    }
    let min_figures = raw.min_figures.unwrap_or(DEFAULT_MIN_FIGURES);
    if min_figures == 0 || min_figures > 1_000_000 {
        return Err(err(
            "min_figures",
            "expected a whole number from 1 to 1000000",
        ));
    }
    Ok(BaselineRule {
        max_increase_percent: raw.max_increase_percent,
        max_increase: raw.max_increase,
        fallback: raw.fallback.unwrap_or(Fallback::Threshold),
        min_figures,
        threshold_too: raw.threshold_too.unwrap_or(true),
    })
}

/// `environments.<env>.baseline` as written: where the baseline comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBaselineSource {
    /// A release pinned as known-good: its passed watches' recordings.
    #[serde(default)]
    pub release: Option<String>,
    /// Explicit recordings (relative paths from the gates file's folder).
    #[serde(default)]
    pub recordings: Option<Vec<PathBuf>>,
    /// How many of the newest passed watches make the baseline (default 3).
    #[serde(default)]
    pub last_n: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
}

/// Where an environment's baseline comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BaselineSource {
    /// The last `n` passed watches of the environment (of other releases
    /// than the one watched): the default.
    LastPassed { n: usize },
    /// The last `n` passed watches of one pinned release.
    Release { release: String, n: usize },
    /// These recordings.
    Recordings { files: Vec<PathBuf> },
}

pub const DEFAULT_LAST_N: usize = 3;

impl Default for BaselineSource {
    fn default() -> Self {
        BaselineSource::LastPassed { n: DEFAULT_LAST_N }
    }
}

impl BaselineSource {
    /// In words, for events and decisions.
    pub fn describe(&self, env: &str) -> String {
        match self {
            BaselineSource::LastPassed { n } => format!("the last {n} passed watch(es) of {env}"),
            BaselineSource::Release { release, n } => {
                format!("the last {n} passed watch(es) of pinned release {release}")
            }
            BaselineSource::Recordings { files } => format!(
                "recording(s) {}",
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// Checks `environments.<env>.baseline`; relative recording paths are taken
/// from `base_dir` (the gates file's folder).
pub fn validate_source(
    file: &Path,
    path: &str,
    raw: &RawBaselineSource,
    base_dir: &Path,
) -> Result<BaselineSource, ConfigError> {
    let n = match &raw.last_n {
        None | Some(Value::Null) => DEFAULT_LAST_N,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=1000).contains(&n) => n as usize,
            _ => {
                return Err(ConfigError::new(
                    file,
                    format!("{path}.last_n"),
                    format!("expected a whole number from 1 to 1000, found {v}"),
                ))
            }
        },
    };
    match (&raw.release, &raw.recordings) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            file,
            path,
            "give \"release\" (a pinned known-good release) or \"recordings\", not both",
        )),
        (Some(r), None) => Ok(BaselineSource::Release {
            release: r.clone(),
            n,
        }),
        (None, Some(files)) => Ok(BaselineSource::Recordings {
            files: files.iter().map(|f| base_dir.join(f)).collect(),
        }),
        (None, None) => Ok(BaselineSource::LastPassed { n }),
    }
}

/// The state of a gate's baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineState {
    Ready,
    Missing,
    Thin,
}

impl BaselineState {
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineState::Ready => "ready",
            BaselineState::Missing => "missing",
            BaselineState::Thin => "thin",
        }
    }
}

/// One gate's baseline, as measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    pub state: BaselineState,
    /// The median figure (None when missing).
    pub value: Option<f64>,
    /// Decisions with a figure over the baseline recordings.
    pub figures: u64,
    /// Samples in the baseline recordings.
    pub samples: u64,
    pub recordings: usize,
    /// Where it came from, in words.
    pub source: String,
    /// Why it is missing or thin (None when ready).
    pub why: Option<String>,
}

impl Baseline {
    /// A baseline with no recording at all.
    pub fn missing(source: &str, why: &str) -> Baseline {
        Baseline {
            state: BaselineState::Missing,
            value: None,
            figures: 0,
            samples: 0,
            recordings: 0,
            source: source.to_string(),
            why: Some(why.to_string()),
        }
    }

    /// The value to compare with, when the baseline is usable.
    pub fn ready_value(&self) -> Option<f64> {
        match self.state {
            BaselineState::Ready => self.value,
            _ => None,
        }
    }

    /// "baseline 1000 ms (median of 40 figures, 3 recordings: the last 3 …)".
    pub fn describe(&self, unit: &str) -> String {
        match (self.state, self.value) {
            (BaselineState::Ready, Some(v)) => format!(
                "baseline {} {unit} (median of {} figures from {} sample(s) in {} recording(s): {})",
                fmt_num(v),
                self.figures,
                self.samples,
                self.recordings,
                self.source
            ),
            (state, _) => format!(
                "baseline {}: {}",
                state.as_str(),
                self.why.as_deref().unwrap_or("no figure")
            ),
        }
    }
}

/// Builds the baselines of a set of gates from recordings, each recording
/// evaluated on its own with the gates' plain (fixed-threshold) evaluation.
#[derive(Debug)]
pub struct BaselineBuilder {
    gates: Vec<GateSpec>,
    figures: Vec<Vec<f64>>,
    samples: u64,
    recordings: usize,
}

impl BaselineBuilder {
    pub fn new(gates: &[GateSpec]) -> Self {
        let plain: Vec<GateSpec> = gates
            .iter()
            .map(|g| GateSpec {
                baseline: None,
                ..g.clone()
            })
            .collect();
        BaselineBuilder {
            figures: vec![Vec::new(); plain.len()],
            gates: plain,
            samples: 0,
            recordings: 0,
        }
    }

    /// One recording's samples, in time order.
    pub fn add_recording(&mut self, samples: impl IntoIterator<Item = Sample>) {
        let mut ev = Evaluator::new(self.gates.clone());
        for s in samples {
            self.samples += 1;
            for (i, d) in ev.observe(&s).into_iter().enumerate() {
                if let (Status::Ok | Status::Violated, Some(v)) = (d.status, d.value) {
                    self.figures[i].push(v);
                }
            }
        }
        self.recordings += 1;
    }

    /// One baseline per gate (None for a gate without a baseline rule).
    pub fn finish(mut self, specs: &[GateSpec], source: &str) -> Vec<Option<Arc<Baseline>>> {
        let figures = std::mem::take(&mut self.figures);
        specs
            .iter()
            .zip(figures)
            .map(|(g, mut figs)| {
                let rule = g.baseline.as_ref()?;
                Some(Arc::new(self.baseline_of(rule, &mut figs, source)))
            })
            .collect()
    }

    fn baseline_of(&self, rule: &BaselineRule, figs: &mut [f64], source: &str) -> Baseline {
        if self.recordings == 0 {
            return Baseline::missing(source, "no recording to compare with");
        }
        let n = figs.len() as u64;
        let value = crate::gates::quantile_linear(0.5, figs);
        let (state, why) = if n == 0 {
            (
                BaselineState::Missing,
                Some(format!(
                    "{} recording(s) ({} samples) but no figure for this gate (windows never covered, or no traffic)",
                    self.recordings, self.samples
                )),
            )
        } else if n < rule.min_figures {
            (
                BaselineState::Thin,
                Some(format!(
                    "only {n} figure(s) in {} recording(s), fewer than the {} needed",
                    self.recordings, rule.min_figures
                )),
            )
        } else {
            (BaselineState::Ready, None)
        };
        Baseline {
            state,
            value,
            figures: n,
            samples: self.samples,
            recordings: self.recordings,
            source: source.to_string(),
            why,
        }
    }
}

/// What an environment does when an auto-rollback gate is `inconclusive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum OnInconclusive {
    /// Roll back at once, as for a violation.
    Rollback,
    /// Keep the release; the watch ends `inconclusive` (exit 5), not passed.
    Keep,
    /// Notify the humans and wait, up to the deadline, for
    /// `monitor_dhash judge`; the default applies when none comes.
    Ask,
}

impl OnInconclusive {
    pub fn as_str(self) -> &'static str {
        match self {
            OnInconclusive::Rollback => "rollback",
            OnInconclusive::Keep => "keep",
            OnInconclusive::Ask => "ask",
        }
    }
}

/// `environments.<env>.inconclusive` as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawInconclusivePolicy {
    #[serde(default)]
    pub policy: Option<OnInconclusive>,
    /// `ask`: how long to wait for a judgment (seconds or humantime; default 15m).
    #[serde(default)]
    pub deadline: Option<Value>,
    /// `ask`: what happens when the deadline passes (rollback or keep; default rollback).
    #[serde(default)]
    pub default: Option<OnInconclusive>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A validated inconclusive policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct InconclusivePolicy {
    pub policy: OnInconclusive,
    pub deadline: std::time::Duration,
    /// Rollback or Keep (never Ask).
    pub default: OnInconclusive,
}

pub const DEFAULT_ASK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Default for InconclusivePolicy {
    /// Keep: what a watch with a never-evaluated gate has always done.
    fn default() -> Self {
        InconclusivePolicy {
            policy: OnInconclusive::Keep,
            deadline: DEFAULT_ASK_DEADLINE,
            default: OnInconclusive::Rollback,
        }
    }
}

/// Checks `environments.<env>.inconclusive`.
pub fn validate_policy(
    file: &Path,
    path: &str,
    raw: &RawInconclusivePolicy,
) -> Result<InconclusivePolicy, ConfigError> {
    let deadline = match &raw.deadline {
        None | Some(Value::Null) => DEFAULT_ASK_DEADLINE,
        Some(v) => crate::config::duration_in(
            file,
            &format!("{path}.deadline"),
            v,
            1.0,
            "seconds",
            crate::config::limits::MONITOR_DURATION,
        )?,
    };
    let default = raw.default.unwrap_or(OnInconclusive::Rollback);
    if default == OnInconclusive::Ask {
        return Err(ConfigError::new(
            file,
            format!("{path}.default"),
            "the default when nobody answers must be \"rollback\" or \"keep\"",
        ));
    }
    Ok(InconclusivePolicy {
        policy: raw.policy.unwrap_or(OnInconclusive::Keep),
        deadline,
        default,
    })
}
