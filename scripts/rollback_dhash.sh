#!/usr/bin/env bash
# Drop-in for the runbooks' scripts/rollback_dhash.sh: runs the Rust tool rollback_dhash.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" rollback_dhash "$@"
