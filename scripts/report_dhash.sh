#!/usr/bin/env bash
# Seed 002's key metrics, the watch and history pages: runs the Rust tool report_dhash.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" report_dhash "$@"
