"""Hot/cold page classes from a scan series: a per-page saturating activity level.

The model is the hypervisor one: every scan period the accessed bit of each
page is sampled (here: read from a scan series), and each page keeps a small
activity level, from hottest down to coldest, plus "never seen accessed".

State per page: ``level`` (0 = never seen, 1 = coldest .. L = hottest) and
``idle`` (consecutive idle scans since the last access or the last demotion).
Per scan period, for each page:

* accessed:   level = min(L, level + promote_by); idle = 0
* not accessed: idle += 1; when idle reaches demote_after: idle = 0 and, if
  level > 1, level -= 1 (a page once seen never returns to "never")

Parameters (``HotColdParams``):

``levels`` (L, default 4)        number of active levels, 2..250. With 4 they are
                                  named cold, cool, warm, hot.
``demote_after`` (default 1)     idle scans that cost one level, 1..65535.
``promote_by`` (default L)       levels gained per accessed scan. L (the default)
                                  means one access makes a page hottest, so the
                                  level says how recently it was used: a page
                                  last accessed k idle scans ago sits at
                                  max(1, L - k // demote_after). 1 makes it a
                                  saturating counter (frequency and recency).

Outputs: class counts and working-set size (pages accessed in the period) per
period, working-set percentiles over the series (damo's ``report wss``
convention, nearest rank), the final per-page level array (levels file, see
hotcold_structs.py), and optional PNG plots (matplotlib, the ``plot`` extra).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..errors import FormatError, IntegrityError, UnsupportedVersionError, UsageError, VmsnapError
from ..scans.base import ScanSeries, Segment
from . import hotcold_structs as H
from .plotting import require_matplotlib

WSS_PERCENTILES = (0, 25, 50, 75, 100)
DEFAULT_HEATMAP_BINS = 256


@dataclass(frozen=True)
class HotColdParams:
    levels: int = 4
    demote_after: int = 1
    promote_by: int | None = None  # None: = levels

    def checked(self) -> "HotColdParams":
        if not 2 <= self.levels <= H.MAX_LEVELS:
            raise UsageError(f"--levels must be 2..{H.MAX_LEVELS}, not {self.levels}")
        if not 1 <= self.demote_after <= 65535:
            raise UsageError(f"--demote-after must be 1..65535, not {self.demote_after}")
        pb = self.levels if self.promote_by is None else self.promote_by
        if not 1 <= pb <= self.levels:
            raise UsageError(f"--promote-by must be 1..{self.levels} (the number of levels), not {pb}")
        return HotColdParams(self.levels, self.demote_after, pb)


def level_names(levels: int) -> list[str]:
    """Names of byte values 0..levels: never, cold, ..., hot."""
    named = {2: ["cold", "hot"], 3: ["cold", "warm", "hot"], 4: ["cold", "cool", "warm", "hot"]}
    if levels in named:
        return ["never"] + named[levels]
    return ["never", "cold"] + [f"l{i}" for i in range(2, levels)] + ["hot"]


class LevelMachine:
    """The per-page state machine, vectorised over all pages of a series.

    Each period is applied a chunk of pages at a time with branch-free uint8/uint16
    arithmetic into small scratch arrays: its memory is the state (3 bytes a page)
    and a chunk, and masked assignments (`lv[acc] = ...`) were 17x slower.
    """

    CHUNK = 1 << 16  # pages: the scratch arrays stay in the CPU's cache

    def __init__(self, n_pages: int, params: HotColdParams):
        import numpy as np

        self.p = params.checked()
        self.level = np.zeros(n_pages, dtype=np.uint8)
        self.idle = np.zeros(n_pages, dtype=np.uint16)
        c = min(self.CHUNK, max(1, n_pages))
        self._promoted, self._due, self._drop, self._quiet = (np.empty(c, dtype=np.uint8), np.empty(c, dtype=bool),
                                                              np.empty(c, dtype=bool), np.empty(c, dtype=bool))

    def step(self, accessed) -> None:
        import numpy as np

        acc = np.asarray(accessed, dtype=bool)
        if acc.shape != self.level.shape:
            raise FormatError(f"a period covers {acc.size} pages, the series {self.level.size}")
        for start in range(0, acc.size, self.CHUNK):
            end = start + self.CHUNK
            self._step_chunk(self.level[start:end], self.idle[start:end], acc[start:end])

    def _step_chunk(self, lv, idle, acc) -> None:
        import numpy as np

        L, k, n = self.p.levels, self.p.promote_by, self.p.demote_after
        m = lv.size
        promoted, due, drop, quiet = self._promoted[:m], self._due[:m], self._drop[:m], self._quiet[:m]
        np.minimum(lv, L - k, out=promoted)
        promoted += k  # min(L, level + k), never above 250: no uint8 overflow
        np.logical_not(acc, out=quiet)
        idle += 1
        idle *= quiet  # accessed: idle 0, so an accessed page is never due below
        np.greater_equal(idle, n, out=due)
        np.greater(lv, 1, out=drop)
        drop &= due
        lv -= drop.view(np.uint8)
        np.logical_not(due, out=due)
        idle *= due  # due: idle 0
        promoted -= lv  # accessed: level = promoted, as level + acc * (promoted - level) mod 256
        promoted *= acc
        lv += promoted

    def counts(self):
        import numpy as np

        # A chunk at a time: bincount widens its input to 8 bytes a page.
        total = np.zeros(self.p.levels + 1, dtype=np.int64)
        for start in range(0, self.level.size, self.CHUNK):
            total += np.bincount(self.level[start:start + self.CHUNK], minlength=self.p.levels + 1)
        return total


@dataclass
class HotColdResult:
    params: HotColdParams
    input_format: str
    inputs: list[str]
    page_size: int
    n_pages: int
    segments: list[Segment]
    timestamps: list[int | None] = field(default_factory=list)
    accessed: list[int] = field(default_factory=list)  # pages accessed, per period
    class_counts: list[list[int]] = field(default_factory=list)  # per period, index = level byte
    levels: object = None  # final numpy uint8 array
    heatmap: object = None  # (bins, periods) float32 fraction of pages accessed, or None
    heatmap_edges: object = None  # page index where each bin starts

    @property
    def n_periods(self) -> int:
        return len(self.accessed)

    @property
    def names(self) -> list[str]:
        return level_names(self.params.levels)


def analyze(series: ScanSeries, params: HotColdParams = HotColdParams(),
            heatmap_bins: int | None = None,
            on_period: Callable[[int], None] | None = None) -> HotColdResult:
    """Run the state machine over every period of `series` (one bitmap in memory at a time)."""
    import numpy as np

    params = params.checked()
    n = series.n_pages
    machine = LevelMachine(n, params)
    res = HotColdResult(params, series.format_name, list(series.inputs), series.page_size, n,
                        list(series.segments))
    cols = []
    edges = None
    if heatmap_bins:
        bins = max(1, min(heatmap_bins, n))
        edges = (np.arange(bins, dtype=np.int64) * n) // bins
    for period in series.periods():
        acc = period.accessed
        machine.step(acc)
        res.timestamps.append(period.timestamp_ns)
        res.accessed.append(int(np.count_nonzero(acc)))
        res.class_counts.append([int(c) for c in machine.counts()])
        if edges is not None:
            cols.append(accessed_per_bin(acc, edges))
        if on_period is not None:
            on_period(period.index)
        del period, acc  # the next period's bitmap is unpacked before the loop would drop this one
    if not res.accessed:
        raise FormatError(f"{', '.join(series.inputs)}: the series holds no scan periods")
    res.levels = machine.level
    if edges is not None:
        sizes = np.diff(np.append(edges, n)).astype(np.float32)
        res.heatmap = (np.stack(cols, axis=1) / sizes[:, None]).astype(np.float32)
        res.heatmap_edges = edges
    return res


def accessed_per_bin(acc, edges, chunk: int = LevelMachine.CHUNK):
    """Accessed pages in each bin [edges[i], edges[i+1]) (the last to the end), a chunk of
    pages at a time: reduceat over the whole period widened it to 8 bytes a page."""
    import numpy as np

    out = np.zeros(len(edges), dtype=np.int64)
    for start in range(0, acc.size, chunk):
        end = min(start + chunk, acc.size)
        first = int(np.searchsorted(edges, start, side="right")) - 1  # the bin holding `start`
        stop = int(np.searchsorted(edges, end, side="left"))  # bins that begin before `end`
        local = np.concatenate(([start], edges[first + 1:stop])) - start
        out[first:stop] += np.add.reduceat(acc[start:end], local, dtype=np.int64)
    return out


# ---------------------------------------------------------------- summaries


def _percentile(values: Sequence[int], pct: float) -> int:
    """An observed value, as damo's report wss picks it: sorted[int(pct% of n)], the last
    for 100. (Rounding pct% of n-1, as before, put the 25th and 75th of seven
    periods at ranks 2 and 4, asymmetrically: round() rounds halves to even.)"""
    s = sorted(values)
    return int(s[min(len(s) - 1, int(pct / 100 * len(s)))])


def summary(res: HotColdResult) -> dict:
    """The --json document (schema in man/vmsnap-analyze-hotcold.1)."""
    names = res.names
    ps = res.page_size
    final = res.class_counts[-1]
    wss = [a * ps for a in res.accessed]
    return {
        "format": "vmsnap-hotcold",
        "version": 1,
        "input_format": res.input_format,
        "inputs": res.inputs,
        "page_size": ps,
        "pages": res.n_pages,
        "periods": res.n_periods,
        "params": {
            "levels": res.params.levels,
            "level_names": names,
            "demote_after": res.params.demote_after,
            "promote_by": res.params.promote_by,
        },
        "segments": [
            {"name": s.name, "base": s.base, "first_page": s.first_page, "pages": s.n_pages}
            for s in res.segments
        ],
        "final": {
            "pages": dict(zip(names, final)),
            "bytes": {k: v * ps for k, v in zip(names, final)},
            "touched_pages": res.n_pages - final[0],
        },
        "wss": {
            "percentiles": {str(p): _percentile(wss, p) for p in WSS_PERCENTILES},
            "mean_bytes": sum(wss) / len(wss),
        },
        "per_period": [
            {
                "period": i,
                "timestamp_ns": res.timestamps[i],
                "accessed_pages": res.accessed[i],
                "wss_bytes": wss[i],
                "classes": dict(zip(names, res.class_counts[i])),
            }
            for i in range(res.n_periods)
        ],
    }


def csv_text(res: HotColdResult) -> str:
    """The --csv table: one row per period (columns in the man page)."""
    names = res.names
    lines = [",".join(["period", "timestamp_ns", "accessed_pages", "wss_bytes"] + names)]
    for i in range(res.n_periods):
        ts = "" if res.timestamps[i] is None else str(res.timestamps[i])
        row = [str(i), ts, str(res.accessed[i]), str(res.accessed[i] * res.page_size)]
        lines.append(",".join(row + [str(c) for c in res.class_counts[i]]))
    return "\n".join(lines) + "\n"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"  # pragma: no cover


def text_report(res: HotColdResult) -> str:
    s = summary(res)
    ps = res.page_size
    out = [
        f"input: {res.input_format}, {res.n_periods} periods, {res.n_pages} pages of {ps} bytes "
        f"({_size(res.n_pages * ps)})",
        f"levels: {res.params.levels}, demote after {res.params.demote_after} idle scan(s), "
        f"promote by {res.params.promote_by}",
        "final classes:",
    ]
    for name in reversed(res.names):
        pages = s["final"]["pages"][name]
        out.append(f"  {name:>6}: {pages:>12} pages  {_size(pages * ps):>11}  "
                   f"{100 * pages / res.n_pages:5.1f} %")
    pct = s["wss"]["percentiles"]
    out.append("working set (accessed per period): " + ", ".join(
        f"p{p} {_size(pct[str(p)])}" for p in WSS_PERCENTILES) + f", mean {_size(s['wss']['mean_bytes'])}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- levels file


@dataclass
class LevelsFile:
    levels: object  # numpy uint8 array, one byte per page
    n_levels: int
    promote_by: int
    demote_after: int
    page_size: int
    periods: int
    segments: list[Segment]

    def hot_first(self):
        """Page indices ordered hottest first (ties keep address order): what save --order hot-first wants."""
        import numpy as np

        return np.argsort(-self.levels.astype(np.int16), kind="stable")


def write_levels(path: str, res: HotColdResult) -> None:
    """Write the levels file atomically (layout in hotcold_structs.py)."""
    import blake3

    from ..atomic import atomic_output

    head = H.LevelsHeader.build(dict(
        version=H.VERSION, levels=res.params.levels, promote_by=res.params.promote_by,
        page_size=res.page_size, n_pages=res.n_pages, periods=res.n_periods,
        demote_after=res.params.demote_after, n_segments=len(res.segments), flags=0, reserved=0,
    ))
    segs = b"".join(H.SegmentRecord.build(dict(base=s.base, first_page=s.first_page, n_pages=s.n_pages))
                    for s in res.segments)
    body = res.levels.tobytes()
    h = blake3.blake3(head)
    h.update(segs)
    h.update(body)
    with atomic_output(path) as fh:
        fh.write(head)
        fh.write(segs)
        fh.write(body)
        fh.write(h.digest(H.DIGEST_SIZE))


def read_levels(path: str) -> LevelsFile:
    """Read and verify a levels file; a damaged file is an error, never different levels."""
    import blake3
    import numpy as np

    from ..sources.raw import open_input

    with open_input(path) as fh:
        data = fh.read()
    if not data.startswith(H.MAGIC):
        raise FormatError(f"{path}: offset 0: not a vmsnap levels file (bad magic)")
    if len(data) < H.HEADER_SIZE + H.DIGEST_SIZE:
        raise IntegrityError(f"{path}: offset {len(data)}: truncated header")
    hdr = H.LevelsHeader.parse(data[: H.HEADER_SIZE])
    if hdr.version == 0 or hdr.version > H.VERSION:
        raise UnsupportedVersionError(f"{path}: offset 8: levels file version {hdr.version}, "
                                      f"this vmsnap reads {H.VERSION}")
    expect = H.HEADER_SIZE + hdr.n_segments * H.SEGMENT_SIZE + hdr.n_pages + H.DIGEST_SIZE
    if len(data) != expect:
        raise IntegrityError(f"{path}: offset {min(len(data), expect)}: file is {len(data)} bytes, "
                             f"its header describes {expect}")
    if blake3.blake3(data[: -H.DIGEST_SIZE]).digest(H.DIGEST_SIZE) != data[-H.DIGEST_SIZE:]:
        raise IntegrityError(f"{path}: offset {len(data) - H.DIGEST_SIZE}: digest mismatch")
    if hdr.flags or hdr.reserved:
        raise FormatError(f"{path}: offset 36: unknown flags or reserved bits set")
    if not 2 <= hdr.levels <= H.MAX_LEVELS:
        raise FormatError(f"{path}: offset 10: {hdr.levels} levels, expected 2..{H.MAX_LEVELS}")
    segs = []
    off = H.HEADER_SIZE
    for i in range(hdr.n_segments):
        r = H.SegmentRecord.parse(data[off : off + H.SEGMENT_SIZE])
        segs.append(Segment(f"segment{i}", r.base, r.first_page, r.n_pages))
        off += H.SEGMENT_SIZE
    levels = np.frombuffer(data, dtype=np.uint8, count=hdr.n_pages, offset=off).copy()
    if levels.size and int(levels.max()) > hdr.levels:
        bad = int(np.argmax(levels > hdr.levels))
        raise FormatError(f"{path}: offset {off + bad}: level {levels[bad]} above {hdr.levels}")
    return LevelsFile(levels, hdr.levels, hdr.promote_by, hdr.demote_after, hdr.page_size,
                      hdr.periods, segs)


# ---------------------------------------------------------------- plots


def render_heatmap(res: HotColdResult, path: str) -> None:
    """Address x time heatmap (damo's `time address frequency`): share of pages accessed per bin."""
    from ..atomic import atomic_output

    plt = require_matplotlib()
    if res.heatmap is None:
        raise UsageError("the analysis ran without heatmap bins")
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    im = ax.imshow(res.heatmap, aspect="auto", origin="lower", interpolation="nearest",
                   cmap="inferno", vmin=0.0, vmax=1.0,
                   extent=(-0.5, res.n_periods - 0.5, 0, res.n_pages))
    ax.set_xlabel("scan period")
    ax.set_ylabel(f"page number ({res.page_size}-byte pages)")
    ax.set_title(f"accessed pages over time ({res.input_format}, {res.n_pages} pages)")
    fig.colorbar(im, ax=ax, label="fraction of pages accessed")
    _save(fig, plt, path, atomic_output)


def render_classes(res: HotColdResult, path: str) -> None:
    """Class sizes (bytes) over periods as stacked areas, with the working set as a line."""
    import numpy as np

    from ..atomic import atomic_output

    plt = require_matplotlib()
    names = res.names
    counts = np.array(res.class_counts, dtype=np.float64).T * res.page_size / 2**20
    # period i spans [i, i+1): repeat the last column so the last period has a width too
    counts = np.concatenate([counts, counts[:, -1:]], axis=1)
    wss = np.array(res.accessed + res.accessed[-1:], dtype=np.float64) * res.page_size / 2**20
    x = np.arange(res.n_periods + 1)
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    order = list(range(len(names) - 1, -1, -1))  # hot at the bottom
    cmap = plt.get_cmap("RdYlBu_r")  # cold blue .. hot red
    top = len(names) - 1
    colors = ["#dddddd" if i == 0 else cmap(0.1 + 0.85 * (i - 1) / max(1, top - 1)) for i in order]
    ax.stackplot(x, counts[order], labels=[names[i] for i in order], colors=colors, step="post")
    ax.plot(x, wss, color="black", lw=1.5,
            drawstyle="steps-post", label="working set")
    ax.set_xlabel("scan period")
    ax.set_xlim(0, res.n_periods)
    ax.set_ylabel("MiB")
    ax.set_title("hot/cold classes over time")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    _save(fig, plt, path, atomic_output)


def _save(fig, plt, path, atomic_output) -> None:
    try:
        with atomic_output(path) as fh:
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- one call for the CLI

# Peak bytes a page: the level (1) and idle scans (2) kept, one period's accessed flags (1) and
# its packed bitmap (1/8). Measured with the interpreter: 4.0 bytes a page over 64M pages of idle
# bitmaps, 4.4 over 128M pages of a scan series. A reader may hold more (held_bytes_per_page):
# dumps keep their access matrix, one byte a page per period.
STATE_BYTES_PER_PAGE = 5


def _check_memory(series: ScanSeries, paths: Sequence[str]) -> None:
    """Say at once when the per-page state cannot fit the memory this machine has free (a
    DAMON region spanning an address space, a forged page count), instead of "out of memory"
    or the kernel's OOM killer later."""
    per_page = STATE_BYTES_PER_PAGE + series.held_bytes_per_page
    need = series.n_pages * per_page
    memory = available_memory()
    if memory is not None and need > memory:
        raise VmsnapError(f"{paths[0]}: {series.n_pages} pages to classify need {need >> 20} MiB of state "
                          f"({per_page} bytes a page), more than the {memory >> 20} MiB this machine has available")


def available_memory() -> int | None:
    """Bytes that can be had without swapping (MemAvailable: free memory and the page cache
    that can be dropped), or the machine's total where the kernel does not say."""
    import os

    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def hotcold(paths: Sequence[str], fmt: str = "auto", params: HotColdParams = HotColdParams(), *,
            page_size: int | None = None, damon_target: int = 0, damon_min_accesses: int = 1,
            levels_out: str | None = None, heatmap: str | None = None, plot: str | None = None,
            heatmap_bins: int = DEFAULT_HEATMAP_BINS, series_out: str | None = None,
            progress: bool | None = None) -> HotColdResult:
    """Open the scans, run the analysis, write the requested files; return the result."""
    from ..atomic import refuse_outputs_over_inputs
    from ..scans import open_scans

    params = params.checked()
    refuse_outputs_over_inputs({"--out": levels_out, "--save-series": series_out, "--heatmap": heatmap,
                                "--plot": plot}, paths)
    if heatmap or plot:
        require_matplotlib()  # fail before a long run, not after it
    if progress is None:
        progress = sys.stderr.isatty()
    with contextlib.ExitStack() as stack:
        series = stack.enter_context(open_scans(
            paths, fmt, page_size=page_size, damon_target=damon_target,
            damon_min_accesses=damon_min_accesses))
        on_period = None
        if progress:
            from tqdm import tqdm

            if series.format_name == "dumps":  # the work is reading: count bytes
                bar = stack.enter_context(tqdm(total=series.size_hint, unit="B", unit_scale=True,
                                               unit_divisor=1024, file=sys.stderr, leave=False,
                                               desc="dumps"))
                series.progress = bar.update
            else:
                bar = stack.enter_context(tqdm(total=series.n_periods, unit="period",
                                               file=sys.stderr, leave=False, desc="scans"))
                on_period = lambda i: bar.update(1)  # noqa: E731
        _check_memory(series, paths)  # dumps of a format without a known size are compared first, with the bar
        source: ScanSeries = series
        if series_out:
            from ..scans.series import SeriesWriter

            writer = stack.enter_context(SeriesWriter(
                series_out, series.page_size, series.n_pages, series.segments[0].base))
            source = _TeeSeries(series, writer)
        res = analyze(source, params, heatmap_bins if heatmap else None, on_period)
    if levels_out:
        write_levels(levels_out, res)
    if heatmap:
        render_heatmap(res, heatmap)
    if plot:
        render_classes(res, plot)
    return res


class _TeeSeries(ScanSeries):
    """Pass a series through while copying each period into a SeriesWriter."""

    def __init__(self, inner: ScanSeries, writer):
        super().__init__(inner.inputs, inner.page_size)
        self.inner, self.writer = inner, writer
        self.format_name = inner.format_name

    @property
    def n_pages(self) -> int:
        return self.inner.n_pages

    @property
    def segments(self):
        return self.inner.segments

    def periods(self):
        for p in self.inner.periods():
            self.writer.add(p.accessed, p.timestamp_ns)
            yield p
            del p  # one period in memory at a time, as the reader keeps it


__all__ = ["HotColdParams", "LevelMachine", "HotColdResult", "analyze", "summary", "csv_text",
           "text_report", "write_levels", "read_levels", "LevelsFile", "render_heatmap",
           "render_classes", "hotcold", "level_names"]
