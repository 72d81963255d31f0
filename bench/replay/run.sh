#!/usr/bin/env bash
# Replay benchmark: monitor_dhash --replay against a straightforward pandas
# rolling-window implementation of the same production gates, on 72 h of
# 1-second telemetry and on a 10-million-sample file, in one run. Both must
# agree on every decision. Prints times, peak memory and the ratios.
#   bench/replay/run.sh [SAMPLES_LARGE]   (default 10000000)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
large=${1:-10000000}
work=$(mktemp -d "${TMPDIR:-/tmp}/dhash-replay-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

python3 -c 'import pandas, numpy' 2>/dev/null || python3 -m pip install --quiet pandas numpy
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p dhash-monitor --bin monitor_dhash --example gen_telemetry
bin="$root/target/release"
export DHASH_ROOT="$root"

results="$work/results.jsonl"
for spec in "72h:259200" "large:$large"; do
  name=${spec%%:*} n=${spec#*:}
  csv="$work/$name.csv"
  echo "== $name: generating $n samples (1 s apart)" >&2
  "$bin/examples/gen_telemetry" "$n" 1000 42 "$csv"
  ls -l "$csv" >&2
  # Timed runs: decisions evaluated, summary printed (no per-decision output).
  python3 "$here/../measure.py" "rust:$name" -- "$bin/monitor_dhash" --env production --replay "$csv" --decisions summary 2>>"$results" >/dev/null
  python3 "$here/../measure.py" "pandas:$name" -- python3 "$here/pandas_gates.py" "$csv" 2>>"$results"
  # Agreement: every decision of both, compared.
  "$bin/monitor_dhash" --env production --replay "$csv" --decisions summary --decisions-csv "$work/$name.rust.csv" >/dev/null
  python3 "$here/pandas_gates.py" "$csv" --compare "$work/$name.rust.csv"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {r["label"]: r for r in rows}
print(f"{'run':<16}{'seconds':>10}{'peak MB':>10}")
for r in rows:
    print(f"{r['label']:<16}{r['seconds']:>10.2f}{r['peak_rss_mb']:>10.1f}")
for name in ("72h", "large"):
    r, p = by.get(f"rust:{name}"), by.get(f"pandas:{name}")
    if r and p:
        print(f"{name}: monitor_dhash --replay is {p['seconds'] / r['seconds']:.1f}x faster than pandas, "
              f"with {p['peak_rss_mb'] / max(r['peak_rss_mb'], 0.1):.1f}x less peak memory")
PY
