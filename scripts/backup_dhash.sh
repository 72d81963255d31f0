#!/usr/bin/env bash
# Drop-in for the runbooks' scripts/backup_dhash.sh: runs the Rust tool backup_dhash.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" backup_dhash "$@"
