#!/usr/bin/env python3
"""Peak memory of a save and a restore as the guest grows: 1 GiB to 64 GiB.

Each dump is made by fixtures/genimage.py and streamed through a pipe into
`vmsnap save -` (no 64 GiB file on disk); the snapshot is then restored to a pipe
(`vmsnap restore -o - | cat > /dev/null`), so only vmsnap's own memory is measured.
Peak RSS is GNU time's. With --checkout DIR, the saves are also run from that
checkout (an older commit, say), on the same streams, and the snapshot is also
restored by it.

    python3 bench/bench_memory.py [--sizes 1G,8G,32G,64G] [--checkout DIR] [--md bench/results/memory.md]

With --layout, the dump is made of text pages, each made distinct, in one of three
layouts of any size (see emit()): alternating (a record per page, where the index's
tables are largest), shared-shuffled (bench_layouts.py's layout of that name: a REF
record per page, as far as the save's window of contents reaches) or many-refs (a REF
record per page, to a few pages: where the plan of shared pages takes most per page).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "fixtures"))
from genimage import _size  # noqa: E402
from installed import compile_vmsnap  # noqa: E402

PY = sys.executable
TIME = ["/usr/bin/time", "-f", "%e %M"]


def _timed(cmd: list[str], cwd: str, stdin=None, stdout=None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stdout) of cmd run under GNU time."""
    p = subprocess.run(TIME + cmd, cwd=cwd, stdin=stdin, stdout=stdout or subprocess.PIPE,
                       stderr=subprocess.PIPE, text=stdout is None)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr}")
    wall, rss = p.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss), p.stdout if stdout is None else ""


