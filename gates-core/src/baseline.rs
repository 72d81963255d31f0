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
use crate::sample::{Bucket, Sample};

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
    /// `"mann-whitney"`: compare the window's latency histogram with the
    /// baseline's by a rank test instead of one figure with a limit.
    #[serde(default)]
    pub test: Option<TestKind>,
    /// With `test`: the one-sided p-value must be below it (default 0.01).
    #[serde(default)]
    pub alpha: Option<f64>,
    /// With `test`: Cliff's delta (canary slower) must reach it (default 0.2).
    #[serde(default)]
    pub min_effect: Option<f64>,
    /// With `test`: requests each side needs to be judged (default 20).
    #[serde(default)]
    pub min_observations: Option<u64>,
}

/// The statistical test of a baseline rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum TestKind {
    MannWhitney,
}

/// A validated rank test: the window's hash-time histogram against the
/// baseline recordings' histogram, Mann-Whitney U one-sided (canary slower).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RankTest {
    pub alpha: f64,
    pub min_effect: f64,
    pub min_observations: u64,
}

/// 1 %: a 10-minute window of a busy service compared every poll makes many
/// tests in a watch; a stricter level than the usual 5 % keeps the false
/// alarms of repeated testing rare.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// Cliff's delta 0.2 ("small" is 0.147, "medium" 0.33, Romano et al.): with
/// thousands of requests a few-percent slowdown is always significant, so
/// significance alone would roll back harmless noise; 0.2 means a canary
/// request is slower than a baseline one 20 points more often than faster,
/// e.g. a whole latency bucket shifted for one request in five, which users
/// notice, while staying under Kayenta's "medium" so a real +30 % regression
/// (most requests a bucket up) is well above it.
pub const DEFAULT_MIN_EFFECT: f64 = 0.2;
/// Fewer requests on a side than this is too little to judge (the normal
/// approximation of U is poor below ~20).
pub const DEFAULT_MIN_OBSERVATIONS: u64 = 20;

impl RankTest {
    pub fn limits(&self) -> crate::stats::Limits {
        crate::stats::Limits {
            alpha: self.alpha,
            min_effect: self.min_effect,
            min_samples: usize::try_from(self.min_observations).unwrap_or(usize::MAX),
        }
    }
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
    /// A rank test instead of a limit over one figure (latency gates).
    pub test: Option<RankTest>,
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

    /// "+20 %", "+1.5 %" (points), or both; the test and its limits.
    pub fn describe(&self, unit: &str) -> String {
        if let Some(t) = &self.test {
            return format!(
                "Mann-Whitney, alpha {}, min effect {}",
                fmt_num(t.alpha),
                fmt_num(t.min_effect)
            );
        }
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
    let test = validate_test(file, path, raw)?;
    if test.is_some() && (raw.max_increase_percent.is_some() || raw.max_increase.is_some()) {
        return Err(ConfigError::new(
            file,
            path,
            "give \"test\" (a rank test of the latency distributions) or \"max_increase_percent\" / \"max_increase\" (a limit over one figure), not both: use two gates for both",
        ));
    }
    if test.is_none() && raw.max_increase_percent.is_none() && raw.max_increase.is_none() {
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
        test,
    })
}

