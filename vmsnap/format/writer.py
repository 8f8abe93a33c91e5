"""Snapshot writer: classify pages, deduplicate, compress, append. Never seeks.

Each region is read in batches of whole pages. Pattern, zero and sparse pages
become records only; every other page is hashed (BLAKE3, 128 bits) and either
stored once as a data page (its first occurrence is the canonical instance),
recorded as a reference to the data page that already holds its content, or,
when its bytes already occur in the stored data at a 512-byte offset (a file and
its copy in a tar archive), recorded as a slice of the data page stream.
Data pages are cut into frames of `frame_pages` pages, compressed by a pool of
threads (zstandard releases the GIL) and written in order.
"""

from __future__ import annotations

import io
import os
import queue
import stat
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import zstandard
from blake3 import blake3

from .. import pages as P
from ..atomic import os_error_message
from ..errors import OutputWriteError, UsageError
from ..output import ImageWriter
from ..sources.base import page_batches
from . import structs as S
from .dedup import DigestIndex
from .defaults import DEFAULT_FRAME_SIZE, DEFAULT_LEVEL, DEFAULT_SLICE_WINDOW, default_jobs
from .digests import BlockHasher, block_size_for
from .slices import GRAIN, SliceFinder
from .tables import RunningOffsets, SpillTable

BATCH_BYTES = 4 << 20
ANALYSIS_AHEAD = 2  # batches read and classified ahead of the one being encoded
BLOCKS_APPEND_BYTES = 64 << 10  # block digests gathered before they go to their table
MIN_PAGE_SIZE, MAX_PAGE_SIZE, MAX_FRAME_SIZE = S.MIN_PAGE_SIZE, S.MAX_PAGE_SIZE, S.MAX_FRAME_BYTES


def check_page_size(page_size: int) -> None:
    if page_size < MIN_PAGE_SIZE or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise UsageError(f"page size must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}, got {page_size}")


def check_frame_size(frame_size: int, page_size: int) -> None:
    if frame_size < page_size:
        raise UsageError(f"frame size {frame_size} is smaller than the page size {page_size}")
    if frame_size > MAX_FRAME_SIZE:
        raise UsageError(f"frame size {frame_size} is larger than {MAX_FRAME_SIZE >> 20} MiB")


