"""Scan-series readers, one module per format, all yielding per-period accessed-page bitmaps.

Formats (``--format`` names):

``series``  the vmsnap accessed-bitmap series file (``.vmscan``, structs.py)
``idle``    Linux idle-page bitmaps, one file per period (a directory or files)
``damon``   ``damo record`` JSON (plain or zlib-compressed)
``dumps``   two or more memory dumps of one VM; changed pages count as accessed

``open_scans`` picks the format from the inputs when asked for ``auto``.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, Sequence

from ..errors import InputError, UsageError
from .base import Period, ScanSeries, Segment

FORMATS: dict[str, tuple[str, str]] = {
    "series": ("vmsnap.scans.series", "SeriesScans"),
    "idle": ("vmsnap.scans.idle", "IdleBitmapScans"),
    "damon": ("vmsnap.scans.damon", "DamonScans"),
    "dumps": ("vmsnap.scans.dumps", "DumpScans"),
}


def _head(path: str, n: int = 16) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from None


def detect_scan_format(paths: Sequence[str]) -> str:
    """Name the format of `paths`: a directory is idle bitmaps, one file is
    identified by its first bytes, several files are a dump series."""
    from .structs import MAGIC

    if not paths:
        raise UsageError("no scan inputs given")
    if len(paths) == 1 and os.path.isdir(paths[0]):
        return "idle"
    if len(paths) == 1:
        head = _head(paths[0])
        if head.startswith(MAGIC):
            return "series"
        stripped = head.lstrip()
        if stripped[:1] in (b"[", b"{") or head[:1] == b"\x78":
            return "damon"
        raise InputError(
            f"{paths[0]}: offset 0: not a vmsnap scan series, damo record or bitmap directory; "
            "give --format, or two or more dumps"
        )
    if any(os.path.isdir(p) for p in paths):
        return "idle"
    if all(_head(p, len(MAGIC)) == MAGIC for p in paths):
        raise UsageError("give one scan series file at a time")
    return "dumps"


MAX_PAGE_SIZE = 1 << 30  # the largest huge page; a levels file holds the page size in 32 bits


def open_scans(paths: Sequence[str], fmt: str = "auto", *, page_size: int | None = None,
               damon_target: int = 0, damon_min_accesses: int = 1,
               source_format: str = "auto",
               progress: Callable[[int], None] | None = None) -> ScanSeries:
    """Open `paths` as a scan series of format `fmt` (or the detected one).

    ``page_size`` applies to formats that do not carry one (idle, damon, dumps;
    4096 by default); the series file records its own and rejects a different one.
    """
    from ..streams import is_stream

    if page_size is not None and (not 64 <= page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1)):
        raise UsageError(f"page size {page_size} is not a power of two from 64 to {MAX_PAGE_SIZE} (1 GiB)")
    paths = list(paths)
    for p in paths:  # before anything is read from it: what is read from a pipe is gone
        if is_stream(p):
            raise UsageError(f"{p}: hot/cold scans are read from files, not stdin, a pipe, FIFO or device "
                             "(they are read more than once); copy it to a file first")
    if fmt == "auto":
        fmt = detect_scan_format(paths)
    if fmt not in FORMATS:
        raise UsageError(f"unknown scan format {fmt!r} (known: {', '.join(FORMATS)})")
    module, cls = FORMATS[fmt]
    klass = getattr(importlib.import_module(module), cls)
    if fmt == "series":
        if len(paths) != 1:
            raise UsageError("the series format takes exactly one file")
        series = klass(paths[0])
        if page_size is not None and page_size != series.page_size:
            series.close()
            raise UsageError(
                f"{paths[0]}: recorded with {series.page_size}-byte pages; --page-size {page_size} does not apply"
            )
        return series
    ps = 4096 if page_size is None else page_size
    if fmt == "idle":
        return klass(paths, page_size=ps)
    if fmt == "damon":
        if len(paths) != 1:
            raise UsageError("the damon format takes exactly one damo record file")
        return klass(paths[0], page_size=ps, target=damon_target, min_accesses=damon_min_accesses)
    return klass(paths, page_size=ps, source_format=source_format, progress=progress)


__all__ = ["open_scans", "detect_scan_format", "FORMATS", "ScanSeries", "Period", "Segment"]
