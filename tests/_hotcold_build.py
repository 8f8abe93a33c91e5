"""Build scan inputs whose hot, warm, cold and never-touched pages are known by construction.

A Workload is a bool matrix accessed[period, page]. The same workload can be
written as every scan format vmsnap reads, so one expected answer (derived
from the documented state-machine rules, see expected_levels) checks them all.
"""

from __future__ import annotations

import os

import numpy as np

PS = 4096


def classic_workload(n_pages: int = 64, periods: int = 6, seed: int = 0):
    """Page groups by construction:

    hot:   accessed in every period
    warm:  accessed in every period except the last one
    cool:  accessed in every period except the last two
    cold:  accessed only in period 0
    never: never accessed
    Groups are interleaved in address order (page i -> group i % 5) so a
    reader that mixes up page numbers fails.
    """
    groups = np.arange(n_pages) % 5  # 0 hot, 1 warm, 2 cool, 3 cold, 4 never
    acc = np.zeros((periods, n_pages), dtype=bool)
    acc[:, groups == 0] = True
    acc[: periods - 1, groups == 1] = True
    acc[: periods - 2, groups == 2] = True
    acc[0, groups == 3] = True
    return acc, groups


def expected_levels(acc: np.ndarray, levels: int = 4, demote_after: int = 1, promote_by: int | None = None):
    """Scalar reference model, written from the rules in vmsnap/analyze/hotcold.py's docstring."""
    k = levels if promote_by is None else promote_by
    periods, n = acc.shape
    out = np.zeros(n, dtype=np.uint8)
    for page in range(n):
        level, idle = 0, 0
        for t in range(periods):
            if acc[t, page]:
                level = min(levels, level + k)
                idle = 0
            else:
                idle += 1
                if idle >= demote_after:
                    idle = 0
                    if level > 1:
                        level -= 1
        out[page] = level
    return out


def write_dumps(directory, acc: np.ndarray, page_size: int = PS, seed: int = 1, tail: int = 0):
    """len(acc)+1 raw dumps; page p of dump t+1 differs from dump t exactly when acc[t, p].

    `tail` adds a partial page of that many bytes at the end (its "page" follows acc's last column
    when acc has one more column than whole pages).
    """
    periods, n = acc.shape
    size = n * page_size if not tail else (n - 1) * page_size + tail
    rng = np.random.default_rng(seed)
    mem = rng.integers(0, 256, size, dtype=np.uint8)
    paths = []
    for t in range(periods + 1):
        if t:
            for p in np.flatnonzero(acc[t - 1]):
                # change one byte at a page-dependent position (not always the first byte)
                off = p * page_size + (p * 37 + t * 11) % (page_size if p * page_size + page_size <= size else tail)
                mem[off] ^= 0xFF
        path = os.path.join(str(directory), f"dump{t:03d}.raw")
        mem.tofile(path)
        paths.append(path)
    return paths


def idle_words_reference(accessed: np.ndarray) -> bytes:
    """Kernel layout built bit by bit from its definition: bit i of u64 word j is PFN 64*j+i, 1 = idle."""
    n = accessed.size
    words = (n + 63) // 64
    out = bytearray()
    for j in range(words):
        w = 0
        for i in range(64):
            pfn = 64 * j + i
            idle = True if pfn >= n else not bool(accessed[pfn])
            if idle:
                w |= 1 << i
        out += w.to_bytes(8, "little")
    return bytes(out)


def write_idle_dir(directory, acc: np.ndarray):
    os.makedirs(directory, exist_ok=True)
    for t in range(acc.shape[0]):
        with open(os.path.join(str(directory), f"scan-{t:04d}"), "wb") as fh:
            fh.write(idle_words_reference(acc[t]))
    return str(directory)


def damon_snapshots(acc: np.ndarray, base: int = 0x7F0000000000, page_size: int = PS):
    """One DAMON region per page (nr_accesses 0 or 5), snapshots 100 ms apart."""
    snaps = []
    for t in range(acc.shape[0]):
        regs = [(base + p * page_size, base + (p + 1) * page_size, 5 if acc[t, p] else 0)
                for p in range(acc.shape[1])]
        snaps.append((t * 100_000_000, (t + 1) * 100_000_000, regs))
    return snaps


class TwoRegionSource:
    """A stand-in for a multi-region reader (ELF, QEMU): a raw file split into two regions,
    the second at 4 GiB, yielded in odd-sized chunks. Registered in tests via vmsnap.sources.FORMATS."""

    format_name = "tworegion"
    SPLIT_PAGES = 3

    def __init__(self, path):
        self.path = path
        self.description = f"tworegion:{path}"

    def regions(self):
        from vmsnap.sources.base import Region

        data = open(self.path, "rb").read()
        cut = self.SPLIT_PAGES * PS

        def chunks(buf, step=1000):
            for i in range(0, len(buf), step):
                yield buf[i : i + step]

        yield Region("low", 0, cut), chunks(data[:cut])
        yield Region("high", 1 << 32, len(data) - cut), chunks(data[cut:], 777)

    size_hint = None

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass
