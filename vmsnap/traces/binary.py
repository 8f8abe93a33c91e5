"""Binary traces: a flat array of little-endian unsigned 64-bit values.

Each value is a byte address (``values="address"``, the default) or a page
number (``values="page"``).  A file whose (decompressed) length is not a
multiple of 8 is rejected with the byte offset of the partial value.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from ._io import read_records

RECORD = 8


def read(stream: BinaryIO, name: str, shift: int, values: str = "address") -> Iterator["np.ndarray"]:
    import numpy as np

    for block, _offset in read_records(stream, name, RECORD):
        a = np.frombuffer(block, dtype="<u8")
        if values == "address":
            yield a >> np.uint64(shift)
        else:
            yield a.astype(np.uint64, copy=True)
