//! Canary statistics: the Mann-Whitney U rank test and an effect size, to
//! compare a canary's latencies with a baseline's, as Kayenta does. Pure
//! functions, no I/O: the live monitor, `--replay` and a fleet comparing two
//! live populations call the same [`compare`].
//!
//! The test matches scipy's `mannwhitneyu(x, y)` with its defaults
//! (`use_continuity=True`, `alternative='two-sided'`, `method='auto'`) where
//! `auto` picks the asymptotic method: when both samples have more than 8
//! values, or any value is tied. That is the normal approximation with the
//! tie correction and the continuity correction (scipy's `_get_mwu_z`).
//! scipy's exact method for tiny tie-free samples is not implemented: such
//! samples are too few to judge a release anyway, and [`compare`] calls them
//! inconclusive (see [`Limits::min_samples`]).
//!
//! The effect size is Cliff's delta, `(U1 - U2) / (n1 n2)`: the probability
//! that a canary value is above a baseline value minus the probability that
//! it is below, from -1 to 1; positive means the canary is slower.

use serde::Serialize;

/// Which way the alternative hypothesis points, as scipy's `alternative`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alternative {
    TwoSided,
    /// `x` is stochastically greater than `y`.
    Greater,
    /// `x` is stochastically less than `y`.
    Less,
}

/// The result of [`mann_whitney_u`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MannWhitney {
    /// U of the first sample (scipy's `statistic`).
    pub u1: f64,
    /// U of the second sample: `n1 n2 - u1`.
    pub u2: f64,
    /// The standardised statistic (continuity-corrected).
    pub z: f64,
    pub p_value: f64,
    pub n1: usize,
    pub n2: usize,
}

impl MannWhitney {
    /// Cliff's delta: from -1 (x always below y) to 1 (x always above).
    pub fn cliffs_delta(&self) -> f64 {
        (self.u1 - self.u2) / (self.n1 as f64 * self.n2 as f64)
    }
}

/// Mann-Whitney U of two samples of values (NaN values are dropped, as
/// scipy's `nan_policy='omit'` would; scipy's default propagates them).
/// `None` when either sample is empty.
pub fn mann_whitney_u(x: &[f64], y: &[f64], alt: Alternative) -> Option<MannWhitney> {
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|v| (*v, true))
        .chain(y.iter().map(|v| (*v, false)))
        .filter(|(v, _)| !v.is_nan())
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut groups: Vec<(f64, f64)> = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let v = all[i].0;
        let (mut c1, mut c2) = (0.0, 0.0);
        while i < all.len() && all[i].0 == v {
            if all[i].1 {
                c1 += 1.0;
            } else {
                c2 += 1.0;
            }
            i += 1;
        }
        groups.push((c1, c2));
    }
    mann_whitney_grouped(&groups, alt)
}

/// Mann-Whitney U from counts per ordered category: `groups[k] = (count in
/// x, count in y)` for the k-th smallest value. Values within a category are
/// ties (average ranks). This is how two latency histograms with the same
/// buckets are compared without their raw values.
pub fn mann_whitney_grouped(groups: &[(f64, f64)], alt: Alternative) -> Option<MannWhitney> {
    let n1: f64 = groups.iter().map(|g| g.0).sum();
    let n2: f64 = groups.iter().map(|g| g.1).sum();
    if n1 <= 0.0 || n2 <= 0.0 {
        return None;
    }
    let (mut below, mut r1, mut tie_term) = (0.0, 0.0, 0.0);
    for &(c1, c2) in groups {
        let t = c1 + c2;
        // The average of ranks below+1 ..= below+t.
        r1 += c1 * (below + (t + 1.0) / 2.0);
        tie_term += t * t * t - t;
        below += t;
    }
    let u1 = r1 - n1 * (n1 + 1.0) / 2.0;
    let u2 = n1 * n2 - u1;
    let (u, factor) = match alt {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let n = n1 + n2;
    let s = (n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let z = (u - n1 * n2 / 2.0 - 0.5) / s;
    // s = 0 (every value tied): z is -inf or NaN; scipy's p is then 1.
    let p = if z.is_nan() {
        1.0
    } else {
        normal_sf(z) * factor
    };
    Some(MannWhitney {
        u1,
        u2,
        z,
        p_value: p.clamp(0.0, 1.0),
        n1: n1 as usize,
        n2: n2 as usize,
    })
}

/// The standard normal survival function `P(Z > z)` (scipy's `ndtr(-z)`).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function, to about 1e-15 absolute: the Taylor
/// series of erf near 0 and a continued fraction in the tails.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.5 {
        return 1.0 - erf_series(x);
    }
    if x > 27.0 {
        return 0.0;
    }
    erfc_continued_fraction(x)
}

