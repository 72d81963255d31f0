#!/usr/bin/env python3
"""The production quality gates over recorded telemetry, written the way an
SRE would with pandas/numpy (vectorised rolling windows), as the baseline for
`monitor_dhash --replay`. Same semantics as gates-core (see its docs):

- rates: reset-corrected counter increases between each sample and the newest
  metrics-bearing sample at least one window old (the anchor); no anchor =
  pending; no requests = no-data;
- p95: Prometheus histogram_quantile over bucket increases to the anchor;
- queue: instant; memory: above threshold on every poll for the whole window;
- health: consecutive non-OK checks;
- a failed metrics probe is `error`, and 5 in a row is a violation.

usage: pandas_gates.py TELEMETRY.csv [--out DECISIONS.csv] [--compare RUST.csv]
"""
import sys
import time

import numpy as np
import pandas as pd

GATES = [  # name, kind, threshold, window seconds (production defaults)
    ("error_rate", "ratio", 3.0, 300, "errors_total", "requests_total"),
    ("extraction_failure_rate", "ratio", 5.0, 600, "extraction_failures_total", "hash_requests_total"),
    ("health_failures", "consecutive", 2.0, 300, None, None),
    ("low_confidence_queue", "instant", 1000.0, 0, "low_confidence_queue", None),
    ("memory_usage", "sustained", 85.0, 300, "memory_percent", None),
    ("p95_hash_time", "percentile", 2000.0, 900, None, None),
]
ERRORS_TO_VIOLATE = 5


def corrected(x):
    """Reset-corrected running total: a decrease counts the new value."""
    d = np.diff(x, prepend=x[:1])
    inc = np.where(d >= 0, d, x)
    inc[0] = 0.0
    return np.cumsum(inc)


def run_length(mask):
    """For each position, how many True in a row end there."""
    m = mask.astype(np.int64)
    c = np.cumsum(m)
    reset = np.where(m == 0, c, 0)
    return c - np.maximum.accumulate(reset)


