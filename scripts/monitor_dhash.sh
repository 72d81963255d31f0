#!/usr/bin/env bash
# Drop-in for the runbooks' scripts/monitor_dhash.sh: runs the Rust tool monitor_dhash.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" monitor_dhash "$@"
