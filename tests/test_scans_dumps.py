"""A series of memory dumps: changed pages count as accessed; lockstep streaming; mismatched dumps."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _hotcold_build import PS, classic_workload, write_dumps
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnap.errors import InputError, UsageError
from vmsnap.scans import dumps as dumps_mod
from vmsnap.scans import open_scans
from vmsnap.scans.dumps import _blocks


@pytest.fixture(autouse=True, params=["mmap", "read"])
def dump_path(request, monkeypatch):
    """Run every test on both the raw-file mmap path and the generic read() path."""
    monkeypatch.setattr(dumps_mod, "USE_MMAP", request.param == "mmap")
    return request.param


def _accessed(paths, **kw):
    with open_scans(paths, **kw) as s:
        return s, np.stack([p.accessed.copy() for p in s.periods()])


def test_changed_pages_are_accessed(tmp_path, dump_path):
    acc, _ = classic_workload(n_pages=50, periods=5)
    paths = write_dumps(tmp_path, acc)
    s, got = _accessed(paths)
    assert s.read_path == dump_path
    assert s.format_name == "dumps" and s.n_pages == 50 and s.n_periods == 5
    np.testing.assert_array_equal(got, acc)
    assert s.bytes_read == 6 * 50 * PS  # every dump read exactly once


def test_a_period_ending_in_a_snapshot_has_no_timestamp(tmp_path):
    # A .vms file's time is when it was saved: periods ran backwards once.
    from vmsnap import api

    acc, _ = classic_workload(n_pages=50, periods=2)
    paths = write_dumps(tmp_path, acc)
    snap = str(tmp_path / "d1.vms")
    api.save(paths[1], snap)
    os.utime(paths[2], ns=(10**18, 10**18))
    with open_scans([paths[0], snap, paths[2]]) as s:
        assert [p.timestamp_ns for p in s.periods()] == [None, 10**18]


def test_block_boundaries_and_partial_tail(tmp_path, monkeypatch):
    """Blocks smaller than the dump (many lockstep steps) and a last page of 100 bytes."""
    monkeypatch.setattr(dumps_mod, "BLOCK", 3 * PS)
    rng = np.random.default_rng(5)
    acc = rng.random((4, 11)) < 0.3
    acc[:, 10] = [True, False, True, False]  # the partial page
    paths = write_dumps(tmp_path, acc, tail=100)
    assert os.path.getsize(paths[0]) == 10 * PS + 100
    s, got = _accessed(paths)
    assert s.n_pages == 11
    np.testing.assert_array_equal(got, acc)


@pytest.mark.parametrize("page_size", [1024, 8192])
def test_other_page_sizes(tmp_path, page_size):
    rng = np.random.default_rng(page_size)
    acc = rng.random((3, 9)) < 0.5
    paths = write_dumps(tmp_path, acc, page_size=page_size)
    _, got = _accessed(paths, page_size=page_size)
    np.testing.assert_array_equal(got, acc)


def test_change_in_last_byte_of_page_counts(tmp_path):
    a = np.zeros(3 * PS, dtype=np.uint8)
    b = a.copy()
    b[2 * PS - 1] = 1  # last byte of page 1
    a.tofile(tmp_path / "a")
    b.tofile(tmp_path / "b")
    _, got = _accessed([str(tmp_path / "a"), str(tmp_path / "b")])
    assert got.tolist() == [[False, True, False]]


def test_size_mismatch(tmp_path):
    (tmp_path / "a").write_bytes(b"\0" * 2 * PS)
    (tmp_path / "b").write_bytes(b"\0" * 3 * PS)
    with pytest.raises(InputError, match="does not match"):
        _accessed([str(tmp_path / "a"), str(tmp_path / "b")])


def test_needs_two_dumps_and_no_stdin(tmp_path):
    (tmp_path / "a").write_bytes(b"\0" * PS)
    with pytest.raises(UsageError, match="at least two dumps"):
        open_scans([str(tmp_path / "a")], "dumps")
    with pytest.raises(UsageError, match="stdin"):
        open_scans([str(tmp_path / "a"), "-"], "dumps")


def test_missing_dump(tmp_path):
    (tmp_path / "a").write_bytes(b"\0" * PS)
    with pytest.raises(InputError, match="no such file"):
        _accessed([str(tmp_path / "a"), str(tmp_path / "nope")], fmt="dumps")


def test_dump_truncated_while_reading(tmp_path, monkeypatch):
    """A dump that shrinks after open is an error with the offset, not a shorter series."""
    from vmsnap.sources.raw import RawSource

    (tmp_path / "a").write_bytes(b"\1" * 4 * PS)
    (tmp_path / "b").write_bytes(b"\2" * 4 * PS)
    real_init = RawSource.__init__

    def init(self, path, *a, **k):
        real_init(self, path, *a, **k)
        if path.endswith("b"):
            os.truncate(path, PS)

    monkeypatch.setattr(RawSource, "__init__", init)
    with pytest.raises(InputError, match="truncated"):
        _accessed([str(tmp_path / "a"), str(tmp_path / "b")])


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.binary(min_size=0, max_size=40), max_size=12), size=st.integers(1, 32))
def test_blocks_recut_exactly(chunks, size):
    out = list(_blocks(iter(chunks), size))
    assert b"".join(out) == b"".join(chunks)
    assert all(len(b) == size for b in out[:-1])
    assert not out or 0 < len(out[-1]) <= size


@settings(max_examples=200, deadline=None)
@given(parts=st.lists(st.one_of(st.binary(min_size=1, max_size=40), st.integers(1, 100)), max_size=12),
       size=st.integers(1, 32))
def test_blocks_keep_zero_runs_known(parts, size):
    # Zero runs (ints here) come as zero chunks: a piece of zeros only is one, wherever the run
    # began, so the comparison skips it (a .vms of a sparse guest compared zeros for minutes).
    from vmsnap.sources.base import is_zero_chunk, zero_chunks

    chunks = [c for p in parts for c in (zero_chunks(p) if isinstance(p, int) else [p])]
    out = list(_blocks(iter(chunks), size))
    assert b"".join(bytes(b) for b in out) == b"".join(bytes(c) for c in chunks)
    assert all(len(b) == size for b in out[:-1]) and (not out or 0 < len(out[-1]) <= size)
    run = 0
    for p in parts:
        run = run + p if isinstance(p, int) else 0
        if run >= 2 * size:
            assert any(is_zero_chunk(b) for b in out)


def test_multi_region_reader_with_odd_chunks(tmp_path, monkeypatch):
    """Any source reader plugs in: regions become segments, odd chunk sizes are re-cut."""
    from vmsnap import sources

    monkeypatch.setitem(sources.FORMATS, "tworegion", ("_hotcold_build", "TwoRegionSource"))
    rng = np.random.default_rng(9)
    acc = rng.random((3, 8)) < 0.5
    paths = write_dumps(tmp_path, acc)
    with open_scans(paths, "dumps", source_format="tworegion") as s:
        got = np.stack([p.accessed.copy() for p in s.periods()])
        assert s.read_path == "read"  # only raw files are mapped
        segs = [(g.name, g.base, g.first_page, g.n_pages) for g in s.segments]
    np.testing.assert_array_equal(got, acc)
    assert segs == [("low", 0, 0, 3), ("high", 1 << 32, 3, 5)]


def test_empty_dumps(tmp_path):
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "b").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        _accessed([str(tmp_path / "a"), str(tmp_path / "b")])


def test_dump_cut_between_blocks_of_the_mmap_path_is_an_input_error(tmp_path, monkeypatch):
    """A dump truncated after the first block was compared: an error, not a SIGBUS."""
    from vmsnap.scans import dumps
    from vmsnap.scans.dumps import DumpScans

    monkeypatch.setattr(dumps, "BLOCK", 2 * PS)
    (tmp_path / "a").write_bytes(b"\1" * 8 * PS)
    (tmp_path / "b").write_bytes(b"\2" * 8 * PS)
    cut = []

    def progress(n):
        if not cut:
            cut.append(n)
            os.truncate(tmp_path / "b", 3 * PS)

    scans = DumpScans([str(tmp_path / "a"), str(tmp_path / "b")], page_size=PS, progress=progress, use_mmap=True)
    with pytest.raises(InputError, match="truncated while being read"):
        list(scans.periods())
    assert cut


def test_holes_of_sparse_dumps_are_not_read(tmp_path, dump_path):
    # Through the maps, every hole was read as zeros into the page cache: 3 sparse dumps of
    # 64 GiB took 14 GiB of memory and 87 s.
    size, block = 64 << 20, 4 << 20
    rng = np.random.default_rng(9)
    data = rng.integers(0, 256, (3, PS), dtype=np.uint8)
    writes = [[(5 * block, data[0])], [(5 * block, data[1]), (9 * block + PS, data[2])], []]
    paths = []
    for i, ws in enumerate(writes):
        path = tmp_path / f"d{i}.raw"
        with open(path, "wb") as fh:
            fh.truncate(size)
            for offset, page in ws:
                os.pwrite(fh.fileno(), page.tobytes(), offset)
        paths.append(str(path))
    s, got = _accessed(paths)
    expected = np.zeros((2, size // PS), dtype=bool)
    expected[0, 5 * block // PS] = True  # data[0] -> data[1]
    expected[0, (9 * block + PS) // PS] = True  # hole -> data[2]
    expected[1, [5 * block // PS, (9 * block + PS) // PS]] = True  # both back to holes
    np.testing.assert_array_equal(got, expected)
    if dump_path == "mmap":
        assert s.bytes_read == 3 * block  # block 5 of d0 and d1, block 9 of d1: where there is data


def test_the_page_count_is_known_before_the_dumps_are_compared(tmp_path):
    # hotcold's memory check asked for it before its progress bar existed, and that compared
    # every dump: the whole run went by with no bar and the check came after it.
    from vmsnap import api

    acc, _ = classic_workload(n_pages=50, periods=2)
    paths = write_dumps(tmp_path, acc)
    snap = str(tmp_path / "d0.vms")
    api.save(paths[0], snap)
    for inputs in (paths, [snap] + paths[1:]):
        with open_scans(inputs) as s:
            assert s.n_pages == 50 and s.bytes_read == 0
            assert sum(p.accessed.sum() for p in s.periods()) == acc.sum()
            assert s.n_pages == 50


def test_dumps_of_different_sizes_are_a_layout_error_before_any_memory_check(tmp_path):
    # The page count came from the first dump alone: an 8 TiB first dump beside a 10 MiB one
    # was "needs 30720 MiB of state" (exit 1), not the mismatch (exit 3).
    big, small = tmp_path / "big.raw", tmp_path / "small.raw"
    with open(big, "wb") as fh:
        fh.truncate(8 << 40)
    with open(small, "wb") as fh:
        fh.truncate(10 << 20)
    with open_scans([str(big), str(small)]) as s:
        with pytest.raises(InputError, match="does not match"):
            s.n_pages


def test_a_dump_that_grows_after_its_page_count_was_told_is_an_input_error(tmp_path, monkeypatch):
    # The analysis sizes its state by n_pages before the comparison runs.
    acc, _ = classic_workload(n_pages=50, periods=2)
    paths = write_dumps(tmp_path, acc)
    with open_scans(paths) as s:
        assert s.n_pages == 50
        for p in paths:
            with open(p, "ab") as fh:
                fh.write(bytes(PS))
        with pytest.raises(InputError, match="changed size while being analysed .50 pages, then 51."):
            list(s.periods())
