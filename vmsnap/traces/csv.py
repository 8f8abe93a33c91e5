"""CSV traces: one chosen column holds the address or page number.

``column`` is a 1-based field number (like ``cut -f`` and libCacheSim's
``obj-id-col``) or a header name.  With a name, the first line is the header
and must contain it.  With a number, the first line is taken as a header when
its chosen field is not a number, otherwise as data.  Values follow the
plain-text rules (``0x`` prefix = hexadecimal, otherwise decimal) and
``values=`` says address or page number.  The delimiter is ``,`` unless given.
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
) -> Iterator["np.ndarray"]:
    import numpy as np

    if column is None:
        column = 1
    col_index: int | None = None
    if isinstance(column, int) or (isinstance(column, str) and column.isdigit()):
        col_index = int(column) - 1
        if col_index < 0:
            raise UsageError("CSV column numbers start at 1")
    first = True
    for block, first_line in line_blocks(stream):
        text = block.decode("utf-8", "replace")
        reader = _csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        vals = []
        line_no = first_line
        for row in reader:
            cur = line_no
            line_no = first_line + reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if first:
                first = False
                if col_index is None:
                    try:
                        col_index = [c.strip() for c in row].index(column)
                    except ValueError:
                        raise FormatError(f"{name}: line {cur}: no column named {column!r} in the header") from None
                    continue
                if col_index < len(row):
                    try:
                        parse_value(row[col_index].encode(), name, cur)
                    except FormatError:
                        continue  # a header line
            if col_index >= len(row):
                raise FormatError(f"{name}: line {cur}: only {len(row)} fields, column {col_index + 1} asked")
            vals.append(parse_value(row[col_index].encode(), name, cur))
        out = np.array(vals, dtype=np.uint64)
        if values == "address":
            out >>= np.uint64(shift)
        yield out
