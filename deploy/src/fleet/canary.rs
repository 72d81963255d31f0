//! Canary against baseline: while the fleet is mixed, the moved instances'
//! failure rate is compared with the unmoved ones' over the same minutes
//! (each instance's `/metrics` counters read at the start and at the end of
//! the bake, so both sides see the same traffic period).
//!
//! The figure is the share of hash requests that failed (extraction
//! failures plus internal errors). The comparison is a one-sided
//! two-proportion z-test on the pooled counts: a violation needs the
//! canary's rate to exceed the baseline's by more than the policy's
//! `max_increase` percentage points AND the difference to be significant
//! (z ≥ 2.326, p ≤ 0.01), so noise on a small fleet does not roll back and a
//! small but real regression under the margin does not either. Fewer than
//! `min_requests` on either side: inconclusive, which the rollout treats as
//! a failed wave (never a pass).
//!
//! Latency is compared too: each side's hash-time histogram growth over the
//! bake (bucket counts pooled across the side's instances) goes through
//! `gates_core::stats::compare_grouped_greater`, the one-sided grouped
//! Mann-Whitney test with Cliff's delta. A violation needs p below
//! `latency_alpha` AND the delta at least `latency_min_effect`; fewer than
//! `latency_min_samples` timed requests on a side is inconclusive. The
//! wave's verdict is the worse of the two comparisons.

use gates_core::config::fleet::CanaryPolicy;
use gates_core::config::EnvConfig;
use gates_core::sample::Bucket;
use gates_core::stats::{self, Limits};
use serde::Serialize;

/// One-sided 1 % critical value of the standard normal.
pub const Z_CRITICAL: f64 = 2.326;

/// Counter readings (or their growth over a bake) of one instance or a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    pub requests: f64,
    pub failures: f64,
}

impl Counts {
    pub fn plus(self, o: Counts) -> Counts {
        Counts {
            requests: self.requests + o.requests,
            failures: self.failures + o.failures,
        }
    }

    /// Growth from `start` to `self`; a counter that went down was reset
    /// (the process restarted), so all of its current value is growth.
    pub fn since(self, start: Counts) -> Counts {
        let grow = |now: f64, then: f64| if now >= then { now - then } else { now };
        Counts {
            requests: grow(self.requests, start.requests),
            failures: grow(self.failures, start.failures),
        }
    }

    /// Failed share in percent (0 when nothing was served).
    pub fn rate(self) -> f64 {
        if self.requests > 0.0 {
            (self.failures / self.requests * 100.0).min(100.0)
        } else {
            0.0
        }
    }
}

/// One instance's `/metrics` at one moment: its counters and its cumulative
/// hash-time histogram (`le` ascending, ending at +Inf; empty when absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reading {
    pub counts: Counts,
    pub buckets: Vec<Bucket>,
}

/// Reads an instance's counters and hash-time histogram from its `/metrics`.
pub fn read(env: &EnvConfig) -> Result<Reading, String> {
    let m = gates_core::probe::probe_metrics(
        &env.metrics_url,
        &env.queue_url,
        env.monitor.probe_timeout,
    )?;
    let requests = m
        .hash_requests_total
        .ok_or_else(|| format!("{}: no hash_requests_total", env.metrics_url))?;
    let failures = m.extraction_failures_total.unwrap_or(0.0) + m.errors_total.unwrap_or(0.0);
    Ok(Reading {
        counts: Counts { requests, failures },
        buckets: m.hash_time_buckets.unwrap_or_default(),
    })
}

/// Requests per latency bucket (`le` in ms, ascending; not cumulative),
/// pooled over a side's instances.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram(pub Vec<(f64, f64)>);

impl Histogram {
    /// Adds the growth of one instance's cumulative histogram from `start`
    /// to `end`. A total that went down is a restart: all of `end` is growth.
    /// A bucket layout that changed cannot be subtracted: `end` alone counts.
    pub fn add_growth(&mut self, start: &[Bucket], end: &[Bucket]) {
        let same = start.len() == end.len() && start.iter().zip(end).all(|(a, b)| a.le == b.le);
        let reset =
            !same || end.last().map_or(0.0, |b| b.count) < start.last().map_or(0.0, |b| b.count);
        let mut below = 0.0;
        for (i, b) in end.iter().enumerate() {
            let then = if reset { 0.0 } else { start[i].count };
            let cum = (b.count - then).max(0.0);
            self.add(b.le, (cum - below).max(0.0));
            below = cum.max(below);
        }
    }

