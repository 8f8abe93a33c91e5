"""How much memory page sharing would save, within each VM and across a fleet of VMs.

Policy (the source designs): zero and pattern pages (a short repeated unit, the
classifier of vmsnap.pages) are shared only within their own VM; every other
page (SPARSE and OTHER) is a candidate for sharing across all VMs. Zero pages
are reported apart, like KSM's ksm_zero_pages, and all of them count as saved
(they map to the host's zero page).

The work is a map/reduce over page digests (16-byte BLAKE3, as the snapshot
writer uses):

- map, one task per dump (scan_dump): classify every page, count zero and
  pattern pages in memory (few distinct patterns), digest every SPARSE/OTHER
  page and route the digest to one of P partitions by its first bytes. Raw
  digests are spilled to disk when the buffer fills; at the end each partition
  is sorted and counted into fixed-width records (digest, pages, dump, class).
- reduce, one task per partition (reduce_partition): join the dumps' records
  of that partition and count fleet-wide sharing, the dump x dump matrix and
  the top shared contents.
- assemble: add the partitions up (all sums, so the order of tasks never
  changes the result).

Memory is a few batches of pages per worker plus one partition at a time, so
it stays flat as dumps are added; the local engine keeps the counted records in
one file per dump under a temporary directory. With --jobs N it reads raw files
in 64 MiB ranges on N forked worker processes (BLAKE3 over a single page holds
the GIL, so threads do not scale), other inputs as a stream on N threads. The
Dask engine runs the same map and reduce functions as tasks
(vmsnap.analyze.sharing_dask).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from ..errors import OutputError, UsageError

BATCH_BYTES = 4 << 20
SPILL_BUFFER = 32 << 20  # raw digests kept in memory per dump before spilling to disk
PARTITION_TARGET = 32 << 20  # aim: counted records per partition, summed over dumps
MAX_PARTITIONS = 4096
MAX_DUMPS = 65535
DEFAULT_TOP = 10

# Content classes carried in the records (the classifier's kinds).
CLS_SPARSE, CLS_OTHER = 2, 3  # == vmsnap.pages.SPARSE, OTHER
CLASS_NAMES = {CLS_SPARSE: "sparse", CLS_OTHER: "other"}
PATTERN_KINDS = ("byte", "word16", "word32", "word64", "periodic")

_RAW = [("d", "V16"), ("k", "u1")]  # a digest as produced, before counting
_COUNTED = [("d", "V16"), ("n", "<u4"), ("dump", "<u2"), ("k", "u1"), ("pad", "u1")]  # 24 bytes


def raw_dtype():
    import numpy as np

    return np.dtype(_RAW)


def counted_dtype():
    import numpy as np

    return np.dtype(_COUNTED)


def choose_partitions(total_bytes: int, page_size: int) -> int:
    """Partitions so that one partition's counted records stay near PARTITION_TARGET."""
    need = (total_bytes // page_size) * 24 // PARTITION_TARGET + 1
    p = 16
    while p < need and p < MAX_PARTITIONS:
        p *= 2
    return p


def check_partitions(p: int) -> None:
    if p < 1 or p > MAX_PARTITIONS or p & (p - 1):
        raise UsageError(f"partitions must be a power of two from 1 to {MAX_PARTITIONS}, got {p}")


# -- map: one dump -------------------------------------------------------------------------


@dataclass
class DumpScan:
    """What the map task of one dump produces (besides its counted partitions)."""

    index: int
    path: str
    format: str = "?"
    bytes: int = 0
    pages: int = 0
    zero: int = 0
    sparse: int = 0
    other: int = 0
    patterns: dict = field(default_factory=dict)  # unit bytes -> pages
    # within-VM sharing of SPARSE/OTHER contents, per class: [distinct, shared, sharing]
    classes: dict = field(default_factory=lambda: {CLS_SPARSE: [0, 0, 0], CLS_OTHER: [0, 0, 0]})


def scan_batch(batch, page_size: int):
    """Classify and digest one batch: (zero, {unit: pages}, sparse, other, raw records)."""
    import numpy as np

    from .. import pages as P

    pages = P.as_pages(batch, page_size)  # a region's tail: zero-padded, like the writer
    kind, period = P.classify(pages)
    counts = np.bincount(kind, minlength=4)
    patterns = _pattern_units(pages, kind, period)
    idx = np.flatnonzero(kind >= P.SPARSE)
    digests = P.page_digests(pages, idx)
    raw = np.empty(len(idx), dtype=raw_dtype())
    raw["d"] = np.frombuffer(digests, dtype="V16")
    raw["k"] = kind[idx]
    return int(counts[P.ZERO]), patterns, int(counts[P.SPARSE]), int(counts[P.OTHER]), raw


def _pattern_units(pages, kind, period) -> dict:
    import numpy as np

    from .. import pages as P

    idx = np.flatnonzero(kind == P.PATTERN)
    if idx.size == 0:
        return {}
    per = period[idx]
    width = int(per.max())
    head = pages[idx, :width].copy()
    head[np.arange(width)[None, :] >= per[:, None]] = 0
    keys = np.concatenate([per.astype("<u2").view(np.uint8).reshape(-1, 2), head], axis=1)
    uniq, counts = np.unique(np.ascontiguousarray(keys).view(f"V{width + 2}").ravel(), return_counts=True)
    out = {}
    for key, c in zip(uniq, counts.tolist()):
        raw = key.tobytes()
        out[raw[2:2 + int.from_bytes(raw[:2], "little")]] = c
    return out


class _Partitioner:
    """Routes raw digest records to partitions; spills them to disk when the buffer is full."""

    def __init__(self, partitions: int, spill_dir: str | None, buffer_bytes: int):
        import numpy as np

        self.p = partitions
        self.bits = partitions.bit_length() - 1
        self.spill_dir = spill_dir
        self.buffer_bytes = buffer_bytes
        self.parts: list[list] = [[] for _ in range(partitions)]
        self.buffered = 0
        self.spilled = [False] * partitions
        self.np = np

    def _path(self, p: int) -> str:
        return os.path.join(self.spill_dir, f"raw-{p:04x}.bin")

    def add(self, raw) -> None:
        np = self.np
        if len(raw) == 0:
            return
        if self.p == 1:
            self.parts[0].append(raw)
        else:
            head = np.ascontiguousarray(raw["d"]).view(np.uint8).reshape(-1, 16)
            key = (head[:, 0].astype(np.uint16) << 8 | head[:, 1]) >> (16 - self.bits)
            order = np.argsort(key, kind="stable")
            bounds = np.searchsorted(key[order], np.arange(self.p + 1))
            srt = raw[order]
            for p in np.flatnonzero(np.diff(bounds)).tolist():
                self.parts[p].append(srt[bounds[p]:bounds[p + 1]])
        self.buffered += raw.nbytes
        if self.buffered > self.buffer_bytes and self.spill_dir is not None:
            self.spill()

    def spill(self) -> None:
        for p, pieces in enumerate(self.parts):
            if pieces:
                with open(self._path(p), "ab") as fh:
                    for a in pieces:
                        a.tofile(fh)
                self.spilled[p] = True
                self.parts[p] = []
        self.buffered = 0

    def take(self, p: int):
        """All raw records of partition p (memory and disk), removing them."""
        np = self.np
        pieces = self.parts[p]
        self.parts[p] = []
        if self.spilled[p]:
            path = self._path(p)
            pieces = [np.fromfile(path, dtype=raw_dtype())] + pieces
            os.unlink(path)
        if not pieces:
            return np.zeros(0, dtype=raw_dtype())
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _digest_keys(d):
    """Two big-endian uint64 sort keys per 16-byte digest: sorting them sorts the digests bytewise."""
    import numpy as np

    k = np.ascontiguousarray(d).view(">u8").reshape(-1, 2)
    return k[:, 0].astype(np.uint64), k[:, 1].astype(np.uint64)


def count_partition(raw, dump: int):
    """Counted records (one per distinct digest, sorted by digest) of raw records of one dump."""
    import numpy as np

    out_dtype = counted_dtype()
    if len(raw) == 0:
        return np.zeros(0, dtype=out_dtype)
    hi, lo = _digest_keys(raw["d"])
    order = np.lexsort((lo, hi))
    hi, lo = hi[order], lo[order]
    start = np.ones(len(order), dtype=bool)
    start[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    first = np.flatnonzero(start)
    out = np.zeros(len(first), dtype=out_dtype)
    sel = order[first]
    out["d"] = raw["d"][sel]
    out["k"] = raw["k"][sel]
    out["n"] = np.diff(np.append(first, len(order)))
    out["dump"] = dump
    return out


def scan_dump(path: str, index: int, *, fmt: str = "auto", page_size: int = 4096, partitions: int = 16,
              jobs: int = 1, spill_dir: str | None = None, buffer_bytes: int = SPILL_BUFFER,
              sink: Callable[[int, object], None] | None = None, pool=None,
              progress: Callable[[int], None] | None = None) -> tuple[DumpScan, list]:
    """The map task of one dump.

    Counted partitions go to sink(p, records) in partition order when a sink is
    given (the local engine writes them to a file), else they are returned.
    Raw digests beyond buffer_bytes are spilled under spill_dir (a new
    directory inside it, removed before returning). With a process pool, a raw
    file is read by the pool's workers in ranges; any other input is read as a
    stream and its batches go to `jobs` threads.
    """
    from ..sources import open_source
    from ..sources.base import page_batches

    scan = DumpScan(index=index, path=path)
    work = tempfile.mkdtemp(prefix=f"dump{index}-", dir=spill_dir) if spill_dir is not None else None
    try:
        part = _Partitioner(partitions, work, buffer_bytes)
        with open_source(path, fmt) as source:
            scan.format = source.format_name
            ranges = _file_ranges(source, path, page_size) if pool is not None else None
            if ranges is not None:
                _absorb(scan, part, _map_ranges(pool, path, ranges, page_size, progress), page_size)
            else:
                for region, chunks in source.regions():
                    batches = page_batches(chunks, page_size, BATCH_BYTES)
                    _absorb(scan, part, _map_batches(batches, page_size, jobs, progress), page_size)
        out = []
        for p in range(partitions):
            counted = count_partition(part.take(p), index)
            _add_within(scan, counted)
            if sink is not None:
                sink(p, counted)
            else:
                out.append(counted)
        return scan, out
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _absorb(scan: DumpScan, part: "_Partitioner", results: Iterable, page_size: int) -> None:
    for result in results:
        if isinstance(result, int):  # whole zero pages known without reading them
            scan.zero += result
            scan.pages += result
            scan.bytes += result * page_size
            continue
        nbytes, (zero, patterns, sparse, other, raw) = result
        scan.bytes += nbytes
        scan.zero += zero
        scan.sparse += sparse
        scan.other += other
        scan.pages += zero + sparse + other + sum(patterns.values())
        for unit, c in patterns.items():
            scan.patterns[unit] = scan.patterns.get(unit, 0) + c
        part.add(raw)


# -- raw files in ranges, on worker processes ---------------------------------------------------

RANGE_BYTES = 64 << 20  # a multiple of every page size (powers of two up to 16 MiB)


def _file_ranges(source, path: str, page_size: int) -> list[tuple[int, int]] | None:
    """(offset, length) pieces of a raw regular file, or None when the input is not one."""
    from ..sources.raw import RawSource

    if type(source) is not RawSource or path == "-" or source.size_hint is None:
        return None
    size = source.size_hint
    step = max(RANGE_BYTES, page_size)
    return [(off, min(step, size - off)) for off in range(0, size, step)]


def scan_range(path: str, offset: int, length: int, page_size: int):
    """scan_batch over bytes [offset, offset+length) of a file, summed: runs in a worker process."""
    import numpy as np

    from ..errors import InputError
    from ..sources.base import page_batches, sparse_file_chunks

    zero = sparse = other = 0
    patterns: dict = {}
    raws = []
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        # Holes are zero pages counted, not read (a 1 TiB sparse file took minutes here, 0.6 s with -j 1).
        for batch in page_batches(sparse_file_chunks(fd, offset, length, path), page_size, BATCH_BYTES):
            if isinstance(batch, int):
                zero += batch
                continue
            z, pat, sp, ot, raw = scan_batch(batch, page_size)
            zero, sparse, other = zero + z, sparse + sp, other + ot
            for unit, c in pat.items():
                patterns[unit] = patterns.get(unit, 0) + c
            raws.append(raw)
    except OSError as exc:
        raise InputError(f"{path}: read failed: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    raw = np.concatenate(raws) if raws else np.zeros(0, dtype=raw_dtype())
    return zero, patterns, sparse, other, raw


def _map_ranges(pool, path: str, ranges, page_size: int, progress) -> Iterator:
    """scan_range over the ranges on the pool, results in order, a few ranges in flight per worker."""
    pending: deque = deque()
    ahead = 2 * getattr(pool, "_max_workers", 2)
    try:
        for off, length in ranges:
            pending.append((length, pool.submit(scan_range, path, off, length, page_size)))
            while len(pending) > ahead:
                yield _done(pending.popleft(), progress)
        while pending:
            yield _done(pending.popleft(), progress)
    finally:
        for _, f in pending:
            f.cancel()


def process_pool(workers: int):
    """A pool of worker processes forked now, before this process starts any thread.

    Fork makes workers cheap (they share the parent's imported modules); the
    workers are started here, while the caller has no other thread running, so
    no lock can be held across the fork.

    The workers are forked with SIGINT blocked, and keep it blocked: Ctrl-C reaches
    the whole process group, and a worker interrupted inside the pool's queues could
    leave the parent waiting for it forever at exit. The parent alone stops, shuts
    the pool down (the workers finish the range in hand) and exits 130. A Ctrl-C
    during the fork waits, blocked, until the workers are there.
    """
    import multiprocessing
    import signal
    from concurrent.futures import ProcessPoolExecutor

    # Warm every lazy import of the hot path once, here, instead of once per worker
    # (numpy 2 imports numpy.ma on the first np.unique: ~50 ms of CPU each).
    page = b"\x6b" * 4096 + bytes(4088) + b"\x01" * 8 + bytes(range(256)) * 16
    scan_batch(page, 4096)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        try:
            pool.submit(int).result()  # forks every worker (fork start method: all at once)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a Ctrl-C that came meanwhile is raised now
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    return pool


def _map_batches(batches: Iterator, page_size: int, jobs: int, progress) -> Iterator:
    """scan_batch over batches, on `jobs` threads (numpy and BLAKE3 release the GIL)."""
    if jobs <= 1:
        for b in batches:
            if isinstance(b, int):
                if progress:
                    progress(b * page_size)
                yield b
            else:
                r = scan_batch(b, page_size)
                if progress:
                    progress(len(b))
                yield len(b), r
        return
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(jobs, thread_name_prefix="vmsnap-sharing") as pool:
        try:
            for b in batches:
                if isinstance(b, int):
                    pending.append((b * page_size, b))
                else:
                    pending.append((len(b), pool.submit(scan_batch, b, page_size)))
                while len(pending) > 2 * jobs:
                    yield _done(pending.popleft(), progress)
            while pending:
                yield _done(pending.popleft(), progress)
        finally:
            for _, f in pending:
                if not isinstance(f, int):
                    f.cancel()


def _done(item, progress):
    nbytes, f = item
    if progress:
        progress(nbytes)
    return f if isinstance(f, int) else (nbytes, f.result())


def _add_within(scan: DumpScan, counted) -> None:
    import numpy as np

    for cls, acc in scan.classes.items():
        n = counted["n"][counted["k"] == cls].astype(np.int64)
        dup = n[n >= 2]
        acc[0] += len(n)
        acc[1] += len(dup)
        acc[2] += int(dup.sum()) - len(dup)


# -- reduce: one partition --------------------------------------------------------------------


@dataclass
class PartitionResult:
    contents: int = 0  # distinct SPARSE/OTHER contents in the fleet
    shared: int = 0  # contents with >= 2 pages in the fleet
    sharing: int = 0  # sum of (pages - 1) over those
    cross_contents: int = 0  # contents present in >= 2 dumps
    cross_pages: int = 0  # pages of those contents, all dumps
    cross_saved: int = 0  # sum of (dumps - 1) over those: saved only by sharing across VMs
    pair_masks: list = field(default_factory=list)  # (dump list, contents) for contents in >= 2 dumps
    top: list = field(default_factory=list)  # (pages, digest bytes, class, [(dump, pages)])


def reduce_partition(parts: list, n_dumps: int, top: int = DEFAULT_TOP) -> PartitionResult:
    """Join one partition's counted records of every dump."""
    import numpy as np

    parts = [a for a in parts if len(a)]
    res = PartitionResult()
    if not parts:
        return res
    rec = np.concatenate(parts) if len(parts) > 1 else parts[0]
    hi, lo = _digest_keys(rec["d"])
    order = np.lexsort((rec["dump"], lo, hi))
    rec, hi, lo = rec[order], hi[order], lo[order]
    start = np.ones(len(rec), dtype=bool)
    start[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    first = np.flatnonzero(start)
    group = np.cumsum(start) - 1
    pages = np.add.reduceat(rec["n"].astype(np.int64), first)
    dumps = np.diff(np.append(first, len(rec)))  # one record per (content, dump)
    res.contents = len(first)
    multi = pages >= 2
    res.shared = int(multi.sum())
    res.sharing = int(pages[multi].sum()) - res.shared
    cross = dumps >= 2
    res.cross_contents = int(cross.sum())
    res.cross_pages = int(pages[cross].sum())
    res.cross_saved = int(dumps[cross].sum()) - res.cross_contents
    if res.cross_contents:
        words = -(-n_dumps // 64)
        in_cross = cross[group]
        g = np.cumsum(cross) - 1  # index among cross groups
        masks = np.zeros((res.cross_contents, words), dtype=np.uint64)
        d = rec["dump"][in_cross].astype(np.int64)
        np.bitwise_or.at(masks, (g[group[in_cross]], d // 64), np.left_shift(np.uint64(1), (d % 64).astype(np.uint64)))
        uniq, counts = np.unique(masks.view(f"V{8 * words}").ravel(), return_counts=True)
        for m, c in zip(uniq, counts.tolist()):
            bits = np.unpackbits(np.frombuffer(m.tobytes(), dtype=np.uint8), bitorder="little")
            res.pair_masks.append((np.flatnonzero(bits).tolist(), c))
    if top > 0 and res.shared:
        cand = np.flatnonzero(multi)
        if len(cand) > top:  # every group at least as large as the top-th largest, ties included
            kth = np.partition(pages[cand], len(cand) - top)[len(cand) - top]
            cand = cand[pages[cand] >= kth]
        cand = cand[np.lexsort((lo[first[cand]], hi[first[cand]], -pages[cand]))][:top]
        ends = np.append(first, len(rec))
        for gi in cand.tolist():
            s, e = int(ends[gi]), int(ends[gi + 1])
            res.top.append((int(pages[gi]), rec["d"][s].tobytes(), int(rec["k"][s]),
                            list(zip(rec["dump"][s:e].tolist(), rec["n"][s:e].tolist()))))
    return res


# -- assemble ----------------------------------------------------------------------------------


def assemble(scans: list[DumpScan], results: Iterable[PartitionResult], page_size: int,
             top: int = DEFAULT_TOP) -> dict:
    """The report: per dump, fleet under the policy and everywhere, matrix, top contents."""
    from blake3 import blake3

    from .. import pages as P

    scans = sorted(scans, key=lambda s: s.index)
    n = len(scans)
    matrix = [[0] * n for _ in range(n)]
    fleet = PartitionResult()
    tops = []
    for r in results:
        for name in ("contents", "shared", "sharing", "cross_contents", "cross_pages", "cross_saved"):
            setattr(fleet, name, getattr(fleet, name) + getattr(r, name))
        for dumps, c in r.pair_masks:
            for i in dumps:
                for j in dumps:
                    if i != j:
                        matrix[i][j] += c
        tops.extend((pages, digest, CLASS_NAMES[k], None, where) for pages, digest, k, where in r.top)

    dumps = []
    pattern_fleet: dict[bytes, list] = {}  # unit -> [(dump, pages)]
    for s in scans:
        sp, ot = s.classes[CLS_SPARSE], s.classes[CLS_OTHER]
        matrix[s.index][s.index] = sp[0] + ot[0]
        pat_pages = sum(s.patterns.values())
        pat_shared = sum(1 for c in s.patterns.values() if c >= 2)
        pat_sharing = pat_pages - len(s.patterns)
        kinds = {k: 0 for k in PATTERN_KINDS}
        for unit, c in s.patterns.items():
            kinds[P.pattern_kind_name(len(unit))] += c
            pattern_fleet.setdefault(unit, []).append((s.index, c))
        shared = pat_shared + sp[1] + ot[1]
        sharing = pat_sharing + sp[2] + ot[2]
        saved = (s.zero + sharing) * page_size
        dumps.append({
            "index": s.index, "path": s.path, "format": s.format, "bytes": s.bytes, "pages": s.pages,
            "zero_pages": s.zero, "pattern_pages": pat_pages, "pattern_kinds": kinds,
            "sparse_pages": s.sparse, "other_pages": s.other,
            "distinct_contents": (1 if s.zero else 0) + len(s.patterns) + sp[0] + ot[0],
            "pages_shared": shared, "pages_sharing": sharing,
            "pages_unshared": s.pages - s.zero - shared - sharing,
            "by_class": {
                "pattern": {"pages": pat_pages, "contents": len(s.patterns), "pages_shared": pat_shared,
                            "pages_sharing": pat_sharing},
                "sparse": {"pages": s.sparse, "contents": sp[0], "pages_shared": sp[1], "pages_sharing": sp[2]},
                "other": {"pages": s.other, "contents": ot[0], "pages_shared": ot[1], "pages_sharing": ot[2]},
            },
            "bytes_saved": saved, "percent_saved": _pct(saved, s.pages * page_size),
        })

    total_pages = sum(s.pages for s in scans)
    zero = sum(s.zero for s in scans)
    pat_pages = sum(d["pattern_pages"] for d in dumps)
    within_pat_shared = sum(d["by_class"]["pattern"]["pages_shared"] for d in dumps)
    within_pat_sharing = sum(d["by_class"]["pattern"]["pages_sharing"] for d in dumps)
    # Sharing patterns everywhere: one copy per distinct pattern in the whole fleet.
    every_pat_shared = sum(1 for w in pattern_fleet.values() if sum(c for _, c in w) >= 2)
    every_pat_sharing = pat_pages - len(pattern_fleet)
    policy = _totals(zero, within_pat_shared + fleet.shared, within_pat_sharing + fleet.sharing,
                     total_pages, page_size)
    everywhere = _totals(zero, every_pat_shared + fleet.shared, every_pat_sharing + fleet.sharing,
                         total_pages, page_size)
    within = sum(d["pages_sharing"] for d in dumps)

    for unit, where in pattern_fleet.items():
        pages = sum(c for _, c in where)
        if pages >= 2:
            digest = blake3(P.render_pattern(unit, page_size)).digest(length=16)
            tops.append((pages, digest, "pattern", P.pattern_kind_name(len(unit)), where))
    tops.sort(key=lambda t: (-t[0], t[1]))
    top_list = [{"digest": digest.hex(), "pages": pages, "class": cls, "pattern": pname,
                 "shared_across_vms": cls != "pattern",
                 "dumps": [{"dump": d, "pages": c} for d, c in sorted(where)]}
                for pages, digest, cls, pname, where in tops[:top]]

    return {
        "page_size": page_size,
        "sharing_policy": "zero and pattern pages are shared within their own VM only; sparse and other "
                          "pages across all VMs",
        "dumps": dumps,
        "fleet": {
            "dumps": n, "pages": total_pages, "bytes": sum(s.bytes for s in scans),
            "zero_pages": zero, "pattern_pages": pat_pages,
            "sparse_pages": sum(s.sparse for s in scans), "other_pages": sum(s.other for s in scans),
            "distinct_contents": fleet.contents + len(pattern_fleet) + (1 if zero else 0),
            "policy": policy,
            "everywhere": everywhere,
            "difference": {"pages": everywhere["pages_sharing"] - policy["pages_sharing"],
                           "bytes": everywhere["bytes_saved"] - policy["bytes_saved"]},
            "within_vms": {"pages_sharing": within, "bytes_saved": (zero + within) * page_size},
            "cross_vm": {"contents": fleet.cross_contents, "pages": fleet.cross_pages,
                         "pages_saved": fleet.cross_saved, "bytes_saved": fleet.cross_saved * page_size},
        },
        "matrix": matrix,
        "top": top_list,
    }


def _totals(zero: int, shared: int, sharing: int, pages: int, page_size: int) -> dict:
    saved = (zero + sharing) * page_size
    return {"zero_pages": zero, "pages_shared": shared, "pages_sharing": sharing,
            "pages_unshared": pages - zero - shared - sharing, "bytes_saved": saved,
            "percent_saved": _pct(saved, pages * page_size)}


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def _map_to_file(path, index, fmt, page_size, partitions, spill_dir, buffer_bytes, out_path, jobs=1,
                 pool=None, progress=None) -> tuple[DumpScan, list[int]]:
    """The map task of the local engine: counted partitions of one dump to one file, and their offsets."""
    offsets = [0]
    with open(out_path, "wb") as fh:
        def sink(p, counted):
            counted.tofile(fh)
            offsets.append(offsets[-1] + len(counted))
        scan, _ = scan_dump(path, index, fmt=fmt, page_size=page_size, partitions=partitions, jobs=jobs,
                            spill_dir=spill_dir, buffer_bytes=buffer_bytes, sink=sink, pool=pool,
                            progress=progress)
    return scan, offsets


# -- engines -----------------------------------------------------------------------------------


def _check_inputs(paths: list[str], page_size: int, top: int) -> None:
    from ..format.writer import check_page_size

    if not paths:
        raise UsageError("no dumps given")
    if len(paths) > MAX_DUMPS:
        raise UsageError(f"at most {MAX_DUMPS} dumps, got {len(paths)}")
    if top < 0:
        raise UsageError(f"--top must not be negative, got {top}")
    check_page_size(page_size)
    if sum(1 for p in paths if p == "-") > 1:
        raise UsageError("stdin ('-') can be given only once")
    from ..sources import is_stream

    streams = [p for p in paths if p != "-" and is_stream(p)]
    for p in streams:
        if streams.count(p) > 1:
            raise UsageError(f"{p}: a FIFO or device can be read only once; give it once")


def _image_sizes(paths: list[str], fmt: str) -> tuple[list[int | None], int]:
    """Image bytes of each dump (None when unknown: stdin, a FIFO), and how many are raw files.

    Every dump that can be read twice is opened once first, so a missing or
    malformed 8th dump is reported before the first seven are read.
    """
    from ..sources import is_stream, open_source

    sizes, raw_files = [], 0
    for p in paths:
        if p == "-" or is_stream(p):  # what is read from it is gone: read it once, when scanned
            sizes.append(None)
            continue
        with open_source(p, fmt) as source:
            sizes.append(source.size_hint)
            raw_files += _file_ranges(source, p, 4096) is not None
    return sizes, raw_files


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def analyze(paths: list[str], *, fmt: str = "auto", page_size: int = 4096, top: int = DEFAULT_TOP,
            jobs: int | None = None, partitions: int | None = None, temp_dir: str | None = None,
            scheduler: str | None = None, buffer_bytes: int = SPILL_BUFFER,
            progress: bool | None = False) -> dict:
    """Analyse page sharing in the dumps `paths` (see the module docstring and vmsnap-analyze-sharing(1))."""
    from ..format.defaults import default_jobs

    paths = list(paths)
    _check_inputs(paths, page_size, top)
    jobs = jobs or default_jobs()
    if partitions is not None:
        check_partitions(partitions)
    if scheduler is not None:  # the workers open the dumps; this host may not see them
        from .sharing_dask import analyze_dask

        if partitions is None:
            partitions = choose_partitions(sum(_file_size(p) for p in paths), page_size)
        return analyze_dask(paths, scheduler, fmt=fmt, page_size=page_size, top=top, jobs=jobs,
                            partitions=partitions, buffer_bytes=buffer_bytes)
    if temp_dir is not None and not os.path.isdir(temp_dir):
        raise UsageError(f"--temp-dir {temp_dir}: not a directory")
    sizes, raw_files = _image_sizes(paths, fmt)
    if partitions is None:
        partitions = choose_partitions(sum(s or 0 for s in sizes), page_size)
    total = None if None in sizes else sum(sizes)
    import multiprocessing

    processes = jobs > 1 and raw_files > 0 and "fork" in multiprocessing.get_all_start_methods()
    return _analyze_local(paths, fmt, page_size, top, jobs, partitions, temp_dir, buffer_bytes, progress, total,
                          processes=processes)


def _analyze_local(paths, fmt, page_size, top, jobs, partitions, temp_dir, buffer_bytes, progress,
                   total, processes=False) -> dict:
    import numpy as np

    from ..progress import progress_bar

    try:
        work = tempfile.mkdtemp(prefix="vmsnap-sharing-", dir=temp_dir)
    except OSError as exc:
        raise OutputError(f"cannot create a temporary directory in {temp_dir or tempfile.gettempdir()}: "
                          f"{exc.strerror or exc}") from None
    try:
        tasks = [(path, i, fmt, page_size, partitions, work, buffer_bytes, os.path.join(work, f"dump{i}.cnt"))
                 for i, path in enumerate(paths)]
        pool = process_pool(jobs) if processes else None  # before the progress bar starts its thread
        try:
            with progress_bar(total, "sharing", progress) as update:
                maps = [_map_to_file(*t, jobs=jobs, pool=pool, progress=update) for t in tasks]
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        scans = [scan for scan, _ in maps]
        files = [(t[-1], offsets) for t, (_, offsets) in zip(tasks, maps)]
        dt = counted_dtype()

        def reduce_one(p):
            parts = [np.fromfile(f, dtype=dt, count=off[p + 1] - off[p], offset=off[p] * dt.itemsize)
                     for f, off in files]
            return reduce_partition(parts, len(paths), top)

        if jobs > 1 and partitions > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(jobs, partitions)) as pool:
                results = list(pool.map(reduce_one, range(partitions)))
        else:
            results = [reduce_one(p) for p in range(partitions)]
        return assemble(scans, results, page_size, top)
    except OSError as exc:
        from ..atomic import os_error_message

        raise OutputError(f"temporary files in {temp_dir or tempfile.gettempdir()}: "
                          f"{os_error_message(exc)}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
