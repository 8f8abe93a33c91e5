"""A damaged snapshot gives an error or identical bytes, never different bytes.

Following restic and borg: flip bytes at every structure boundary and at random,
truncate at every boundary, overwrite a frame with b"BOOM", interrupt a save.
"""

import errno
import io
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import vmsnap
from vmsnap import api
from vmsnap.errors import IntegrityError, OutputError, UnsupportedVersionError, VmsnapError, FormatError
from vmsnap.format import structs as S

from conftest import build_image, resign

SPEC = [("random", i) for i in range(6)] + [("zero",)] * 3 + [("fill", 7), ("sparse", {1: 5})] + \
       [("copy", 1), ("unit", b"xyz")] + [("random", 9)] * 2


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    d = tmp_path_factory.mktemp("snap")
    data = build_image(SPEC, page_size=512, tail=b"tail")
    raw = d / "in.raw"
    raw.write_bytes(data)
    path = d / "good.vms"
    api.save(str(raw), str(path), page_size=512, frame_size=2 * 512)
    return data, path.read_bytes()


def boundaries(blob):
    """Offsets where one structure of the file ends and the next begins."""
    out = {0, len(S.MAGIC), len(S.MAGIC) + 2, len(S.MAGIC) + 4, len(S.MAGIC) + 8}
    trailer = S.Trailer.parse(blob[-S.TRAILER_SIZE:])
    out |= {trailer.index_offset, len(blob) - S.TRAILER_SIZE, len(blob) - S.TRAILER_SIZE + 8,
            len(blob) - S.TRAILER_SIZE + 16, len(blob) - S.TRAILER_SIZE + 24, len(blob) - 8, len(blob) - 1}
    return out


def frame_offsets(path):
    with vmsnap.open(str(path)) as s:
        return [(int(f["offset"]), int(f["size"])) for f in s.frames], s.header_size


def check_damaged(tmp_path, data, blob, name="bad.vms"):
    """Verify must fail; restore must fail or give exactly the original bytes."""
    path = tmp_path / name
    path.write_bytes(blob)
    with pytest.raises(VmsnapError):
        api.verify(str(path))
    out = tmp_path / "out.raw"
    try:
        api.restore(str(path), str(out))
    except VmsnapError:
        assert not out.exists()
    else:  # pragma: no cover - would mean the damage went unnoticed
        assert out.read_bytes() == data
        pytest.fail("damage was not detected")


def test_good_snapshot_verifies(snapshot, tmp_path):
    data, blob = snapshot
    path = tmp_path / "good.vms"
    path.write_bytes(blob)
    assert api.verify(str(path))["ok"]


def test_flip_at_every_structure_boundary(snapshot, tmp_path):
    data, blob = snapshot
    path = tmp_path / "good.vms"
    path.write_bytes(blob)
    frames, header_size = frame_offsets(path)
    offsets = boundaries(blob) | {header_size - 1, header_size - S.DIGEST_SIZE}
    for off, size in frames:
        offsets |= {off, off + size - 1}
    for off in sorted(o for o in offsets if 0 <= o < len(blob)):
        for delta in (-1, 0):
            o = off + delta
            if o < 0:
                continue
            damaged = bytearray(blob)
            damaged[o] ^= 0x01
            check_damaged(tmp_path, data, bytes(damaged))


@given(st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_corruption_is_always_detected(snapshot, tmp_path, data):
    image, blob = snapshot
    offset = data.draw(st.integers(0, len(blob) - 1))
    xor = data.draw(st.integers(1, 255))
    damaged = bytearray(blob)
    damaged[offset] ^= xor
    check_damaged(tmp_path, image, bytes(damaged))


def test_truncation_at_every_boundary_and_more(snapshot, tmp_path):
    data, blob = snapshot
    path = tmp_path / "good.vms"
    path.write_bytes(blob)
    frames, header_size = frame_offsets(path)
    lengths = boundaries(blob) | {header_size, header_size - 1} | {o for o, _ in frames} | set(range(0, len(blob), 97))
    for n in sorted(x for x in lengths if x < len(blob)):
        bad = tmp_path / "short.vms"
        bad.write_bytes(blob[:n])
        with pytest.raises((IntegrityError, FormatError)) as exc:
            vmsnap.open(str(bad)).close()
        assert str(bad) in str(exc.value)


def test_boom_in_a_frame_names_the_frame(snapshot, tmp_path):
    data, blob = snapshot
    path = tmp_path / "good.vms"
    path.write_bytes(blob)
    frames, _ = frame_offsets(path)
    off, size = frames[1]
    damaged = bytearray(blob)
    damaged[off:off + 4] = b"BOOM"
    path.write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError, match=f"frame 1 at offset {off} failed its digest"):
        api.verify(str(path))
    # info reads only header and index, so it still works and shows what is there
    assert api.info(str(path))["image_bytes"] == len(data)


