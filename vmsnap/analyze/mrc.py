"""Miss-ratio curves of LRU page caches from memory-access traces.

Methods (one engine each, all fed the same blocks of page numbers, so one
read of the trace serves every curve):

``exact``
    Every reference's LRU stack distance (Mattson et al. 1970) computed with
    Olken's algorithm: a hash table of last-access times and a Fenwick tree
    over logical time, renumbered when full, so each reference costs
    O(log M) and the whole curve O(N log M) for N references over M distinct
    pages.  A cache of C pages hits exactly the references whose distance is
    <= C, so one pass gives the miss ratio at every size at once.
``shards``
    Fixed-rate SHARDS (Waldspurger et al., FAST '15): only pages whose hash
    (murmur3 fmix64 of the page number) is below R * 2**64 are tracked;
    distances are measured among them and scaled by 1/R.  SHARDS-adj: the
    difference between the expected number of sampled references (N * R) and
    the number actually sampled is added to the first histogram bucket
    (``adjust=False``: no adjustment, the curve is divided by the references
    actually sampled).
``shards-fixed-size``
    Fixed-size SHARDS: at most ``max_pages`` sampled pages are tracked; when
    more arrive, the largest-hash pages are dropped, the threshold falls to
    that hash and earlier counts are rescaled by R'/R.  (No -adj step: the
    paper defines it for the fixed rate.)
``untraced``
    The source design's technique: the same hashed subset of pages as
    ``shards`` is traced, and each traced access (a trap in a hypervisor)
    updates the subset's LRU stack; after a trap the page stays untraced for
    ``period`` references (trace order is the clock) and its accesses in that
    window are not seen.  The period is counted in references by default, or in
    the trace's own time units (``period_unit="time"``: oracleGeneral
    ``clock_time``, or a CSV time column).  Unseen accesses are counted as hits (the page was
    used at most ``period`` references earlier); the denominator is the
    expected number of references to sampled pages, N * R, as in SHARDS-adj
    (``adjust=False``: the references to sampled pages, seen or not).
    ``traps`` is the number of accesses that would have trapped; period 0 is
    fixed-rate SHARDS.

Every curve is a step function: ``sizes`` (cache size in pages at which the
hit count rises) and ``hits`` (cumulative hits for a cache of at least that
size) over ``total`` references.

The knee is found with the Kneedle rule (Satopaa et al., 2011): scale cache
size and miss ratio of the curve to [0, 1] and take the size where the curve
lies farthest below the straight line from its first to its last point, i.e.
where adding memory stops paying off.  The range is 0..2M pages (M = distinct
pages; the curve is flat at the cold-miss floor beyond M, and without that
flat tail a curve whose last drop is at M, like a cyclic scan, would have no
point below the chord); the curve is evaluated at every size up to 4096
points, evenly spaced beyond that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..errors import UsageError

METHODS = ("exact", "shards", "shards-fixed-size", "untraced")
DEFAULT_PERIODS = (0, 1_000, 10_000, 100_000, 1_000_000)
TWO64 = 2.0**64


def _kernels():
    from . import _mrc_kernels

    return _mrc_kernels


def rate_threshold(rate: float) -> int:
    if not 0 < rate <= 1:
        raise UsageError(f"sampling rate must be in (0, 1], not {rate}")
    return min(int(rate * TWO64), (1 << 64) - 1)


# ---------------------------------------------------------------- engines


class _LruEngine:
    """Stack-distance histogram of a (possibly sampled, possibly untraced) stream."""

    def __init__(self, rate: float | None = None, period: int = 0, initial_ids: int = 1 << 12, bit_slack: int = 1 << 16):
        import numpy as np

        k = _kernels()
        self.np = np
        self.k = k
        self.rate = rate
        self.thresh = np.uint64(rate_threshold(rate)) if rate is not None and rate < 1 else np.uint64(0)
        self.use_hash = rate is not None and rate < 1
        self.period = int(period)
        if self.period < 0:
            raise UsageError("untraced period must be >= 0")
        self._no_times = np.zeros(1, dtype=np.int64)
        self.sc = np.zeros(k.SC_LEN, dtype=np.int64)
        self.bit_slack = int(bit_slack)
        self._alloc_ids(int(initial_ids))
        self._alloc_hash(1 << max(1, (2 * int(initial_ids) - 1).bit_length()))
        self.base = 0

    def _alloc_hash(self, cap: int) -> None:
        np = self.np
        keys = np.zeros(cap, dtype=np.uint64)
        vals = np.full(cap, -1, dtype=np.int64)
        shift = 64 - (cap.bit_length() - 1)
        if hasattr(self, "hvals"):
            self.k.rehash(self.hkeys, self.hvals, keys, vals, shift)
        self.hkeys, self.hvals = keys, vals
        self.sc[self.k.SC_HSHIFT] = shift

    def _alloc_ids(self, cap: int) -> None:
        np = self.np
        last = np.full(cap, -1, dtype=np.int64)
        armed = np.zeros(cap if self.period else 1, dtype=np.int64)
        hist = np.zeros(cap + 2, dtype=np.int64)
        bit = np.zeros(2 * cap + self.bit_slack + 1, dtype=np.int64)
        n = int(self.sc[self.k.SC_IDS])
        if hasattr(self, "last"):
            last[:n] = self.last[:n]
            if self.period:
                armed[:n] = self.armed[:n]
            hist[: len(self.hist)] = self.hist
        self.last, self.armed, self.hist, self.bit = last, armed, hist, bit
        if n:
            self.sc[self.k.SC_T] = self.k.compact(self.last, n, self.bit)

    def feed(self, pages, times=None) -> None:
        k, sc = self.k, self.sc
        i = 0
        n = len(pages)
        use_times = times is not None
        if times is None:
            times = self._no_times
        while True:
            i = k.lru_feed(
                pages, times, use_times, i, self.base, self.thresh, self.use_hash, self.period,
                self.hkeys, self.hvals, self.last, self.armed, self.bit, self.hist, sc,
            )
            if i >= n:
                break
            ids = int(sc[k.SC_IDS])
            if ids >= len(self.last):
                self._alloc_ids(2 * len(self.last))
            elif 2 * (ids + 1) > len(self.hkeys):
                self._alloc_hash(2 * len(self.hkeys))
            else:
                sc[k.SC_T] = k.compact(self.last, ids, self.bit)
        self.base += n

    def counts(self):
        sc, k = self.sc, self.k
        return dict(
            seen=int(sc[k.SC_SEEN]), cold=int(sc[k.SC_COLD]), traps=int(sc[k.SC_TRAPS]),
            untraced=int(sc[k.SC_UNTRACED]), distinct=int(sc[k.SC_IDS]),
        )


class _FixedSizeEngine:
    def __init__(self, max_pages: int):
        import numpy as np

        if max_pages < 1:
            raise UsageError("--max-pages must be at least 1")
        self.np = np
        self.k = _kernels()
        self.smax = int(max_pages)
        self.th = np.array([np.iinfo(np.uint64).max], dtype=np.uint64)
        self.sc = np.zeros(self.k.SC_LEN, dtype=np.int64)
        cap = 1 << max(12, (2 * self.smax).bit_length())
        self.hkeys = np.zeros(cap, dtype=np.uint64)
        self.hvals = np.full(cap, -1, dtype=np.int64)
        self.sc[self.k.SC_HSHIFT] = 64 - (cap.bit_length() - 1)
        self.last = np.full(cap // 2, -1, dtype=np.int64)
        self.bit = np.zeros(2 * (self.smax + 1) + (1 << 16) + 1, dtype=np.int64)
        self.whist = np.zeros(1 << 16, dtype=np.float64)
        self.wcold = np.zeros(1, dtype=np.float64)
        self.heap_h = np.zeros(self.smax + 2, dtype=np.uint64)
        self.heap_id = np.zeros(self.smax + 2, dtype=np.int64)
        self.refs = 0

    def feed(self, pages) -> None:
        k, sc, np = self.k, self.sc, self.np
        i = 0
        n = len(pages)
        while True:
            i = k.shards_fixed_size_feed(
                pages, i, self.th, self.smax, self.hkeys, self.hvals, self.last, self.bit,
                self.whist, self.wcold, self.heap_h, self.heap_id, sc,
            )
            if i >= n:
                break
            ids = int(sc[k.SC_IDS])
            if sc[k.SC_NEED_BIN] >= len(self.whist):
                grown = np.zeros(max(2 * len(self.whist), int(sc[k.SC_NEED_BIN]) + 1), dtype=np.float64)
                grown[: len(self.whist)] = self.whist
                self.whist = grown
                sc[k.SC_NEED_BIN] = 0
            elif ids >= len(self.last) or 2 * (ids + 1) > len(self.hkeys):
                last = np.full(2 * len(self.last), -1, dtype=np.int64)
                last[:ids] = self.last[:ids]
                self.last = last
                cap = 2 * len(self.hkeys)
                keys = np.zeros(cap, dtype=np.uint64)
                vals = np.full(cap, -1, dtype=np.int64)
                shift = 64 - (cap.bit_length() - 1)
                k.rehash(self.hkeys, self.hvals, keys, vals, shift)
                self.hkeys, self.hvals = keys, vals
                sc[k.SC_HSHIFT] = shift
            else:
                sc[k.SC_T] = k.compact(self.last, ids, self.bit)
        self.refs += n


# ---------------------------------------------------------------- results


@dataclass
class Curve:
    """One miss-ratio curve as a step function, with what produced it."""

    label: str
    method: str
    page_size: int
    references: int
    sizes: "np.ndarray"  # float64 cache sizes (pages) where hits rise, ascending
    hits: "np.ndarray"  # float64 cumulative hits for a cache >= sizes[k]
    total: float  # denominator (references, or expected sampled references)
    distinct_pages: float  # exact count, or the estimate for sampled methods
    rate: float | None = None
    period: int | None = None
    period_unit: str | None = None  # "accesses" or "time"
    max_pages: int | None = None
    traps: int | None = None
    sampled_references: int | None = None
    error: dict | None = None  # filled by compare(): mae, max_abs_error, points

    def miss_ratio(self, cache_pages) -> "np.ndarray":
        import numpy as np

        c = np.asarray(cache_pages, dtype=np.float64)
        if self.total <= 0:
            return np.zeros_like(c)
        if len(self.sizes) == 0:
            return np.ones_like(c)  # no reuse at all: every reference misses
        k = np.searchsorted(self.sizes, c, side="right") - 1
        h = np.where(k >= 0, self.hits[np.maximum(k, 0)], 0.0)
        return np.clip((self.total - h) / self.total, 0.0, 1.0)

    @property
    def max_size(self) -> float:
        top = float(self.sizes[-1]) if len(self.sizes) else 1.0
        return max(top, float(self.distinct_pages), 1.0)

    def pages_for(self, target: float) -> int | None:
        """Smallest cache (pages) whose miss ratio is <= target, or None."""
        import numpy as np

        if self.total <= 0:
            return 0
        if target >= 1.0:
            return 0
        mr = (self.total - self.hits) / self.total
        ok = np.flatnonzero(mr <= target + 1e-12)
        if len(ok) == 0:
            return None
        return int(math.ceil(self.sizes[ok[0]]))

    def knee(self) -> int | None:
        """Cache size (pages) at the curve's knee (Kneedle rule), or None if flat."""
        import numpy as np

        grid = eval_grid(2 * self.max_size, 4096)
        if len(grid) < 3:
            return None
        mr = self.miss_ratio(grid)
        x = np.concatenate([[0.0], grid])
        y = np.concatenate([[1.0], mr])
        span = y.max() - y.min()
        if span <= 0:
            return None
        xn = (x - x[0]) / (x[-1] - x[0])
        yn = (y - y.min()) / span
        diff = (1.0 - xn) - yn
        j = int(np.argmax(diff))
        return int(x[j]) if j > 0 else int(x[1])