    fn add(&mut self, le: f64, n: f64) {
        match self.0.iter().position(|(l, _)| *l >= le) {
            Some(i) if self.0[i].0 == le => self.0[i].1 += n,
            Some(i) => self.0.insert(i, (le, n)),
            None => self.0.push((le, n)),
        }
    }

    pub fn total(&self) -> f64 {
        self.0.iter().map(|b| b.1).sum()
    }

    /// The upper bound (ms) of the bucket holding the median; `None` when empty.
    pub fn median_le(&self) -> Option<f64> {
        let half = self.total() / 2.0;
        let mut seen = 0.0;
        self.0.iter().find_map(|&(le, n)| {
            seen += n;
            (n > 0.0 && seen >= half).then_some(le)
        })
    }
}

/// The latency comparison's figures, as `fleet.wave.judged` carries them
/// under `judgment.latency`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyJudgment {
    pub verdict: Verdict,
    /// Cliff's delta, canary above baseline (the measured figure).
    pub cliffs_delta: f64,
    /// The delta a violation needs (`latency_min_effect`).
    pub limit: f64,
    /// One-sided p-value (`None` when a side is empty).
    pub p_value: Option<f64>,
    pub alpha: f64,
    /// Timed hash requests per side over the bake, and the least needed.
    pub canary_samples: f64,
    pub baseline_samples: f64,
    pub min_samples: u64,
    /// Upper bound (ms, +Inf as null) of the median's bucket per side.
    pub canary_median_ms: Option<f64>,
    pub baseline_median_ms: Option<f64>,
    pub reason: String,
}

