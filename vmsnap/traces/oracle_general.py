"""libCacheSim oracleGeneral binary traces.

Each record is 24 bytes, packed, little-endian (libCacheSim's
``oracleGeneralBin.h``)::

    uint32  clock_time         seconds
    uint64  obj_id
    uint32  obj_size           bytes
    int64   next_access_vtime  -1 if never again

``obj_id`` is an opaque object identifier in libCacheSim; vmsnap takes it as
the page number (``values="page"``, the default) or, with
``values="address"``, as a byte address divided by the page size.  Records
with ``obj_size == 0`` are skipped, as libCacheSim's reader does by default
(``ignore_size_zero_req``), so both tools replay the same requests.
"""

from __future__ import annotations

from typing import BinaryIO, Iterator

from ._io import read_records

RECORD = 24


def dtype():
    import numpy as np

    return np.dtype(
        [("clock_time", "<u4"), ("obj_id", "<u8"), ("obj_size", "<u4"), ("next_access_vtime", "<i8")]
    )


def read(stream: BinaryIO, name: str, shift: int, values: str = "page", with_time: bool = False) -> Iterator:
    """Blocks of page numbers, or (pages, clock_time as int64) when with_time."""
    import numpy as np

    dt = dtype()
    assert dt.itemsize == RECORD
    for block, _offset in read_records(stream, name, RECORD):
        rec = np.frombuffer(block, dtype=dt)
        keep = rec["obj_size"] != 0
        ids = rec["obj_id"][keep]
        pages = ids >> np.uint64(shift) if values == "address" else np.ascontiguousarray(ids, dtype=np.uint64)
        if with_time:
            yield pages, rec["clock_time"][keep].astype(np.int64)
        else:
            yield pages


def write(path, pages, obj_size: int = 4096, clock_time=None) -> None:
    """Write *pages* as an oracleGeneral trace (used by tests and benchmarks).

    ``next_access_vtime`` is written as -1: LRU never reads it.  clock_time
    defaults to the record index.
    """
    import numpy as np

    from ..atomic import atomic_output

    pages = np.asarray(pages, dtype=np.uint64)
    rec = np.zeros(len(pages), dtype=dtype())
    if clock_time is None:
        clock_time = np.arange(len(pages), dtype=np.uint64)
    rec["clock_time"] = np.asarray(clock_time).astype(np.uint32)
    rec["obj_id"] = pages
    rec["obj_size"] = obj_size
    rec["next_access_vtime"] = -1
    with atomic_output(path) as f:
        f.write(rec.tobytes())
