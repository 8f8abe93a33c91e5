"""Input readers, one module per source format, chosen by name or by magic bytes."""

from __future__ import annotations

import importlib

from ..errors import UsageError
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
    if fmt == "auto":
        fmt = "raw" if path == "-" else detect_format(_peek(path))
    if fmt not in FORMATS:
        raise UsageError(f"unknown input format {fmt!r} (known: {', '.join(sorted(FORMATS))})")
    module, cls = FORMATS[fmt]
    return getattr(importlib.import_module(module), cls)(path)


def _peek(path: str, n: int = 64) -> bytes:
    from .raw import open_input

    with open_input(path) as fh:
        return fh.read(n)


__all__ = ["Region", "Source", "open_source", "detect_format", "FORMATS", "MAGICS"]
