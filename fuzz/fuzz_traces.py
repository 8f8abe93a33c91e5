"""Fuzz the access-trace readers (vmsnap.traces): Lackey, text, CSV (with and without a time
column), u64 and oracleGeneral, each plain or zstd-compressed, and the format detection.
Every input is read as every format; any error but vmsnap's own is a finding, and so is a
Lackey trace on which the compiled parser and the numpy reference parser disagree.
Seeds: the head of the real Lackey trace in fixtures/valgrind, and traces written by
vmsnap's own writer (oracleGeneral) or by hand."""

from __future__ import annotations

import os

import harness
from harness import FAILED, attempt

with harness.instrumented():
    import numpy as np
    import zstandard

    from vmsnap.traces import FORMATS, _io, lackey, open_trace, oracle_general

LACKEY = os.path.join(harness.ROOT, "fixtures", "valgrind", "gzip.lackey.zst")


def seeds() -> dict[str, bytes]:
    with open(LACKEY, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
        head = reader.read(1 << 16)
    lackey_head = b"\n".join(head.split(b"\n")[:60]) + b"\n"
    path = os.path.join(harness.scratch(), "seed.oracleGeneral")
    oracle_general.write(path, [1, 7, 1, 0x7FFFF, 7], clock_time=[0, 1, 1, 5, 9])
    with open(path, "rb") as fh:
        oracle = fh.read()
    os.unlink(path)
    text = b"# pages\n0x1000\n4096\n\n 12345 \n0X7ffffd2fb528\n"
    csv = b"time,addr,size\n1,0x1000,8\n2,8192,4\n3,\"0x2000\",1\n"
    u64 = np.array([0x1000, 0x7FFFFD2FB528, 2**64 - 1], dtype="<u8").tobytes()
    out = {"lackey": lackey_head, "text": text, "csv": csv, "u64": u64, "oracleGeneral": oracle}
    out.update({f"{k}.zst": zstandard.ZstdCompressor().compress(v) for k, v in list(out.items())})
    return out


def pages(blocks) -> list[int]:
    return [int(p) for block in blocks for p in (block[0] if isinstance(block, tuple) else block)]


def lackey_pages(path: str, compiled: bool) -> list[int]:
    stream, _ = _io.open_bytes(path, text=True)
    try:
        return pages(lackey.read(stream, path, 12, compiled=compiled))
    finally:
        stream.close()


def test_one_input(data: bytes) -> None:
    path = harness.write("trace", data)  # no extension: "auto" looks at the content
    for fmt in ("auto",) + FORMATS:
        attempt(lambda: pages(open_trace(path, fmt)))
    attempt(lambda: pages(open_trace(path, "csv", column="addr", time_column="time").timed()))
    attempt(lambda: pages(open_trace(path, "csv", column=2, time_column=1, delimiter="\\t").timed()))
    attempt(lambda: pages(open_trace(path, "oracleGeneral", values="address").timed()))
    compiled, reference = attempt(lackey_pages, path, True), attempt(lackey_pages, path, False)
    if (compiled is FAILED) != (reference is FAILED) or compiled != reference:
        raise AssertionError(f"Lackey parsers disagree: compiled {'fails' if compiled is FAILED else 'reads'}, "
                             f"reference {'fails' if reference is FAILED else 'reads'}")


if __name__ == "__main__":
    harness.main(test_one_input, seeds)
