"""Inputs that can be read only once (stdin, a FIFO, a character device), and regular files.

Naming a format means reading an input's first bytes. A file can be read again
from its start; one of these cannot, so it is opened once, and `sniff` hands
the bytes it read to the input's reader again.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
import sys
from typing import BinaryIO

from .errors import InputError, OutputError


MAX_FILE_OFFSET = (1 << 63) - 1  # off_t: no file position, pwrite offset or file size reaches past it


def stdin_binary() -> BinaryIO:
    """Standard input for binary reads; a process started with it closed (`<&-`) has none."""
    if sys.stdin is None:
        raise InputError("standard input is closed")
    fh = getattr(sys.stdin, "buffer", sys.stdin)  # a caller of the API may have replaced it
    if _is_terminal(fh):  # bytes typed at a prompt are no image, snapshot or trace; the read would just wait
        raise InputError("standard input is a terminal: redirect a file into it (<) or pipe one to it")
    if not isinstance(fh, (io.RawIOBase, io.BufferedIOBase)) and not hasattr(fh, "readinto"):
        raise InputError("standard input is a text stream: vmsnap reads bytes")
    return fh


def _is_terminal(fh) -> bool:
    try:
        return os.isatty(fh.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False


def stdout_binary() -> BinaryIO:
    """Standard output for binary writes; a process started with it closed (`>&-`) has none."""
    if sys.stdout is None:
        raise OutputError("standard output is closed")
    return sys.stdout.buffer


def stdin_in_place(what: str) -> BinaryIO:
    """Standard input as a file of its own, for a reader that seeks (`what` keeps its index
    at its end): only when it is redirected from a whole regular file (`< x.vms`)."""
    fh = stdin_binary()
    if not is_regular_file(fh):
        raise InputError(f"standard input is not a regular file, and {what} keeps its index at its end: "
                         "name the file, or redirect stdin from it with <")
    if fcntl.fcntl(fh.fileno(), fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:  # `0>>x.vms`
        raise InputError("standard input is not open for reading")
    if not is_whole_file(fh):
        raise InputError(f"standard input is not at the start of its file, where {what} must begin: name the file")
    return os.fdopen(os.dup(fh.fileno()), "rb")  # positioned reads, from the file's start


def is_whole_file(fh: BinaryIO) -> bool:
    """Whether fh is a regular file read from its start (stdin redirected from a file,
    nothing of it read yet): a reader may then seek in it as in the file."""
    try:
        return is_regular_file(fh) and os.lseek(fh.fileno(), 0, os.SEEK_CUR) == 0 and fh.tell() == 0
    except (AttributeError, OSError, ValueError):
        return False


def is_stream(path: str) -> bool:
    """'-', or a FIFO, socket or character device: what is read from it is gone."""
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # the reader's own open names the problem
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def is_regular_file(fh: BinaryIO) -> bool:
    """Whether fh is open on a regular file (positioned reads and writes, holes)."""
    try:
        return stat.S_ISREG(os.fstat(fh.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def sniff(fh: BinaryIO, n: int, close_inner: bool = True) -> tuple[bytes, io.BufferedReader]:
    """(the first n bytes of fh, fewer only at its end; a reader that gives them again,
    then the rest of fh). Closing the reader closes fh, unless close_inner is false."""
    head = b""
    while len(head) < n and (more := fh.read(n - len(head))):  # a pipe may give them in pieces
        head += more
    return head, io.BufferedReader(_Replay(head, fh, close_inner), buffer_size=1 << 20)


class _Replay(io.RawIOBase):
    def __init__(self, head: bytes, fh: BinaryIO, close_inner: bool = True):
        self._head, self._fh, self._close_inner = memoryview(head), fh, close_inner

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._fh.readinto(b)

    def fileno(self) -> int:
        return self._fh.fileno()

    def tell(self) -> int:  # a file redirected to stdin: how much of it is left is its size less this
        return self._fh.tell() - len(self._head)

    def close(self) -> None:
        if self._close_inner:
            self._fh.close()
        super().close()
