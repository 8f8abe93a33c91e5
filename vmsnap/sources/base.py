"""The stream every input reader yields: named guest-physical regions of bytes.

A reader never needs to know page sizes or the snapshot format. It yields each
region once, in order, as an iterator of byte chunks of any length; the consumer
(the snapshot writer, an analysis) re-chunks them into pages.
"""

from __future__ import annotations

import abc
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


class Source(abc.ABC):
    """An opened input. Use as a context manager; iterate regions exactly once."""

    #: short format name, e.g. "raw", "elf", "qemu", "lime"
    format_name: str = "?"

    def __init__(self, description: str):
        self.description = description

    @abc.abstractmethod
    def regions(self) -> Iterator[tuple[Region, Iterator[bytes]]]:
        """Yield (region, chunks) pairs; consume each chunk iterator before the next pair."""

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
                yield whole
                pos += whole * page_size
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
    if fill:
        yield memoryview(buf)[:fill]
