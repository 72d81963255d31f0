#!/usr/bin/env bash
# Sweep benchmark (issue 16): monitor_dhash --replay --sweep evaluates 50
# threshold combinations (10 p95 thresholds x 5 extraction-failure
# thresholds) over 72 h of 1-second telemetry in one pass, timed next to the
# pandas baseline (bench/replay/pandas_gates.py) evaluating ONE combination
# (the configured thresholds) over the same file.
#   bench/sweep/run.sh [SAMPLES]   (default 259200 = 72 h at 1 s)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-259200}
work=$(mktemp -d "${TMPDIR:-/tmp}/dhash-sweep-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

python3 -c 'import pandas, numpy' 2>/dev/null || python3 -m pip install --quiet pandas numpy
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p dhash-monitor --bin monitor_dhash --example gen_telemetry
bin="$root/target/release"
export DHASH_ROOT="$root"

csv="$work/72h.csv"
echo "== generating $n samples (1 s apart)" >&2
"$bin/examples/gen_telemetry" "$n" 1000 42 "$csv"
results="$work/results.jsonl"
python3 "$here/../measure.py" "sweep:50-combinations" -- "$bin/monitor_dhash" --env production --replay "$csv" \
  --sweep 'p95_hash_time.threshold=1500..3750/250' --sweep 'extraction_failure_rate.threshold=3..7/1' \
  2>>"$results" >"$work/sweep.jsonl"
python3 "$here/../measure.py" "pandas:1-combination" -- python3 "$root/bench/replay/pandas_gates.py" "$csv" 2>>"$results"
combos=$(grep -c '"event":"sweep.combination"' "$work/sweep.jsonl")
grep '"event":"sweep.completed"' "$work/sweep.jsonl" | python3 -c 'import json,sys; print(json.load(sys.stdin)["msg"])'

python3 - "$results" "$combos" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {r["label"]: r for r in rows}
print(f"{'run':<24}{'seconds':>10}{'peak MB':>10}")
for r in rows:
    print(f"{r['label']:<24}{r['seconds']:>10.2f}{r['peak_rss_mb']:>10.1f}")
s, p = by["sweep:50-combinations"], by["pandas:1-combination"]
print(f"{sys.argv[2]} combinations swept in {s['seconds']:.2f}s; pandas takes {p['seconds']:.2f}s for one "
      f"({p['seconds'] / s['seconds']:.1f}x the whole sweep's time)")
PY
