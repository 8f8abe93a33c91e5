#!/usr/bin/env python3
"""Compare commands by alternating them: median CPU (user + system) and wall time of each.

On a shared machine the same command's times drift by 30% within an hour, so two
versions are only comparable when their runs interleave. To compare two commits:

    git worktree add /tmp/old <rev>
    python3 bench/ab.py --runs 5 \\
        "old=cd /tmp/old && python -m vmsnap.cli save bench/out/guest-1024M-seed1.raw -o /tmp/old.vms -q" \\
        "new=python -m vmsnap.cli save bench/out/guest-1024M-seed1.raw -o /tmp/new.vms -q"

(`cd` into a checkout makes `python -m` import that checkout's vmsnap first.)
Compile both checkouts first (`python -m compileall -q vmsnap` in each): with
PYTHONDONTWRITEBYTECODE set, a changed module is otherwise compiled again on every
run, about 30 ms a start (see installed.py).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time


def timed(cmd: str) -> tuple[float, float]:
    """(CPU seconds of the command's processes, wall seconds) of one shell command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{cmd!r} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("commands", nargs="+", metavar="LABEL=COMMAND")
    args = ap.parse_args(argv)
    specs = [c.split("=", 1) for c in args.commands]
    if any(len(s) != 2 for s in specs):
        ap.error("each command is LABEL=COMMAND")
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in specs}
    for _ in range(args.runs):
        for label, cmd in specs:
            samples[label].append(timed(cmd))
    print(f"{args.runs} alternating runs of each command:\n")
    print("| command | CPU s, median (min) | wall s, median (min) |")
    print("|---|---|---|")
    for label, runs in samples.items():
        cpu, wall = [r[0] for r in runs], [r[1] for r in runs]
        print(f"| {label} | {statistics.median(cpu):.2f} ({min(cpu):.2f}) | "
              f"{statistics.median(wall):.2f} ({min(wall):.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