def emit(layout: str, size: int, seed: int) -> None:
    """Write `size` bytes of a layout to stdout.

    alternating: text pages and zero pages, one by one (a record per page);
    shared-shuffled: distinct text pages, then the same pages in random order (a REF
    record per page, referenced in random order: the most pages shared);
    many-refs: 64 MiB of distinct text pages, then copies of them drawn at random (a REF
    record per page: the most references).
    """
    import numpy as np

    from genimage import PAGE, ImageGenerator

    pool = ImageGenerator(PAGE, seed)._text(16384)  # 64 MiB of text pages, reused...

    def text(numbers: np.ndarray) -> np.ndarray:
        pages = pool[numbers % len(pool)]
        pages[:, :8] = numbers.astype("<u8")[:, None].view(np.uint8)  # ...each made distinct by its number
        return pages

    out = sys.stdout.buffer
    chunk = 2048  # pages
    total = -(-size // PAGE)
    order = np.random.default_rng(seed).permutation(total // 2) if layout == "shared-shuffled" else None
    rng = np.random.default_rng(seed)
    for first in range(0, total, chunk):
        pages = np.arange(first, min(first + chunk, total))
        if layout == "alternating":
            block = np.zeros((len(pages), PAGE), np.uint8)
            block[pages % 2 == 0] = text(pages[pages % 2 == 0] // 2)
        elif layout == "shared-shuffled":  # the first half's pages, then the same pages in the order drawn
            half = total // 2
            block = text(np.where(pages < half, pages, order[np.minimum(pages - half, half - 1)]))
        else:  # many-refs
            block = text(np.where(pages < len(pool), pages, rng.integers(0, len(pool), len(pages))))
        out.write(memoryview(block.reshape(-1))[:size - first * PAGE])
    out.flush()


def _dump_command(layout: str, size: int, seed: int) -> list[str]:
    if layout != "genimage":
        return [PY, os.path.abspath(__file__), "--emit", layout, "--sizes", str(size), "--seed", str(seed)]
    return [PY, os.path.join(ROOT, "fixtures", "genimage.py"), "-", "--size", str(size), "--seed", str(seed)]


def save(size: int, seed: int, out: str, checkout: str, layout: str = "genimage") -> dict:
    gen = subprocess.Popen(_dump_command(layout, size, seed), stdout=subprocess.PIPE)
    # `python -m` from the checkout's directory imports that checkout's vmsnap
    wall, rss, text = _timed([PY, "-m", "vmsnap.cli", "save", "-", "-o", out, "-q", "--json"], checkout,
                             stdin=gen.stdout)
    gen.stdout.close()
    if gen.wait() != 0:
        raise SystemExit("genimage failed")
    summary = json.loads(text)
    return {"wall": wall, "rss": rss, "bytes_out": summary["bytes_out"], "data_pages": summary["data_pages"]}


def restore(snap: str, checkout: str) -> dict:
    # The save wrote the snapshot with O_DIRECT, so it is not in the page cache: read it
    # once first, or the first restore of it reads the disk and the next does not.
    with open(snap, "rb", buffering=0) as fh:
        while fh.read(16 << 20):
            pass
    with open(os.devnull, "wb") as null:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=null)
        wall, rss, _ = _timed([PY, "-m", "vmsnap.cli", "restore", snap, "-o", "-", "-q"], checkout, stdout=cat.stdin)
        cat.stdin.close()
        cat.wait()
    return {"wall": wall, "rss": rss}


def _bytes(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1G,8G,32G,64G")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--checkout", help="another vmsnap checkout whose saves to measure too")
    ap.add_argument("--layout", choices=["genimage", "alternating", "shared-shuffled", "many-refs"], default="genimage")
    ap.add_argument("--emit", choices=["alternating", "shared-shuffled", "many-refs"], help=argparse.SUPPRESS)  # to stdout
    ap.add_argument("--md", help="default: bench/results/memory.md (memory-LAYOUT.md for another layout)")
    args = ap.parse_args(argv)
    compile_vmsnap()  # timed runs load bytecode, as an installed vmsnap does
    sizes = [_size(s) for s in args.sizes.split(",")]
    if args.emit:
        emit(args.emit, sizes[0], args.seed)
        return 0
    name = "memory.md" if args.layout == "genimage" else f"memory-{args.layout}.md"
    args.md = args.md or os.path.join(ROOT, "bench", "results", name)
    rows = []
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)  # gitignored: absent in a fresh clone
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "bench", "out")) as tmp:
        snap = os.path.join(tmp, "s.vms")
        for size in sizes:
            row = {"size": size, "save": save(size, args.seed, snap, ROOT, args.layout)}
            os.sync()  # else the first restore reads while the snapshot is still written back
            row["restore"] = restore(snap, ROOT)
            if args.checkout:
                row["other"] = save(size, args.seed, os.path.join(tmp, "other.vms"), args.checkout, args.layout)
                row["same_bytes"] = subprocess.run(["cmp", "-s", snap, os.path.join(tmp, "other.vms")]).returncode == 0
                os.sync()
                row["other_restore"] = restore(snap, args.checkout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    lines = ["# Memory as the guest grows",
             "",
             f"Produced by `python3 bench/bench_memory.py --sizes {args.sizes}"
             + (f" --layout {args.layout}" if args.layout != "genimage" else "")
             + (" --checkout DIR" if args.checkout else "") + f"` (commit {commit}). Each dump is",
             {"genimage": "made by fixtures/genimage.py (seed %d)",
              "alternating": "text pages and zero pages one by one, every text page distinct (seed %d)",
              "shared-shuffled": "distinct text pages, then the same pages in random order (seed %d)",
              "many-refs": "64 MiB of distinct text pages, then copies of them drawn at random (seed %d)"}[args.layout]
             % args.seed
             + " and streamed through a pipe into `vmsnap save -`; the",
             "snapshot is restored to a pipe. Peak RSS by GNU time; one run each.",
             ""]
    head = "| guest | save peak RSS | save wall | snapshot | restore peak RSS | restore wall |"
    rule = "|---|---|---|---|---|---|"
    if args.checkout:
        other = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.checkout, capture_output=True,
                               text=True).stdout.strip()
        head += f" save peak RSS, {other} | same snapshot bytes | restore peak RSS, {other} |"
        rule += "---|---|---|"
    lines += [head, rule]
    for r in rows:
        s, x = r["save"], r["restore"]
        line = (f"| {_bytes(r['size'])} | {s['rss'] / 1024:.0f} MiB | {s['wall']:.1f} s | "
                f"{_bytes(s['bytes_out'])} | {x['rss'] / 1024:.0f} MiB | {x['wall']:.1f} s |")
        if "other" in r:
            line += (f" {r['other']['rss'] / 1024:.0f} MiB | {'yes' if r['same_bytes'] else 'no'} |"
                     f" {r['other_restore']['rss'] / 1024:.0f} MiB |")
        lines.append(line)
    with open(args.md, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
