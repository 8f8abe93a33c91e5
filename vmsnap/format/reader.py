"""Snapshot reader: open a .vms file, check it, and produce page contents on demand.

Opening reads the header, the trailer and the index, and checks the header and
index digests and the index's internal consistency: after that, every byte the
reader produces comes from a frame whose BLAKE3 digest was checked before use,
or from index metadata, and every restored block is checked against its stored
block digest.
"""

from __future__ import annotations

import mmap
import os
import stat
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

import numpy as np
import zstandard
from blake3 import blake3
from construct import ConstructError

from .. import pages as P
from ..atomic import os_error_message, pwrite_all, temporary_file_error
from ..errors import (FormatError, InputError, IntegrityError, OutputError, UnsupportedVersionError,
                      open_for_reading)
from ..streams import stdin_in_place
from . import structs as S
from .digests import BlockHasher, block_size_for, region_digest

SEGMENT_BYTES = 4 << 20  # pattern and sparse runs, and windows of short records, are produced in pieces of this size
KEEP_CANONICAL_BYTES = 64 << 20  # canonical pages held for later references during a restore
READ_CACHE_BYTES = 128 << 20  # decoded frames kept for lookups (page(), short reads) outside a pass
# A range at least this long is read as a pass, its frames in order (cat of a large range):
# two frames kept, as in produce(). The lookup cache only cost it memory and first touches
# (a cat of the whole 1 GiB benchmark image: 245 MiB and 1.0-1.5 s with it, 163 MiB and 0.85 s).
PASS_BYTES = 32 << 20
# segments() puts at least WINDOW_RECORDS consecutive short records (fewer than SMALL_PIECE
# bytes each: a page or two, when page kinds alternate) together in one window of numpy
# operations, up to SEGMENT_BYTES; fewer cost less one at a time (on the benchmark dump,
# windows of 2 or more records made a restore 0.1 s slower, of 32 or more 0.04 s faster).
SMALL_PIECE = 64 << 10
WINDOW_RECORDS = 32
# Per-record work (checks at open, plans, segments) goes a block of records at a time, so
# its transients stay bounded however many records the index holds (a guest whose pages
# change kind every page has 4 million records per 16 GiB).
RECORD_BLOCK = 1 << 16
# A larger index is decoded into an unlinked temporary file in $TMPDIR and mapped, and the
# mapped pages are dropped after each block of records: the kernel's page cache holds it,
# not the process (it is 0.5 MiB per GiB of the benchmark guest, 16 bytes per page for a
# guest with a record per page).
INDEX_MEMORY_BYTES = 8 << 20
# Likewise, a plan of shared pages whose per-page arrays (12 bytes a referenced page)
# would take more is kept in mapped temporary files, set up PLAN_CHUNK entries at a time.
PLAN_MEMORY_BYTES = 8 << 20
PLAN_CHUNK = 1 << 18


@dataclass(frozen=True)
class RegionInfo:
    name: str
    base: int
    size: int
    first_record: int
    record_count: int
    first_block: int
    digest: bytes

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(frozen=True)
class AttachmentInfo:
    name: str
    size: int
    digest: bytes
    frames: np.ndarray  # ATTACHMENT_FRAME_DTYPE

    @property
    def stored(self) -> int:
        return int(self.frames["size"].sum(dtype=np.uint64))