def test_newer_version_is_reported_as_such(snapshot, tmp_path):
    _, blob = snapshot
    damaged = bytearray(blob)
    damaged[8:10] = (2).to_bytes(2, "little")
    path = tmp_path / "v2.vms"
    path.write_bytes(bytes(damaged))
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        vmsnap.open(str(path))


def test_not_a_snapshot(tmp_path):
    path = tmp_path / "x.vms"
    path.write_bytes(b"hello world" * 10)
    with pytest.raises(FormatError, match="not a vmsnap snapshot"):
        vmsnap.open(str(path))


class _Boom(Exception):
    pass


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    from vmsnap.sources import raw as raw_source

    data = build_image([("random", i) for i in range(64)])
    src = tmp_path / "in.raw"
    src.write_bytes(data)
    real = raw_source.read_exact_chunks

    def chunks_then_interrupt(fh, length, what):
        gen = real(fh, length, what)
        yield next(gen)
        raise KeyboardInterrupt

    monkeypatch.setattr(raw_source, "read_exact_chunks", chunks_then_interrupt)
    monkeypatch.setattr(raw_source, "sparse_file_chunks", lambda fd, start, length, what: chunks_then_interrupt(
        open(src, "rb"), length, what))
    monkeypatch.setattr("vmsnap.sources.base.READ_CHUNK", 8192)
    target = tmp_path / "out.vms"
    with pytest.raises(KeyboardInterrupt):
        api.save(str(src), str(target))
    assert sorted(os.listdir(tmp_path)) == ["in.raw"]


class _FullDisk:
    """A file object that accepts `room` bytes, then fails like a full disk. It has no
    file descriptor, so the writer writes to it as given (test_save_output.py covers
    a full disk under the writer thread)."""

    def __init__(self, fh, room):
        self.fh, self.room = fh, room

    def fileno(self):
        raise io.UnsupportedOperation("fileno")

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_disk_full_is_an_output_error_and_leaves_no_file(tmp_path, monkeypatch):
    import contextlib

    from vmsnap import atomic

    data = build_image([("random", i) for i in range(8)])
    src = tmp_path / "in.raw"
    src.write_bytes(data)
    real = atomic.atomic_output

    @contextlib.contextmanager
    def small_disk(path, **kw):
        with real(path, **kw) as fh:
            yield _FullDisk(fh, 1000)

    monkeypatch.setattr("vmsnap.api.atomic_output", small_disk)
    with pytest.raises(OutputError, match="no space left on device"):
        api.save(str(src), str(tmp_path / "out.vms"))
    assert sorted(os.listdir(tmp_path)) == ["in.raw"]


def test_restore_of_corrupt_snapshot_leaves_no_output(snapshot, tmp_path):
    data, blob = snapshot
    path = tmp_path / "good.vms"
    path.write_bytes(blob)
    frames, _ = frame_offsets(path)
    damaged = bytearray(blob)
    damaged[frames[-1][0]] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(IntegrityError):
        api.restore(str(path), str(tmp_path / "restored.raw"))
    assert not (tmp_path / "restored.raw").exists()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


@pytest.mark.parametrize("delta, message", [(-1, "holds more than"), (+1, "holds 1024 bytes, expected 1536")])
def test_a_frame_that_holds_other_than_its_pages_is_an_integrity_error(snapshot, tmp_path, delta, message):
    """A frame table that lies about a frame's pages (its digest still right) never yields bytes."""
    import numpy as np

    _, blob = snapshot
    path = tmp_path / "s.vms"
    path.write_bytes(blob)
    with vmsnap.open(str(path)) as s:
        frames = s.frames.copy()
        frames["pages"][0] = int(frames["pages"][0]) + delta
        s.frames = frames
        with pytest.raises(IntegrityError, match=f"frame 0 at offset {int(frames['offset'][0])} {message}"):
            s._decode_frame(0)
        assert isinstance(s._decode_frame(1), np.ndarray)  # the other frames are still read


# -- crafted files: every digest valid, a field set to what a valid file never holds ------

def _last_frame_too_big(index):
    import numpy as np

    frames = np.frombuffer(index["frames"], S.FRAME_DTYPE).copy()
    frames["pages"][-1] = 1 << 30  # 512 GiB of 512-byte pages to decode
    index["frames"], index["data_pages"] = frames.tobytes(), int(frames["pages"].sum())


