#!/usr/bin/env python3
"""The .vms of a real QEMU guest against QEMU's own migration stream of the same moment.

Boots the fixture guest (fixtures/qemu/make_capture.py: same kernel, initramfs,
workload and command line) with --mem MiB of RAM, waits for its workload and a
few ticks, then over QMP:

1. `stop`; full migration (no x-ignore-shared: the RAM is in it) to stream.mig;
   the memory-backend file is copied to mem.raw (the guest is stopped, so both
   hold the same RAM; checked by SHA-256 before and after).
2. `vmsnap save` of mem.raw (memory only) at each zstd level in --levels, and of
   stream.mig (the migration reader: RAM plus the ROM blocks), and the peer,
   `zstd -3 -T2 --long=30` of mem.raw.
3. `cont` for a second, then `vmsnap qemu save` (device state + memory in one
   file; a second later than 1-2, since QEMU refuses to migrate a guest that an
   earlier migration paused).

and classifies the guest's pages (vmsnap info) to explain the sizes.

Each measurement is made twice by default: with the fixture's kernel command
line, and with init_on_free=1 added (the guest kernel zeroes pages it frees).

Usage: bench/bench_qemu.py [--mem 1024] [--levels 1,3,9,19] [--append ARGS ...]
Writes bench/results/qemu.md (keeping its hand-written "## Findings" section);
files go to bench/out/qemu-<MEM>M-<tag>/ (gitignored).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def classify_ranges(raw_path: str, page_size: int = 4096) -> list[str]:
    """Non-zero pages per MiB of guest-physical memory and how they compress one by one."""
    import numpy as np
    import zstandard

    mem = np.memmap(raw_path, dtype=np.uint8, mode="r")
    pages = mem.reshape(-1, page_size)
    nz = np.nonzero(pages.any(axis=1))[0]
    c = zstandard.ZstdCompressor(level=3)
    per_mib: dict[int, list[int]] = {}
    for i in nz.tolist():
        n = len(c.compress(pages[i].tobytes()))
        b = per_mib.setdefault(i * page_size >> 20, [0, 0, 0])
        b[0] += 1
        b[1] += n
        b[2] += n > page_size * 0.93
    # merge neighbouring MiBs of the same character into ranges
    out, cur = [], None
    for mib in sorted(per_mib):
        n, size, inc = per_mib[mib]
        kind = "incompressible" if inc > n / 2 else ("text-like" if size / (n * page_size) > 0.3 else "redundant")
        if cur and cur[1] == mib - 1 and cur[2] == kind:
            cur[1] = mib
            cur[3] += n
            cur[4] += size
        else:
            if cur:
                out.append(cur)
            cur = [mib, mib, kind, n, size]
    if cur:
        out.append(cur)
    rows = ["| guest-physical MiB | non-zero pages | zstd -3 per page | character |", "|---|---:|---:|---|"]
    for a, b, kind, n, size in out:
        if n >= 256:
            rows.append(f"| {a}-{b + 1} | {n:,} | {size / (n * page_size):.2f} | {kind} |")
    totals = {}
    for a, b, kind, n, size in out:
        t = totals.setdefault(kind, [0, 0])
        t[0] += n
        t[1] += size
    rows.append("")
    rows += [f"- {kind}: {n:,} pages, {size:,} bytes compressed one page at a time" for kind, (n, size) in
             sorted(totals.items())]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mem", type=int, default=1024)
    ap.add_argument("--levels", default="1,3,9,19")
    ap.add_argument("--append", action="append", default=None,
                    help="extra guest kernel arguments, one run per value ('' = none); default: '' and init_on_free=1")
    args = ap.parse_args(argv)
    sections = []
    for extra in (args.append if args.append is not None else ["", "init_on_free=1"]):
        sections.append(run_one(args.mem, args.levels, extra))
    head = ["# QEMU guest: .vms vs QEMU's migration stream", "",
            f"Produced by `bench/bench_qemu.py --mem {args.mem} --levels {args.levels}`.", ""]
    text = "\n".join(head + sum(sections, [])) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    result = os.path.join(ROOT, "bench", "results", "qemu.md")
    if os.path.exists(result):  # the hand-written findings at the end are kept
        with open(result) as fh:
            old = fh.read()
        if "\n## Findings" in old:
            text += old[old.index("\n## Findings"):]
    with open(result, "w") as fh:
        fh.write(text)
    print(text)
    return 0


def run_one(mem_mib: int, levels: str, extra_append: str) -> list[str]:
    from qemu_fixture import load_make_capture
    from vmsnap import api
    from vmsnap.qemu import snapshot as Q
    from vmsnap.qemu.qmp import QMP

    mc = load_make_capture()
    vmlinuz, kernel_pkg = mc.guest_kernel()
    accel = mc.accel_choice("auto")
    tag = extra_append.replace("=", "-").replace(" ", "_") or "default"
    out = os.path.join(ROOT, "bench", "out", f"qemu-{mem_mib}M-{tag}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    initrd, mem, serial = (os.path.join(out, n) for n in ("initramfs.cpio", "guest.mem", "serial.log"))
    mc.build_initramfs(initrd)
    sock_dir = tempfile.mkdtemp(prefix="vmsnap-qmp-")
    sock = os.path.join(sock_dir, "q.sock")
    cmd = mc.qemu_command(accel, mem_mib, mem, vmlinuz, initrd, serial, sock)
    if extra_append:
        cmd[cmd.index("-append") + 1] += " " + extra_append
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rows = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                qmp = QMP(sock)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        mc.wait_for_workload(qemu, serial, ticks=3)
        version = qmp.version
        qmp.execute("stop")
        before = sha256(mem)
        stream = os.path.join(out, "stream.mig")
        qmp.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        mc.migrate_to_file(qmp, stream, "migration")
        raw = os.path.join(out, "mem.raw")
        shutil.copyfile(mem, raw)
        if sha256(raw) != before:
            raise SystemExit("memory changed while the guest was stopped")
        qmp.execute("cont")
        time.sleep(1.0)
        qmp.close()
        t = time.monotonic()
        qsave = Q.save(sock, os.path.join(out, "guest-qemu-save.vms"))
        qsave_s = time.monotonic() - t
        qemu_ver = f"{version['qemu']['major']}.{version['qemu']['minor']}.{version['qemu']['micro']}"
    finally:
        if qemu.poll() is None:
            qemu.kill()
        qemu.wait()
        shutil.rmtree(sock_dir, ignore_errors=True)
        if os.path.exists(mem):
            os.unlink(mem)
    stream_size = os.path.getsize(stream)

    for level in [int(x) for x in levels.split(",")]:
        dest = os.path.join(out, f"mem-l{level}.vms")
        t = time.monotonic()
        api.save(raw, dest, level=level)
        rows[f"vmsnap save mem.raw --level {level}"] = (os.path.getsize(dest), time.monotonic() - t)
    dest = os.path.join(out, "stream.vms")
    t = time.monotonic()
    api.save(stream, dest)
    rows["vmsnap save stream.mig (migration reader, RAM + ROMs)"] = (os.path.getsize(dest), time.monotonic() - t)
    rows["vmsnap qemu save (memory + device state, 1 s later)"] = (qsave["bytes_out"], qsave_s)
    if shutil.which("zstd"):
        t = time.monotonic()
        subprocess.run(["zstd", "-q", "-f", "-3", "-T2", "--long=30", raw, "-o", raw + ".zst"], check=True)
        rows["zstd -3 -T2 --long=30 mem.raw (peer)"] = (os.path.getsize(raw + ".zst"), time.monotonic() - t)
    info = api.info(os.path.join(out, "mem-l3.vms"))
    qinfo = api.info(os.path.join(out, "guest-qemu-save.vms"))

    ps = info["page_size"]
    lines = [
        f"## Guest kernel arguments: {extra_append or '(the fixture default)'}",
        "",
        f"- guest: {mem_mib} MiB, QEMU {qemu_ver}, {accel}, {kernel_pkg}, the fixture workload "
        "(fixtures/qemu/make_capture.py), stopped 3+ ticks after the workload",
        f"- QEMU's migration stream of the stopped guest: {stream_size:,} bytes "
        "(zero pages as 9-byte records, every other page raw)",
        "",
        "| file | bytes | / migration stream | seconds |",
        "|---|---:|---:|---:|",
        f"| migration stream (QEMU) | {stream_size:,} | 1.000 | |",
    ]
    for name, (size, secs) in rows.items():
        lines.append(f"| {name} | {size:,} | {size / stream_size:.3f} | {secs:.2f} |")
    pages = info["pages"]
    total = sum(pages.values())
    lines += [
        "",
        "### What the guest's pages are (vmsnap info of mem.raw, level 3)",
        "",
        "| class | pages | share |",
        "|---|---:|---:|",
    ]
    for k, v in pages.items():
        lines.append(f"| {k} | {v:,} | {100 * v / total:.1f}% |")
    sb = info["stored_bytes"]
    lines += [
        "",
        f"- stored data pages: {info['data_pages']:,} ({info['data_pages'] * ps:,} bytes) in "
        f"{sb['data_frames']:,} bytes of zstd frames ({info['data_pages'] * ps / max(1, sb['data_frames']):.2f}x); "
        f"index {sb['index']:,} bytes",
        f"- pages_shared {info['pages_shared']:,}, pages_sharing {info['pages_sharing']:,}",
        f"- `vmsnap qemu save`: device state {qinfo['attachments'][0]['size']:,} bytes stored in "
        f"{qinfo['attachments'][0]['stored']:,}; memory {qinfo['stored_bytes']['data_frames']:,} bytes of frames",
        "",
        "### Where the non-zero pages are (ranges of 256+ pages)",
        "",
    ]
    lines += classify_ranges(raw, ps)
    lines.append("")
    for f in os.listdir(out):  # keep the directory small: the 1 GiB copies are not needed afterwards
        if f.endswith((".raw", ".mig", ".zst")):
            os.unlink(os.path.join(out, f))
    return lines


if __name__ == "__main__":
    sys.exit(main())
