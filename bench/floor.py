#!/usr/bin/env python3
"""How fast could a save or restore of this design be? Its essential work, timed alone.

A .vms save must read the dump, classify its pages, BLAKE3 every page it may share
(the canonical identity), BLAKE3 every non-zero 1 MiB block (the restore check) and
zstd-compress the data pages; a restore must check and decompress the frames and
BLAKE3 the blocks again, then write the non-zero pages and fsync them. This script
times each of those steps on its own, on one thread, with no pipeline, records or
Python bookkeeping around it, and adds them up. Spread perfectly over the machine's
cores, plus the interpreter's start (and, for a restore, no less than the disk's time
to take the output), that is a floor no implementation of the format can beat on this
machine; it is set against the peer
(`zstd -3 --long=30`) and against vmsnap itself, all measured in the same run.

    python3 bench/floor.py [--size 1G] [--runs 3] [--md bench/results/floor.md]
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_save import PY, dump, timed  # noqa: E402
from genimage import _size  # noqa: E402  (bench_save put fixtures/ on the path)

from blake3 import blake3  # noqa: E402

import zstandard  # noqa: E402
from vmsnap import api, pages as P  # noqa: E402
from vmsnap.format.reader import Snapshot  # noqa: E402
from vmsnap.format.writer import DEFAULT_FRAME_SIZE, DEFAULT_LEVEL, frame_parameters  # noqa: E402
from installed import compile_vmsnap  # noqa: E402
from publish import publish  # noqa: E402

BATCH = 4 << 20
BLOCK = 1 << 20


def cpu(fn) -> float:
    """CPU seconds of fn() on this thread."""
    t = time.thread_time()
    fn()
    return time.thread_time() - t


def batches(path: str):
    """The dump in 4 MiB batches, read into one reused page-aligned buffer."""
    buf = np.frombuffer(mmap.mmap(-1, BATCH), dtype=np.uint8)
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = 0
        while n := os.preadv(fd, [buf], pos):
            yield buf[:n]
            pos += n
    finally:
        os.close(fd)


def read_all(path: str) -> None:
    for _ in batches(path):
        pass


def classify_all(path: str) -> float:
    total = 0.0
    for b in batches(path):
        pages = b.reshape(-1, 4096)
        total += cpu(lambda: P.classify(pages))
    return total


def digests_all(path: str) -> tuple[float, float]:
    """(BLAKE3 of every OTHER page, BLAKE3 of every 1 MiB block that is not all zero)."""
    pages_s = blocks_s = 0.0
    for b in batches(path):
        pages = b.reshape(-1, 4096)
        kind, _ = P.classify(pages)
        other = np.flatnonzero(kind == P.OTHER)
        pages_s += cpu(lambda: P.page_digests(pages, other))
        nonzero = [i for i in range(0, len(b), BLOCK) if kind[i // 4096:(i + BLOCK) // 4096].any()]
        mv = memoryview(b)
        blocks_s += cpu(lambda: [blake3(mv[i:i + BLOCK], max_threads=1).digest(length=16) for i in nonzero])
    return pages_s, blocks_s


def write_image(path: str, out: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to write the dump's non-zero pages to a new file and
    fsync it, with restore's own writer (same buffers, holes and O_DIRECT writes) and
    nothing else running. The wall time is the disk's share of a restore: the output
    must be on disk before the restore may rename it into place."""
    import tempfile

    from vmsnap.output import ImageWriter

    page = 4096
    image = np.fromfile(path, dtype=np.uint8)
    nonzero = image.reshape(-1, page).view(np.uint64).any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], nonzero.view(np.int8), [0]))))
    runs = edges.reshape(-1, 2) * page  # [start, end) of each run of non-zero pages
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), suffix=".image")
    os.unlink(tmp)  # the file is written and synced by fd alone, as a restore's temporary file is
    try:
        with os.fdopen(fd, "wb") as fh:
            t, c = time.perf_counter(), time.process_time()
            writer = ImageWriter(fh, positioned=True)
            for start, end in runs:
                writer.write(int(start), image[start:end])
            writer.close(len(image))
            os.fsync(fd)
            return time.process_time() - c, time.perf_counter() - t
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def data_stream(vms: str) -> list[bytes]:
    """The snapshot's data pages (what a save compresses), in frames of the default size."""
    with Snapshot(vms) as snap:
        data = b"".join(snap._decode_frame(k).tobytes() for k in range(len(snap.frames)))
    return [data[i:i + DEFAULT_FRAME_SIZE] for i in range(0, len(data), DEFAULT_FRAME_SIZE)]


def compress_all(frames: list[bytes]) -> list[bytes]:
    return [zstandard.ZstdCompressor(compression_params=frame_parameters(DEFAULT_LEVEL, len(f), False)).compress(f)
            for f in frames]


def decode_all(blobs: list[bytes], sizes: list[int]) -> None:
    out = np.empty(max(sizes), dtype=np.uint8)
    for blob, size in zip(blobs, sizes):
        blake3(blob, max_threads=1).digest()
        zstandard.ZstdDecompressor().stream_reader(blob).readinto(out[:size])


def best(fn, runs: int) -> float:
    return min(fn() for _ in range(runs))


