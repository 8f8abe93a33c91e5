"""Fuzz the scan-series readers (vmsnap.scans): the vmsnap series file, DAMON damo record
JSON (plain or zlib), Linux idle-page bitmaps, and the format detection. Every input is read as
every format; any error but vmsnap's own is a finding, and so is a period whose bitmap does not
cover the series' pages. Seeds are written by vmsnap's own writers."""

from __future__ import annotations

import os

import harness
from harness import FAILED, attempt

with harness.instrumented():
    import numpy as np

    from vmsnap.scans import open_scans
    from vmsnap.scans.damon import DamonScans, write_damo_json
    from vmsnap.scans.idle import IdleBitmapScans, write_idle_bitmap
    from vmsnap.scans.series import SeriesScans, SeriesWriter

# An analysis checks that its per-page state fits in memory before it reads a period
# (hotcold._check_memory); a fuzz run stops at this many pages instead.
MAX_PAGES = 1 << 22


def seeds() -> dict[str, bytes]:
    d = harness.scratch()
    accessed = np.array([True, False, True, True] * 20 + [False] * 3)
    with SeriesWriter(os.path.join(d, "seed.vmscan"), 4096, len(accessed), base=0x100000) as w:
        w.add(accessed, 1000)
        w.add(~accessed)
        w.add(accessed, 3000)
    snapshots = [(0, 10**8, [(0x1000, 0x5000, 3), (0x9000, 0xA000, 0)]),
                 (10**8, 2 * 10**8, [(0x1000, 0x3000, 0), (0x3000, 0xA000, 7)])]
    write_damo_json(os.path.join(d, "seed.damon"), snapshots)
    write_damo_json(os.path.join(d, "seed.damon.z"), snapshots, compressed=True)
    write_idle_bitmap(os.path.join(d, "seed.idle"), accessed)
    out = {}
    for name in ("seed.vmscan", "seed.damon", "seed.damon.z", "seed.idle"):
        with open(os.path.join(d, name), "rb") as fh:
            out[name[5:]] = fh.read()
        os.unlink(os.path.join(d, name))
    return out


def periods(series) -> None:
    with series:
        if series.n_pages > MAX_PAGES:
            return
        for i, period in enumerate(series.periods()):
            if period.index != i or period.accessed.shape != (series.n_pages,) or period.accessed.dtype != bool:
                raise AssertionError(f"period {i}: index {period.index}, bitmap {period.accessed.shape} "
                                     f"{period.accessed.dtype}, series of {series.n_pages} pages")


def test_one_input(data: bytes) -> None:
    path = harness.write("scan", data)
    for open_series in (lambda: SeriesScans(path), lambda: DamonScans(path), lambda: IdleBitmapScans([path]),
                        lambda: IdleBitmapScans([path, path], page_size=512), lambda: open_scans([path])):
        series = attempt(open_series)
        if series is not FAILED:
            attempt(periods, series)


if __name__ == "__main__":
    harness.main(test_one_input, seeds)
