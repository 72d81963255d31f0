//! Gate evaluation: samples in, decisions out, no I/O. The live monitor and
//! the offline replay feed the same [`Evaluator`], so a replay of a recorded
//! run reproduces its decisions exactly.
//!
//! Window semantics follow Prometheus:
//! - a rate over a window is computed from counter increases between the
//!   newest sample and the newest sample at least one window old (the anchor);
//!   a counter that goes down (a restarted service) is a reset, and the new
//!   value counts as the increase, as `increase()` does;
//! - a percentile over a window comes from histogram-bucket increases, with
//!   `histogram_quantile`'s linear interpolation inside the bucket, or from
//!   raw observations where the service exposes no histogram;
//! - a gauge "over N minutes" must breach on every sample for the whole
//!   window (`for:`).
//!
//! Missing data is its own state: `pending` (the window is not covered yet),
//! `no-data` (the probe answered but the figure is absent, e.g. no traffic),
//! `error` (the probe failed). A gate turns `violated` after
//! `errors_to_violate` errors or `no_data_to_violate` no-data results in a row
//! (0 = never). A health check that cannot connect is a failed health check.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::baseline::{Baseline, BaselineRule, Fallback, RankTest};
use crate::config::{Action, GateKind, GateSpec, Metric};
use crate::sample::{Bucket, Health, Metrics, Sample};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Ok,
    Pending,
    NoData,
    Error,
    Violated,
    /// Neither held nor violated: a baseline too thin to judge against (per
    /// the gate's `fallback`). The environment's policy decides.
    Inconclusive,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Pending => "pending",
            Status::NoData => "no-data",
            Status::Error => "error",
            Status::Violated => "violated",
            Status::Inconclusive => "inconclusive",
        }
    }

    /// The event name the monitor emits for a decision.
    pub fn event_name(self) -> &'static str {
        match self {
            Status::Ok => "gate.ok",
            Status::Pending => "gate.pending",
            Status::NoData => "gate.no-data",
            Status::Error => "gate.error",
            Status::Violated => "gate.violated",
            Status::Inconclusive => "gate.inconclusive",
        }
    }
}

/// One gate's verdict on one sample, with the measured value and the reason
/// (in words through `Display`: what every notification about it repeats).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub gate: String,
    pub status: Status,
    pub value: Option<f64>,
    pub threshold: f64,
    pub unit: &'static str,
    pub window_secs: f64,
    pub action: Action,
    pub reason: Reason,
    pub t_ms: i64,
    /// The baseline a baseline-relative gate compared with (shared by every
    /// decision of the gate).
    #[serde(skip)]
    pub baseline: Option<Arc<Baseline>>,
    /// The limit the baseline set (`None` without a usable baseline).
    pub limit: Option<f64>,
    /// A rank-test gate's figures (`None` for every other gate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mann_whitney: Option<RankFigures>,
}

/// What a Mann-Whitney gate measured: the test on the window's histogram
/// against the baseline's, and the limits it was held to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RankFigures {
    /// U of the canary (the window): scipy's `statistic` for `x` = canary.
    pub u: f64,
    /// One-sided p-value (alternative: the canary is slower).
    pub p_value: f64,
    /// Cliff's delta, -1..1; positive: canary requests are slower.
    pub effect: f64,
    pub direction: crate::stats::Direction,
    pub verdict: crate::stats::Verdict,
    /// Requests in the window and in the baseline histogram.
    pub canary_count: f64,
    pub baseline_count: f64,
    pub alpha: f64,
    pub min_effect: f64,
    pub min_observations: u64,
}

/// Why a gate decided what it did, kept as figures: the words are built only
/// when somebody reads them, so replaying millions of samples stays cheap.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    Health {
        failures: u32,
        limit: f64,
        last: String,
    },
    WindowNotCovered {
        covered_secs: f64,
        window_secs: f64,
    },
    HistogramLayoutChanged,
    NotACounter(Metric),
    NoMetricsThisPoll,
    MetricsProbeFailed(String),
    NotReported(Metric),
    NotReportedRatio {
        metric: Metric,
        denominator: &'static str,
    },
    NoTraffic {
        what: &'static str,
        window_secs: f64,
    },
    NoHashTimeFigures,
    /// A measured value against the threshold (strictly above violates).
    Measured {
        measure: Measure,
        threshold: f64,
        unit: &'static str,
    },
    SustainedWithin {
        metric: Metric,
        value: f64,
        unit: &'static str,
        threshold: f64,
    },
    SustainedAbove {
        metric: Metric,
        value: f64,
        unit: &'static str,
        threshold: f64,
        lasted_secs: f64,
        needed_secs: f64,
    },
    /// A run of errors or no-data results, with the policy that turns it
    /// into a violation (limit 0 = never).
    InARow {
        inner: Box<Reason>,
        n: u32,
        limit: u32,
        violated: bool,
    },
    Internal(&'static str),
    /// A figure computed elsewhere (a PromQL query), in its source's words.
    Figure(String),
    /// A measured figure against a baseline (and the fixed threshold when
    /// it applies too).
    AgainstBaseline {
        measure: Measure,
        threshold: Option<f64>,
        unit: &'static str,
        baseline: Arc<Baseline>,
        /// The limit over the baseline, and the rule in words ("+20 %").
        limit: Option<f64>,
        rule: String,
        fallback: Fallback,
    },
    /// A latency histogram against the baseline's by Mann-Whitney U; when
    /// the test could not run, `unsure` says why and `fallback` what decided.
    RankTest {
        measure: Measure,
        threshold: Option<f64>,
        unit: &'static str,
        baseline: Arc<Baseline>,
        figures: RankFigures,
        unsure: Option<String>,
        fallback: Fallback,
    },
}

