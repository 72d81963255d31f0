#!/usr/bin/env bash
# `npm start` (seed 003: "npm ci; npm start # or service restart"): starts the
# local service of an environment's installed release (production unless
# --env is given: `npm start -- --env staging`) and waits until it is healthy.
exec "$(dirname "${BASH_SOURCE[0]}")/lib/run-tool" dhash-service start "$@"
