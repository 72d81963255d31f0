//! `quality-gates-config.json`: the seed schema
//! `environments.<env>.quality_gates.<gate>.{threshold, window_minutes, action}`
//! plus `placeholders`, with optional fields for what the seeds leave open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::limits;
use super::topology::{parse_cadence, RawCadence};
use super::{
    duration_in, find_placeholders, number_in, parse_json, read_file, whole_in, CadencePhase,
    ConfigError, EnvConfig, MonitorSettings, Placeholder,
};

/// What happens when a gate is violated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum Action {
    /// Roll back to this deploy's verified backup.
    #[serde(rename = "auto-rollback", alias = "auto_rollback", alias = "rollback")]
    AutoRollback,
    /// Notify once, and once more when it clears.
    #[serde(rename = "alert", alias = "alert-only", alias = "alert_only")]
    Alert,
    /// Evaluated and reported, never acted on: a new gate earns trust first.
    #[serde(rename = "shadow")]
    Shadow,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::AutoRollback => "auto-rollback",
            Action::Alert => "alert",
            Action::Shadow => "shadow",
        }
    }
}

/// How a gate reads its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum GateKind {
    /// Trailing run of failed health checks; violated when longer than threshold.
    Consecutive,
    /// Percent of `numerator` over `denominator` from counter deltas across the window.
    Ratio,
    /// A percentile (ms) over the window, from histogram-bucket deltas or raw observations.
    Percentile,
    /// The latest value against the threshold.
    Instant,
    /// A gauge above threshold for the whole window (Prometheus `for:`).
    Sustained,
}

/// The figures a gate can read. Names are the config's `metric`/`numerator`/
/// `denominator` values and the columns of recorded telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Health,
    RequestsTotal,
    HashRequestsTotal,
    ExtractionFailuresTotal,
    ErrorsTotal,
    HashTimeMs,
    LowConfidenceQueue,
    MemoryPercent,
    CpuPercent,
    DiskPercent,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Health => "health",
            Metric::RequestsTotal => "requests_total",
            Metric::HashRequestsTotal => "hash_requests_total",
            Metric::ExtractionFailuresTotal => "extraction_failures_total",
            Metric::ErrorsTotal => "errors_total",
            Metric::HashTimeMs => "hash_time_ms",
            Metric::LowConfidenceQueue => "low_confidence_queue",
            Metric::MemoryPercent => "memory_percent",
            Metric::CpuPercent => "cpu_percent",
            Metric::DiskPercent => "disk_percent",
        }
    }
}

/// One gate as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub threshold: Value,
    #[serde(default)]
    pub window_minutes: Option<Value>,
    pub action: Action,
    #[serde(default)]
    pub kind: Option<GateKind>,
    #[serde(default)]
    pub metric: Option<Metric>,
    #[serde(default)]
    pub numerator: Option<Metric>,
    #[serde(default)]
    pub denominator: Option<Metric>,
    #[serde(default)]
    pub percentile: Option<Value>,
    #[serde(default)]
    pub errors_to_violate: Option<Value>,
    #[serde(default)]
    pub no_data_to_violate: Option<Value>,
    #[serde(default)]
    pub description: Option<String>,
    /// Where the figure is read: `probe` (default, the service's `/metrics`)
    /// or `prometheus` (the topology's Prometheus server, issue 17).
    #[serde(default)]
    pub source: Option<SourceKind>,
    /// With `"source": "prometheus"`: the PromQL whose value is the figure;
    /// absent, the gate's built-in equivalent (`gates_core::promql::gate_expr`).
    #[serde(default)]
    pub promql: Option<String>,
    /// Compare with a baseline as well as (or instead of) the threshold
    /// (issue 16; see `gates_core::baseline`).
    #[serde(default)]
    pub baseline: Option<crate::baseline::RawBaselineRule>,
}

/// `source` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Probe,
    Prometheus,
}

/// Where a validated gate's figure comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum GateSource {
    /// Computed from the polled `/metrics` samples.
    Probe,
    /// The value of a PromQL expression at the time of the poll.
    Prometheus { promql: String },
}

