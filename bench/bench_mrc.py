#!/usr/bin/env python3
"""Benchmarks for `vmsnap analyze mrc` (issue 5), peer tool measured in the same run.

1. Exact LRU curve (all sizes) of a 20M-reference trace vs libCacheSim
   replaying the same oracleGeneral file for 32 cache sizes (target <= 0.25x).
2. SHARDS rate 0.01 throughput from a u64 binary trace (target >= 20M refs/s).
3. Lackey parse rate (target >= 5M lines/s): real gzip trace and a synthetic one.
4. SHARDS accuracy at rate 0.01 on 10M-reference traces, several seeds
   (target MAE <= 0.005), and fixed-size SHARDS.
5. The untraced-period design: traps and error for several periods.

usage: python3 bench/bench_mrc.py [--quick] [--out bench/results/mrc.md]
Inputs are generated into bench/out/ (gitignored) and removed afterwards.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmsnap.analyze import mrc  # noqa: E402
from vmsnap.traces import open_trace  # noqa: E402
from vmsnap.traces.oracle_general import write as og_write  # noqa: E402
from vmsnap.traces.synthetic import zipf_pages  # noqa: E402

OUT = ROOT / "bench" / "out"

NOTES = """## Notes

- **How the exact curve is fast.** One pass computes every reference's LRU
  stack distance (hash table + Fenwick tree over last-access times, compacted
  so it stays O(distinct pages)); all cache sizes follow from the histogram.
  libCacheSim's Python binding replays one cache size per pass, so its cost
  grows with the number of sizes, ours does not. Both read the same
  oracleGeneral file; the 32 miss ratios agree to floating-point rounding.
- **SHARDS throughput** is dominated by reading the u64 file; at rate 0.01
  only 1% of references reach the stack-distance structure.
- **Lackey parsing** uses a compiled numba pass over each block (the numpy
  vectorised parser, kept as the reference and error reporter, measured
  3-6 M lines/s on this machine, which missed the 5 M target).
- **SHARDS accuracy is a property of the trace, not only of the rate.** At
  rate 0.01 a trace touching M pages keeps about M/100 of them; with
  M = 1 M pages that is about 10,000 sampled pages, and the error is
  sampling variance (it falls as the rate or M grows; max errors sit at
  cache sizes below 1/R pages, which a 1% sample cannot resolve). With the
  published SHARDS-adj (the default) the target held on the 2 M-page
  footprint traces and mostly not on the 1 M-page ones (table above). The
  adjustment matters most on skewed traces (without it, most Zipf(0.9)
  errors are several times larger); on the flatter Zipf(0.6) traces dividing
  by the references actually sampled (`--no-adjust`) was often closer, and
  the fixed-size variant (no adjustment) behaves like that.
- **Untraced-period design.** Longer periods cut traps (the cost a
  hypervisor pays in faults) but hide re-accesses; they are counted as hits
  at the smallest distance, which biases small cache sizes low and makes the
  error grow with the period.
- Times are single runs (best of 3 where stated) on a 2-core machine shared
  with other jobs; ratios measured in the same run are the meaningful figures.
