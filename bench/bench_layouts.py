#!/usr/bin/env python3
"""Page layouts that cost a restore most per byte: vmsnap against `zstd --long=30`, same run.

The benchmark dump of bench_save.py keeps its shared pages close to their
copies and its page kinds in runs. Real guests need not: same-page merging finds
shared pages scattered over all of memory, a tar of files in the page cache
copies them at 512-byte offsets, and a guest that zeroes freed pages (init_on_free)
interleaves zero and data pages one by one. Each layout here is 256 MiB, made
deterministically with numpy, and built to have one of these at its worst:

- shared-shuffled: 128 MiB of distinct text pages, then the same pages in random order
  (a REF record per page, referenced in random order);
- slices-shuffled: 128 MiB of text pages, then the same bytes at random 512-byte offsets
  in random order (a SLICE record per page);
- alternating: text pages and zero pages, one by one (a record per page);
- scattered-copies: a benchmark dump (fixtures/genimage.py) with a fifth of its pages
  overwritten by copies of pages from anywhere in it.

    python3 bench/bench_layouts.py [--runs 3] [--md bench/results/layouts.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "fixtures"))
sys.path.insert(0, HERE)
from bench_save import PY, same, timed  # noqa: E402
from genimage import ImageGenerator  # noqa: E402
from installed import compile_vmsnap  # noqa: E402
from publish import publish  # noqa: E402

PAGE = 4096
PAGES = 65536  # 256 MiB


def _text(pages: int, seed: int) -> np.ndarray:
    return ImageGenerator(PAGE, seed)._text(pages)


def shared_shuffled() -> np.ndarray:
    first = _text(PAGES // 2, 11)
    return np.concatenate([first, first[np.random.default_rng(1).permutation(PAGES // 2)]])


def slices_shuffled() -> np.ndarray:
    half = PAGES // 2
    first = _text(half + 1, 12)
    flat = first.reshape(-1)
    rng = np.random.default_rng(2)
    starts = rng.permutation(half) * PAGE + 512 * rng.integers(1, 8, half)
    second = np.lib.stride_tricks.sliding_window_view(flat, PAGE)[starts]
    return np.concatenate([first[:half], second])


def alternating() -> np.ndarray:
    image = np.zeros((PAGES, PAGE), np.uint8)
    image[0::2] = _text(PAGES // 2, 13)
    return image


def scattered_copies() -> np.ndarray:
    image = np.frombuffer(b"".join(ImageGenerator(PAGES * PAGE, 14).blocks()), np.uint8).reshape(PAGES, PAGE).copy()
    rng = np.random.default_rng(4)
    targets = rng.choice(PAGES, PAGES // 5, replace=False)
    image[targets] = image[rng.integers(0, PAGES, len(targets))]
    return image


LAYOUTS = {"shared-shuffled": shared_shuffled, "slices-shuffled": slices_shuffled, "alternating": alternating,
           "scattered-copies": scattered_copies}


def layout_file(out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, f"layout-{name}.raw")
    if not os.path.exists(path):
        LAYOUTS[name]().tofile(path + ".part")
        os.replace(path + ".part", path)
    return path


def bench(path: str, runs: int, out_dir: str) -> dict:
    zst, zout = os.path.join(out_dir, "layout.zst"), os.path.join(out_dir, "layout.zst.out")
    vms, vout = os.path.join(out_dir, "layout.vms"), os.path.join(out_dir, "layout.vms.out")
    cmds = {
        "zstd_save": ["zstd", "-3", "-T2", "--long=30", "-f", "-q", path, "-o", zst],
        "vmsnap_save": [PY, "-m", "vmsnap.cli", "save", path, "-o", vms, "-q"],
        "zstd_restore": ["zstd", "-d", "--long=30", "-f", "-q", zst, "-o", zout],
        "vmsnap_restore": [PY, "-m", "vmsnap.cli", "restore", vms, "-o", vout, "-q"],
    }
    wall: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(runs):
        for key, cmd in cmds.items():  # alternating: drift on a shared machine hits both tools
            wall[key].append(timed(cmd)[0])
    result = {k: statistics.median(v) for k, v in wall.items()}
    result["identical"] = same(path, zout) and same(path, vout)
    result["zstd_size"], result["vmsnap_size"] = os.path.getsize(zst), os.path.getsize(vms)
    for f in (zst, zout, vms, vout):
        os.unlink(f)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out"))
    ap.add_argument("--md", help="also write the report here")
    args = ap.parse_args(argv)
    compile_vmsnap()  # timed runs load bytecode, as an installed vmsnap does
    os.makedirs(args.out_dir, exist_ok=True)
    rows = [
        "# Page layouts that cost a restore most per byte",
        "",
        f"Produced by `python3 bench/bench_layouts.py --runs {args.runs}`: 256 MiB each (see the script's "
        f"docstring), medians of {args.runs} alternating runs, vmsnap with its defaults, the peer "
        "`zstd -3 -T2 --long=30` and `zstd -d --long=30`. Wall times include starting each tool "
        "(about 0.15 s for vmsnap's Python).",
        "",
        "| layout | size vmsnap / zstd | save vmsnap / zstd | restore vmsnap / zstd | restored bytes identical |",
        "|---|---|---|---|---|",
    ]
    for name in LAYOUTS:
        r = bench(layout_file(args.out_dir, name), args.runs, args.out_dir)
        rows.append(f"| {name} | {r['vmsnap_size'] / 2**20:.1f} / {r['zstd_size'] / 2**20:.1f} MiB "
                    f"({r['vmsnap_size'] / r['zstd_size']:.3f}) | {r['vmsnap_save']:.2f} / {r['zstd_save']:.2f} s "
                    f"({r['vmsnap_save'] / r['zstd_save']:.2f}) | {r['vmsnap_restore']:.2f} / "
                    f"{r['zstd_restore']:.2f} s ({r['vmsnap_restore'] / r['zstd_restore']:.2f}) | "
                    f"{r['identical']} |")
        print(rows[-1], flush=True)
    report = "\n".join(rows) + "\n"
    publish(report, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