/// A validated gate, ready for evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateSpec {
    pub name: String,
    pub kind: GateKind,
    pub metric: Metric,
    /// Ratio gates only.
    pub denominator: Option<Metric>,
    pub threshold: f64,
    pub window: Duration,
    pub action: Action,
    /// Percentile gates: 0 < q < 1.
    pub quantile: f64,
    /// Polls in a row whose probe failed before the gate counts as violated (0 = never).
    pub errors_to_violate: u32,
    /// Polls in a row with no figure (no traffic) before the gate counts as violated (0 = never).
    pub no_data_to_violate: u32,
    pub unit: &'static str,
    pub description: Option<String>,
    pub source: GateSource,
    /// The gate's baseline rule, when it compares with a baseline.
    pub baseline: Option<crate::baseline::BaselineRule>,
}

impl GateSpec {
    /// The PromQL of a gate read through Prometheus; `None` on the probe.
    pub fn promql(&self) -> Option<&str> {
        match &self.source {
            GateSource::Prometheus { promql } => Some(promql),
            GateSource::Probe => None,
        }
    }
}

/// Defaults: a probe that fails 5 polls in a row leaves us blind for too long
/// to trust the release; "no traffic" is not a fault, so it never violates.
pub const DEFAULT_ERRORS_TO_VIOLATE: u32 = 5;
pub const DEFAULT_NO_DATA_TO_VIOLATE: u32 = 0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGatesEnv {
    #[serde(default)]
    pub quality_gates: BTreeMap<String, RawGate>,
    /// Optional: overrides the topology's watch length and poll cadence for
    /// this environment (seed 004's 4-hour, three-phase watch).
    #[serde(default)]
    pub monitoring: Option<RawMonitoring>,
    #[serde(default)]
    pub description: Option<String>,
    /// Where baseline-relative gates take their baseline (issue 16).
    #[serde(default)]
    pub baseline: Option<crate::baseline::RawBaselineSource>,
    /// What an inconclusive auto-rollback gate leads to (issue 16).
    #[serde(default)]
    pub inconclusive: Option<crate::baseline::RawInconclusivePolicy>,
}

/// `environments.<env>.monitoring` as written: the same `duration` and
/// `cadence` as `monitor` in environments.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitoring {
    #[serde(default)]
    pub duration: Option<Value>,
    #[serde(default)]
    pub cadence: Option<Vec<RawCadence>>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A gates file's `environments.<env>.monitoring`: what it sets replaces the
/// topology's `monitor` settings for that environment; what it leaves out
/// keeps the topology's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitorOverride {
    pub duration: Option<Duration>,
    pub cadence: Option<Vec<CadencePhase>>,
}

