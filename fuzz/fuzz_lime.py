"""Fuzz the LiME reader (vmsnap.sources.lime): any error but vmsnap's own is a finding, and a
dump read from a pipe must yield what it yields read as a file. Seeds: dumps of one and several
ranges (tests/source_builders.py)."""

from __future__ import annotations

import random

import harness
from source_builders import build_lime

with harness.instrumented():
    from vmsnap.sources.lime import LimeSource


def seeds() -> dict[str, bytes]:
    rng = random.Random(1)
    return {
        "one-range": build_lime([(0x1000, rng.randbytes(4096))])[0],
        "three-ranges": build_lime([(0, bytes(2048)), (0x100000, rng.randbytes(1000)), (0xFFFFFFFF0000, b"x")])[0],
    }


def test_one_input(data: bytes) -> None:
    harness.read_both_ways(lambda path, fh: LimeSource(path, fh=fh), data, "in.lime")


if __name__ == "__main__":
    harness.main(test_one_input, seeds)
