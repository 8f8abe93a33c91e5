"""Raw memory files: a QEMU memory-backend-file, a Firecracker mem_file, a VMware .vmem.

The whole file is one region at guest-physical address 0. Any size is accepted;
a tail shorter than a page is kept byte-exact by the consumer.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Iterator

from ..errors import open_for_reading
from ..streams import is_regular_file, stdin_binary
from .base import Region, Source, input_name, read_exact_chunks, sparse_file_chunks


class RawSource(Source):
    format_name = "raw"

    def __init__(self, path: str, fh: BinaryIO | None = None, region_name: str = "ram"):
        self.path = path
        self.region_name = region_name
        self._own = fh is None
        if fh is None:
            fh = open_input(path)
        self._fh = fh
        self._size = _regular_file_size(fh)
        self._regular = is_regular_file(fh)
        super().__init__(f"raw:{input_name(path)}")

    @property
    def size_hint(self) -> int | None:
        return self._size

    def regions(self) -> Iterator[tuple[Region, Iterator[bytes]]]:
        region = Region(self.region_name, 0, self._size)
        # A regular file is read to its size at open time: if it shrinks under us,
        # that is a truncated input, not a smaller memory image. Its holes (untouched
        # guest memory in a memory-backend-file) are handed over as zeros, unread.
        if self._size is not None and self._regular:
            yield region, sparse_file_chunks(self._fh.fileno(), self._fh.tell(), self._size, self.path)
        else:
            yield region, read_exact_chunks(self._fh, self._size, self.path)

    def close(self) -> None:
        if self._own:
            self._fh.close()


def open_input(path: str) -> BinaryIO:
    """Open a file (or '-' for stdin) for binary reading, mapping OS errors to InputError."""
    if path == "-":
        return stdin_binary()
    return open_for_reading(path)


def _regular_file_size(fh: BinaryIO) -> int | None:
    try:
        st = os.fstat(fh.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    import stat

    if stat.S_ISREG(st.st_mode):
        return max(0, st.st_size - fh.tell())  # stdin may stand past the end of its file
    if stat.S_ISBLK(st.st_mode):
        fd = fh.fileno()
        at = os.lseek(fd, 0, os.SEEK_CUR)
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, at, os.SEEK_SET)  # where it was, not 0: bytes read already (stdin's sniffed head) stay read
        return size - fh.tell()
    return None