def eval_grid(max_size: float, points: int) -> "np.ndarray":
    """Every cache size 1..max_size if that is at most *points*, else *points* evenly spaced."""
    import numpy as np

    top = max(1, int(math.ceil(max_size)))
    if top <= points:
        return np.arange(1, top + 1, dtype=np.float64)
    return np.unique(np.ceil(np.linspace(top / points, top, points)))


def _curve_from_hist(hist, sample_rate: float, total: float, **kw) -> Curve:
    """The curve of a histogram of sampled stack distances, each scaled by 1/sample_rate."""
    import numpy as np

    d = np.flatnonzero(hist)
    d = d[d > 0]
    sizes = d / sample_rate  # one rounding: d * (1/rate) made 15 at rate 0.03 a hair over 500 pages
    whole = np.round(sizes)
    sizes = np.where(np.abs(sizes - whole) <= 1e-9 * sizes, whole, sizes)  # a cache of C pages hits d/sample_rate <= C
    hits = np.cumsum(hist[d].astype(np.float64))
    return Curve(sizes=sizes, hits=hits, total=float(total), **kw)


def compare(curve: Curve, exact: Curve, points: int = 10_000) -> dict:
    """Mean and max absolute miss-ratio error of *curve* against *exact*.

    Evaluated at every cache size 1..M (M = distinct pages of the exact
    curve), or at *points* evenly spaced sizes when M is larger.
    """
    import numpy as np

    grid = eval_grid(exact.max_size, points)
    e = np.abs(curve.miss_ratio(grid) - exact.miss_ratio(grid))
    curve.error = {"mae": float(e.mean()), "max_abs_error": float(e.max()), "points": int(len(grid))}
    return curve.error


