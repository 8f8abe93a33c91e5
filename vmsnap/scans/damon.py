"""DAMON access records as written by ``damo record`` (json or json_compressed output).

Shape (damo's record file, also what ``damo report raw`` reads back)::

    [                                   # one record per monitored target
      {"kdamond_idx": 0, "context_idx": 0, "intervals": {...}, "scheme_idx": null,
       "target_id": 0,
       "snapshots": [                   # one per aggregation interval, in time order
         {"start_time": "1000000", "end_time": "101000000",        # ns
          "regions": [
            {"start": "4294967296", "end": "4299161600",            # bytes, [start, end)
             "nr_accesses": {"samples": 3, "percent": null},        # or a bare number
             "age": {"usec": null, "aggr_intervals": 7}}, ...],
          "total_bytes": "..."}, ...]}, ...]

``damo record`` writes it zlib-compressed by default (``--output_type
json_compressed``); plain JSON is read too. Numbers may be JSON numbers or
damo's strings, raw ("4096") or human ("4,096"; times like "1 s 500 ms").

Mapping to pages: each snapshot is one scan period. Every page a region covers
counts as accessed in that period when the region's nr_accesses (samples) is at
least ``min_accesses`` (default 1), and idle otherwise; DAMON reports one access
frequency per region, so all its pages share it. Pages are numbered densely over
the union of all regions of the chosen target (holes in a virtual address
space take no room); ``segments`` maps them back to addresses.
"""

from __future__ import annotations

import bisect
import json
import re
import zlib
from typing import Iterator

from ..errors import InputError, UsageError
from .base import Period, ScanSeries, Segment

DEFAULT_PAGE_SIZE = 4096

_TIME_UNITS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
               "h": 3600 * 10**9, "d": 86400 * 10**9}


def load_damo_json(path: str):
    """Parse a damo record file (plain or zlib-compressed JSON) into Python objects."""
    from ..sources.raw import open_input

    with open_input(path) as fh:
        try:
            data = fh.read()
        except OSError as exc:
            raise InputError(f"{path}: read failed: {exc.strerror or exc}") from None
    if data[:1] in (b"\x78",):
        try:
            data = zlib.decompress(data)
        except zlib.error as exc:
            raise InputError(f"{path}: offset 0: zlib-compressed damo record is corrupt ({exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: offset {exc.start}: not UTF-8 text, not a damo JSON record") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}") from None


