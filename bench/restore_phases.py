#!/usr/bin/env python3
"""Where a restore's wall time goes: start, plan, writes (and how long the disk held the
writer), end. Runs `vmsnap restore` of one snapshot to a new file, in a fresh
interpreter each time, with the writer's pwrite calls timed.

    python3 bench/restore_phases.py SNAP [--runs 5] [--md bench/results/restore-phases.md]

SNAP is any snapshot; the report in bench/results is of bench/out/guest-1024M-seed1.vms,
saved with the defaults from the dump that bench_save.py makes.

A restore fsyncs its output before the rename, and its writer writes with O_DIRECT,
so the time inside pwrite is the disk's share. When it is most of the write phase, a
restore is waiting for the disk, not for its CPU (see floor.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from installed import compile_vmsnap
from publish import publish

# Run in the child: times the phases of one restore and prints them as JSON.
CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import vmsnap.output as output
from vmsnap import api
t1 = time.perf_counter()
times = {"first": None, "last": None, "busy": 0.0, "bytes": 0, "writes": 0}
write = output.pwrite_all
def timed_write(fd, data, offset):
    start = time.perf_counter()
    times["first"] = times["first"] or start
    write(fd, data, offset)
    end = time.perf_counter()
    times["last"], times["busy"] = end, times["busy"] + end - start
    times["bytes"] += len(memoryview(data).cast("B"))
    times["writes"] += 1
output.pwrite_all = timed_write
api.restore(sys.argv[1], sys.argv[2])
t2 = time.perf_counter()
print(json.dumps({"start": t1 - t0, "to_first_write": times["first"] - t1, "writes": times["last"] - times["first"],
                  "disk": times["busy"], "end": t2 - times["last"], "total": t2 - t0,
                  "mib": times["bytes"] / 2**20, "calls": times["writes"]}))
"""

PHASES = [("start", "imports (after the interpreter's own start, about 0.04 s)"), ("to_first_write", "open, index and plan, up to the first write"),
          ("writes", "first write to last write"), ("disk", "of which the writer waited in pwrite"),
          ("end", "last write to exit (fsync, rename)"), ("total", "total, in the process")]


def run_once(snap: str, out_dir: str) -> dict:
    with tempfile.TemporaryDirectory(dir=out_dir) as d:  # a new output file: no old one to replace
        done = subprocess.run([sys.executable, "-c", CHILD, snap, os.path.join(d, "out.raw")],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snap")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"))
    ap.add_argument("--md", help="also write the report here")
    args = ap.parse_args(argv)
    compile_vmsnap()  # timed runs load bytecode, as an installed vmsnap does
    os.makedirs(args.out_dir, exist_ok=True)
    with open(args.snap, "rb") as fh:  # from the page cache, as the other benchmarks read it
        while fh.read(1 << 24):
            pass
    runs = [run_once(args.snap, args.out_dir) for _ in range(args.runs)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    lines = [
        "# Where a restore's time goes",
        "",
        f"Produced by `python3 bench/restore_phases.py {os.path.basename(args.snap)} --runs {args.runs}`: "
        f"`vmsnap restore` to a new file in a fresh interpreter each run, its writer's pwrite calls timed. "
        f"It wrote {median['mib']:.0f} MiB in {median['calls']:.0f} writes. Seconds: median (min-max) of "
        f"{args.runs} runs.",
        "",
        "| phase | seconds |",
        "|---|---|",
        *[f"| {label} | {median[key]:.3f} ({min(r[key] for r in runs):.3f}-{max(r[key] for r in runs):.3f}) |"
          for key, label in PHASES],
        "",
        f"The disk held the writer for {median['disk'] / median['writes']:.0%} of the write phase (medians).",
    ]
    report = "\n".join(lines) + "\n"
    publish(report, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
