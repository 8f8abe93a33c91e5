"""Memory-access trace readers: one module per format, one entry point.

``open_trace(path, fmt="auto", page_size=4096, ...)`` returns a :class:`Trace`;
iterating it yields numpy ``uint64`` arrays of page numbers, in trace order,
a block at a time (memory stays bounded by the block size whatever the trace
length).  Any format may be zstd-compressed; compression is found by the zstd
magic number, not the file name.

Formats (``fmt``):

``lackey``          Valgrind Lackey ``--trace-mem=yes`` output (lackey.py)
``text``            one address or page number per line (text.py)
``csv``             a chosen column of a CSV file (csv.py)
``u64``             little-endian unsigned 64-bit values (binary.py)
``oracleGeneral``   libCacheSim's 24-byte records (oracle_general.py)

``auto`` looks at the name first (``*.lackey``, ``*.csv``, ``*.txt``,
``*.u64``/``*.bin``, a name containing ``oracleGeneral``; a trailing ``.zst``
is ignored), then at the decompressed content: Lackey record lines mean
``lackey``; other printable text means ``csv`` if its first data line has a
comma, else ``text``; binary content means ``u64`` (oracleGeneral cannot be
told from u64 by content, so it needs its name or ``fmt``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from ..errors import UsageError

FORMATS = ("lackey", "text", "csv", "u64", "oracleGeneral")
TEXT_FORMATS = ("lackey", "text", "csv")
VALUES = ("address", "page")


def page_shift(page_size: int) -> int:
    if not 0 < page_size <= 1 << 30 or page_size & (page_size - 1):
        raise UsageError(f"page size must be a power of two up to 1 GiB (the largest huge page), not {page_size}")
    return page_size.bit_length() - 1


def _format_from_name(name: str) -> str | None:
    base = os.path.basename(name)
    if base.endswith(".zst"):
        base = base[:-4]
    if "oracleGeneral" in base:
        return "oracleGeneral"
    ext = os.path.splitext(base)[1].lower()
    return {".lackey": "lackey", ".csv": "csv", ".txt": "text", ".u64": "u64", ".bin": "u64"}.get(ext)


def _format_from_content(head: bytes) -> str:
    from . import lackey

    if not head:
        return "text"
    if lackey.sniff(head):
        return "lackey"
    sample = head[:4096]
    printable = sum(1 for b in sample if 32 <= b < 127 or b in (9, 10, 13))
    if printable < len(sample):
        return "u64"
    for line in sample.split(b"\n"):
        s = line.strip()
        if s and not s.startswith(b"#"):
            return "csv" if b"," in s else "text"
    return "text"


def detect_format(path: str | os.PathLike) -> str:
    """The format ``auto`` resolves to for *path* (a file that can be read again)."""
    from ._io import open_bytes

    name = os.fspath(path)
    fmt = _format_from_name(name)
    if fmt:
        return fmt
    stream, _ = open_bytes(name)
    try:
        head = stream.read(_SNIFF)
    finally:
        stream.close()
    return _format_from_content(head)


_SNIFF = 64 << 10  # bytes of (decompressed) content that name a format


@dataclass
class Trace:
    """An opened trace description; iterate it for blocks of page numbers."""

    path: str
    fmt: str
    page_size: int
    values: str
    column: int | str | None = None
    delimiter: str = ","
    lackey_ops: str = "ILSM"
    time_column: int | str | None = None
    compressed: bool = field(default=False)
    # stdin or a FIFO: opened by open_trace and read once (None: a file, opened per pass)
    _once: BinaryIO | None = field(default=None, repr=False)
    _read: bool = field(default=False, repr=False)

    def _open(self) -> BinaryIO:
        from ._io import open_bytes

        if self._read and self._once is not None:
            raise UsageError(f"{self.path}: a trace from a pipe or FIFO can be read only once")
        self._read = True
        if self._once is not None:
            return self._once
        stream, self.compressed = open_bytes(self.path, text=self.fmt in TEXT_FORMATS)
        return stream

    @property
    def has_time(self) -> bool:
        """True if the trace carries timestamps (oracleGeneral, CSV with a time column)."""
        return self.fmt == "oracleGeneral" or (self.fmt == "csv" and self.time_column is not None)

    def timed(self) -> Iterator[tuple]:
        """Blocks of (page numbers, int64 timestamps) for traces with timestamps."""
        from . import csv, oracle_general

        if not self.has_time:
            raise UsageError(
                f"{self.path}: {self.fmt} traces have no timestamps; a period in time units needs "
                "an oracleGeneral trace or a CSV trace with --time-column"
            )
        shift = page_shift(self.page_size)
        stream = self._open()
        try:
            if self.fmt == "csv":
                gen = csv.read(stream, self.path, shift, self.values, self.column, self.delimiter, self.time_column)
            else:
                gen = oracle_general.read(stream, self.path, shift, self.values, with_time=True)
            for pages, times in gen:
                if len(pages):
                    yield pages, times
        finally:
            stream.close()

    def __iter__(self) -> Iterator["np.ndarray"]:
        from . import binary, csv, lackey, oracle_general, text

        shift = page_shift(self.page_size)
        stream = self._open()
        try:
            if self.fmt == "lackey":
                gen = lackey.read(stream, self.path, shift, self.lackey_ops)
            elif self.fmt == "text":
                gen = text.read(stream, self.path, shift, self.values)
            elif self.fmt == "csv":
                gen = csv.read(stream, self.path, shift, self.values, self.column, self.delimiter)
            elif self.fmt == "u64":
                gen = binary.read(stream, self.path, shift, self.values)
            else:
                gen = oracle_general.read(stream, self.path, shift, self.values)
            for chunk in gen:
                if len(chunk):
                    yield chunk
        finally:
            stream.close()


def open_trace(
    path: str | os.PathLike,
    fmt: str = "auto",
    page_size: int = 4096,
    column: int | str | None = None,
    values: str | None = None,
    delimiter: str = ",",
    lackey_ops: str = "ILSM",
    time_column: int | str | None = None,
) -> Trace:
    """Open a trace.  ``values`` is "address" or "page" (default: "page" for
    oracleGeneral, "address" for the others; Lackey is always addresses)."""
    from ..streams import is_stream

    name = os.fspath(path)
    page_shift(page_size)
    delimiter = {"\\t": "\t", "tab": "\t"}.get(delimiter, delimiter)  # what a shell passes for a tab
    if len(delimiter) != 1:
        raise UsageError(f"--delimiter must be one character (or \\t), not {delimiter!r}")
    once, compressed = None, False
    if is_stream(name):  # stdin or a FIFO: opened once, now
        once, compressed, fmt = _open_once(name, fmt)
    try:
        if fmt == "auto":
            fmt = detect_format(name)
        if fmt not in FORMATS:
            raise UsageError(f"unknown trace format {fmt!r} (one of: auto, {', '.join(FORMATS)})")
        if values is None:
            values = "page" if fmt == "oracleGeneral" else "address"
        if values not in VALUES:
            raise UsageError(f"values must be 'address' or 'page', not {values!r}")
        if fmt == "lackey" and values != "address":
            raise UsageError("Lackey traces hold byte addresses; --values page does not apply")
        if column is not None and fmt != "csv":
            raise UsageError("--column applies to CSV traces only")
        if time_column is not None and fmt != "csv":
            raise UsageError("--time-column applies to CSV traces only")
        if once is None and not os.path.exists(name):
            from ..errors import InputError

            raise InputError(f"{name}: no such file")
        return Trace(name, fmt, page_size, values, column, delimiter, lackey_ops, time_column,
                     compressed=compressed, _once=once)
    except BaseException:
        if once is not None:
            once.close()
        raise


def _open_once(name: str, fmt: str) -> tuple[BinaryIO, bool, str]:
    """(stream, compressed, format) of stdin or a FIFO, its format named (when "auto")
    from its name or from what it starts with, which the stream then gives again."""
    from ..streams import sniff
    from ._io import open_bytes

    stream, compressed = open_bytes(name, text=fmt in TEXT_FORMATS)
    if fmt == "auto":
        fmt = (_format_from_name(name) if name != "-" else None) or ""
        if not fmt:
            try:
                head, stream = sniff(stream, _SNIFF)
            except BaseException:
                stream.close()
                raise
            fmt = _format_from_content(head)
    return stream, compressed, fmt
