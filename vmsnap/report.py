"""Text renderings of results for the terminal (JSON output needs none of this)."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def format_info(s: dict) -> str:
    total_pages = sum(s["pages"].values()) or 1
    lines = [
        f"file         {s['file']}",
        f"source       {s['source']}",
        f"format       vms version {s['format_version']}, page size {s['page_size']}",
        f"image        {human_bytes(s['image_bytes'])} ({s['image_bytes']} bytes)",
        f"snapshot     {human_bytes(s['snapshot_bytes'])} ({s['compression_ratio']:.1f}x smaller)",
        "",
        f"{'pages':<12} {'count':>12} {'bytes':>14} {'share':>7}  stored as",
    ]
    stored_as = {"zero": "record only", "pattern": f"record + {s['patterns']} pattern units",
                 "sparse": "record + non-zero words", "data": "zstd frames (canonical copies)",
                 "ref": "reference to a data page", "slice": "offset into the stored data (512-byte aligned copy)"}
    for kind, count in s["pages"].items():
        lines.append(f"{kind:<12} {count:>12} {human_bytes(s['image_bytes_by_kind'][kind]):>14} "
                     f"{100 * count / total_pages:>6.1f}%  {stored_as[kind]}")
    if s["pattern_pages"]:
        lines.append("patterns     " + ", ".join(f"{k} {v}" for k, v in sorted(s["pattern_pages"].items())))
    lines += [
        f"sharing      pages_shared {s['pages_shared']}, pages_sharing {s['pages_sharing']}",
        "",
        f"stored       data frames {human_bytes(s['stored_bytes']['data_frames'])} in {_count(s['frames'], 'frame')}, "
        f"index {human_bytes(s['stored_bytes']['index'])}",
        f"digest       {s['image_digest']}",
        "",
    ]
    width = max([16] + [len(r["name"]) for r in s["regions"]])  # QEMU's names run long: /rom@etc/acpi/tables
    lines.append(f"{'region':<{width}} {'base':>18} {'size':>14}  digest")
    for r in s["regions"]:
        lines.append(f"{r['name']:<{width}} {r['base']:#18x} {r['size']:>14}  {r['digest'][:16]}...")
    if s.get("attachments"):
        width = max([24] + [len(a["name"]) for a in s["attachments"]])
        lines += ["", f"{'attachment':<{width}} {'size':>14} {'stored':>14}  digest"]
        for a in s["attachments"]:
            lines.append(f"{a['name']:<{width}} {a['size']:>14} {a['stored']:>14}  {a['digest'][:16]}...")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
