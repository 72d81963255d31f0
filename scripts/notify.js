#!/usr/bin/env node
// Drop-in for the runbooks' `node scripts/notify.js`: runs the Rust tool notify.
require('./lib/run-tool.js')('notify');
