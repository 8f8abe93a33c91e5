"""Byte streams under the trace readers: plain files or zstd, found by content.

Every reader pulls fixed-size blocks through :func:`open_bytes`, so memory stays
bounded whatever the trace size.  A zstd stream is recognised by its start, never
by the file name: the magic number (``28 b5 2f fd``), then a frame header and a
first block header that are valid (RFC 8878).  The magic alone is not enough: a
binary trace of 64-bit addresses starts with it whenever its first address ends
in ``fd2fb528`` (a stack address such as 0x7ffffd2fb528, say).  Such a trace
whose next bytes also happen to form a valid header is still taken for zstd; it
then almost surely fails to decompress, with an error, rather than being misread.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO, Iterator

from ..errors import InputError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOCK = 8 << 20  # bytes read per block
ZSTD_START = 4 + 14 + 3  # magic, the longest frame header, a block header
MAX_WINDOW_LOG = 31  # the largest window zstandard decodes by default


def is_zstd_start(head: bytes) -> bool:
    """Whether `head` (the first ZSTD_START bytes, or all there are) begins a zstd frame:
    the magic, a frame header without reserved bits and a window it can decode, and a
    first block header of a known type and a size within the frame's limit."""
    if head[:4] != ZSTD_MAGIC or len(head) < 6:
        return False
    d = head[4]
    if d & 0x08:  # Reserved_Bit
        return False
    single, did_flag, fcs_flag = (d >> 5) & 1, d & 3, d >> 6
    fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    pos = 5
    if single:
        window = None
    else:
        exponent, mantissa = head[5] >> 3, head[5] & 7
        if 10 + exponent > MAX_WINDOW_LOG:
            return False
        base = 1 << (10 + exponent)
        window = base + base // 8 * mantissa
        pos = 6
    pos += (0, 1, 2, 4)[did_flag]
    if len(head) < pos + fcs_size + 3:  # every frame has at least one block
        return False
    if single:
        window = int.from_bytes(head[pos:pos + fcs_size], "little") + (256 if fcs_size == 2 else 0)
    pos += fcs_size
    block = int.from_bytes(head[pos:pos + 3], "little")
    kind, size = (block >> 1) & 3, block >> 3
    return kind != 3 and size <= min(window, 128 << 10)


class _ZstdErrorWrapper(io.RawIOBase):
    """Turn zstandard's errors into InputError with the trace name, and a stream that
    ends inside a frame (zstandard just stops there) into one too."""

    def __init__(self, inner: BinaryIO, name: str, frames: "_FrameWalk"):
        self._inner = inner
        self._name = name
        self._frames = frames

    def readable(self) -> bool:  # pragma: no cover - io protocol
        return True

    def read(self, n: int = -1) -> bytes:
        import zstandard

        try:
            data = self._inner.read(n)
        except zstandard.ZstdError as exc:
            raise InputError(f"{self._name}: corrupt zstd stream: {exc}") from None
        if not data and n != 0 and not self._frames.at_frame_end():
            raise InputError(f"{self._name}: truncated zstd stream: it ends inside a frame, "
                             f"{self._frames.bytes_in} compressed bytes in")
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def open_bytes(path: str | os.PathLike, text: bool = False) -> tuple[BinaryIO, bool]:
    """Open *path* ('-': stdin) for reading, decompressing zstd transparently.

    A binary trace may start with the zstd magic (an address ending in fd2fb528), so
    zstd is recognised by a valid frame start. A text trace never does (0xb5 and 0xfd
    are not text): with `text`, the magic alone means zstd, and a stream cut inside its
    first frame header is reported as truncated, not read as a line of text.
    Returns (stream, compressed).
    """
    from ..streams import sniff, stdin_binary

    name = os.fspath(path)
    try:
        f = stdin_binary() if name == "-" else open(name, "rb")
        if f.seekable():
            head = f.read(ZSTD_START)
            f.seek(0)
        else:  # a pipe or FIFO: these bytes are read again by the reader
            head, f = sniff(f, ZSTD_START)
    except OSError as exc:
        raise InputError(f"{name}: cannot open trace: {exc.strerror or exc}") from None
    if is_zstd_start(head) or (text and head[:4] == ZSTD_MAGIC):
        import zstandard

        frames = _FrameWalk(f)
        reader = zstandard.ZstdDecompressor().stream_reader(frames, read_across_frames=True, closefd=True)
        return _ZstdErrorWrapper(reader, name, frames), True
    return f, False


class _FrameWalk:
    """The compressed bytes on their way to the decompressor, walked frame by frame
    (RFC 8878: frame header, block headers, checksum; skippable frames) without
    decoding them, to tell at the end of input whether the last frame was whole."""

    def __init__(self, source: BinaryIO):
        self._source = source
        self.bytes_in = 0
        self._state, self._need, self._buf = "magic", 4, b""
        self._checksum = False

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self._walk(memoryview(data))
        self.bytes_in += len(data)
        return data

    def close(self) -> None:
        self._source.close()

    def at_frame_end(self) -> bool:
        return self._state in ("magic", "unknown") and not self._buf

    def _walk(self, data: memoryview) -> None:
        while data and self._state != "unknown":
            if self._state in ("skip", "block", "checksum"):  # bytes passed over, not parsed
                k = min(self._need, len(data))
                self._need -= k
                data = data[k:]
                if self._need == 0:
                    self._next(b"")
                continue
            k = min(self._need - len(self._buf), len(data))
            self._buf += bytes(data[:k])
            data = data[k:]
            if len(self._buf) == self._need:
                field, self._buf = self._buf, b""
                self._next(field)

    def _next(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if magic == 0xFD2FB528:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skip_size", 4
            else:  # not a frame: the decompressor names the error
                self._state = "unknown"
        elif state == "descriptor":
            d = field[0]
            fcs_flag, single, did_flag = d >> 6, (d >> 5) & 1, d & 3
            self._checksum = bool((d >> 2) & 1)
            fcs = (1 if single else 0, 2, 4, 8)[fcs_flag]
            rest = (0 if single else 1) + (0, 1, 2, 4)[did_flag] + fcs
            self._state, self._need = ("header", rest) if rest else ("block_header", 3)
        elif state == "header":
            self._state, self._need = "block_header", 3
        elif state == "block_header":
            h = int.from_bytes(field, "little")
            last, kind, size = h & 1, (h >> 1) & 3, h >> 3
            self._last = bool(last)
            content = 1 if kind == 1 else size  # an RLE block stores its one byte
            self._state, self._need = "block", content
            if content == 0:
                self._next(b"")
        elif state == "block":
            if not self._last:
                self._state, self._need = "block_header", 3
            elif self._checksum:
                self._state, self._need = "checksum", 4
            else:
                self._state, self._need = "magic", 4
        elif state == "checksum":
            self._state, self._need = "magic", 4
        elif state == "skip_size":
            size = int.from_bytes(field, "little")
            self._state, self._need = "skip", size
            if size == 0:
                self._next(b"")
        elif state == "skip":
            self._state, self._need = "magic", 4


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