/// Canary against baseline hash-time histograms over the same bake.
pub fn judge_latency(
    canary: &Histogram,
    baseline: &Histogram,
    policy: &CanaryPolicy,
) -> LatencyJudgment {
    let mut les: Vec<f64> = canary.0.iter().chain(&baseline.0).map(|b| b.0).collect();
    les.sort_by(f64::total_cmp);
    les.dedup();
    let count = |h: &Histogram, le: f64| h.0.iter().filter(|b| b.0 == le).map(|b| b.1).sum::<f64>();
    let groups: Vec<(f64, f64)> = les
        .iter()
        .map(|&le| (count(canary, le), count(baseline, le)))
        .collect();
    let limits = Limits {
        alpha: policy.latency_alpha,
        min_effect: policy.latency_min_effect,
        min_samples: usize::try_from(policy.latency_min_samples).unwrap_or(usize::MAX),
    };
    let c = stats::compare_grouped_greater(&groups, limits);
    let finite = |x: Option<f64>| x.filter(|v| v.is_finite());
    let (cm, bm) = (finite(canary.median_le()), finite(baseline.median_le()));
    let show =
        |m: Option<f64>| m.map_or("over the last bound".to_string(), |v| format!("≤ {v} ms"));
    let (verdict, reason) = match c.verdict {
        stats::Verdict::Inconclusive => (Verdict::Inconclusive, format!(
            "too few timed hash requests to compare latency: canary {} and baseline {}, {} needed on each side",
            canary.total(), baseline.total(), policy.latency_min_samples)),
        stats::Verdict::Degraded => (Verdict::Violation, format!(
            "canary is slower than the baseline: median {} against {}, Cliff's delta {:.2} ≥ {} (p {:.1e} < {})",
            show(cm), show(bm), c.cliffs_delta, policy.latency_min_effect,
            c.test.map_or(1.0, |t| t.p_value), policy.latency_alpha)),
        stats::Verdict::Pass => (Verdict::Pass, format!(
            "canary latency median {} against baseline {} (Cliff's delta {:.2}, a violation needs ≥ {} and p < {})",
            show(cm), show(bm), c.cliffs_delta, policy.latency_min_effect, policy.latency_alpha)),
    };
    LatencyJudgment {
        verdict,
        cliffs_delta: round2(c.cliffs_delta),
        limit: policy.latency_min_effect,
        p_value: c.test.map(|t| t.p_value),
        alpha: policy.latency_alpha,
        canary_samples: canary.total(),
        baseline_samples: baseline.total(),
        min_samples: policy.latency_min_samples,
        canary_median_ms: cm,
        baseline_median_ms: bm,
        reason,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Violation,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Violation => "violation",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// The comparison's figures, as `fleet.wave.judged` carries them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgment {
    pub verdict: Verdict,
    pub canary: Counts,
    pub baseline: Counts,
    pub canary_rate: f64,
    pub baseline_rate: f64,
    /// `None` when inconclusive or both rates are 0 or 100 %.
    pub z: Option<f64>,
    pub reason: String,
    /// The latency comparison (absent when there was no baseline to compare).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyJudgment>,
    /// The quality gates judged on the moved instances during the bake
    /// (absent when the environment has none), see [`super::gates`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates: Option<super::gates::GateReport>,
}

impl Judgment {
    /// A verdict reached without comparing the two sides (a health or gate
    /// violation, metrics that could not be read, no baseline left).
    pub fn without_comparison(verdict: Verdict, reason: String) -> Judgment {
        Judgment {
            verdict,
            canary: Counts::default(),
            baseline: Counts::default(),
            canary_rate: 0.0,
            baseline_rate: 0.0,
            z: None,
            reason,
            latency: None,
            gates: None,
        }
    }

    /// Adds the latency comparison: the verdict becomes the worse of the two
    /// (violation over inconclusive over pass), the reason names both.
    pub fn with_latency(mut self, l: LatencyJudgment) -> Judgment {
        let rank = |v: Verdict| match v {
            Verdict::Pass => 0,
            Verdict::Inconclusive => 1,
            Verdict::Violation => 2,
        };
        if rank(l.verdict) > rank(self.verdict) {
            self.verdict = l.verdict;
            self.reason = format!("latency: {}; failures: {}", l.reason, self.reason);
        } else {
            self.reason = format!("failures: {}; latency: {}", self.reason, l.reason);
        }
        self.latency = Some(l);
        self
    }
}

/// Canary (moved) against baseline (unmoved) growth over the same bake.
pub fn judge(canary: Counts, baseline: Counts, policy: &CanaryPolicy) -> Judgment {
    let (cr, br) = (canary.rate(), baseline.rate());
    let mut j = Judgment {
        verdict: Verdict::Inconclusive,
        canary,
        baseline,
        canary_rate: round2(cr),
        baseline_rate: round2(br),
        z: None,
        reason: String::new(),
        latency: None,
        gates: None,
    };
    let min = policy.min_requests as f64;
    if canary.requests < min || baseline.requests < min {
        j.reason = format!(
            "too little traffic to compare: canary {} and baseline {} hash requests, {} needed on each side",
            canary.requests, baseline.requests, policy.min_requests
        );
        return j;
    }
    let pooled = (canary.failures + baseline.failures) / (canary.requests + baseline.requests);
    let se = (pooled * (1.0 - pooled) * (1.0 / canary.requests + 1.0 / baseline.requests)).sqrt();
    let z = if se > 0.0 {
        Some((cr - br) / 100.0 / se)
    } else {
        None
    };
    j.z = z.map(round2);
    let significant = z.is_some_and(|z| z >= Z_CRITICAL);
    if cr - br > policy.max_increase && significant {
        j.verdict = Verdict::Violation;
        j.reason = format!(
            "canary fails {:.2} % of hash requests against the baseline's {:.2} % (more than {} points worse, z {:.1})",
            cr, br, policy.max_increase, z.unwrap_or(0.0)
        );
    } else {
        j.verdict = Verdict::Pass;
        j.reason = format!(
            "canary {:.2} % against baseline {:.2} % of hash requests failed (allowed: {} points more, or not significant)",
            cr, br, policy.max_increase
        );
    }
    j
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CanaryPolicy {
        CanaryPolicy {
            min_requests: 50,
            max_increase: 2.0,
            latency_alpha: 0.01,
            latency_min_effect: 0.474,
            latency_min_samples: 100,
        }
    }

    fn c(requests: f64, failures: f64) -> Counts {
        Counts { requests, failures }
    }

    #[test]
    fn a_much_worse_canary_is_a_violation() {
        let j = judge(c(100.0, 55.0), c(300.0, 30.0), &policy());
        assert_eq!(j.verdict, Verdict::Violation, "{j:?}");
        assert_eq!(j.canary_rate, 55.0);
        assert_eq!(j.baseline_rate, 10.0);
    }

    #[test]
    fn the_same_rate_passes_and_noise_under_the_margin_passes() {
        assert_eq!(
            judge(c(100.0, 10.0), c(300.0, 30.0), &policy()).verdict,
            Verdict::Pass
        );
        // 13 % against 10 %: over the margin but not significant on 100 requests.
        assert_eq!(
            judge(c(100.0, 13.0), c(300.0, 30.0), &policy()).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn too_little_traffic_on_either_side_is_inconclusive_never_a_pass() {
        let j = judge(c(100.0, 90.0), c(10.0, 1.0), &policy());
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(j.reason.contains("too little traffic"), "{}", j.reason);
        assert_eq!(
            judge(c(0.0, 0.0), c(500.0, 1.0), &policy()).verdict,
            Verdict::Inconclusive
        );
    }

    #[test]
    fn a_counter_reset_counts_from_zero() {
        let start = c(500.0, 50.0);
        assert_eq!(c(40.0, 4.0).since(start), c(40.0, 4.0));
        assert_eq!(c(600.0, 60.0).since(start), c(100.0, 10.0));
    }

    fn cum(counts: &[f64]) -> Vec<Bucket> {
        // Buckets 5, 10, 25, 50, 100 ms and +Inf, cumulative.
        let les = [5.0, 10.0, 25.0, 50.0, 100.0, f64::INFINITY];
        let mut run = 0.0;
        les.iter()
            .zip(counts)
            .map(|(&le, &n)| {
                run += n;
                Bucket { le, count: run }
            })
            .collect()
    }

    fn hist(per_instance: &[&[f64]]) -> Histogram {
        let mut h = Histogram::default();
        for counts in per_instance {
            h.add_growth(&cum(&[0.0; 6]), &cum(counts));
        }
        h
    }

    #[test]
    fn a_slow_canary_is_caught_an_equal_one_passes_a_thin_side_is_inconclusive() {
        let fast: &[f64] = &[10.0, 60.0, 50.0, 8.0, 2.0, 0.0];
        let baseline = hist(&[fast, fast, fast]);
        let slow = hist(&[&[0.0, 2.0, 10.0, 60.0, 50.0, 8.0]]);
        let j = judge_latency(&slow, &baseline, &policy());
        assert_eq!(j.verdict, Verdict::Violation, "{j:?}");
        assert!(
            j.cliffs_delta >= 0.474 && j.p_value.is_some_and(|p| p < 0.01),
            "{j:?}"
        );
        assert_eq!((j.canary_samples, j.baseline_samples), (130.0, 390.0));
        assert_eq!(
            (j.canary_median_ms, j.baseline_median_ms),
            (Some(50.0), Some(10.0))
        );

        let same = judge_latency(&hist(&[fast]), &baseline, &policy());
        assert_eq!(same.verdict, Verdict::Pass, "{same:?}");

        let thin = judge_latency(
            &hist(&[&[0.0, 0.0, 0.0, 10.0, 20.0, 5.0]]),
            &baseline,
            &policy(),
        );
        assert_eq!(thin.verdict, Verdict::Inconclusive, "{thin:?}");
        assert!(thin.reason.contains("too few"), "{}", thin.reason);
    }

    #[test]
    fn the_worse_comparison_decides_the_wave() {
        let fast: &[f64] = &[10.0, 60.0, 50.0, 8.0, 2.0, 0.0];
        let slow = judge_latency(
            &hist(&[&[0.0, 2.0, 10.0, 60.0, 50.0, 8.0]]),
            &hist(&[fast]),
            &policy(),
        );
        let ok_failures = judge(c(130.0, 1.0), c(130.0, 1.0), &policy());
        assert_eq!(ok_failures.verdict, Verdict::Pass);
        let j = ok_failures.with_latency(slow);
        assert_eq!(j.verdict, Verdict::Violation);
        assert!(
            j.reason.starts_with("latency: canary is slower"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn histogram_growth_subtracts_the_start_and_restarts_on_reset() {
        let mut h = Histogram::default();
        h.add_growth(
            &cum(&[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
            &cum(&[1.0, 4.0, 2.0, 0.0, 0.0, 0.0]),
        );
        assert_eq!(h.total(), 5.0);
        assert_eq!(h.0[1], (10.0, 3.0));
        let mut r = Histogram::default();
        r.add_growth(
            &cum(&[50.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
            &cum(&[2.0, 1.0, 0.0, 0.0, 0.0, 0.0]),
        );
        assert_eq!(r.total(), 3.0);
    }
}
