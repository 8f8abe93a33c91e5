"""Writing a restored image or a snapshot: staged in aligned buffers, written by a second thread.

The main thread decodes (or compresses) and copies each piece into a page-aligned
buffer; a writer thread writes the full buffers (its system calls release the GIL,
so writing overlaps the work). A fixed set of buffers bounds memory and lets no
decoded frame outlive its use. An optional inspector (a restore's digest check)
sees each full buffer before it goes to the writer: it checks the very bytes that
go to the file, and hashes a whole block in one call instead of a call per piece.

A regular output file is written at explicit offsets with O_DIRECT where the
file system allows it: the data goes to the disk while the image is still being
decoded, so the final fsync has little left to do, and a restored image does not
push other files out of the page cache. Bytes between pieces are zeros (holes),
so a buffer's partial blocks are padded with zeros and the file is truncated to
its size at the end; every write is then block-aligned, as O_DIRECT wants.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import threading
from typing import BinaryIO, Protocol

from .atomic import pwrite_all

BUFFER_BYTES = 4 << 20
BUFFERS = 4  # 16 MiB in flight: as fast as 32 MiB on the bench dump, 12 MiB less RSS
ALIGN = 4096  # a multiple of every common logical block size
# Shorter zero runs are written as zeros in the buffer: a hole per short run would cost a
# write per run (a page of data between single zero pages: 32,768 writes of 4 KiB for
# 256 MiB, 4.9 s against 1.1 s). On real guests that writes 4-5 MiB of zeros per GiB.
MIN_HOLE = 256 << 10


class Inspector(Protocol):
    def feed(self, offset: int, data: memoryview) -> None:
        """The output's bytes at `offset`, in increasing offsets; bytes never fed are zeros."""

    def finish(self, size: int) -> None:
        """The output is `size` bytes long and every byte of it was fed or is zero."""


class ImageWriter:
    """write(offset, data) in increasing offsets; close(size) when done.

    positioned: a regular file, written with pwrite; skipped ranges stay holes.
    Otherwise a stream (pipe, terminal, stdout): offsets must be contiguous.
    inspect: sees every buffer before it is written, in the caller's thread; what it
    raises is raised by the write() or close() that submitted the buffer.
    What the writer thread raises is raised by a later write() or by close().
    """

    def __init__(self, out: BinaryIO, *, positioned: bool, inspect: Inspector | None = None):
        out.flush()
        # a stream is written below its buffer: no lock of it is held by a writer that a stalled reader blocks
        self._raw = getattr(out, "raw", out)
        self._fd = out.fileno() if positioned else -1
        self._positioned = positioned
        self._direct = positioned and _set_direct(self._fd, True)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._free.put(mmap.mmap(-1, BUFFER_BYTES))
        self._full: queue.SimpleQueue = queue.SimpleQueue()
        self._buffer: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._start = 0  # file offset of the current buffer's first byte
        self._fill = 0
        self._error: BaseException | None = None
        self._cancelled = False
        self._inspect = inspect
        # started by the first full buffer: a writer dropped before then leaves no thread behind
        self._thread = threading.Thread(target=self._run, name="vmsnap-writer", daemon=True)

    def write(self, offset: int, data) -> None:
        data = memoryview(data).cast("B")
        if self._buffer is not None and offset != self._start + self._fill:
            self._skip_to(offset)
        while data:
            if self._buffer is None:
                self._take_buffer(offset)
            k = min(len(data), BUFFER_BYTES - self._fill)
            self._view[self._fill:self._fill + k] = data[:k]
            self._fill += k
            offset += k
            data = data[k:]
            if self._fill == BUFFER_BYTES:
                self._submit()

    def close(self, size: int) -> None:
        """Write what is staged, wait for the writer; a positioned file gets `size`."""
        if self._buffer is not None:
            if self._positioned:
                self._pad(-self._fill % ALIGN)
            self._submit()
        self._stop_thread()
        if self._error is not None:
            raise self._error
        if self._inspect is not None:
            self._inspect.finish(size)
        if self._positioned:
            try:
                os.ftruncate(self._fd, size)
            except OverflowError:  # a size past 2**63
                raise _too_large() from None
            if self._direct:  # the caller's file object reads and writes as usual again
                self._direct = _set_direct(self._fd, False)

    def abandon(self) -> None:
        """Stop the writer without writing what is staged (an error elsewhere)."""
        self._cancelled = True
        # a stream's reader may never read on: do not wait for it
        self._stop_thread(wait=self._positioned)

    def _stop_thread(self, wait: bool = True) -> None:
        if self._thread.ident is None:
            return
        self._full.put(None)
        if wait:
            self._thread.join()

    def _skip_to(self, offset: int) -> None:
        """Bytes up to `offset` are zeros: a short run is padded into the buffer (whatever
        does not fit stays unwritten); a long one leaves its whole blocks unwritten."""
        end = self._start + self._fill
        boundary = -(-end // ALIGN) * ALIGN
        if offset <= boundary or offset - end < MIN_HOLE:
            self._pad(min(offset - end, BUFFER_BYTES - self._fill))
            if self._fill == BUFFER_BYTES:
                self._submit()
        else:
            self._pad(boundary - end)
            self._submit()

    def _take_buffer(self, offset: int) -> None:
        self._raise_error()
        self._buffer = self._free.get()
        self._raise_error()
        self._view = memoryview(self._buffer)
        lead = offset % ALIGN if self._positioned else 0
        self._start, self._fill = offset - lead, 0
        self._pad(lead)

    def _pad(self, n: int) -> None:
        self._view[self._fill:self._fill + n] = bytes(n)
        self._fill += n

    def _submit(self) -> None:
        if self._inspect is not None:
            self._inspect.feed(self._start, self._view[:self._fill])
        self._view.release()
        if self._thread.ident is None:
            self._thread.start()
        self._full.put((self._buffer, self._start, self._fill))
        self._buffer = self._view = None

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._full.get()) is not None:
            buffer, start, length = item
            if self._error is None and not self._cancelled:
                try:
                    self._put(memoryview(buffer)[:length], start)
                except OSError as exc:
                    self._error = exc
                except OverflowError:  # an offset no file can have (past 2**63)
                    self._error = _too_large()
                except BaseException as exc:  # raised by the caller's next write or close, never lost
                    self._error = exc
            self._free.put(buffer)  # always: a writer that stops returning buffers hangs write()

    def _put(self, data: memoryview, offset: int) -> None:
        if not self._positioned:
            while data:
                n = self._raw.write(data)
                if n is None:  # a non-blocking pipe that is full
                    raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
                data = data[n:]
            return
        try:
            pwrite_all(self._fd, data, offset)
        except OSError as exc:
            if not (self._direct and exc.errno == errno.EINVAL):
                raise
            # the file system took O_DIRECT at open but not this write: buffered from now on
            self._direct = _set_direct(self._fd, False)
            pwrite_all(self._fd, data, offset)


def _too_large() -> OSError:
    return OSError(errno.EFBIG, os.strerror(errno.EFBIG))


def _set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for fd; returns whether it is on."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError:
        return False
    return on
