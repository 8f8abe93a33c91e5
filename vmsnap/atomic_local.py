"""Stand-in for the lead's ``vmsnap/atomic.py`` until it lands on this branch.

``atomic_output(path)`` yields a binary file in the target directory; on
success it is fsynced, renamed over *path* with os.replace and the directory
is fsynced; on any error the temporary file is removed and *path* is untouched.
Replace imports of this module with ``vmsnap.atomic`` at merge.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from .errors import OutputError


@contextlib.contextmanager
def atomic_output(path):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + "-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create output: {exc.strerror or exc}") from None
    try:
        # mkstemp makes 0600 files; give the output the usual 0666 & ~umask.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:
            dfd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"{path}: cannot write output: {exc.strerror or exc}") from None
        raise
