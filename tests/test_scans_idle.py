"""Linux idle-page bitmap files: bit layout, ordering, malformed inputs."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _hotcold_build import classic_workload, idle_words_reference, write_idle_dir

from vmsnap.errors import InputError
from vmsnap.scans import open_scans
from vmsnap.scans.idle import IdleBitmapScans, write_idle_bitmap


def test_reads_accessed_as_complement_of_idle_bits(tmp_path):
    acc, _ = classic_workload(n_pages=200, periods=4)
    d = write_idle_dir(tmp_path / "scans", acc)
    with open_scans([d]) as s:
        assert s.format_name == "idle"
        # 200 PFNs round up to 4 words = 256 pages; the tail is written idle
        assert s.n_pages == 256
        got = [p.accessed.copy() for p in s.periods()]
    assert len(got) == 4
    for t, a in enumerate(got):
        np.testing.assert_array_equal(a[:200], acc[t])
        assert not a[200:].any()


def test_single_pfn_bits(tmp_path):
    """PFN 64*j+i is bit i of word j: set exactly PFN 70 accessed (word 1, bit 6)."""
    words = [0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF & ~(1 << 6)]
    path = tmp_path / "one"
    path.write_bytes(b"".join(w.to_bytes(8, "little") for w in words))
    with IdleBitmapScans([str(path)]) as s:
        (p,) = list(s.periods())
    assert np.flatnonzero(p.accessed).tolist() == [70]


def test_writer_matches_reference_layout(tmp_path):
    rng = np.random.default_rng(3)
    acc = rng.random(150) < 0.5
    path = tmp_path / "w"
    write_idle_bitmap(str(path), acc)
    assert path.read_bytes() == idle_words_reference(acc)


def test_directory_sorted_by_name_and_hidden_files_ignored(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for name, page in [("b", 2), ("a", 1), ("c", 3)]:
        acc = np.zeros(64, dtype=bool)
        acc[page] = True
        (d / name).write_bytes(idle_words_reference(acc))
    (d / ".partial").write_bytes(b"junk")
    with open_scans([str(d)]) as s:
        assert [int(np.flatnonzero(p.accessed)[0]) for p in s.periods()] == [1, 2, 3]


def test_explicit_file_order_kept(tmp_path):
    paths = []
    for name, page in [("z", 5), ("a", 6)]:
        acc = np.zeros(64, dtype=bool)
        acc[page] = True
        (tmp_path / name).write_bytes(idle_words_reference(acc))
        paths.append(str(tmp_path / name))
    with open_scans(paths, "idle") as s:
        assert [int(np.flatnonzero(p.accessed)[0]) for p in s.periods()] == [5, 6]


def test_size_not_whole_words(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "s0").write_bytes(b"\xff" * 8)
    (d / "s1").write_bytes(b"\xff" * 13)
    with pytest.raises(InputError, match=r"s1: offset 8: size 13 is not a whole number of 64-bit words"):
        open_scans([str(d)])


def test_sizes_differ(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "s0").write_bytes(b"\xff" * 8)
    (d / "s1").write_bytes(b"\xff" * 16)
    with pytest.raises(InputError, match="differs from"):
        open_scans([str(d)])


def test_empty_inputs(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(InputError, match="no bitmap files"):
        open_scans([str(d)], "idle")
    (d / "s0").write_bytes(b"")
    with pytest.raises(InputError, match="empty bitmap"):
        open_scans([str(d)], "idle")
    with pytest.raises(InputError, match="no such file"):
        open_scans([str(tmp_path / "missing")], "idle")


def test_file_shrinking_under_reader(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "s0").write_bytes(b"\xff" * 16)
    (d / "s1").write_bytes(b"\xff" * 16)
    s = open_scans([str(d)])
    os.truncate(d / "s1", 8)
    with pytest.raises(InputError, match="s1: offset 8: size changed"):
        list(s.periods())
