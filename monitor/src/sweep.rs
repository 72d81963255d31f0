//! `--replay FILE… --sweep 'gate.threshold=a..b/step'`: threshold tuning on
//! recorded telemetry (issue 16, seed 002's guideline).
//!
//! Every combination is evaluated in one pass over each recording. Gates
//! are independent of each other in the [`Evaluator`] (each decides from the
//! shared sample rows and its own state), so a gate with k candidate
//! thresholds becomes k gates of one evaluator ("variants"); a combination
//! picks one variant per gate. The pass costs the sum of the variants, not
//! their product, and each variant's decisions are exactly those a plain
//! `--replay` with that threshold makes.
//!
//! Per recording a combination would have rolled back at the first sample
//! where one of its auto-rollback variants is violated. The recordings'
//! actual outcomes come from the ledgers (the monitor record naming the
//! recording: passed or rolled back, the rollback at the recording's last
//! sample), and `rollback_dhash --mark-unnecessary` / `report_dhash mark`
//! verdicts say which rollbacks were false positives.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use gates_core::baseline::Baseline;
use gates_core::config::{Action, GateSpec};
use gates_core::gates::{fmt_num, Evaluator, Status};
use gates_core::sample::Sample;

/// One `--sweep` argument: a gate's threshold over an inclusive range.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepArg {
    pub gate: String,
    pub values: Vec<f64>,
}

/// Most values one `--sweep` may give, and most combinations in all.
pub const MAX_VALUES: usize = 1000;
pub const MAX_COMBINATIONS: usize = 100_000;

/// Parses `gate.threshold=from..to/step` (step > 0; both ends included).
pub fn parse_sweep(s: &str) -> Result<SweepArg, String> {
    let bad = |why: &str| {
        format!("--sweep {s:?}: {why} (expected GATE.threshold=FROM..TO/STEP, e.g. p95_hash_time.threshold=1500..3000/250)")
    };
    let (lhs, range) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
    let gate = lhs
        .strip_suffix(".threshold")
        .ok_or_else(|| bad("only a gate's threshold can be swept"))?;
    let (span, step) = range.split_once('/').ok_or_else(|| bad("no '/STEP'"))?;
    let (from, to) = span.split_once("..").ok_or_else(|| bad("no 'FROM..TO'"))?;
    let num = |t: &str| t.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    let (Some(from), Some(to), Some(step)) = (num(from), num(to), num(step)) else {
        return Err(bad("FROM, TO and STEP must be numbers"));
    };
    if step <= 0.0 || to < from {
        return Err(bad("STEP must be > 0 and FROM <= TO"));
    }
    // Counted as a float first: a tiny STEP gives more values than a usize
    // holds, and the cast would saturate (or wrap) past the limit check.
    let count = ((to - from) / step + 1e-9).floor() + 1.0;
    if !count.is_finite() || count > MAX_VALUES as f64 {
        return Err(bad(&format!("{count:.0} values; at most {MAX_VALUES}")));
    }
    let n = count as usize;
    // Computed from the index, so 0.1 steps do not accumulate error.
    let values = (0..n).map(|i| round9(from + step * i as f64)).collect();
    Ok(SweepArg {
        gate: gate.to_string(),
        values,
    })
}

fn round9(x: f64) -> f64 {
    (x * 1e9).round() / 1e9
}

/// The gates' variants: one per candidate threshold of each swept gate, one
/// (as configured) for the others.
#[derive(Debug, Clone)]
pub struct Variants {
    pub gates: Vec<GateSpec>,
    /// All variants, in gate order, as one evaluator's gates.
    pub specs: Vec<GateSpec>,
    /// For each gate, the indices of its variants in `specs`.
    pub of_gate: Vec<Vec<usize>>,
    /// For each gate, whether a `--sweep` names it (a one-value sweep is
    /// still a setting the operator asked about, and is reported as one).
    pub swept: Vec<bool>,
}

