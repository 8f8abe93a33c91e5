"""Reader and writer of the vmsnap accessed-bitmap series file (layout: structs.py).

The reader checks every period's digest before yielding it, and the trailer
after the last one, so a corrupted or cut file never turns into a different
series: it fails with the byte offset of the damaged record.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Iterator

from ..errors import FormatError, InputError, IntegrityError, UnsupportedVersionError, UsageError
from . import structs as S
from .base import Period, ScanSeries, Segment, pack_bitmap, unpack_bitmap


def _blake3(*parts: bytes, length: int = S.DIGEST_SIZE) -> bytes:
    import blake3

    h = blake3.blake3()
    for p in parts:
        h.update(p)
    return h.digest(length)


def _check_geometry(page_size: int, n_pages: int, what: str, error=UsageError) -> None:
    if page_size < 512 or page_size & (page_size - 1):
        raise error(f"{what}: a series file's page size is a power of two from 512, not {page_size}")
    if n_pages < 1:
        raise error(f"{what}: a series must cover at least one page")


class SeriesScans(ScanSeries):
    """A ``.vmscan`` file (see structs.py for the byte layout)."""

    format_name = "series"

    def __init__(self, path: str):
        from ..sources.raw import open_input

        self.path = path
        self._fh: BinaryIO = open_input(path)
        raw = self._fh.read(S.HEADER_SIZE)
        if len(raw) < len(S.MAGIC) or not raw.startswith(S.MAGIC):
            self._fh.close()
            raise FormatError(f"{path}: offset 0: not a vmsnap scan series (bad magic)")
        if len(raw) < S.HEADER_SIZE:
            self._fh.close()
            raise IntegrityError(f"{path}: offset {len(raw)}: truncated header")
        hdr = S.Header.parse(raw)
        if hdr.version > S.VERSION or hdr.version == 0:
            self._fh.close()
            raise UnsupportedVersionError(
                f"{path}: offset 8: series version {hdr.version}, this vmsnap reads {S.VERSION}"
            )
        if _blake3(raw[: S.HEADER_DIGESTED], length=8) != hdr.header_digest:
            self._fh.close()
            raise IntegrityError(f"{path}: offset 32: header digest mismatch")
        if hdr.flags:
            self._fh.close()
            raise FormatError(f"{path}: offset 10: unknown flags {hdr.flags:#x}")
        _check_geometry(hdr.page_size, hdr.n_pages, f"{path}: offset 12", FormatError)
        super().__init__([path], hdr.page_size)
        self._header = raw
        self._n_pages = hdr.n_pages
        self.base = hdr.base
        self._size = self._file_size()
        per = S.period_size(self._n_pages)
        body = None if self._size is None else self._size - S.HEADER_SIZE - S.TRAILER_SIZE
        if body is not None and (body < 0 or 0 < body < per):
            # Said before the analysis sizes its per-page state by n_pages: a forged count
            # in a 40-byte file must not become gigabytes of memory.
            self._fh.close()
            raise IntegrityError(f"{path}: offset {self._size}: truncated: a period of {self._n_pages} pages "
                                 f"takes {per} bytes")
        self._n_periods = self._count_periods()

    def _file_size(self) -> int | None:
        import stat

        try:
            st = os.fstat(self._fh.fileno())
        except (OSError, ValueError, AttributeError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def _count_periods(self) -> int | None:
        size = self._size
        if size is None:
            return None
        body = size - S.HEADER_SIZE - S.TRAILER_SIZE
        per = S.period_size(self._n_pages)
        return body // per if body >= 0 and body % per == 0 else None

    @property
    def n_pages(self) -> int:
        return self._n_pages

    @property
    def n_periods(self) -> int | None:
        return self._n_periods

    @property
    def segments(self) -> list[Segment]:
        return [Segment("pages", self.base, 0, self._n_pages)]

    def _read(self, n: int, offset: int, what: str) -> bytes:
        if self._size is not None and offset + n > self._size:
            # check before read(): a forged n_pages must not become a huge allocation
            raise IntegrityError(
                f"{self.path}: offset {self._size}: truncated in {what} "
                f"({offset + n - self._size} bytes missing)"
            )
        try:
            buf = self._fh.read(n)
        except OSError as exc:
            raise InputError(f"{self.path}: offset {offset}: read failed: {exc.strerror or exc}") from None
        if len(buf) < n:
            raise IntegrityError(
                f"{self.path}: offset {offset + len(buf)}: truncated in {what} "
                f"({n - len(buf)} bytes missing)"
            )
        return buf

    def periods(self) -> Iterator[Period]:
        import numpy as np

        nbytes = S.bitmap_size(self._n_pages)
        offset = S.HEADER_SIZE
        running = [self._header]
        index = 0
        while True:
            tag = self._fh.read(4)
            if tag == S.END_TAG:
                rest = self._read(S.TRAILER_SIZE - 4, offset + 4, "end record")
                tr = S.Trailer.parse(tag + rest)
                if tr.n_periods != index:
                    raise IntegrityError(
                        f"{self.path}: offset {offset + 4}: end record counts {tr.n_periods} "
                        f"periods, the file holds {index}"
                    )
                if _blake3(*running) != tr.digest:
                    raise IntegrityError(f"{self.path}: offset {offset + 8}: series digest mismatch")
                extra = self._fh.read(1)
                if extra:
                    raise FormatError(
                        f"{self.path}: offset {offset + S.TRAILER_SIZE}: data after the end record"
                    )
                return
            if len(tag) < 4:
                raise IntegrityError(
                    f"{self.path}: offset {offset + len(tag)}: truncated, no end record "
                    f"after {index} periods"
                )
            if tag != S.PERIOD_TAG:
                raise FormatError(
                    f"{self.path}: offset {offset}: expected a period or end record, found {tag!r}"
                )
            head = tag + self._read(S.PERIOD_HEAD_SIZE - 4, offset + 4, f"period {index}")
            bitmap = self._read(nbytes, offset + S.PERIOD_HEAD_SIZE, f"period {index} bitmap")
            digest = self._read(
                S.DIGEST_SIZE, offset + S.PERIOD_HEAD_SIZE + nbytes, f"period {index} digest"
            )
            if _blake3(head, bitmap) != digest:
                raise IntegrityError(f"{self.path}: offset {offset}: period {index} digest mismatch")
            ph = S.PeriodHead.parse(head)
            if ph.index != index:
                raise FormatError(
                    f"{self.path}: offset {offset + 4}: period {index} is numbered {ph.index}"
                )
            accessed = unpack_bitmap(bitmap, self._n_pages)
            tail_bits = nbytes * 8 - self._n_pages
            if tail_bits and bitmap[-1] >> (8 - tail_bits):
                raise FormatError(
                    f"{self.path}: offset {offset + S.PERIOD_HEAD_SIZE + nbytes - 1}: "
                    f"period {index}: padding bits set"
                )
            count = int(np.count_nonzero(accessed))
            if count != ph.n_accessed:
                raise FormatError(
                    f"{self.path}: offset {offset + 16}: period {index} says {ph.n_accessed} "
                    f"accessed pages, its bitmap has {count}"
                )
            running.append(digest)
            ts = None if ph.timestamp_ns == S.UNKNOWN_TIME else ph.timestamp_ns
            yield Period(index, ts, accessed)
            del accessed, bitmap  # one period in memory at a time: the next is read before the loop would drop it
            index += 1
            offset += S.period_size(self._n_pages)

    def close(self) -> None:
        self._fh.close()


class SeriesWriter:
    """Write a ``.vmscan`` file atomically: nothing appears under `path` unless close() succeeds.

    Use as a context manager; an exception inside the block leaves no file behind.
    """

    def __init__(self, path: str, page_size: int, n_pages: int, base: int = 0):
        from ..atomic import atomic_output

        _check_geometry(page_size, n_pages, path)
        self.path = path
        self.n_pages = n_pages
        self._ctx = atomic_output(path)
        self._fh = self._ctx.__enter__()
        head = S.Header.build(
            dict(version=S.VERSION, flags=0, page_size=page_size, n_pages=n_pages, base=base,
                 header_digest=b"\0" * 8)
        )[: S.HEADER_DIGESTED]
        header = head + _blake3(head, length=8)
        self._fh.write(header)
        self._running = [header]
        self._index = 0

    def add(self, accessed, timestamp_ns: int | None = None) -> None:
        """Append one period; `accessed` is a bool array of n_pages entries."""
        import numpy as np

        accessed = np.asarray(accessed, dtype=bool)
        if accessed.shape != (self.n_pages,):
            raise UsageError(
                f"{self.path}: period {self._index} has {accessed.size} pages, series has {self.n_pages}"
            )
        head = S.PeriodHead.build(
            dict(index=self._index,
                 timestamp_ns=S.UNKNOWN_TIME if timestamp_ns is None else int(timestamp_ns),
                 n_accessed=int(np.count_nonzero(accessed)))
        )
        bitmap = pack_bitmap(accessed)
        digest = _blake3(head, bitmap)
        self._fh.write(head)
        self._fh.write(bitmap)
        self._fh.write(digest)
        self._running.append(digest)
        self._index += 1

    def close(self) -> None:
        if self._fh is None:
            return
        self._fh.write(S.Trailer.build(dict(n_periods=self._index, digest=_blake3(*self._running))))
        self._fh = None
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        if self._fh is not None:
            self._fh = None
            try:
                self._ctx.__exit__(type(exc), exc, exc.__traceback__)
            except BaseException:
                pass

    def __enter__(self) -> "SeriesWriter":
        return self

    def __exit__(self, et, ev, tb) -> None:
        if et is None:
            self.close()
        else:
            self.abort(ev)


def write_series(path: str, series: ScanSeries) -> int:
    """Copy any scan series into a ``.vmscan`` file; returns the number of periods written."""
    base = series.segments[0].base if series.segments else 0
    with SeriesWriter(path, series.page_size, series.n_pages, base) as w:
        for p in series.periods():
            w.add(p.accessed, p.timestamp_ns)
        return w._index