@pytest.mark.parametrize("crafted, code, message", [
    (dict(raw_size=1 << 45, content_size=False), 90, "index holds .* bytes, trailer says 35184372088832"),
    (dict(page_size=32 << 20), 4, "invalid page size 33554432"),
    (dict(edit=lambda f: f.__setitem__("frame_pages", (1 << 30) // 512 + 1)), 4, "frames of 2097153 pages are larger"),
    (dict(edit=_last_frame_too_big), 4, "the last frame holds more pages than a frame does"),
])
def test_fields_no_valid_file_holds_are_one_line_errors_not_allocations(snapshot, tmp_path, crafted, code, message):
    """Each would have asked for terabytes (MemoryError, a traceback) before the reader checked it."""
    from click.testing import CliRunner

    from vmsnap.cli import main

    _, blob = snapshot
    (tmp_path / "same.vms").write_bytes(resign(blob))  # the helper alone keeps a file valid
    api.verify(str(tmp_path / "same.vms"))
    path = tmp_path / "crafted.vms"
    path.write_bytes(resign(blob, **crafted))
    for command in (["verify", str(path)], ["restore", str(path), "-o", str(tmp_path / "out.raw")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == code, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vmsnap: error: ")
        assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "out.raw").exists()


def test_an_attachment_frame_larger_than_any_writer_makes_is_refused(tmp_path):
    import numpy as np

    from vmsnap.format.writer import SnapshotWriter

    path = tmp_path / "a.vms"
    with open(path, "wb") as fh:
        w = SnapshotWriter(fh, attachments=True)
        w.add_region("ram", 0, [bytes(4096)])
        w.add_attachment("dev", [b"state" * 100])
        w.close()

    def edit(fields):
        frames = np.frombuffer(fields["attachments"][0]["frames"], S.ATTACHMENT_FRAME_DTYPE).copy()
        frames["raw_size"][0] = (1 << 30) + 1
        fields["attachments"][0]["frames"] = frames.tobytes()
        fields["attachments"][0]["size"] = (1 << 30) + 1

    path.write_bytes(resign(path.read_bytes(), edit=edit))
    with pytest.raises(FormatError, match="attachment 'dev' frame larger than 1024 MiB"):
        vmsnap.open(str(path))


def test_running_out_of_memory_is_one_line_and_exit_1(snapshot, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from vmsnap.cli import main
    from vmsnap.format.reader import Snapshot

    _, blob = snapshot
    (tmp_path / "s.vms").write_bytes(blob)

    def no_memory(self, k):
        raise MemoryError()

    monkeypatch.setattr(Snapshot, "_decode_frame", no_memory)
    result = CliRunner().invoke(main, ["restore", str(tmp_path / "s.vms"), "-o", str(tmp_path / "out.raw")])
    assert result.exit_code == 1 and result.output == "vmsnap: error: out of memory\n"
    assert not (tmp_path / "out.raw").exists()


@pytest.mark.parametrize("field, value, message", [
    ("kind", 9, "unknown record kind or empty run"),
    ("count", 0, "unknown record kind or empty run"),
    ("arg", 1 << 40, "record out of range"),
])
@pytest.mark.parametrize("index_memory", [0, 1 << 30], ids=["index-mapped", "index-in-memory"])
def test_a_bad_record_in_the_last_block_of_records_is_refused(snapshot, tmp_path, monkeypatch, field, value, message,
                                                              index_memory):
    """The records are checked a block at a time: the last block counts as much as the first."""
    import numpy as np

    from vmsnap.format import reader

    monkeypatch.setattr(reader, "RECORD_BLOCK", 2)
    monkeypatch.setattr(reader, "INDEX_MEMORY_BYTES", index_memory)
    _, blob = snapshot

    def edit(fields):
        rec = np.frombuffer(fields["records"], S.RECORD_DTYPE).copy()
        last = int(np.flatnonzero(rec["kind"] != S.REC_ZERO)[-1])  # a zero run has no arg to check
        assert last >= 4  # beyond the first two blocks
        rec[field][last] = value
        fields["records"] = rec.tobytes()

    (tmp_path / "same.vms").write_bytes(resign(blob))
    api.verify(str(tmp_path / "same.vms"))
    path = tmp_path / "crafted.vms"
    path.write_bytes(resign(blob, edit=edit))
    with pytest.raises(FormatError, match=message):
        vmsnap.open(str(path))


@pytest.mark.parametrize("index_memory", [0, 1 << 30], ids=["index-mapped", "index-in-memory"])
def test_any_damage_to_the_index_is_reported_as_its_digest_first(snapshot, tmp_path, monkeypatch, index_memory):
    """The index is decoded while it is read and hashed: a flipped byte that also makes it
    undecodable is still reported as the digest failure, never as a malformed index."""
    from vmsnap.format import reader

    monkeypatch.setattr(reader, "INDEX_MEMORY_BYTES", index_memory)
    _, blob = snapshot
    trailer = S.Trailer.parse(blob[-S.TRAILER_SIZE:])
    path = tmp_path / "bad.vms"
    for o in range(trailer.index_offset, trailer.index_offset + trailer.index_size):
        damaged = bytearray(blob)
        damaged[o] ^= 0x80
        path.write_bytes(bytes(damaged))
        with pytest.raises(IntegrityError, match=rf"index failed its digest \(offset {trailer.index_offset}\)"):
            vmsnap.open(str(path))


# -- crafted files at random: every digest valid, index fields changed ------------------

_TABLE_DTYPES = {"frames": S.FRAME_DTYPE, "records": S.RECORD_DTYPE, "sparse_words": S.SPARSE_WORD_DTYPE}


def _lie(rng, fields):
    """Change one index field of a snapshot to a value near its own, or far off."""
    import numpy as np

    what = rng.choice([*_TABLE_DTYPES, "sparse_offsets", "frame_pages", "data_pages", "region"])
    if what in ("frame_pages", "data_pages"):
        fields[what] = max(0, fields[what] + rng.choice([-2, -1, 1, 2]))
        return
    if what == "region":
        key = rng.choice(["size", "base"])
        region = fields["regions"][0]
        region[key] = max(0, region[key] + rng.choice([-512, -1, 1, 5, 512]))
        return
    dtype = _TABLE_DTYPES.get(what, np.dtype("<u8"))
    table = np.frombuffer(fields[what], dtype).copy()
    if not len(table):
        return
    i = rng.randrange(len(table))
    column = table[rng.choice([n for n in dtype.names if dtype[n].kind in "ui"])] if dtype.names else table
    old, top = int(column[i]), int(np.iinfo(column.dtype).max)
    new = rng.choice([0, 1, old - 1, old + 1, 2 * old, top, int(column[len(table) - 1 - i]), rng.randrange(top + 1)])
    column[i] = min(max(new, 0), top)
    fields[what] = table.tobytes()


@given(st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_crafted_index_is_one_line_and_a_code_or_the_original_bytes(snapshot, tmp_path, data):
    """What a hostile host could write: consistent digests over an index that lies. Every
    command ends with a documented exit code and one line, and never with other bytes."""
    from click.testing import CliRunner

    from vmsnap.cli import main

    image, blob = snapshot

    rng = data.draw(st.randoms(use_true_random=False))  # uniform choices: a rare field is drawn as often

    def edit(fields):
        for _ in range(rng.randint(1, 3)):
            _lie(rng, fields)

    path, out = tmp_path / "crafted.vms", tmp_path / "out.raw"
    path.write_bytes(resign(blob, edit=edit))
    out.unlink(missing_ok=True)
    for command in (["restore", str(path), "-o", str(out)], ["verify", str(path)], ["info", str(path), "--json"],
                    ["cat", str(path), "--offset", "0", "--length", str(len(image))]):
        result = CliRunner().invoke(main, command)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert result.exit_code in (0, 4, 90), (command[0], result.output)
        if result.exit_code:
            assert result.output.startswith("vmsnap: error: ") and result.output.count("\n") == 1, result.output
        elif command[0] == "restore":
            assert out.read_bytes() == image
        elif command[0] == "cat":
            assert result.stdout_bytes == image


def test_a_snapshot_cut_while_it_is_read_says_how_much_is_left(tmp_path):
    from vmsnap.format.reader import Snapshot

    data = build_image([("random", i) for i in range(64)])
    raw, snap = tmp_path / "in.raw", tmp_path / "s.vms"
    raw.write_bytes(data)
    api.save(str(raw), str(snap), frame_size=64 * 1024)
    with Snapshot(str(snap)) as s:
        os.truncate(snap, 100_000)  # after the open: its index still describes every frame
        with pytest.raises(IntegrityError, match=r"frame 1 at offset (\d+) needs \d+ bytes, file has") as info:
            s.read(0, len(data))
    offset = int(re.search(r"at offset (\d+)", str(info.value)).group(1))
    assert str(info.value).endswith(f"file has {100_000 - offset}")  # the size now, not at the open
