#!/usr/bin/env python3
"""The production quality gates over recorded telemetry with polars: the lazy
API (scan_csv, one optimised query, multi-threaded collect) as polars' docs
recommend, as a second baseline for `monitor_dhash --replay`. Same gates and
semantics as pandas_gates.py (see there and gates-core's docs); the window
anchors (newest metrics-bearing row at least one window old) are as-of joins.

usage: polars_gates.py TELEMETRY.csv [--out DECISIONS.csv] [--compare RUST.csv]
"""
import sys
import time

import numpy as np
import polars as pl

GATES = [  # name, kind, threshold, window seconds (production defaults)
    ("error_rate", "ratio", 3.0, 300, "errors_total", "requests_total"),
    ("extraction_failure_rate", "ratio", 5.0, 600, "extraction_failures_total", "hash_requests_total"),
    ("health_failures", "consecutive", 2.0, 300, None, None),
    ("low_confidence_queue", "instant", 1000.0, 0, "low_confidence_queue", None),
    ("memory_usage", "sustained", 85.0, 300, "memory_percent", None),
    ("p95_hash_time", "percentile", 2000.0, 900, None, None),
]
ERRORS_TO_VIOLATE = 5
FIGURES = ["requests_total", "hash_requests_total", "extraction_failures_total", "errors_total",
           "low_confidence_queue", "memory_percent", "cpu_percent", "disk_percent"]


def run_length(mask):
    """For each row, how many True in a row end there."""
    m = mask.cast(pl.Int64)
    c = m.cum_sum()
    return c - pl.when(m == 0).then(c).otherwise(0).cum_max()


def corrected(col):
    """Reset-corrected running total: a decrease counts the new value."""
    d = pl.col(col).diff().fill_null(0.0)
    return pl.when(d >= 0).then(d).otherwise(pl.col(col)).cum_sum()


def finish(name, status, value):
    bad = ~pl.col("_ok")
    st = pl.when(bad).then(pl.when(pl.col("_err_run") >= ERRORS_TO_VIOLATE).then(pl.lit("violated"))
                           .otherwise(pl.lit("error"))).otherwise(status)
    return [st.alias(name + "_status"), pl.when(bad).then(None).otherwise(value).alias(name + "_value")]


def plan(path):
    schema = {"t_ms": pl.Int64, "health": pl.Utf8, "health_detail": pl.Utf8, "metrics_error": pl.Utf8,
              **{f: pl.Float64 for f in FIGURES}, "hash_time_buckets": pl.Utf8, "hash_time_ms": pl.Utf8}
    lf = pl.scan_csv(path, schema_overrides=schema).with_columns(
        _ok=pl.col("metrics_error").is_null(), _row=pl.int_range(pl.len()))
    lf = lf.with_columns(_err_run=run_length(~pl.col("_ok")))
    # Metrics-bearing rows: running totals and cumulative bucket increases.
    buckets = pl.col("hash_time_buckets").str.split(";")
    ok = lf.filter(pl.col("_ok")).with_columns(
        _b=buckets.list.eval(pl.element().str.split(":").list.get(1).cast(pl.Float64)))
    ok = ok.with_columns(
        _err=corrected("errors_total"), _req=corrected("requests_total"),
        _ext=corrected("extraction_failures_total"), _hreq=corrected("hash_requests_total"),
        _reset=(pl.col("_b").list.last().diff().fill_null(0.0) < 0))
    nb = 11  # buckets per row (checked against the file below)
    b = [pl.col("_b").list.get(i) for i in range(nb)]
    inc = [pl.when(pl.col("_reset")).then(x).otherwise(
        pl.when(x.diff().fill_null(0.0) >= 0).then(x.diff().fill_null(0.0)).otherwise(x)) for x in b]
    ok = ok.with_columns([x.cum_sum().alias(f"_c{i}") for i, x in enumerate(inc)])
    keep = ["t_ms", "_err", "_req", "_ext", "_hreq"] + [f"_c{i}" for i in range(nb)]
    ok = ok.select(keep).with_columns(pl.col("t_ms").alias("_t_ok"))
    return lf, ok, nb


