#!/usr/bin/env python3
"""Save/restore benchmark: vmsnap against `zstd -3 --long=30` on the same dump, same run.

Generates deterministic realistic guest dumps with fixtures/genimage.py (cached in
bench/out/), then alternates the peer and vmsnap runs, timing each with
/usr/bin/time (wall seconds, peak RSS). Prints a Markdown report with ratios and
checks that both restores are byte-identical to the dump.

    python3 bench/bench_save.py [--size 1G] [--big 8G] [--jobs 2] [--runs 3] [--md bench/results/save.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "fixtures"))
from genimage import _size, generate  # noqa: E402
from installed import compile_vmsnap  # noqa: E402
from publish import publish  # noqa: E402

PY = sys.executable


def timed(cmd: list[str]) -> tuple[float, int, float]:
    """(wall seconds, peak RSS KiB, CPU seconds user+system) of cmd, measured by GNU time."""
    p = subprocess.run(["/usr/bin/time", "-f", "%e %M %U %S", *cmd], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr}")
    wall, rss, user, system = p.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss), float(user) + float(system)


def same(a: str, b: str) -> bool:
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def dump(out_dir: str, size: int, seed: int) -> str:
    path = os.path.join(out_dir, f"guest-{size >> 20}M-seed{seed}.raw")
    if not os.path.exists(path) or os.path.getsize(path) != size:
        generate(path + ".part", size, seed)
        os.replace(path + ".part", path)
    return path


def bench(path: str, jobs: int, runs: int, out_dir: str, level: int, frame_size: str) -> dict:
    zst, zout = os.path.join(out_dir, "peer.zst"), os.path.join(out_dir, "peer.out")
    vms, vout = os.path.join(out_dir, "vmsnap.vms"), os.path.join(out_dir, "vmsnap.out")
    cmds = {
        "zstd_save": ["zstd", "-3", f"-T{jobs}", "--long=30", "-f", "-q", path, "-o", zst],
        "vmsnap_save": [PY, "-m", "vmsnap.cli", "save", path, "-o", vms, "-j", str(jobs), "-q",
                        "--level", str(level), "--frame-size", frame_size],
        "zstd_restore": ["zstd", "-d", "--long=30", "-f", "-q", zst, "-o", zout],
        "vmsnap_restore": [PY, "-m", "vmsnap.cli", "restore", vms, "-o", vout, "-j", str(jobs), "-q"],
        # vmsnap fsyncs what it writes; this makes the peer's output durable too, for a like-for-like row
        "zstd_restore_sync": ["sh", "-c", f"zstd -d --long=30 -f -q {zst} -o {zout} && sync {zout}"],
    }
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)  # page cache warm for both
    samples: dict[str, list[tuple[float, int, float]]] = {k: [] for k in cmds}
    for _ in range(runs):  # alternate peer and vmsnap so machine noise hits both alike
        for name in ("zstd_save", "vmsnap_save", "zstd_restore", "vmsnap_restore", "zstd_restore_sync"):
            if name == "zstd_restore":  # vmsnap writes its snapshot with O_DIRECT: both restores read from cache
                subprocess.run(["cat", zst, vms], stdout=subprocess.DEVNULL, check=True)
            samples[name].append(timed(cmds[name]))
    result = {k: (statistics.median(s[0] for s in v), max(s[1] for s in v), statistics.median(s[2] for s in v))
              for k, v in samples.items()}
    result["zstd_bytes"] = os.path.getsize(zst)
    result["vmsnap_bytes"] = os.path.getsize(vms)
    result["identical"] = same(path, zout) and same(path, vout)
    for f in (zout, vout):
        os.unlink(f)
    return result


def report(path: str, size: int, r: dict, jobs: int, runs: int) -> str:
    mib = 1 << 20
    rows = [
        "| measure | zstd -3 -T{j} --long=30 | vmsnap | ratio (vmsnap / zstd) |".format(j=jobs),
        "|---|---|---|---|",
        f"| output size | {r['zstd_bytes'] / mib:.1f} MiB | {r['vmsnap_bytes'] / mib:.1f} MiB | "
        f"{r['vmsnap_bytes'] / r['zstd_bytes']:.3f} |",
        f"| save wall time | {r['zstd_save'][0]:.2f} s | {r['vmsnap_save'][0]:.2f} s | "
        f"{r['vmsnap_save'][0] / r['zstd_save'][0]:.2f} |",
        f"| save CPU time (user + system) | {r['zstd_save'][2]:.2f} s | {r['vmsnap_save'][2]:.2f} s | "
        f"{r['vmsnap_save'][2] / r['zstd_save'][2]:.2f} |",
        f"| restore wall time (`zstd -d --long=30`) | {r['zstd_restore'][0]:.2f} s | {r['vmsnap_restore'][0]:.2f} s | "
        f"{r['vmsnap_restore'][0] / r['zstd_restore'][0]:.2f} |",
        f"| restore wall time, output fsynced (`zstd -d && sync`) | {r['zstd_restore_sync'][0]:.2f} s | "
        f"{r['vmsnap_restore'][0]:.2f} s | {r['vmsnap_restore'][0] / r['zstd_restore_sync'][0]:.2f} |",
        f"| restore CPU time (user + system) | {r['zstd_restore'][2]:.2f} s | {r['vmsnap_restore'][2]:.2f} s | "
        f"{r['vmsnap_restore'][2] / r['zstd_restore'][2]:.2f} |",
        f"| save peak RSS | {r['zstd_save'][1] / 1024:.0f} MiB | {r['vmsnap_save'][1] / 1024:.0f} MiB | "
        f"{r['vmsnap_save'][1] / r['zstd_save'][1]:.2f} |",
        f"| restore peak RSS | {r['zstd_restore'][1] / 1024:.0f} MiB | {r['vmsnap_restore'][1] / 1024:.0f} MiB | "
        f"{r['vmsnap_restore'][1] / r['zstd_restore'][1]:.2f} |",
    ]
    head = (f"Dump: `{os.path.basename(path)}` ({size / mib:.0f} MiB, fixtures/genimage.py), "
            f"median of {runs} alternating runs; both restores byte-identical: {r['identical']}.")
    return head + "\n\n" + "\n".join(rows) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    zstd = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {zstd}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=_size, default=1 << 30)
    ap.add_argument("--big", type=_size, default=0, help="also a larger dump, to show memory stays flat")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--level", type=int, default=3)
    ap.add_argument("--frame-size", default="16M")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--md", default=None, help="also write the report to this file")
    args = ap.parse_args()
    compile_vmsnap()  # timed runs load bytecode, as an installed vmsnap does
    os.makedirs(args.out, exist_ok=True)
    parts = [f"Machine: {machine()}.\n", f"vmsnap options: `--level {args.level} --frame-size {args.frame_size} "
             f"-j {args.jobs}`.\n"]
    for size in [args.size] + ([args.big] if args.big else []):
        path = dump(args.out, size, args.seed)
        runs = args.runs if size == args.size else 1
        parts.append(report(path, size, bench(path, args.jobs, runs, args.out, args.level, args.frame_size),
                            args.jobs, runs))
        if size != args.size:
            os.unlink(path)
    text = "\n".join(parts)
    publish(text, args.md)


if __name__ == "__main__":
    main()