/// erf(x) = 2/sqrt(pi) exp(-x²) Σ 2^n x^(2n+1) / (1·3·…·(2n+1)): every term
/// positive, so no cancellation.
fn erf_series(x: f64) -> f64 {
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut k = 1.0;
    while term > sum * 1e-17 {
        term *= 2.0 * x2 / (2.0 * k + 1.0);
        sum += term;
        k += 1.0;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum
}

/// erfc(x) = exp(-x²)/sqrt(pi) · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …)))),
/// evaluated from the tail back.
fn erfc_continued_fraction(x: f64) -> f64 {
    let mut f = x;
    for k in (1..=120).rev() {
        f = x + (k as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

/// When a canary counts as degraded.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// Significance level: the two-sided p-value must be below it.
    pub alpha: f64,
    /// Practical size: Cliff's delta (canary above baseline) must reach it.
    /// 0.474 is the conventional "large" (Romano et al.), 0.33 "medium".
    pub min_effect: f64,
    /// Fewer values in either sample is too little to judge: inconclusive.
    pub min_samples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            alpha: 0.01,
            min_effect: 0.33,
            min_samples: 20,
        }
    }
}

/// Which way the canary moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Higher,
    Lower,
    Same,
}

/// The judgment of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Significantly and largely above the baseline.
    Degraded,
    /// Not significantly above, or above by too little to matter.
    Pass,
    /// Too few values in one of the samples to judge.
    Inconclusive,
}

/// A canary compared with its baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    pub test: Option<MannWhitney>,
    pub cliffs_delta: f64,
    pub direction: Direction,
    pub verdict: Verdict,
    pub limits: Limits,
}

/// Compares canary values with baseline values (e.g. latencies in ms).
pub fn compare(canary: &[f64], baseline: &[f64], limits: Limits) -> Comparison {
    judge(
        mann_whitney_u(canary, baseline, Alternative::TwoSided),
        limits,
    )
}

/// [`compare`] over grouped counts (two histograms with the same buckets).
pub fn compare_grouped(groups: &[(f64, f64)], limits: Limits) -> Comparison {
    judge(mann_whitney_grouped(groups, Alternative::TwoSided), limits)
}

/// [`compare_grouped`] one-sided: the alternative is that the canary (the
/// first count of each group) is stochastically greater, i.e. slower. A
/// latency gate asks only whether the canary got worse; a faster canary is
/// never a violation, and the one-sided test spends all of alpha on that side.
pub fn compare_grouped_greater(groups: &[(f64, f64)], limits: Limits) -> Comparison {
    judge(mann_whitney_grouped(groups, Alternative::Greater), limits)
}

fn judge(test: Option<MannWhitney>, limits: Limits) -> Comparison {
    let delta = test.map_or(0.0, |t| t.cliffs_delta());
    let direction = if delta > 0.0 {
        Direction::Higher
    } else if delta < 0.0 {
        Direction::Lower
    } else {
        Direction::Same
    };
    let verdict = match test {
        Some(t) if t.n1 >= limits.min_samples && t.n2 >= limits.min_samples => {
            if t.p_value < limits.alpha && delta >= limits.min_effect {
                Verdict::Degraded
            } else {
                Verdict::Pass
            }
        }
        _ => Verdict::Inconclusive,
    };
    Comparison {
        test,
        cliffs_delta: delta,
        direction,
        verdict,
        limits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_known_values() {
        // Reference values from the closed forms / tables (15 digits).
        let cases = [
            (0.0, 1.0),
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (-1.0, 1.842_700_792_949_715),
        ];
        for (x, want) in cases {
            let got = erfc(x);
            assert!((got - want).abs() < 1e-14, "erfc({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn slower_canary_is_degraded_and_similar_one_passes() {
        let base: Vec<f64> = (0..50).map(|i| 100.0 + f64::from(i % 10)).collect();
        let slow: Vec<f64> = base.iter().map(|v| v * 1.3).collect();
        let c = compare(&slow, &base, Limits::default());
        assert_eq!(
            (c.verdict, c.direction),
            (Verdict::Degraded, Direction::Higher)
        );
        let same = compare(&base, &base, Limits::default());
        assert_eq!(same.verdict, Verdict::Pass);
        let few = compare(&slow[..5], &base, Limits::default());
        assert_eq!(few.verdict, Verdict::Inconclusive);
    }
}
