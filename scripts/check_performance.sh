#!/usr/bin/env bash
# Drop-in for seed 004's scripts/check_performance.sh ENV: each quality gate's
# figure against its threshold now (one poll through monitor_dhash's probes
# and gates); exit 1 when an auto-rollback gate is violated now. Runs the
# Rust tool check_performance (crate perfcheck/).
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" check_performance "$@"
