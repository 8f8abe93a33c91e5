"""Reference LRU simulations the MRC tests compare against (not tests themselves)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


def naive_lru_miss_ratio(pages, cache_pages: int) -> float:
    """O(N * M) textbook LRU: the obviously-correct reference."""
    od: OrderedDict = OrderedDict()
    misses = 0
    for p in pages:
        if p in od:
            od.move_to_end(p)
        else:
            misses += 1
            od[p] = None
            if len(od) > cache_pages:
                od.popitem(last=False)
    return misses / len(pages) if len(pages) else 0.0


def libcachesim_lru(trace_path, cache_pages) -> list[float]:
    """libCacheSim's LRU miss ratio replaying an oracleGeneral trace (objects of 1 byte)."""
    import libcachesim as lcs

    out = []
    for c in cache_pages:
        reader = lcs.TraceReader(str(trace_path), lcs.TraceType.ORACLE_GENERAL_TRACE, lcs.ReaderInitParam())
        miss, _byte_miss = lcs.LRU(int(c)).process_trace(reader)
        out.append(miss)
    return out


def write_for_libcachesim(path, pages) -> None:
    from vmsnap.traces.oracle_general import write

    write(path, np.asarray(pages, dtype=np.uint64), obj_size=1)
