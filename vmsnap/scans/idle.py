"""Linux idle-page bitmaps: one file per scan period, a copy of /sys/kernel/mm/page_idle/bitmap.

Layout (Documentation/admin-guide/mm/idle_page_tracking.rst): an array of
64-bit words in host byte order (read here as little-endian); bit i of word j
is PFN 64*j+i; a set bit means the page is *idle*, i.e. NOT accessed since it
was marked idle. So a scan period is: write all-ones to the bitmap (mark idle),
wait, copy the bitmap to a file. The accessed set of that period is the
complement of the file. Pages the kernel cannot track (not on an LRU list)
always read as not idle, so they show up as accessed every period.

Files are taken in the order given; a directory contributes its regular files
sorted by name (plain byte order: zero-pad numbers, scan-0009 < scan-0010).
The timestamp of a period is the file's modification time.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

from ..errors import InputError
from .base import Period, ScanSeries, Segment

DEFAULT_PAGE_SIZE = 4096


def list_bitmap_files(paths: Sequence[str]) -> list[str]:
    """Expand directories into their files sorted by name; keep files in the given order."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            try:
                names = sorted(os.listdir(p))
            except OSError as exc:
                raise InputError(f"{p}: cannot list: {exc.strerror or exc}") from None
            inner = [os.path.join(p, n) for n in names if not n.startswith(".")]
            inner = [f for f in inner if os.path.isfile(f)]
            if not inner:
                raise InputError(f"{p}: directory holds no bitmap files")
            files.extend(inner)
        elif os.path.exists(p):
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or directory")
    return files


class IdleBitmapScans(ScanSeries):
    format_name = "idle"

    def __init__(self, paths: Sequence[str], page_size: int = DEFAULT_PAGE_SIZE, first_pfn: int = 0):
        files = list_bitmap_files(paths)
        super().__init__(files, page_size)
        sizes = []
        for f in files:
            try:
                sizes.append(os.stat(f).st_size)
            except OSError as exc:
                raise InputError(f"{f}: cannot stat: {exc.strerror or exc}") from None
        first = sizes[0]
        if first == 0:
            raise InputError(f"{files[0]}: empty bitmap")
        for f, size in zip(files, sizes):
            if size % 8:
                raise InputError(
                    f"{f}: offset {size - size % 8}: size {size} is not a whole number of 64-bit words"
                )
            if size != first:
                raise InputError(
                    f"{f}: size {size} differs from {files[0]} ({first} bytes): "
                    "every scan must cover the same PFN range"
                )
        self._n_pages = first * 8
        self.first_pfn = first_pfn

    @property
    def n_pages(self) -> int:
        return self._n_pages

    @property
    def n_periods(self) -> int:
        return len(self.inputs)

    @property
    def segments(self) -> list[Segment]:
        return [Segment("pfn", self.first_pfn * self.page_size, 0, self._n_pages)]

    def periods(self) -> Iterator[Period]:
        import numpy as np

        nbytes = self._n_pages // 8
        for i, f in enumerate(self.inputs):
            try:
                with open(f, "rb") as fh:
                    data = fh.read(nbytes + 1)
                    mtime = os.fstat(fh.fileno()).st_mtime_ns
            except OSError as exc:
                raise InputError(f"{f}: cannot read: {exc.strerror or exc}") from None
            if len(data) != nbytes:
                raise InputError(
                    f"{f}: offset {min(len(data), nbytes)}: size changed while reading "
                    f"(expected {nbytes} bytes)"
                )
            accessed = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little").view(bool)
            del data
            np.logical_not(accessed, out=accessed)  # a set idle bit: not accessed
            yield Period(i, mtime, accessed)
            del accessed  # one period in memory at a time: the next is made before the loop would drop it


def write_idle_bitmap(path: str, accessed) -> None:
    """Write a bitmap file in the kernel layout from a bool accessed array (tests, conversions).

    Pages past the end of `accessed` up to the next multiple of 64 are written idle.
    """
    import numpy as np

    from ..atomic import atomic_output

    accessed = np.asarray(accessed, dtype=bool)
    words = (accessed.size + 63) // 64
    idle = np.ones(words * 64, dtype=bool)
    idle[: accessed.size] = ~accessed
    with atomic_output(path) as fh:
        fh.write(np.packbits(idle, bitorder="little").tobytes())
