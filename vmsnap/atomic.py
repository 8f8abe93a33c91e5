"""Atomic output: write to a temp file beside the target, fsync, rename, fsync the directory.

An interrupted or failed write never leaves a file under the target name, and a
crash after the rename never leaves a renamed-but-empty file (the data was fsynced
first). '-' means stdout, which cannot be atomic: callers document that.

A symbolic link is followed: the file it names is replaced and the link stays. A
target that exists and is not a regular file (a device such as /dev/null, a FIFO)
is written in place, like stdout: renaming a file over it would replace the
device or FIFO itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import sys
import tempfile
from typing import BinaryIO, Iterator

from .errors import OutputError, OutputWriteError, UsageError
from .streams import stdout_binary


def os_error_message(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if exc.errno == errno.EPIPE:
        return "broken pipe"
    return exc.strerror or str(exc)


def temporary_file_error(purpose: str, detail: str) -> OutputError:
    """The error of an unnamed temporary file in $TMPDIR (restore's spill, save's index tables)."""
    return OutputError(f"temporary file for {purpose} in {tempfile.gettempdir()}: {detail}")


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of `data` at `offset` (pwrite may write less than asked)."""
    data = memoryview(data).cast("B")
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, readable: bool = False, source: str | None = None) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes `path` only if the block completes.

    source: the input file the output is made from; an output that is that same file
    is refused (it would be replaced by what was made from it), as zstd refuses.
    """
    path = os.fspath(path)
    if not path:
        raise UsageError("the output name is empty")
    if path == "-":
        out = stdout_binary()
        try:
            yield out
            out.flush()
        except OutputWriteError as exc:
            raise OutputError(f"stdout: {exc}") from None
        except OSError as exc:  # the flush, or a writer that writes to the file object itself (a PNG)
            raise OutputError(f"stdout: {os_error_message(exc)}") from None
        return
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = stat.S_IFREG
    except OSError as exc:
        raise OutputError(f"{path}: {os_error_message(exc)}") from None
    if stat.S_ISDIR(mode):
        raise OutputError(f"{path}: is a directory")
    if path.endswith(os.sep):  # a directory was meant, and there is none: not a file named so
        raise OutputError(f"{path}: no such directory")
    try:
        # As the kernel sees it: realpath takes "missing/.." away by itself, and the output
        # would land where `open` refuses to go.
        os.stat(os.path.dirname(path) or ".")
    except OSError as exc:
        raise OutputError(f"{path}: cannot create: {os_error_message(exc)}") from None
    if source is not None and stat.S_ISREG(mode):
        refuse_same_file(path, source)
    if not stat.S_ISREG(mode):
        with _in_place(path, target) as fh:
            yield fh
        return
    made: list[str] = []  # the temporary file's name, known before it exists
    try:
        fd = _create_temporary(directory, os.path.basename(target), made)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create: {os_error_message(exc)}") from None
    except BaseException:  # Ctrl-C as the file was made: tempfile.mkstemp would leave it behind
        for name in made:
            _remove_quietly(name)
        raise
    tmp = made[0]
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
    except OutputWriteError as exc:
        _remove_quietly(tmp)
        raise OutputError(f"{path}: {exc}") from None
    except BaseException:
        _remove_quietly(tmp)
        raise


@contextlib.contextmanager
def _in_place(path: str, target: str) -> Iterator[BinaryIO]:
    """A device or FIFO, opened for writing and flushed (and synced, where that means
    anything) at the end."""
    try:
        fh = open(target, "wb")
    except OSError as exc:
        raise OutputError(f"{path}: cannot open: {os_error_message(exc)}") from None
    try:
        with fh:
            yield fh
            fh.flush()
            try:
                os.fsync(fh.fileno())
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EROFS, errno.ENOTSUP):  # pipes, /dev/null: no sync
                    raise
    except OSError as exc:
        raise OutputError(f"{path}: {os_error_message(exc)}") from None
    except OutputWriteError as exc:
        raise OutputError(f"{path}: {exc}") from None


def refuse_same_file(output: str, source: str, what: str = "the input file") -> None:
    """UsageError if `output` names the same file as `source` ('-': standard input, which
    may be a file redirected in): it would be replaced by what was made from it."""
    if output == "-":
        return
    if source == "-":
        if _stdin_is(output):
            raise UsageError(f"{output}: is the standard input; write the output to another name")
    elif _same_file(source, output):
        raise UsageError(f"{output}: is {what}; write the output to another name")


def _stdin_is(path: str) -> bool:
    try:
        mine, theirs = os.fstat(sys.stdin.fileno()), os.stat(path)
    except (OSError, AttributeError, ValueError):  # no stdin, or no such file (yet)
        return False
    return stat.S_ISREG(mine.st_mode) and (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def refuse_outputs_over_inputs(outputs: dict[str, str | None], inputs) -> None:
    """UsageError if an output (option name -> path, None when not asked for) is one of
    the inputs, or two outputs have one name (the last written would replace the other)."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        for source in inputs:
            refuse_same_file(path, source, f"the input {source}")
        real = path if path == "-" else os.path.realpath(path)
        if real in seen:
            raise UsageError(f"{path}: given to both {seen[real]} and {option}; give each output its own name")
        seen[real] = option


def _create_temporary(directory: str, base: str, made: list[str]) -> int:
    """Create `.BASE-XXXXXXXX.tmp` in `directory` (mode 0600), its name put in `made`
    before the file exists, so an interrupt at any point leaves nothing unnamed behind."""
    for _ in range(100):
        name = os.path.join(directory, f".{base}-{secrets.token_hex(4)}.tmp")
        made.append(name)
        try:
            return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # another file's name: not ours to remove
            made.remove(name)
    raise FileExistsError(errno.EEXIST, "no free temporary file name")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


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
