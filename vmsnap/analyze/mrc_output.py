"""Presentation of miss-ratio curves: JSON, CSV, a text table and a PNG plot.

JSON (``schema: "vmsnap.mrc/1"``)::

    {"schema": "vmsnap.mrc/1",
     "trace": {"path", "format", "compressed", "page_size", "references"},
     "method": "exact" | "shards" | "shards-fixed-size" | "untraced",
     "target_miss_ratio": float | null,
     "curves": [                       # exact first when it was computed
        {"label", "method", "rate", "period", "period_unit", "max_pages",
         "references", "sampled_references", "traps", "trap_fraction",
         "distinct_pages", "distinct_bytes",
         "knee":   {"pages", "bytes", "miss_ratio"} | null,
         "target": {"miss_ratio", "pages", "bytes"} | null,
         "error_vs_exact": {"mae", "max_abs_error", "points"} | null,
         "points": [{"pages", "bytes", "miss_ratio"}, ...]}]}

CSV: header ``label,method,rate,period,pages,bytes,miss_ratio``, one row per
curve and cache size.
"""

from __future__ import annotations

import io
import json
import math

from ..errors import UsageError
from ..sizes import parse_size

SCHEMA = "vmsnap.mrc/1"


def parse_sizes(text: str, page_size: int) -> list[int]:
    """'100,200,64M' -> cache sizes in pages: plain decimal numbers are pages, others
    (64M, 0x1000, 4096B) bytes, rounded up to whole pages."""
    out = []
    for tok in str(text).split(","):
        tok = tok.strip()
        if not tok:
            continue
        if tok.isascii() and tok.isdigit():
            out.append(int(tok, 10))
        else:
            out.append(math.ceil(parse_size(tok, "--sizes") / page_size))  # 0K is no page, not one
    if not out or min(out) < 1:
        raise UsageError("--sizes needs cache sizes >= 1 page")
    return sorted(set(out))


def grid_for(result, points: int, sizes: list[int] | None):
    import numpy as np

    from .mrc import eval_grid

    if sizes:
        return np.asarray(sizes, dtype=np.float64)
    if points < 1:
        raise UsageError("--points must be >= 1")
    top = max(c.max_size for c in _all_curves(result))
    return eval_grid(top, points)


def _all_curves(result):
    curves = list(result.curves)
    if result.exact is not None and result.exact not in curves:
        curves.insert(0, result.exact)
    return curves


def _curve_dict(curve, grid, page_size, target):
    mr = curve.miss_ratio(grid)
    knee = curve.knee()
    d = {
        "label": curve.label,
        "method": curve.method,
        "rate": curve.rate,
        "period": curve.period,
        "period_unit": curve.period_unit,
        "max_pages": curve.max_pages,
        "references": curve.references,
        "sampled_references": curve.sampled_references,
        "traps": curve.traps,
        "trap_fraction": (curve.traps / curve.references) if curve.traps is not None and curve.references else None,
        "distinct_pages": round(float(curve.distinct_pages), 1),
        "distinct_bytes": int(round(float(curve.distinct_pages) * page_size)),
        "knee": None
        if knee is None
        else {"pages": knee, "bytes": knee * page_size, "miss_ratio": float(curve.miss_ratio([knee])[0])},
        "target": None,
        "error_vs_exact": curve.error,
        "points": [
            {"pages": int(p), "bytes": int(p) * page_size, "miss_ratio": float(m)} for p, m in zip(grid, mr)
        ],
    }
    if target is not None:
        pages = curve.pages_for(target)
        d["target"] = {
            "miss_ratio": target,
            "pages": pages,
            "bytes": None if pages is None else pages * page_size,
        }
    return d


def to_dict(result, trace, method, grid, target=None) -> dict:
    return {
        "schema": SCHEMA,
        "trace": {
            "path": trace.path,
            "format": trace.fmt,
            "compressed": trace.compressed,
            "page_size": result.page_size,
            "references": result.references,
        },
        "method": method,
        "target_miss_ratio": target,
        "curves": [_curve_dict(c, grid, result.page_size, target) for c in _all_curves(result)],
    }


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=1)


def to_csv(doc: dict) -> str:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["label", "method", "rate", "period", "pages", "bytes", "miss_ratio"])
    for c in doc["curves"]:
        rate = "" if c["rate"] is None else f"{c['rate']:.6g}"
        period = "" if c["period"] is None else c["period"]
        for p in c["points"]:
            w.writerow([c["label"], c["method"], rate, period, p["pages"], p["bytes"], f"{p['miss_ratio']:.6f}"])
    return buf.getvalue()


def _human(nbytes) -> str:
    if nbytes is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


def to_text(doc: dict, max_rows: int = 20) -> str:
    t = doc["trace"]
    out = [
        f"trace: {t['path']} ({t['format']}{', zstd' if t['compressed'] else ''}), "
        f"{t['references']} references, page size {t['page_size']}"
    ]
    for c in doc["curves"]:
        out.append("")
        out.append(f"{c['label']}: {c['distinct_pages']:.0f} distinct pages ({_human(c['distinct_bytes'])})")
        if c["traps"] is not None:
            out.append(f"  traps: {c['traps']} ({100 * c['trap_fraction']:.3f}% of references)")
        if c["error_vs_exact"]:
            e = c["error_vs_exact"]
            out.append(f"  error vs exact: mean {e['mae']:.5f}, max {e['max_abs_error']:.5f}")
        if c["knee"]:
            k = c["knee"]
            out.append(f"  knee: {k['pages']} pages ({_human(k['bytes'])}), miss ratio {k['miss_ratio']:.6f}")
        if c["target"]:
            g = c["target"]
            need = "unreachable (below the cold-miss floor)" if g["pages"] is None else f"{g['pages']} pages ({_human(g['bytes'])})"
            out.append(f"  memory for miss ratio <= {g['miss_ratio']}: {need}")
        pts = c["points"]
        step = max(1, math.ceil(len(pts) / max_rows))
        shown = pts[::step]
        if pts and shown[-1] is not pts[-1]:
            shown.append(pts[-1])
        out.append(f"  {'pages':>12} {'size':>12} {'miss ratio':>10}")
        for p in shown:
            out.append(f"  {p['pages']:>12} {_human(p['bytes']):>12} {p['miss_ratio']:>10.6f}")
    return "\n".join(out) + "\n"


def plot(result, doc: dict, path: str) -> None:
    """Write a PNG of every curve (miss ratio against cache size, log scale).

    Curves are drawn from their step functions at up to 4096 sizes each,
    whatever --points or --sizes chose for the numbers; knees are dots.
    """
    from ..atomic import atomic_output
    from .plotting import require_matplotlib

    plt = require_matplotlib()
    from matplotlib.ticker import FuncFormatter

    from .mrc import eval_grid

    page = result.page_size
    curves = _all_curves(result)
    top = max(c.max_size for c in curves)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for c, d in zip(curves, doc["curves"]):
        grid = eval_grid(top, 4096)
        (line,) = ax.plot(grid * page, c.miss_ratio(grid), label=c.label, drawstyle="steps-post")
        if d["knee"]:
            ax.plot([d["knee"]["bytes"]], [d["knee"]["miss_ratio"]], "o", color=line.get_color())
    if doc.get("target_miss_ratio") is not None:
        ax.axhline(doc["target_miss_ratio"], color="grey", linestyle=":", label="target miss ratio")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _human(int(v))))
    ax.set_xlabel(f"cache size (log scale; {_human(page)} pages)")
    ax.set_ylabel("miss ratio")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"LRU miss-ratio curve: {doc['trace']['path']}", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
