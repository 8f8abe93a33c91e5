#!/usr/bin/env python3
"""Benchmark `vmsnap analyze hotcold` over a series of memory dumps.

Generates N dumps of SIZE GiB deterministically (seeded), whose page groups are
known by construction (hot: changed in every period, warm: changed until the
last period, cool: until the last two, cold: only in the first, the rest never),
then times, in the same run:

  * `cat` of all dumps to /dev/null: the read ceiling of this machine;
  * `cmp -l` of each consecutive pair: the shell way to find changed bytes (peer);
  * `vmsnap analyze hotcold DUMPS... --json --out L` (whole CLI, new process);
  * the same with the dumps evicted from the page cache first
    (posix_fadvise DONTNEED on these files only), i.e. read from disk.

It checks the classes against the construction and prints a markdown report.
Usage: python3 bench/bench_hotcold.py [--size-gib 1] [--dumps 6] [--dir bench/out/hotcold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from installed import compile_vmsnap

PS = 4096
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # this checkout's vmsnap, not an installed one


def groups_for(n_pages: int) -> np.ndarray:
    """0 hot 2 %, 1 warm 3 %, 2 cool 5 %, 3 cold 10 %, 4 never: by page number, in stripes."""
    g = np.full(n_pages, 4, dtype=np.uint8)
    r = (np.arange(n_pages) * 2654435761 % 1000)  # spread groups over the address space
    g[r < 20] = 0
    g[(r >= 20) & (r < 50)] = 1
    g[(r >= 50) & (r < 100)] = 2
    g[(r >= 100) & (r < 200)] = 3
    return g


def generate(directory: str, size: int, n_dumps: int) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    n_pages = size // PS
    groups = groups_for(n_pages)
    periods = n_dumps - 1
    paths = [os.path.join(directory, f"dump{t}.raw") for t in range(n_dumps)]
    stamp = os.path.join(directory, "params.json")
    want = {"size": size, "dumps": n_dumps, "version": 1}
    if os.path.exists(stamp) and json.load(open(stamp)) == want and all(map(os.path.exists, paths)):
        return paths
    rng = np.random.default_rng(20261127)
    mem = np.frombuffer(bytearray(rng.bytes(size)), dtype=np.uint8).reshape(n_pages, PS)
    mem[groups == 4] = 0  # many never-touched pages are zero in real guests
    for t in range(n_dumps):
        if t:
            p = t - 1
            changed = (groups == 0) | ((groups == 1) & (p < periods - 1)) | \
                      ((groups == 2) & (p < periods - 2)) | ((groups == 3) & (p == 0))
            idx = np.flatnonzero(changed)
            mem[idx, (idx * 13 + t) % PS] ^= 0xA5  # one byte per changed page
        mem.tofile(paths[t])
    json.dump(want, open(stamp, "w"))
    return paths


def evict(paths):
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(cmd, **kw):
    t = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, **kw).stdout
    return time.perf_counter() - t, out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--dumps", type=int, default=6)
    ap.add_argument("--dir", default=os.path.join(ROOT, "bench", "out", "hotcold"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    compile_vmsnap()  # timed runs load bytecode, as an installed vmsnap does
    size = int(args.size_gib * (1 << 30)) // PS * PS
    t = time.perf_counter()
    paths = generate(args.dir, size, args.dumps)
    gen = time.perf_counter() - t
    total = size * args.dumps
    gib = total / 2**30
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    levels = os.path.join(args.dir, "levels.bin")
    cmd = [sys.executable, "-m", "vmsnap.cli", "analyze", "hotcold", *paths, "--json", "--out", levels]

    subprocess.run(["cat", *paths], stdout=subprocess.DEVNULL, check=True)  # warm the cache
    cat_t = min(timed(["sh", "-c", 'cat "$@" > /dev/null', "cat", *paths])[0] for _ in range(args.repeat))
    # the shell way to see what changed between consecutive dumps: cmp -l (one line per differing byte)
    pairs = " ".join(f'"{a}" "{b}"' for a, b in zip(paths, paths[1:]))
    cmp_script = f'set -- {pairs}; while [ $# -ge 2 ]; do cmp -l "$1" "$2" | wc -l >/dev/null; shift 2; done'
    cmp_t = min(timed(["sh", "-c", cmp_script])[0] for _ in range(max(1, args.repeat - 1)))
    warm = []
    doc = None
    for _ in range(args.repeat):
        dt, out = timed(cmd, env=env)
        warm.append(dt)
        doc = json.loads(out)
    evict(paths)
    cold_cat = timed(["sh", "-c", 'cat "$@" > /dev/null', "cat", *paths])[0]
    evict(paths)
    cold, _ = timed(cmd, env=env)

    # check against the construction
    from vmsnap.analyze.hotcold import read_levels

    lf = read_levels(levels)
    g = groups_for(size // PS)
    expect_name = {0: "hot", 1: "warm", 2: "cool", 3: "cold", 4: "never"}
    names = doc["params"]["level_names"]
    ok = all(set(names[x] for x in np.unique(lf.levels[g == k])) == {v} for k, v in expect_name.items())

    best = min(warm)
    print(f"# hotcold over {args.dumps} dumps of {args.size_gib:g} GiB\n")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
          f"Python {platform.python_version()}, numpy {np.__version__}")
    print(f"load average at the end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"input: {args.dumps} raw dumps x {size} bytes = {gib:.2f} GiB (generated in {gen:.1f} s)")
    print(f"classes match the construction: {ok}; final pages: {doc['final']['pages']}\n")
    print("| run | time (s) | GiB/s of dump read | vs cat |")
    print("|---|---|---|---|")
    print(f"| cat > /dev/null, page cache (best of {args.repeat}) | {cat_t:.2f} | {gib / cat_t:.2f} | 1.00 |")
    print(f"| vmsnap analyze hotcold, page cache (best of {args.repeat}; all: "
          f"{', '.join(f'{x:.2f}' for x in warm)}) | {best:.2f} | {gib / best:.2f} | {best / cat_t:.2f} |")
    print(f"| cmp -l of each consecutive pair, page cache (peer; reads interior dumps twice) | {cmp_t:.2f} | "
          f"{gib / cmp_t:.2f} | {cmp_t / cat_t:.2f} |")
    print(f"| cat > /dev/null, evicted from cache | {cold_cat:.2f} | {gib / cold_cat:.2f} | 1.00 |")
    print(f"| vmsnap analyze hotcold, evicted from cache | {cold:.2f} | {gib / cold:.2f} | {cold / cold_cat:.2f} |")
    print(f"\ntarget >= 1 GiB/s (page cache): {'met' if gib / best >= 1 else 'MISSED'}; "
          f"from disk: {'met' if gib / cold >= 1 else 'missed'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
