"""Attachments: named byte streams in a .vms (FLAG_ATTACHMENTS), checked like everything else."""

from __future__ import annotations

import struct

import pytest
from blake3 import blake3
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import build_image, resign
from vmsnap import api
from vmsnap.errors import FormatError, IntegrityError, UnsupportedVersionError, UsageError, VmsnapError
from vmsnap.format import structs as S
from vmsnap.format.reader import Snapshot
from vmsnap.format.writer import SnapshotWriter

DATA = build_image([("random", 1), ("zero",), ("copy", 0), ("unit", b"ab")])
STATE = bytes(range(251)) * 70000  # 17.6 MB: five attachment frames of 4 MiB


def write(path, attachments=True, names=("device-state",)):
    with open(path, "wb") as out:
        w = SnapshotWriter(out, source="t", attachments=attachments)
        w.add_region("ram", 0, [DATA])
        for name in names:
            w.add_attachment(name, [STATE[:1000], STATE[1000:]])
        return w.close()


def test_round_trip_and_verify(tmp_path):
    path = tmp_path / "a.vms"
    summary = write(path)
    assert summary["attachments"] == 1
    with Snapshot(str(path)) as snap:
        info = snap.attachment("device-state")
        assert info.size == len(STATE) and len(info.frames) == 5
        assert b"".join(snap.read_attachment("device-state")) == STATE
        assert snap.read(0, len(DATA)) == DATA
        stats = snap.stats()
        assert stats["attachments"][0]["name"] == "device-state"
        assert stats["stored_bytes"]["attachments"] == info.stored > 0
        with pytest.raises(FormatError, match="no attachment named 'x'"):
            snap.attachment("x")
    assert api.verify(str(path))["attachments"] == 1
    from vmsnap.report import format_info

    text = format_info(api.info(str(path)))
    line = next(ln for ln in text.splitlines() if ln.startswith("device-state"))
    assert line.split()[1] == str(len(STATE))  # name, size, stored, digest
    out = tmp_path / "r.raw"
    api.restore(str(path), str(out))
    assert out.read_bytes() == DATA


def test_header_flag_only_when_the_extension_is_used(tmp_path):
    plain, ext = tmp_path / "p.vms", tmp_path / "e.vms"
    api_raw = tmp_path / "in.raw"
    api_raw.write_bytes(DATA)
    api.save(str(api_raw), str(plain))
    write(ext)
    # Version 1 readers before an extension reject any flag bit they do not know, so
    # a reader without attachments refuses the file with them and reads the plain one.
    assert struct.unpack_from("<HH", plain.read_bytes(), 8) == (1, S.FLAG_SLICES)
    assert struct.unpack_from("<HH", ext.read_bytes(), 8) == (1, S.FLAG_ATTACHMENTS | S.FLAG_SLICES)


def _set_flags(path, flags):
    blob = bytearray(path.read_bytes())
    struct.pack_into("<H", blob, 10, flags)
    n = struct.unpack_from("<H", blob, 16)[0]
    blob[18 + n:18 + n + 32] = blake3(bytes(blob[:18 + n])).digest()  # a valid header digest
    path.write_bytes(bytes(blob))


def test_unknown_flag_is_rejected(tmp_path):
    path = tmp_path / "a.vms"
    write(path)
    _set_flags(path, S.FLAG_ATTACHMENTS | 0x8000)
    with pytest.raises(UnsupportedVersionError, match="unknown header flags 0x8000"):
        Snapshot(str(path))


def test_flag_cleared_on_a_file_with_attachments_is_caught(tmp_path):
    """Without the flag the index is read as a plain one: the attachment frames then
    lie between the data frames and the index, unaccounted for."""
    path = tmp_path / "a.vms"
    write(path)
    _set_flags(path, 0)
    with pytest.raises(FormatError, match="do not tile"):
        Snapshot(str(path))


def test_corrupted_attachment_frame_is_an_integrity_error(tmp_path):
    path = tmp_path / "a.vms"
    write(path)
    with Snapshot(str(path)) as snap:
        off = int(snap.attachment("device-state").frames["offset"][2])
    blob = bytearray(path.read_bytes())
    blob[off + 20] ^= 0x40
    path.write_bytes(bytes(blob))
    with Snapshot(str(path)) as snap:
        with pytest.raises(IntegrityError, match="frame at offset .* failed its digest"):
            b"".join(snap.read_attachment("device-state"))
    with pytest.raises(IntegrityError):
        api.verify(str(path))


