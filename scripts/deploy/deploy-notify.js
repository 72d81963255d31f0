#!/usr/bin/env node
// Drop-in for the runbooks' `node scripts/deploy/deploy-notify.js`: runs the Rust tool deploy-notify.
require('../lib/run-tool.js')('deploy-notify');
