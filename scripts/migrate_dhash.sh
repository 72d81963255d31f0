#!/usr/bin/env bash
# Drop-in for the runbooks' scripts/migrate_dhash.sh: runs the Rust tool migrate_dhash.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" migrate_dhash "$@"