impl MonitorOverride {
    /// Applies the override to an environment's monitor settings.
    pub fn apply(&self, monitor: &mut MonitorSettings) {
        if let Some(d) = self.duration {
            monitor.duration = d;
        }
        if let Some(c) = &self.cadence {
            monitor.cadence = c.clone();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawGatesFile {
    pub environments: BTreeMap<String, RawGatesEnv>,
    #[serde(default)]
    pub placeholders: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatesEnv {
    pub name: String,
    pub gates: Vec<GateSpec>,
    /// `environments.<env>.monitoring`, when the file has one.
    pub monitoring: Option<MonitorOverride>,
    /// `environments.<env>.baseline` (default: the last passed watches).
    pub baseline: crate::baseline::BaselineSource,
    /// `environments.<env>.inconclusive` (default: keep).
    pub inconclusive: crate::baseline::InconclusivePolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatesFile {
    pub file: PathBuf,
    pub environments: BTreeMap<String, GatesEnv>,
    pub placeholders: Vec<Placeholder>,
}

impl GatesFile {
    pub fn load(file: &Path) -> Result<GatesFile, ConfigError> {
        let text = read_file(file)?;
        Self::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<GatesFile, ConfigError> {
        let raw: RawGatesFile = parse_json(file, text)?;
        let doc: Value = parse_json(file, text)?;
        let placeholders = find_placeholders(file, &doc);
        let mut environments = BTreeMap::new();
        for (env, raw_env) in &raw.environments {
            super::check_env_name(file, &format!("environments.{env}"), env)?;
            let mut gates = Vec::new();
            for (name, g) in &raw_env.quality_gates {
                let path = format!("environments.{env}.quality_gates.{name}");
                let spec = validate_gate(file, &path, name, g)?;
                gates.push(with_source(file, &path, env, spec, g)?);
            }
            let monitoring = match &raw_env.monitoring {
                None => None,
                Some(m) => Some(validate_monitoring(
                    file,
                    &format!("environments.{env}.monitoring"),
                    m,
                )?),
            };
            let (baseline, inconclusive) = judgment_settings(file, env, raw_env)?;
            environments.insert(
                env.clone(),
                GatesEnv {
                    name: env.clone(),
                    gates,
                    monitoring,
                    baseline,
                    inconclusive,
                },
            );
        }
        Ok(GatesFile {
            file: file.to_path_buf(),
            environments,
            placeholders,
        })
    }

    /// The gates of one environment; an unknown one names the known ones.
    pub fn env(&self, env: &str) -> Result<&GatesEnv, ConfigError> {
        self.environments.get(env).ok_or_else(|| {
            ConfigError::new(
                &self.file,
                format!("environments.{env}"),
                format!(
                    "no quality gates for environment {env:?}; this file defines: {}",
                    known(self.environments.keys())
                ),
            )
        })
    }

    /// The gates of an environment about to change: refuses, naming this file
    /// and `environments.<env>`, when the file has no section for it or the
    /// section has no gate, because the post-deploy watch could not start (or
    /// would watch nothing). Deploy's preflight calls this before anything
    /// changes.
    pub fn require_env(&self, env: &str) -> Result<&GatesEnv, ConfigError> {
        let Some(g) = self.environments.get(env) else {
            return Err(ConfigError::new(
                &self.file,
                format!("environments.{env}"),
                format!(
                    "no quality gates for environment {env:?} (this file defines: {}): the post-deploy watch could not start, so nothing changes; add environments.{env}.quality_gates here or pass --config with a file that has them",
                    known(self.environments.keys())
                ),
            ));
        };
        if g.gates.is_empty() {
            return Err(ConfigError::new(
                &self.file,
                format!("environments.{env}.quality_gates"),
                format!(
                    "environment {env:?} has no quality gate: the post-deploy watch would check nothing, so nothing changes; add at least one gate"
                ),
            ));
        }
        Ok(g)
    }

    /// `environments.<env>.monitoring` of this file, when it has one.
    pub fn monitor_override(&self, env: &str) -> Option<&MonitorOverride> {
        self.environments.get(env)?.monitoring.as_ref()
    }

    /// Applies this file's `environments.<env>.monitoring` (if any) to the
    /// environment's monitor settings; true when something was overridden.
    pub fn apply_monitoring(&self, env: &mut EnvConfig) -> bool {
        match self.monitor_override(&env.name) {
            Some(o) => {
                o.apply(&mut env.monitor);
                true
            }
            None => false,
        }
    }

    /// Refuses production while placeholders are unresolved; elsewhere they
    /// are returned for the caller to warn about.
    pub fn check_placeholders(&self, env: &str) -> Result<&[Placeholder], ConfigError> {
        refuse_placeholders_in_production(env, &self.placeholders)?;
        Ok(&self.placeholders)
    }
}

pub(crate) fn refuse_placeholders_in_production(
    env: &str,
    placeholders: &[Placeholder],
) -> Result<(), ConfigError> {
    if env == "production" {
        if let Some(p) = placeholders.first() {
            return Err(ConfigError::new(
                &p.file,
                p.path.clone(),
                format!(
                    "unresolved placeholder {:?} ({} in all): resolve every \"Replace with ...\" value before a production run",
                    p.value,
                    placeholders.len()
                ),
            ));
        }
    }
    Ok(())
}

pub(crate) fn known<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(", ")
    }
}

/// Kind and figures a seed gate name implies, so the seed file needs no more.
fn defaults_for(name: &str) -> Option<(GateKind, Metric, Option<Metric>, &'static str)> {
    Some(match name {
        "health_failures" | "health" => (GateKind::Consecutive, Metric::Health, None, "checks"),
        "extraction_failure_rate" => (
            GateKind::Ratio,
            Metric::ExtractionFailuresTotal,
            Some(Metric::HashRequestsTotal),
            "%",
        ),
        "error_rate" => (
            GateKind::Ratio,
            Metric::ErrorsTotal,
            Some(Metric::RequestsTotal),
            "%",
        ),
        "p95_hash_time" | "p95_latency" => (GateKind::Percentile, Metric::HashTimeMs, None, "ms"),
        "low_confidence_queue" | "low_confidence_queue_length" => {
            (GateKind::Instant, Metric::LowConfidenceQueue, None, "items")
        }
        "memory_usage" | "memory" => (GateKind::Sustained, Metric::MemoryPercent, None, "%"),
        "cpu_usage" | "cpu" => (GateKind::Sustained, Metric::CpuPercent, None, "%"),
        "disk_usage" | "disk" => (GateKind::Sustained, Metric::DiskPercent, None, "%"),
        _ => return None,
    })
}

fn unit_for(kind: GateKind, metric: Metric) -> &'static str {
    match (kind, metric) {
        (GateKind::Consecutive, _) => "checks",
        (GateKind::Ratio, _) => "%",
        (GateKind::Percentile, _) => "ms",
        (_, Metric::LowConfidenceQueue) => "items",
        (_, Metric::MemoryPercent | Metric::CpuPercent | Metric::DiskPercent) => "%",
        _ => "",
    }
}

/// What a seed gate name implies: its kind, metric, denominator and unit.
type SeedDefaults = (GateKind, Metric, Option<Metric>, &'static str);

/// Checks one gate, field by field in a fixed order (window, kind, metric,
/// denominator, threshold, percentile, run lengths), so the first problem
/// reported for a file does not depend on how it is written.
fn validate_gate(
    file: &Path,
    path: &str,
    name: &str,
    g: &RawGate,
) -> Result<GateSpec, ConfigError> {
    let err = |field: &str, msg: String| ConfigError::new(file, format!("{path}.{field}"), msg);
    let window = optional_duration(file, &format!("{path}.window_minutes"), &g.window_minutes)?;
    let defaults = defaults_for(name);
    let kind = gate_kind(g, defaults).ok_or_else(|| {
        err(
            "kind",
            format!(
                "gate {name:?} is not one the seeds name, so it needs \"kind\" (consecutive, ratio, percentile, instant or sustained) and \"metric\""
            ),
        )
    })?;
    // A seed name's defaults hold only for the kind the seed gives it.
    let seed = defaults.filter(|d| d.0 == kind);
    let metric = gate_metric(g, seed, kind).ok_or_else(|| {
        err(
            "metric",
            format!("gate {name:?} of kind {kind:?} needs \"metric\""),
        )
    })?;
    let denominator = match kind {
        GateKind::Ratio => Some(
            g.denominator
                .or(defaults.and_then(|d| d.2))
                .ok_or_else(|| err("denominator", "a ratio gate needs \"denominator\"".into()))?,
        ),
        _ => None,
    };
    let (range, what) = threshold_range(kind, metric);
    let threshold = number_in(
        file,
        &format!("{path}.threshold"),
        &g.threshold,
        range,
        what,
    )?;
    if kind == GateKind::Consecutive && metric != Metric::Health {
        return Err(err("metric", "a consecutive gate reads health only".into()));
    }
    let quantile = gate_quantile(&g.percentile).map_err(|msg| err("percentile", msg))?;
    // A rank test compares latency distributions: only a hash-time
    // percentile gate has a histogram to compare.
    if g.baseline.as_ref().is_some_and(|b| b.test.is_some())
        && (kind != GateKind::Percentile || metric != Metric::HashTimeMs)
    {
        return Err(err(
            "baseline.test",
            format!("a Mann-Whitney test compares hash-time distributions: only a percentile gate of hash_time_ms may use it, not a {kind:?} gate of {}", metric.as_str()),
        ));
    }
    needs_window(kind, window).map_err(|msg| err("window_minutes", msg))?;
    let run = |field: &str, v: &Option<Value>, default: u32| {
        run_length(file, &format!("{path}.{field}"), v, default)
    };
    Ok(GateSpec {
        name: name.to_string(),
        kind,
        metric,
        denominator,
        threshold,
        window,
        action: g.action,
        quantile,
        errors_to_violate: run(
            "errors_to_violate",
            &g.errors_to_violate,
            DEFAULT_ERRORS_TO_VIOLATE,
        )?,
        no_data_to_violate: run(
            "no_data_to_violate",
            &g.no_data_to_violate,
            DEFAULT_NO_DATA_TO_VIOLATE,
        )?,
        unit: seed.map_or_else(|| unit_for(kind, metric), |d| d.3),
        description: g.description.clone(),
        source: GateSource::Probe,
        baseline: match &g.baseline {
            None => None,
            Some(b) => Some(crate::baseline::validate_rule(
                file,
                &format!("{path}.baseline"),
                b,
            )?),
        },
    })
}

/// `source` and `promql`: a Prometheus gate takes its PromQL as written or
/// its built-in equivalent scoped to the environment's targets; a health
/// gate has none (Prometheus sees only `up`, not `/health`'s verdict).
fn with_source(
    file: &Path,
    path: &str,
    env: &str,
    mut spec: GateSpec,
    g: &RawGate,
) -> Result<GateSpec, ConfigError> {
    let err = |field: &str, msg: String| ConfigError::new(file, format!("{path}.{field}"), msg);
    let promql = g.promql.as_deref().map(str::trim);
    match (g.source.unwrap_or(SourceKind::Probe), promql) {
        (SourceKind::Probe, None) => {}
        (SourceKind::Probe, Some(_)) => {
            return Err(err(
                "promql",
                "a PromQL expression is read only with \"source\": \"prometheus\"".into(),
            ))
        }
        (SourceKind::Prometheus, Some("")) => {
            return Err(err(
                "promql",
                "expected a PromQL expression, found an empty string".into(),
            ))
        }
        (SourceKind::Prometheus, Some(q)) => {
            spec.source = GateSource::Prometheus {
                promql: q.to_string(),
            }
        }
        (SourceKind::Prometheus, None) => {
            let scope = crate::promql::Scope::env(env);
            let q = crate::promql::gate_expr(&spec, &scope).ok_or_else(|| {
                err(
                    "source",
                    format!("gate {:?} reads /health, which Prometheus does not see (only whether a scrape answered): keep it on the probe, or give \"promql\"", spec.name),
                )
            })?;
            spec.source = GateSource::Prometheus { promql: q }
        }
    }
    Ok(spec)
}

/// `environments.<env>.baseline` and `.inconclusive` (issue 16); recordings
/// named there are relative to the gates file's folder.
fn judgment_settings(
    file: &Path,
    env: &str,
    raw: &RawGatesEnv,
) -> Result<
    (
        crate::baseline::BaselineSource,
        crate::baseline::InconclusivePolicy,
    ),
    ConfigError,
> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let baseline = match &raw.baseline {
        None => Default::default(),
        Some(b) => {
            crate::baseline::validate_source(file, &format!("environments.{env}.baseline"), b, dir)?
        }
    };
    let inconclusive = match &raw.inconclusive {
        None => Default::default(),
        Some(p) => {
            crate::baseline::validate_policy(file, &format!("environments.{env}.inconclusive"), p)?
        }
    };
    Ok((baseline, inconclusive))
}

/// `window_minutes`: absent or null is no window.
fn optional_duration(file: &Path, path: &str, v: &Option<Value>) -> Result<Duration, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(Duration::ZERO),
        Some(v) => duration_in(file, path, v, 60.0, "minutes", limits::GATE_WINDOW),
    }
}

/// The kind written, else the one a seed name implies.
fn gate_kind(g: &RawGate, defaults: Option<SeedDefaults>) -> Option<GateKind> {
    g.kind.or(defaults.map(|d| d.0))
}

/// The metric (or numerator) written, else the seed's, else the only one
/// the kind can read.
fn gate_metric(g: &RawGate, seed: Option<SeedDefaults>, kind: GateKind) -> Option<Metric> {
    g.metric
        .or(g.numerator)
        .or(seed.map(|d| d.1))
        .or(match kind {
            GateKind::Consecutive => Some(Metric::Health),
            GateKind::Percentile => Some(Metric::HashTimeMs),
            _ => None,
        })
}

/// The range a threshold must fall in, and how the error explains its unit.
fn threshold_range(kind: GateKind, metric: Metric) -> ((f64, f64), &'static str) {
    match (kind, metric) {
        (GateKind::Ratio, _) => (
            limits::THRESHOLD_PERCENT,
            " (a rate is a percent: 5 means 5 %)",
        ),
        (GateKind::Consecutive, _) => (limits::THRESHOLD_CHECKS, " (failed checks in a row)"),
        (GateKind::Percentile, Metric::HashTimeMs) => (limits::THRESHOLD_MS, " (milliseconds)"),
        (_, Metric::MemoryPercent | Metric::CpuPercent | Metric::DiskPercent) => {
            (limits::THRESHOLD_PERCENT, " (a percent)")
        }
        _ => (limits::THRESHOLD_OTHER, ""),
    }
}

/// Rates and percentiles are computed over a window, so they need one.
fn needs_window(kind: GateKind, window: Duration) -> Result<(), String> {
    let what = match kind {
        GateKind::Ratio => "rate",
        GateKind::Percentile => "percentile",
        _ => return Ok(()),
    };
    if window.is_zero() {
        return Err(format!("a {what} gate needs a window > 0"));
    }
    Ok(())
}

/// `percentile`: 95 and 0.95 both mean p95; absent means p95.
fn gate_quantile(v: &Option<Value>) -> Result<f64, String> {
    match v {
        None | Some(Value::Null) => Ok(0.95),
        Some(v) => match v.as_f64() {
            Some(p) if p > 0.0 && p < 1.0 => Ok(p),
            Some(p) if (1.0..100.0).contains(&p) => Ok(p / 100.0),
            _ => Err(format!(
                "expected a number with 0 < percentile < 100 (95 or 0.95 for p95), found {v}"
            )),
        },
    }
}

fn run_length(
    file: &Path,
    path: &str,
    v: &Option<Value>,
    default: u32,
) -> Result<u32, ConfigError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            let n = whole_in(file, path, v, &limits::GATE_RUN_LENGTH)?;
            u32::try_from(n).map_err(|_| ConfigError::new(file, path, "too large"))
        }
    }
}

