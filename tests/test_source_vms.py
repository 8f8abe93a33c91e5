""".vms snapshots as an input source: detected by magic, regions kept, digests checked, zero runs cheap."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmsnap import api
from vmsnap.errors import IntegrityError, InputError
from vmsnap.format.reader import Snapshot
from vmsnap.format.writer import SnapshotWriter
from vmsnap.sources import detect_format, open_source
from vmsnap.sources.base import ZERO_CHUNK, is_zero_chunk, zero_chunks

from conftest import build_image


def two_region_snapshot(path, low, high, page_size=4096):
    with open(path, "wb") as out:
        w = SnapshotWriter(out, page_size=page_size, frame_size=2 * page_size, source="test")
        w.add_region("low", 0, [low])
        w.add_region("high", 1 << 32, [high])
        w.close()


def test_detected_by_magic(tmp_path):
    snap = tmp_path / "s.vms"
    two_region_snapshot(snap, b"a" * 5000, b"")
    assert detect_format(open(snap, "rb").read(64)) == "vms"
    assert detect_format(b"\x89VMSNAX\n") == "raw"
    with open_source(str(snap)) as src:
        assert src.format_name == "vms" and src.size_hint == 5000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(low=st.lists(st.sampled_from([("zero",), ("fill", 7), ("random", 1), ("random", 2), ("copy", 0)]),
                    min_size=1, max_size=8),
       high=st.lists(st.sampled_from([("zero",), ("sparse", {1: 2}), ("random", 3)]), max_size=6),
       tail=st.binary(max_size=700), page_size=st.sampled_from([512, 4096]))
def test_resaving_a_snapshot_keeps_regions_and_bytes(tmp_path, low, high, tail, page_size):
    low_bytes = build_image([s if s[0] != "copy" else ("random", 1) for s in low], page_size, tail)
    high_bytes = build_image(high, page_size)
    first, second = tmp_path / "a.vms", tmp_path / "b.vms"
    two_region_snapshot(first, low_bytes, high_bytes, page_size)
    api.save(str(first), str(second), page_size=page_size, level=1)  # a .vms as the input of save
    with Snapshot(str(first)) as a, Snapshot(str(second)) as b:
        assert [(r.name, r.base, r.size) for r in b.regions] == [(r.name, r.base, r.size) for r in a.regions]
        assert b.image_digest == a.image_digest
        assert b.read(0, len(low_bytes), "low") == low_bytes
        assert b.read(0, len(high_bytes), "high") == high_bytes


def test_zero_runs_come_as_shared_zero_views(tmp_path):
    data = build_image([("random", 1)] + [("zero",)] * 300 + [("fill", 3)])
    raw, snap = tmp_path / "in.raw", tmp_path / "s.vms"
    raw.write_bytes(data)
    api.save(str(raw), str(snap))
    with open_source(str(snap)) as src:
        pieces = [p for _, chunks in src.regions() for p in chunks]
    assert b"".join(bytes(p) for p in pieces) == data
    zero = [p for p in pieces if is_zero_chunk(p)]
    assert sum(len(p) for p in zero) == 300 * 4096
    assert not is_zero_chunk(b"\0" * 10) and not is_zero_chunk(memoryview(bytes(10)))
    assert [len(p) for p in zero_chunks(len(ZERO_CHUNK) + 5)] == [len(ZERO_CHUNK), 5]


def test_a_damaged_snapshot_is_an_integrity_error_and_saves_nothing(tmp_path):
    data = build_image([("random", i) for i in range(6)])
    raw, snap, out = tmp_path / "in.raw", tmp_path / "s.vms", tmp_path / "out.vms"
    raw.write_bytes(data)
    api.save(str(raw), str(snap), frame_size=2 * 4096)
    with Snapshot(str(snap)) as s:
        off = int(s.frames["offset"][1])
    blob = bytearray(snap.read_bytes())
    blob[off + 3] ^= 0x40
    snap.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="frame 1"):
        api.save(str(snap), str(out))
    assert sorted(os.listdir(tmp_path)) == ["in.raw", "s.vms"]


def test_stdin_cannot_be_a_snapshot():
    from vmsnap.sources.vms import VmsSource

    with pytest.raises(InputError, match="standard input"):
        VmsSource("-")
