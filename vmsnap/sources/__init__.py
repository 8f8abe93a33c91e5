"""Input readers, one module per source format, chosen by name or by magic bytes."""

from __future__ import annotations

import importlib
import os

from ..errors import UsageError
from ..streams import is_stream
from .base import Region, Source

# format name -> (module, class). Readers are imported only when used, so
# `vmsnap --help` stays fast.
FORMATS: dict[str, tuple[str, str]] = {
    "raw": ("vmsnap.sources.raw", "RawSource"),
    "vms": ("vmsnap.sources.vms", "VmsSource"),
    "elf": ("vmsnap.sources.elf", "ElfSource"),
    "qemu": ("vmsnap.sources.qemu_migration", "QemuMigrationSource"),
    "lime": ("vmsnap.sources.lime", "LimeSource"),
}

# (magic prefix, format name), tried in order by detect_format. Raw is the fallback.
MAGICS: list[tuple[bytes, str]] = [
    (b"\x89VMSNAP\n", "vms"),  # vmsnap's own snapshots (vmsnap.sources.vms.MAGIC)
    (b"\x7fELF", "elf"),  # ELF core (dump-guest-memory, virsh dump --memory-only)
    (b"QEVM", "qemu"),  # QEMU migration stream (any version: the reader names a wrong one)
    (b"EMiL", "lime"),  # LiME range header magic 0x4C694D45, little-endian
]


def detect_format(head: bytes) -> str:
    """Name the input format from the file's first bytes; raw when nothing matches."""
    for magic, name in MAGICS:
        if head.startswith(magic):
            return name
    return "raw"


def open_source(path: str, fmt: str = "auto") -> Source:
    """Open `path` ('-' for stdin) with the reader for `fmt`, or the detected one."""
    if fmt != "auto" and fmt not in FORMATS:
        raise UsageError(f"unknown input format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    if is_stream(path):  # stdin, a FIFO, a device: its first bytes are read once, then again by its reader
        return _open_stream(path, fmt)
    if fmt == "auto":
        fmt = detect_format(_peek(path))
    module, cls = FORMATS[fmt]
    return getattr(importlib.import_module(module), cls)(path)


def _peek(path: str, n: int = 64) -> bytes:
    from .raw import open_input

    with open_input(path) as fh:
        return fh.read(n)


def _open_stream(path: str, fmt: str) -> Source:
    """Open stdin, a FIFO or a device once: the bytes read to name its format are read again
    by its reader. Stdin redirected from a whole file (`< x`) is read as that file."""
    from ..errors import InputError
    from ..streams import is_whole_file, sniff
    from .raw import open_input

    fh = given = open_input(path)
    try:
        try:
            if path == "-" and is_whole_file(fh):  # look without moving it; readers may seek in it
                head = os.pread(fh.fileno(), 64, 0)
            else:  # read from where it stands, as a stream, even when it is a file: no reader seeks in it
                head, fh = sniff(fh, 64 if fmt == "auto" else 0, close_inner=path != "-")
        except OSError as exc:
            raise InputError(f"{path}: read failed: {exc.strerror or exc}") from None
        if fmt == "auto":
            fmt = detect_format(head)
        module, cls = FORMATS[fmt]
        if fmt == "vms":
            if path != "-":
                raise InputError(f"{path}: a .vms snapshot must be a regular file (its index is at the end): "
                                 "name the file")
            return getattr(importlib.import_module(module), cls)(path)  # reads stdin in place, or refuses
        source = getattr(importlib.import_module(module), cls)(path, fh=fh)
    except BaseException:
        if fh is not given or path != "-":  # stdin itself stays open for the API's caller
            fh.close()
        raise
    source._own = path != "-"  # every reader that takes a file object closes it when it owns it; not stdin
    return source


__all__ = ["Region", "Source", "open_source", "is_stream", "detect_format", "FORMATS", "MAGICS"]
