#!/usr/bin/env node
// Drop-in for the runbooks' `node scripts/validate_logging.js`: runs the Rust tool validate_logging.
require('./lib/run-tool.js')('validate_logging');
