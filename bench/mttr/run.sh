#!/usr/bin/env bash
# MTTR benchmark: N times (default 5), a release that trips an auto-rollback
# gate (low_confidence_queue: the service floods its queue) is deployed to a
# local production environment in a temporary folder and watched; the watch
# rolls it back. MTTR per incident is report_dhash's (the one definition:
# the violating sample -> the health check completing the required run of
# OK checks on the restored release). Printed: min, median, max, next to the
# physical limit measured in the same run:
#   restore of that backup (backup_dhash --verify: the restore's read,
#   hash and SQLite checks) + service restart to the first OK health
#   (dhash-service start) + (checks_required - 1) health intervals.
#   bench/mttr/run.sh [N]      DHASH_PROFILE=debug uses the debug build
#   HEALTH_INTERVAL=1s bench/mttr/run.sh   the restore's health interval to use
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
n=${1:-5}
profile=${DHASH_PROFILE:-release}
interval=${HEALTH_INTERVAL:-}
for tool in jq python3 curl; do
  command -v "$tool" >/dev/null || { echo "mttr: $tool is needed" >&2; exit 2; }
done
if [ "${DHASH_NO_BUILD:-0}" != 1 ]; then
  if [ "$profile" = release ]; then
    cargo build --release --quiet --manifest-path "$root/Cargo.toml" --bins
  else
    cargo build --quiet --manifest-path "$root/Cargo.toml" --bins
  fi
fi
bin="${CARGO_TARGET_DIR:-$root/target}/$profile"

work=$(mktemp -d "${TMPDIR:-/tmp}/dhash-mttr-bench.XXXXXX")
stop_service() {
  local pidfile="$work/.dhash/production/service.pid"
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(tr -dc 0-9 <"$pidfile")
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}
trap 'stop_service; rm -rf "$work"' EXIT
export DHASH_ROOT="$work"
cd "$work"

# The shipped topology and gates, production on a free loopback port; the
# watch polls every second (detection time is not part of MTTR, which starts
# at the violating sample, but it shortens the run).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
jq --arg p "$port" --arg iv "$interval" '
  .environments |= with_entries(select(.key=="production"))
  | .environments.production |= (
      .service.bind = "127.0.0.1:\($p)"
      | .health_url = "http://127.0.0.1:\($p)/health"
      | .metrics_url = "http://127.0.0.1:\($p)/metrics"
      | .queue_url = "http://127.0.0.1:\($p)/api/dhash/queue/status"
      | .monitor.cadence = [{"every": "1s"}]
      | .notifications.routes = []
      | if $iv != "" then .health.interval = $iv else . end)' \
  "$root/environments.json" >environments.json
cp "$root/quality-gates-config.json" .
checks=$(jq -r '.environments.production.health.checks_required' environments.json)
iv=$(jq -r '.environments.production.health.interval' environments.json)
iv_s=$(python3 -c 'import re,sys; v=sys.argv[1]; m=re.fullmatch(r"([0-9.]+)(ms|s|m)?", v); x=float(m[1]); print({"ms":x/1000,"m":x*60}.get(m[2], x))' "$iv")

echo "== bundles (good, and $n that flood the low-confidence queue)" >&2
"$bin/dhash-service" bundle --tag good --out dist >/dev/null
for i in $(seq 1 "$n"); do
  "$bin/dhash-service" bundle --tag "flood$i" --out dist --fault low_confidence_flood=5000 >/dev/null
done
echo "== deploying the good release" >&2
"$bin/deploy_dhash" --env production --tag good --no-monitor >deploy-good.jsonl

for i in $(seq 1 "$n"); do
  echo "== incident $i/$n: deploy flood$i, watch until the rollback" >&2
  set +e
  "$bin/deploy_dhash" --env production --tag "flood$i" --no-monitor 2>>bench.log \
    | "$bin/monitor_dhash" --env production --duration 120s >"incident$i.jsonl" 2>>bench.log
  code=${PIPESTATUS[1]}
  set -e
  [ "$code" -eq 3 ] || { echo "mttr: watch $i ended with exit $code, not 3 (rolled back); see $work" >&2; trap - EXIT; exit 1; }
done

# MTTR per incident: report_dhash, the one definition.
"$bin/report_dhash" --env production --since 1d -q >report.jsonl 2>/dev/null || true
mapfile -t mttrs < <(jq -r 'select(.event=="report.incident" and .mttr_seconds != null) | .mttr_seconds' report.jsonl)
[ "${#mttrs[@]}" -ge 1 ] || { echo "mttr: report_dhash gives no MTTR; see $work/report.jsonl" >&2; trap - EXIT; exit 1; }

echo "== the limit: restore of that backup, restart to first OK health, health intervals" >&2
backup=$(jq -r 'select(.event=="rollback.completed") | .backup' "incident$n.jsonl" | tail -n1)
t0=$(date +%s.%N)
"$bin/backup_dhash" --verify "$backup" >/dev/null 2>&1
t1=$(date +%s.%N)
stop_service
health=$(jq -r '.environments.production.health_url' environments.json)
if curl -fsS -m 1 "$health" >/dev/null 2>&1; then
  echo "mttr: the service still answers after it was stopped; the restart figure would be wrong" >&2
  exit 1
fi
t2=$(date +%s.%N)
"$bin/dhash-service" start --env production >>bench.log 2>&1
until curl -fsS -m 1 "$health" 2>/dev/null | grep -q '"ok"'; do sleep 0.01; done
t3=$(date +%s.%N)

python3 - "$t0" "$t1" "$t2" "$t3" "$checks" "$iv_s" "$iv" "${mttrs[@]}" <<'PY'
import statistics, sys
t0, t1, t2, t3 = map(float, sys.argv[1:5])
checks, iv_s, iv = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
m = sorted(map(float, sys.argv[8:]))
restore, restart = t1 - t0, t3 - t2
intervals = (checks - 1) * iv_s
limit = restore + restart + intervals
med = statistics.median(m)
print(f"MTTR over {len(m)} incidents (violating sample -> check {checks} OK on the restored release):")
print(f"  min {m[0]:.2f} s   median {med:.2f} s   max {m[-1]:.2f} s")
print(f"physical limit {limit:.2f} s = restore {restore:.2f} s + restart to first OK health {restart:.2f} s"
      f" + {checks - 1} health intervals of {iv} ({intervals:.2f} s)")
print(f"median - limit: {med - limit:+.2f} s")
PY
