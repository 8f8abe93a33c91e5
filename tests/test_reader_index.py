"""A large index is decoded into an unlinked temporary file and mapped, its pages dropped
block by block: the same bytes come out, nothing is left behind, and its errors are clear."""

from __future__ import annotations

import mmap
import os
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import vmsnap
from conftest import build_image, char_device
from vmsnap import api
from vmsnap.cli import main
from vmsnap.format import reader

PAGES = 2048


@pytest.fixture
def record_per_page(tmp_path):
    """An image whose page kinds alternate, so that its index holds a record per page."""
    spec = [("zero",) if i % 2 else ("random", i) for i in range(PAGES)]
    data = build_image(spec)
    raw, snap = tmp_path / "in.raw", tmp_path / "s.vms"
    raw.write_bytes(data)
    api.save(str(raw), str(snap))
    return data, snap


@pytest.fixture
def mapped(monkeypatch, tmp_path):
    """Every index goes to a temporary file, in a TMPDIR of the test's own."""
    spill_dir = tmp_path / "tmpdir"
    spill_dir.mkdir()
    monkeypatch.setattr(reader, "INDEX_MEMORY_BYTES", 0)
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    return spill_dir


def _resident_bytes(address: int) -> int:
    """Rss of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds the index")


def test_a_mapped_index_restores_the_same_bytes_and_leaves_nothing_in_tmpdir(record_per_page, mapped, tmp_path):
    data, snap = record_per_page
    out = tmp_path / "out.raw"
    with vmsnap.open(str(snap)) as s:
        assert s._index_map is not None and len(s.records) >= PAGES
        assert os.listdir(mapped) == []  # unlinked from the start
    api.restore(str(snap), str(out))
    assert out.read_bytes() == data
    assert api.cat(str(snap), 4096 * 1001 + 7, 4096 * 3) == data[4096 * 1001 + 7:4096 * 1004 + 7]
    api.verify(str(snap))
    assert os.listdir(mapped) == []


def _fault_granule(directory) -> int:
    """Bytes one read fault maps in, on a file written as the index's is (64 KiB writes) in
    `directory`: Linux's fault_around_bytes (64 KiB by default), or a large folio."""
    path = os.path.join(directory, "probe")
    with open(path, "w+b") as fh:
        for _ in range(64):
            fh.write(b"\1" * (64 << 10))
        fh.flush()
        view = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
    try:
        address = np.frombuffer(view, np.uint8).ctypes.data
        _ = view[len(view) // 2]
        return _resident_bytes(address)
    finally:
        view.close()
        os.unlink(path)


def test_the_pages_of_a_mapped_index_are_dropped_block_by_block(mapped, monkeypatch, tmp_path):
    """The mapped index is page cache, not the process's memory: after a whole pass only the
    pages read since the last block of records are still mapped in (a fault maps a granule
    around it, measured first; the index here is 16 granules or more)."""
    granule = _fault_granule(mapped)
    pages, ps = 1 << 16, 512
    image = np.zeros((pages, ps), np.uint8)
    image[::2] = np.frombuffer(np.random.default_rng(5).bytes(pages // 2 * ps), np.uint8).reshape(-1, ps)
    raw, snap = tmp_path / "in.raw", tmp_path / "s.vms"
    raw.write_bytes(image.tobytes())
    api.save(str(raw), str(snap), page_size=ps)
    monkeypatch.setattr(reader, "RECORD_BLOCK", 256)  # a block of records is 4 KiB
    with vmsnap.open(str(snap)) as s:
        size = len(s._index_map)
        if size < 16 * granule:
            pytest.skip(f"a read fault maps {granule >> 10} KiB here: a 1 MiB index is too small to tell")
        address = np.frombuffer(s._index_map, np.uint8).ctypes.data
        s.produce(lambda region, piece: None)
        assert _resident_bytes(address) <= 3 * granule, size


def test_a_full_tmpdir_for_the_index_is_exit_6_in_one_line(record_per_page, monkeypatch, tmp_path):
    _, snap = record_per_page
    full = char_device(tmp_path, "full", 7)
    monkeypatch.setattr(reader, "INDEX_MEMORY_BYTES", 0)
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: open(full, "r+b"))
    for args in (["verify", str(snap)], ["restore", str(snap), "-o", str(tmp_path / "out.raw"), "-q"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 6, result.output
        assert result.output.strip().splitlines() == [
            f"vmsnap: error: temporary file for the index in {tempfile.gettempdir()}: no space left on device"]
    assert not (tmp_path / "out.raw").exists()


@given(st.lists(st.tuples(st.integers(0, 700), st.integers(0, 200)), max_size=40), st.data())
@settings(max_examples=200, deadline=None)
def test_the_set_of_referenced_pages_ranks_each_page(runs, data):
    """_PageSet (a bitmap and a rank directory, runs added in any order, any number of
    times) against a sorted array of the pages."""
    pages = 1000
    wanted = reader._PageSet(pages)
    for chunk in (runs[:len(runs) // 2], runs[len(runs) // 2:]):
        starts = np.array([min(s, pages) for s, _ in chunk], np.uint64)
        ends = np.array([min(s + n, pages) for s, n in chunk], np.uint64)
        wanted.add(starts, ends)
    wanted.finish()
    want = np.unique(np.concatenate([np.arange(min(s, pages), min(s + n, pages)) for s, n in runs]
                                    + [np.zeros(0, np.int64)]))
    assert wanted.count == len(want) and wanted.within(0, pages).tolist() == want.tolist()
    probe = np.array(data.draw(st.lists(st.integers(0, pages - 1), min_size=1, max_size=50)), np.uint64)
    rank, hit = wanted.lookup(probe)
    assert hit.tolist() == np.isin(probe, want).tolist()
    assert rank[hit].tolist() == np.searchsorted(want, probe[hit]).tolist()
    assert [wanted.rank(int(p)) for p in probe] == np.searchsorted(want, probe).tolist()
    assert wanted.rank(pages) == len(want)
    first = data.draw(st.integers(0, pages))
    end = data.draw(st.integers(first, pages))
    assert wanted.within(first, end).tolist() == (want[(want >= first) & (want < end)] - first).tolist()


def test_a_plan_in_a_tmpdir_that_cannot_hold_it_is_exit_6_in_one_line(monkeypatch, tmp_path):
    """The plan's arrays are allocated when made, so a full disk is an error there, never
    a SIGBUS when a mapped page is first written."""
    pages = [("random", i) for i in range(64)]
    raw, snap = tmp_path / "in.raw", tmp_path / "s.vms"
    raw.write_bytes(build_image(pages + [("copy", 63 - i) for i in range(64)]))
    api.save(str(raw), str(snap))
    full = char_device(tmp_path, "full", 7)
    monkeypatch.setattr(reader, "PLAN_MEMORY_BYTES", 0)
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: open(full, "r+b"))
    result = CliRunner().invoke(main, ["restore", str(snap), "-o", str(tmp_path / "out.raw"), "-q"])
    assert result.exit_code == 6, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"vmsnap: error: temporary file for shared pages in {tempfile.gettempdir()}: "), lines
    assert not (tmp_path / "out.raw").exists()
    monkeypatch.undo()
    monkeypatch.setattr(reader, "PLAN_MEMORY_BYTES", 0)
    api.restore(str(snap), str(tmp_path / "out.raw"))  # with room, the same plan restores the image
    assert (tmp_path / "out.raw").read_bytes() == raw.read_bytes()
