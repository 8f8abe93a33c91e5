"""Byte streams under the trace readers: plain files or zstd, found by magic.

Every reader pulls fixed-size blocks through :func:`open_bytes`, so memory stays
bounded whatever the trace size.  A zstd frame is recognised by its magic
number (``28 b5 2f fd``), never by the file name.
"""

from __future__ import annotations

import io
import os
import sys
from typing import BinaryIO, Iterator

from ..errors import InputError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOCK = 8 << 20  # bytes read per block


class _ZstdErrorWrapper(io.RawIOBase):
    """Turn zstandard's errors into InputError with the trace name."""

    def __init__(self, inner: BinaryIO, name: str):
        self._inner = inner
        self._name = name

    def readable(self) -> bool:  # pragma: no cover - io protocol
        return True

    def read(self, n: int = -1) -> bytes:
        import zstandard

        try:
            return self._inner.read(n)
        except zstandard.ZstdError as exc:
            raise InputError(f"{self._name}: corrupt zstd stream: {exc}") from None

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def open_bytes(path: str | os.PathLike) -> tuple[BinaryIO, bool]:
    """Open *path* ('-': stdin) for reading, decompressing zstd transparently.

    Returns (stream, compressed).
    """
    from ..streams import read_up_to, replayed

    name = os.fspath(path)
    try:
        f = sys.stdin.buffer if name == "-" else open(name, "rb")
        if f.seekable():
            head = f.read(4)
            f.seek(0)
        else:  # a pipe or FIFO: the magic's bytes are read again by the reader
            head = read_up_to(f, 4)
            f = replayed(head, f)
    except OSError as exc:
        raise InputError(f"{name}: cannot open trace: {exc.strerror or exc}") from None
    if head == ZSTD_MAGIC:
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True, closefd=True)
        return _ZstdErrorWrapper(reader, name), True
    return f, False


def read_blocks(stream: BinaryIO, size: int | None = None) -> Iterator[bytes]:
    """Yield blocks of up to *size* bytes until EOF (short reads are merged)."""
    size = size or BLOCK
    while True:
        parts = []
        want = size
        while want > 0:
            b = stream.read(want)
            if not b:
                break
            parts.append(b)
            want -= len(b)
        if not parts:
            return
        yield b"".join(parts) if len(parts) > 1 else parts[0]
        if want > 0:
            return


def line_blocks(stream: BinaryIO, size: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Yield (block, first_line_number) where every block ends at a line end.

    A last line without a newline gets one appended.  Line numbers are 1-based.
    """
    carry = b""
    line_no = 1
    for block in read_blocks(stream, size):
        data = carry + block if carry else block
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = data
            continue
        chunk, carry = data[: cut + 1], data[cut + 1 :]
        yield chunk, line_no
        line_no += chunk.count(b"\n")
    if carry:
        yield carry + b"\n", line_no


def read_records(stream: BinaryIO, name: str, record_size: int, size: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Yield (block, byte_offset) of whole fixed-size records; a partial tail is an error."""
    size = size or BLOCK
    size = max(record_size, size - size % record_size)
    offset = 0
    carry = b""
    for block in read_blocks(stream, size):
        data = carry + block if carry else block
        whole = len(data) - len(data) % record_size
        if whole:
            yield data[:whole], offset
            offset += whole
        carry = data[whole:]
    if carry:
        raise InputError(
            f"{name}: truncated record at byte offset {offset} "
            f"({len(carry)} trailing bytes, records are {record_size} bytes)"
        )
