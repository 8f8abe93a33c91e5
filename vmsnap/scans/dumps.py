"""A series of memory dumps of one VM: a page whose bytes changed between two
consecutive dumps counts as accessed (written) in that period.

N dumps give N-1 periods; period i compares dump i with dump i+1 and carries
the modification time of dump i+1 as its timestamp. Every dump is opened with
``vmsnap.sources.open_source`` (raw today; any reader that yields the same
region layout works), and all dumps are streamed in lockstep, one block of
each at a time, so each byte is read exactly once and memory stays at
N blocks plus one byte per page per period. Reads only see writes: a page
that was read but not written looks idle, so this is a lower bound on the
working set (the scan-based formats see reads too).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

from ..errors import InputError, UsageError
from ..sources.base import ZERO_CHUNK, is_zero_chunk, next_data
from .base import Period, ScanSeries, Segment

DEFAULT_PAGE_SIZE = 4096
BLOCK = 4 << 20  # bytes compared per dump per step (the raw reader's chunk size)
USE_MMAP = True  # raw regular files are compared in place, without read() copies


def _next_or_none(it):
    return next(it, None)


def _blocks(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a stream of chunks into pieces of exactly `size` bytes (the last may be shorter).

    A piece made only of zero chunks (a reader's zero runs, never read) is a zero chunk
    itself, so that the comparison can skip it: a .vms of a sparse 1 TiB guest took
    minutes comparing zeros with zeros."""
    zero_block = memoryview(ZERO_CHUNK)[:size] if size <= len(ZERO_CHUNK) else None
    buf = bytearray()
    zeros = 0  # zero bytes begun as a piece of its own (buf is empty meanwhile)
    for chunk in chunks:
        if zero_block is not None and is_zero_chunk(chunk):
            rest = len(chunk)
            if buf:  # a piece begun with data ends with some of these zeros
                take = min(rest, size - len(buf))
                buf += chunk[:take]
                rest -= take
                if len(buf) == size:
                    yield bytes(buf)
                    buf.clear()
            zeros += rest  # buf is empty whenever rest is left
            while zeros >= size:
                yield zero_block
                zeros -= size
            continue
        if zeros:  # the piece begun with zeros goes on with data
            buf += bytes(zeros)
            zeros = 0
        if not buf and len(chunk) == size:
            yield chunk  # the common case: no copy
            continue
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if zeros:
        buf += bytes(zeros)
    if buf:
        yield bytes(buf)