def startup(imports: str, runs: int) -> float:
    """Wall seconds to start Python and import `imports` (what the command needs)."""
    return statistics.median(timed([PY, "-c", f"import vmsnap.cli, {imports}"])[0] for _ in range(runs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--md", default=os.path.join(HERE, "results", "floor.md"))
    args = ap.parse_args(argv)
    compile_vmsnap()  # timed runs load bytecode, as an installed vmsnap does
    out_dir = os.path.join(HERE, "out")
    os.makedirs(out_dir, exist_ok=True)
    path = dump(out_dir, _size(args.size), args.seed)
    vms = os.path.join(out_dir, "floor.vms")
    api.save(path, vms, format="raw")
    frames = data_stream(vms)
    sizes = [len(f) for f in frames]
    blobs = compress_all(frames)

    parts = {
        "read the dump (page cache, reused buffer)": best(lambda: cpu(lambda: read_all(path)), args.runs),
        "classify every page": best(lambda: classify_all(path), args.runs),
    }
    page_s, block_s = min((digests_all(path) for _ in range(args.runs)), key=sum)
    parts["BLAKE3 of every page that may be shared (4 KiB inputs)"] = page_s
    parts["BLAKE3 of every non-zero 1 MiB block"] = block_s
    parts["zstd -3 of the stored data pages (16 MiB frames)"] = best(lambda: cpu(lambda: compress_all(frames)),
                                                                      args.runs)
    restore_parts = {
        "check and decompress the frames (into one reused buffer)": best(
            lambda: cpu(lambda: decode_all(blobs, sizes)), args.runs),
        "BLAKE3 of every non-zero 1 MiB block": block_s,
    }
    write_cpu, disk_wall = min((write_image(path, vms) for _ in range(args.runs)), key=lambda r: r[1])
    restore_parts["write the non-zero pages to a new file and fsync it (restore's writer)"] = write_cpu
    save_start = startup("vmsnap.api, vmsnap.format.writer, vmsnap.sources.raw", args.runs)
    restore_start = startup("vmsnap.api, vmsnap.output", args.runs)

    tools = {"zstd_save": ["zstd", "-3", f"-T{args.jobs}", "--long=30", "-f", "-q", path, "-o", vms + ".zst"],
             "vmsnap_save": [PY, "-m", "vmsnap", "save", path, "-o", vms, "-j", str(args.jobs), "-q"],
             "zstd_restore": ["zstd", "-d", "--long=30", "-f", "-q", vms + ".zst", "-o", vms + ".zst.out"],
             "vmsnap_restore": [PY, "-m", "vmsnap", "restore", vms, "-o", vms + ".out", "-j", str(args.jobs), "-q"]}
    walls: dict[str, list[float]] = {name: [] for name in tools}
    for _ in range(args.runs):
        for name, cmd in tools.items():
            walls[name].append(timed(cmd)[0])
    wall = {name: statistics.median(v) for name, v in walls.items()}
    for f in (vms + ".zst", vms + ".zst.out", vms + ".out"):
        os.unlink(f)

    cores = args.jobs
    save_cpu, restore_cpu = sum(parts.values()), sum(restore_parts.values())
    save_floor = save_start + save_cpu / cores
    # a restore ends when its output is on disk: the disk's time bounds it as well as the CPU's
    restore_floor = restore_start + max(restore_cpu / cores, disk_wall)
    lines = [
        "# The floor: the essential work of a save and a restore, timed alone",
        "",
        f"Produced by `python3 bench/floor.py --size {args.size} --runs {args.runs}` on {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. Dump: `{os.path.basename(path)}` (fixtures/genimage.py). "
        f"CPU seconds are the best of {args.runs} runs, each step alone on one thread; wall times are medians of "
        f"{args.runs} alternating runs of the tools.",
        "",
        "| step of a save | CPU seconds |",
        "|---|---|",
        *[f"| {name} | {s:.2f} |" for name, s in parts.items()],
        f"| **sum** | **{save_cpu:.2f}** |",
        "",
        "| step of a restore | CPU seconds |",
        "|---|---|",
        *[f"| {name} | {s:.2f} |" for name, s in restore_parts.items()],
        f"| **sum** | **{restore_cpu:.2f}** |",
        "",
        f"Starting Python and importing what the command needs: {save_start:.2f} s wall for a save, "
        f"{restore_start:.2f} s for a restore. The save's floor is that start plus the sum spread perfectly "
        f"over {cores} cores. A restore must also wait for the disk: the output is fsynced before it is "
        f"renamed into place. Writing the non-zero pages alone, with restore's own writer and nothing else "
        f"running, took {disk_wall:.2f} s of wall time (best of {args.runs}), so the restore's floor is the "
        f"start plus the larger of {restore_cpu / cores:.2f} s (the CPU sum over {cores} cores) and "
        f"{disk_wall:.2f} s. Both floors leave out the replacing of an existing output file, which the peer "
        "pays too.",
        "",
        "| | zstd (peer) | floor | vmsnap | floor / zstd | vmsnap / zstd |",
        "|---|---|---|---|---|---|",
        f"| save wall time | {wall['zstd_save']:.2f} s | {save_floor:.2f} s | {wall['vmsnap_save']:.2f} s | "
        f"{save_floor / wall['zstd_save']:.2f} | {wall['vmsnap_save'] / wall['zstd_save']:.2f} |",
        f"| restore wall time | {wall['zstd_restore']:.2f} s | {restore_floor:.2f} s | "
        f"{wall['vmsnap_restore']:.2f} s | {restore_floor / wall['zstd_restore']:.2f} | "
        f"{wall['vmsnap_restore'] / wall['zstd_restore']:.2f} |",
    ]
    report = "\n".join(lines) + "\n"
    publish(report, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
