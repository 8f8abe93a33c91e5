"""Synthetic page-reference streams with known structure (tests, benchmarks, demos).

``zipf_pages(n, pages, alpha, seed)``: *n* references over *pages* distinct
pages, page of popularity rank r drawn with probability proportional to
r**-alpha (inverse-CDF sampling, so alpha <= 1 works too); ranks are mapped to
scattered page numbers by a fixed permutation so that hot pages are not
neighbours.  ``loop_pages``: a cyclic scan, the classic LRU worst case
(miss ratio 1 below the loop length, cold misses only above).
"""

from __future__ import annotations


def zipf_pages(n: int, pages: int, alpha: float = 0.9, seed: int = 0, block: int = 1 << 22):
    """Yield blocks of a Zipf(alpha) page-number stream (uint64)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w = np.arange(1, pages + 1, dtype=np.float64) ** -alpha
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    perm = rng.permutation(pages).astype(np.uint64) * np.uint64(7) + np.uint64(0x10000)
    left = n
    while left > 0:
        m = min(block, left)
        ranks = np.searchsorted(cdf, rng.random(m), side="right")
        yield perm[np.minimum(ranks, pages - 1)]
        left -= m


def loop_pages(n: int, loop: int, start: int = 0):
    import numpy as np

    return (np.arange(n, dtype=np.uint64) % np.uint64(loop)) + np.uint64(start)
