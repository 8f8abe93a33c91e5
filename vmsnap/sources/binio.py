"""Sequential binary input with absolute offsets, shared by the container-format readers.

Every error names the input and the byte offset where the problem is, so a
user can look at it with `xxd -s OFFSET`. Truncation (the file ends inside a
structure) is an InputError, like `read_exact_chunks`; a structure that is
present but wrong (bad magic, unknown flag, impossible length) is a FormatError.
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO

from ..errors import FormatError, InputError
from .base import READ_CHUNK

_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")


class Cursor:
    """Read a file front to back in large chunks; know the file offset of every byte.

    `read(n)` returns a memoryview into an internal buffer: valid until the
    caller keeps it (the buffer is an immutable bytes object, never mutated).
    """

    def __init__(self, fh: BinaryIO, name: str, chunk: int = READ_CHUNK, start: int = 0):
        self.fh = fh
        self.name = name
        self.chunk = chunk
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0  # index of the next unread byte in _buf
        self._base = start  # file offset of _buf[0]
        self._eof = False
        try:
            self.seekable = fh.seekable()
        except (AttributeError, ValueError, OSError):
            self.seekable = False

    @property
    def offset(self) -> int:
        """File offset of the next byte read() would return."""
        return self._base + self._pos

    def _fill(self, n: int) -> bool:
        """Make at least n unread bytes available; False if the file ends first.

        The unread rest of the old buffer is copied to the front of a new one and the
        file is read straight in behind it (readinto), so a refill copies only the
        rest, never the chunk. Buffers are never changed once filled: views handed
        out by read() stay valid.
        """
        have = len(self._buf) - self._pos
        if have >= n:
            return True
        if self._eof:
            return False
        new = bytearray(have + max(self.chunk, n - have))
        new[:have] = self._view[self._pos :]
        filled = have
        with memoryview(new) as mv:
            while filled < n:
                with mv[filled:] as target:
                    try:
                        got = self.fh.readinto(target)
                    except OSError as exc:
                        raise InputError(
                            f"{self.name}: read failed at offset {self._base + self._pos + filled}: "
                            f"{exc.strerror or exc}"
                        ) from exc
                if not got:
                    self._eof = True
                    break
                filled += got
        if filled < len(new):
            del new[filled:]
        self._base += self._pos
        self._buf = new
        self._view = memoryview(new)
        self._pos = 0
        return filled >= n

    def truncated(self, what: str, need: int) -> InputError:
        have = len(self._buf) - self._pos
        return InputError(
            f"{self.name}: truncated at offset {self.offset}: {what} needs {need} bytes, "
            f"{have} left in the file"
        )

    def read(self, n: int, what: str) -> memoryview:
        """Exactly n bytes, or InputError naming `what` and the offset."""
        if len(self._buf) - self._pos < n and not self._fill(n):
            raise self.truncated(what, n)
        pos = self._pos
        self._pos = pos + n
        return self._view[pos : pos + n]

    def u8(self, what: str) -> int:
        return self.read(1, what)[0]

    def be16(self, what: str) -> int:
        return _BE16.unpack(self.read(2, what))[0]

    def be32(self, what: str) -> int:
        return _BE32.unpack(self.read(4, what))[0]

    def be64(self, what: str) -> int:
        return _BE64.unpack(self.read(8, what))[0]

    def peek_u8(self) -> int | None:
        """The next byte without consuming it; None at end of file."""
        if not self._fill(1):
            return None
        return self._buf[self._pos]

    def at_eof(self) -> bool:
        return not self._fill(1)

    def skip_to(self, offset: int, what: str) -> None:
        """Move forward to `offset` (seeking when possible); backwards needs a seekable file."""
        if offset < self.offset:
            if not self.seekable:
                raise InputError(
                    f"{self.name}: {what} at offset {offset} is behind the read position "
                    f"{self.offset}; this input must be a seekable file read from its start, not a pipe "
                    "or a stdin that was partly read"
                )
            self._seek(offset, what)
            return
        ahead = offset - self.offset
        if ahead <= len(self._buf) - self._pos:
            self._pos += ahead
            return
        if self.seekable:
            self._seek(offset, what)
            return
        while self.offset < offset:
            step = min(self.chunk, offset - self.offset)
            self.read(step, what)

    def _seek(self, offset: int, what: str) -> None:
        try:
            self.fh.seek(offset)
        except (OverflowError, ValueError):  # past off_t: no file holds it, as a forged header may claim
            raise InputError(f"{self.name}: truncated at offset {offset}: {what} lies past the largest file "
                             "offset") from None
        except OSError as exc:
            raise InputError(f"{self.name}: cannot seek to {offset}: {exc}") from exc
        self._buf = b""
        self._view = memoryview(self._buf)
        self._pos = 0
        self._base = offset
        self._eof = False

    def chunks(self, length: int, what: str):
        """Yield the next `length` bytes as chunks of `self.chunk` bytes (the last shorter).

        The chunk boundaries fall at multiples of `self.chunk` from the start, so a
        consumer that re-cuts into chunk-sized batches takes its no-copy path. Only
        the first chunk joins read-ahead with file data; the rest are single reads
        straight from the file. A file that ends early raises InputError naming `what`.
        """
        remaining = length
        while remaining:
            want = min(self.chunk, remaining)
            have = len(self._buf) - self._pos
            if have >= want:
                pos = self._pos
                self._pos = pos + want
                remaining -= want
                yield self._buf[pos : pos + want]
                continue
            parts = [self._buf[self._pos :]] if have else []
            got = have
            self._base += len(self._buf)  # read-ahead used up: go on at the file position
            self._buf = b""
            self._view = memoryview(self._buf)
            self._pos = 0
            while got < want:
                try:
                    data = self.fh.read(want - got)
                except OSError as exc:
                    raise InputError(
                        f"{self.name}: read failed at offset {self._base}: {exc.strerror or exc}"
                    ) from exc
                if not data:
                    self._eof = True
                    raise InputError(
                        f"{self.name}: truncated at offset {self._base}: {what} "
                        f"needs {remaining - got} more bytes"
                    )
                self._base += len(data)
                parts.append(data)
                got += len(data)
            remaining -= want
            yield parts[0] if len(parts) == 1 else b"".join(parts)


def file_size(fh: BinaryIO) -> int | None:
    """Size of a regular file, else None (pipes, terminals, sockets, and a file read as a
    stream from where stdin stood: its offsets do not count from the file's start)."""
    import stat

    try:
        if not fh.seekable():
            return None
        st = os.fstat(fh.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def check_magic(data, magic: bytes, what: str, name: str, offset: int) -> None:
    """FormatError unless `data` starts with `magic`, showing both as text a user can compare."""
    got = bytes(data[: len(magic)])
    if got != magic:
        raise FormatError(
            f"{name}: not {what}: magic {got!r} at offset {offset}, expected {magic!r}"
        )


def parse_struct(st, data, what: str, name: str, offset: int):
    """construct's parse, with any ConstructError turned into a FormatError at `offset`."""
    import construct

    try:
        return st.parse(bytes(data))
    except construct.ConstructError as exc:
        msg = str(exc).splitlines()[-1] if str(exc) else type(exc).__name__
        raise FormatError(f"{name}: bad {what} at offset {offset}: {msg}") from None


def read_struct(cur: Cursor, st, what: str):
    """Read sizeof(st) bytes at the cursor and parse them."""
    offset = cur.offset
    data = cur.read(st.sizeof(), what)
    return parse_struct(st, data, what, cur.name, offset)