def evaluate(df):
    t = df["t_ms"].to_numpy(np.int64)
    n = len(t)
    ok = df["metrics_error"].isna().to_numpy() if "metrics_error" in df else np.ones(n, bool)
    err_run = run_length(~ok)
    idx_ok = np.flatnonzero(ok)
    t_ok = t[idx_ok]
    out = {"t_ms": t}

    def anchors(window_ms):
        # position (within the metrics-bearing rows) of the newest row <= t - W
        return np.searchsorted(t_ok, t - window_ms, side="right") - 1

    def finish(name, status, value):
        status = np.where(~ok, np.where(err_run >= ERRORS_TO_VIOLATE, "violated", "error"), status)
        value = np.where(~ok, np.nan, value)
        out[name + "_status"] = status
        out[name + "_value"] = value

    for name, kind, thr, win, metric, den in GATES:
        if kind == "consecutive":
            bad = (df["health"] != "ok").to_numpy()
            runs = run_length(bad).astype(np.float64)
            out[name + "_status"] = np.where(runs > thr, "violated", "ok")
            out[name + "_value"] = runs
            continue
        if kind == "instant":
            v = df[metric].to_numpy(np.float64)
            finish(name, np.where(v > thr, "violated", "ok"), v)
            continue
        if kind == "sustained":
            v = df[metric].to_numpy(np.float64)
            breach = ok & (v > thr)
            start = np.where(breach & ~np.concatenate([[False], breach[:-1]]), t, 0)
            # the start time of the current run, carried forward within runs
            run_id = np.cumsum(breach & ~np.concatenate([[False], breach[:-1]]))
            starts = np.zeros(run_id.max() + 1, np.int64)
            starts[run_id[start > 0]] = start[start > 0]
            lasted = (t - starts[run_id]) / 1000.0
            status = np.where(breach, np.where(lasted >= win, "violated", "pending"), "ok")
            finish(name, status, v)
            continue
        a = anchors(win * 1000)
        here = np.searchsorted(t_ok, t, side="left")  # the row itself when ok
        have = (a >= 0) & ok
        if kind == "ratio":
            num = corrected(df[metric].to_numpy(np.float64)[idx_ok])
            dd = corrected(df[den].to_numpy(np.float64)[idx_ok])
            hi = np.clip(here, 0, len(idx_ok) - 1)
            lo = np.clip(a, 0, len(idx_ok) - 1)
            dn = num[hi] - num[lo]
            dd = dd[hi] - dd[lo]
            with np.errstate(divide="ignore", invalid="ignore"):
                pct = dn / dd * 100.0
            status = np.where(~have, "pending", np.where(dd <= 0, "no-data", np.where(pct > thr, "violated", "ok")))
            value = np.where(have & (dd > 0), pct, np.nan)
            finish(name, status, value)
            continue
        # percentile from histogram bucket increases
        raw = df["hash_time_buckets"].to_numpy()[idx_ok]
        parsed = np.array([[float(p.split(":")[1]) for p in s.split(";")] for s in raw])
        les = np.array([float(p.split(":")[0]) for p in raw[0].split(";")])
        total = parsed[:, -1]
        reset = np.concatenate([[False], np.diff(total) < 0])
        d = np.diff(parsed, axis=0, prepend=parsed[:1])
        inc = np.where(reset[:, None], parsed, np.where(d >= 0, d, parsed))
        inc[0] = 0.0
        cum = np.cumsum(inc, axis=0)
        hi = np.clip(here, 0, len(idx_ok) - 1)
        lo = np.clip(a, 0, len(idx_ok) - 1)
        delta = cum[hi] - cum[lo]
        tot = delta[:, -1]
        rank = 0.95 * tot
        first = np.argmax(delta >= rank[:, None], axis=1)
        prev_le = np.where(first > 0, les[np.maximum(first - 1, 0)], 0.0)
        prev_c = np.where(first > 0, delta[np.arange(len(delta)), np.maximum(first - 1, 0)], 0.0)
        le = les[first]
        cnt = delta[np.arange(len(delta)), first]
        in_bucket = cnt - prev_c
        with np.errstate(divide="ignore", invalid="ignore"):
            interp = prev_le + (le - prev_le) * (rank - prev_c) / in_bucket
        q = np.where(np.isinf(le), prev_le, np.where(in_bucket <= 0, le, interp))
        status = np.where(~have, "pending", np.where(tot <= 0, "no-data", np.where(q > thr, "violated", "ok")))
        value = np.where(have & (tot > 0), q, np.nan)
        finish(name, status, value)
    return pd.DataFrame(out)


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    path = args[0]
    opts = dict(zip(args[1::2], args[2::2]))
    t0 = time.time()
    df = pd.read_csv(path, dtype={"health": str, "metrics_error": str, "hash_time_buckets": str}, keep_default_na=True)
    t1 = time.time()
    res = evaluate(df)
    t2 = time.time()
    print(f"pandas: read {t1 - t0:.2f}s, evaluate {t2 - t1:.2f}s, {len(df)} samples", file=sys.stderr)
    if "--out" in opts:
        res.to_csv(opts["--out"], index=False)
    if "--compare" in opts:
        rust = pd.read_csv(opts["--compare"], keep_default_na=False, dtype=str)
        bad = 0
        for name, *_ in GATES:
            s_ok = (rust[name + "_status"].to_numpy() == res[name + "_status"].to_numpy())
            rv = pd.to_numeric(rust[name + "_value"].replace("", np.nan)).to_numpy(np.float64)
            pv = res[name + "_value"].to_numpy(np.float64)
            v_ok = (rv == pv) | (np.isnan(rv) & np.isnan(pv))
            mism = np.flatnonzero(~(s_ok & v_ok))
            if len(mism):
                bad += len(mism)
                i = mism[0]
                print(f"MISMATCH {name}: {len(mism)} rows, first at t_ms={res['t_ms'][i]}: "
                      f"rust {rust[name + '_status'][i]} {rust[name + '_value'][i]} / "
                      f"pandas {res[name + '_status'][i]} {res[name + '_value'][i]}", file=sys.stderr)
        total = len(res) * len(GATES)
        print(f"agreement: {total - bad}/{total} decisions identical", file=sys.stderr)
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
