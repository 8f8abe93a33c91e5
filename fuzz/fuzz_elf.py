"""Fuzz the ELF core reader (vmsnap.sources.elf): any error but vmsnap's own is a finding, and
a file read from a pipe must yield what it yields read as a file. Seeds: ELF32/64 cores of
either byte order, unaligned and reversed segment data, PN_XNUM, bss tails (tests/source_builders.py)."""

from __future__ import annotations

import random

import harness
from source_builders import build_elf

with harness.instrumented():
    from vmsnap.sources.elf import ElfSource


def seeds() -> dict[str, bytes]:
    rng = random.Random(1)
    a, b = rng.randbytes(3000), bytes(1000) + rng.randbytes(100)
    segments = [(0, a, None), (0x10000, b, 0x2000), (0x40000, b"", 0x1000)]
    return {
        "64-le": build_elf(segments)[0],
        "32-be-gap-reversed": build_elf(segments, elfclass=32, little=False, gap=b"\xcc" * 3, reverse_data=True)[0],
        "64-be-xnum": build_elf(segments[:2], little=False, xnum=True)[0],
        "32-le-no-notes": build_elf([(0xFFFFF000, a[:100], None)], elfclass=32, notes=False)[0],
    }


def test_one_input(data: bytes) -> None:
    harness.read_both_ways(lambda path, fh: ElfSource(path, fh=fh), data, "in.elf")


if __name__ == "__main__":
    harness.main(test_one_input, seeds)