/// The figure a [`Reason::Measured`] compares.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    Ratio {
        metric: Metric,
        denominator: &'static str,
        percent: f64,
        numerator_increase: f64,
        denominator_increase: f64,
        window_secs: f64,
    },
    Percentile {
        quantile: f64,
        value_ms: f64,
        window_secs: f64,
        /// Requests in the histogram window, or raw observations.
        count: f64,
        from_histogram: bool,
    },
    Instant {
        metric: Metric,
        value: f64,
        unit: &'static str,
    },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Health {
                failures,
                limit,
                last,
            } => fmt_health(f, *failures, *limit, last),
            Reason::WindowNotCovered {
                covered_secs,
                window_secs,
            } => {
                let (covered, window) = (fmt_secs(*covered_secs), fmt_secs(*window_secs));
                write!(
                    f,
                    "window not covered yet: {covered} of telemetry of the {window} needed"
                )
            }
            Reason::HistogramLayoutChanged => {
                f.write_str("histogram buckets changed; the window restarts")
            }
            Reason::NotACounter(m) => write!(f, "{} cannot be read as a counter", m.as_str()),
            Reason::NoMetricsThisPoll => f.write_str("no metrics in this poll"),
            Reason::MetricsProbeFailed(e) => write!(f, "metrics probe failed: {e}"),
            Reason::NotReported(m) => write!(f, "the service does not report {}", m.as_str()),
            Reason::NotReportedRatio {
                metric,
                denominator,
            } => {
                let m = metric.as_str();
                write!(f, "the service does not report {m} and {denominator}")
            }
            Reason::NoTraffic { what, window_secs } => {
                let window = fmt_secs(*window_secs);
                write!(f, "no {what} in the last {window} (no traffic)")
            }
            Reason::NoHashTimeFigures => {
                f.write_str("the service reports neither a hash-time histogram nor observations")
            }
            Reason::Measured {
                measure,
                threshold,
                unit,
            } => {
                let side = side_of(measure.value(), *threshold);
                let threshold = fmt_num(*threshold);
                write!(f, "{measure}: {side} the threshold {threshold} {unit}")
            }
            Reason::SustainedWithin {
                metric,
                value,
                unit,
                threshold,
            } => {
                let (m, value, threshold) = (metric.as_str(), fmt_num(*value), fmt_num(*threshold));
                write!(f, "{m} {value} {unit}, not above {threshold}")
            }
            Reason::SustainedAbove {
                metric,
                value,
                unit,
                threshold,
                lasted_secs,
                needed_secs,
            } => {
                let (value, threshold) = (fmt_num(*value), fmt_num(*threshold));
                let lasted = fmt_secs(*lasted_secs);
                let m = metric.as_str();
                write!(f, "{m} {value} {unit} above {threshold} for {lasted}")?;
                fmt_sustained_need(f, *lasted_secs, *needed_secs)
            }
            Reason::InARow {
                inner,
                n,
                limit,
                violated,
            } => fmt_in_a_row(f, inner, *n, *limit, *violated),
            Reason::Internal(what) => write!(f, "internal: {what}"),
            Reason::Figure(text) => f.write_str(text),
            Reason::AgainstBaseline {
                measure,
                threshold,
                unit,
                baseline,
                limit,
                rule,
                fallback,
            } => fmt_against_baseline(
                f,
                measure,
                (*threshold, *limit),
                unit,
                baseline,
                rule,
                *fallback,
            ),
            Reason::RankTest {
                measure,
                threshold,
                unit,
                baseline,
                figures,
                unsure,
                fallback,
            } => {
                write!(f, "{measure}: ")?;
                fmt_rank_test(f, figures, unsure.as_deref(), *fallback, baseline, unit)?;
                if let Some(t) = threshold {
                    let v = measure.value();
                    write!(
                        f,
                        "; {} the threshold {} {unit}",
                        side_of(v, *t),
                        fmt_num(*t)
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// [`Reason::RankTest`]'s middle: U, p, effect and direction against alpha
/// and the minimum effect, or why the test could not judge.
fn fmt_rank_test(
    f: &mut std::fmt::Formatter<'_>,
    r: &RankFigures,
    unsure: Option<&str>,
    fallback: Fallback,
    baseline: &Baseline,
    unit: &str,
) -> std::fmt::Result {
    if let Some(why) = unsure {
        let then = match fallback {
            Fallback::Threshold => "the fixed threshold decides",
            Fallback::Inconclusive => "inconclusive",
        };
        return write!(f, "Mann-Whitney not judged ({why}); {then}");
    }
    let dir = match r.direction {
        crate::stats::Direction::Higher => "canary slower",
        crate::stats::Direction::Lower => "canary faster",
        crate::stats::Direction::Same => "no shift",
    };
    let sig = if r.p_value < r.alpha { "<" } else { ">=" };
    let big = if r.effect >= r.min_effect { ">=" } else { "<" };
    let verdict = if r.verdict == crate::stats::Verdict::Degraded {
        "degraded"
    } else {
        "not degraded"
    };
    write!(
        f,
        "Mann-Whitney U {} on {} window vs {} baseline requests, one-sided p {:.3e} {sig} alpha {}, Cliff's delta {:.3} ({dir}) {big} min effect {}: {verdict} ({})",
        fmt_num(r.u),
        fmt_num(r.canary_count),
        fmt_num(r.baseline_count),
        r.p_value,
        fmt_num(r.alpha),
        r.effect,
        fmt_num(r.min_effect),
        baseline.describe(unit)
    )
}

/// [`Reason::Health`]: the run of failed checks against its limit.
fn fmt_health(f: &mut std::fmt::Formatter<'_>, n: u32, limit: f64, last: &str) -> std::fmt::Result {
    let above = f64::from(n) > limit;
    let limit = fmt_num(limit);
    if above {
        write!(
            f,
            "{n} failed health checks in a row, more than {limit} (last: {last})"
        )
    } else if n == 0 {
        write!(f, "health OK (limit: more than {limit} failures in a row)")
    } else {
        write!(
            f,
            "{n} failed health check(s) in a row, not more than {limit} (last: {last})"
        )
    }
}

/// [`Reason::AgainstBaseline`]: the figure, then the baseline and its
/// limit, then the fixed threshold; a missing or thin baseline says what
/// decided instead.
fn fmt_against_baseline(
    f: &mut std::fmt::Formatter<'_>,
    measure: &Measure,
    (threshold, limit): (Option<f64>, Option<f64>),
    unit: &str,
    baseline: &Baseline,
    rule: &str,
    fallback: Fallback,
) -> std::fmt::Result {
    let v = measure.value();
    write!(f, "{measure}: ")?;
    match limit {
        Some(l) => write!(
            f,
            "{} the baseline limit {} {unit} ({} {rule})",
            side_of(v, l),
            fmt_num(l),
            baseline.describe(unit)
        )?,
        None => {
            let then = match fallback {
                Fallback::Threshold => "the fixed threshold decides",
                Fallback::Inconclusive => "inconclusive",
            };
            write!(f, "{}; {then}", baseline.describe(unit))?
        }
    }
    if let Some(t) = threshold {
        write!(f, "; {} the threshold {} {unit}", side_of(v, t), fmt_num(t))?;
    }
    Ok(())
}

/// Strictly above the threshold violates.
fn side_of(value: f64, threshold: f64) -> &'static str {
    if value > threshold {
        "above"
    } else {
        "within"
    }
}

/// [`Reason::SustainedAbove`]'s ending: whether the breach has lasted long
/// enough to trip the gate.
fn fmt_sustained_need(
    f: &mut std::fmt::Formatter<'_>,
    lasted_secs: f64,
    needed_secs: f64,
) -> std::fmt::Result {
    if lasted_secs >= needed_secs {
        write!(f, " (limit {})", fmt_secs(needed_secs))
    } else {
        write!(f, " of the {} that trip the gate", fmt_secs(needed_secs))
    }
}

/// [`Reason::InARow`]: the inner reason with the run and its policy.
fn fmt_in_a_row(
    f: &mut std::fmt::Formatter<'_>,
    inner: &Reason,
    n: u32,
    limit: u32,
    violated: bool,
) -> std::fmt::Result {
    if violated {
        write!(f, "{inner} ({n} polls in a row; violation after {limit})")
    } else if limit == 0 {
        write!(f, "{inner} ({n} in a row; never a violation by itself)")
    } else {
        write!(f, "{inner} ({n} in a row; violation after {limit})")
    }
}

impl Measure {
    /// The figure compared with the threshold.
    pub fn value(&self) -> f64 {
        match self {
            Measure::Ratio { percent, .. } => *percent,
            Measure::Percentile { value_ms, .. } => *value_ms,
            Measure::Instant { value, .. } => *value,
        }
    }
}

impl std::fmt::Display for Measure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Measure::Ratio {
                metric,
                denominator,
                percent,
                numerator_increase,
                denominator_increase,
                window_secs,
            } => write!(
                f,
                "{} {percent:.2} % ({} of {} {denominator}) over {}",
                metric.as_str(),
                fmt_num(*numerator_increase),
                fmt_num(*denominator_increase),
                fmt_secs(*window_secs)
            ),
            Measure::Percentile {
                quantile,
                value_ms,
                window_secs,
                count,
                from_histogram,
            } => {
                write!(
                    f,
                    "p{} hash time {value_ms:.0} ms over {} from {} ",
                    fmt_num(quantile * 100.0),
                    fmt_secs(*window_secs),
                    fmt_num(*count)
                )?;
                f.write_str(if *from_histogram {
                    "requests (histogram)"
                } else {
                    "observations"
                })
            }
            Measure::Instant {
                metric,
                value,
                unit,
            } => write!(f, "{} {} {unit}", metric.as_str(), fmt_num(*value)),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The counters a ratio gate may read, in a fixed order for the history rows.
const COUNTERS: [Metric; 4] = [
    Metric::RequestsTotal,
    Metric::HashRequestsTotal,
    Metric::ExtractionFailuresTotal,
    Metric::ErrorsTotal,
];

fn counter_index(m: Metric) -> Option<usize> {
    COUNTERS.iter().position(|c| *c == m)
}

/// A reset-corrected running total: the sum of increases since the first
/// sample, so the increase over a window is one subtraction.
#[derive(Debug, Clone, Copy, Default)]
struct Corrected {
    last_raw: Option<f64>,
    total: f64,
}

impl Corrected {
    fn push(&mut self, raw: f64) -> f64 {
        let inc = match self.last_raw {
            None => 0.0,
            Some(prev) if raw >= prev => raw - prev,
            // A counter that went down restarted from zero: its value is the increase.
            Some(_) => raw,
        };
        self.last_raw = Some(raw);
        self.total += inc;
        self.total
    }
}

/// One metrics-bearing sample as the windows need it.
#[derive(Debug, Clone)]
struct Row {
    t_ms: i64,
    counters: [Option<f64>; 4],
    /// Corrected cumulative bucket totals, with the layout epoch they belong to.
    buckets: Option<(u64, Vec<Bucket>)>,
    observations: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Default)]
struct GateState {
    consecutive_errors: u32,
    consecutive_no_data: u32,
    /// Sustained gates: when the current run of breaching samples began.
    breach_since_ms: Option<i64>,
}

/// Evaluates a set of gates over a stream of samples.
#[derive(Debug, Clone)]
pub struct Evaluator {
    gates: Vec<GateSpec>,
    states: Vec<GateState>,
    rows: VecDeque<Row>,
    counters: [Corrected; 4],
    bucket_state: Option<(Vec<f64>, Vec<Corrected>)>,
    bucket_epoch: u64,
    health_failures: u32,
    last_health_detail: String,
    max_window_ms: i64,
    /// Per gate: the baseline a baseline-relative gate compares with.
    baselines: Vec<Option<Arc<Baseline>>>,
    /// The last sample's decisions, one per gate, kept so that
    /// [`Evaluator::observe_in_place`] reuses them (and their gate names).
    decisions: Vec<Decision>,
    /// Rows that left the window, kept for their bucket vectors' memory.
    spare_buckets: Vec<Vec<Bucket>>,
    /// A percentile's bucket increases, reused from one decision to the next.
    scratch: Vec<Bucket>,
}

impl Evaluator {
    pub fn new(gates: Vec<GateSpec>) -> Self {
        let max_window_ms = gates.iter().map(|g| window_ms(g.window)).max().unwrap_or(0);
        Evaluator {
            states: vec![GateState::default(); gates.len()],
            gates,
            rows: VecDeque::new(),
            counters: [Corrected::default(); 4],
            bucket_state: None,
            bucket_epoch: 0,
            health_failures: 0,
            last_health_detail: String::new(),
            max_window_ms,
            baselines: Vec::new(),
            decisions: Vec::new(),
            spare_buckets: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Sets the baselines, one per gate in order (see
    /// [`crate::baseline::BaselineBuilder::finish`]). A baseline-relative
    /// gate given none is judged as if its baseline were missing.
    pub fn with_baselines(mut self, baselines: Vec<Option<Arc<Baseline>>>) -> Self {
        self.baselines = baselines;
        self
    }

    pub fn gates(&self) -> &[GateSpec] {
        &self.gates
    }

    /// Judges a figure that arrives already computed (a gate read through
    /// Prometheus, see `crate::promql`) for gate `i`: strictly above the
    /// threshold violates, and runs of `error` / `no-data` count against
    /// the gate's `errors_to_violate` / `no_data_to_violate` as a polled
    /// figure's do. `None` when there is no gate `i`.
    pub fn observe_figure(
        &mut self,
        i: usize,
        figure: &crate::promql::Figure,
        t_ms: i64,
    ) -> Option<Decision> {
        use crate::promql::Figure;
        let g = self.gates.get(i)?.clone();
        let outcome = match figure {
            Figure::Value(v) => {
                let status = if *v > g.threshold {
                    Status::Violated
                } else {
                    Status::Ok
                };
                let (value, threshold) = (fmt_num(*v), fmt_num(g.threshold));
                let side = side_of(*v, g.threshold);
                let unit = g.unit;
                let text = format!(
                    "PromQL figure {value} {unit}: {side} the threshold {threshold} {unit}"
                );
                Outcome::new(status, Some(*v), Reason::Figure(text))
            }
            Figure::NoData(why) => Outcome::no_data(Reason::Figure(why.clone())),
            Figure::Error(why) => Outcome::error(Reason::Figure(why.clone())),
        };
        let mut d = self.finish(i, &g, outcome, t_ms);
        d.gate = g.name;
        Some(d)
    }

    /// Takes one sample (in time order) and returns one decision per gate.
    pub fn observe(&mut self, sample: &Sample) -> Vec<Decision> {
        self.observe_in_place(sample).to_vec()
    }

    /// As [`Evaluator::observe`], but the decisions are lent from a buffer
    /// the evaluator reuses: a replay of millions of samples then allocates
    /// no vector and no gate name per sample.
    pub fn observe_in_place(&mut self, sample: &Sample) -> &[Decision] {
        match &sample.health {
            Health::Ok => self.health_failures = 0,
            Health::NotOk { detail } | Health::Error { detail } => {
                self.health_failures += 1;
                self.last_health_detail = format!("{}: {detail}", sample.health.label());
            }
        }
        if let Ok(m) = &sample.metrics {
            self.push_row(sample.t_ms, m);
        }
        // The specs are moved out while deciding so each gate can be read
        // while the evaluator's state is updated, without cloning them.
        let gates = std::mem::take(&mut self.gates);
        let mut decisions = std::mem::take(&mut self.decisions);
        for (i, g) in gates.iter().enumerate() {
            let mut d = self.decide(i, g, sample);
            match decisions.get_mut(i) {
                // The gate's name moves over from its previous decision.
                Some(prev) => {
                    d.gate = std::mem::take(&mut prev.gate);
                    *prev = d;
                }
                None => {
                    d.gate = g.name.clone();
                    decisions.push(d);
                }
            }
        }
        self.gates = gates;
        self.decisions = decisions;
        &self.decisions
    }

    fn push_row(&mut self, t_ms: i64, m: &Metrics) {
        let mut counters = [None; 4];
        for (i, metric) in COUNTERS.iter().enumerate() {
            counters[i] = m.value(*metric).map(|raw| self.counters[i].push(raw));
        }
        let buckets = m
            .hash_time_buckets
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|b| {
                let same_layout = matches!(&self.bucket_state,
                    Some((l, _)) if l.len() == b.len() && l.iter().zip(b).all(|(le, x)| *le == x.le));
                if !same_layout {
                    // A new bucket layout cannot be subtracted from the old one:
                    // windows restart from here.
                    self.bucket_epoch += 1;
                    let les = b.iter().map(|x| x.le).collect();
                    self.bucket_state = Some((les, vec![Corrected::default(); b.len()]));
                }
                let (_, state) = self
                    .bucket_state
                    .get_or_insert_with(|| (Vec::new(), Vec::new()));
                let total_went_down = match (state.last().and_then(|c| c.last_raw), b.last()) {
                    (Some(prev), Some(now)) => now.count < prev,
                    _ => false,
                };
                let mut corrected = self.spare_buckets.pop().unwrap_or_default();
                corrected.clear();
                corrected.extend(b.iter().zip(state.iter_mut()).map(|(x, c)| {
                    if total_went_down {
                        // A histogram resets as a whole: count every bucket from zero.
                        c.last_raw = Some(0.0);
                    }
                    Bucket {
                        le: x.le,
                        count: c.push(x.count),
                    }
                }));
                (self.bucket_epoch, corrected)
            });
        self.rows.push_back(Row {
            t_ms,
            counters,
            buckets,
            observations: m.hash_time_ms.clone(),
        });
        // Keep exactly one row at or before the oldest cutoff any gate needs.
        let cutoff = t_ms.saturating_sub(self.max_window_ms);
        while self.rows.len() >= 2 && self.rows[1].t_ms <= cutoff {
            if let Some(Row {
                buckets: Some((_, spare)),
                ..
            }) = self.rows.pop_front()
            {
                self.spare_buckets.push(spare);
            }
        }
    }

    /// The newest row at least `window` older than `now`.
    fn anchor(&self, now_ms: i64, window: Duration) -> Option<&Row> {
        let cutoff = now_ms.saturating_sub(window_ms(window));
        let n = self.rows.partition_point(|r| r.t_ms <= cutoff);
        if n == 0 {
            None
        } else {
            self.rows.get(n - 1)
        }
    }

    fn covered_secs(&self, now_ms: i64) -> f64 {
        self.rows
            .front()
            .map(|r| now_ms.saturating_sub(r.t_ms) as f64 / 1000.0)
            .unwrap_or(0.0)
    }

    fn decide(&mut self, i: usize, g: &GateSpec, sample: &Sample) -> Decision {
        let outcome = match g.kind {
            GateKind::Consecutive => self.consecutive(g),
            _ => match &sample.metrics {
                Err(e) => Outcome::error(Reason::MetricsProbeFailed(e.clone())),
                Ok(m) => match g.kind {
                    GateKind::Ratio => self.ratio(g, sample.t_ms),
                    GateKind::Percentile => {
                        let mut scratch = std::mem::take(&mut self.scratch);
                        let o = self.percentile(g, sample.t_ms, &mut scratch);
                        self.scratch = scratch;
                        o
                    }
                    GateKind::Instant => instant(g, m),
                    GateKind::Sustained => self.sustained(i, g, m, sample.t_ms),
                    GateKind::Consecutive => unreachable_consecutive(),
                },
            },
        };
        if g.kind == GateKind::Sustained
            && outcome.status != Status::Violated
            && outcome.status != Status::Pending
        {
            self.states[i].breach_since_ms = None;
        }
        if let Some(t) = g.baseline.as_ref().and_then(|r| r.test.as_ref()) {
            let rule = g
                .baseline
                .as_ref()
                .expect("a test belongs to a baseline rule");
            return self.rank_test(i, g, rule, t, outcome, sample.t_ms);
        }
        let (outcome, base) = match &g.baseline {
            Some(rule) => self.against_baseline(i, g, rule, outcome),
            None => (outcome, None),
        };
        let mut d = self.finish(i, g, outcome, sample.t_ms);
        if let Some((baseline, limit)) = base {
            d.baseline = Some(baseline);
            d.limit = limit;
        }
        d
    }

    /// A Mann-Whitney gate: the window's hash-time histogram increase (the
    /// counts its percentile reads) against the baseline's histogram,
    /// one-sided (canary slower). Violated when p < alpha and the effect
    /// reaches min_effect, or (threshold_too) above the fixed threshold; a
    /// missing or thin side is the `fallback`, never a pass by the test.
    fn rank_test(
        &mut self,
        i: usize,
        g: &GateSpec,
        rule: &BaselineRule,
        t: &RankTest,
        o: Outcome,
        now_ms: i64,
    ) -> Decision {
        let baseline = match self.baselines.get(i).cloned().flatten() {
            Some(b) => b,
            None => Arc::new(Baseline::missing("none", "no baseline was given")),
        };
        let Reason::Measured { measure, .. } = o.reason else {
            let mut d = self.finish(i, g, o, now_ms);
            d.baseline = Some(baseline);
            return d;
        };
        let window = self.window_histogram(g, now_ms);
        let (figures, unsure) = rank_figures(t, window.as_deref(), &baseline);
        let v = measure.value();
        let over = v > g.threshold;
        let degraded = figures.verdict == crate::stats::Verdict::Degraded;
        let status = match &unsure {
            None if degraded || (rule.threshold_too && over) => Status::Violated,
            None => Status::Ok,
            // The test could not judge: the fallback decides, as for a
            // missing baseline (the threshold alone, or inconclusive).
            Some(_) if over && (rule.threshold_too || rule.fallback == Fallback::Threshold) => {
                Status::Violated
            }
            Some(_) if rule.fallback == Fallback::Threshold => Status::Ok,
            Some(_) => Status::Inconclusive,
        };
        let threshold_shown =
            rule.threshold_too || (unsure.is_some() && rule.fallback == Fallback::Threshold);
        let reason = Reason::RankTest {
            measure,
            threshold: threshold_shown.then_some(g.threshold),
            unit: g.unit,
            baseline: baseline.clone(),
            figures,
            unsure,
            fallback: rule.fallback,
        };
        let mut d = self.finish(i, g, Outcome::new(status, o.value, reason), now_ms);
        d.baseline = Some(baseline);
        d.mann_whitney = Some(figures);
        d
    }

    /// Hash-time requests per bucket (not cumulative) in gate `g`'s window
    /// ending now: the increase its percentile reads. `None` without a
    /// histogram covering the window.
    fn window_histogram(&self, g: &GateSpec, now_ms: i64) -> Option<Vec<Bucket>> {
        let now = self.rows.back().filter(|r| r.t_ms == now_ms)?;
        let anchor = self.anchor(now_ms, g.window)?;
        let ((e1, b1), (e0, b0)) = (now.buckets.as_ref()?, anchor.buckets.as_ref()?);
        if e1 != e0 {
            return None;
        }
        let mut below = 0.0;
        Some(
            b1.iter()
                .zip(b0)
                .map(|(a, b)| {
                    let cum = a.count - b.count;
                    let count = (cum - below).max(0.0);
                    below = cum;
                    Bucket { le: a.le, count }
                })
                .collect(),
        )
    }

    /// A measured figure of a baseline-relative gate, judged against the
    /// baseline's limit and (unless the rule drops it) the fixed threshold.
    /// Other outcomes (pending, no data, errors) are left as they are.
    #[allow(clippy::type_complexity)]
    fn against_baseline(
        &self,
        i: usize,
        g: &GateSpec,
        rule: &BaselineRule,
        o: Outcome,
    ) -> (Outcome, Option<(Arc<Baseline>, Option<f64>)>) {
        let baseline = match self.baselines.get(i).cloned().flatten() {
            Some(b) => b,
            None => Arc::new(Baseline::missing("none", "no baseline was given")),
        };
        let Reason::Measured { measure, .. } = o.reason else {
            return (o, Some((baseline, None)));
        };
        let v = measure.value();
        let limit = baseline.ready_value().map(|b| rule.limit(b));
        let over_threshold = rule.threshold_too && v > g.threshold;
        let status = match limit {
            Some(l) if v > l || over_threshold => Status::Violated,
            Some(_) => Status::Ok,
            None if v > g.threshold
                && (rule.threshold_too || rule.fallback == Fallback::Threshold) =>
            {
                Status::Violated
            }
            None if rule.fallback == Fallback::Threshold => Status::Ok,
            None => Status::Inconclusive,
        };
        let threshold_shown =
            rule.threshold_too || (limit.is_none() && rule.fallback == Fallback::Threshold);
        let reason = Reason::AgainstBaseline {
            measure,
            threshold: threshold_shown.then_some(g.threshold),
            unit: g.unit,
            baseline: baseline.clone(),
            limit,
            rule: rule.describe(g.unit),
            fallback: rule.fallback,
        };
        (
            Outcome::new(status, o.value, reason),
            Some((baseline, limit)),
        )
    }

    /// Turns runs of errors / no-data into violations per the gate's policy.
    fn finish(&mut self, i: usize, g: &GateSpec, o: Outcome, t_ms: i64) -> Decision {
        let st = &mut self.states[i];
        let (status, reason) = match o.status {
            Status::Error => {
                st.consecutive_errors += 1;
                st.consecutive_no_data = 0;
                let (n, limit) = (st.consecutive_errors, g.errors_to_violate);
                let violated = limit > 0 && n >= limit;
                let reason = Reason::InARow {
                    inner: Box::new(o.reason),
                    n,
                    limit,
                    violated,
                };
                let status = if violated {
                    Status::Violated
                } else {
                    Status::Error
                };
                (status, reason)
            }
            Status::NoData => {
                st.consecutive_no_data += 1;
                st.consecutive_errors = 0;
                let (n, limit) = (st.consecutive_no_data, g.no_data_to_violate);
                if limit > 0 && n >= limit {
                    let reason = Reason::InARow {
                        inner: Box::new(o.reason),
                        n,
                        limit,
                        violated: true,
                    };
                    (Status::Violated, reason)
                } else {
                    (Status::NoData, o.reason)
                }
            }
            s => {
                st.consecutive_errors = 0;
                st.consecutive_no_data = 0;
                (s, o.reason)
            }
        };
        Decision {
            // Named by the caller: observe_in_place reuses the name it has.
            gate: String::new(),
            status,
            value: o.value,
            threshold: g.threshold,
            unit: g.unit,
            window_secs: g.window.as_secs_f64(),
            action: g.action,
            reason,
            t_ms,
            baseline: None,
            limit: None,
            mann_whitney: None,
        }
    }

    fn consecutive(&self, g: &GateSpec) -> Outcome {
        let n = self.health_failures;
        let status = if f64::from(n) > g.threshold {
            Status::Violated
        } else {
            Status::Ok
        };
        let last = if n == 0 {
            String::new()
        } else {
            self.last_health_detail.clone()
        };
        let reason = Reason::Health {
            failures: n,
            limit: g.threshold,
            last,
        };
        Outcome::new(status, Some(f64::from(n)), reason)
    }

    fn pending(&self, g: &GateSpec, now_ms: i64) -> Outcome {
        Outcome::new(
            Status::Pending,
            None,
            Reason::WindowNotCovered {
                covered_secs: self.covered_secs(now_ms),
                window_secs: g.window.as_secs_f64(),
            },
        )
    }

    fn ratio(&self, g: &GateSpec, now_ms: i64) -> Outcome {
        let (Some(ni), Some(di)) = (
            counter_index(g.metric),
            g.denominator.and_then(counter_index),
        ) else {
            return Outcome::no_data(Reason::NotACounter(g.metric));
        };
        let Some(now) = self.rows.back().filter(|r| r.t_ms == now_ms) else {
            return Outcome::error(Reason::NoMetricsThisPoll);
        };
        let Some(anchor) = self.anchor(now_ms, g.window) else {
            return self.pending(g, now_ms);
        };
        let den_name = g.denominator.map(Metric::as_str).unwrap_or("requests");
        let (Some(n1), Some(n0), Some(d1), Some(d0)) = (
            now.counters[ni],
            anchor.counters[ni],
            now.counters[di],
            anchor.counters[di],
        ) else {
            return Outcome::no_data(Reason::NotReportedRatio {
                metric: g.metric,
                denominator: den_name,
            });
        };
        let (num, den) = (n1 - n0, d1 - d0);
        let window_secs = g.window.as_secs_f64();
        if den <= 0.0 {
            return Outcome::no_data(Reason::NoTraffic {
                what: den_name,
                window_secs,
            });
        }
        let percent = num / den * 100.0;
        compare(
            g,
            Measure::Ratio {
                metric: g.metric,
                denominator: den_name,
                percent,
                numerator_increase: num,
                denominator_increase: den,
                window_secs,
            },
        )
    }

    /// `deltas` is scratch space for the window's bucket increases.
    fn percentile(&self, g: &GateSpec, now_ms: i64, deltas: &mut Vec<Bucket>) -> Outcome {
        let Some(now) = self.rows.back().filter(|r| r.t_ms == now_ms) else {
            return Outcome::error(Reason::NoMetricsThisPoll);
        };
        let Some(anchor) = self.anchor(now_ms, g.window) else {
            return self.pending(g, now_ms);
        };
        let window_secs = g.window.as_secs_f64();
        let q = g.quantile;
        let outcome = |value: Option<f64>, count: f64, from_histogram: bool| match value {
            None => Outcome::no_data(Reason::NoTraffic {
                what: "hash requests",
                window_secs,
            }),
            Some(value_ms) => compare(
                g,
                Measure::Percentile {
                    quantile: q,
                    value_ms,
                    window_secs,
                    count,
                    from_histogram,
                },
            ),
        };
        if let Some((epoch, b1)) = &now.buckets {
            let Some((e0, b0)) = &anchor.buckets else {
                return self.pending(g, now_ms);
            };
            if e0 != epoch {
                return Outcome::new(Status::Pending, None, Reason::HistogramLayoutChanged);
            }
            deltas.clear();
            deltas.extend(b1.iter().zip(b0).map(|(a, b)| Bucket {
                le: a.le,
                count: a.count - b.count,
            }));
            let total = deltas.last().map_or(0.0, |b| b.count);
            return outcome(histogram_quantile(q, deltas), total, true);
        }
        // No histogram: raw observations of every row after the anchor.
        let mut obs: Vec<f64> = Vec::new();
        let mut any = false;
        for r in self
            .rows
            .iter()
            .filter(|r| r.t_ms > anchor.t_ms && r.t_ms <= now_ms)
        {
            if let Some(o) = &r.observations {
                any = true;
                obs.extend(o.iter().copied().filter(|x| x.is_finite()));
            }
        }
        if !any {
            return Outcome::no_data(Reason::NoHashTimeFigures);
        }
        let value = quantile_linear(q, &mut obs);
        outcome(value, obs.len() as f64, false)
    }

    fn sustained(&mut self, i: usize, g: &GateSpec, m: &Metrics, now_ms: i64) -> Outcome {
        let Some(value) = m.value(g.metric) else {
            return Outcome::no_data(Reason::NotReported(g.metric));
        };
        if value <= g.threshold {
            let reason = Reason::SustainedWithin {
                metric: g.metric,
                value,
                unit: g.unit,
                threshold: g.threshold,
            };
            return Outcome::new(Status::Ok, Some(value), reason);
        }
        let since = *self.states[i].breach_since_ms.get_or_insert(now_ms);
        let lasted_secs = now_ms.saturating_sub(since) as f64 / 1000.0;
        let needed_secs = g.window.as_secs_f64();
        let status = if lasted_secs >= needed_secs {
            Status::Violated
        } else {
            Status::Pending
        };
        let reason = Reason::SustainedAbove {
            metric: g.metric,
            value,
            unit: g.unit,
            threshold: g.threshold,
            lasted_secs,
            needed_secs,
        };
        Outcome::new(status, Some(value), reason)
    }
}

/// The test of a window histogram against a baseline's, or why it cannot
/// judge (no histogram, other buckets, a missing or thin side).
fn rank_figures(
    t: &RankTest,
    window: Option<&[Bucket]>,
    baseline: &Baseline,
) -> (RankFigures, Option<String>) {
    let limits = t.limits();
    let base = baseline.histogram.as_deref().unwrap_or(&[]);
    let canary_count: f64 = window.map_or(0.0, |w| w.iter().map(|b| b.count).sum());
    let baseline_count = baseline.observations();
    let mut unsure = match (window, baseline.state) {
        (None, _) => Some("no hash-time histogram over the window".to_string()),
        (_, crate::baseline::BaselineState::Missing | crate::baseline::BaselineState::Thin) => {
            Some(baseline.describe("ms"))
        }
        (Some(w), _) if w.len() != base.len() || w.iter().zip(base).any(|(a, b)| a.le != b.le) => {
            Some("the window's histogram buckets differ from the baseline's".to_string())
        }
        _ if canary_count < t.min_observations as f64 => Some(format!(
            "only {} request(s) in the window, fewer than the {} needed",
            fmt_num(canary_count),
            t.min_observations
        )),
        _ => None,
    };
    let groups: Vec<(f64, f64)> = window
        .unwrap_or(&[])
        .iter()
        .zip(base)
        .map(|(a, b)| (a.count, b.count))
        .collect();
    let c = crate::stats::compare_grouped_greater(&groups, limits);
    if unsure.is_none() && c.verdict == crate::stats::Verdict::Inconclusive {
        unsure = Some("too few requests on a side".into());
    }
    let figures = RankFigures {
        u: c.test.map_or(0.0, |m| m.u1),
        p_value: c.test.map_or(1.0, |m| m.p_value),
        effect: c.cliffs_delta,
        direction: c.direction,
        verdict: if unsure.is_some() {
            crate::stats::Verdict::Inconclusive
        } else {
            c.verdict
        },
        canary_count,
        baseline_count,
        alpha: t.alpha,
        min_effect: t.min_effect,
        min_observations: t.min_observations,
    };
    (figures, unsure)
}

fn unreachable_consecutive() -> Outcome {
    Outcome::error(Reason::Internal("consecutive gate routed to metrics"))
}

fn instant(g: &GateSpec, m: &Metrics) -> Outcome {
    let Some(value) = m.value(g.metric) else {
        return Outcome::no_data(Reason::NotReported(g.metric));
    };
    let measure = Measure::Instant {
        metric: g.metric,
        value,
        unit: g.unit,
    };
    compare(g, measure)
}

/// Strictly above the threshold violates: exactly 5 % is not above 5 %.
fn compare(g: &GateSpec, measure: Measure) -> Outcome {
    let v = measure.value();
    let status = if v > g.threshold {
        Status::Violated
    } else {
        Status::Ok
    };
    let reason = Reason::Measured {
        measure,
        threshold: g.threshold,
        unit: g.unit,
    };
    Outcome::new(status, Some(v), reason)
}

/// Prometheus `histogram_quantile` over cumulative bucket counts (`le`
/// ascending, last +Inf). `None` when there are no observations.
pub fn histogram_quantile(q: f64, buckets: &[Bucket]) -> Option<f64> {
    let total = buckets.last()?.count;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev_le = 0.0;
    let mut prev_count = 0.0;
    for b in buckets {
        if b.count >= rank {
            if b.le.is_infinite() {
                // Above the highest finite bound: that bound is all we know.
                return Some(prev_le);
            }
            let in_bucket = b.count - prev_count;
            if in_bucket <= 0.0 {
                return Some(b.le);
            }
            return Some(prev_le + (b.le - prev_le) * (rank - prev_count) / in_bucket);
        }
        prev_le = b.le;
        prev_count = b.count;
    }
    Some(prev_le)
}

/// Linear-interpolation quantile (numpy/pandas default). Sorts `obs`.
pub fn quantile_linear(q: f64, obs: &mut [f64]) -> Option<f64> {
    if obs.is_empty() {
        return None;
    }
    obs.sort_by(f64::total_cmp);
    let pos = q * (obs.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(obs[lo] + (obs[hi] - obs[lo]) * frac)
}

#[derive(Debug)]
struct Outcome {
    status: Status,
    value: Option<f64>,
    reason: Reason,
}

impl Outcome {
    fn new(status: Status, value: Option<f64>, reason: Reason) -> Self {
        Outcome {
            status,
            value,
            reason,
        }
    }
    fn error(reason: Reason) -> Self {
        Outcome::new(Status::Error, None, reason)
    }
    fn no_data(reason: Reason) -> Self {
        Outcome::new(Status::NoData, None, reason)
    }
}

fn window_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// 5, 2.5, 0.333: no trailing zeros.
pub fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let s = format!("{x:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn fmt_secs(s: f64) -> String {
    if s < 1.0 {
        return format!("{:.0}ms", s * 1000.0);
    }
    humantime::format_duration(Duration::from_secs(s.round() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wording a Reason can take: notifications repeat these, so a
    /// refactor of `Display` must not change a byte.
    #[test]
    fn reasons_read_as_before() {
        let ratio = Measure::Ratio {
            metric: Metric::ErrorsTotal,
            denominator: "requests_total",
            percent: 7.5,
            numerator_increase: 15.0,
            denominator_increase: 200.0,
            window_secs: 300.0,
        };
        let reasons = vec![
            Reason::Health {
                failures: 4,
                limit: 3.0,
                last: "refused".into(),
            },
            Reason::Health {
                failures: 0,
                limit: 3.0,
                last: String::new(),
            },
            Reason::Health {
                failures: 2,
                limit: 3.0,
                last: "timeout".into(),
            },
            Reason::WindowNotCovered {
                covered_secs: 90.0,
                window_secs: 300.0,
            },
            Reason::HistogramLayoutChanged,
            Reason::NotACounter(Metric::MemoryPercent),
            Reason::NoMetricsThisPoll,
            Reason::MetricsProbeFailed("503".into()),
            Reason::NotReported(Metric::CpuPercent),
            Reason::NotReportedRatio {
                metric: Metric::ErrorsTotal,
                denominator: "requests_total",
            },
            Reason::NoTraffic {
                what: "requests",
                window_secs: 600.0,
            },
            Reason::NoHashTimeFigures,
            Reason::Measured {
                measure: ratio.clone(),
                threshold: 5.0,
                unit: "%",
            },
            Reason::Measured {
                measure: Measure::Percentile {
                    quantile: 0.95,
                    value_ms: 812.4,
                    window_secs: 600.0,
                    count: 1234.0,
                    from_histogram: true,
                },
                threshold: 2000.0,
                unit: "ms",
            },
            Reason::Measured {
                measure: Measure::Percentile {
                    quantile: 0.99,
                    value_ms: 2500.0,
                    window_secs: 60.0,
                    count: 12.0,
                    from_histogram: false,
                },
                threshold: 2000.0,
                unit: "ms",
            },
            Reason::Measured {
                measure: Measure::Instant {
                    metric: Metric::LowConfidenceQueue,
                    value: 12.0,
                    unit: "items",
                },
                threshold: 100.0,
                unit: "items",
            },
            Reason::SustainedWithin {
                metric: Metric::MemoryPercent,
                value: 71.25,
                unit: "%",
                threshold: 90.0,
            },
            Reason::SustainedAbove {
                metric: Metric::CpuPercent,
                value: 95.0,
                unit: "%",
                threshold: 90.0,
                lasted_secs: 120.0,
                needed_secs: 300.0,
            },
            Reason::SustainedAbove {
                metric: Metric::DiskPercent,
                value: 97.0,
                unit: "%",
                threshold: 90.0,
                lasted_secs: 360.0,
                needed_secs: 300.0,
            },
            Reason::InARow {
                inner: Box::new(Reason::MetricsProbeFailed("refused".into())),
                n: 5,
                limit: 5,
                violated: true,
            },
            Reason::InARow {
                inner: Box::new(Reason::NoMetricsThisPoll),
                n: 2,
                limit: 0,
                violated: false,
            },
            Reason::InARow {
                inner: Box::new(Reason::NoMetricsThisPoll),
                n: 2,
                limit: 4,
                violated: false,
            },
            Reason::Internal("no sample"),
        ];
        let text: Vec<String> = reasons.iter().map(ToString::to_string).collect();
        let want = [
            "4 failed health checks in a row, more than 3 (last: refused)",
            "health OK (limit: more than 3 failures in a row)",
            "2 failed health check(s) in a row, not more than 3 (last: timeout)",
            "window not covered yet: 1m 30s of telemetry of the 5m needed",
            "histogram buckets changed; the window restarts",
            "memory_percent cannot be read as a counter",
            "no metrics in this poll",
            "metrics probe failed: 503",
            "the service does not report cpu_percent",
            "the service does not report errors_total and requests_total",
            "no requests in the last 10m (no traffic)",
            "the service reports neither a hash-time histogram nor observations",
            "errors_total 7.50 % (15 of 200 requests_total) over 5m: above the threshold 5 %",
            "p95 hash time 812 ms over 10m from 1234 requests (histogram): within the threshold 2000 ms",
            "p99 hash time 2500 ms over 1m from 12 observations: above the threshold 2000 ms",
            "low_confidence_queue 12 items: within the threshold 100 items",
            "memory_percent 71.25 %, not above 90",
            "cpu_percent 95 % above 90 for 2m of the 5m that trip the gate",
            "disk_percent 97 % above 90 for 6m (limit 5m)",
            "metrics probe failed: refused (5 polls in a row; violation after 5)",
            "no metrics in this poll (2 in a row; never a violation by itself)",
            "no metrics in this poll (2 in a row; violation after 4)",
            "internal: no sample",
        ];
        assert_eq!(text, want);
    }
}
