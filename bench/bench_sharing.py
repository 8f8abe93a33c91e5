#!/usr/bin/env python3
"""Sharing-analysis benchmark: `vmsnap analyze sharing` against `zstd -3 -T2 --long=30`, same run.

Generates N deterministic realistic guest dumps (fixtures/genimage.py, seeds
1..N; cached in bench/out/, never committed), then alternates, run after run:
zstd on dump 1, the analysis of dump 1, the analysis of all N dumps, each
timed with /usr/bin/time (wall seconds, peak RSS). Prints a Markdown report
with the ratios the targets are stated in:

- one dump: analysis wall time / zstd wall time (target <= 0.25);
- N dumps: analysis wall time / (N x one dump) (target <= 1.2);
- peak RSS of both analyses (target < 300 MiB).

    python3 bench/bench_sharing.py [--size 1G] [--dumps 8] [--jobs 2] [--runs 3] [--md bench/results/sharing.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "fixtures"))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from bench_save import dump, machine  # noqa: E402
from genimage import _size  # noqa: E402
from installed import compile_vmsnap  # noqa: E402
from publish import publish  # noqa: E402

PY = sys.executable


def _tree_rss_kib(pid: int) -> int:
    """Resident memory of pid and all its descendants (worker processes count too)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next((int(l.split()[1]) for l in fh if l.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            pass
    return total


def timed(cmd: list[str], stdout: str | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS KiB of the whole process tree, sampled every 10 ms) of cmd."""
    out = open(stdout, "wb") if stdout else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_kib(proc.pid))
            time.sleep(0.01)
        wall = time.perf_counter() - start
    finally:
        if stdout:
            out.close()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()}")
    return wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=_size, default=1 << 30)
    ap.add_argument("--dumps", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--keep", action="store_true", help="keep the generated dumps in --out")
    ap.add_argument("--md", default=None, help="also write the report to this file")
    args = ap.parse_args()
    compile_vmsnap()  # timed runs load bytecode, as an installed vmsnap does
    os.makedirs(args.out, exist_ok=True)
    paths = [dump(args.out, args.size, seed) for seed in range(1, args.dumps + 1)]
    for p in paths:  # page cache warm for every contender
        subprocess.run(["cat", p], stdout=subprocess.DEVNULL, check=True)
    zst = os.path.join(args.out, "peer.zst")
    one_json, all_json = os.path.join(args.out, "one.json"), os.path.join(args.out, "all.json")
    os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")  # this checkout's vmsnap
    analysis = [PY, "-m", "vmsnap.cli", "analyze", "sharing", "-q", "--json", "-j", str(args.jobs)]
    cmds = {
        "zstd": (["zstd", "-3", f"-T{args.jobs}", "--long=30", "-f", "-q", paths[0], "-o", zst], None),
        "one": ([*analysis, paths[0]], one_json),
        "all": ([*analysis, *paths], all_json),
    }
    samples: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    for _ in range(args.runs):  # alternate so that machine noise hits every contender alike
        for name, (cmd, out) in cmds.items():
            samples[name].append(timed(cmd, out))
    os.unlink(zst)
    med = {k: statistics.median(w for w, _ in v) for k, v in samples.items()}
    rss = {k: max(r for _, r in v) for k, v in samples.items()}
    one, every = json.load(open(one_json)), json.load(open(all_json))
    consistent = {k: v for k, v in one["dumps"][0].items() if k != "index"} == \
        {k: v for k, v in every["dumps"][0].items() if k != "index"}
    # Ratios of medians, and the median of each run's own ratio (its samples ran back to back)
    r1 = med["one"] / med["zstd"]
    r8 = med["all"] / (args.dumps * med["one"])
    per_run1 = [o[0] / z[0] for o, z in zip(samples["one"], samples["zstd"])]
    per_run8 = [a[0] / (args.dumps * o[0]) for a, o in zip(samples["all"], samples["one"])]
    mib = 1 << 20
    f = every["fleet"]
    with open("/proc/loadavg") as fh:
        load = " ".join(fh.read().split()[:3])
    rows = [
        f"Machine: {machine()}; load average at the end {load} (the machine is shared).",
        "",
        f"Dumps: {args.dumps} x {args.size / mib:.0f} MiB from fixtures/genimage.py (seeds 1..{args.dumps}), "
        f"page cache warm; median of {args.runs} alternating runs; `-j {args.jobs}` for both tools. "
        "Wall time and peak RSS of the whole process tree (vmsnap's worker processes included), "
        "sampled every 10 ms.",
        "",
        "| measure | value | target | met |",
        "|---|---|---|---|",
        f"| zstd -3 -T{args.jobs} --long=30, dump 1 | {med['zstd']:.2f} s, {rss['zstd'] / 1024:.0f} MiB | | |",
        f"| analyze sharing, dump 1 | {med['one']:.2f} s, {rss['one'] / 1024:.0f} MiB | | |",
        f"| analyze sharing, {args.dumps} dumps | {med['all']:.2f} s, {rss['all'] / 1024:.0f} MiB | | |",
        f"| one dump / zstd (ratio of medians) | {r1:.2f} | <= 0.25 | {'yes' if r1 <= 0.25 else 'NO'} |",
        f"| one dump / zstd (median of per-run ratios: {', '.join(f'{r:.2f}' for r in per_run1)}) | "
        f"{statistics.median(per_run1):.2f} | <= 0.25 | {'yes' if statistics.median(per_run1) <= 0.25 else 'NO'} |",
        f"| {args.dumps} dumps / ({args.dumps} x one dump) (ratio of medians) | {r8:.2f} | <= 1.2 | "
        f"{'yes' if r8 <= 1.2 else 'NO'} |",
        f"| {args.dumps} dumps / ({args.dumps} x one dump) (median of per-run ratios: "
        f"{', '.join(f'{r:.2f}' for r in per_run8)}) | {statistics.median(per_run8):.2f} | <= 1.2 | "
        f"{'yes' if statistics.median(per_run8) <= 1.2 else 'NO'} |",
        f"| peak RSS, one dump | {rss['one'] / 1024:.0f} MiB | < 300 MiB | "
        f"{'yes' if rss['one'] < 300 * 1024 else 'NO'} |",
        f"| peak RSS, {args.dumps} dumps | {rss['all'] / 1024:.0f} MiB | < 300 MiB | "
        f"{'yes' if rss['all'] < 300 * 1024 else 'NO'} |",
        "",
        "All samples (wall s, peak RSS MiB): " + "; ".join(
            f"{k}: " + ", ".join(f"{w:.2f} s/{r / 1024:.0f}" for w, r in v) for k, v in samples.items()),
        "",
        f"Dump 1 alone and within the {args.dumps}-dump run gives the same per-dump numbers: {consistent}.",
        f"Fleet: {f['pages']} pages, {f['zero_pages']} zero; policy saves {f['policy']['percent_saved']:.1f}% "
        f"({f['policy']['bytes_saved'] / mib:.0f} MiB), sharing everything everywhere "
        f"{f['everywhere']['percent_saved']:.1f}%; across VMs {f['cross_vm']['contents']} contents, "
        f"{f['cross_vm']['pages_saved']} pages saved.",
    ]
    text = "\n".join(rows) + "\n"
    publish(text, args.md)
    if not args.keep:
        for p in paths:
            os.unlink(p)
    for p in (one_json, all_json):
        os.unlink(p)


if __name__ == "__main__":
    main()
