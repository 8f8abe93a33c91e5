"""The vmsnap accessed-bitmap series file: round trips, layout, corruption, interrupted writes."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnap.errors import FormatError, IntegrityError, UnsupportedVersionError, UsageError, VmsnapError
from vmsnap.scans import open_scans, structs as S
from vmsnap.scans.series import SeriesScans, SeriesWriter


def _write(path, bitmaps, page_size=4096, base=0, stamps=None):
    with SeriesWriter(str(path), page_size, bitmaps.shape[1], base) as w:
        for i, b in enumerate(bitmaps):
            w.add(b, None if stamps is None else stamps[i])


def _read(path):
    with SeriesScans(str(path)) as s:
        return s, [(p.index, p.timestamp_ns, p.accessed.copy()) for p in s.periods()]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_pages=st.integers(1, 300),
    periods=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
    page_shift=st.integers(9, 21),
    base=st.integers(0, 2**64 - 1),
    with_time=st.booleans(),
)
def test_round_trip(tmp_path, n_pages, periods, seed, page_shift, base, with_time):
    rng = np.random.default_rng(seed)
    bitmaps = rng.random((periods, n_pages)) < rng.random()
    stamps = [int(x) for x in rng.integers(0, 2**62, periods)] if with_time else None
    path = tmp_path / f"s{seed}.vmscan"
    _write(path, bitmaps, 1 << page_shift, base, stamps)
    assert os.path.getsize(path) == S.HEADER_SIZE + periods * S.period_size(n_pages) + S.TRAILER_SIZE
    s, got = _read(path)
    assert (s.page_size, s.n_pages, s.base, s.n_periods) == (1 << page_shift, n_pages, base, periods)
    assert [g[0] for g in got] == list(range(periods))
    assert [g[1] for g in got] == (stamps if with_time else [None] * periods)
    for (_, _, a), b in zip(got, bitmaps):
        np.testing.assert_array_equal(a, b)


def test_layout_bits_lsb_first(tmp_path):
    """Bit i%8 of byte i//8 is page i: check the bytes on disk against the documented layout."""
    acc = np.zeros(20, dtype=bool)
    acc[[0, 9, 19]] = True
    path = tmp_path / "l.vmscan"
    _write(path, acc[None, :], stamps=[123])
    data = path.read_bytes()
    assert data[:8] == S.MAGIC
    head = S.PeriodHead.parse(data[S.HEADER_SIZE : S.HEADER_SIZE + S.PERIOD_HEAD_SIZE])
    assert (head.index, head.timestamp_ns, head.n_accessed) == (0, 123, 3)
    bm = data[S.HEADER_SIZE + S.PERIOD_HEAD_SIZE : S.HEADER_SIZE + S.PERIOD_HEAD_SIZE + 3]
    expect = bytearray(3)
    for i in (0, 9, 19):
        expect[i // 8] |= 1 << (i % 8)
    assert bm == bytes(expect)


@pytest.fixture
def small_series(tmp_path):
    rng = np.random.default_rng(7)
    bitmaps = rng.random((3, 21)) < 0.4
    path = tmp_path / "c.vmscan"
    _write(path, bitmaps, stamps=[10, 20, 30])
    return path, bitmaps


def test_every_flipped_byte_is_an_error(small_series, tmp_path):
    path, _ = small_series
    data = path.read_bytes()
    bad = tmp_path / "bad.vmscan"
    for off in range(len(data)):
        mutated = bytearray(data)
        mutated[off] ^= 0x5A
        bad.write_bytes(bytes(mutated))
        with pytest.raises((FormatError, IntegrityError, UnsupportedVersionError)) as ei:
            _read(bad)
        assert "offset" in str(ei.value), (off, str(ei.value))


def test_every_truncation_is_an_error(small_series, tmp_path):
    path, _ = small_series
    data = path.read_bytes()
    bad = tmp_path / "short.vmscan"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        with pytest.raises(VmsnapError) as ei:
            _read(bad)
        assert "offset" in str(ei.value) or "no such" in str(ei.value)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_never_gives_other_bitmaps(small_series, tmp_path, data):
    path, bitmaps = small_series
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        off = data.draw(st.integers(0, len(raw) - 1))
        raw[off] = data.draw(st.integers(0, 255))
    bad = tmp_path / "rnd.vmscan"
    bad.write_bytes(bytes(raw))
    try:
        _, got = _read(bad)
    except VmsnapError:
        return
    assert len(got) == len(bitmaps)
    for (_, _, a), b in zip(got, bitmaps):
        np.testing.assert_array_equal(a, b)


def test_swapped_periods_detected(small_series, tmp_path):
    """Two whole period records exchanged: each digest is fine, the sequence is not."""
    path, bitmaps = small_series
    data = path.read_bytes()
    size = S.period_size(bitmaps.shape[1])
    h = S.HEADER_SIZE
    p0, p1 = data[h : h + size], data[h + size : h + 2 * size]
    bad = tmp_path / "swap.vmscan"
    bad.write_bytes(data[:h] + p1 + p0 + data[h + 2 * size :])
    with pytest.raises(FormatError, match="offset 44: period 0 is numbered 1"):
        _read(bad)


def test_dropped_last_period_detected(small_series, tmp_path):
    path, bitmaps = small_series
    data = path.read_bytes()
    size = S.period_size(bitmaps.shape[1])
    end = len(data) - S.TRAILER_SIZE
    bad = tmp_path / "drop.vmscan"
    bad.write_bytes(data[: end - size] + data[end:])
    with pytest.raises(IntegrityError, match="counts 3 periods, the file holds 2"):
        _read(bad)


def test_newer_version_rejected(small_series, tmp_path):
    import blake3

    path, _ = small_series
    raw = bytearray(path.read_bytes())
    raw[8:10] = (2).to_bytes(2, "little")
    raw[32:40] = blake3.blake3(bytes(raw[:32])).digest(8)
    bad = tmp_path / "v2.vmscan"
    bad.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        _read(bad)


def test_interrupted_write_leaves_nothing(tmp_path):
    path = tmp_path / "half.vmscan"
    with pytest.raises(RuntimeError):
        with SeriesWriter(str(path), 4096, 10) as w:
            w.add(np.ones(10, dtype=bool))
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_wrong_bitmap_length_rejected(tmp_path):
    with pytest.raises(UsageError):
        with SeriesWriter(str(tmp_path / "x.vmscan"), 4096, 10) as w:
            w.add(np.ones(11, dtype=bool))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("page_size", [0, 100, 4095])
def test_bad_page_size_rejected(tmp_path, page_size):
    with pytest.raises(UsageError, match="power of two"):
        SeriesWriter(str(tmp_path / "x.vmscan"), page_size, 10)


def test_open_scans_detects_series_and_checks_page_size(small_series):
    path, bitmaps = small_series
    with open_scans([str(path)]) as s:
        assert s.format_name == "series"
        assert sum(1 for _ in s.periods()) == len(bitmaps)
    with pytest.raises(UsageError, match="4096-byte pages"):
        open_scans([str(path)], page_size=2 << 20)


def test_forged_page_count_is_not_an_allocation(tmp_path):
    """A header claiming 2**60 pages (with a valid digest) fails on size, before any read."""
    import blake3

    raw = bytearray(S.Header.build(dict(version=1, flags=0, page_size=4096, n_pages=2**60, base=0,
                                        header_digest=b"\0" * 8)))
    raw[32:40] = blake3.blake3(bytes(raw[:32])).digest(8)
    path = tmp_path / "huge.vmscan"
    path.write_bytes(bytes(raw) + b"PRD\0" + b"\0" * 100)
    with pytest.raises(IntegrityError, match="offset 144: truncated: a period of 1152921504606846976 pages"):
        _read(path)
    path.write_bytes(bytes(raw))  # the header alone: nor can it be an empty series (no trailer)
    with pytest.raises(IntegrityError, match="offset 40: truncated"):
        _read(path)


def test_write_series_converts_any_reader(tmp_path):
    from _hotcold_build import classic_workload, write_idle_dir

    from vmsnap.scans.series import write_series

    acc, _ = classic_workload(n_pages=64, periods=3)
    d = write_idle_dir(tmp_path / "idle", acc)
    out = tmp_path / "conv.vmscan"
    with open_scans([d]) as s:
        assert write_series(str(out), s) == 3
    s2, got = _read(out)
    assert s2.n_pages == 64
    np.testing.assert_array_equal(np.stack([g[2] for g in got]), acc)
    assert all(g[1] is not None for g in got)  # idle file mtimes carried over
