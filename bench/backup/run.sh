#!/usr/bin/env bash
# Backup benchmark (not run by CI).
#
# Generates a data dir of SIZE_MB (default 1024 MiB: ~half compressible
# log-like text, ~40 % incompressible random bytes, a SQLite database with
# text rows) in a temporary project, then in one run:
#   1. baseline: `zip -r -q` of the same files + `sha256sum` of the zip
#   2. `backup_dhash --env bench` (release build): snapshot, zip, sidecar, re-verify
# and prints wall times, their ratio, peak memory (RSS) of each, the zip sizes,
# and checks the backup with the seeds' `sha256sum -c "${LATEST_BACKUP}.sha256"`
# (from the project root) and `unzip -t`.
#
# Usage: bench/backup/run.sh            (SIZE_MB=256 bench/backup/run.sh for a quick one)
#        KEEP=1 keeps the temporary project; NO_BUILD=1 skips `cargo build --release`.
# Target: faster than the baseline with at most 64 MB peak RSS.
set -euo pipefail

SIZE_MB=${SIZE_MB:-1024}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET/release/backup_dhash

for tool in zip unzip sha256sum awk; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is required" >&2; exit 2; }
done

if [[ "${NO_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p dhash-backup --bin backup_dhash) >&2
fi
[[ -x $BIN ]] || { echo "bench: $BIN missing (cargo build --release -p dhash-backup)" >&2; exit 2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/dhash-bench.XXXXXX")
cleanup() { if [[ "${KEEP:-0}" == 1 ]]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

PROJ=$WORK/project
DATA=$PROJ/.dhash/bench/data
mkdir -p "$DATA/logs" "$DATA/blobs" "$PROJ/.dhash/bench/releases"
cat >"$PROJ/environments.json" <<'EOF'
{
  "environments": {
    "bench": {
      "install_root": ".dhash/bench",
      "data_dir": ".dhash/bench/data",
      "database": ".dhash/bench/data/dhash.sqlite3",
      "service": { "kind": "local", "bind": "127.0.0.1:39999" },
      "health_url": "http://127.0.0.1:39999/health",
      "metrics_url": "http://127.0.0.1:39999/metrics",
      "queue_url": "http://127.0.0.1:39999/api/dhash/queue/status",
      "backup_dir": "backups",
      "retention": { "backups": 3 }
    }
  }
}
EOF
cp "$ROOT/quality-gates-config.json" "$PROJ/" 2>/dev/null || echo '{}' >"$PROJ/quality-gates-config.json"

# --- data -------------------------------------------------------------------
TEXT_MB=$((SIZE_MB / 2))
RAND_MB=$((SIZE_MB * 2 / 5))
DB_MB=$((SIZE_MB - TEXT_MB - RAND_MB))
echo "bench: generating ${SIZE_MB} MiB (${TEXT_MB} text, ${RAND_MB} random, ~${DB_MB} SQLite) in $DATA" >&2
t0=$(date +%s.%N)
files=$(( TEXT_MB / 8 > 0 ? TEXT_MB / 8 : 1 ))
for i in $(seq 1 "$files"); do
  awk -v n=$((8 * 1024 * 1024)) -v seed="$i" 'BEGIN {
    srand(seed); total = 0; id = seed * 1000000
    split("GET POST PUT DELETE", m, " "); split("200 200 200 201 404 422 500", s, " ")
    while (total < n) {
      line = sprintf("2026-11-23T09:%02d:%02d.%03dZ INFO dhash request id=%d method=%s path=/api/dhash/hash status=%s ms=%d dhash=%08x%08x\n",
        int(rand()*60), int(rand()*60), int(rand()*1000), id++, m[1+int(rand()*4)], s[1+int(rand()*7)], int(rand()*2500), int(rand()*4294967295), int(rand()*4294967295))
      printf "%s", line; total += length(line)
    }
  }' >"$DATA/logs/app-$i.log"
done
rfiles=$(( RAND_MB / 16 > 0 ? RAND_MB / 16 : 1 ))
for i in $(seq 1 "$rfiles"); do
  head -c $((16 * 1024 * 1024)) /dev/urandom >"$DATA/blobs/blob-$i.bin"
done
if command -v sqlite3 >/dev/null && (( DB_MB > 0 )); then
  rows=$(( DB_MB * 1024 * 1024 / 160 ))
  sqlite3 "$DATA/dhash.sqlite3" >/dev/null <<EOF
PRAGMA journal_mode=WAL;
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT, checksum TEXT, applied_at TEXT);
INSERT INTO schema_migrations VALUES (1, 'create_hashes', 'x', '2026-11-23T09:00:00Z');
CREATE TABLE hashes (id INTEGER PRIMARY KEY, dhash TEXT NOT NULL, confidence REAL NOT NULL, created_at TEXT NOT NULL, note TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $rows)
INSERT INTO hashes (dhash, confidence, created_at, note)
SELECT lower(hex(randomblob(8))), abs(random() % 1000) / 1000.0, '2026-11-23T09:00:00.000Z',
       'extracted from document page ' || (x % 500) || ' of batch ' || (x % 97) || ' by the reference dhash service'
FROM c;
EOF
else
  echo "bench: sqlite3 not found: no database in the data dir" >&2
fi
gen=$(echo "$(date +%s.%N) - $t0" | bc 2>/dev/null || echo "?")
bytes=$(du -sb "$DATA" | cut -f1)
echo "bench: data dir $((bytes / 1048576)) MiB in $(find "$DATA" -type f | wc -l) files (generated in ${gen}s)" >&2

# Warm the page cache the same way for both runs.
find "$DATA" -type f -exec cat {} + >/dev/null

# --- measuring --------------------------------------------------------------
# measure NAME CMD...: wall seconds and peak RSS (KiB) of CMD (and its children).
measure() {
  local name=$1; shift
  local t0 t1 rss
  t0=$(date +%s.%N)
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -v -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
    t1=$(date +%s.%N)
    rss=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$WORK/$name.time")
  else
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    local pid=$! peak=0 v
    while kill -0 "$pid" 2>/dev/null; do
      for p in $pid $(pgrep -P "$pid" 2>/dev/null); do
        v=$(awk '/VmHWM/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        (( ${v:-0} > peak )) && peak=$v
      done
      sleep 0.02
    done
    wait "$pid"
    t1=$(date +%s.%N)
    rss=$peak
  fi
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') $rss"
}

cd "$PROJ"
read -r base_s base_kb < <(measure baseline bash -c 'zip -r -q "$0/baseline.zip" .dhash/bench/data environments.json quality-gates-config.json && sha256sum "$0/baseline.zip" > "$0/baseline.zip.sha256"' "$WORK")
read -r ours_s ours_kb < <(measure ours env DHASH_ROOT="$PROJ" "$BIN" --env bench)
grep -q '"event":"backup.verified"' "$WORK/ours.out" || { echo "bench: backup_dhash failed:" >&2; cat "$WORK/ours.err" >&2; exit 1; }

# --- verification -----------------------------------------------------------
ok=1
LATEST_BACKUP=$(ls -1 backups/dhash_*.zip | sort -r | head -n1)
if sha256sum -c "${LATEST_BACKUP}.sha256" >"$WORK/check.out" 2>&1; then
  echo "bench: sha256sum -c: $(cat "$WORK/check.out")"
else
  echo "bench: sha256sum -c FAILED: $(cat "$WORK/check.out")"; ok=0
fi
if unzip -t -q "$LATEST_BACKUP" >/dev/null; then echo "bench: unzip -t: OK"; else echo "bench: unzip -t FAILED"; ok=0; fi

base_zip=$(stat -c %s "$WORK/baseline.zip")
ours_zip=$(stat -c %s "$LATEST_BACKUP")
awk -v bs="$base_s" -v os="$ours_s" -v bk="$base_kb" -v ok_="$ours_kb" -v bz="$base_zip" -v oz="$ours_zip" -v mb="$((bytes / 1048576))" 'BEGIN {
  printf "bench: data            %d MiB\n", mb
  printf "bench: baseline        zip -r -q + sha256sum: %7.2f s  peak RSS %6.1f MB  zip %7.1f MB\n", bs, bk / 1024, bz / 1048576
  printf "bench: backup_dhash    (incl. snapshot + re-verify): %7.2f s  peak RSS %6.1f MB  zip %7.1f MB\n", os, ok_ / 1024, oz / 1048576
  printf "bench: ratio           baseline / backup_dhash = %.2fx %s\n", bs / os, (os < bs ? "(faster)" : "(SLOWER)")
  printf "bench: memory target   <= 64 MB: %s\n", (ok_ / 1024 <= 64 ? "met" : "MISSED")
}'
[[ $ok == 1 ]]
