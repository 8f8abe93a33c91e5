"""One exception hierarchy; each class carries the exit code the CLI returns for it.

The codes are documented in man/vmsnap.1 (EXIT STATUS). Scripts rely on them, so
never renumber an existing code.
"""

from __future__ import annotations


class VmsnapError(Exception):
    """Base class: any error vmsnap reports as one line on stderr."""

    exit_code = 1


class UsageError(VmsnapError):
    """Options that cannot work together, or a value out of range."""

    exit_code = 2


class InputError(VmsnapError):
    """An input file is missing, unreadable, or not what its format says it is."""

    exit_code = 3


class FormatError(VmsnapError):
    """A file is not a vmsnap snapshot, or its structure is malformed."""

    exit_code = 4


class UnsupportedVersionError(FormatError):
    """A snapshot written by a newer format version than this vmsnap reads."""

    exit_code = 5


class OutputError(VmsnapError):
    """An output could not be written (disk full, permission, closed pipe)."""

    exit_code = 6


class OutputWriteError(OutputError):
    """A write to the output that atomic_output opened failed; atomic_output puts the
    output's name in front of the message, so the code that writes need not know it."""


class IntegrityError(VmsnapError):
    """A digest did not match, or the file is truncated: the data cannot be trusted."""

    exit_code = 90


class Interrupted(VmsnapError):
    """Ctrl-C: work stopped, no output was left under the target name."""

    exit_code = 130


class Terminated(Interrupted):
    """SIGTERM (`timeout`, a service manager): stopped as for Ctrl-C."""

    exit_code = 143


class QemuError(VmsnapError):
    """QEMU could not be driven: QMP socket missing or refused, a QMP command or a
    migration failed, or the guest is not set up as `vmsnap qemu` needs."""

    exit_code = 7


def open_for_reading(path: str):
    """open(path, "rb"), with the OS error turned into one InputError line."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from None