"""


def machine() -> str:
    import numba

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import libcachesim

    lcs_ver = getattr(libcachesim, "__version__", None)
    if lcs_ver is None:
        from importlib.metadata import version

        lcs_ver = version("libcachesim")
    return (f"{cpu}, {os.cpu_count()} cores (shared with other jobs), Python {platform.python_version()}, "
            f"numpy {np.__version__}, numba {numba.__version__}, libcachesim {lcs_ver}")


def timed(fn, *a, **kw):
    t = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t


def warm_up():
    """Compile (or load cached) numba kernels outside the timings."""
    p = np.concatenate(list(zipf_pages(20_000, 2_000, 0.9, seed=0)))
    mrc.compute([p], 4096, mrc.MrcRequest("untraced", rate=0.1, periods=[0, 10]))
    mrc.compute([p], 4096, mrc.MrcRequest("shards-fixed-size", max_pages=100))


def bench_exact_vs_libcachesim(n, pages, report):
    import libcachesim as lcs

    trace = OUT / "zipf.oracleGeneral"
    pg = np.concatenate(list(zipf_pages(n, pages, 0.9, seed=1)))
    og_write(trace, pg, obj_size=1)
    del pg
    curve, t_exact = timed(lambda: mrc.exact_curve(open_trace(trace)))
    m = int(curve.distinct_pages)
    sizes = np.unique(np.linspace(m / 32, m, 32).astype(int))
    ours = curve.miss_ratio(sizes)
    theirs = []
    t0 = time.perf_counter()
    for c in sizes:
        reader = lcs.TraceReader(str(trace), lcs.TraceType.ORACLE_GENERAL_TRACE, lcs.ReaderInitParam())
        # hashpower sized to the cache: libCacheSim's fastest setting here
        # (its default 2**24 buckets is slower for small caches).
        hp = max(16, math.ceil(math.log2(int(c))) + 1)
        theirs.append(lcs.LRU(int(c), hashpower=hp).process_trace(reader)[0])
    t_lcs = time.perf_counter() - t0
    diff = float(np.max(np.abs(np.array(theirs) - ours)))
    ratio = t_exact / t_lcs
    report.append("## 1. Exact curve vs libCacheSim (32 cache sizes)\n")
    report.append(f"Input: {n:,} references, Zipf(0.9) over {pages:,} pages (seed 1), {m:,} distinct pages "
                  f"touched, as an oracleGeneral file ({trace.stat().st_size / 2**20:.0f} MiB) read by both tools.\n")
    report.append("| tool | work | time (s) |\n|---|---|---|")
    report.append(f"| vmsnap exact (read + all sizes) | 1 pass | {t_exact:.2f} |")
    report.append(f"| libCacheSim LRU `process_trace` (hash table sized to each cache) | {len(sizes)} passes, "
                  f"sizes {sizes[0]:,}..{sizes[-1]:,} pages "
                  f"| {t_lcs:.2f} |\n")
    report.append(f"Ratio vmsnap / libCacheSim: **{ratio:.3f}x** (target <= 0.25x: "
                  f"**{'met' if ratio <= 0.25 else 'MISSED'}**). Largest miss-ratio difference over the 32 sizes: "
                  f"{diff:.1e}.\n")
    trace.unlink()
    return ratio


def bench_shards_throughput(n, pages, report):
    path = OUT / "zipf.u64"
    np.concatenate(list(zipf_pages(n, pages, 0.9, seed=2))).astype("<u8").tofile(path)
    best = None
    for _ in range(3):
        res, t = timed(lambda: mrc.compute(open_trace(path, values="page"), 4096,
                                           mrc.MrcRequest("shards", rate=0.01)))
        best = t if best is None else min(best, t)
    rate = n / best
    report.append("## 2. SHARDS rate 0.01 from a u64 binary trace\n")
    report.append(f"Input: {n:,} page numbers, Zipf(0.9) over {pages:,} pages, u64 file "
                  f"({path.stat().st_size / 2**20:.0f} MiB, page cache warm). Read + hash filter + "
                  f"stack distances of the sampled pages; best of 3.\n")
    report.append(f"Time {best:.2f} s: **{rate / 1e6:.1f} M refs/s** (target >= 20 M/s: "
                  f"**{'met' if rate >= 20e6 else 'MISSED'}**).\n")
    path.unlink()
    return rate


def bench_lackey(report, synth_lines):
    import zstandard

    rows = []
    real = ROOT / "fixtures" / "valgrind" / "gzip.lackey.zst"
    plain = OUT / "gzip.lackey"
    with open(real, "rb") as f, open(plain, "wb") as g:
        zstandard.ZstdDecompressor().copy_stream(f, g)
    for label, path in (("real (gzip -9, plain file)", plain), ("real (gzip -9, zstd file)", real)):
        lines = sum(1 for _ in open(plain, "rb"))
        best = min(timed(lambda: sum(len(c) for c in open_trace(path)))[1] for _ in range(3))
        rows.append((label, lines, best))
    synth = OUT / "synth.lackey"
    rng = np.random.default_rng(3)
    kinds = np.array([b"I  ", b" L ", b" S ", b" M "])
    with open(synth, "wb") as f:
        for _ in range(synth_lines // 1_000_000):
            k = kinds[rng.integers(0, 4, 1_000_000)]
            a = rng.integers(0x400000, 0x7FFFFFFFF000, 1_000_000)
            s = rng.choice([1, 2, 4, 8, 16, 32], 1_000_000)
            f.write(b"".join(kk + (b"%x" % aa) + b"," + (b"%d" % ss) + b"\n" for kk, aa, ss in zip(k, a, s)))
    best = min(timed(lambda: sum(len(c) for c in open_trace(synth)))[1] for _ in range(3))
    rows.append(("synthetic (random 8-12 digit addresses)", synth_lines, best))
    report.append("## 3. Lackey parse rate\n")
    report.append("Lines include Valgrind's `==pid==` lines; time covers reading, parsing and page numbers; best of 3.\n")
    report.append("| input | lines | time (s) | M lines/s | target 5 M/s |\n|---|---|---|---|---|")
    worst = None
    for label, lines, t in rows:
        r = lines / t
        worst = r if worst is None else min(worst, r)
        report.append(f"| {label} | {lines:,} | {t:.2f} | {r / 1e6:.1f} | {'met' if r >= 5e6 else 'MISSED'} |")
    report.append("")
    plain.unlink()
    synth.unlink()
    return worst


def bench_accuracy(report, n, quick):
    report.append("## 4. SHARDS accuracy (rate 0.01) against the exact curve\n")
    report.append(f"{n:,}-reference Zipf traces; MAE over every cache size 1..M (10,000 evenly spaced sizes when "
                  "M is larger). The slow test `test_shards_mae_on_reference_trace` asserts the target on "
                  "12M references, Zipf(0.9) over 4M pages, seed 11.\n")
    report.append("| trace | seed | distinct pages | SHARDS-adj MAE | max error | target 0.005 | "
                  "no-adjust MAE | fixed-size (8192 pages) MAE |\n|---|---|---|---|---|---|---|---|")
    panel = [(0.9, 4_000_000), (0.9, 1_000_000), (0.6, 1_000_000)]
    seeds = [11, 12] if quick else [11, 12, 13]
    met = total = adj_better = 0
    for alpha, pages in panel:
        for seed in seeds:
            chunks = list(zipf_pages(n, pages, alpha, seed=seed))
            res = mrc.compute(chunks, 4096, mrc.MrcRequest("shards", rate=0.01, compare_exact=True))
            fs = mrc.compute(chunks, 4096, mrc.MrcRequest("shards-fixed-size", max_pages=8192))
            fs_err = mrc.compare(fs.curves[0], res.exact)
            raw = mrc.compute(chunks, 4096, mrc.MrcRequest("shards", rate=0.01, adjust=False))
            raw_err = mrc.compare(raw.curves[0], res.exact)
            e = res.curves[0].error
            ok = e["mae"] <= 0.005
            met += ok
            adj_better += e["mae"] < raw_err["mae"]
            total += 1
            report.append(f"| Zipf({alpha}) over {pages:,} pages | {seed} | {int(res.exact.distinct_pages):,} | "
                          f"{e['mae']:.4f} | {e['max_abs_error']:.3f} | {'met' if ok else 'MISSED'} | "
                          f"{raw_err['mae']:.4f} | {fs_err['mae']:.4f} |")
    report.append(f"\nTarget (SHARDS-adj, the default) met on {met} of {total} traces. SHARDS-adj was closer "
                  f"than `--no-adjust` on {adj_better} of {total}.\n")


def bench_untraced(report, n):
    report.append("## 5. Untraced-period design (rate 0.01)\n")
    chunks = list(zipf_pages(n, 1_000_000, 0.9, seed=21))
    periods = [0, 1_000, 10_000, 100_000, 1_000_000]
    res = mrc.compute(chunks, 4096, mrc.MrcRequest("untraced", rate=0.01, periods=periods))
    report.append(f"{n:,} references, Zipf(0.9) over 1,000,000 pages (seed 21). A trap is an access the design "
                  "would fault on; period = references a page stays untraced after a trap.\n")
    report.append("| period | traps | traps / references | MAE vs exact | max error |\n|---|---|---|---|---|")
    for c in res.curves:
        report.append(f"| {c.period:,} | {c.traps:,} | {c.traps / c.references:.5f} | {c.error['mae']:.4f} | "
                      f"{c.error['max_abs_error']:.3f} |")
    report.append("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller inputs (not the issue's sizes)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "mrc.md"))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    big = 2_000_000 if args.quick else 20_000_000
    acc = 2_000_000 if args.quick else 10_000_000
    warm_up()
    report = ["# Benchmark: miss-ratio curves (`vmsnap analyze mrc`)\n",
              f"Machine: {machine()}.\n",
              f"Command: `python3 bench/bench_mrc.py{' --quick' if args.quick else ''}` "
              f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). numba kernels compiled before timing.\n"]
    bench_exact_vs_libcachesim(big, 1_000_000, report)
    bench_shards_throughput(big, 1_000_000, report)
    bench_lackey(report, 2_000_000 if args.quick else 6_000_000)
    bench_accuracy(report, acc, args.quick)
    bench_untraced(report, acc)
    report.append(NOTES)
    text = "\n".join(report) + "\n"
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, args.out)
    print(text)


if __name__ == "__main__":
    main()