def test_a_snapshot_saved_again_keeps_its_attachments_and_refuses_damaged_ones(tmp_path):
    # `vmsnap save g.vms -o g2.vms` dropped them: a QEMU snapshot saved again at another
    # level lost its device state, silently.
    path = tmp_path / "a.vms"
    write(path, names=("device-state", "meta"))
    summary = api.save(str(path), str(tmp_path / "again.vms"), level=9)
    assert summary["attachments"] == 2
    with Snapshot(str(tmp_path / "again.vms")) as snap:
        assert list(snap.attachments) == ["device-state", "meta"]
        assert all(b"".join(snap.read_attachment(n)) == STATE for n in snap.attachments)
        assert snap.read(0, len(DATA)) == DATA
    with Snapshot(str(path)) as snap:
        off = int(snap.attachment("meta").frames["offset"][1])
    blob = bytearray(path.read_bytes())
    blob[off + 20] ^= 0x40
    path.write_bytes(bytes(blob))
    with pytest.raises(IntegrityError, match="frame at offset .* failed its digest"):
        api.save(str(path), str(tmp_path / "copy.vms"))
    assert not (tmp_path / "copy.vms").exists()


def test_attachment_needs_the_option_and_unique_names(tmp_path):
    with open(tmp_path / "x.vms", "wb") as out:
        w = SnapshotWriter(out)
        with pytest.raises(UsageError, match="attachments=True"):
            w.add_attachment("a", [b"x"])
        w.close()
    with pytest.raises(UsageError, match="duplicate attachment"):
        write(tmp_path / "y.vms", names=("a", "a"))


def _rewrite_index(path, change):
    """Re-build the index (and trailer) after change(index) edits it: a consistent but lying index."""
    path.write_bytes(resign(path.read_bytes(), edit=change))


@pytest.mark.parametrize("delta", [+1, -1, +(1 << 20)])
def test_frame_length_that_lies_is_an_integrity_error(tmp_path, delta):
    import numpy as np

    path = tmp_path / "a.vms"
    write(path)

    def change(index):
        a = index.attachments[0]
        frames = np.frombuffer(a.frames, dtype=S.ATTACHMENT_FRAME_DTYPE).copy()
        frames["raw_size"][0] = int(frames["raw_size"][0]) + delta
        a.frames = frames.tobytes()
        a.size += delta

    _rewrite_index(path, change)
    with Snapshot(str(path)) as snap:
        with pytest.raises(IntegrityError, match="does not hold the"):
            for _ in snap.read_attachment("device-state"):
                pass


def test_frames_that_do_not_add_up_are_rejected_at_open(tmp_path):
    path = tmp_path / "a.vms"
    write(path)

    def change(index):
        index.attachments[0].size += 1

    _rewrite_index(path, change)
    with pytest.raises(FormatError, match="do not add up"):
        Snapshot(str(path))


def _small(tmp_path):
    """A small file with attachments before and after its region (frames of every kind interleaved)."""
    path = tmp_path / "small.vms"
    with open(path, "wb") as out:
        w = SnapshotWriter(out, page_size=512, frame_size=1024, source="c", attachments=True)
        w.add_attachment("head", [b"stream head " * 30])
        w.add_region("ram", 0, [DATA[:8192]])
        w.add_attachment("tail", [bytes(range(256)) * 20])
        w.close()
    return path, path.read_bytes()


def _check_damaged(tmp_path, blob, good):
    """A damaged file fails verify; reading an attachment fails or gives the original bytes."""
    path = tmp_path / "bad.vms"
    path.write_bytes(blob)
    with pytest.raises(VmsnapError):
        api.verify(str(path))
    for name, content in good.items():
        try:
            with Snapshot(str(path)) as snap:
                got = b"".join(snap.read_attachment(name))
        except VmsnapError:
            continue
        assert got == content


def test_flip_at_every_attachment_structure_boundary(tmp_path):
    path, blob = _small(tmp_path)
    with Snapshot(str(path)) as snap:
        good = {n: b"".join(snap.read_attachment(n)) for n in snap.attachments}
        offsets = {0, 10, snap.header_size - 1, snap.index_offset, len(blob) - 64, len(blob) - 1}
        for a in snap.attachments.values():
            for off, size in zip(a.frames["offset"].tolist(), a.frames["size"].tolist()):
                offsets |= {off - 1, off, off + size // 2, off + size - 1}
    for o in sorted(offsets):
        damaged = bytearray(blob)
        damaged[o] ^= 0x01
        _check_damaged(tmp_path, bytes(damaged), good)


@given(st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_corruption_of_a_file_with_attachments(tmp_path, data):
    path, blob = _small(tmp_path)
    with Snapshot(str(path)) as snap:
        good = {n: b"".join(snap.read_attachment(n)) for n in snap.attachments}
    damaged = bytearray(blob)
    damaged[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    _check_damaged(tmp_path, bytes(damaged), good)
