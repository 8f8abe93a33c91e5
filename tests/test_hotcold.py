"""hot/cold state machine (properties, reference model) and the analysis over every scan format."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _hotcold_build import (PS, classic_workload, damon_snapshots, expected_levels, write_dumps,
                            write_idle_dir)
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vmsnap.analyze import hotcold as hc
from vmsnap.errors import FormatError, IntegrityError, UnsupportedVersionError, UsageError
from vmsnap.scans import open_scans
from vmsnap.scans.damon import write_damo_json
from vmsnap.scans.series import SeriesWriter

def _params(demote_after):
    return st.builds(
        lambda L, n, k: hc.HotColdParams(L, n, k if k is None else min(k, L)),
        st.one_of(st.integers(2, 8), st.integers(240, 250)),  # 250 + promote_by must not wrap the uint8 level
        demote_after, st.one_of(st.none(), st.integers(1, 8), st.integers(200, 250)))


params_st = _params(st.one_of(st.integers(1, 5), st.just(65535)))  # 65535: the uint16 idle count's top
short_demotion_params_st = _params(st.integers(1, 5))  # for tests that idle a page through k windows
matrix_st = st.integers(1, 12).flatmap(
    lambda p: st.integers(1, 40).flatmap(lambda n: arrays(bool, (p, n)))
)


def run_machine(acc, params):
    m = hc.LevelMachine(acc.shape[1], params)
    history = []
    for row in acc:
        m.step(row)
        history.append(m.level.copy())
    return history


@settings(max_examples=200, deadline=None)
@given(acc=matrix_st, params=params_st)
def test_matches_scalar_reference(acc, params):
    p = params.checked()
    got = run_machine(acc, p)[-1]
    np.testing.assert_array_equal(got, expected_levels(acc, p.levels, p.demote_after, p.promote_by))


@settings(max_examples=100, deadline=None)
@given(acc=matrix_st, params=params_st, chunk=st.integers(1, 9))
def test_matches_scalar_reference_chunk_by_chunk(acc, params, chunk):
    # A period is applied a chunk of pages at a time; pages on both sides of a chunk's edge.
    from unittest import mock

    p = params.checked()
    with mock.patch.object(hc.LevelMachine, "CHUNK", chunk):
        m = hc.LevelMachine(acc.shape[1], p)
        for row in acc:
            m.step(row)
        counts = m.counts().tolist()
    np.testing.assert_array_equal(m.level, expected_levels(acc, p.levels, p.demote_after, p.promote_by))
    assert counts == np.bincount(m.level, minlength=p.levels + 1).tolist()


def test_the_idle_count_reaches_demote_after_65535():
    # Hypothesis's few periods never bring the idle count near its uint16 top.
    m = hc.LevelMachine(3, hc.HotColdParams(levels=4, demote_after=65535))
    m.level[:] = [4, 1, 2]
    m.idle[:] = 65533
    m.step(np.array([False, False, True]))
    assert m.level.tolist() == [4, 1, 4] and m.idle.tolist() == [65534, 65534, 0]
    m.step(np.zeros(3, dtype=bool))  # the 65535th idle scan costs a level, and the count starts again
    assert m.level.tolist() == [3, 1, 4] and m.idle.tolist() == [0, 0, 1]


@settings(max_examples=100, deadline=None)
@given(periods=st.integers(1, 30), params=params_st)
def test_page_accessed_every_period_is_hottest(periods, params):
    p = params.checked()
    acc = np.ones((periods, 3), dtype=bool)
    history = run_machine(acc, p)
    for t, lv in enumerate(history):
        # a page gains promote_by per access and never loses while accessed
        assert (lv == min(p.levels, (t + 1) * p.promote_by)).all()
    if periods * p.promote_by >= p.levels:
        assert (history[-1] == p.levels).all()


@settings(max_examples=150, deadline=None)
@given(acc=matrix_st, params=short_demotion_params_st, k=st.integers(0, 6))
def test_idle_for_k_demotion_windows_bounds_level(acc, params, k):
    """After its last access a page idle for k*demote_after scans is at level <= max(1, L - k)."""
    p = params.checked()
    idle_tail = np.zeros((k * p.demote_after, acc.shape[1]), dtype=bool)
    acc2 = np.vstack([acc, idle_tail])
    final = run_machine(acc2, p)[-1]
    seen = acc.any(axis=0)
    assert (final[seen] <= max(1, p.levels - k)).all()
    assert (final[seen] >= 1).all()  # once seen, never back to "never"
    assert (final[~seen] == 0).all()
    if p.promote_by == p.levels:  # recency mode: exactly L - k for a page accessed last in acc
        last = acc[-1]
        assert (final[last] == max(1, p.levels - k)).all()


@settings(max_examples=100, deadline=None)
@given(acc=matrix_st, params=params_st)
def test_levels_monotone_in_accesses(acc, params):
    """Adding accesses never makes any page colder."""
    p = params.checked()
    more = acc.copy()
    more[::2] = True
    assert (run_machine(more, p)[-1] >= run_machine(acc, p)[-1]).all()


@pytest.mark.parametrize("bad", [dict(levels=1), dict(levels=251), dict(demote_after=0),
                                 dict(demote_after=70000), dict(levels=4, promote_by=5),
                                 dict(promote_by=0)])
def test_bad_params(bad):
    with pytest.raises(UsageError):
        hc.HotColdParams(**bad).checked()


def test_level_names():
    assert hc.level_names(4) == ["never", "cold", "cool", "warm", "hot"]
    assert hc.level_names(2) == ["never", "cold", "hot"]
    assert hc.level_names(6) == ["never", "cold", "l2", "l3", "l4", "l5", "hot"]


# ------------------------------------------------ every format, one workload, one answer


def _inputs(tmp_path, acc):
    """Write `acc` in every scan format; yield (format, paths, kwargs)."""
    (tmp_path / "dumps").mkdir()
    yield "dumps", write_dumps(tmp_path / "dumps", acc), {}
    idle = write_idle_dir(tmp_path / "idle", acc)
    yield "idle", [idle], {}
    dam = tmp_path / "damon.data"
    write_damo_json(str(dam), damon_snapshots(acc), compressed=True)
    yield "damon", [str(dam)], {}
    ser = tmp_path / "s.vmscan"
    with SeriesWriter(str(ser), PS, acc.shape[1]) as w:
        for row in acc:
            w.add(row)
    yield "series", [str(ser)], {}


def test_classes_known_by_construction_in_every_format(tmp_path):
    acc, groups = classic_workload(n_pages=64, periods=6)
    for fmt, paths, kw in _inputs(tmp_path, acc):
        with open_scans(paths, **kw) as s:
            assert s.format_name == fmt
            res = hc.analyze(s, hc.HotColdParams(levels=4, demote_after=1))
        lv = res.levels[:64]  # idle bitmaps round up to whole words; the rest is never accessed
        names = res.names
        by_group = {g: set(names[x] for x in lv[groups == g]) for g in range(5)}
        assert by_group == {0: {"hot"}, 1: {"warm"}, 2: {"cool"}, 3: {"cold"}, 4: {"never"}}, fmt
        assert not res.levels[64:].any()
        final = res.class_counts[-1]
        assert final[4] == (groups == 0).sum() and final[0] == res.n_pages - (groups != 4).sum()
        assert res.accessed == [int(r.sum()) for r in acc], fmt


def test_slow_demotion_keeps_warm_pages_hot(tmp_path):
    """demote_after=3: two idle scans are not enough to leave "hot"."""
    acc, groups = classic_workload(n_pages=20, periods=6)
    paths = write_dumps(tmp_path, acc)
    with open_scans(paths) as s:
        res = hc.analyze(s, hc.HotColdParams(levels=4, demote_after=3))
    np.testing.assert_array_equal(res.levels, expected_levels(acc, 4, 3))
    assert set(res.levels[(groups == 1) | (groups == 2)]) == {4}
    # cold pages: accessed in period 0, idle for 5 scans -> one demotion (after 3)
    assert set(res.levels[groups == 3]) == {3}


def test_counter_mode_separates_frequency(tmp_path):
    """promote_by=1: a page accessed once is cold, one accessed in every period reaches hot."""
    acc = np.zeros((5, 3), dtype=bool)
    acc[:, 0] = True
    acc[4, 1] = True
    with open_scans(write_dumps(tmp_path, acc)) as s:
        res = hc.analyze(s, hc.HotColdParams(levels=4, demote_after=2, promote_by=1))
    assert res.levels.tolist() == [4, 1, 0]


def test_summary_and_csv_agree(tmp_path):
    acc, _ = classic_workload(n_pages=40, periods=7)
    with open_scans(write_dumps(tmp_path, acc)) as s:
        res = hc.analyze(s)
    doc = hc.summary(res)
    assert doc["periods"] == 7 and doc["pages"] == 40 and doc["page_size"] == PS
    wss = sorted(int(r.sum()) * PS for r in acc)
    # damo's pick among the seven sorted sizes: int(p% of 7), the last for 100
    assert doc["wss"]["percentiles"] == {"0": wss[0], "25": wss[1], "50": wss[3], "75": wss[5], "100": wss[6]}
    assert doc["wss"]["mean_bytes"] == pytest.approx(sum(wss) / 7)
    assert sum(doc["final"]["pages"].values()) == 40
    assert doc["final"]["bytes"] == {k: v * PS for k, v in doc["final"]["pages"].items()}
    assert doc["final"]["touched_pages"] == int(acc.any(axis=0).sum())
    lines = hc.csv_text(res).splitlines()
    assert lines[0] == "period,timestamp_ns,accessed_pages,wss_bytes,never,cold,cool,warm,hot"
    assert len(lines) == 8
    for line, row in zip(lines[1:], doc["per_period"]):
        f = line.split(",")
        assert int(f[0]) == row["period"] and int(f[2]) == row["accessed_pages"]
        assert int(f[3]) == row["wss_bytes"] and int(f[1]) == row["timestamp_ns"]
        assert [int(x) for x in f[4:]] == list(row["classes"].values())
    assert "hot" in hc.text_report(res)


@pytest.mark.parametrize("fmt,extra", [("series", None), ("idle", None), ("series", "heatmap"),
                                       ("idle", "save_series")])
def test_peak_memory_is_the_state_and_one_period(tmp_path, fmt, extra):
    # Masked updates and a whole-array bincount held 12-14 bytes a page at a period's peak
    # (1.6 GiB for 128M pages); the state is 3 bytes and a period's flags 1 and 1/8.
    import tracemalloc

    from vmsnap.scans.idle import write_idle_bitmap

    n = 1 << 21
    rng = np.random.default_rng(3)
    rows = [rng.random(n) < 0.3 for _ in range(4)]
    if fmt == "series":
        paths = [str(tmp_path / "s.vmscan")]
        with SeriesWriter(paths[0], PS, n) as w:
            for row in rows:
                w.add(row)
    else:
        paths = [str(tmp_path / f"idle{i}") for i in range(4)]
        for path, row in zip(paths, rows):
            write_idle_bitmap(path, row)
    with open_scans(paths, fmt) as series:  # imports done outside the measure
        series.n_pages
    tracemalloc.start()
    try:
        if extra == "save_series":  # the periods pass through a writer first
            res = hc.hotcold(paths, fmt, series_out=str(tmp_path / "copy.vmscan"), progress=False)
        else:
            with open_scans(paths, fmt) as series:
                res = hc.analyze(series, heatmap_bins=256 if extra == "heatmap" else None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res.accessed == [int(r.sum()) for r in rows]
    assert peak < 5 * n, peak / n  # "about 5 bytes a page", vmsnap-analyze-hotcold(1)
    assert peak < hc.STATE_BYTES_PER_PAGE * n  # the up-front memory check counts no less


@settings(max_examples=200, deadline=None)
@given(acc=arrays(bool, st.integers(1, 300)), bins=st.integers(1, 300), chunk=st.integers(1, 70))
def test_accessed_per_bin_chunk_by_chunk_is_reduceat(acc, bins, chunk):
    edges = (np.arange(min(bins, acc.size), dtype=np.int64) * acc.size) // min(bins, acc.size)
    assert hc.accessed_per_bin(acc, edges, chunk).tolist() == np.add.reduceat(acc, edges, dtype=np.int64).tolist()


def test_heatmap_is_fraction_accessed_per_bin(tmp_path):
    rng = np.random.default_rng(11)
    acc = rng.random((5, 100)) < 0.3
    with open_scans(write_dumps(tmp_path, acc)) as s:
        res = hc.analyze(s, heatmap_bins=7)
    edges = np.append(res.heatmap_edges, 100)
    assert res.heatmap.shape == (7, 5)
    for b in range(7):
        for t in range(5):
            assert res.heatmap[b, t] == pytest.approx(acc[t, edges[b] : edges[b + 1]].mean())


def test_empty_series_is_an_error(tmp_path):
    ser = tmp_path / "empty.vmscan"
    with SeriesWriter(str(ser), PS, 10):
        pass
    with open_scans([str(ser)]) as s, pytest.raises(FormatError, match="no scan periods"):
        hc.analyze(s)


# ------------------------------------------------ levels file


@pytest.fixture
def levels_file(tmp_path):
    acc, groups = classic_workload(n_pages=30, periods=6)
    with open_scans(write_dumps(tmp_path, acc)) as s:
        res = hc.analyze(s, hc.HotColdParams(levels=4, demote_after=1))
    path = tmp_path / "levels.bin"
    hc.write_levels(str(path), res)
    return path, res, groups


def test_levels_file_round_trip_and_layout(levels_file):
    path, res, groups = levels_file
    data = path.read_bytes()
    assert len(data) == 48 + 24 + 30 + 16
    assert data[:8] == b"VMSNAPHC"
    assert int.from_bytes(data[8:10], "little") == 1
    assert data[10] == 4 and data[11] == 4
    assert int.from_bytes(data[12:16], "little") == PS
    assert int.from_bytes(data[16:24], "little") == 30
    assert int.from_bytes(data[24:28], "little") == 6
    assert data[72:102] == res.levels.tobytes()  # one byte per page after 48 + 24
    lf = hc.read_levels(str(path))
    np.testing.assert_array_equal(lf.levels, res.levels)
    assert (lf.n_levels, lf.page_size, lf.periods, lf.demote_after) == (4, PS, 6, 1)
    assert [(s.base, s.first_page, s.n_pages) for s in lf.segments] == [(0, 0, 30)]
    order = lf.hot_first()
    lv = lf.levels[order]
    assert (np.diff(lv.astype(int)) <= 0).all()  # hottest first
    assert set(order[: (groups == 0).sum()]) == set(np.flatnonzero(groups == 0))


def test_levels_file_every_flipped_byte_is_an_error(levels_file, tmp_path):
    path, _, _ = levels_file
    data = path.read_bytes()
    bad = tmp_path / "bad.bin"
    for off in range(len(data)):
        m = bytearray(data)
        m[off] ^= 0x21
        bad.write_bytes(bytes(m))
        with pytest.raises((FormatError, IntegrityError, UnsupportedVersionError)) as ei:
            hc.read_levels(str(bad))
        assert "offset" in str(ei.value)
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        with pytest.raises((FormatError, IntegrityError)):
            hc.read_levels(str(bad))


def test_levels_file_with_a_level_above_its_count_is_refused(levels_file, tmp_path):
    # Consistent digests, a lying body (a damaged writer or a hostile one): level 9 of 4.
    import blake3

    path, _, _ = levels_file
    data = bytearray(path.read_bytes())
    data[72 + 5] = 9  # page 5's level, after the 48-byte header and one 24-byte segment
    data[-16:] = blake3.blake3(bytes(data[:-16])).digest(16)
    bad = tmp_path / "lying.bin"
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="offset 77: level 9 above 4"):
        hc.read_levels(str(bad))


def test_outputs_written_atomically_with_normal_mode(levels_file):
    path, _, _ = levels_file
    mode = os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    assert [n for n in os.listdir(path.parent) if n.endswith(".tmp")] == []
