#!/usr/bin/env bash
# Drop-in for the runbooks' scripts/smoke_tests.sh: runs the Rust tool smoke_tests.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" smoke_tests "$@"
