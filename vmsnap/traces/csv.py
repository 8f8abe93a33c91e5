"""CSV traces: one chosen column holds the address or page number.

``column`` is a 1-based field number (like ``cut -f`` and libCacheSim's
``obj-id-col``) or a header name.  With a name, the first line is the header
and must contain it.  With a number, the first line is taken as a header when
its chosen field is not a number, otherwise as data.  Values follow the
plain-text rules (``0x`` prefix = hexadecimal, otherwise decimal) and
``values=`` says address or page number.  The delimiter is ``,`` unless given.
Quoted fields may not contain line breaks (the file is read in blocks of
whole lines, and errors name physical lines).
``time_column`` (number or name, same rules) adds a timestamp per row, for the
untraced-period design's period in time units.
"""

from __future__ import annotations

import csv as _csv
import io
from typing import BinaryIO, Iterator

from ..errors import FormatError, UsageError
from ._io import line_blocks
from .text import parse_value

ROWS = 1 << 18


def read(
    stream: BinaryIO,
    name: str,
    shift: int,
    values: str = "address",
    column: int | str = 1,
    delimiter: str = ",",
    time_column: int | str | None = None,
) -> Iterator:
    """Blocks of page numbers, or (pages, times as int64) with a time column."""
    import numpy as np

    if column is None:
        column = 1
    col_index = _index(column)
    t_index = None if time_column is None else _index(time_column)
    first = True
    for block, first_line in line_blocks(stream):
        text = block.decode("utf-8", "replace")
        reader = _csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        vals = []
        tvals = []
        line_no = first_line
        for row in _rows(reader, name, first_line):
            cur = line_no
            line_no = first_line + reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if first:
                first = False
                if col_index is None or (time_column is not None and t_index is None):
                    header = [c.strip() for c in row]
                    if col_index is None:
                        col_index = _named(header, column, name, cur)
                    if time_column is not None and t_index is None:
                        t_index = _named(header, time_column, name, cur)
                    continue
                if col_index < len(row):
                    try:
                        parse_value(row[col_index].encode(), name, cur)
                    except FormatError:
                        continue  # a header line
            if col_index >= len(row):
                raise FormatError(f"{name}: line {cur}: only {len(row)} fields, column {col_index + 1} asked")
            vals.append(parse_value(row[col_index].encode(), name, cur))
            if t_index is not None:
                if t_index >= len(row):
                    raise FormatError(f"{name}: line {cur}: only {len(row)} fields, time column {t_index + 1} asked")
                t = parse_value(row[t_index].encode(), name, cur, "time")
                if t >= 1 << 63:
                    raise FormatError(f"{name}: line {cur}: time {t} out of the signed 64-bit range")
                tvals.append(t)
        out = np.array(vals, dtype=np.uint64)
        if values == "address":
            out >>= np.uint64(shift)
        if time_column is not None:
            yield out, np.array(tvals, dtype=np.int64)
        else:
            yield out


def _rows(reader, name: str, first_line: int) -> Iterator[list[str]]:
    """The reader's rows; its own errors (a field over csv's 128 KiB limit) as one line."""
    try:
        yield from reader
    except _csv.Error as exc:
        raise FormatError(f"{name}: line {first_line + reader.line_num - 1}: {exc}") from None


def _index(column) -> int | None:
    """0-based index of a 1-based column number, None for a header name."""
    if isinstance(column, int) or (isinstance(column, str) and column.isdigit()):
        if int(column) < 1:
            raise UsageError("CSV column numbers start at 1")
        return int(column) - 1
    return None


def _named(header, column, name, line_no) -> int:
    try:
        return header.index(column)
    except ValueError:
        raise FormatError(f"{name}: line {line_no}: no column named {column!r} in the header") from None