class SnapshotWriter:
    def __init__(self, out: BinaryIO, *, page_size: int = 4096, level: int = DEFAULT_LEVEL,
                 frame_size: int = DEFAULT_FRAME_SIZE, jobs: int | None = None, source: str = "",
                 attachments: bool = False, slice_window: int = DEFAULT_SLICE_WINDOW,
                 long_matching: bool = False):
        check_page_size(page_size)
        if not 1 <= level <= 22:
            raise UsageError(f"zstd level must be 1..22, got {level}")
        check_frame_size(frame_size, page_size)
        try:
            described = len(source.encode("utf-8"))
        except UnicodeEncodeError:
            raise UsageError("the source description is not valid UTF-8") from None
        if described > S.MAX_SOURCE_BYTES:
            raise UsageError(f"the source description is {described} bytes, more than {S.MAX_SOURCE_BYTES}")
        self.page_size = page_size
        self.block_size = block_size_for(page_size)
        self.batch_bytes = BATCH_BYTES  # page_batches makes it at least one page
        self.frame_pages = frame_size // page_size
        self.level = level
        self.long_matching = long_matching
        self.jobs = jobs or default_jobs()
        self._out = out
        self._file = _file_writer(out)
        self._pos = 0
        self._pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="vmsnap-zstd")
        self._pending: deque = deque()
        self._frames: list[tuple[int, int, int, bytes]] = []
        self._framebuf: np.ndarray | None = None
        self._spare_framebufs: list[np.ndarray] = []  # compressed frames' buffers, reused: no page faults
        self._frame_fill = 0
        self._dedup = DigestIndex()  # a window of contents: memory is bounded
        self._data_pages = 0
        # Contents are placed in units of the data page stream: 512-byte grains when
        # slices are looked for (slice_window > 0), whole pages otherwise.
        self._slices = SliceFinder(page_size, slice_window) if slice_window and page_size >= 2 * GRAIN else None
        self._unit = GRAIN if self._slices else page_size
        self._stride = np.array([0, 0, 1, 1, 1, page_size], dtype=np.uint64)  # arg step per page, by record kind
        self._patterns: dict[bytes, int] = {}
        # the index's tables, kept in memory up to a bound and in a temporary file past it
        self._sparse_counts = SpillTable(8, "sparse table")
        self._sparse_words = SpillTable(S.SPARSE_WORD_DTYPE.itemsize, "sparse words")
        self._records = SpillTable(S.RECORD_DTYPE.itemsize, "record table")
        self._run: list[int] | None = None  # open run [kind, count, arg]
        self._regions: list[dict] = []
        self._blocks = SpillTable(S.BLOCK_DIGEST_SIZE, "block digests")
        self._blocks_taken = bytearray()  # the current region's block digests not in _blocks yet
        self.bytes_in = 0
        # Only a file that may hold attachments sets the flag, so a plain snapshot stays
        # readable by vmsnap versions that know no flags.
        self._attachments: list[dict] | None = [] if attachments else None
        flags = (S.FLAG_ATTACHMENTS if attachments else 0) | (S.FLAG_SLICES if self._slices else 0)
        header = S.Header.build({"body": {"value": {"version": S.FORMAT_VERSION, "flags": flags,
                                                    "page_size": page_size, "source": source}}})
        self._write(header)

    # -- regions ---------------------------------------------------------------

    def add_region(self, name: str, base: int, chunks: Iterable[bytes],
                   progress: Callable[[int], None] | None = None) -> None:
        if any(r["name"] == name for r in self._regions):
            raise UsageError(f"duplicate region name {name!r}")
        first_record, first_block = self._records.entries, self._blocks.entries
        hasher = BlockHasher(self.block_size)
        size = 0
        # A second thread reads, classifies, block-hashes and fingerprints the batches
        # ahead (its system calls, numpy, BLAKE3 on whole blocks and BLAS release the
        # GIL) while this one digests pages (BLAKE3 holds the GIL on 4 KiB inputs) and
        # places them.
        batches = page_batches(chunks, self.page_size, self.batch_bytes)
        with _Ahead(batches, lambda batch: self._analyze(hasher, batch), ANALYSIS_AHEAD) as analysed:
            for batch, result in analysed:
                size += self._encode_batch(batch, result, progress)
        self._close_run()
        self.bytes_in += size
        hasher.finish()
        self._take_blocks(hasher, flush=True)
        self._regions.append({
            "name": name, "base": base, "size": size,
            "first_record": first_record, "record_count": self._records.entries - first_record,
            "first_block": first_block, "digest": hasher.region_digest(),
        })

    def add_attachment(self, name: str, chunks: Iterable[bytes]) -> dict:
        """Store a named byte stream (read from `chunks`) as its own zstd frames.

        Needs SnapshotWriter(attachments=True). May be called before, between or
        after regions: frames are placed where the file has got to, and memory stays
        bounded by one attachment frame (ATTACHMENT_FRAME_BYTES) per worker.
        """
        if self._attachments is None:
            raise UsageError("this snapshot was not opened for attachments (SnapshotWriter(attachments=True))")
        if any(a["name"] == name for a in self._attachments):
            raise UsageError(f"duplicate attachment name {name!r}")
        frames: list[tuple[int, int, int, bytes]] = []
        total = blake3()
        size = 0
        pending: deque = deque()  # (future, raw bytes), written in order

        def write_one():
            future, raw = pending.popleft()
            blob, dig = future.result()
            frames.append((self._pos, len(blob), raw, dig))
            self._write(blob)

        for data in _cut(chunks, S.ATTACHMENT_FRAME_BYTES):
            total.update(data)
            size += len(data)
            pending.append((self._pool.submit(_compress_bytes, data, self.level), len(data)))
            while len(pending) > self.jobs:
                write_one()
        while pending:
            write_one()
        table = np.zeros(len(frames), dtype=S.ATTACHMENT_FRAME_DTYPE)
        for i, frame in enumerate(frames):
            table[i] = frame
        entry = {"name": name, "size": size, "digest": total.digest(), "frames": table.tobytes()}
        self._attachments.append(entry)
        return {"name": name, "size": size, "stored": int(table["size"].sum(dtype=np.uint64))}

    def _analyze(self, hasher: BlockHasher, batch) -> tuple | None:
        """Classify a batch, hash its blocks, fingerprint its OTHER pages (on the analysis thread)."""
        if isinstance(batch, int):  # zero pages the source knows without reading them
            hasher.update_zero(batch * self.page_size)
            self._take_blocks(hasher)
            return None
        pages = P.as_pages(batch, self.page_size)
        kind, period = P.classify(pages)
        self._hash_blocks(hasher, batch, kind)
        self._take_blocks(hasher)
        grains = self._slices.fingerprints(pages, np.flatnonzero(kind == P.OTHER)) if self._slices is not None else None
        return pages, kind, period, grains

    def _take_blocks(self, hasher: BlockHasher, flush: bool = False) -> None:
        """Move the batch's block digests to the table, 64 KiB at a time (an entry per
        batch would cost more in bookkeeping than the digests themselves); all of them
        with `flush`, at the region's end."""
        self._blocks_taken += hasher.take()
        if flush or len(self._blocks_taken) >= BLOCKS_APPEND_BYTES:
            self._blocks.append(bytes(self._blocks_taken))
            self._blocks_taken.clear()

    def _encode_batch(self, batch, result, progress: Callable[[int], None] | None) -> int:
        """Turn an analysed batch into records and data pages; return its size in bytes."""
        if result is None:
            runs = [S.MAX_RUN] * (batch // S.MAX_RUN) + ([batch % S.MAX_RUN] if batch % S.MAX_RUN else [])
            self._add_runs(np.full(len(runs), S.REC_ZERO, np.uint8), np.zeros(len(runs), np.uint64),
                           np.array(runs, dtype=np.int64))
            n = batch * self.page_size
        else:
            self._encode(*result)
            n = len(batch)
        if progress:
            progress(n)
        return n

    def _hash_blocks(self, hasher: BlockHasher, batch, kind: np.ndarray) -> None:
        per_block = self.block_size // self.page_size
        mv = memoryview(batch)
        for start in range(0, len(mv), self.block_size):
            span = mv[start:start + self.block_size]
            first = start // self.page_size
            if not kind[first:first + per_block].any():  # every page ZERO (== 0)
                hasher.update_zero(len(span))
            else:
                hasher.update(span)

    # -- pages -> records ------------------------------------------------------

    def _encode(self, pages: np.ndarray, kind: np.ndarray, period: np.ndarray, grains) -> None:
        n = len(kind)
        rkind = np.full(n, S.REC_ZERO, dtype=np.uint8)
        rarg = np.zeros(n, dtype=np.uint64)
        idx = np.flatnonzero(kind == P.PATTERN)
        if idx.size:
            rkind[idx] = S.REC_PATTERN
            rarg[idx] = self._pattern_ids(pages, idx, period[idx])
        idx = np.flatnonzero(kind == P.SPARSE)
        if idx.size:
            rkind[idx] = S.REC_SPARSE
            rarg[idx] = self._add_sparse(pages, idx)
        idx = np.flatnonzero(kind == P.OTHER)
        if idx.size:
            values, is_first = self._dedup.assign(P.page_digests(pages, idx),
                                                  lambda rows: self._place(rows, grains))
            per_page = np.uint64(self.page_size // self._unit)
            aligned = values % per_page == 0
            stored = is_first & aligned  # a new content placed at the end of the stream
            rkind[idx] = np.where(stored, S.REC_DATA, np.where(aligned, S.REC_REF, S.REC_SLICE))
            rarg[idx] = np.where(aligned, values // per_page, values * np.uint64(self._unit))
            self._store(pages, idx[stored])
        self._add_runs(rkind, rarg)

    def _pattern_ids(self, pages: np.ndarray, idx: np.ndarray, period: np.ndarray) -> np.ndarray:
        width = int(period.max())
        head = pages[idx, :width].copy()
        head[np.arange(width)[None, :] >= period[:, None]] = 0
        keys = np.concatenate([period.astype("<u2").view(np.uint8).reshape(-1, 2), head], axis=1)
        uniq, inverse = np.unique(np.ascontiguousarray(keys).view(f"V{width + 2}").ravel(), return_inverse=True)
        ids = np.empty(len(uniq), dtype=np.uint64)
        for j, key in enumerate(uniq):
            raw = key.tobytes()
            unit = raw[2:2 + int.from_bytes(raw[:2], "little")]
            ids[j] = self._patterns.setdefault(unit, len(self._patterns))
        return ids[inverse.ravel()]

    def _add_sparse(self, pages: np.ndarray, idx: np.ndarray) -> np.ndarray:
        words = pages[idx].view(np.uint64)
        rows, cols = np.nonzero(words)
        entries = np.empty(len(rows), dtype=S.SPARSE_WORD_DTYPE)
        entries["word"] = cols
        entries["value"] = words[rows, cols]
        first = self._sparse_counts.entries  # the sparse page number of idx[0]
        self._sparse_words.append(entries)
        self._sparse_counts.append(np.bincount(rows, minlength=len(idx)).astype(np.uint64))
        return np.arange(first, first + len(idx), dtype=np.uint64)

    def _place(self, rows: np.ndarray, grains) -> np.ndarray:
        """Where new contents go, in stream units: a slice of stored data, or stored next.

        rows: the new ones among the batch's OTHER pages; grains: the OTHER pages' fingerprints.
        """
        if self._slices is not None:
            per_page = self.page_size // GRAIN
            places = self._slices.place(*(lane.reshape(-1, per_page)[rows] for lane in grains))
            self._data_pages = self._slices.stream * GRAIN // self.page_size
            return places.astype(np.uint64)
        first = self._data_pages
        self._data_pages += len(rows)
        return np.arange(first, self._data_pages, dtype=np.uint64)

    def _add_runs(self, rkind: np.ndarray, rarg: np.ndarray, counts: np.ndarray | None = None) -> None:
        """Append pages (one per entry), or given runs (with counts), merging runs that continue."""
        if counts is None:
            n = len(rkind)
            step = self._stride[rkind]
            new = np.ones(n, dtype=bool)
            new[1:] = (rkind[1:] != rkind[:-1]) | (rarg[1:] != rarg[:-1] + step[1:])
            starts = np.flatnonzero(new)
            counts = np.diff(np.append(starts, n))
            kinds, args = rkind[starts], rarg[starts]
        else:
            kinds, args = rkind, rarg
            starts = np.arange(len(kinds))
        first = 0
        run = self._run
        if run is not None and run[0] == kinds[0] and \
                run[2] + run[1] * int(self._stride[run[0]]) == int(args[0]) and run[1] + int(counts[0]) <= S.MAX_RUN:
            run[1] += int(counts[0])
            first = 1
        if first < len(starts):
            self._close_run()
            last = len(starts) - 1
            if first < last:
                self._emit(kinds[first:last], counts[first:last], args[first:last])
            self._run = [int(kinds[last]), int(counts[last]), int(args[last])]

    def _emit(self, kinds, counts, args) -> None:
        rec = np.zeros(len(kinds), dtype=S.RECORD_DTYPE)
        rec["kind"], rec["count"], rec["arg"] = kinds, counts, args
        self._records.append(rec)

    def _close_run(self) -> None:
        if self._run is not None:
            k, c, a = self._run
            self._emit(np.array([k]), np.array([c]), np.array([a]))
            self._run = None

    # -- data pages -> frames ----------------------------------------------------

    def _store(self, pages: np.ndarray, rows: np.ndarray) -> None:
        pos = 0
        while pos < len(rows):
            if self._framebuf is None:
                self._framebuf = (self._spare_framebufs.pop() if self._spare_framebufs
                                  else np.empty((self.frame_pages, self.page_size), dtype=np.uint8))
                self._frame_fill = 0
            take = min(len(rows) - pos, self.frame_pages - self._frame_fill)
            _gather(pages, rows[pos:pos + take], self._framebuf[self._frame_fill:self._frame_fill + take])
            self._frame_fill += take
            pos += take
            if self._frame_fill == self.frame_pages:
                self._flush_frame()

    def _flush_frame(self) -> None:
        if self._framebuf is None or self._frame_fill == 0:
            return
        data = self._framebuf[:self._frame_fill]
        self._pending.append((self._pool.submit(_compress, data, self.level, self.long_matching), self._frame_fill,
                              self._framebuf))
        self._framebuf = None
        self._frame_fill = 0
        while len(self._pending) > self.jobs:
            self._write_frame()

    def _write_frame(self) -> None:
        future, pages, buffer = self._pending.popleft()
        blob, dig = future.result()
        self._spare_framebufs.append(buffer)
        self._frames.append((self._pos, len(blob), pages, dig))
        self._write(blob)

    def _write(self, data) -> None:
        try:
            if self._file is not None:
                self._file.write(self._pos, data)
            else:
                self._out.write(data)
        except OSError as exc:
            raise OutputWriteError(os_error_message(exc)) from None
        self._pos += len(data)

    # -- finish ------------------------------------------------------------------

    def close(self) -> dict:
        """Write the remaining frames, the index and the trailer; return a summary."""
        self._close_run()
        self._flush_frame()
        while self._pending:
            self._write_frame()
        self._pool.shutdown()
        frames = np.zeros(len(self._frames), dtype=S.FRAME_DTYPE)
        for i, (off, size, pages, dig) in enumerate(self._frames):
            frames[i] = (off, size, pages, dig)
        units = [u for u, _ in sorted(self._patterns.items(), key=lambda kv: kv[1])]
        fields = {
            "frame_pages": self.frame_pages,
            "data_pages": self._data_pages,
            "image_digest": S.image_digest(self._regions),
            "regions": self._regions,
            "patterns": units,
            "frames": frames,
            "records": self._records,
            "sparse_offsets": RunningOffsets(self._sparse_counts),
            "sparse_words": self._sparse_words,
            "block_digests": self._blocks,
            "attachments": self._attachments,
        }
        # Compressed as it is written, from the tables' own arrays: a whole body and its
        # copies cost 1.8 MiB per GiB of guest at close (117 MiB at 64 GiB).
        pieces = S.index_body_pieces(fields, attachments=self._attachments is not None)
        raw_size = sum(len(p) for p in pieces)
        index_offset = self._pos
        sink = _CountingSink(self._write)
        with zstandard.ZstdCompressor(level=3).stream_writer(sink, size=raw_size, closefd=False) as z:
            for piece in pieces:
                for part in piece.chunks() if hasattr(piece, "chunks") else (piece,):
                    z.write(part)
        self._write(S.Trailer.build({"index_offset": index_offset, "index_size": sink.size,
                                     "index_raw_size": raw_size, "index_digest": sink.digest.digest()}))
        self._close_tables()
        try:
            if self._file is not None:
                self._file.close(self._pos)
            else:
                self._out.flush()
        except OSError as exc:
            raise OutputWriteError(os_error_message(exc)) from None
        return {"bytes_in": self.bytes_in, "bytes_out": self._pos, "regions": len(self._regions),
                "records": self._records.entries, "data_pages": self._data_pages, "frames": len(frames),
                "attachments": len(self._attachments or ())}

    def abort(self) -> None:
        for future, *_ in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_tables()
        if self._file is not None:
            self._file.abandon()

    def _close_tables(self) -> None:
        for table in (self._records, self._sparse_counts, self._sparse_words, self._blocks):
            table.close()


class _CountingSink:
    """Where the compressed index goes: written on, counted and digested."""

    def __init__(self, write: Callable[[bytes], None]):
        self._out = write
        self.size = 0
        self.digest = blake3()

    def write(self, data) -> int:
        self._out(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _file_writer(out: BinaryIO) -> ImageWriter | None:
    """A writer thread with O_DIRECT for a new, empty regular file (what atomic output
    makes): the snapshot goes to the disk while frames are still being compressed, with
    no copy into the page cache, and the final fsync has little left to do. None for a
    pipe, an in-memory buffer or a file that already holds bytes: those get plain writes."""
    try:
        if out.tell() != 0:
            return None
        st = os.fstat(out.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size:
        return None
    return ImageWriter(out, positioned=True)


class _Ahead:
    """Iterate (item, work(item)) over `items`, computed on a thread up to `ahead` items early.

    An exception of the thread (a read error, say) is raised where its item would
    have been; leaving the context stops the thread.
    """

    _END = object()

    def __init__(self, items: Iterable, work: Callable, ahead: int):
        self._items, self._work = items, work
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmsnap-analysis", daemon=True)

    def __enter__(self) -> "_Ahead":
        self._thread.start()
        return self

    def __iter__(self):
        while True:
            entry = self._queue.get()
            if entry is self._END:
                return
            if isinstance(entry, BaseException):
                raise entry
            yield entry

    def _run(self) -> None:
        try:
            for item in self._items:
                if not self._put((item, self._work(item))):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        # On an error or Ctrl-C the thread may be blocked reading a stalled pipe: do not
        # wait for it forever (it is a daemon thread and stops at its next item).
        self._thread.join(timeout=None if exc_type is None else 1.0)


def frame_parameters(level: int, nbytes: int, long_matching: bool) -> zstandard.ZstdCompressionParameters:
    """zstd parameters for one frame of `nbytes` data pages: the level's, with a window
    spanning the frame.

    Long-distance matching is optional: the digest index and the slice finder already
    share whole pages and 512-byte-aligned copies across the image, and on guest data
    it cost 8-10% more time for under 0.1% smaller frames. (Smaller match tables than
    the level's were 10% cheaper on the synthetic benchmark dump but 2% larger on a
    real QEMU guest's memory.)
    """
    extra = {"enable_ldm": True, "ldm_hash_rate_log": 10, "ldm_min_match": 128} if long_matching else {}
    return zstandard.ZstdCompressionParameters.from_level(
        level, source_size=nbytes, window_log=max(10, min(31, (nbytes - 1).bit_length())), **extra)


def _compress(data: np.ndarray, level: int, long_matching: bool) -> tuple[bytes, bytes]:
    # A fresh compressor per frame: frames are independent, so the output does not
    # depend on which thread ran them or on --jobs (deterministic snapshots).
    params = frame_parameters(level, data.nbytes, long_matching)
    blob = zstandard.ZstdCompressor(compression_params=params).compress(data)
    return blob, S.digest(blob)


def _compress_bytes(data: bytes, level: int) -> tuple[bytes, bytes]:
    blob = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)
    return blob, S.digest(blob)


def _gather(pages: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """out[:] = pages[rows], one block copy per run of consecutive rows (data pages come
    in runs; a block copy is about three times faster than numpy's row-by-row take)."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    if len(rows) == 0 or len(breaks) * 4 > len(rows):  # mostly scattered rows: one take beats many small copies
        np.take(pages, rows, axis=0, out=out)
        return
    starts = np.concatenate(([0], breaks)).tolist()
    ends = np.concatenate((breaks, [len(rows)])).tolist()
    first = rows[starts].tolist()
    for a, b, r in zip(starts, ends, first):
        out[a:b] = pages[r:r + b - a]


def _cut(chunks: Iterable, size: int) -> Iterator[bytes]:
    """Re-cut chunks of any length into `size`-byte pieces (the last may be shorter)."""
    buf = bytearray()
    for chunk in chunks:
        buf += memoryview(chunk).cast("B")
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)