fn validate_monitoring(
    file: &Path,
    path: &str,
    m: &RawMonitoring,
) -> Result<MonitorOverride, ConfigError> {
    let duration = match &m.duration {
        None | Some(Value::Null) => None,
        Some(v) => Some(duration_in(
            file,
            &format!("{path}.duration"),
            v,
            1.0,
            "seconds",
            limits::MONITOR_DURATION,
        )?),
    };
    let cadence = match &m.cadence {
        None => None,
        Some(phases) => Some(parse_cadence(file, &format!("{path}.cadence"), phases)?),
    };
    Ok(MonitorOverride { duration, cadence })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_gate(gate: &str) -> Result<GateSpec, String> {
        let text = format!(r#"{{"environments": {{"staging": {{"quality_gates": {gate}}}}}}}"#);
        GatesFile::parse(Path::new("gates.json"), &text)
            .map(|f| f.environments["staging"].gates[0].clone())
            .map_err(|e| e.to_string())
    }

    /// Each refusal, in the order the fields are checked, and the defaults a
    /// seed gate name brings.
    #[test]
    fn gates_validate_as_before() {
        let cases = [
            r#"{"mystery": {"threshold": 1, "action": "alert", "window_minutes": -1}}"#,
            r#"{"mystery": {"threshold": 1, "action": "alert"}}"#,
            r#"{"mystery": {"threshold": 1, "action": "alert", "kind": "instant"}}"#,
            r#"{"mystery": {"threshold": 1, "action": "alert", "kind": "ratio", "metric": "errors_total", "window_minutes": 5}}"#,
            r#"{"error_rate": {"threshold": 500, "action": "alert", "window_minutes": 5}}"#,
            r#"{"health": {"threshold": 3, "action": "alert", "metric": "cpu_percent"}}"#,
            r#"{"p95_hash_time": {"threshold": 2000, "action": "alert", "window_minutes": 5, "percentile": 100}}"#,
            r#"{"p95_hash_time": {"threshold": 2000, "action": "alert"}}"#,
            r#"{"error_rate": {"threshold": 5, "action": "alert"}}"#,
            r#"{"error_rate": {"threshold": 5, "action": "alert", "window_minutes": 5, "errors_to_violate": -1}}"#,
            r#"{"p95_hash_time": {"threshold": 2000, "action": "auto-rollback", "window_minutes": 10, "percentile": 99}}"#,
            r#"{"cpu": {"threshold": 90, "action": "shadow", "window_minutes": 2, "no_data_to_violate": 3}}"#,
        ];
        let got: Vec<String> = cases
            .iter()
            .map(|c| match parse_gate(c) {
                Ok(g) => format!("ok {g:?}"),
                Err(e) => e,
            })
            .collect();
        let want = [
            "gates.json: environments.staging.quality_gates.mystery.window_minutes: expected a duration from 0ms to 7days (minutes as a number, or a string like \"90s\", \"10m\"), found -1",
            "gates.json: environments.staging.quality_gates.mystery.kind: gate \"mystery\" is not one the seeds name, so it needs \"kind\" (consecutive, ratio, percentile, instant or sustained) and \"metric\"",
            "gates.json: environments.staging.quality_gates.mystery.metric: gate \"mystery\" of kind Instant needs \"metric\"",
            "gates.json: environments.staging.quality_gates.mystery.denominator: a ratio gate needs \"denominator\"",
            "gates.json: environments.staging.quality_gates.error_rate.threshold: expected a number from 0 to 100 (a rate is a percent: 5 means 5 %), found 500",
            "gates.json: environments.staging.quality_gates.health.metric: a consecutive gate reads health only",
            "gates.json: environments.staging.quality_gates.p95_hash_time.percentile: expected a number with 0 < percentile < 100 (95 or 0.95 for p95), found 100",
            "gates.json: environments.staging.quality_gates.p95_hash_time.window_minutes: a percentile gate needs a window > 0",
            "gates.json: environments.staging.quality_gates.error_rate.window_minutes: a rate gate needs a window > 0",
            "gates.json: environments.staging.quality_gates.error_rate.errors_to_violate: expected a whole number from 0 to 10000, found -1",
            "ok GateSpec { name: \"p95_hash_time\", kind: Percentile, metric: HashTimeMs, denominator: None, threshold: 2000.0, window: 600s, action: AutoRollback, quantile: 0.99, errors_to_violate: 5, no_data_to_violate: 0, unit: \"ms\", description: None, source: Probe, baseline: None }",
            "ok GateSpec { name: \"cpu\", kind: Sustained, metric: CpuPercent, denominator: None, threshold: 90.0, window: 120s, action: Shadow, quantile: 0.95, errors_to_violate: 5, no_data_to_violate: 3, unit: \"%\", description: None, source: Probe, baseline: None }",
        ];
        assert_eq!(got, want);
    }
}
