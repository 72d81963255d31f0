//! Judgment beyond fixed thresholds (issue 16): the Mann-Whitney test
//! against scipy, baseline figures and relative gates.

use std::io::Write;
use std::process::{Command, Stdio};

use gates_core::stats::{mann_whitney_u, Alternative};

/// A small deterministic generator (no dependency): xorshift64*.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Log-normal-ish latencies; `round` makes ties.
    fn sample(&mut self, n: usize, scale: f64, round: bool) -> Vec<f64> {
        (0..n)
            .map(|_| {
                let v = scale * (1.0 + 3.0 * self.next_f64() * self.next_f64());
                if round {
                    v.round()
                } else {
                    v
                }
            })
            .collect()
    }
}

const SCIPY: &str = r#"
import json, sys
try:
    from scipy.stats import mannwhitneyu
except ImportError as e:
    sys.exit("scipy is missing (.ci/run installs it: python3 -m pip install scipy): %s" % e)
out = []
for c in json.load(sys.stdin):
    r = mannwhitneyu(c["x"], c["y"], alternative=c["alt"])
    out.append([float(r.statistic), float(r.pvalue)])
print(json.dumps(out))
"#;

/// U and the p-value agree with scipy's `mannwhitneyu` (defaults: asymptotic
/// with tie and continuity corrections for these sizes) to 1e-9, with and
/// without ties, for the three alternatives.
#[test]
fn mann_whitney_agrees_with_scipy() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut cases = Vec::new();
    for (i, (n1, n2)) in [(9, 9), (12, 30), (50, 47), (200, 150), (25, 400), (9, 12)]
        .into_iter()
        .enumerate()
    {
        for (j, alt) in ["two-sided", "greater", "less"].into_iter().enumerate() {
            let round = (i + j) % 2 == 0;
            let shift = 1.0 + 0.1 * (i as f64);
            let x = rng.sample(n1, 100.0 * shift, round);
            let y = rng.sample(n2, 100.0, round);
            cases.push((x, y, alt));
        }
    }
    // All values tied, and one sample entirely above the other.
    cases.push((vec![5.0; 10], vec![5.0; 12], "two-sided"));
    cases.push((vec![10.0; 10], vec![1.0; 12], "greater"));
    let input = serde_json::Value::Array(
        cases
            .iter()
            .map(|(x, y, alt)| serde_json::json!({"x": x, "y": y, "alt": alt}))
            .collect(),
    );
    let want = run_scipy(&input);
    assert_eq!(want.len(), cases.len());
    for ((x, y, alt), (u_want, p_want)) in cases.iter().zip(want) {
        let alt_e = match *alt {
            "greater" => Alternative::Greater,
            "less" => Alternative::Less,
            _ => Alternative::TwoSided,
        };
        let got = mann_whitney_u(x, y, alt_e).expect("both samples non-empty");
        let ctx = format!(
            "n1={} n2={} {alt}: ours {got:?}, scipy U={u_want} p={p_want}",
            x.len(),
            y.len()
        );
        assert!((got.u1 - u_want).abs() < 1e-9, "U differs: {ctx}");
        assert!((got.p_value - p_want).abs() < 1e-9, "p differs: {ctx}");
    }
}

fn run_scipy(input: &serde_json::Value) -> Vec<(f64, f64)> {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(SCIPY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for this test (.ci/run installs python3 and scipy)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.to_string().as_bytes())
        .expect("writing the samples to python3");
    let out = child.wait_with_output().expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 with scipy failed (.ci/run must install scipy: python3 -m pip install scipy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(f64, f64)> = serde_json::from_slice(&out.stdout).expect("scipy's JSON");
    v
}
