#!/usr/bin/env bash
# Replay benchmark: monitor_dhash --replay against two baselines of the same
# production gates -- a straightforward pandas rolling-window implementation
# and a lazy, multi-threaded polars one -- on 72 h of 1-second telemetry and
# on a 10-million-sample file, in one run. All three must agree on every
# decision. Prints times and peak memory side by side, and the ratios.
#   bench/replay/run.sh [SAMPLES_LARGE]   (default 10000000)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
large=${1:-10000000}
work=$(mktemp -d "${TMPDIR:-/tmp}/dhash-replay-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT

python3 -c 'import pandas, numpy' 2>/dev/null || python3 -m pip install --quiet pandas numpy
python3 -c 'import polars' 2>/dev/null || python3 -m pip install --quiet polars
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
  python3 "$here/../measure.py" "polars:$name" -- python3 "$here/polars_gates.py" "$csv" 2>>"$results"
  # Agreement: every decision of rust against each baseline (so all three agree).
  "$bin/monitor_dhash" --env production --replay "$csv" --decisions summary --decisions-csv "$work/$name.rust.csv" >/dev/null
  echo "-- $name: pandas vs rust" >&2
  python3 "$here/pandas_gates.py" "$csv" --compare "$work/$name.rust.csv"
  echo "-- $name: polars vs rust" >&2
  python3 "$here/polars_gates.py" "$csv" --compare "$work/$name.rust.csv"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {r["label"]: r for r in rows}
print(f"{'samples':<8}{'rust s':>9}{'pandas s':>10}{'polars s':>10}{'rust MB':>9}{'pandas MB':>11}{'polars MB':>11}"
      f"{'vs pandas':>11}{'vs polars':>11}")
for name in ("72h", "large"):
    r, p, q = (by.get(f"{tool}:{name}") for tool in ("rust", "pandas", "polars"))
    if not (r and p and q):
        continue
    print(f"{name:<8}{r['seconds']:>9.2f}{p['seconds']:>10.2f}{q['seconds']:>10.2f}"
          f"{r['peak_rss_mb']:>9.1f}{p['peak_rss_mb']:>11.1f}{q['peak_rss_mb']:>11.1f}"
          f"{p['seconds'] / r['seconds']:>10.1f}x{q['seconds'] / r['seconds']:>10.1f}x")
PY
