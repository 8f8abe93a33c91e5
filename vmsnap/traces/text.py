"""Plain-text traces: one value per line.

A value starting with ``0x``/``0X`` is hexadecimal, anything else decimal;
blank lines and lines starting with ``#`` are skipped; surrounding blanks are
ignored.  Whether a value is a byte address or a page number is not guessed:
``values="address"`` (the default) divides by the page size, ``values="page"``
takes it as is.  A line that is not a number is an error naming its line.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from ..errors import FormatError
from ._io import line_blocks

U64_MAX = (1 << 64) - 1


def parse_value(tok: bytes, name: str, line_no: int, what: str = "value") -> int:
    try:
        t = tok.strip()
        v = int(t, 16) if t[:2] in (b"0x", b"0X") else int(t, 10)
    except ValueError:
        shown = tok.strip()[:40].decode("ascii", "replace")
        raise FormatError(f"{name}: line {line_no}: not a number: {shown!r} ({what})") from None
    if not 0 <= v <= U64_MAX:
        raise FormatError(f"{name}: line {line_no}: {what} {v} out of the unsigned 64-bit range")
    return v


def read(stream: BinaryIO, name: str, shift: int, values: str = "address") -> Iterator["np.ndarray"]:
    import numpy as np

    for block, first_line in line_blocks(stream):
        lines = block.split(b"\n")[:-1]
        toks = [ln.strip() for ln in lines]
        keep = [i for i, t in enumerate(toks) if t and not t.startswith(b"#")]
        out = np.empty(len(keep), dtype=np.uint64)
        sel = [toks[i] for i in keep]
        if all(len(t) <= 18 and t.isdigit() for t in sel):
            # Fast path: short decimal numbers only (cannot overflow).
            out[:] = np.array(sel, dtype=np.bytes_).astype(np.uint64)
        else:
            for j, i in enumerate(keep):
                out[j] = parse_value(toks[i], name, first_line + i)
        if values == "address":
            out >>= np.uint64(shift)
        yield out