/// `test`, `alpha`, `min_effect`, `min_observations` of a baseline rule.
fn validate_test(
    file: &Path,
    path: &str,
    raw: &RawBaselineRule,
) -> Result<Option<RankTest>, ConfigError> {
    let err = |field: &str, msg: &str| ConfigError::new(file, format!("{path}.{field}"), msg);
    let Some(TestKind::MannWhitney) = raw.test else {
        if raw.alpha.is_some() || raw.min_effect.is_some() || raw.min_observations.is_some() {
            return Err(err(
                "test",
                "\"alpha\", \"min_effect\" and \"min_observations\" belong to a test: add \"test\": \"mann-whitney\"",
            ));
        }
        return Ok(None);
    };
    let alpha = raw.alpha.unwrap_or(DEFAULT_ALPHA);
    if !(alpha > 0.0 && alpha <= 0.5) {
        return Err(err(
            "alpha",
            "expected a significance level with 0 < alpha <= 0.5 (0.01 is 1 %)",
        ));
    }
    let min_effect = raw.min_effect.unwrap_or(DEFAULT_MIN_EFFECT);
    if !(0.0..=1.0).contains(&min_effect) {
        return Err(err("min_effect", "expected a Cliff's delta from 0 to 1 (0.2: a canary request slower 20 points more often than faster)"));
    }
    let min_observations = raw.min_observations.unwrap_or(DEFAULT_MIN_OBSERVATIONS);
    if !(1..=1_000_000_000).contains(&min_observations) {
        return Err(err(
            "min_observations",
            "expected a whole number from 1 to 1000000000",
        ));
    }
    Ok(Some(RankTest {
        alpha,
        min_effect,
        min_observations,
    }))
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
    /// Hash-time requests per bucket (not cumulative, `le` ascending) summed
    /// over the baseline recordings: what a rank test compares with.
    #[serde(skip)]
    pub histogram: Option<Vec<Bucket>>,
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
            histogram: None,
        }
    }

    /// Requests in the baseline histogram (0 without one).
    pub fn observations(&self) -> f64 {
        self.histogram
            .as_ref()
            .map_or(0.0, |h| h.iter().map(|b| b.count).sum())
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
            (BaselineState::Ready, _) if self.histogram.is_some() => format!(
                "baseline histogram of {} requests, median figure {} {unit} ({} recording(s): {})",
                fmt_num(self.observations()),
                self.value.map_or_else(|| "none".into(), fmt_num),
                self.recordings,
                self.source
            ),
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
    /// Hash-time requests per bucket over every recording (first layout).
    histogram: Option<Vec<Bucket>>,
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
            histogram: None,
        }
    }

    /// One recording's samples, in time order.
    pub fn add_recording(&mut self, samples: impl IntoIterator<Item = Sample>) {
        let mut ev = Evaluator::new(self.gates.clone());
        let mut prev: Option<Vec<Bucket>> = None;
        for s in samples {
            if let Some(b) = s
                .metrics
                .as_ref()
                .ok()
                .and_then(|m| m.hash_time_buckets.as_ref())
            {
                self.add_buckets(prev.as_deref(), b);
                prev = Some(b.clone());
            }
            self.samples += 1;
            for (i, d) in ev.observe(&s).into_iter().enumerate() {
                if let (Status::Ok | Status::Violated, Some(v)) = (d.status, d.value) {
                    self.figures[i].push(v);
                }
            }
        }
        self.recordings += 1;
    }

    /// The increase of one sample's cumulative buckets over the previous
    /// sample's, per bucket, into the summed histogram; a total that went
    /// down is a restart (the new counts are the increase), and a layout
    /// other than the first recorded one is left out (it cannot be added).
    fn add_buckets(&mut self, prev: Option<&[Bucket]>, now: &[Bucket]) {
        let Some(prev) = prev.filter(|p| same_layout(p, now)) else {
            return;
        };
        let restarted = match (prev.last(), now.last()) {
            (Some(p), Some(n)) => n.count < p.count,
            _ => false,
        };
        let hist = self.histogram.get_or_insert_with(|| {
            now.iter()
                .map(|b| Bucket {
                    le: b.le,
                    count: 0.0,
                })
                .collect()
        });
        if !same_layout(hist, now) {
            return;
        }
        let (mut below_now, mut below_prev) = (0.0, 0.0);
        for ((h, n), p) in hist.iter_mut().zip(now).zip(prev) {
            let p_count = if restarted { 0.0 } else { p.count };
            let inc = (n.count - below_now) - (p_count - below_prev);
            h.count += inc.max(0.0);
            below_now = n.count;
            below_prev = p_count;
        }
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
        if let Some(t) = &rule.test {
            return self.histogram_baseline(t, n, value, source);
        }
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
            histogram: None,
        }
    }

    /// The baseline of a rank test: the summed histogram, thin below the
    /// test's `min_observations` requests.
    fn histogram_baseline(
        &self,
        t: &RankTest,
        figures: u64,
        value: Option<f64>,
        source: &str,
    ) -> Baseline {
        let count: f64 = self
            .histogram
            .as_ref()
            .map_or(0.0, |h| h.iter().map(|b| b.count).sum());
        let (state, why) = if count <= 0.0 {
            (
                BaselineState::Missing,
                Some(format!(
                    "{} recording(s) ({} samples) but no hash-time histogram with requests in them",
                    self.recordings, self.samples
                )),
            )
        } else if count < t.min_observations as f64 {
            (
                BaselineState::Thin,
                Some(format!(
                    "only {} request(s) in the histogram of {} recording(s), fewer than the {} needed",
                    fmt_num(count),
                    self.recordings,
                    t.min_observations
                )),
            )
        } else {
            (BaselineState::Ready, None)
        };
        Baseline {
            state,
            value,
            figures,
            samples: self.samples,
            recordings: self.recordings,
            source: source.to_string(),
            why,
            histogram: self.histogram.clone(),
        }
    }
}

/// Two bucket layouts with the same bounds.
fn same_layout(a: &[Bucket], b: &[Bucket]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.le == y.le)
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
