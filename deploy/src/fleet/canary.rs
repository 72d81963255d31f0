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

use gates_core::config::fleet::CanaryPolicy;
use gates_core::config::EnvConfig;
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

/// Reads an instance's counters from its `/metrics`.
pub fn read_counts(env: &EnvConfig) -> Result<Counts, String> {
    let m = gates_core::probe::probe_metrics(
        &env.metrics_url,
        &env.queue_url,
        env.monitor.probe_timeout,
    )?;
    let requests = m
        .hash_requests_total
        .ok_or_else(|| format!("{}: no hash_requests_total", env.metrics_url))?;
    let failures = m.extraction_failures_total.unwrap_or(0.0) + m.errors_total.unwrap_or(0.0);
    Ok(Counts { requests, failures })
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
}
