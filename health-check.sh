#!/usr/bin/env bash
# Seed 000 runs ./health-check.sh from the project root: same as scripts/health-check.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/scripts/health-check.sh" "$@"
