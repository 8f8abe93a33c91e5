#!/usr/bin/env python3
"""Time the ELF-core and migration-stream readers, and `save` from them, against raw input.

All inputs are the same stopped moment of one QEMU guest (made by
fixtures/qemu/make_capture.py): the raw memory file, the dump-guest-memory ELF
core and the migration stream. Two measurements per capture:

1. Reader only: every region iterated, every page of every chunk touched once
   (so nothing is skipped lazily), plus the plain read of each file as a
   baseline. The page cache is warm for all (one untimed pass first), so the
   numbers compare parsing work, not disk speed.
2. `vmsnap.api.save` of each input to a .vms (the issue 3 target: save from an
   ELF core or a migration stream within 10% of save from the raw file), and
   the size of the .vms against the size of QEMU's migration stream (the issue 3
   target for a 1 GiB guest: at most 1/5).

Usage: bench/bench_readers.py [--mem 128 --mem 1024] [--repeat 5] [--save-repeat 3]
Writes bench/results/readers.md; the .vms files go to bench/out/ (gitignored).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

INPUTS = (("raw", "raw", "raw"), ("elf", "elf", "elf"), ("migration", "qemu", "migration"))
BASELINES = (("elf file read as raw", "raw", "elf"),
             ("migration file read as raw", "raw", "migration"))


def load_make_capture():
    spec = importlib.util.spec_from_file_location(
        "make_capture", os.path.join(ROOT, "fixtures", "qemu", "make_capture.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def consume(fmt: str, path: str) -> int:
    from vmsnap.sources import open_source

    total = 0
    with open_source(path, fmt) as src:
        for _, chunks in src.regions():
            for chunk in chunks:
                memoryview(chunk)[::4096].tobytes()  # touch one byte per page
                total += len(chunk)
    return total


def interleaved(jobs: dict, repeat: int) -> dict[str, list[float]]:
    """Run every job once per round, `repeat` rounds; the times of each job."""
    times = {label: [] for label in jobs}
    for _ in range(repeat):
        for label, job in jobs.items():
            t = time.perf_counter()
            job()
            times[label].append(time.perf_counter() - t)
    return times


def med(times: list[float]) -> float:
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mem", type=int, action="append",
                    help="capture RAM in MiB (repeatable; default 128)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per reader")
    ap.add_argument("--save-repeat", type=int, default=3, help="timed runs per save")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "readers.md"))
    args = ap.parse_args()
    from vmsnap import api
    from vmsnap.atomic import atomic_output

    mems = args.mem or [128]
    mc = load_make_capture()
    out_dir = os.path.join(ROOT, "bench", "out")
    os.makedirs(out_dir, exist_ok=True)
    captures = []
    for mem in mems:
        meta = mc.ensure_capture(mem, log=lambda m: print(m, file=sys.stderr))
        p = meta["paths"]
        # Runs are interleaved (every input once per round) so that load from other
        # jobs on this shared machine drifts over all inputs alike.
        read_jobs = {label: (lambda fmt=fmt, key=key: consume(fmt, p[key]))
                     for label, fmt, key in INPUTS + BASELINES}
        sizes_in = {label: os.path.getsize(p[key]) for label, _, key in INPUTS + BASELINES}
        yielded = {label: job() for label, job in read_jobs.items()}  # warm-up
        read_times = interleaved(read_jobs, args.repeat)
        reads = {label: (yielded[label], sizes_in[label], read_times[label]) for label in read_jobs}
        vms = {label: os.path.join(out_dir, f"readers-{mem}M-{label}.vms") for label, _, _ in INPUTS}
        vms["elf file saved as raw"] = os.path.join(out_dir, f"readers-{mem}M-elfraw.vms")
        save_jobs = {label: (lambda fmt=fmt, key=key, label=label:
                             api.save(p[key], vms[label], format=fmt))
                     for label, fmt, key in INPUTS + (("elf file saved as raw", "raw", "elf"),)}
        for job in save_jobs.values():  # warm-up
            job()
        saves = interleaved(save_jobs, args.save_repeat)
        vms_sizes = {label: os.path.getsize(path) for label, path in vms.items()}
        for path in vms.values():
            os.unlink(path)
        for label in read_jobs:
            print(f"{mem} MiB read {label}: median {med(read_times[label]):.3f}s", file=sys.stderr)
        for label in save_jobs:
            print(f"{mem} MiB save {label}: median {med(saves[label]):.3f}s", file=sys.stderr)
        captures.append((meta, reads, saves, vms_sizes))

    lines = [
        "# Input readers: ELF core and migration stream vs raw",
        "",
        f"Produced by `bench/bench_readers.py --repeat {args.repeat} --save-repeat "
        f"{args.save_repeat}" + "".join(f" --mem {m}" for m in mems) + "`.",
        "",
        "## Machine and input",
        "",
        f"- {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
    ]
    for meta, *_ in captures:
        lines.append(
            f"- capture: {meta['mem_mib']} MiB guest, {meta['versions']['qemu']}, "
            f"{meta['accel']}, kernel {meta['kernel_package']}; "
            f"raw {meta['sizes']['mem.raw']:,} B, ELF core {meta['sizes']['core.elf']:,} B, "
            f"migration stream {meta['sizes']['stream.mig']:,} B; capture times (s): "
            + ", ".join(f"{k} {v}" for k, v in meta["timings"].items())
        )
    lines += [
        "- page cache warm for every input (one untimed pass first); runs interleaved",
        "  (every input once per round); times are medians.",
        "",
        "## Reading only",
        "",
        "Every region iterated, every page of every chunk touched once.",
        "",
        "| guest | reader | bytes yielded | input size | median s | min s | MiB/s yielded "
        "| time / raw |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for meta, reads, _, _ in captures:
        raw_med = med(reads["raw"][2])
        for label, (nbytes, insize, times) in reads.items():
            lines.append(
                f"| {meta['mem_mib']} MiB | {label} | {nbytes:,} | {insize:,} | {med(times):.3f} "
                f"| {min(times):.3f} | {nbytes / med(times) / 2**20:,.0f} "
                f"| {med(times) / raw_med:.2f} |"
            )
    lines += [
        "",
        "## `save` from each input",
        "",
        "| guest | input | median s | min s | time / save of raw | .vms bytes "
        "| .vms / migration stream |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for meta, _, saves, sizes in captures:
        mem = meta["mem_mib"]
        stream_size = meta["sizes"]["stream.mig"]
        raw_med = med(saves["raw"])
        for label, times in saves.items():
            lines.append(
                f"| {mem} MiB | {label} | {med(times):.3f} | {min(times):.3f} "
                f"| {med(times) / raw_med:.2f} | {sizes[label]:,} "
                f"| {sizes[label] / stream_size:.3f} |"
            )
        for label in ("elf", "migration"):
            ratio = med(saves[label]) / raw_med
            verdicts.append(
                f"- {mem} MiB: `save` from the {label} input takes {ratio:.2f}x the time of "
                f"`save` from the raw file: target (<= 1.10x) "
                f"**{'met' if ratio <= 1.10 else 'missed'}**."
            )
        own = med(saves["elf"]) / med(saves["elf file saved as raw"])
        verdicts.append(
            f"  ({mem} MiB: `save` of the ELF core takes {own:.2f}x the time of `save` of the "
            "same file read as raw, so that much is the ELF reader's own cost; the rest is "
            "the core file's slower reads on this machine, see \"elf file read as raw\".)"
        )
        if mem >= 1024:
            ratio = sizes["raw"] / stream_size
            verdicts.append(
                f"- {mem} MiB: the .vms is {ratio:.3f} of QEMU's migration stream of the same "
                f"moment ({sizes['raw']:,} vs {stream_size:,} bytes): target (<= 0.200) "
                f"**{'met' if ratio <= 0.2 else 'missed'}**."
            )
    lines += ["", "## Targets", ""] + verdicts + [
        "",
        "## Notes",
        "",
        "- The ELF reader is a seek plus sequential reads of each PT_LOAD: compare it with the",
        "  row \"elf file read as raw\" (the same file, no parsing) to see the reader's own cost;",
        "  the gap to the raw memory file is the core file's own read speed on this machine.",
        "- The migration reader parses one record per page, writes the pages into a sparse",
        "  temporary file and reads them back, so it does the most work; zero pages cost",
        "  only their 9-byte record plus a hole in the temporary file, and all-hole chunks",
        "  are served from one zero buffer.",
        "- Where the migration reader's time goes (128 MiB capture, profiled): writing the",
        "  pages into the temporary file and reading them back is about half of it (~60 ms",
        "  of ~110 ms: pwritev, pread, freeing the file's pages on close); reading the",
        "  stream ~12 ms; record parsing (numpy for runs of zero and data pages, Python",
        "  for the rest) the remainder. The temporary file is what keeps memory flat for any",
        "  guest size and handles pages sent more than once; a two-pass reader for seekable",
        "  streams (index of each page's last copy, then reads straight from the stream)",
        "  would skip it, at 8 bytes of index per page.",
        "- The machine is shared with other jobs: single runs vary by up to 2x; the medians",
        "  of one run of this script are comparable with each other, not across runs.",
        "",
    ]
    with atomic_output(args.out) as fh:
        fh.write("\n".join(lines).encode())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
