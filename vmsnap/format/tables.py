"""Index tables that a save fills as it goes: a bounded part in memory, the rest in a
temporary file.

The index is written at the end of a snapshot, and its tables grow with the guest:
the records, the sparse words, the block digests. Held in memory they cost about
0.5 MiB per GiB of a typical guest and 4 MiB per GiB of one whose pages change kind
every page, so a save's memory would follow the guest's size after all. Past
TABLE_MEMORY_BYTES a table goes on in an unlinked temporary file in $TMPDIR (nothing
is left behind), and is read back in pieces when the index is written.
"""

from __future__ import annotations

import tempfile
from typing import Iterator

import numpy as np

from ..atomic import os_error_message, temporary_file_error
from ..errors import OutputError
from .structs import byte_view

TABLE_MEMORY_BYTES = 8 << 20  # per table; the benchmark's 8 GiB guest needs 2 MiB at most
READ_BACK_BYTES = 4 << 20


class SpillTable:
    """An append-only table of fixed-size entries: len() in bytes, chunks() in order."""

    def __init__(self, itemsize: int, what: str):
        self.itemsize = itemsize
        self.what = what
        self.nbytes = 0
        self._held: list[memoryview] = []  # views of the appended buffers, which are not reused
        self._held_bytes = 0
        self._file = None  # made when memory is full

    def __len__(self) -> int:
        return self.nbytes

    @property
    def entries(self) -> int:
        return self.nbytes // self.itemsize

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def append(self, buf) -> None:
        view = byte_view(buf)
        if len(view) % self.itemsize:
            raise ValueError(f"{self.what}: {len(view)} bytes is not a whole number of entries")
        if not len(view):
            return
        self.nbytes += len(view)
        if self._file is None and self._held_bytes + len(view) <= TABLE_MEMORY_BYTES:
            self._held.append(view)
            self._held_bytes += len(view)
            return
        try:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="vmsnap-index-")
                for held in self._held:
                    self._file.write(held)
                self._held, self._held_bytes = [], 0
            self._file.write(view)
        except OSError as exc:
            raise self._error(os_error_message(exc)) from None

    def chunks(self) -> Iterator[memoryview]:
        """The table's bytes in order, in pieces of whole entries."""
        if self._file is None:
            yield from self._held
            return
        step = max(1, READ_BACK_BYTES // self.itemsize) * self.itemsize
        try:
            self._file.flush()
            self._file.seek(0)
            left = self.nbytes
            while left:
                piece = self._file.read(min(step, left))
                if not piece:
                    raise OSError(f"read back {self.nbytes - left} of {self.nbytes} bytes")
                left -= len(piece)
                yield memoryview(piece)
        except OSError as exc:
            raise self._error(os_error_message(exc) if exc.errno else str(exc)) from None

    def arrays(self, dtype: np.dtype) -> Iterator[np.ndarray]:
        """chunks() as arrays of `dtype` (itemsize bytes)."""
        for piece in self.chunks():
            yield np.frombuffer(piece, dtype=dtype)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._held = []

    def _error(self, detail: str) -> OutputError:
        return temporary_file_error(f"the {self.what}", detail)


class RunningOffsets:
    """Offsets 0, c0, c0+c1, ... of a SpillTable of uint64 counts, made a piece at a time."""

    def __init__(self, counts: SpillTable):
        self.counts = counts

    def __len__(self) -> int:
        return len(self.counts) + 8

    def chunks(self) -> Iterator[memoryview]:
        total = np.uint64(0)
        yield memoryview(np.zeros(1, "<u8")).cast("B")
        for c in self.counts.arrays(np.dtype("<u8")):
            offsets = np.cumsum(c, dtype=np.uint64) + total
            total = offsets[-1]
            yield memoryview(offsets.astype("<u8", copy=False)).cast("B")