class _Comparer:
    """Per-page "differs" of two equal-length buffers, vectorised over a whole block."""

    def __init__(self, page_size: int, block: int):
        import numpy as np

        self.ps = page_size
        self._ne = np.empty(block // 8, dtype=bool)

    def __call__(self, a: bytes, b: bytes):
        import numpy as np

        ps = self.ps
        n = len(a)
        full = n // ps
        out = np.empty(-(-n // ps), dtype=bool)
        if full:
            words = full * ps // 8
            x = np.frombuffer(a, dtype=np.uint64, count=words)
            y = np.frombuffer(b, dtype=np.uint64, count=words)
            ne = self._ne[:words]
            np.not_equal(x, y, out=ne)
            # 8 bools = one uint64: a page differs when any of its ps/64 words is non-zero
            out[:full] = ne.view(np.uint64).reshape(full, ps // 64).any(axis=1)
        if n % ps:
            out[full] = bytes(a[full * ps :]) != bytes(b[full * ps :])
        return out


def _compare_pairs(out, bufs: list, n: int, compare) -> None:
    """out[i] = which pages of one block differ between dumps i and i+1, from each dump's n bytes
    of it; None for a dump whose block is zeros known without reading it (a reader's zero run, a
    hole of a mapped file). Both paths use it: out is a zeroed slice of the mapped path's matrix,
    or the generic path's rows of this block (its page count is not known up front)."""
    import numpy as np

    zeros = None
    for i in range(len(bufs) - 1):
        a, b = bufs[i], bufs[i + 1]
        if a is None and b is None:
            continue  # the same zeros: unchanged, out[i] stays False
        if (a is None or b is None) and zeros is None:  # a view of the shared zeros, no allocation, where it fits
            zeros = memoryview(ZERO_CHUNK)[:n] if n <= len(ZERO_CHUNK) else np.zeros(n, np.uint8)
        out[i] = compare(zeros if a is None else a, zeros if b is None else b)


def _compare_block(matrix, first_page: int, maps: list, off: int, n: int, compare) -> None:
    """Fill matrix[:, first_page:] for bytes [off, off+n) of mapped dumps (None: a hole there).
    Its views of the maps end with it, so the maps can then be advised or closed."""
    import numpy as np

    views = [None if m is None else np.frombuffer(m, dtype=np.uint8, count=n, offset=off) for m in maps]
    _compare_pairs(matrix[:, first_page:first_page + -(-n // compare.ps)], views, n, compare)


class DumpScans(ScanSeries):
    format_name = "dumps"

    def __init__(self, paths: Sequence[str], page_size: int = DEFAULT_PAGE_SIZE,
                 source_format: str = "auto",
                 progress: Callable[[int], None] | None = None, threads: int = 2,
                 use_mmap: bool | None = None):
        if len(paths) < 2:
            raise UsageError("a dump series needs at least two dumps (N dumps give N-1 periods)")
        if "-" in paths:
            raise UsageError("dumps are read in lockstep: stdin ('-') cannot be one of them")
        if page_size < 64 or page_size & (page_size - 1):
            raise UsageError(f"page size {page_size} is not a power of two >= 64")
        super().__init__(paths, page_size)
        self.source_format = source_format
        self.threads = max(1, threads)  # reader threads of the generic path (read-ahead)
        # raw regular files: compare in place via mmap (None: the module default)
        self.use_mmap = USE_MMAP if use_mmap is None else use_mmap
        self.progress = progress
        self._matrix = None  # (n_periods, n_pages) bool, filled by _compute
        self._formats: list[str] = []  # each input's source format, known once opened
        self._told_pages: int | None = None  # n_pages as answered before the comparison (0: unknown)
        self._segments: list[Segment] = []
        self.bytes_read = 0
        self.read_path = "read"  # "mmap" when the raw-file fast path ran

    @property
    def size_hint(self) -> int | None:
        total = 0
        for p in self.inputs:
            try:
                total += os.stat(p).st_size
            except OSError:
                return None
        return total

    def _compute(self) -> None:
        self._compare_all()
        self._check_told_pages()

    def _compare_all(self) -> None:
        import numpy as np

        from ..sources import open_source

        ps = self.page_size
        block = max(BLOCK - BLOCK % ps, ps)
        compare = _Comparer(ps, block)
        sources = []
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="vmsnap-dump-read")
        try:
            for p in self.inputs:
                sources.append(open_source(p, self.source_format))
            self._formats = [src.format_name for src in sources]
            if self.use_mmap and self._compute_mapped(sources, block, compare):
                return
            region_iters = [s.regions() for s in sources]
            parts_by_region = []
            segments: list[Segment] = []
            first_page = 0
            while True:
                heads = [next(it, None) for it in region_iters]
                if all(h is None for h in heads):
                    break
                for p, h in zip(self.inputs, heads):
                    if h is None:
                        raise InputError(f"{p}: has fewer memory regions than {self.inputs[0]}")
                ref = heads[0][0]
                for p, (reg, _) in zip(self.inputs[1:], heads[1:]):
                    if (reg.name, reg.base) != (ref.name, ref.base) or (
                        reg.size is not None and ref.size is not None and reg.size != ref.size
                    ):
                        raise InputError(
                            f"{p}: region {reg.name!r} at {reg.base:#x} ({reg.size} bytes) does not match "
                            f"{self.inputs[0]}: {ref.name!r} at {ref.base:#x} ({ref.size} bytes); "
                            "a dump series must be of one VM with one memory layout"
                        )
                streams = [_blocks(chunks, block) for _, chunks in heads]
                parts = []
                offset = 0
                pending = pool.map(_next_or_none, streams)
                while True:
                    bufs = list(pending)
                    if any(b is not None for b in bufs):
                        # read the next blocks while this one is compared (reads release the GIL)
                        pending = pool.map(_next_or_none, streams)
                    else:
                        pending = iter(())
                    if all(b is None for b in bufs):
                        break
                    lens = {len(b) if b is not None else 0 for b in bufs}
                    if len(lens) > 1:
                        short = min(range(len(bufs)), key=lambda i: 0 if bufs[i] is None else len(bufs[i]))
                        raise InputError(
                            f"{self.inputs[short]}: offset {offset + (0 if bufs[short] is None else len(bufs[short]))}: "
                            f"region {ref.name!r} ends early; the other dumps go on"
                        )
                    n = lens.pop()
                    rows = np.zeros((len(bufs) - 1, -(-n // ps)), dtype=bool)
                    _compare_pairs(rows, [None if is_zero_chunk(b) else b for b in bufs], n, compare)
                    parts.append(rows)
                    offset += n
                    self.bytes_read += n * len(bufs)
                    if self.progress is not None:
                        self.progress(n * len(bufs))
                pages = -(-offset // ps)
                segments.append(Segment(ref.name, ref.base, first_page, pages))
                first_page += pages
                if parts:
                    parts_by_region.append(np.concatenate(parts, axis=1))
        finally:
            pool.shutdown(wait=True)
            for s in sources:
                s.close()
        if first_page == 0:
            raise InputError(f"{self.inputs[0]}: the dumps are empty")
        self._segments = segments
        self._matrix = np.concatenate(parts_by_region, axis=1)

    def _compute_mapped(self, sources, block: int, compare) -> bool:
        """Fast path for raw regular files: compare straight out of the page cache via
        read-only mmap, no copies. Returns False (generic path) for any other reader.

        The sizes are checked against what the reader saw at open and again before
        each block; only a dump cut during the compare of one block (milliseconds)
        can still fault (SIGBUS).
        """
        import mmap

        import numpy as np

        from ..sources.raw import RawSource

        if not all(type(s) is RawSource and s.path != "-" and s.size_hint is not None for s in sources):
            return False
        size = sources[0].size_hint
        for src in sources[1:]:
            if src.size_hint != size:
                return False  # the generic path reports the mismatch
        maps, fds = [], []
        try:
            for src in sources:
                fd = os.open(src.path, os.O_RDONLY)
                fds.append(fd)
                now = os.fstat(fd).st_size
                if now < size:
                    raise InputError(f"{src.path}: offset {now}: truncated, {size - now} bytes missing")
                if size:
                    m = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
                    maps.append(m)
                    if hasattr(m, "madvise"):
                        m.madvise(mmap.MADV_SEQUENTIAL)
            ps = self.page_size
            matrix = np.zeros((len(fds) - 1, -(-size // ps)), dtype=bool)
            data_at = [-1] * len(fds)  # each dump's next data offset (SEEK_DATA), as last asked; -1: not yet
            for off in range(0, size, block):
                n = min(block, size - off)
                # A dump cut under us would fault (SIGBUS) on its first missing page: check
                # the sizes before each block, so only a cut within this block's compare can.
                for src, fd in zip(sources, fds):
                    now = os.fstat(fd).st_size
                    if now < size:
                        raise InputError(f"{src.path}: offset {now}: truncated while being read, "
                                         f"{size - now} bytes missing")
                # A block that is a hole in two dumps is the same zeros in both: not read (reading
                # a hole through the map fills the page cache with zeros: 14 GiB for 3 x 64 GiB).
                for k, fd in enumerate(fds):
                    if data_at[k] < off:
                        data_at[k] = next_data(fd, off)
                hole = [at >= off + n for at in data_at]
                _compare_block(matrix, off // ps, [None if h else m for h, m in zip(hole, maps)], off, n, compare)
                for h, m in zip(hole, maps):
                    if not h and hasattr(m, "madvise"):
                        m.madvise(mmap.MADV_DONTNEED, off, n)  # compared: out of this process, still cached
                self.bytes_read += n * hole.count(False)
                if self.progress is not None:
                    self.progress(n * len(maps))
        finally:
            for m in maps:
                m.close()
            for fd in fds:
                os.close(fd)
        if not size:
            raise InputError(f"{self.inputs[0]}: the dumps are empty")
        self._segments = [Segment(sources[0].region_name, 0, 0, matrix.shape[1])]
        self._matrix = matrix
        self.read_path = "mmap"
        return True

    @property
    def n_pages(self) -> int:
        if self._matrix is None:
            if self._told_pages is None:
                self._told_pages = self._pages_before_compare()
            if self._told_pages:
                return self._told_pages
            self._compute()
        return self._matrix.shape[1]

    def _pages_before_compare(self) -> int:
        """The page count of the dumps' regions when every reader knows them up front (raw
        files, .vms) and they agree: what the comparison will find, without comparing; 0
        when it cannot be told (the comparison then finds it, or reports the mismatch)."""
        from ..sources import open_source

        layouts = set()
        for path in self.inputs:
            try:
                src = open_source(path, self.source_format)
            except Exception:  # the comparison opens it again and reports the problem
                return 0
            try:
                if src.format_name == "raw" and src.size_hint is not None:
                    layouts.add(((src.region_name, 0, src.size_hint),))
                elif src.format_name == "vms":
                    layouts.add(tuple((r.name, r.base, r.size) for r in src.layout))
                else:
                    return 0
            finally:
                src.close()
        if len(layouts) != 1:
            return 0
        return sum(-(-size // self.page_size) for _, _, size in layouts.pop())

    def _check_told_pages(self) -> None:
        """The dumps must not have changed size since their page count was told (the
        analysis sized its state by it)."""
        if self._told_pages and self._matrix.shape[1] != self._told_pages:
            raise InputError(f"{self.inputs[0]}: changed size while being analysed "
                             f"({self._told_pages} pages, then {self._matrix.shape[1]})")

    @property
    def n_periods(self) -> int:
        return len(self.inputs) - 1

    @property
    def held_bytes_per_page(self) -> int:
        return self.n_periods  # the access matrix: a byte a page per period

    @property
    def segments(self) -> list[Segment]:
        if self._matrix is None:
            self._compute()
        return list(self._segments)

    def periods(self) -> Iterator[Period]:
        if self._matrix is None:
            self._compute()
        for i in range(self._matrix.shape[0]):
            ts = None  # a snapshot's time is when it was saved, not when its memory was: unknown
            if self._formats[i + 1] != "vms":
                try:
                    ts = os.stat(self.inputs[i + 1]).st_mtime_ns
                except OSError:
                    pass
            yield Period(i, ts, self._matrix[i])
