#!/usr/bin/env bash
# One-command guarded rollout of dhash:
#   pre-deploy validation → timestamped SHA-256 backup → migration dry-run →
#   deploy (migrations applied, atomic switch, health) → T+60 monitor with
#   auto-rollback → notifications.
# A thin pipeline of the workspace's tools; their exit codes are preserved.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: ./quick-deploy.sh --env ENV [--tag TAG] [--dry-run] [--duration D] [--config GATES.json]

  --env ENV        environment from environments.json (staging, production, ...)
  --tag TAG        release to deploy: dist/dhash-TAG, or the git tag TAG built
                   into one (default: this checkout, bundled when missing)
  --dry-run        validate and show every step; change nothing
  --duration D     monitoring window (seconds or 45m; default: the environment's)
  --config FILE    custom quality-gates file for the monitor

stdout: the JSON lines of every step (backup, deploy, migrate, monitor,
notify), also kept in monitor_logs/quick-deploy_<env>_<ts>.jsonl; progress
and the summary go to stderr, so `./quick-deploy.sh --env staging | jq ...`
works.

Exit codes: 0 deployed and every gate held; 1 a step failed (nothing changed
or it was undone); 2 usage/configuration; 3 a gate was violated and the
rollback succeeded; 4 the rollback failed (page someone); 5 deployed but the
watch was inconclusive (a gate never evaluated); 75 the environment is locked
by another run.
EOF
}

env_name="" tag="" dry_run=0 duration="" config=""
value() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then
    echo "quick-deploy: $1 needs a value" >&2
    exit 2
  fi
}
while [ $# -gt 0 ]; do
  case "$1" in
    --env) value "$@"; env_name=$2; shift 2 ;;
    --env=*) env_name=${1#--env=}; shift ;;
    --tag) value "$@"; tag=$2; shift 2 ;;
    --tag=*) tag=${1#--tag=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    --duration) value "$@"; duration=$2; shift 2 ;;
    --config) value "$@"; config=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "quick-deploy: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
[ -n "$env_name" ] || { echo "quick-deploy: --env is required" >&2; usage >&2; exit 2; }

root=$(CDPATH= cd -- "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export DHASH_ROOT="${DHASH_ROOT:-$root}"
profile="${DHASH_PROFILE:-release}"
bin="${CARGO_TARGET_DIR:-$root/target}/$profile"
say() { printf '\n==> %s\n' "$*" >&2; }

# Built only when a source is newer than the last build (scripts/lib/run-tool).
say "Checking the tools are built ($profile)"
DHASH_PROFILE="$profile" "$root/scripts/lib/run-tool" --build-only
for t in backup_dhash deploy_dhash migrate_dhash monitor_dhash notify smoke_tests dhash-service; do
  [ -x "$bin/$t" ] || { echo "quick-deploy: $bin/$t is missing (is cargo installed?)" >&2; exit 2; }
done

log_dir="$DHASH_ROOT/monitor_logs"
mkdir -p "$log_dir"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
events="$log_dir/quick-deploy_${env_name}_${stamp}.jsonl"
: >"$events"
# stdout carries the steps' JSON lines (like every tool), and the run's file
# keeps a copy; everything human goes to stderr.
emit() { tee -a "$events"; }

tag_args=()
[ -n "$tag" ] && tag_args=(--tag "$tag")

say "Pre-deploy validation: configuration, placeholders, bundle, gates, lock, disk"
"$bin/deploy_dhash" --env "$env_name" "${tag_args[@]}" --dry-run | emit
# Informational only (a first deploy has nothing running): kept in the file,
# not on stdout, so a failed pre-check is not mistaken for the rollout's result.
if "$bin/smoke_tests" --env "$env_name" --quick >>"$events" 2>/dev/null; then
  echo "pre-deploy smoke: the running release is healthy" >&2
else
  echo "pre-deploy smoke: no healthy release is running (a first deploy, or an outage the deploy replaces)" >&2
fi

say "Migration plan (dry run)"
"$bin/migrate_dhash" --env "$env_name" "${tag_args[@]}" --dry-run | emit

monitor_args=(--env "$env_name")
[ -n "$duration" ] && monitor_args+=(--duration "$duration")
[ -n "$config" ] && monitor_args+=(--config "$config")

if [ "$dry_run" -eq 1 ]; then
  say "Dry run: backup, deploy and monitor plans"
  "$bin/backup_dhash" --env "$env_name" --dry-run | emit
  "$bin/notify" --env "$env_name" --level info --message "quick-deploy dry run to $env_name" --dry-run | emit
  echo "dry run complete: nothing was changed; events in $events" >&2
  exit 0
fi

say "Backup (timestamped, SHA-256 verified)"
backup_events=$(mktemp)
trap 'rm -f "$backup_events"' EXIT
set +e
"$bin/backup_dhash" --env "$env_name" >"$backup_events"
code=$?
set -e
if [ "$code" -ne 0 ]; then
  emit <"$backup_events" >/dev/null
  cat "$backup_events"
  echo "quick-deploy: the backup failed (exit $code): nothing was deployed" >&2
  exit "$code"
fi

say "Deploy, then the T+60 monitor in the foreground (Ctrl-C stops monitoring; a rerun of monitor_dhash continues the window)"
# The backup's events enter the pipeline once: deploy takes backup.verified as
# its rollback point and every stage forwards what it reads.
set +e
"$bin/deploy_dhash" --env "$env_name" "${tag_args[@]}" --no-monitor <"$backup_events" \
  | "$bin/monitor_dhash" "${monitor_args[@]}" \
  | "$bin/notify" --env "$env_name" \
  | emit
codes=("${PIPESTATUS[@]}")
set -e
deploy_code=${codes[0]} monitor_code=${codes[1]} notify_code=${codes[2]}

say "Summary"
if command -v jq >/dev/null 2>&1; then
  jq -r 'select(.event | test("^(backup.verified|deploy.healthy|deploy.failed|gate.violated|rollback.completed|rollback.failed|monitor.completed|incident.created)$"))
         | "\(.ts)  \(.event)  \(.msg)"' "$events" >&2 || true
fi
echo "events: $events" >&2
[ "$notify_code" -eq 0 ] || echo "warning: notify exited $notify_code (see the fallback file)" >&2
if [ "$deploy_code" -ne 0 ]; then
  echo "result: deploy failed (exit $deploy_code)" >&2
  exit "$deploy_code"
fi
case "$monitor_code" in
  0) echo "result: deployed to $env_name; every quality gate held" >&2 ;;
  3) echo "result: a quality gate was violated; rolled back to the previous release" >&2 ;;
  4) echo "result: a quality gate was violated and the ROLLBACK FAILED: page the on-call" >&2 ;;
  5) echo "result: deployed, but the watch was inconclusive: some gate was never evaluated (see monitor.completed)" >&2 ;;
  *) echo "result: monitoring ended with exit $monitor_code" >&2 ;;
esac
exit "$monitor_code"
