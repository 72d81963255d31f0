#!/usr/bin/env bash
# Drop-in for the runbooks' scripts/deploy_dhash.sh: runs the Rust tool deploy_dhash.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" deploy_dhash "$@"