def evaluate(path):
    lf, ok, nb = plan(path)
    les = None
    first = pl.scan_csv(path, n_rows=50).filter(pl.col("metrics_error").is_null()).select("hash_time_buckets").collect()
    cells = first["hash_time_buckets"][0].split(";")
    les = [float("inf") if p.split(":")[0] in ("inf", "+Inf") else float(p.split(":")[0]) for p in cells]
    assert len(les) == nb, f"expected {nb} histogram buckets, found {len(les)}"
    out = lf.sort("t_ms").join_asof(ok, on="t_ms", strategy="backward")  # "here": the row itself
    cols = [pl.col("t_ms")]
    for name, kind, thr, win, metric, den in GATES:
        if kind == "consecutive":
            runs = run_length(pl.col("health") != "ok").cast(pl.Float64)
            cols += [pl.when(runs > thr).then(pl.lit("violated")).otherwise(pl.lit("ok")).alias(name + "_status"),
                     runs.alias(name + "_value")]
        elif kind == "instant":
            v = pl.col(metric)
            cols += finish(name, pl.when(v > thr).then(pl.lit("violated")).otherwise(pl.lit("ok")), v)
        elif kind == "sustained":
            v = pl.col(metric)
            breach = pl.col("_ok") & (v > thr)
            begins = breach & ~breach.shift(1, fill_value=False)
            start = pl.when(begins).then(pl.col("t_ms")).otherwise(None).forward_fill()
            lasted = (pl.col("t_ms") - start) / 1000.0
            st = pl.when(breach).then(pl.when(lasted >= win).then(pl.lit("violated")).otherwise(pl.lit("pending"))
                                      ).otherwise(pl.lit("ok"))
            cols += finish(name, st, v)
    # Anchors: as-of join of each row's t - W onto the metrics-bearing rows.
    for win in sorted({g[3] for g in GATES if g[1] in ("ratio", "percentile")}):
        anchor = ok.rename({c: f"{c}_a{win}" for c in ok.collect_schema().names() if c != "t_ms"}) \
            .rename({"t_ms": "_ta"})
        out = out.with_columns((pl.col("t_ms") - win * 1000).alias("_ta")) \
            .join_asof(anchor, on="_ta", strategy="backward").drop("_ta")
    for name, kind, thr, win, metric, den in GATES:
        have = pl.col(f"_t_ok_a{win}").is_not_null() & pl.col("_ok")
        if kind == "ratio":
            short = {"errors_total": "_err", "requests_total": "_req",
                     "extraction_failures_total": "_ext", "hash_requests_total": "_hreq"}
            dn = pl.col(short[metric]) - pl.col(f"{short[metric]}_a{win}")
            dd = pl.col(short[den]) - pl.col(f"{short[den]}_a{win}")
            pct = dn / dd * 100.0
            st = pl.when(~have).then(pl.lit("pending")).when(dd <= 0).then(pl.lit("no-data")) \
                .when(pct > thr).then(pl.lit("violated")).otherwise(pl.lit("ok"))
            cols += finish(name, st, pl.when(have & (dd > 0)).then(pct).otherwise(None))
        elif kind == "percentile":
            delta = [pl.col(f"_c{i}") - pl.col(f"_c{i}_a{win}") for i in range(nb)]
            tot = delta[-1]
            rank = 0.95 * tot
            # first bucket whose cumulative increase reaches the rank
            q = pl.lit(None, pl.Float64)
            for i in reversed(range(nb)):
                prev_le = les[i - 1] if i > 0 else 0.0
                prev_c = delta[i - 1] if i > 0 else pl.lit(0.0)
                in_bucket = delta[i] - prev_c
                if les[i] == float("inf"):
                    qi = pl.lit(prev_le)
                else:
                    qi = pl.when(in_bucket <= 0).then(pl.lit(les[i])).otherwise(
                        prev_le + (les[i] - prev_le) * (rank - prev_c) / in_bucket)
                q = pl.when(delta[i] >= rank).then(qi).otherwise(q)
            st = pl.when(~have).then(pl.lit("pending")).when(tot <= 0).then(pl.lit("no-data")) \
                .when(q > thr).then(pl.lit("violated")).otherwise(pl.lit("ok"))
            cols += finish(name, st, pl.when(have & (tot > 0)).then(q).otherwise(None))
    order = ["t_ms"] + [f"{g[0]}_{k}" for g in GATES for k in ("status", "value")]
    return out.select(cols).select(order).collect()


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    opts = dict(zip(args[1::2], args[2::2]))
    t0 = time.time()
    res = evaluate(args[0])
    print(f"polars {pl.__version__}: scan+evaluate {time.time() - t0:.2f}s, {len(res)} samples, "
          f"{pl.thread_pool_size()} threads", file=sys.stderr)
    if "--out" in opts:
        res.write_csv(opts["--out"])
    if "--compare" in opts:
        rust = pl.read_csv(opts["--compare"], infer_schema_length=0)
        bad = 0
        for name, *_ in GATES:
            s_ok = rust[name + "_status"].to_numpy() == res[name + "_status"].to_numpy()
            rv = rust[name + "_value"].replace("", None).cast(pl.Float64).fill_null(np.nan).to_numpy()
            pv = res[name + "_value"].cast(pl.Float64).fill_null(np.nan).to_numpy()
            v_ok = (rv == pv) | (np.isnan(rv) & np.isnan(pv))
            mism = np.flatnonzero(~(s_ok & v_ok))
            if len(mism):
                bad += len(mism)
                i = int(mism[0])
                print(f"MISMATCH {name}: {len(mism)} rows, first at t_ms={res['t_ms'][i]}: "
                      f"rust {rust[name + '_status'][i]} {rust[name + '_value'][i]} / "
                      f"polars {res[name + '_status'][i]} {res[name + '_value'][i]}", file=sys.stderr)
        total = len(res) * len(GATES)
        print(f"agreement: {total - bad}/{total} decisions identical", file=sys.stderr)
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
