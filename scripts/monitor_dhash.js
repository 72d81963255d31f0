#!/usr/bin/env node
// Drop-in for the runbooks' `node scripts/monitor_dhash.js`: runs the Rust tool monitor_dhash.
require('./lib/run-tool.js')('monitor_dhash');