impl Variants {
    pub fn new(gates: &[GateSpec], sweeps: &[SweepArg]) -> anyhow::Result<Variants> {
        for s in sweeps {
            if !gates.iter().any(|g| g.name == s.gate) {
                bail!(
                    "--sweep names gate {:?}, which this environment does not have (it has: {})",
                    s.gate,
                    gates
                        .iter()
                        .map(|g| g.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        let mut specs = Vec::new();
        let mut of_gate = Vec::new();
        let swept = gates
            .iter()
            .map(|g| sweeps.iter().any(|s| s.gate == g.name))
            .collect();
        for g in gates {
            let values: Vec<f64> = match sweeps.iter().rev().find(|s| s.gate == g.name) {
                Some(s) => s.values.clone(),
                None => vec![g.threshold],
            };
            let mut idx = Vec::new();
            for v in values {
                idx.push(specs.len());
                specs.push(GateSpec {
                    threshold: v,
                    ..g.clone()
                });
            }
            of_gate.push(idx);
        }
        let v = Variants {
            gates: gates.to_vec(),
            specs,
            of_gate,
            swept,
        };
        if v.combinations() > MAX_COMBINATIONS {
            bail!(
                "{} combinations; at most {MAX_COMBINATIONS}: sweep fewer gates or coarser steps",
                v.combinations()
            );
        }
        Ok(v)
    }

    pub fn combinations(&self) -> usize {
        self.of_gate.iter().map(Vec::len).product()
    }

    /// The `k`-th combination: one variant index (into `specs`) per gate;
    /// the last gate varies fastest.
    pub fn combination(&self, mut k: usize) -> Vec<usize> {
        let mut out = vec![0; self.of_gate.len()];
        for (i, vs) in self.of_gate.iter().enumerate().rev() {
            out[i] = vs[k % vs.len()];
            k /= vs.len();
        }
        out
    }

    /// The swept settings of a combination, `gate.threshold` → value.
    pub fn settings(&self, combo: &[usize]) -> Vec<(String, f64)> {
        combo
            .iter()
            .enumerate()
            .filter(|(i, _)| self.swept[*i])
            .map(|(i, v)| {
                (
                    format!("{}.threshold", self.gates[i].name),
                    self.specs[*v].threshold,
                )
            })
            .collect()
    }
}

/// One recording evaluated for every variant.
#[derive(Debug, Clone)]
pub struct Pass {
    pub file: PathBuf,
    pub samples: usize,
    pub first_t_ms: Option<i64>,
    pub last_t_ms: Option<i64>,
    /// Per variant: violated decisions, and the first one's sample index and time.
    pub violated: Vec<u64>,
    pub first_violation: Vec<Option<(usize, i64)>>,
    /// Per variant, every decision's status (kept only when asked).
    pub statuses: Option<Vec<Vec<Status>>>,
}

/// Evaluates every variant over one recording's samples in one pass.
pub fn evaluate(
    variants: &Variants,
    baselines: &[Option<Arc<Baseline>>],
    file: &Path,
    samples: impl Iterator<Item = anyhow::Result<Sample>>,
    keep_statuses: bool,
) -> anyhow::Result<Pass> {
    let n = variants.specs.len();
    let mut ev = Evaluator::new(variants.specs.clone()).with_baselines(baselines.to_vec());
    let mut pass = Pass {
        file: file.to_path_buf(),
        samples: 0,
        first_t_ms: None,
        last_t_ms: None,
        violated: vec![0; n],
        first_violation: vec![None; n],
        statuses: keep_statuses.then(|| vec![Vec::new(); n]),
    };
    let mut prev_t = i64::MIN;
    for s in samples {
        let s = s.with_context(|| format!("reading {}", file.display()))?;
        if s.t_ms < prev_t {
            bail!(
                "{}: samples must be in time order (t_ms {} after {prev_t})",
                file.display(),
                s.t_ms
            );
        }
        prev_t = s.t_ms;
        let i = pass.samples;
        for (v, d) in ev.observe(&s).into_iter().enumerate() {
            if d.status == Status::Violated {
                pass.violated[v] += 1;
                pass.first_violation[v].get_or_insert((i, s.t_ms));
            }
            if let Some(st) = pass.statuses.as_mut() {
                st[v].push(d.status);
            }
        }
        pass.first_t_ms.get_or_insert(s.t_ms);
        pass.last_t_ms = Some(s.t_ms);
        pass.samples += 1;
    }
    Ok(pass)
}

/// What actually happened to a recorded window, from the ledgers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actual {
    Passed,
    /// Rolled back at the recording's last sample; `unnecessary` when an
    /// operator marked the rollback so.
    RolledBack {
        unnecessary: bool,
    },
    /// No ledger names this recording (or its watch ended otherwise).
    Unknown,
}

/// One combination over all recordings.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub settings: Vec<(String, f64)>,
    pub violations: u64,
    pub rollbacks: usize,
    /// Rollbacks on windows that passed, or whose rollback was marked unnecessary.
    pub false_positives: usize,
    /// Needed rollbacks (not marked unnecessary) it still catches, of how many.
    pub caught: usize,
    pub needed: usize,
    /// Per caught rollback: seconds earlier (< 0) or later (> 0) than the real one.
    pub shifts_secs: Vec<f64>,
    /// Rollbacks marked unnecessary it would not have made, of how many.
    pub avoided_unnecessary: usize,
    pub unnecessary: usize,
    /// Per recording: when it would have rolled back (ms), if it would.
    pub rollback_at: Vec<Option<i64>>,
}

/// Judges combination `k` over the passes.
pub fn judge(variants: &Variants, passes: &[Pass], actual: &[Actual], k: usize) -> Outcome {
    let combo = variants.combination(k);
    let auto: Vec<usize> = combo
        .iter()
        .copied()
        .filter(|v| variants.specs[*v].action == Action::AutoRollback)
        .collect();
    let mut o = Outcome {
        settings: variants.settings(&combo),
        violations: 0,
        rollbacks: 0,
        false_positives: 0,
        caught: 0,
        needed: 0,
        shifts_secs: Vec::new(),
        avoided_unnecessary: 0,
        unnecessary: 0,
        rollback_at: Vec::new(),
    };
    for (p, a) in passes.iter().zip(actual) {
        o.violations += combo.iter().map(|v| p.violated[*v]).sum::<u64>();
        let at = auto
            .iter()
            .filter_map(|v| p.first_violation[*v])
            .min_by_key(|(i, _)| *i)
            .map(|(_, t)| t);
        o.rollback_at.push(at);
        o.rollbacks += usize::from(at.is_some());
        match (a, at) {
            (Actual::Passed, Some(_)) => o.false_positives += 1,
            (Actual::RolledBack { unnecessary: true }, sim) => {
                o.unnecessary += 1;
                match sim {
                    Some(_) => o.false_positives += 1,
                    None => o.avoided_unnecessary += 1,
                }
            }
            (Actual::RolledBack { unnecessary: false }, sim) => {
                o.needed += 1;
                if let (Some(t), Some(real)) = (sim, p.last_t_ms) {
                    o.caught += 1;
                    o.shifts_secs.push((t - real) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
    o
}

/// The tightest combination with no false positive: the most needed
/// rollbacks caught, then the lowest thresholds (the sum of each swept
/// gate's position in its range), then the earliest catches.
pub fn suggest(variants: &Variants, outcomes: &[Outcome]) -> Option<usize> {
    let position = |k: usize| -> usize {
        let combo = variants.combination(k);
        combo
            .iter()
            .enumerate()
            .map(|(g, v)| variants.of_gate[g].iter().position(|x| x == v).unwrap_or(0))
            .sum()
    };
    outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.false_positives == 0)
        .min_by(|(i, a), (j, b)| {
            b.caught
                .cmp(&a.caught)
                .then(position(*i).cmp(&position(*j)))
                .then(sum(&a.shifts_secs).total_cmp(&sum(&b.shifts_secs)))
        })
        .map(|(i, _)| i)
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

/// `gate.threshold=v gate2.threshold=w`.
pub fn settings_text(settings: &[(String, f64)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("{k}={}", fmt_num(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_parse_and_refuse_in_words() {
        let s = parse_sweep("extraction_failure_rate.threshold=3..8/1").expect("parses");
        assert_eq!(s.values, vec![3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let s = parse_sweep("x.threshold=0.1..0.3/0.1").expect("parses");
        assert_eq!(s.values, vec![0.1, 0.2, 0.3]);
        for bad in [
            "x=1..2/1",
            "x.threshold=2..1/1",
            "x.threshold=1..2/0",
            "x.threshold=a..2/1",
        ] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
        // A step so small the count overflows a usize is refused, not wrapped.
        for tiny in ["x.threshold=1..2/1e-300", "x.threshold=0..1e300/1e-300"] {
            let err = parse_sweep(tiny).expect_err(tiny);
            assert!(err.contains("at most 1000"), "{err}");
        }
    }

    /// Two variants of one auto-rollback gate over three windows: one that
    /// passed, one rolled back (needed), one rolled back and marked unnecessary.
    #[test]
    fn combinations_are_judged_against_what_happened() {
        let spec = gates_core::config::GatesFile::parse(
            Path::new("g.json"),
            r#"{"environments": {"staging": {"quality_gates": {"p95_hash_time": {"threshold": 2000, "window_minutes": 1, "action": "auto-rollback"}}}}}"#,
        )
        .expect("parses");
        let gates = spec.environments["staging"].gates.clone();
        let arg = parse_sweep("p95_hash_time.threshold=1000..2000/1000").expect("parses");
        let v = Variants::new(&gates, &[arg]).expect("variants");
        let pass = |first: [Option<(usize, i64)>; 2], last: i64| Pass {
            file: PathBuf::from("r.csv"),
            samples: 10,
            first_t_ms: Some(0),
            last_t_ms: Some(last),
            violated: first.iter().map(|f| u64::from(f.is_some())).collect(),
            first_violation: first.to_vec(),
            statuses: None,
        };
        let passes = [
            pass([Some((3, 3000)), None], 9000),
            pass([Some((2, 2000)), Some((5, 5000))], 5000),
            pass([Some((1, 1000)), None], 4000),
        ];
        let actual = [
            Actual::Passed,
            Actual::RolledBack { unnecessary: false },
            Actual::RolledBack { unnecessary: true },
        ];
        let tight = judge(&v, &passes, &actual, 0);
        assert_eq!((tight.rollbacks, tight.false_positives), (3, 2));
        assert_eq!(
            (tight.caught, tight.needed, tight.shifts_secs.clone()),
            (1, 1, vec![-3.0])
        );
        let loose = judge(&v, &passes, &actual, 1);
        assert_eq!((loose.rollbacks, loose.false_positives), (1, 0));
        assert_eq!((loose.avoided_unnecessary, loose.unnecessary), (1, 1));
        assert_eq!(loose.shifts_secs, vec![0.0]);
        assert_eq!(suggest(&v, &[tight, loose]), Some(1));
    }

    /// A one-value sweep still names its setting (it used to print none).
    #[test]
    fn a_one_value_sweep_reports_its_setting() {
        let spec = gates_core::config::GatesFile::parse(
            Path::new("g.json"),
            r#"{"environments": {"staging": {"quality_gates": {"p95_hash_time": {"threshold": 2000, "window_minutes": 1, "action": "auto-rollback"}, "low_confidence_queue": {"threshold": 1000, "window_minutes": 0, "action": "auto-rollback"}}}}}"#,
        )
        .expect("parses");
        let gates = spec.environments["staging"].gates.clone();
        let arg = parse_sweep("p95_hash_time.threshold=1500..1500/100").expect("parses");
        let v = Variants::new(&gates, &[arg]).expect("variants");
        assert_eq!(v.combinations(), 1);
        assert_eq!(
            settings_text(&v.settings(&v.combination(0))),
            "p95_hash_time.threshold=1500"
        );
    }
}
