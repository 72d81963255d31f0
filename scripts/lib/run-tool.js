// Node entry for the runbooks' `node scripts/*.js` commands: runs the Rust
// tool through run-tool, passing arguments, stdio, signals and exit code.
'use strict';
const { spawn } = require('child_process');
const path = require('path');

module.exports = function runTool(tool) {
  const child = spawn('bash', [path.join(__dirname, 'run-tool'), tool, ...process.argv.slice(2)], {
    stdio: 'inherit',
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => child.kill(sig));
  }
  child.on('error', (err) => {
    console.error(`${tool}: cannot start: ${err.message}`);
    process.exit(2);
  });
  child.on('exit', (code, signal) => {
    if (signal) {
      process.kill(process.pid, signal);
    }
    process.exit(code === null ? 1 : code);
  });
};
