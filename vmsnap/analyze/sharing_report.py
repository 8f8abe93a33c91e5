"""Text and CSV renderings of `vmsnap analyze sharing` results (JSON needs none of this)."""

from __future__ import annotations

import csv
import io
import os

from ..report import human_bytes
from .sharing import PATTERN_KINDS

CSV_COLUMNS = ["row", "path", "format", "pages", "zero_pages", "pattern_pages",
               *[f"pattern_{k}" for k in PATTERN_KINDS], "sparse_pages", "other_pages", "distinct_contents",
               "pages_shared", "pages_sharing", "pages_unshared", "bytes_saved", "percent_saved"]


def format_csv(r: dict) -> str:
    """One row per dump, then the fleet under the policy and with everything shared everywhere."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for d in r["dumps"]:
        w.writerow([d["index"], d["path"], d["format"], d["pages"], d["zero_pages"], d["pattern_pages"],
                    *[d["pattern_kinds"][k] for k in PATTERN_KINDS], d["sparse_pages"], d["other_pages"],
                    d["distinct_contents"], d["pages_shared"], d["pages_sharing"], d["pages_unshared"],
                    d["bytes_saved"], d["percent_saved"]])
    f = r["fleet"]
    kinds = {k: sum(d["pattern_kinds"][k] for d in r["dumps"]) for k in PATTERN_KINDS}
    for name in ("policy", "everywhere"):
        t = f[name]
        w.writerow([f"fleet:{name}", "", "", f["pages"], f["zero_pages"], f["pattern_pages"],
                    *[kinds[k] for k in PATTERN_KINDS], f["sparse_pages"], f["other_pages"],
                    f["distinct_contents"], t["pages_shared"], t["pages_sharing"], t["pages_unshared"],
                    t["bytes_saved"], t["percent_saved"]])
    return out.getvalue().rstrip("\n")


def format_text(r: dict) -> str:
    ps = r["page_size"]
    names = [_short(d["path"]) for d in r["dumps"]]
    width = max([len(n) for n in names] + [10])
    head = (f"{'#':>3} {'dump':<{width}} {'pages':>10} {'zero':>10} {'pattern':>9} {'sparse':>9} {'other':>10} "
            f"{'distinct':>10} {'shared':>9} {'sharing':>9} {'unshared':>10} {'saved':>10} {'%':>6}")
    lines = [f"page sharing, page size {ps}: zero and pattern pages shared within their VM, "
             "sparse and other pages across VMs", "", head]
    for d, name in zip(r["dumps"], names):
        lines.append(f"{d['index']:>3} {name:<{width}} {d['pages']:>10} {d['zero_pages']:>10} "
                     f"{d['pattern_pages']:>9} {d['sparse_pages']:>9} {d['other_pages']:>10} "
                     f"{d['distinct_contents']:>10} {d['pages_shared']:>9} {d['pages_sharing']:>9} "
                     f"{d['pages_unshared']:>10} {human_bytes(d['bytes_saved']):>10} {d['percent_saved']:>6.1f}")
    pats = [f"#{d['index']} " + ", ".join(f"{k} {v}" for k, v in d["pattern_kinds"].items() if v)
            for d in r["dumps"] if d["pattern_pages"]]
    if pats:
        lines += ["", "pattern pages by kind:"] + [f"  {p}" for p in pats]
    f = r["fleet"]
    pol, every = f["policy"], f["everywhere"]
    lines += [
        "",
        f"fleet: {f['dumps']} dumps, {f['pages']} pages ({human_bytes(f['pages'] * ps)}), "
        f"{f['distinct_contents']} distinct contents, {f['zero_pages']} zero pages",
        f"  within each VM only   saves {human_bytes(f['within_vms']['bytes_saved']):>10} "
        f"(pages_sharing {f['within_vms']['pages_sharing']} + zero pages)",
        f"  policy                saves {human_bytes(pol['bytes_saved']):>10} ({pol['percent_saved']:.1f}%): "
        f"pages_shared {pol['pages_shared']}, pages_sharing {pol['pages_sharing']}, "
        f"pages_unshared {pol['pages_unshared']}",
        f"  sharing everything    saves {human_bytes(every['bytes_saved']):>10} ({every['percent_saved']:.1f}%): "
        f"{f['difference']['pages']} pages ({human_bytes(f['difference']['bytes'])}) more than the policy",
        f"  across VMs: {f['cross_vm']['contents']} contents in 2+ dumps, {f['cross_vm']['pages']} pages, "
        f"saving {f['cross_vm']['pages_saved']} pages ({human_bytes(f['cross_vm']['bytes_saved'])}) "
        "beyond sharing within each VM",
    ]
    n = len(r["dumps"])
    if n > 1:
        cell = max(6, max(len(str(v)) for row in r["matrix"] for v in row) + 1)
        lines += ["", "contents shared between dumps (diagonal: the dump's distinct sparse/other contents):",
                  "    " + "".join(f"{j:>{cell}}" for j in range(n))]
        for i, row in enumerate(r["matrix"]):
            lines.append(f"{i:>3} " + "".join(f"{v:>{cell}}" for v in row))
    if r["top"]:
        lines += ["", "top shared contents:", f"  {'digest':<32} {'pages':>9}  {'class':<16} dumps (pages)"]
        for t in r["top"]:
            cls = f"pattern/{t['pattern']}" if t["pattern"] else t["class"]
            where = ", ".join(f"#{w['dump']} ({w['pages']})" for w in t["dumps"][:8])
            if len(t["dumps"]) > 8:
                where += f", ... {len(t['dumps'])} dumps"
            lines.append(f"  {t['digest']:<32} {t['pages']:>9}  {cls:<16} {where}")
    return "\n".join(lines)


def _short(path: str) -> str:
    return "stdin" if path == "-" else os.path.basename(path) or path
