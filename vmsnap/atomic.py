"""Atomic output: write to a temp file beside the target, fsync, rename, fsync the directory.

An interrupted or failed write never leaves a file under the target name, and a
crash after the rename never leaves a renamed-but-empty file (the data was fsynced
first). '-' means stdout, which cannot be atomic: callers document that.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from typing import BinaryIO, Iterator

from .errors import OutputError


def os_error_message(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if exc.errno == errno.EPIPE:
        return "broken pipe"
    return exc.strerror or str(exc)


@contextlib.contextmanager
def atomic_output(path: str, *, readable: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` only if the block completes."""
    if path == "-":
        yield sys.stdout.buffer
        try:
            sys.stdout.buffer.flush()
        except OSError as exc:
            raise OutputError(f"stdout: {os_error_message(exc)}") from None
        return
    target = os.path.abspath(path)
    directory = os.path.dirname(target)
    if os.path.isdir(target):
        raise OutputError(f"{path}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create: {os_error_message(exc)}") from None
    try:
        with os.fdopen(fd, "w+b" if readable else "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
        _fsync_dir(directory)
    except OSError as exc:
        _remove_quietly(tmp)
        raise OutputError(f"{path}: {os_error_message(exc)}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
