"""DAMON `damo record` JSON: regions to pages, damo's number styles, malformed records."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from _hotcold_build import PS, classic_workload, damon_snapshots

from vmsnap.errors import InputError, UsageError
from vmsnap.scans import open_scans
from vmsnap.scans.damon import write_damo_json


@pytest.mark.parametrize("compressed", [False, True])
def test_per_page_regions_round_trip(tmp_path, compressed):
    acc, _ = classic_workload(n_pages=30, periods=5)
    path = tmp_path / "damon.data"
    write_damo_json(str(path), damon_snapshots(acc), compressed=compressed)
    with open_scans([str(path)]) as s:
        assert s.format_name == "damon"
        assert s.n_pages == 30
        got = [(p.timestamp_ns, p.accessed.copy()) for p in s.periods()]
    assert [g[0] for g in got] == [(t + 1) * 100_000_000 for t in range(5)]
    np.testing.assert_array_equal(np.stack([g[1] for g in got]), acc)


def test_region_covers_all_its_pages_and_holes_take_no_room(tmp_path):
    """Two areas far apart (a heap and a stack): dense page numbers, segments map back."""
    heap, stack = 0x5555_0000_0000, 0x7FFF_F000_0000
    snaps = [
        (0, 10, [(heap, heap + 4 * PS, 3), (heap + 4 * PS, heap + 10 * PS, 0), (stack, stack + 2 * PS, 1)]),
        (10, 20, [(heap, heap + 6 * PS, 0), (heap + 6 * PS, heap + 10 * PS, 9), (stack, stack + 2 * PS, 0)]),
    ]
    path = tmp_path / "r.json"
    write_damo_json(str(path), snaps)
    with open_scans([str(path)], "damon") as s:
        assert s.n_pages == 12
        segs = [(g.base, g.first_page, g.n_pages) for g in s.segments]
        assert segs == [(heap, 0, 10), (stack, 10, 2)]
        p0, p1 = [p.accessed.copy() for p in s.periods()]
    assert np.flatnonzero(p0).tolist() == [0, 1, 2, 3, 10, 11]
    assert np.flatnonzero(p1).tolist() == [6, 7, 8, 9]


def test_min_accesses_threshold(tmp_path):
    snaps = [(0, 1, [(0, PS, 1), (PS, 2 * PS, 2), (2 * PS, 3 * PS, 3)])]
    path = tmp_path / "t.json"
    write_damo_json(str(path), snaps)
    with open_scans([str(path)], damon_min_accesses=2) as s:
        (p,) = list(s.periods())
    assert p.accessed.tolist() == [False, True, True]


def test_human_numbers_and_older_shapes(tmp_path):
    """damo without --raw_number writes "4,096" and "1 s 500 ms"; older damo wrote bare numbers."""
    doc = [{
        "target_id": 0,
        "snapshots": [
            {"start_time": "0 ns", "end_time": "1 s 500 ms",
             "regions": [{"start": "4,096", "end": "12,288", "nr_accesses": 2, "age": 1},
                         {"start": 12288, "end": 16384, "nr_accesses": {"samples": None, "percent": 5}}]},
        ],
    }]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(doc))
    with open_scans([str(path)]) as s:
        (p,) = list(s.periods())
        assert s.segments[0].base == 4096
    assert p.timestamp_ns == 1_500_000_000
    assert p.accessed.tolist() == [True, True, True]


def test_second_target(tmp_path):
    rec = lambda tid, n: {"target_id": tid, "snapshots": [  # noqa: E731
        {"start_time": 0, "end_time": 1, "regions": [{"start": 0, "end": n * PS, "nr_accesses": 1}]}]}
    path = tmp_path / "two.json"
    path.write_text(json.dumps([rec(0, 2), rec(1, 5)]))
    with open_scans([str(path)], damon_target=1) as s:
        assert s.n_pages == 5
    with pytest.raises(UsageError, match="record 2 requested, the file holds 2"):
        open_scans([str(path)], damon_target=2)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"snapshots": [}]', r"line 1 column 17: not valid JSON"),
        ('[\n{"snapshots": [\n{"end_time": 1, "regions": [{"start": 0, "end": 4096}]}]}]',
         r"record 0 snapshot 0 region 0: missing 'nr_accesses'"),
        ('[{"snapshots": [{"end_time": 1, "regions": [{"start": 8192, "end": 4096, "nr_accesses": 1}]}]}]',
         r"region 0: empty or negative range"),
        ('[{"snapshots": [{"end_time": 1, "regions": [{"start": "x", "end": 4096, "nr_accesses": 1}]}]}]',
         r"region 0 start: expected an integer, found 'x'"),
        ('[{"snapshots": [{"end_time": "soon", "regions": []}]}]', r"snapshot 0 end_time: expected a time"),
        ('[{"snapshots": []}]', r"'snapshots' is not a non-empty list"),
        ('{"kdamonds": []}', r"top level: expected a list"),
        ("[]", r"top level: no records"),
        ('[{"snapshots": [{"end_time": 1, "regions": [{"start": 0, "end": 4096, "nr_accesses": {}}]}]}]',
         r"neither samples nor percent"),
    ],
)
def test_malformed(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        open_scans([str(path)], "damon")


def test_corrupt_compressed(tmp_path):
    data = bytearray(zlib.compress(b'[{"snapshots": []}]' * 20))
    data[10] ^= 0xFF
    path = tmp_path / "bad.data"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="zlib-compressed damo record is corrupt"):
        open_scans([str(path)], "damon")


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.json"
    path.write_bytes(b"[\xff\xfe]")
    with pytest.raises(InputError, match="offset 1: not UTF-8"):
        open_scans([str(path)], "damon")


@pytest.mark.parametrize("file_type", ["json", "json_compressed"])
def test_reads_files_written_by_damo_itself(tmp_path, file_type):
    """Interop: records built with damo's own classes and written by damo's own writer
    (the code path `damo record` uses to save), in both of its JSON output types."""
    import damo.damo  # noqa: F401  (puts damo's flat modules on sys.path)
    import _damo_records
    import _damon

    rng = np.random.default_rng(4)
    acc = rng.random((4, 12)) < 0.5
    base = 0x7F00_0000_0000
    rec = _damo_records.DamonRecord(0, 0, _damon.DamonIntervals(5000, 100000, 1000000), None, 0, [])
    for t in range(acc.shape[0]):
        regions = []
        p = 0
        while p < acc.shape[1]:  # runs of equal state become one region, as DAMON merges them
            q = p
            while q < acc.shape[1] and acc[t, q] == acc[t, p]:
                q += 1
            regions.append(_damon.DamonRegion(base + p * PS, base + q * PS, 7 if acc[t, p] else 0,
                                              _damon.unit_samples, t, _damon.unit_aggr_intervals))
            p = q
        rec.snapshots.append(_damo_records.DamonSnapshot(t * 10**8, (t + 1) * 10**8, regions, None))
    path = tmp_path / "damon.data"
    assert _damo_records.write_damon_records([rec], str(path), file_type) is None
    with open_scans([str(path)]) as s:
        assert s.format_name == "damon"
        assert [(g.base, g.n_pages) for g in s.segments] == [(base, 12)]
        got = [(p.timestamp_ns, p.accessed.copy()) for p in s.periods()]
    assert [g[0] for g in got] == [(t + 1) * 10**8 for t in range(4)]
    np.testing.assert_array_equal(np.stack([g[1] for g in got]), acc)


def test_record_list_wrapper(tmp_path):
    doc = {"kdamonds": [], "record_list": [{"target_id": 0, "snapshots": [
        {"start_time": 0, "end_time": 5, "regions": [{"start": 0, "end": 2 * PS, "nr_accesses": 1}]}]}]}
    path = tmp_path / "w.json"
    path.write_text(json.dumps(doc))
    with open_scans([str(path)]) as s:
        (p,) = list(s.periods())
    assert p.accessed.tolist() == [True, True]
