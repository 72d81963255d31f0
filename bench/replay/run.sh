#!/usr/bin/env bash
# Replay benchmark: monitor_dhash --replay against two baselines of the same
# production gates -- a straightforward pandas rolling-window implementation
# and a lazy, multi-threaded polars one -- on 72 h of 1-second telemetry and
# on a 10-million-sample file, in one run. All three must agree on every
# decision. Prints times and peak memory side by side, and the ratios.
#   [RUNS=3] bench/replay/run.sh [SAMPLES_LARGE]   (default 10000000)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
large=${1:-10000000}
runs=${RUNS:-3}
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
  # Each timed run starts with the file written out and in the page cache:
  # otherwise the first tool pays for the generator's writeback and the one
  # after pandas (17 GB at 10 M samples) for the cache pandas evicted. The
  # three tools take turns, $runs rounds, and each is given by its median:
  # this shared 2-core machine varies by up to 2x from one minute to the next.
  sync
  warm() { cat "$csv" >/dev/null; }
  for _ in $(seq "$runs"); do
    # Timed runs: decisions evaluated, summary printed (no per-decision output).
    warm; python3 "$here/../measure.py" "rust:$name" -- "$bin/monitor_dhash" --env production --replay "$csv" --decisions summary 2>>"$results" >/dev/null
    warm; python3 "$here/../measure.py" "pandas:$name" -- python3 "$here/pandas_gates.py" "$csv" 2>>"$results"
    warm; python3 "$here/../measure.py" "polars:$name" -- python3 "$here/polars_gates.py" "$csv" 2>>"$results"
  done
  # Agreement: every decision of rust against each baseline (so all three agree).
  "$bin/monitor_dhash" --env production --replay "$csv" --decisions summary --decisions-csv "$work/$name.rust.csv" >/dev/null
  echo "-- $name: pandas vs rust" >&2
  python3 "$here/pandas_gates.py" "$csv" --compare "$work/$name.rust.csv"
  echo "-- $name: polars vs rust" >&2
  python3 "$here/polars_gates.py" "$csv" --compare "$work/$name.rust.csv"
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def runs(label):
    return [r for r in rows if r["label"] == label]
def median(label, key):
    xs = [r[key] for r in runs(label)]
    return statistics.median(xs) if xs else None
print("median of each tool's runs (min-max in brackets)")
print(f"{'samples':<8}{'rust s':>18}{'pandas s':>24}{'polars s':>21}{'rust MB':>9}{'pandas MB':>11}{'polars MB':>11}"
      f"{'vs pandas':>11}{'vs polars':>11}")
for name in ("72h", "large"):
    tools = ("rust", "pandas", "polars")
    secs = [median(f"{t}:{name}", "seconds") for t in tools]
    mb = [median(f"{t}:{name}", "peak_rss_mb") for t in tools]
    if None in secs:
        continue
    spread = [f"{s:.2f} [{min(r['seconds'] for r in runs(f'{t}:{name}')):.2f}-"
              f"{max(r['seconds'] for r in runs(f'{t}:{name}')):.2f}]" for t, s in zip(tools, secs)]
    print(f"{name:<8}{spread[0]:>18}{spread[1]:>24}{spread[2]:>21}"
          f"{mb[0]:>9.1f}{mb[1]:>11.1f}{mb[2]:>11.1f}"
          f"{secs[1] / secs[0]:>10.1f}x{secs[2] / secs[0]:>10.1f}x")
PY