class Snapshot:
    """An opened .vms snapshot. Use as a context manager or call close()."""

    def __init__(self, path: str):
        self.path = path
        self._fh = stdin_in_place("a snapshot") if path == "-" else open_for_reading(path)
        self._index_map: mmap.mmap | None = None  # the index body, when decoded into a file
        self._mapped: list[mmap.mmap] = []  # what _drop_mapped_pages unmaps: that, and plans' arrays
        try:
            st = os.fstat(self._fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{path}: a snapshot must be a regular file (its index is at the end)")
            self.file_size = st.st_size
            self._read_header()
            self._read_index()
        except BaseException:
            self._fh.close()
            raise
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_size = 2  # decoded frames kept during produce(), whose frames come in order
        self._ranges_in_pass = 0  # iter_range() passes under way (see PASS_BYTES)
        self._prefetch: _Prefetcher | None = None
        self._frame_pool: _FramePool | None = None  # set while produce() runs
        self._scratch = threading.local()

    # -- opening -------------------------------------------------------------------

    def _pread(self, offset: int, length: int, what: str) -> bytes:
        data = os.pread(self._fh.fileno(), length, offset)
        self._check_read(len(data), offset, length, what)
        return data

    def _check_read(self, got: int, offset: int, length: int, what: str) -> None:
        if got != length:
            try:  # the size now: a file cut while it is read is smaller than when it was opened
                size = os.fstat(self._fh.fileno()).st_size
            except OSError:
                size = self.file_size
            raise IntegrityError(f"{self.path}: truncated: {what} at offset {offset} needs {length} bytes, "
                                 f"file has {max(0, size - offset)}")

    def _read_header(self) -> None:
        head = os.pread(self._fh.fileno(), 4096, 0)
        if not head.startswith(S.MAGIC):
            raise FormatError(f"{self.path}: not a vmsnap snapshot (bad magic)")
        if len(head) < S.HeaderPrefix.sizeof():
            raise IntegrityError(f"{self.path}: truncated: {len(head)} bytes, the header needs more (offset 0)")
        if len(head) >= S.HEADER_FIXED_SIZE:  # a description longer than the first read: read all of it
            whole = S.HEADER_FIXED_SIZE + int.from_bytes(head[S.HEADER_FIXED_SIZE - 2:S.HEADER_FIXED_SIZE], "little")
            if whole + S.DIGEST_SIZE > len(head):
                head = os.pread(self._fh.fileno(), whole + S.DIGEST_SIZE, 0)
        prefix = S.HeaderPrefix.parse(head)
        if prefix.version != S.FORMAT_VERSION:
            raise UnsupportedVersionError(f"{self.path}: format version {prefix.version} is not supported "
                                          f"(this vmsnap reads version {S.FORMAT_VERSION})")
        if prefix.flags & ~S.KNOWN_FLAGS:
            raise UnsupportedVersionError(f"{self.path}: unknown header flags {prefix.flags & ~S.KNOWN_FLAGS:#x} "
                                          f"(written by a newer vmsnap)")
        self.flags = prefix.flags
        try:
            header = S.Header.parse(head)
        except ConstructError as exc:
            if "checksum" in str(exc).lower() or "wrong checksum" in str(exc).lower():
                raise IntegrityError(f"{self.path}: header failed its digest (offset 0)") from None
            raise IntegrityError(f"{self.path}: truncated or corrupted header (offset 0)") from None
        body = header.body.value
        self.page_size = body.page_size
        if not S.MIN_PAGE_SIZE <= self.page_size <= S.MAX_PAGE_SIZE or self.page_size & (self.page_size - 1):
            raise FormatError(f"{self.path}: invalid page size {self.page_size}")
        self.source = body.source
        self.header_size = header.body.length + S.DIGEST_SIZE

    def _read_index(self) -> None:
        if self.file_size < self.header_size + S.TRAILER_SIZE:
            raise IntegrityError(f"{self.path}: truncated: {self.file_size} bytes, no room for the trailer")
        raw = self._pread(self.file_size - S.TRAILER_SIZE, S.TRAILER_SIZE, "trailer")
        try:
            trailer = S.Trailer.parse(raw)
        except ConstructError:
            raise IntegrityError(f"{self.path}: truncated or corrupted: no valid trailer at offset "
                                 f"{self.file_size - S.TRAILER_SIZE}") from None
        end = self.file_size - S.TRAILER_SIZE
        if not (self.header_size <= trailer.index_offset <= end and trailer.index_offset + trailer.index_size == end):
            raise IntegrityError(f"{self.path}: corrupted trailer: index at {trailer.index_offset} "
                                 f"size {trailer.index_size} does not end at {end}")
        # Decoded as it is read and hashed, not read whole first (18 MiB more at the peak for
        # a 64 GiB guest); nothing of it is used before the digest matches, and a damaged
        # index is reported as failing its digest before anything else.
        stored = _HashedRange(self, trailer.index_offset, trailer.index_size, "index")
        try:
            body, malformed = self._decompress_index(stored, trailer.index_raw_size, trailer.index_size), None
        except FormatError as exc:
            body, malformed = None, exc
        if stored.finish() != trailer.index_digest:
            raise IntegrityError(f"{self.path}: index failed its digest (offset {trailer.index_offset})")
        if malformed is not None:
            raise malformed
        if len(body) != trailer.index_raw_size:
            raise IntegrityError(f"{self.path}: corrupted trailer: index holds {len(body)} bytes, "
                                 f"trailer says {trailer.index_raw_size}")
        try:
            index = S.parse_index_body(body, attachments=bool(self.flags & S.FLAG_ATTACHMENTS))
        except ConstructError as exc:
            raise FormatError(f"{self.path}: malformed index: {exc}") from None
        self.index_offset = trailer.index_offset
        self.index_size = trailer.index_size
        self.frame_pages = index["frame_pages"]
        self.data_pages = index["data_pages"]
        self.image_digest = index["image_digest"]
        self.regions = [RegionInfo(r.name, r.base, r.size, r.first_record, r.record_count, r.first_block, r.digest)
                        for r in index["regions"]]
        self.patterns = list(index["patterns"])
        # Views of the index body (kept alive by them), read-only: nothing may change a table.
        self.frames = _array(index["frames"], S.FRAME_DTYPE, "frame table", self.path)
        self.records = _array(index["records"], S.RECORD_DTYPE, "record table", self.path)
        self.sparse_offsets = _array(index["sparse_offsets"], np.dtype("<u8"), "sparse offsets", self.path)
        self.sparse_words = _array(index["sparse_words"], S.SPARSE_WORD_DTYPE, "sparse words", self.path)
        self.block_digests = _array(index["block_digests"], np.dtype(f"V{S.BLOCK_DIGEST_SIZE}"), "block digests",
                                    self.path)
        self.attachments: dict[str, AttachmentInfo] = {}
        for a in index.get("attachments", []):
            if a.name in self.attachments:
                raise FormatError(f"{self.path}: inconsistent index: duplicate attachment {a.name!r}")
            frames = _array(a.frames, S.ATTACHMENT_FRAME_DTYPE, f"attachment {a.name!r} frames", self.path)
            self.attachments[a.name] = AttachmentInfo(a.name, a.size, a.digest, frames)
        self.block_size = block_size_for(self.page_size)
        self._check_index()

    def _decompress_index(self, stored, limit: int, stored_size: int) -> bytearray:
        """The index body, one more byte than `limit` at most: memory follows what the frame
        holds, not the size the trailer claims (which a damaged trailer can make anything).

        Decoded into one buffer of the claimed size, or of 16 times the stored size if
        that is less (an index compresses about 5:1), doubled when it fills: appending
        piece by piece copied the body as it grew (61 MiB at the peak for the 29 MiB
        index of a 64 GiB guest)."""
        if limit > INDEX_MEMORY_BYTES:
            return self._decompress_index_to_file(stored, limit)
        body = bytearray(min(limit + 1, max(SEGMENT_BYTES, 16 * stored_size)))
        got = 0
        try:
            with zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=False) as reader:
                while got <= limit:
                    if got == len(body):
                        body.extend(bytes(min(len(body), limit + 1 - len(body))))
                    n = reader.readinto(memoryview(body)[got:])
                    if not n:
                        break
                    got += n
        except zstandard.ZstdError as exc:
            raise FormatError(f"{self.path}: malformed index: {exc}") from None
        del body[got:]
        return body

    def _decompress_index_to_file(self, stored, limit: int) -> mmap.mmap | bytes:
        """The index body, one more byte than `limit` at most, decoded into an unlinked
        temporary file and mapped read-only (see INDEX_MEMORY_BYTES)."""
        piece = bytearray(64 << 10)  # small writes, small page-cache folios: a read maps in little around it
        got = 0
        with _TemporaryMapping("the index") as spill:
            try:
                with zstandard.ZstdDecompressor().stream_reader(stored, read_across_frames=False) as reader:
                    while got <= limit and (n := reader.readinto(piece)):
                        n = min(n, limit + 1 - got)
                        spill.write(memoryview(piece)[:n])
                        got += n
            except zstandard.ZstdError as exc:
                raise FormatError(f"{self.path}: malformed index: {exc}") from None
            self._index_map = spill.map(got)
            if self._index_map is not None:
                self._mapped.append(self._index_map)
        return self._index_map if self._index_map is not None else b""

    def _drop_mapped_pages(self) -> None:
        """Unmap the pages of a mapped index (and of mapped plans) that were used: they are
        read again from the page cache when needed, and do not add up in this process."""
        for mapped in self._mapped:
            mapped.madvise(mmap.MADV_DONTNEED)

    def _check_index(self) -> None:
        """Reject an index whose tables contradict each other (never index out of range later)."""
        bad = lambda what: FormatError(f"{self.path}: inconsistent index: {what}")  # noqa: E731
        ps = self.page_size
        fr = self.frames
        if self.frame_pages < 1:
            raise bad("frame size is zero")
        if self.frame_pages * ps > S.MAX_FRAME_BYTES:
            raise bad(f"frames of {self.frame_pages} pages are larger than {S.MAX_FRAME_BYTES >> 20} MiB")
        if int(fr["pages"].sum(dtype=np.uint64)) != self.data_pages:
            raise bad("frames do not hold the stored data pages")
        if len(fr) > 1 and np.any(fr["pages"][:-1] != self.frame_pages):
            raise bad("a frame other than the last is not full")
        if len(fr) and fr["pages"][-1] > self.frame_pages:
            raise bad("the last frame holds more pages than a frame does")
        # Data frames and attachment frames, together, tile the file between header and index.
        offsets = np.concatenate([fr["offset"].astype(np.uint64)]
                                 + [a.frames["offset"].astype(np.uint64) for a in self.attachments.values()])
        sizes = np.concatenate([fr["size"].astype(np.uint64)]
                               + [a.frames["size"].astype(np.uint64) for a in self.attachments.values()])
        order = np.argsort(offsets, kind="stable")
        offsets, ends = offsets[order], offsets[order] + sizes[order]
        if len(offsets) and (offsets[0] != self.header_size or np.any(offsets[1:] != ends[:-1])
                             or ends[-1] != self.index_offset):
            raise bad("frames do not tile the file between header and index")
        if not len(offsets) and self.index_offset != self.header_size:
            raise bad("bytes between header and index that no frame accounts for")
        if np.any(np.diff(fr["offset"].astype(np.int64)) <= 0):
            raise bad("data frames out of file order")
        for a in self.attachments.values():
            if np.any(a.frames["raw_size"] > S.MAX_FRAME_BYTES):
                raise bad(f"attachment {a.name!r} frame larger than {S.MAX_FRAME_BYTES >> 20} MiB")
            if int(a.frames["raw_size"].sum(dtype=np.uint64)) != a.size:
                raise bad(f"attachment {a.name!r} frames do not add up to its size")
            if np.any(np.diff(a.frames["offset"].astype(np.int64)) <= 0):
                raise bad(f"attachment {a.name!r} frames out of file order")
        offsets, drop = self.sparse_offsets, self._drop_mapped_pages
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(self.sparse_words) or any(
                np.any(np.diff(block.astype(np.int64)) < 0) for _, block in _blocks(offsets, drop, overlap=1)):
            raise bad("sparse table offsets")
        if any(np.any(block["word"] >= ps // 8) for _, block in _blocks(self.sparse_words, drop)):
            raise bad("sparse word beyond the page")
        if any(not 1 <= len(u) <= ps for u in self.patterns):
            raise bad("pattern unit length")
        rec = self.records
        last_kind = S.REC_SLICE if self.flags & S.FLAG_SLICES else S.REC_REF
        # (limit, stride): the arg of a run's last page must stay below the limit
        limits = {S.REC_PATTERN: (len(self.patterns), 0), S.REC_SPARSE: (len(self.sparse_offsets) - 1, 1),
                  S.REC_DATA: (self.data_pages, 1), S.REC_REF: (self.data_pages, 1),
                  S.REC_SLICE: ((self.data_pages - 1) * ps + 1 if self.data_pages else 0, ps)}
        for _, block in _blocks(rec, self._drop_mapped_pages):
            kinds, counts, args = block["kind"], block["count"].astype(np.uint64), block["arg"]
            if np.any(kinds > last_kind) or np.any(counts == 0):
                raise bad("unknown record kind or empty run")
            for kind, (limit, stride) in limits.items():
                sel = kinds == kind
                last = args[sel] + (counts[sel] - 1) * stride
                if np.any(last >= limit) or np.any(last < args[sel]):
                    raise bad(f"{S.RECORD_KINDS[kind]} record out of range")
        names = set()
        for r in self.regions:
            if r.name in names:
                raise bad(f"duplicate region {r.name!r}")
            names.add(r.name)
            if r.first_record + r.record_count > len(rec):
                raise bad(f"region {r.name!r} records out of range")
            pages = sum(int(block["count"].sum(dtype=np.uint64))
                        for _, block in _blocks(self.region_records(r), self._drop_mapped_pages))
            if pages != -(-r.size // ps):
                raise bad(f"region {r.name!r} records cover {pages} pages, size needs {-(-r.size // ps)}")
            if r.first_block + -(-r.size // self.block_size) > len(self.block_digests):
                raise bad(f"region {r.name!r} block digests out of range")
            if region_digest(self._block_table(r)) != r.digest:
                raise bad(f"region {r.name!r} digest does not match its block digests")
            self._drop_mapped_pages()
        if S.image_digest([{"name": r.name, "base": r.base, "size": r.size, "digest": r.digest}
                           for r in self.regions]) != self.image_digest:
            raise bad("image digest does not match the regions")

    def _block_table(self, r: RegionInfo, first: int = 0, last: int | None = None) -> np.ndarray:
        """The stored digests of the region's blocks [first, last) (all by default), a view."""
        n = -(-r.size // self.block_size)
        last = n if last is None else min(last, n)
        return self.block_digests[r.first_block + first:r.first_block + last]

    # -- page contents ---------------------------------------------------------------

    def region(self, name: str) -> RegionInfo:
        for r in self.regions:
            if r.name == name:
                return r
        raise FormatError(f"{self.path}: no region named {name!r} (have: {', '.join(r.name for r in self.regions)})")

    def attachment(self, name: str) -> AttachmentInfo:
        try:
            return self.attachments[name]
        except KeyError:
            have = ", ".join(self.attachments) or "none"
            raise FormatError(f"{self.path}: no attachment named {name!r} (have: {have})") from None

    def read_attachment(self, name: str) -> Iterator[bytes]:
        """The attachment's content in pieces, every digest checked.

        Each stored frame's digest is checked before any of its bytes are yielded,
        its length as it is decompressed, and the digest of the whole content after
        the last piece (IntegrityError).
        """
        a = self.attachment(name)
        dctx = zstandard.ZstdDecompressor()
        total = blake3()
        for off, size, raw, dig in zip(a.frames["offset"].tolist(), a.frames["size"].tolist(),
                                       a.frames["raw_size"].tolist(), a.frames["digest"]):
            stored = self._pread(off, size, f"attachment {name!r} frame")
            if S.digest(stored) != dig.tobytes():
                raise IntegrityError(f"{self.path}: attachment {name!r} frame at offset {off} failed its digest")
            # Streamed in bounded pieces: memory does not depend on what raw_size claims.
            got = 0
            try:
                with dctx.stream_reader(stored, read_across_frames=False) as zr:
                    while True:
                        data = zr.read(min(SEGMENT_BYTES, raw - got + 1))
                        if not data:
                            break
                        got += len(data)
                        if got > raw:
                            break
                        total.update(data)
                        yield data
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"{self.path}: attachment {name!r} frame at offset {off}: {exc}") from None
            if got != raw:
                raise IntegrityError(f"{self.path}: attachment {name!r} frame at offset {off} does not hold the "
                                     f"{raw} bytes the index says")
        if total.digest() != a.digest:
            raise IntegrityError(f"{self.path}: attachment {name!r} failed its digest")

    def _frame(self, k: int) -> np.ndarray:
        """Decoded frame k, its stored bytes checked against the digest first."""
        cached = self._cache.get(k)
        if cached is not None:
            self._cache.move_to_end(k)
            return cached
        frame = self._prefetch.get(k) if self._prefetch is not None else self._decode_frame(k)
        self._cache[k] = frame
        # Lookups (page, short reads) come back to the frames they read before: they keep
        # more decoded frames (300 random pages within 160 MiB of the benchmark snapshot:
        # 0.24 s with eight frames kept, 1.19 s with two). A pass (produce, a .vms read
        # as a source, a long range) takes frames in order and shared pages from
        # CanonicalPages.
        in_pass = self._prefetch is not None or self._frame_pool is not None or self._ranges_in_pass > 0
        keep = self._cache_size if in_pass else \
            max(self._cache_size, READ_CACHE_BYTES // max(1, self.frame_pages * self.page_size))
        while len(self._cache) > keep:
            _, old = self._cache.popitem(last=False)
            if self._frame_pool is not None:
                self._frame_pool.retire(old)
        return frame

    def _decode_frame(self, k: int) -> np.ndarray:
        f = self.frames[k]
        offset, size, pages = int(f["offset"]), int(f["size"]), int(f["pages"])
        stored = self._read_stored(offset, size, f"frame {k}")
        if S.digest(stored) != f["digest"].tobytes():
            raise IntegrityError(f"{self.path}: frame {k} at offset {offset} failed its digest")
        want = pages * self.page_size
        pool = self._frame_pool
        out = pool.take(want) if pool is not None else np.empty(want, dtype=np.uint8)
        try:
            # Straight into `out`: a recycled buffer is already mapped, so a restore does not
            # page-fault and zero 16 MiB per frame (a third of the decoding time).
            reader = zstandard.ZstdDecompressor(max_window_size=1 << 31).stream_reader(stored)
            got = 0
            while got < want and (n := reader.readinto(out[got:])):
                got += n
            extra = reader.read(1)
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"{self.path}: frame {k} at offset {offset} does not decompress: {exc}") from None
        if got != want or extra:
            raise IntegrityError(f"{self.path}: frame {k} at offset {offset} holds {'more than ' if extra else ''}"
                                 f"{got} bytes, expected {want}")
        frame = out.reshape(pages, self.page_size)
        frame.flags.writeable = False  # views handed out of the cache must not change it
        return frame

    def _read_stored(self, offset: int, length: int, what: str) -> memoryview:
        """Stored bytes [offset, offset+length) in this thread's reused input buffer."""
        buf = getattr(self._scratch, "buf", None)
        if buf is None or len(buf) < length:
            # The largest frame at once: growing frame by frame zeroed a new buffer up to
            # five times a restore (the frames tile the file, so none is larger than it).
            largest = int(self.frames["size"].max()) if len(self.frames) else 0
            buf = self._scratch.buf = bytearray(max(length, largest, 1 << 20))
        view = memoryview(buf)[:length]
        self._check_read(os.preadv(self._fh.fileno(), [view], offset) if length else 0, offset, length, what)
        return view

    def data_pages_view(self, dpn: int, count: int) -> Iterator[np.ndarray]:
        """Stored data pages [dpn, dpn+count) as arrays of whole pages, frame by frame."""
        fp = self.frame_pages
        while count > 0:
            k, row = divmod(dpn, fp)
            take = min(count, fp - row)
            yield self._frame(k)[row:row + take]
            dpn += take
            count -= take

    def gather_data_pages(self, dpns: np.ndarray, out: np.ndarray | None = None,
                          at: np.ndarray | None = None) -> np.ndarray:
        """Stored data pages `dpns` (uint64, any order), each frame decoded once: into
        out[at] when given (at: a row of out per page), else a new array."""
        if out is None:
            out, at = np.empty((len(dpns), self.page_size), np.uint8), np.arange(len(dpns))
        frames, rows = np.divmod(dpns, np.uint64(self.frame_pages))
        if len(frames) and frames.min() == frames.max():  # the common case: one frame
            out[at] = self._frame(int(frames[0]))[rows.astype(np.intp)]
            return out
        for k in np.unique(frames).tolist():
            sel = np.flatnonzero(frames == k)
            out[at[sel]] = self._frame(k)[rows[sel].astype(np.intp)]
        return out

    def _sparse_pages(self, first: int, count: int) -> np.ndarray:
        out = np.zeros((count, self.page_size // 8), dtype="<u8")
        lo, hi = int(self.sparse_offsets[first]), int(self.sparse_offsets[first + count])
        words = self.sparse_words[lo:hi]
        rows = np.repeat(np.arange(count), np.diff(self.sparse_offsets[first:first + count + 1].astype(np.int64)))
        out[rows, words["word"]] = words["value"]
        return out.view(np.uint8)

    def region_records(self, r: RegionInfo) -> np.ndarray:
        return self.records[r.first_record:r.first_record + r.record_count]

    def _range_records(self, r: RegionInfo, start_page: int, end_page: int) -> list[np.ndarray]:
        """The records of pages [start_page, end_page) of region r, the first and last cut to
        them: a copy of each of those two, and a view of the table between them."""
        recs = self.region_records(r)
        i, before_i = _record_at(recs, start_page, self._drop_mapped_pages)
        j, before_j = _record_at(recs, end_page - 1, self._drop_mapped_pages)
        if i > j or i >= len(recs):
            return []
        first, last = recs[i:i + 1].copy(), recs[j:j + 1].copy()
        last["count"][0] -= before_j + int(recs["count"][j]) - end_page
        if i == j:
            first = last
        skip = start_page - before_i
        first["count"][0] -= skip
        first["arg"][0] += skip * _arg_step(int(first["kind"][0]), self.page_size)
        return [first] if i == j else [first, recs[i + 1:j], last]

    def _range_canonical(self, r: RegionInfo, start_page: int, end_page: int) -> "CanonicalPages":
        """Shared pages for producing pages [start_page, end_page) of r: those stored before
        the range are gathered first, each frame decoded once, however the range's
        references jump between frames (a cat of a large range read each of a 1 GiB
        snapshot's frames ten times through the frame cache)."""
        parts = self._range_records(r, start_page, end_page)
        canonical = CanonicalPages(self, parts)
        try:
            stored_here = _PageSet(self.data_pages)  # the range's own data pages
            for recs in parts:
                for _, block in _blocks(recs, self._drop_mapped_pages):
                    data = block[block["kind"] == S.REC_DATA]
                    stored_here.add(data["arg"], data["arg"] + data["count"].astype(np.uint64))
            stored_here.finish()
            before = canonical.wanted.minus(stored_here)
            fp = self.frame_pages
            # A frame at a time, not gather_data_pages(before): that would hold every such page
            # in memory at once, where offer_pages keeps 64 MiB and spills the rest.
            for k in range(len(self.frames)):
                rows = before.within(k * fp, min((k + 1) * fp, self.data_pages))
                if len(rows):
                    canonical.offer_pages(rows.astype(np.uint64) + np.uint64(k * fp), self._frame(k), rows)
        except BaseException:
            canonical.close()
            raise
        return canonical

    def segments(self, region: RegionInfo, start_page: int = 0, end_page: int | None = None,
                 canonical: "CanonicalPages | None" = None) -> Iterator[int | memoryview]:
        """The region's bytes for pages [start_page, end_page) in order.

        Yields an int n for n zero bytes, or a bytes-like object. The last page is
        cut at the region size.
        """
        ps = self.page_size
        total_pages = -(-region.size // ps)
        end_page = total_pages if end_page is None else min(end_page, total_pages)
        remaining = min(region.size, end_page * ps) - start_page * ps
        recs = self.region_records(region)
        b0, page = _record_at(recs, start_page, self._drop_mapped_pages)
        short = max(1, SMALL_PIECE // ps)  # records shorter than this many pages go in windows
        window = max(1, SEGMENT_BYTES // ps)
        while b0 < len(recs) and remaining > 0:
            self._drop_mapped_pages()
            block = recs[b0:b0 + RECORD_BLOCK]  # windows end at a block's end
            b0 += len(block)
            counts = block["count"].astype(np.int64)
            ends = np.cumsum(counts)  # within the block
            short_ends = _short_run_ends(counts, short)
            i = 0
            while i < len(block):
                if remaining <= 0:
                    return
                kind, count, arg = int(block["kind"][i]), int(counts[i]), int(block["arg"][i])
                skip = max(0, start_page - page)
                page += count
                count -= skip
                arg += skip * _arg_step(kind, ps)
                stop = i + 1
                if count < short:  # and the short records after it, up to a window of pages
                    stop = min(int(short_ends[i]), int(np.searchsorted(ends, ends[i] - count + window, side="right")))
                if stop - i >= WINDOW_RECORDS:
                    # A record per page or two (kinds that alternate, pages shared in random
                    # order) would cost a pass of this loop each: a window of them is put
                    # together with a few numpy operations per kind instead.
                    args, run_counts = block["arg"][i:stop].copy(), counts[i:stop].copy()
                    args[0], run_counts[0] = arg, count
                    page += int(ends[stop - 1] - ends[i])
                    plan = _WindowPlan(block["kind"][i:stop], args, run_counts, ps, -(-remaining // ps))
                    pieces = (memoryview(self._assemble(plan, canonical).reshape(-1)),)
                    i = stop
                else:
                    pieces = self._run(kind, count, arg, canonical)
                    i += 1
                for piece in pieces:
                    n = piece if isinstance(piece, int) else len(piece)
                    if n > remaining:
                        piece = remaining if isinstance(piece, int) else memoryview(piece)[:remaining]
                        n = remaining
                    remaining -= n
                    yield piece
                    if remaining <= 0:
                        return

    def _run(self, kind: int, count: int, arg: int, canonical) -> Iterator[int | memoryview]:
        ps = self.page_size
        per_piece = max(1, SEGMENT_BYTES // ps)
        if kind == S.REC_ZERO:
            yield count * ps
        elif kind == S.REC_PATTERN:
            page = P.render_pattern(self.patterns[arg], ps)
            for done in range(0, count, per_piece):
                yield page * min(per_piece, count - done)
        elif kind == S.REC_SPARSE:
            for done in range(0, count, per_piece):
                yield memoryview(self._sparse_pages(arg + done, min(per_piece, count - done)).reshape(-1))
        elif kind == S.REC_DATA:
            for rows in self.data_pages_view(arg, count):
                if canonical is not None:
                    canonical.offer(arg, rows)
                arg += len(rows)
                yield memoryview(rows.reshape(-1))
        elif kind == S.REC_REF:
            if canonical is not None:
                for done in range(0, count, per_piece):
                    yield canonical.take(arg + done, min(per_piece, count - done))
            else:
                for rows in self.data_pages_view(arg, count):
                    yield memoryview(rows.reshape(-1))
        else:  # REC_SLICE
            for done in range(0, count, per_piece):
                n = min(per_piece, count - done)
                offset = arg + done * ps
                if canonical is not None:
                    yield canonical.take_slice(offset, n)
                else:
                    yield self.stream_bytes(offset, n * ps)

    def _assemble(self, plan: "_WindowPlan", canonical) -> np.ndarray:
        """The pages of a window of short records, as one (pages, page_size) array."""
        out = np.empty((plan.pages, self.page_size), np.uint8)
        out[plan.zero] = 0
        for unit in np.unique(plan.pattern_ids).tolist():
            out[plan.pattern[plan.pattern_ids == unit]] = np.frombuffer(
                P.render_pattern(self.patterns[unit], self.page_size), np.uint8)
        if len(plan.sparse):
            words = out.view("<u8")
            words[plan.sparse] = 0
            lo = self.sparse_offsets[plan.sparse_ids].astype(np.int64)
            n = self.sparse_offsets[plan.sparse_ids + np.uint64(1)].astype(np.int64) - lo
            entries = self.sparse_words[np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))]
            words[np.repeat(plan.sparse, n), entries["word"]] = entries["value"]
        if len(plan.data):  # decoded before the shared pages: those may read these
            self.gather_data_pages(plan.dpns, out, plan.data)
            if canonical is not None:
                canonical.offer_pages(plan.dpns, out, plan.data)
        if len(plan.shared):
            rows = canonical.take_each(plan.reads) if canonical is not None else self.gather_data_pages(plan.reads)
            plan.put_shared(out, rows)
        return out

    def stream_bytes(self, offset: int, length: int) -> memoryview:
        """Bytes [offset, offset+length) of the data page stream (all data pages in order)."""
        ps = self.page_size
        first = offset // ps
        pages = [rows.reshape(-1) for rows in self.data_pages_view(first, -(-(offset + length) // ps) - first)]
        joined = pages[0] if len(pages) == 1 else np.concatenate(pages)
        return memoryview(joined)[offset - first * ps:offset - first * ps + length]

    def iter_range(self, address: int, length: int, region: str | None = None,
                   check_blocks: bool = False) -> Iterator[int | memoryview]:
        """The bytes [address, address+length) in order, as produced by segments().

        `address` is guest-physical, or an offset within `region`. Gaps between
        regions read as zeros; a range beyond the image is an error. Every frame
        read is checked against its digest. With check_blocks, the whole 1 MiB blocks
        around the range are put together and each is checked against its stored
        digest before any of its bytes is yielded (IntegrityError otherwise): up to
        2 MiB more to produce, worth it for an extraction, not for a 4 KiB lookup.
        """
        if address < 0 or length < 0:
            raise FormatError("offset and length must not be negative")
        if region is not None:
            regions = [self.region(region)]
            lo = address + regions[0].base
        else:
            regions = sorted(self.regions, key=lambda r: r.base)
            for a, b in zip(regions, regions[1:]):
                if b.base < a.end:
                    raise FormatError(f"regions {a.name!r} and {b.name!r} overlap: name one with --region")
            lo = address
        hi = lo + length
        limit = max((r.end for r in regions), default=0)
        if hi > limit:
            end = f"the end of region {region!r}," if region is not None else "the image end"
            raise FormatError(f"range {address:#x}+{length:#x} is beyond {end} {limit - (lo - address):#x}")
        in_pass = int(length >= PASS_BYTES)
        self._ranges_in_pass += in_pass
        try:
            yield from self._iter_regions(regions, lo, hi, check_blocks)
        finally:
            self._ranges_in_pass -= in_pass

    def _iter_regions(self, regions: list[RegionInfo], lo: int, hi: int,
                      check_blocks: bool) -> Iterator[int | memoryview]:
        """iter_range() of [lo, hi) in the address space of `regions`."""
        pos = lo  # next address to produce
        for r in regions:
            a, b = max(lo, r.base), min(hi, r.end)
            if a >= b:
                continue
            if a > pos:
                yield a - pos  # a gap between regions
            if check_blocks:
                yield from self._checked_range(r, a - r.base, b - r.base)
            else:
                first = (a - r.base) // self.page_size
                yield from _cut(self._range_segments(r, first, -(-(b - r.base) // self.page_size)),
                                first * self.page_size, a - r.base, b - r.base)
            pos = b
        if hi > pos:
            yield hi - pos

    def _range_segments(self, r: RegionInfo, start_page: int, end_page: int) -> Iterator[int | memoryview]:
        """segments() of pages [start_page, end_page) of r, their shared pages gathered first."""
        canonical = self._range_canonical(r, start_page, end_page)
        try:
            yield from self.segments(r, start_page, end_page, canonical=canonical)
        finally:
            canonical.close()

    def _checked_range(self, r: RegionInfo, start: int, end: int) -> Iterator[int | memoryview]:
        """Region bytes [start, end), each block around them checked before any of it is
        yielded: frame digests vouch for the stored bytes, block digests for how they were
        put together."""
        bs, ps = self.block_size, self.page_size
        first, last = start // bs, -(-end // bs)
        checker = _BlockChecker(self, r, first, last)
        held: list[int | memoryview] = []  # the pieces of the block being checked
        at, fill = first * bs, 0  # region offset of held[0]; bytes held
        for piece in self._range_segments(r, at // ps, -(-min(last * bs, r.size) // ps)):
            piece = piece if isinstance(piece, int) else memoryview(piece).cast("B")
            while piece:
                take = min(piece if isinstance(piece, int) else len(piece), bs - fill)
                if isinstance(piece, int):
                    part, piece = take, piece - take
                else:
                    part, piece = piece[:take], piece[take:]
                checker.feed(part)  # raises when a block is complete and wrong
                held.append(part)
                fill += take
                if fill == bs:
                    yield from _cut(held, at, start, end)
                    held.clear()
                    at, fill = at + bs, 0
        checker.finish()  # the region's last block, shorter than a block
        yield from _cut(held, at, start, end)

    def page(self, index: int, region: str | None = None) -> bytes:
        """Page `index` of `region` (default: the only region), cut at the region's end."""
        if region is None:
            if len(self.regions) != 1:
                raise FormatError(f"{self.path}: {len(self.regions)} regions: name one")
            region = self.regions[0].name
        r = self.region(region)
        if not 0 <= index < -(-r.size // self.page_size):
            raise FormatError(f"{self.path}: region {region!r} has no page {index}")
        start = index * self.page_size
        return self.read(start, min(self.page_size, r.size - start), region)

    def read(self, address: int, length: int, region: str | None = None, check_blocks: bool = False) -> bytes:
        """`length` bytes from `address`, as iter_range() defines it, in memory."""
        out = bytearray()
        for piece in self.iter_range(address, length, region, check_blocks):
            out += bytes(piece) if isinstance(piece, int) else piece
        return bytes(out)

    # -- whole-image passes --------------------------------------------------------------

    def produce(self, sink: Callable[[RegionInfo, int | memoryview], None],
                regions: list[RegionInfo] | None = None, progress: Callable[[int], None] | None = None,
                jobs: int = 2, checked: bool = True) -> None:
        """Feed every region's bytes to sink(region, piece), checking every block digest.

        This thread hashes and feeds the sink, and counts as one of `jobs`; the
        others decode frames ahead. A piece is valid only during its sink call:
        decoded frames' buffers are reused once the sink has returned.
        checked=False leaves the block digests to the caller, who must check every
        byte it keeps with an OutputCheck (a restore checks what it writes).
        Frames are checked against their digests either way.
        """
        regions = self.regions if regions is None else regions
        canonical = CanonicalPages(self, [self.region_records(r) for r in regions])
        decoders = max(1, jobs - 1)
        with ThreadPoolExecutor(decoders, thread_name_prefix="vmsnap-decode") as pool:
            self._cache.clear()  # frames decoded before may be viewed by the caller: never reuse them
            self._frame_pool = _FramePool()
            self._prefetch = _Prefetcher(self, pool, regions, ahead=decoders)
            try:
                for r in regions:
                    checker = _BlockChecker(self, r) if checked else None
                    for piece in self.segments(r, canonical=canonical):
                        if checker:
                            checker.feed(piece)
                        sink(r, piece)
                        if progress:
                            progress(piece if isinstance(piece, int) else len(piece))
                        self._frame_pool.recycle()  # the piece is consumed: no view of a retired frame is left
                    if checker:
                        checker.finish()
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
            finally:
                canonical.close()
                self._prefetch = None
                self._frame_pool = None
                self._cache.clear()  # frames of this pass are pool buffers: do not let a later read keep them

    def stats(self) -> dict:
        ps = self.page_size
        rec = self.records
        pages_by_kind = {name: 0 for name in S.RECORD_KINDS.values()}
        pattern_pages: dict[str, int] = {}
        shared = _PageSet(self.data_pages)  # the REF records' targets: a bit per data page
        for _, block in _blocks(rec, self._drop_mapped_pages):
            kinds, counts = block["kind"], block["count"]
            for kind, name in S.RECORD_KINDS.items():
                pages_by_kind[name] += int(counts[kinds == kind].sum(dtype=np.uint64))
            sel = kinds == S.REC_PATTERN
            for arg, count in zip(block["arg"][sel].tolist(), counts[sel].tolist()):
                name = P.pattern_kind_name(len(self.patterns[arg]))
                pattern_pages[name] = pattern_pages.get(name, 0) + count
            sel = kinds == S.REC_REF
            shared.add(block["arg"][sel], block["arg"][sel] + counts[sel].astype(np.uint64))
        shared.finish()
        image_bytes = sum(r.size for r in self.regions)
        data_bytes = int(self.frames["size"].sum(dtype=np.uint64))
        return {
            "file": self.path,
            "format_version": S.FORMAT_VERSION,
            "source": self.source,
            "page_size": ps,
            "image_bytes": image_bytes,
            "snapshot_bytes": self.file_size,
            "compression_ratio": image_bytes / self.file_size if self.file_size else 0.0,
            "pages": pages_by_kind,
            "image_bytes_by_kind": {k: v * ps for k, v in pages_by_kind.items()},
            "pattern_pages": pattern_pages,
            "patterns": len(self.patterns),
            "sparse_pages": len(self.sparse_offsets) - 1,
            "pages_shared": shared.count,
            "pages_sharing": pages_by_kind["ref"],
            "attachments": [{"name": a.name, "size": a.size, "stored": a.stored, "digest": a.digest.hex()}
                            for a in self.attachments.values()],
            "stored_bytes": {"data_frames": data_bytes,
                             "attachments": sum(a.stored for a in self.attachments.values()),
                             "index": self.index_size,
                             "header_and_trailer": self.header_size + S.TRAILER_SIZE},
            "data_pages": self.data_pages,
            "frames": len(self.frames),
            "frame_pages": self.frame_pages,
            "records": len(rec),
            "image_digest": self.image_digest.hex(),
            "regions": [{"name": r.name, "base": r.base, "size": r.size, "digest": r.digest.hex(),
                         "records": r.record_count} for r in self.regions],
        }

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _TemporaryMapping:
    """An unlinked temporary file in $TMPDIR, written or allocated, then mapped; the
    mapping keeps the file after it is closed, until the last view of it is gone.
    Its errors name $TMPDIR and `purpose`."""

    def __init__(self, purpose: str):
        self.purpose = purpose

    def __enter__(self) -> "_TemporaryMapping":
        self._file = self._do(lambda: tempfile.TemporaryFile(prefix="vmsnap-"))
        return self

    def write(self, data) -> None:
        self._do(lambda: self._file.write(data))

    def allocate(self, size: int) -> None:
        """`size` zero bytes, allocated now: a full disk is an error here, not SIGBUS at a
        later store into the mapping."""
        self._do(lambda: os.posix_fallocate(self._file.fileno(), 0, size))

    def map(self, size: int, writable: bool = False) -> mmap.mmap | None:
        """The file's first `size` bytes (None for none)."""
        self._do(self._file.flush)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return self._do(lambda: mmap.mmap(self._file.fileno(), size, prot=prot)) if size else None

    def __exit__(self, *exc) -> None:
        self._file.close()

    def _do(self, action):
        try:
            return action()
        except OSError as exc:
            raise temporary_file_error(self.purpose, os_error_message(exc)) from None


class _HashedRange:
    """Bytes [offset, offset+size) of a snapshot, read a piece at a time and hashed as
    they go (a file-like source for the decompressor)."""

    PIECE = 1 << 20

    def __init__(self, snap: Snapshot, offset: int, size: int, what: str):
        self.snap, self.pos, self.end, self.what = snap, offset, offset + size, what
        self.hash = blake3()

    def read(self, n: int = -1) -> bytes:
        n = self.end - self.pos if n is None or n < 0 else min(n, self.end - self.pos)
        if n <= 0:
            return b""
        data = self.snap._pread(self.pos, n, self.what)
        self.hash.update(data)
        self.pos += n
        return data

    def finish(self) -> bytes:
        """The digest of the whole range, the part the decompressor left unread included."""
        while self.read(self.PIECE):
            pass
        return self.hash.digest()


class _BlockChecker:
    """Checks a region's produced bytes block by block against the stored digests (blocks
    [first, last) of it; all of them by default)."""

    def __init__(self, snap: Snapshot, region: RegionInfo, first: int = 0, last: int | None = None):
        self.snap, self.region, self.first = snap, region, first
        self.expected = snap._block_table(region, first, last)
        # Hashing here, one thread: the pool's threads decode frames on the other CPUs
        # (BLAKE3's own threads would take them from the decoding).
        self.hasher = BlockHasher(snap.block_size, max_threads=1)
        self.checked = 0

    def feed(self, piece) -> None:
        if isinstance(piece, int):
            self.hasher.update_zero(piece)
        else:
            self.hasher.update(piece)
        self._check()

    def _check(self) -> None:
        got = self.hasher.take()
        if not got:
            return
        n = len(got) // S.BLOCK_DIGEST_SIZE
        want = self.expected[self.checked:self.checked + n]
        if len(want) < n or want.tobytes() != got:
            have = np.frombuffer(got, want.dtype)[:len(want)]
            wrong = np.flatnonzero(have != want)
            at = self.first + self.checked + (int(wrong[0]) if len(wrong) else len(want))
            raise IntegrityError(f"{self.snap.path}: region {self.region.name!r} block at offset "
                                 f"{at * self.snap.block_size:#x} failed its digest")
        self.checked += n

    def finish(self) -> None:
        self.hasher.finish()
        self._check()
        if self.checked != len(self.expected):
            raise IntegrityError(f"{self.snap.path}: region {self.region.name!r} is short: "
                                 f"{self.checked} of {len(self.expected)} blocks")


class OutputCheck:
    """Checks the block digests of regions laid out in an output file (at the given file
    offsets, in increasing order, not overlapping) from the file's bytes as they are
    written: feed() spans in increasing offsets, bytes never fed are zeros (holes).
    Bytes outside the regions (an ELF core's headers) are not checked."""

    def __init__(self, snap: Snapshot, placed: list[tuple[RegionInfo, int]]):
        self._snap = snap
        self._todo = sorted(((offset, offset + r.size, r) for r, offset in placed if r.size), key=lambda t: t[0])
        for r, _ in placed:
            if not r.size:  # no bytes, so no blocks: its table must be empty too
                _BlockChecker(snap, r).finish()
        self._current: _BlockChecker | None = None
        self._pos = 0  # every byte before it was fed

    def feed(self, offset: int, data) -> None:
        data = memoryview(data).cast("B")
        if offset < self._pos:
            raise OutputError(f"internal error: output bytes at {offset:#x} fed after {self._pos:#x}")
        self._span(self._pos, offset, None)
        self._span(offset, offset + len(data), data)
        self._pos = offset + len(data)

    def finish(self, size: int) -> None:
        self._span(self._pos, size, None)
        self._pos = max(self._pos, size)
        if self._todo:
            raise OutputError(f"internal error: region {self._todo[0][2].name!r} ends beyond the output")

    def _span(self, start: int, end: int, data: memoryview | None) -> None:
        """Feed [start, end) of the file (data, or zeros when None) to the regions in it."""
        while self._todo and start < end:
            first, last, region = self._todo[0]
            if end <= first:
                return
            if self._current is None:
                self._current = _BlockChecker(self._snap, region)
            lo, hi = max(start, first), min(end, last)
            if lo < hi:
                self._current.feed(hi - lo if data is None else data[lo - start:hi - start])
            if last > end:
                return
            self._current.finish()
            self._current = None
            self._todo.pop(0)


class _FramePool:
    """Decoded-frame buffers reused across a produce() pass.

    A frame that leaves the cache is retired, and its buffer is reused only after
    produce() has handed the current piece to the sink. Today every piece is
    consumed before the next frame is fetched, so no view of a retired frame is
    alive anyway; the wait keeps a piece that views two frames safe too.
    """

    def __init__(self):
        self._free: list[np.ndarray] = []
        self._retired: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= nbytes:
                    return self._free.pop(i)[:nbytes]
        return np.empty(nbytes, dtype=np.uint8)

    def retire(self, frame: np.ndarray) -> None:
        base = frame.base if frame.base is not None else frame
        self._retired.append(base)

    def recycle(self) -> None:
        if self._retired:
            with self._lock:
                self._free.extend(self._retired)
            self._retired = []


class _Prefetcher:
    """Decodes frames in the pool ahead of their use, in the order a pass first uses them."""

    def __init__(self, snap: Snapshot, pool: ThreadPoolExecutor, regions: list[RegionInfo], ahead: int):
        self.snap, self.pool, self.ahead = snap, pool, ahead
        self.order = _frames_in_use_order(snap, regions)
        self.position = {k: i for i, k in enumerate(self.order)}
        self.next = 0  # position in self.order of the next frame to submit
        self.futures: dict[int, Future] = {}
        self._submit_ahead()

    def get(self, k: int) -> np.ndarray:
        fut = self.futures.pop(k, None)
        self.next = max(self.next, self.position.get(k, -1) + 1)
        self._submit_ahead()
        if fut is None or fut.cancel():  # not started yet: decode here rather than wait behind other work
            return self.snap._decode_frame(k)
        return fut.result()

    def _submit_ahead(self) -> None:
        while len(self.futures) < self.ahead and self.next < len(self.order):
            k = self.order[self.next]
            self.next += 1
            if k not in self.futures and k not in self.snap._cache:
                self.futures[k] = self.pool.submit(self.snap._decode_frame, k)


def _frames_in_use_order(snap: Snapshot, regions: list[RegionInfo]) -> list[int]:
    """The frames that the DATA records of `regions` read, in order of first use."""
    order: dict[int, None] = {}  # insertion-ordered: a frame's first use
    fp = np.uint64(snap.frame_pages)
    for r in regions:
        for _, block in _blocks(snap.region_records(r), snap._drop_mapped_pages):
            data = block[block["kind"] == S.REC_DATA]
            first = data["arg"] // fp
            last = (data["arg"] + data["count"].astype(np.uint64) - np.uint64(1)) // fp
            frames = _expand_runs(first, last - first + np.uint64(1))
            unique, first_seen = np.unique(frames, return_index=True)
            order.update(dict.fromkeys(unique[np.argsort(first_seen, kind="stable")].tolist()))
    return list(order)


class CanonicalPages:
    """Keeps each referenced data page from its decoding until its last reference.

    Restoring in order, a REF run points back at pages decoded earlier. Holding
    just those pages, and only until their last use, avoids decoding a frame twice
    while keeping memory to the pages still to be referenced.

    Memory holds KEEP_CANONICAL_BYTES of them; the rest go to a temporary file (the
    spill), and a later reference reads its page back from there. Decoding the
    page's whole frame again instead would cost a frame per page when references
    come in random order, as they do for pages that same-page merging finds
    scattered over a guest's memory (a 256 MiB image whose second half is its
    first half's pages shuffled restored in 132 s, against 0.3 s for zstd -d).

    The plan: the referenced pages as a bitmap over the data pages with a rank
    directory (a bit per data page), and per referenced page, by its rank among
    them, the references still to come, its memory slot and its place in the
    spill (12 bytes). A page is released when its count reaches zero, whatever
    order the references come in. Past PLAN_MEMORY_BYTES those per-page arrays
    are in a mapped temporary file whose pages are dropped a block of records at
    a time, like a large index. It is built in two passes over the records, a
    block at a time, so nothing is held per reference. (Tracking each page's last
    use instead cost 48 bytes per page and 33 per reference while the plan was
    built: 100 MiB for a 64 GiB guest; sorted runs of referenced pages, 12 bytes
    per page and 60 per reference while they were merged.)
    """

    def __init__(self, snap: Snapshot, record_runs: list[np.ndarray]):
        """record_runs: the records to be produced, in order (a region's, or part of one)."""
        self.snap = snap
        ps = snap.page_size
        self.wanted = _PageSet(snap.data_pages)
        reads = 0
        for starts, ends in _plan_reads(snap, record_runs):
            self.wanted.add(starts, ends)
            reads += int((ends - starts).sum(dtype=np.uint64))
        self.wanted.finish()
        self.wanted_count = n = self.wanted.count
        count_type = np.int32 if reads < 1 << 31 else np.int64
        place = np.int32 if n < 1 << 31 else np.int64  # the spill holds each page once at most
        per_page = 2 * np.dtype(count_type).itemsize + np.dtype(place).itemsize
        self._arrays = _PlanArrays(snap, in_file=n * per_page > PLAN_MEMORY_BYTES)
        self.remaining = self._reads_per_page(record_runs, count_type)  # references still to come, by rank
        slots = min(max(1, KEEP_CANONICAL_BYTES // ps), n)
        self.store = np.empty((slots, ps), np.uint8)  # a slot takes memory when first used
        self.free = np.arange(slots, dtype=np.int32)[::-1].copy()  # a stack: free[:free_count], slot 0 on top
        self.free_count = slots
        self.slot = self._arrays.full(n, np.int32, -1)  # each page's slot, -1 if not in memory
        self.spilled = self._arrays.full(n, place, -1)  # each page's place in the spill, -1 if none
        self._spill: BinaryIO | None = None  # made at the first page that memory cannot hold
        self._spill_pages = 0

    def _reads_per_page(self, record_runs: list[np.ndarray], dtype) -> np.ndarray:
        """How many times each page (by rank) is read: +1 at each read run's first rank and
        -1 past its last (a run's pages have consecutive ranks), summed up."""
        counts = self._arrays.full(self.wanted_count + 1, dtype, 0)
        for starts, ends in _plan_reads(self.snap, record_runs):
            if len(starts):
                first, _ = self.wanted.lookup(starts)
                np.add.at(counts, first, 1)
                np.add.at(counts, first + (ends - starts).astype(np.int64), -1)
        carry = 0
        for b0 in range(0, len(counts), PLAN_CHUNK):  # a piece at a time: a mapped array stays unmapped
            part = counts[b0:b0 + PLAN_CHUNK]
            np.cumsum(part, out=part)
            part += carry
            carry = int(part[-1])
            self.snap._drop_mapped_pages()
        return counts[:-1]

    def _lookup(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rank, referenced) of data pages d; a rank is meaningless where not referenced."""
        return self.wanted.lookup(d)

    def offer(self, dpn: int, rows: np.ndarray) -> None:
        """A data run [dpn, dpn+len(rows)) was decoded: keep the pages referenced later."""
        at = self.wanted.within(dpn, dpn + len(rows))
        if len(at):  # in order, the referenced pages' ranks follow one another
            r0 = self.wanted.rank(dpn)
            self._keep(np.arange(r0, r0 + len(at)), rows, at)

    def offer_pages(self, dpns: np.ndarray, rows: np.ndarray, at: np.ndarray) -> None:
        """Data pages dpns (any order) were decoded into rows[at]: keep those referenced later."""
        if self.wanted_count and len(dpns):
            ranks, hit = self._lookup(dpns)
            self._keep(ranks[hit], rows, at[hit])

    def _keep(self, j: np.ndarray, rows: np.ndarray, at: np.ndarray) -> None:
        """Hold pages of rank j, whose contents are rows[at], in memory or else in the spill."""
        new = (self.slot[j] < 0) & (self.spilled[j] < 0) & (self.remaining[j] > 0)
        j, at = j[new], at[new]
        keep = min(len(j), self.free_count)
        if keep:
            self.free_count -= keep
            slots = self.free[self.free_count:self.free_count + keep][::-1]  # slot 0 first while fresh
            if np.all(np.diff(slots) == 1):
                # consecutive slots: one copy straight into the store, not a gather and a scatter
                # (mode "raise" with out= copies through a buffer: ten times slower)
                first = int(slots[0])
                np.take(rows, at[:keep], axis=0, out=self.store[first:first + keep], mode="clip")
            else:
                self.store[slots] = rows[at[:keep]]
            self.slot[j[:keep]] = slots
        if keep < len(j):
            self._spill_out(j[keep:], rows[at[keep:]])

    def _spill_out(self, j: np.ndarray, pages: np.ndarray) -> None:
        """Append pages to the spill file (unlinked from the start: nothing is left behind)."""
        try:
            if self._spill is None:
                self._spill = tempfile.TemporaryFile(prefix="vmsnap-spill-")
            pwrite_all(self._spill.fileno(), np.ascontiguousarray(pages), self._spill_pages * self.snap.page_size)
        except OSError as exc:
            raise _spill_error(os_error_message(exc)) from None
        self.spilled[j] = np.arange(self._spill_pages, self._spill_pages + len(j))
        self._spill_pages += len(j)

    def take(self, dpn: int, count: int) -> memoryview:
        """`count` pages of a REF run from data page `dpn`."""
        return memoryview(self._take_range(dpn, count).reshape(-1))

    def take_each(self, dpns: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
        """The data pages `dpns`, as the REF and SLICE pages being produced read them
        (`times` each, once by default)."""
        ranks, hit = self._lookup(dpns)
        pages = self._pages(dpns, ranks, hit)
        self._consume(ranks[hit], None if times is None else times[hit])
        return pages

    def take_slice(self, offset: int, count: int) -> memoryview:
        """`count` pages of a slice run at byte `offset` of the data page stream."""
        ps = self.snap.page_size
        first, shift = divmod(offset, ps)
        n = count + (shift != 0)
        # an unaligned page reads the two pages it straddles (as _read_runs counts them)
        times = None
        if shift and n > 2:
            times = np.full(n, 2, self.remaining.dtype)
            times[0] = times[-1] = 1
        joined = self._take_range(first, n, times).reshape(-1)
        return memoryview(joined)[shift:shift + count * ps]

    def _take_range(self, first: int, n: int, times: np.ndarray | None = None) -> np.ndarray:
        """Data pages [first, first+n), each read `times` (once by default). Referenced
        pages in a row have consecutive ranks: slices of the tables instead of lookups."""
        r0 = self.wanted.rank(first)
        if self.wanted.rank(first + n) - r0 != n:  # not every page of the range is referenced
            return self.take_each(np.arange(first, first + n, dtype=np.uint64), times)
        slots = self.slot[r0:r0 + n]
        if slots.min() >= 0:
            pages = self.store[slots]
        else:
            pages = self._pages(np.arange(first, first + n, dtype=np.uint64), np.arange(r0, r0 + n), np.ones(n, bool))
        left = self.remaining[r0:r0 + n]  # a view: counted down in place
        left -= np.minimum(left, 1 if times is None else times)
        self._release(np.flatnonzero(left == 0) + r0)
        return pages

    def _pages(self, d: np.ndarray, ranks: np.ndarray, hit: np.ndarray) -> np.ndarray:
        """Data pages d (uint64 numbers), from memory, the spill, or decoded again."""
        slots = np.where(hit, self.slot[ranks], -1) if len(self.slot) else np.full(len(d), -1)
        places = np.where(hit, self.spilled[ranks], -1) if len(self.slot) else slots
        if len(d) and slots.min() >= 0:
            return self.store[slots]
        out = np.empty((len(d), self.snap.page_size), np.uint8)
        kept = slots >= 0
        out[kept] = self.store[slots[kept]]
        spilled = np.flatnonzero(~kept & (places >= 0))
        if len(spilled):  # one read per run of pages that are consecutive here and in the spill
            where = places[spilled]
            cuts = np.flatnonzero((np.diff(spilled) != 1) | (np.diff(where) != 1)) + 1
            starts, ends = np.concatenate(([0], cuts)).tolist(), np.concatenate((cuts, [len(spilled)])).tolist()
            for s, e, row, place in zip(starts, ends, spilled[starts].tolist(), where[starts].tolist()):
                self._spill_in(place, out[row:row + e - s])
        again = np.flatnonzero(~kept & (places < 0))  # not decoded in this pass: decode them now
        if len(again):
            out[again] = self.snap.gather_data_pages(d[again])
        return out

    def _spill_in(self, place: int, out: np.ndarray) -> None:
        ps = self.snap.page_size
        try:
            got = os.preadv(self._spill.fileno(), [out], place * ps)
        except OSError as exc:
            raise _spill_error(os_error_message(exc)) from None
        if got != out.nbytes:
            raise _spill_error(f"read {got} of {out.nbytes} bytes at page {place}")

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        self._arrays.close()

    def _consume(self, j: np.ndarray, times: np.ndarray | None = None) -> None:
        """Pages of rank j were read (`times` each, once by default)."""
        if not len(j):
            return
        if times is None and len(j) > 1 and not np.all(j[1:] > j[:-1]):
            j, times = np.unique(j, return_counts=True)  # a window may read a page more than once
        left = self.remaining[j]
        # More reads than planned cannot happen; were it to, the count stays at zero and
        # the page is decoded again when asked for: never wrong bytes.
        left -= np.minimum(left, 1 if times is None else times.astype(left.dtype))
        self.remaining[j] = left
        self._release(j[left == 0])

    def _release(self, done: np.ndarray) -> None:
        """Pages of rank `done` were read for the last time: free their slots."""
        if not len(done):
            return
        slots = self.slot[done]
        slots = slots[slots >= 0]
        self.free[self.free_count:self.free_count + len(slots)] = slots
        self.free_count += len(slots)
        self.slot[done] = -1
        self.spilled[done] = -1  # its place in the spill is not reused: the file only grows


def _plan_reads(snap: Snapshot, record_runs: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The read runs (_read_runs) of the records, a block at a time."""
    for recs in record_runs:
        for _, block in _blocks(recs, snap._drop_mapped_pages):
            yield _read_runs(block, snap.page_size)


_LOW_BITS = np.array([(1 << k) - 1 for k in range(65)], dtype=np.uint64)  # [k]: the k lowest bits set
_BITS_IN_BYTE = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _popcount(words: np.ndarray) -> np.ndarray:
    """The number of bits set in each uint64."""
    return _BITS_IN_BYTE[np.ascontiguousarray(words, np.uint64).view(np.uint8)].reshape(-1, 8).sum(axis=1)


class _PageSet:
    """A set of data pages: a bitmap, a bit per page, and a rank directory, the number
    of pages of the set before each 64 (a page's rank is the number before it)."""

    def __init__(self, pages: int):
        self.words = np.zeros(pages // 64 + 1, np.uint64)  # room for a rank at `pages` itself
        self._whole = np.zeros(len(self.words) + 1, np.int32)  # +1/-1 where runs of whole words start/end
        self.before: np.ndarray | None = None
        self.count = 0

    def add(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Add the pages of runs [starts, ends)."""
        s, e = starts.astype(np.int64), ends.astype(np.int64)
        s, e = s[e > s], e[e > s]
        first, last = s >> 6, (e - 1) >> 6
        one = first == last
        np.bitwise_or.at(self.words, first[one], _LOW_BITS[(e - s)[one]] << (s[one] & 63).astype(np.uint64))
        s, e, first, last = s[~one], e[~one], first[~one], last[~one]
        np.bitwise_or.at(self.words, first, ~_LOW_BITS[s & 63])  # from the first page to its word's end
        np.bitwise_or.at(self.words, last, _LOW_BITS[((e - 1) & 63) + 1])  # the last word, up to the last page
        middle = last - first > 1
        np.add.at(self._whole, first[middle] + 1, 1)
        np.add.at(self._whole, last[middle], -1)

    def finish(self) -> None:
        """Done adding: fill the whole words and count."""
        self.words[np.cumsum(self._whole[:-1]) > 0] = ~np.uint64(0)
        self._whole = None
        self.before = np.concatenate([[0], np.cumsum(_popcount(self.words))])
        self.count = int(self.before[-1])

    def rank(self, page: int) -> int:
        w = page >> 6
        return int(self.before[w]) + (int(self.words[w]) & ((1 << (page & 63)) - 1)).bit_count()

    def lookup(self, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rank, in the set) of each page; the rank of a page not in the set is that of
        a page that is, to index with (or 0 in an empty set)."""
        d = pages.astype(np.int64)
        w, bit = d >> 6, (d & 63).astype(np.uint64)
        word = self.words[w]
        rank = self.before[w] + _popcount(word & _LOW_BITS[bit])
        return np.minimum(rank, max(self.count - 1, 0)), ((word >> bit) & np.uint64(1)).astype(bool)

    def within(self, first: int, end: int) -> np.ndarray:
        """The set's pages in [first, end), as offsets from `first`."""
        w0, w1 = first >> 6, -(-end // 64)
        words = self.words[w0:w1]
        if not words.any():
            return np.zeros(0, np.intp)
        bits = np.unpackbits(words.view(np.uint8), bitorder="little")
        return np.flatnonzero(bits[first - 64 * w0:end - 64 * w0])

    def minus(self, other: "_PageSet") -> "_PageSet":
        """The pages of this set that are not in `other` (both finished; for within())."""
        if self._whole is not None or other._whole is not None:
            raise ValueError("a set's whole words are filled in by finish()")
        out = _PageSet(0)
        out.words = self.words & ~other.words
        return out


class _PlanArrays:
    """The per-page arrays of a plan: in memory, or (when together they would take more
    than PLAN_MEMORY_BYTES) each in an unlinked temporary file, mapped, whose pages the
    snapshot drops a block of records at a time."""

    def __init__(self, snap: Snapshot, in_file: bool):
        self.snap, self.in_file = snap, in_file
        self._maps: list[mmap.mmap] = []

    def full(self, n: int, dtype, value: int) -> np.ndarray:
        if not self.in_file:
            return np.full(n, value, dtype)
        size = max(1, n * np.dtype(dtype).itemsize)
        with _TemporaryMapping("shared pages") as spill:
            spill.allocate(size)
            mapped = spill.map(size, writable=True)
        self._maps.append(mapped)
        self.snap._mapped.append(mapped)
        array = np.frombuffer(mapped, dtype, n)
        if value:
            for b0 in range(0, n, PLAN_CHUNK):
                array[b0:b0 + PLAN_CHUNK] = value
                self.snap._drop_mapped_pages()
        return array

    def close(self) -> None:
        for mapped in self._maps:
            self.snap._mapped.remove(mapped)
        self._maps = []


def _spill_error(what: str) -> OutputError:
    return temporary_file_error("shared pages", what)


def _arg_step(kind: int, page_size: int) -> int:
    """How far a run's arg advances per page."""
    if kind in (S.REC_SPARSE, S.REC_DATA, S.REC_REF):
        return 1
    return page_size if kind == S.REC_SLICE else 0


def _read_runs(rec: np.ndarray, page_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The data pages that REF and SLICE records read, as runs [starts, ends): a page is
    read once for each run it lies in.

    A REF page reads one data page; a SLICE page at an unaligned offset reads the
    two data pages it straddles (an aligned one reads one), so an unaligned slice
    run of n pages from data page f reads runs [f, f+n) and [f+1, f+n+1).
    """
    sel = (rec["kind"] == S.REC_REF) | (rec["kind"] == S.REC_SLICE)
    kinds, args, counts = rec["kind"][sel], rec["arg"][sel], rec["count"][sel].astype(np.uint64)
    is_slice = kinds == S.REC_SLICE
    first = np.where(is_slice, args // np.uint64(page_size), args)
    straddles = is_slice & (args % np.uint64(page_size) != 0)
    return (np.concatenate([first, first[straddles] + np.uint64(1)]),
            np.concatenate([first + counts, first[straddles] + counts[straddles] + np.uint64(1)]))


def _cut(pieces, at: int, start: int, end: int) -> Iterator[int | memoryview]:
    """The part of `pieces` (the first at offset `at`) that lies in [start, end)."""
    for piece in pieces:
        n = piece if isinstance(piece, int) else len(piece)
        s, e = max(at, start), min(at + n, end)
        if s < e:
            yield e - s if isinstance(piece, int) else memoryview(piece)[s - at:e - at]
        at += n


def _blocks(table: np.ndarray, after: Callable[[], None] | None = None,
            overlap: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(b0, table[b0:b0 + RECORD_BLOCK + overlap]) for each block; after() runs once each
    block is done with (Snapshot._drop_mapped_pages)."""
    for b0 in range(0, len(table) - overlap, RECORD_BLOCK):
        yield b0, table[b0:b0 + RECORD_BLOCK + overlap]
        if after is not None:
            after()


def _record_at(recs: np.ndarray, page: int, after: Callable[[], None] | None = None) -> tuple[int, int]:
    """(index of the record that holds `page`, pages before that record); (len(recs), all
    their pages) past the end. A block of records at a time (after(): see _blocks)."""
    before = 0
    for b0, block in _blocks(recs, after):
        ends = np.cumsum(block["count"].astype(np.int64)) + before
        if ends[-1] > page:
            i = int(np.searchsorted(ends, page, side="right"))
            return b0 + i, int(ends[i - 1]) if i else before
        before = int(ends[-1])
    return len(recs), before


def _short_run_ends(counts: np.ndarray, short: int) -> np.ndarray:
    """For each record: one past the last of the consecutive records of fewer than `short`
    pages from it on (up to the end of `counts`)."""
    n = len(counts)
    others = np.append(np.flatnonzero(counts >= short), n)
    return others[np.searchsorted(others, np.arange(n))]


class _WindowPlan:
    """Where each page of a window of records comes from, by kind, as index arrays.

    A REF page reads one data page and a SLICE page at an unaligned offset the two
    it straddles: `reads` lists them in the number that _read_runs counts them,
    which CanonicalPages releases its pages by.
    """

    def __init__(self, kinds: np.ndarray, args: np.ndarray, counts: np.ndarray, page_size: int, limit: int):
        self.page_size = page_size
        counts = counts.astype(np.int64)
        record = np.repeat(np.arange(len(kinds)), counts)[:limit]
        within = (np.arange(len(record)) - np.repeat(np.cumsum(counts) - counts, counts)[:limit]).astype(np.uint64)
        kind, arg = kinds[record], args[record]
        self.pages = len(record)
        self.zero = np.flatnonzero(kind == S.REC_ZERO)
        self.pattern = np.flatnonzero(kind == S.REC_PATTERN)
        self.pattern_ids = arg[self.pattern]
        self.sparse = np.flatnonzero(kind == S.REC_SPARSE)
        self.sparse_ids = arg[self.sparse] + within[self.sparse]
        self.data = np.flatnonzero(kind == S.REC_DATA)
        self.dpns = arg[self.data] + within[self.data]
        self.shared = np.flatnonzero((kind == S.REC_REF) | (kind == S.REC_SLICE))
        ps = np.uint64(page_size)
        sa, sw = arg[self.shared], within[self.shared]
        offset = np.where(kind[self.shared] == S.REC_SLICE, sa + sw * ps, (sa + sw) * ps)
        self.shift = (offset % ps).astype(np.intp)
        two = self.shift != 0
        self.first_read = np.cumsum(1 + two) - 1 - two  # index in reads of each shared page's first
        self.reads = np.repeat(offset // ps, 1 + two)
        self.reads += (np.arange(len(self.reads)) - np.repeat(self.first_read, 1 + two)).astype(np.uint64)

    def put_shared(self, out: np.ndarray, rows: np.ndarray) -> None:
        """Put the shared pages into out from `rows`, the data pages in `reads`: one block
        copy per distinct offset."""
        ps = self.page_size
        for s in np.unique(self.shift).tolist():
            sel = np.flatnonzero(self.shift == s)
            at, dest = self.first_read[sel], self.shared[sel]
            if s == 0:
                out[dest] = rows[at]
            else:
                out[dest, :ps - s] = rows[at, s:]
                out[dest, ps - s:] = rows[at + 1, :s]


def _expand_runs(args: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[a, a+1, ..., a+c-1 for each run] as one uint64 array."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.uint64)
    starts = np.repeat(args.astype(np.uint64) - np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.uint64),
                       counts)
    return starts + np.arange(total, dtype=np.uint64)


def _array(raw, dtype: np.dtype, what: str, path: str) -> np.ndarray:
    if len(raw) % dtype.itemsize:
        raise FormatError(f"{path}: malformed index: {what} is not a whole number of entries")
    table = np.frombuffer(raw, dtype=dtype)
    table.flags.writeable = False
    return table