# ---------------------------------------------------------------- driver


def exact_curve(chunks: Iterable, page_size: int = 4096, **engine_kw) -> Curve:
    """The exact LRU curve of an iterable of page-number blocks."""
    import numpy as np

    eng = _LruEngine(**engine_kw)
    n = 0
    for chunk in chunks:
        chunk = np.ascontiguousarray(chunk, dtype=np.uint64)
        eng.feed(chunk)
        n += len(chunk)
    return _curve_from_hist(
        eng.hist, 1.0, n, label="exact", method="exact", page_size=page_size,
        references=n, distinct_pages=eng.counts()["distinct"],
    )


@dataclass
class MrcRequest:
    method: str = "exact"
    rate: float = 0.01
    max_pages: int = 8192
    periods: Sequence[int] = DEFAULT_PERIODS
    period_unit: str = "accesses"  # or "time": the trace's timestamps (Trace.timed())
    compare_exact: bool = False
    adjust: bool = True  # SHARDS-adj (fixed rate and untraced); False: divide by sampled references


@dataclass
class MrcResult:
    page_size: int
    references: int
    curves: list = field(default_factory=list)  # primary curve(s) first
    exact: Curve | None = None


def compute(chunks: Iterable, page_size: int, req: MrcRequest, progress=None) -> MrcResult:
    """Feed every block of page numbers to the engines the request needs."""
    import numpy as np

    if req.method not in METHODS:
        raise UsageError(f"unknown method {req.method!r} (one of: {', '.join(METHODS)})")
    want_exact = req.method == "exact" or req.compare_exact or req.method == "untraced"
    engines: list = []
    exact_engine = _LruEngine() if want_exact else None
    if req.method == "shards":
        rate_threshold(req.rate)
        engines.append(("shards", _LruEngine(rate=req.rate)))
    elif req.method == "shards-fixed-size":
        engines.append(("shards-fixed-size", _FixedSizeEngine(req.max_pages)))
    elif req.method == "untraced":
        rate_threshold(req.rate)
        periods = sorted(set(int(p) for p in req.periods))
        if not periods:
            raise UsageError("--period: give at least one period")
        for p in periods:
            engines.append(("untraced", _LruEngine(rate=req.rate, period=p)))
    if req.period_unit not in ("accesses", "time"):
        raise UsageError(f"period unit must be 'accesses' or 'time', not {req.period_unit!r}")
    timed = req.period_unit == "time"
    n = 0
    for chunk in chunks:
        times = None
        if timed:
            chunk, times = chunk
            times = np.ascontiguousarray(times, dtype=np.int64)
        chunk = np.ascontiguousarray(chunk, dtype=np.uint64)
        if exact_engine is not None:
            exact_engine.feed(chunk)
        for method, eng in engines:
            if method == "untraced":
                eng.feed(chunk, times)
            else:
                eng.feed(chunk)
        n += len(chunk)
        if progress is not None:
            progress(len(chunk))

    res = MrcResult(page_size=page_size, references=n)
    if exact_engine is not None:
        c = exact_engine.counts()
        res.exact = _curve_from_hist(
            exact_engine.hist, 1.0, n, label="exact", method="exact", page_size=page_size,
            references=n, distinct_pages=c["distinct"],
        )
    for method, eng in engines:
        if method == "shards-fixed-size":
            r = float(eng.th[0]) / TWO64
            whist = eng.whist * r
            cold = float(eng.wcold[0]) * r
            total = float(whist.sum()) + cold
            d = np.flatnonzero(whist)
            d = d[d > 0]
            curve = Curve(
                label=f"shards-fixed-size max_pages={eng.smax}", method=method, page_size=page_size,
                references=n, sizes=d.astype(np.float64), hits=np.cumsum(whist[d]), total=total,
                distinct_pages=int(eng.sc[eng.k.SC_LIVE]) / r if r > 0 else 0.0, rate=r,
                max_pages=eng.smax, sampled_references=int(eng.sc[eng.k.SC_SEEN]),
            )
        else:
            c = eng.counts()
            hist = eng.hist.astype(np.float64)
            expected = n * eng.rate
            # Unseen accesses of the untraced design count as hits at the
            # smallest distance; SHARDS-adj puts expected - actual there too.
            hist[1] += c["untraced"]
            if req.adjust:
                hist[1] += expected - c["seen"]
            else:
                expected = float(c["seen"])
            unit = " time" if timed else ""
            label = f"shards rate={eng.rate:g}" if method == "shards" else f"untraced rate={eng.rate:g} period={eng.period}{unit}"
            label += "" if req.adjust else " no-adjust"  # two runs a script compares get two names
            curve = _curve_from_hist(
                hist, eng.rate, expected, label=label, method=method, page_size=page_size,
                references=n, distinct_pages=c["distinct"] / eng.rate, rate=eng.rate,
                period=eng.period if method == "untraced" else None,
                period_unit=req.period_unit if method == "untraced" else None,
                traps=c["traps"] if method == "untraced" else None, sampled_references=c["seen"],
            )
        if res.exact is not None:
            compare(curve, res.exact)
        res.curves.append(curve)
    if req.method == "exact":
        res.curves.insert(0, res.exact)
    return res