def _nr(value, where: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{where}: expected a number, found {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        txt = value.replace(",", "").strip()
        if re.fullmatch(r"-?\d+", txt):
            return int(txt)
    raise InputError(f"{where}: expected an integer, found {value!r}")


def _time_ns(value, where: str) -> int:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        txt = value.replace(",", "").strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", txt):
            return int(float(txt))
        total = 0.0
        parts = txt.split()
        if parts and len(parts) % 2 == 0:
            try:
                for num, unit in zip(parts[0::2], parts[1::2]):
                    total += float(num) * _TIME_UNITS[unit]
                return int(total)
            except (ValueError, KeyError):
                pass
    raise InputError(f"{where}: expected a time in ns, found {value!r}")


def _accesses(value, where: str) -> int:
    """nr_accesses in samples; a percent-only value counts as accessed when > 0."""
    if isinstance(value, dict):
        if value.get("samples") is not None:
            return _nr(value["samples"], f"{where}.samples")
        if value.get("percent") is not None:
            pct = value["percent"]
            try:
                pct = float(str(pct).rstrip("% ").replace(",", ""))
            except ValueError:
                raise InputError(f"{where}.percent: expected a number, found {value['percent']!r}") from None
            return 1 if pct > 0 else 0
        raise InputError(f"{where}: neither samples nor percent is set")
    return _nr(value, where)


def _field(obj, key: str, where: str):
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected an object, found {type(obj).__name__}")
    if key not in obj:
        raise InputError(f"{where}: missing {key!r}")
    return obj[key]


class DamonScans(ScanSeries):
    format_name = "damon"

    def __init__(self, path: str, page_size: int = DEFAULT_PAGE_SIZE, target: int = 0,
                 min_accesses: int = 1):
        super().__init__([path], page_size)
        if min_accesses < 1:
            raise UsageError("--damon-min-accesses must be at least 1")
        doc = load_damo_json(path)
        if isinstance(doc, dict):  # {"kdamonds": ..., "record_list": [...]} (damo's DamonRecords)
            doc = doc.get("record_list", doc.get("records", doc))
        if not isinstance(doc, list):
            raise InputError(f"{path}: top level: expected a list of damo records, found {type(doc).__name__}")
        if not doc:
            raise InputError(f"{path}: top level: no records")
        if not 0 <= target < len(doc):
            raise UsageError(f"{path}: record {target} requested, the file holds {len(doc)} (0..{len(doc) - 1})")
        self.n_records = len(doc)
        self.target = target
        self.min_accesses = min_accesses
        where = f"{path}: record {target}"
        snaps = _field(doc[target], "snapshots", where)
        if not isinstance(snaps, list) or not snaps:
            raise InputError(f"{where}: 'snapshots' is not a non-empty list")
        ps = page_size
        # parse everything once: (end_time, [(first_page, end_page, accesses)])
        parsed = []
        for si, snap in enumerate(snaps):
            sw = f"{where} snapshot {si}"
            regions = _field(snap, "regions", sw)
            if not isinstance(regions, list):
                raise InputError(f"{sw}: 'regions' is not a list")
            end_time = _time_ns(_field(snap, "end_time", sw), f"{sw} end_time")
            rows = []
            for ri, reg in enumerate(regions):
                rw = f"{sw} region {ri}"
                start = _nr(_field(reg, "start", rw), f"{rw} start")
                end = _nr(_field(reg, "end", rw), f"{rw} end")
                if start < 0 or end <= start:
                    raise InputError(f"{rw}: empty or negative range [{start}, {end})")
                acc = _accesses(_field(reg, "nr_accesses", rw), f"{rw} nr_accesses")
                rows.append((start // ps, -(-end // ps), acc))
            parsed.append((end_time, rows))
        # dense page numbering over the union of all ranges
        spans = sorted((a, b) for _, rows in parsed for a, b, _ in rows)
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        segs, first = [], 0
        for a, b in merged:
            segs.append(Segment(f"damon:{a * ps:#x}", a * ps, first, b - a))
            first += b - a
        self._segments = segs
        self._seg_starts = [a for a, _ in merged]
        self._n_pages = first
        self._parsed = parsed

    @property
    def n_pages(self) -> int:
        return self._n_pages

    @property
    def n_periods(self) -> int:
        return len(self._parsed)

    @property
    def segments(self) -> list[Segment]:
        return list(self._segments)

    def _dense(self, page: int) -> int:
        k = bisect.bisect_right(self._seg_starts, page) - 1
        return self._segments[k].first_page + (page - self._seg_starts[k])

    def periods(self) -> Iterator[Period]:
        import numpy as np

        for i, (end_time, rows) in enumerate(self._parsed):
            acc = np.zeros(self._n_pages, dtype=bool)
            for a, b, n in rows:
                if n >= self.min_accesses:
                    d = self._dense(a)
                    acc[d : d + (b - a)] = True
            yield Period(i, end_time, acc)
            del acc  # one period in memory at a time: the next is made before the loop would drop it


def write_damo_json(path: str, snapshots, target_id: int = 0, compressed: bool = False) -> None:
    """Write a damo-style record file (tests, fixtures).

    `snapshots` is a list of (start_ns, end_ns, [(start, end, nr_accesses), ...]).
    Numbers are written the way ``damo record`` writes them (raw strings).
    """
    from ..atomic import atomic_output

    rec = {
        "kdamond_idx": 0, "context_idx": 0,
        "intervals": {"sample_us": "5000", "aggr_us": "100000", "ops_update_us": "1000000"},
        "scheme_idx": None, "target_id": target_id, "scheme_filters": [],
        "snapshots": [
            {"start_time": str(s), "end_time": str(e),
             "regions": [{"start": str(a), "end": str(b),
                          "nr_accesses": {"samples": n, "percent": None},
                          "age": {"usec": None, "aggr_intervals": 0},
                          "sz_filter_passed": "0"} for a, b, n in regs],
             "total_bytes": str(sum(b - a for a, b, _ in regs))}
            for s, e, regs in snapshots
        ],
    }
    data = json.dumps([rec], indent=4).encode()
    if compressed:
        data = zlib.compress(data)
    with atomic_output(path) as fh:
        fh.write(data)


__all__ = ["DamonScans", "load_damo_json", "write_damo_json"]
