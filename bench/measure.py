#!/usr/bin/env python3
"""Runs a command and prints its wall time and peak RSS (of it and its
children) as one JSON line on stderr: {"label", "seconds", "peak_rss_mb", "exit"}.
usage: measure.py LABEL -- COMMAND [ARGS...]"""
import json
import resource
import subprocess
import sys
import time

label = sys.argv[1]
cmd = sys.argv[sys.argv.index("--") + 1:]
t0 = time.monotonic()
rc = subprocess.call(cmd)
secs = time.monotonic() - t0
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"label": label, "seconds": round(secs, 3), "peak_rss_mb": round(peak_kb / 1024, 1), "exit": rc}), file=sys.stderr)
sys.exit(rc)
