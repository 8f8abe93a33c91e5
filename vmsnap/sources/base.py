"""The stream every input reader yields: named guest-physical regions of bytes.

A reader never needs to know page sizes or the snapshot format. It yields each
region once, in order, as an iterator of byte chunks of any length; the consumer
(the snapshot writer, an analysis) re-chunks them into pages.
"""

from __future__ import annotations

import abc
import errno
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator

from ..errors import InputError

READ_CHUNK = 4 << 20  # bytes per read(); large enough to amortise syscalls and numpy setup


@dataclass(frozen=True)
class Region:
    """One contiguous range of guest memory."""

    name: str
    base: int  # guest-physical address of the first byte
    size: int | None  # bytes; None when the reader cannot know before reading (a pipe)


def input_name(path: str) -> str:
    """How a source names its input in a snapshot's description: the file's name, or stdin."""
    return "stdin" if path == "-" else os.path.basename(path)


class Source(abc.ABC):
    """An opened input. Use as a context manager; iterate regions exactly once."""

    #: short format name, e.g. "raw", "elf", "qemu", "lime"
    format_name: str = "?"

    def __init__(self, description: str):
        self.description = description

    @abc.abstractmethod
    def regions(self) -> Iterator[tuple[Region, Iterator[bytes]]]:
        """Yield (region, chunks) pairs; consume each chunk iterator before the next pair."""

    def attachments(self) -> list[str]:
        """Names of the named byte streams that travel with the memory (a .vms's QEMU
        device state): a snapshot saved from this source keeps them."""
        return []

    def read_attachment(self, name: str) -> Iterator[bytes]:
        raise KeyError(name)

    @property
    def size_hint(self) -> int | None:
        """Total bytes the regions will yield, if known (for progress bars)."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_exact_chunks(fh: BinaryIO, length: int | None, what: str) -> Iterator[bytes]:
    """Yield `length` bytes from fh in READ_CHUNK pieces (all of it when length is None).

    A short read before `length` is an InputError naming `what`: a truncated input
    must never turn into a silently shorter region.
    """
    remaining = length
    while remaining is None or remaining > 0:
        want = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
        try:
            buf = fh.read(want)
        except OSError as exc:
            raise InputError(f"{what}: read failed: {exc.strerror or exc}") from exc
        if not buf:
            if remaining is None:
                return
            raise InputError(f"{what}: truncated, {remaining} bytes missing")
        if remaining is not None:
            remaining -= len(buf)
        yield buf


# Zero runs a reader already knows about (a .vms zero record, an ELF segment's
# bss tail) are yielded as views of this one shared buffer: any consumer can use
# them as ordinary bytes, and one that cares can count them without reading them.
ZERO_CHUNK = bytes(READ_CHUNK)


MIN_HOLE = 1 << 20  # shorter holes are read like data: not worth the extra seeks and pieces


def next_data(fd: int, pos: int) -> int:
    """Offset of the first data byte at or after pos in a sparse file (SEEK_DATA)."""
    try:
        return os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole (or end of file) from pos on
            return 1 << 62
        return pos  # SEEK_DATA unsupported here: read everything


def next_hole(fd: int, pos: int, end: int) -> int:
    """Offset of the first hole at or after pos (the end of file counts as one)."""
    try:
        return min(end, os.lseek(fd, pos, os.SEEK_HOLE))
    except OSError:
        return end


def sparse_file_chunks(fd: int, start: int, length: int, what: str) -> Iterator:
    """The bytes [start, start+length) of a regular file, holes as zero_chunks() (not read).

    Data is read with pread in READ_CHUNK pieces cut at multiples of READ_CHUNK from
    `start`, so consumers get aligned pieces; a file that shrinks is an InputError.
    """
    end = start + length
    pos = start
    while pos < end:
        data = min(end, next_data(fd, pos))
        if data == end and os.fstat(fd).st_size < end:  # no data left because the file shrank
            size = os.fstat(fd).st_size
            raise InputError(f"{what}: truncated at offset {size}, {end - size} bytes missing")
        if data - pos >= MIN_HOLE or data == end:
            yield from zero_chunks(data - pos)
            pos = data
            continue
        stop = next_hole(fd, data, end)
        while stop < end and next_data(fd, stop) - stop < MIN_HOLE:  # skip small holes
            stop = next_hole(fd, min(end, next_data(fd, stop)), end)
        while pos < stop:
            n = min(READ_CHUNK - (pos - start) % READ_CHUNK, stop - pos)
            try:
                buf = os.pread(fd, n, pos)
            except OSError as exc:
                raise InputError(f"{what}: read failed at offset {pos}: {exc.strerror or exc}") from None
            if len(buf) < n:
                raise InputError(f"{what}: truncated at offset {pos + len(buf)}, "
                                 f"{end - pos - len(buf)} bytes missing")
            yield buf
            pos += n


def zero_chunks(n: int) -> Iterator[memoryview]:
    """n zero bytes as read-only views of ZERO_CHUNK (nothing is allocated)."""
    view = memoryview(ZERO_CHUNK)
    while n > 0:
        take = min(n, len(view))
        yield view[:take]
        n -= take


def is_zero_chunk(chunk) -> bool:
    """True when chunk came from zero_chunks(): all zero, known without reading it."""
    return isinstance(chunk, memoryview) and chunk.obj is ZERO_CHUNK


def page_batches(chunks: Iterable, page_size: int, batch_bytes: int = 4 << 20) -> Iterator:
    """Re-cut a region's chunks into batches of whole pages.

    Yields an int k for k zero pages known from zero chunks (never read), or a
    bytes-like batch that no later batch overwrites (safe to hand to a thread);
    the last batch may end in a partial page.
    """
    batch_bytes = max(page_size, batch_bytes - batch_bytes % page_size)
    buf = None
    fill = 0
    zeros = 0  # zero pages of consecutive zero chunks, yielded as one run when data follows
    for chunk in chunks:
        mv = memoryview(chunk).cast("B")
        pos, n = 0, len(mv)
        if is_zero_chunk(chunk):
            if fill % page_size:  # complete the partial page with zeros
                take = min(n, page_size - fill % page_size)
                buf[fill:fill + take] = mv[:take]
                fill += take
                pos = take
            whole = (n - pos) // page_size
            if whole:
                if fill:
                    yield memoryview(buf)[:fill]
                    buf, fill = None, 0
                zeros += whole
                pos += whole * page_size
        if zeros and pos < n:
            yield zeros
            zeros = 0
        if fill == 0:
            while n - pos >= batch_bytes:  # aligned fast path: views of the chunk, no copy
                yield mv[pos:pos + batch_bytes]
                pos += batch_bytes
        while pos < n:
            if buf is None:
                buf = bytearray(batch_bytes)
            take = min(batch_bytes - fill, n - pos)
            buf[fill:fill + take] = mv[pos:pos + take]
            fill += take
            pos += take
            if fill == batch_bytes:
                yield memoryview(buf)
                buf, fill = None, 0
    if zeros:
        yield zeros
    if fill:
        yield memoryview(buf)[:fill]
