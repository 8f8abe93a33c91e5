#!/usr/bin/env python3
"""The cost of hotcold's per-page state machine on long scan series, where the reading is cheap.

Writes a scan series of 128M pages (512 GiB of guest memory at 4 KiB) and four Linux
idle-page bitmaps of 64M pages, each with four periods of a third of the pages
accessed (seeded), then times `vmsnap analyze hotcold --json` on each with GNU time:
wall seconds and peak RSS. With --checkout DIR the same commands also run from that
checkout (an older commit, say), alternating with this one.

    python3 bench/hotcold_state.py [--runs 3] [--checkout DIR] [--md bench/results/hotcold-state.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

from installed import ROOT, compile_vmsnap
from publish import publish

SERIES_PAGES, IDLE_PAGES, PERIODS = 1 << 27, 1 << 26, 4


def make_inputs(workdir: str) -> dict[str, list[str]]:
    sys.path.insert(0, ROOT)
    from vmsnap.scans.idle import write_idle_bitmap
    from vmsnap.scans.series import SeriesWriter

    rng = np.random.default_rng(1)
    series = os.path.join(workdir, "big.vmscan")
    with SeriesWriter(series, 4096, SERIES_PAGES) as writer:
        for _ in range(PERIODS):
            writer.add(rng.random(SERIES_PAGES, dtype=np.float32) < 1 / 3)
    idle = [os.path.join(workdir, f"idle{i}") for i in range(PERIODS)]
    for path in idle:
        write_idle_bitmap(path, rng.random(IDLE_PAGES, dtype=np.float32) < 1 / 3)
    return {f"scan series, {SERIES_PAGES >> 20}M pages": [series],
            f"idle-page bitmaps, {IDLE_PAGES >> 20}M pages": ["--format", "idle", *idle]}


def timed(args: list[str], cwd: str) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB, the JSON) of `vmsnap analyze hotcold ARGS --json` run from `cwd`."""
    cmd = ["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "vmsnap.cli", "analyze", "hotcold", *args, "--json"]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
    wall, rss = done.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss), done.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--checkout", help="another vmsnap checkout to time alternately with this one")
    ap.add_argument("--md", help="also write the report here")
    args = ap.parse_args(argv)
    compile_vmsnap()
    checkouts = {"this": ROOT}
    if args.checkout:
        subprocess.run([sys.executable, "-m", "compileall", "-q", "vmsnap"], cwd=args.checkout, check=True)
        checkouts["other"] = os.path.abspath(args.checkout)
    commits = {k: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=d, capture_output=True,
                                 text=True).stdout.strip() for k, d in checkouts.items()}
    lines = [f"Produced by `python3 bench/hotcold_state.py --runs {args.runs}"
             + (" --checkout DIR" if args.checkout else "") + "`: "
             + ", ".join(f"{k} = commit {c}" for k, c in commits.items())
             + f". Medians of {args.runs} alternating runs, whole CLI in a new process; peak RSS from GNU time.", "",
             "| input | code | wall s, median (min-max) | peak RSS MiB | bytes a page |", "|---|---|---|---|---|"]
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)  # gitignored: absent in a fresh clone
    same_json = True
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "bench", "out")) as workdir:
        inputs = make_inputs(workdir)
        for name, hc_args in inputs.items():
            pages = SERIES_PAGES if "series" in name else IDLE_PAGES
            runs: dict[str, list[tuple[float, int, str]]] = {k: [] for k in checkouts}
            for _ in range(args.runs):
                for k, d in checkouts.items():
                    runs[k].append(timed(hc_args, d))
            same_json &= len({out for k in checkouts for _, _, out in runs[k]}) == 1
            for k in checkouts:
                walls, rss = [w for w, _, _ in runs[k]], max(r for _, r, _ in runs[k])
                lines.append(f"| {name} | {k} ({commits[k]}) | {statistics.median(walls):.2f} "
                             f"({min(walls):.2f}-{max(walls):.2f}) | {rss >> 10} | {rss * 1024 / pages:.1f} |")
    lines += ["", f"Every run printed the same JSON: {'yes' if same_json else 'NO'}."]
    publish("\n".join(lines) + "\n", args.md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
