"""save -> restore / read is byte-identical, for every page kind, size and tail."""

import io
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import vmsnap
from vmsnap import api
from vmsnap.format import structs as S

from conftest import build_image

PAGE_SPECS = st.one_of(
    st.just(("zero",)),
    st.tuples(st.just("fill"), st.integers(0, 255)),
    st.tuples(st.just("unit"), st.binary(min_size=1, max_size=80)),
    st.tuples(st.just("sparse"), st.dictionaries(st.integers(0, 63), st.integers(1, 2**64 - 1), max_size=20)),
    st.tuples(st.just("random"), st.integers(0, 5)),
)


@st.composite
def images(draw):
    page_size = draw(st.sampled_from([512, 1024, 4096]))
    specs = draw(st.lists(PAGE_SPECS, max_size=40))
    # copies of earlier pages (canonical sharing), placed anywhere after their source
    for _ in range(draw(st.integers(0, 6))):
        if specs:
            src = draw(st.integers(0, len(specs) - 1))
            specs.insert(draw(st.integers(src + 1, len(specs))), ("copy", src))
    # copies at 512-byte offsets across two earlier pages (slices of the stored data)
    for _ in range(draw(st.integers(0, 4))):
        if specs:
            src = draw(st.integers(0, len(specs) - 1))
            offset = 512 * draw(st.integers(1, max(1, page_size // 512 - 1)))
            specs.insert(draw(st.integers(src + 1, len(specs))), ("shift", src, offset % page_size))
    tail = draw(st.binary(max_size=page_size - 1))
    return page_size, build_image(specs, page_size, tail)


def save_restore(tmp_path, data, **opts):
    raw = tmp_path / "in.raw"
    raw.write_bytes(data)
    snap = tmp_path / "s.vms"
    out = tmp_path / "out.raw"
    # format="raw": arbitrary bytes may start with a registered magic (the .vms one, say)
    api.save(str(raw), str(snap), format="raw", **opts)
    api.restore(str(snap), str(out))
    return snap, out.read_bytes()


@given(images(), st.sampled_from([1, 3, 64]))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_round_trip_is_identical(tmp_path, small_batches, image, frame_pages):
    page_size, data = image
    snap, restored = save_restore(tmp_path, data, page_size=page_size, frame_size=frame_pages * page_size)
    assert restored == data
    with vmsnap.open(str(snap)) as s:
        assert s.read(0, len(data)) == data
        if data:
            a = len(data) // 3
            assert s.read(a, len(data) // 2) == data[a:a + len(data) // 2]
        stats = s.stats()
    assert sum(stats["pages"].values()) == -(-len(data) // page_size)
    assert stats["image_bytes"] == len(data)


@given(images(), st.sampled_from([1, 3]), st.sampled_from([2, 5, 1024]), st.sampled_from([2, 16]),
       st.floats(0, 1), st.floats(0, 1))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_range_reads_the_same_bytes_with_any_window(tmp_path, small_batches, monkeypatch, image, frame_pages,
                                                         window_pages, short_pages, start, length):
    """Records of a few pages are put together a window at a time: whatever the window and
    the range, the bytes are the image's, restored whole or read in part."""
    from vmsnap.format import reader

    page_size, data = image
    monkeypatch.setattr(reader, "SEGMENT_BYTES", window_pages * page_size)
    monkeypatch.setattr(reader, "SMALL_PIECE", short_pages * page_size)
    monkeypatch.setattr(reader, "WINDOW_RECORDS", 2)
    snap, restored = save_restore(tmp_path, data, page_size=page_size, frame_size=frame_pages * page_size)
    assert restored == data
    a = int(start * len(data))
    n = int(length * (len(data) - a))
    with vmsnap.open(str(snap)) as s:
        assert s.read(a, n) == data[a:a + n]
        assert s.read(a, n, check_blocks=True) == data[a:a + n]


def test_page_kinds_become_the_right_records(tmp_path):
    spec = [("zero",)] * 5 + [("fill", 0xFF)] * 3 + [("unit", b"\xde\xad\xbe\xef")] + \
           [("sparse", {3: 7, 9: 1})] + [("random", 1), ("random", 2), ("copy", 10), ("copy", 11), ("copy", 10)]
    data = build_image(spec)
    snap, restored = save_restore(tmp_path, data)
    assert restored == data
    stats = api.info(str(snap))
    assert stats["pages"] == {"zero": 5, "pattern": 4, "sparse": 1, "data": 2, "ref": 3, "slice": 0}
    assert stats["pattern_pages"] == {"byte": 3, "word32": 1}
    assert stats["pages_shared"] == 2 and stats["pages_sharing"] == 3
    assert stats["data_pages"] == 2


def test_copies_beyond_the_digest_window_are_stored_again(tmp_path, small_batches, monkeypatch):
    from vmsnap.format import dedup

    monkeypatch.setattr(dedup, "MAX_SLOTS", 16)  # remembers the last 12-24 contents
    # page 0 is used again right away and after 40 new contents; page 1 only after them
    spec = [("random", 0), ("random", 1), ("copy", 0)] + [("random", 10 + i) for i in range(40)] + \
           [("copy", 1), ("copy", 0), ("copy", 41), ("copy", 1)]
    data = build_image(spec)
    snap, restored = save_restore(tmp_path, data, slice_window=0)
    assert restored == data
    with vmsnap.open(str(snap)) as s:
        kinds = [S.RECORD_KINDS[k] for k in s.records["kind"].tolist()]
        counts = s.records["count"].tolist()
    per_page = [k for k, c in zip(kinds, counts) for _ in range(c)]
    assert per_page[:3] == ["data", "data", "ref"]
    # page 1 was forgotten and page 0 too (its last use was 40 contents ago): stored anew, then
    # shared again; page 41 (recent) is still remembered
    assert per_page[-4:] == ["data", "data", "ref", "ref"]
    assert api.info(str(snap))["data_pages"] == 2 + 40 + 2


def test_copies_off_a_page_boundary_become_slices(tmp_path, small_batches):
    # pages 0-3 random and stored back to back; then copies starting 512, 1536 and 3584
    # bytes into page 0, 1 and 2 (a tar member's content sits 512 bytes past a header)
    spec = [("random", i) for i in range(4)] + [("shift", 0, 512), ("shift", 1, 512), ("shift", 2, 512),
                                                ("shift", 1, 1536), ("zero",), ("shift", 0, 3584), ("shift", 0, 512)]
    data = build_image(spec)
    snap, restored = save_restore(tmp_path, data)
    assert restored == data
    stats = api.info(str(snap))
    assert stats["pages"] == {"zero": 1, "pattern": 0, "sparse": 0, "data": 4, "ref": 0, "slice": 6}
    with vmsnap.open(str(snap)) as s:
        assert [s.page(i) for i in range(len(spec))] == [data[i * 4096:(i + 1) * 4096] for i in range(len(spec))]
        # three consecutive stream spans are one record
        slices = s.records[s.records["kind"] == S.REC_SLICE]
        assert slices["arg"].tolist() == [512, 4096 + 1536, 3584, 512]
        assert slices["count"].tolist() == [3, 1, 1, 1]


def test_long_matching_and_frame_sizes_keep_the_image(tmp_path):
    from genimage import image_bytes

    data = image_bytes(3 << 20, seed=12)
    for opts in ({"long_matching": True}, {"frame_size": 1 << 20, "long_matching": True}):
        snap, restored = save_restore(tmp_path, data, **opts)
        assert restored == data


def test_a_snapshot_with_slices_is_read_as_an_input(tmp_path, small_batches):
    # re-saving reads the slices back through the .vms source, with every digest checked
    spec = [("random", i) for i in range(8)] + [("shift", i, 512 * (1 + i % 7)) for i in range(7)] + [("zero",)] * 3
    data = build_image(spec)
    first, _ = save_restore(tmp_path, data)
    assert api.info(str(first))["pages"]["slice"] == 7
    second = tmp_path / "again.vms"
    api.save(str(first), str(second), format="vms", slice_window=0)
    again = api.info(str(second))
    assert again["image_digest"] == api.info(str(first))["image_digest"] and again["pages"]["slice"] == 0
    out = tmp_path / "again.raw"
    api.restore(str(second), str(out))
    assert out.read_bytes() == data


def test_slice_records_need_the_slices_flag(tmp_path, small_batches):
    from test_attachments import _set_flags

    data = build_image([("random", i) for i in range(4)] + [("shift", 0, 512)])  # the copy in the second batch
    snap, _ = save_restore(tmp_path, data)
    _set_flags(snap, 0)  # as a writer that never announced slices
    with pytest.raises(vmsnap.errors.FormatError, match="unknown record kind"):
        vmsnap.open(str(snap))


def test_slices_off_restore_the_same_image_larger(tmp_path, small_batches):
    from genimage import image_bytes

    data = image_bytes(8 << 20, seed=11)
    with_slices, restored = save_restore(tmp_path, data)
    assert restored == data
    raw = tmp_path / "in.raw"
    without = tmp_path / "plain.vms"
    api.save(str(raw), str(without), slice_window=0)
    a, b = api.info(str(with_slices)), api.info(str(without))
    assert a["pages"]["slice"] > 0 and b["pages"]["slice"] == 0
    assert a["image_digest"] == b["image_digest"]
    assert a["data_pages"] + a["pages"]["slice"] == b["data_pages"]
    out = tmp_path / "plain.raw"
    api.restore(str(without), str(out))
    assert out.read_bytes() == data


def test_restore_with_a_tiny_canonical_cache_reads_slices_again(tmp_path, small_batches, monkeypatch):
    from vmsnap.format import reader

    monkeypatch.setattr(reader, "KEEP_CANONICAL_BYTES", 1)  # keeps one page
    spec = [("random", i) for i in range(8)] + [("shift", i, 512 * (1 + i % 7)) for i in (6, 0, 3, 6, 1)]
    data = build_image(spec)
    snap, restored = save_restore(tmp_path, data, frame_size=2 * 4096)
    assert restored == data
    assert api.info(str(snap))["pages"]["slice"] == 5


def test_zero_runs_collapse_into_one_record(tmp_path):
    # 1 GiB of zero pages as a sparse file: one record, a snapshot of a few hundred bytes
    raw = tmp_path / "zero.raw"
    with open(raw, "wb") as fh:
        fh.truncate(1 << 30)
    snap = tmp_path / "z.vms"
    api.save(str(raw), str(snap))
    stats = api.info(str(snap))
    assert stats["records"] == 1 and stats["pages"]["zero"] == (1 << 30) // 4096
    assert os.path.getsize(snap) < 16384  # block digests are the only per-MiB cost: 16 bytes each, compressed


def test_output_is_deterministic_and_independent_of_jobs(tmp_path, small_batches):
    from genimage import image_bytes

    data = image_bytes(6 << 20, seed=3)
    raw = tmp_path / "g.raw"
    raw.write_bytes(data)
    outs = []
    for jobs in (1, 2, 4):
        path = tmp_path / f"j{jobs}.vms"
        api.save(str(raw), str(path), jobs=jobs, frame_size=1 << 20)
        outs.append(path.read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_realistic_image_round_trip(tmp_path):
    from genimage import image_bytes

    data = image_bytes((24 << 20) + 1234, seed=5)
    snap, restored = save_restore(tmp_path, data, frame_size=4 << 20)
    assert restored == data
    stats = api.info(str(snap))
    assert all(stats["pages"][k] > 0 for k in ("zero", "pattern", "sparse", "data", "ref"))
    assert stats["snapshot_bytes"] < len(data) / 3


def test_restore_writes_holes_for_zero_runs(tmp_path):
    data = build_image([("random", 1)] + [("zero",)] * 2048 + [("random", 2)])
    raw = tmp_path / "in.raw"
    raw.write_bytes(data)
    snap = tmp_path / "s.vms"
    api.save(str(raw), str(snap))
    sparse, dense = tmp_path / "sparse.raw", tmp_path / "dense.raw"
    api.restore(str(snap), str(sparse))
    api.restore(str(snap), str(dense), sparse=False)
    assert sparse.read_bytes() == dense.read_bytes() == data
    assert os.stat(sparse).st_blocks * 512 < os.stat(dense).st_blocks * 512 - (4 << 20)


def test_trailing_zero_run_keeps_file_size(tmp_path):
    data = build_image([("random", 1)] + [("zero",)] * 100, tail=b"\0" * 100)
    snap, restored = save_restore(tmp_path, data)
    assert restored == data


def test_empty_input(tmp_path):
    snap, restored = save_restore(tmp_path, b"")
    assert restored == b""
    assert api.info(str(snap))["image_bytes"] == 0


def test_two_page_sizes_and_large_pages(tmp_path):
    data = build_image([("random", 1), ("zero",), ("fill", 3), ("copy", 0)], page_size=2 << 20)
    snap, restored = save_restore(tmp_path, data, page_size=2 << 20, frame_size=4 << 20)
    assert restored == data
    assert api.info(str(snap))["pages"] == {"zero": 1, "pattern": 1, "sparse": 0, "data": 1, "ref": 1, "slice": 0}


def test_read_rejects_ranges_beyond_the_image(tmp_path):
    data = build_image([("random", 1)])
    snap, _ = save_restore(tmp_path, data)
    with vmsnap.open(str(snap)) as s:
        assert s.read(4000, 96) == data[4000:]
        with pytest.raises(vmsnap.errors.FormatError):
            s.read(4000, 97)


def test_multi_region_snapshot_restores_flat_and_by_region(tmp_path):
    from vmsnap.format.writer import SnapshotWriter

    a = build_image([("random", 1), ("zero",)])
    b = build_image([("random", 1), ("fill", 9)])  # b's first page duplicates a's
    path = tmp_path / "m.vms"
    with open(path, "wb") as fh:
        w = SnapshotWriter(fh, source="test")
        w.add_region("low", 0, [a])
        w.add_region("high", 0x10000, [b])
        w.close()
    with vmsnap.open(str(path)) as s:
        assert [r.name for r in s.regions] == ["low", "high"]
        assert s.read(0x10000, len(b)) == b
        assert s.read(len(a), 0x10000 - len(a)) == bytes(0x10000 - len(a))  # the gap reads as zeros
        assert s.read(0, 10, region="high") == b[:10]
        assert s.stats()["pages"]["ref"] == 1
    flat = tmp_path / "flat.raw"
    api.restore(str(path), str(flat))
    assert flat.read_bytes() == a + bytes(0x10000 - len(a)) + b
    one = tmp_path / "high.raw"
    api.restore(str(path), str(one), region="high")
    assert one.read_bytes() == b


def test_stdin_and_stdout(tmp_path, monkeypatch, capfdbinary):
    data = build_image([("random", 1), ("zero",), ("fill", 1)], tail=b"xyz")
    snap = tmp_path / "s.vms"

    class FakeStdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr("sys.stdin", FakeStdin)
    api.save("-", str(snap))
    api.restore(str(snap), "-")
    assert capfdbinary.readouterr().out == data


@pytest.mark.slow
def test_realistic_1gib_dump_round_trip(tmp_path):
    """The benchmark's dump: 1 GiB from fixtures/genimage.py, saved, verified, restored, compared."""
    import filecmp

    from genimage import generate

    raw = tmp_path / "guest.raw"
    generate(str(raw), 1 << 30, seed=1)
    snap = tmp_path / "guest.vms"
    api.save(str(raw), str(snap))
    stats = api.info(str(snap))
    assert stats["image_bytes"] == 1 << 30 and stats["compression_ratio"] > 5
    assert api.verify(str(snap))["ok"]
    out = tmp_path / "restored.raw"
    api.restore(str(snap), str(out))
    assert filecmp.cmp(raw, out, shallow=False)


def test_resaving_a_snapshot_skips_its_zero_runs(tmp_path, monkeypatch):
    """A .vms input hands zero runs over without bytes; the new snapshot is the same image."""
    from vmsnap import pages as P

    raw = tmp_path / "big.raw"
    with open(raw, "wb") as fh:
        fh.write(build_image([("random", 1), ("fill", 2)]))
        fh.truncate(1 << 30)  # 1 GiB, almost all of it a hole
        fh.seek((1 << 30) - 4096)
        fh.write(build_image([("random", 3)]))
    first = tmp_path / "a.vms"
    api.save(str(raw), str(first))
    classified = []
    real = P.classify
    monkeypatch.setattr(P, "classify", lambda pages, *a, **k: classified.append(len(pages)) or real(pages, *a, **k))
    second = tmp_path / "b.vms"
    api.save(str(first), str(second), format="vms")
    a, b = api.info(str(first)), api.info(str(second))
    assert a["image_digest"] == b["image_digest"] and a["pages"] == b["pages"]
    assert b["records"] == a["records"] == 4
    # only the pages around the data were classified, not the 262,144 zero pages
    assert sum(classified) < 4096


@pytest.mark.parametrize("jobs", [1, 2, 4])
def test_restore_with_a_tiny_canonical_cache_is_still_identical(tmp_path, monkeypatch, small_batches, jobs):
    """References beyond the kept canonical pages decode their frame again, into the same
    reused frame buffers as the pass's own decoding: same bytes, with any number of decoders."""
    from vmsnap.format import reader

    monkeypatch.setattr(reader, "KEEP_CANONICAL_BYTES", 1)  # keeps one page
    spec = [("random", i) for i in range(12)] + [("copy", i) for i in (11, 0, 5, 3, 11, 7)] + \
           [("random", 50)] * 3 + [("copy", 1)] + [("shift", i, 512) for i in (2, 9)]
    data = build_image(spec, page_size=1024)
    raw = tmp_path / "in.raw"
    raw.write_bytes(data)
    snap, out = tmp_path / "s.vms", tmp_path / "out.raw"
    api.save(str(raw), str(snap), format="raw", page_size=1024, frame_size=2 * 1024)
    api.restore(str(snap), str(out), jobs=jobs)
    assert out.read_bytes() == data
    pages = api.info(str(snap))["pages"]
    assert pages["ref"] == 9 and pages["slice"] == 2


@pytest.mark.parametrize("keep_pages", [1 << 20, 1])
def test_canonical_pages_are_released_after_their_last_reference(tmp_path, monkeypatch, keep_pages):
    from vmsnap.format import reader

    monkeypatch.setattr(reader, "KEEP_CANONICAL_BYTES", keep_pages * 4096)
    spec = [("random", i) for i in range(8)] + [("copy", 2), ("copy", 5), ("random", 20), ("copy", 2)] + \
           [("shift", i, 512 * (1 + i)) for i in (0, 4)]
    data = build_image(spec)
    snap, restored = save_restore(tmp_path, data, frame_size=2 * 4096)
    assert restored == data
    with vmsnap.open(str(snap)) as s:
        canonical = reader.CanonicalPages(s, [s.region_records(r) for r in s.regions])
        out = b"".join(bytes(p) for p in s.segments(s.regions[0], canonical=canonical))
        canonical.close()
        assert out == data
        assert canonical.wanted_count > 0
        assert (canonical.remaining == 0).all()  # every planned read was made
        assert (canonical._spill_pages > 0) == (keep_pages == 1)  # one page in memory: the others spilled
        assert canonical.free_count == len(canonical.store)  # every kept page given back
        assert (canonical.slot == -1).all() and (canonical.spilled == -1).all()


def _shuffled_copy(pages: int) -> bytes:
    """Distinct pages, then the same pages in random order: shared pages as a guest
    scatters them, each referenced by a record of its own."""
    first = build_image([("random", 100 + i) for i in range(pages)])
    order = np.random.default_rng(7).permutation(pages)
    return first + b"".join(first[i * 4096:(i + 1) * 4096] for i in order)


@pytest.fixture
def counted_decodes(monkeypatch):
    from vmsnap.format.reader import Snapshot

    decoded = []
    decode = Snapshot._decode_frame
    monkeypatch.setattr(Snapshot, "_decode_frame", lambda self, k: decoded.append(k) or decode(self, k))
    return decoded


def test_a_cat_of_the_whole_image_decodes_each_frame_once(tmp_path, monkeypatch, counted_decodes):
    """The pages a range refers to that are stored inside it are not gathered beforehand
    (with a read cache of one frame, each would cost a second decoding): a run of 300 data
    pages spans whole words of the set of pages stored in the range."""
    from vmsnap.format import reader

    monkeypatch.setattr(reader, "READ_CACHE_BYTES", 16 * 4096)
    data = build_image([("random", 500 + i) for i in range(300)] + [("copy", i) for i in range(0, 300, 7)])
    snap, _ = save_restore(tmp_path, data, frame_size=16 * 4096)
    counted_decodes.clear()
    assert api.cat(str(snap), 0, len(data)) == data
    assert sorted(counted_decodes) == list(range(-(-300 // 16)))


def test_references_in_random_order_beyond_memory_read_the_spill_not_their_frames(tmp_path, monkeypatch,
                                                                                  counted_decodes):
    import tempfile

    from vmsnap.format import reader

    monkeypatch.setattr(reader, "KEEP_CANONICAL_BYTES", 8 * 4096)  # 8 of the 64 shared pages in memory
    spill_dir = tmp_path / "tmp"
    spill_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    made = []
    real = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: made.append(kw) or real(**kw))
    data = _shuffled_copy(64)
    snap, restored = save_restore(tmp_path, data, frame_size=4 * 4096)
    assert restored == data
    assert api.info(str(snap))["pages"]["ref"] == 64
    # Each of the 16 frames decoded once; decoding again per reference would be ~60 more.
    assert sorted(counted_decodes) == list(range(16))
    assert len(made) == 1 and os.listdir(spill_dir) == []  # one spill, unlinked


def _shuffled_slices(pages: int) -> bytes:
    """Distinct pages, then copies of them at 512-byte offsets (a tar of the same files)
    in random order, each one a SLICE record of its own, among a few whole copies."""
    first = build_image([("random", 300 + i) for i in range(pages + 1)])
    rng = np.random.default_rng(9)
    order, shifts = rng.permutation(pages), 512 * rng.integers(0, 8, pages)
    return first + b"".join(first[i * 4096 + s:(i + 1) * 4096 + s] for i, s in zip(order, shifts))


@pytest.mark.parametrize("keep_pages", [1 << 20, 3])
def test_slices_in_random_order_restore_and_read_with_each_frame_decoded_once(tmp_path, monkeypatch, small_batches,
                                                                               counted_decodes, keep_pages):
    from vmsnap.format import reader

    monkeypatch.setattr(reader, "KEEP_CANONICAL_BYTES", keep_pages * 4096)
    data = _shuffled_slices(64)
    snap, restored = save_restore(tmp_path, data, frame_size=4 * 4096)
    assert restored == data
    pages = api.info(str(snap))["pages"]
    assert pages["slice"] + pages["ref"] == 64 and pages["slice"] > 40
    assert sorted(counted_decodes) == list(range(17))  # 65 data pages in frames of 4
    counted_decodes.clear()
    with vmsnap.open(str(snap)) as s:
        assert s.read(65 * 4096 + 100, 63 * 4096) == data[65 * 4096 + 100:128 * 4096 + 100]
    assert len(counted_decodes) == len(set(counted_decodes)) >= 15  # one piece: no frame decoded twice


def test_gathered_pages_come_from_their_own_frames_in_any_order(tmp_path):
    """First and last in one frame, others in another: found by fuzzing windows of REF pages."""
    data = build_image([("random", i) for i in range(8)])
    snap, _ = save_restore(tmp_path, data, frame_size=2 * 4096)
    with vmsnap.open(str(snap)) as s:
        for order in ([0, 2, 1], [1, 5, 0], [7, 0, 6], [3, 3, 2], [4]):
            got = s.gather_data_pages(np.array(order, np.uint64))
            assert [bytes(p) for p in got] == [data[i * 4096:(i + 1) * 4096] for i in order]


def test_reading_pages_shared_in_random_order_decodes_each_frame_once(tmp_path, counted_decodes):
    data = _shuffled_copy(64)
    snap, _ = save_restore(tmp_path, data, frame_size=4 * 4096)
    counted_decodes.clear()
    with vmsnap.open(str(snap)) as s:
        assert s.read(64 * 4096, 64 * 4096) == data[64 * 4096:]
    assert sorted(counted_decodes) == list(range(16))


def test_a_full_spill_is_exit_6_and_leaves_no_output(tmp_path, monkeypatch):
    import tempfile

    from click.testing import CliRunner

    from conftest import char_device
    from vmsnap.cli import main
    from vmsnap.format import reader

    full = char_device(tmp_path, "full", 7)
    monkeypatch.setattr(reader, "KEEP_CANONICAL_BYTES", 4096)
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda **kw: open(full, "r+b"))
    raw, snap, out = tmp_path / "in.raw", tmp_path / "s.vms", tmp_path / "out.raw"
    raw.write_bytes(_shuffled_copy(8))
    api.save(str(raw), str(snap), format="raw")
    result = CliRunner().invoke(main, ["restore", str(snap), "-o", str(out), "-q"])
    assert result.exit_code == 6, result.output
    assert result.output.strip().splitlines() == [
        f"vmsnap: error: temporary file for shared pages in {tempfile.gettempdir()}: no space left on device"]
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["full", "in.raw", "s.vms"]


@given(images(), st.sampled_from([1, 3]), st.integers(1, 3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_round_trip_with_memory_for_a_few_shared_pages_is_identical(tmp_path, small_batches, monkeypatch, image,
                                                                     frame_pages, keep_pages):
    from vmsnap.format import reader

    page_size, data = image
    monkeypatch.setattr(reader, "KEEP_CANONICAL_BYTES", keep_pages * page_size)
    _, restored = save_restore(tmp_path, data, page_size=page_size, frame_size=frame_pages * page_size)
    assert restored == data


def test_page_access_and_bytes_per_kind(tmp_path):
    data = build_image([("random", 1), ("zero",), ("fill", 4)], tail=b"end")
    snap, _ = save_restore(tmp_path, data)
    with vmsnap.open(str(snap)) as s:
        assert [s.page(i) for i in range(4)] == [data[0:4096], data[4096:8192], data[8192:12288], b"end"]
        with pytest.raises(vmsnap.errors.FormatError, match="no page 4"):
            s.page(4)
        stats = s.stats()
    assert stats["image_bytes_by_kind"] == {"zero": 4096, "pattern": 4096, "sparse": 4096, "data": 4096, "ref": 0, "slice": 0}


@pytest.mark.parametrize("page_size", [4096, 2 << 20])
def test_holes_of_a_sparse_input_are_not_read(tmp_path, monkeypatch, page_size):
    """A memory-backend-file's untouched pages are holes: saved as zero pages without reading them."""
    from vmsnap import pages as P
    from vmsnap.sources import base

    raw = tmp_path / "sparse.raw"
    data = build_image([("random", 1), ("random", 2)], page_size=4096)
    layout = [(0, data), (5 << 20, data[:4096]), ((5 << 20) + 8192, data), (100 << 20, b"tail")]
    with open(raw, "wb") as fh:
        for offset, blob in layout:
            fh.seek(offset)
            fh.write(blob)
    expected = bytearray((100 << 20) + 4)
    for offset, blob in layout:
        expected[offset:offset + len(blob)] = blob
    classified = []
    real = P.classify
    monkeypatch.setattr(P, "classify", lambda pages, *a, **k: classified.append(pages.size) or real(pages, *a, **k))
    monkeypatch.setattr(base, "MIN_HOLE", 16384)
    snap = tmp_path / "s.vms"
    api.save(str(raw), str(snap), page_size=page_size)
    out = tmp_path / "out.raw"
    api.restore(str(snap), str(out))
    assert out.read_bytes() == bytes(expected)
    if page_size == 4096:  # only the data extents' pages went through the classifier
        assert sum(classified) < (12 << 20)


def test_restore_reuses_frame_buffers_and_leaves_earlier_views_alone(tmp_path, monkeypatch):
    """produce() decodes into recycled buffers; a view the caller took before stays intact."""
    from vmsnap.format import reader

    spec = [("random", i) for i in range(40)] + [("copy", i) for i in (3, 30, 1, 39)] + \
           [("shift", i, 512 * (1 + i % 7)) for i in (2, 17, 33)] + [("random", 99)] * 2
    data = build_image(spec)
    snap, restored = save_restore(tmp_path, data, frame_size=2 * 4096)
    assert restored == data

    def as_bytes(pieces):
        return b"".join(bytes(p) for p in pieces)  # bytes(int) is that many zeros

    fresh = []
    take = reader._FramePool.take
    monkeypatch.setattr(reader._FramePool, "take",
                        lambda pool, n: fresh.append((buf := take(pool, n)).base is None) or buf)
    with vmsnap.open(str(snap)) as s:
        early = list(s.iter_range(0, 3 * 4096))  # views of decoded frames
        early_bytes = as_bytes(early)
        seen = []
        s.produce(lambda region, piece: seen.append(bytes(piece)))
        assert b"".join(seen) == data
        assert as_bytes(early) == early_bytes
    assert len(fresh) > 6 and fresh.count(False) > len(fresh) // 2  # most frames went into a reused buffer


def test_frame_pool_reuses_a_retired_buffer_only_after_recycle():
    from vmsnap.format.reader import _FramePool

    pool = _FramePool()
    first = pool.take(4096)
    frame = first.reshape(1, 4096)
    pool.retire(frame)
    assert pool.take(4096).base is None  # still retired: a fresh buffer
    pool.recycle()
    again = pool.take(1024)  # a smaller frame fits in the recycled buffer
    assert again.base is first and len(again) == 1024
    assert pool.take(4096).base is None  # it was taken: fresh again


def test_a_read_keeps_the_frames_its_shared_pages_come_back_to(tmp_path, counted_decodes):
    """Copies of two runs of 16 pages, alternating: a read outside a restore keeps more
    than two decoded frames, so each frame is decoded once (it was once per copy)."""
    pages = [("random", 500 + i) for i in range(64)]
    copies = [("copy", i) for i in range(16)] + [("copy", i) for i in range(32, 48)]
    data = build_image(pages + copies + copies)
    snap, _ = save_restore(tmp_path, data, frame_size=4 * 4096)
    assert api.info(str(snap))["pages"]["ref"] == 64
    counted_decodes.clear()
    with vmsnap.open(str(snap)) as s:
        assert s.read(64 * 4096, 64 * 4096) == data[64 * 4096:]
    assert sorted(counted_decodes) == [0, 1, 2, 3, 8, 9, 10, 11]


@pytest.mark.parametrize("window_records", [2, 1 << 30])  # short records put together, or one at a time
def test_a_read_decodes_each_frame_once_however_many_its_shared_pages_cycle_through(tmp_path, monkeypatch,
                                                                                    counted_decodes, window_records):
    """Shared pages that cycle through more frames than reads keep decoded: their frames
    are gathered once before the range is produced (a cat of a whole 1 GiB snapshot
    decoded each frame ten times)."""
    from vmsnap.format import reader

    monkeypatch.setattr(reader, "READ_CACHE_BYTES", 1)  # the two frames any reader keeps
    monkeypatch.setattr(reader, "WINDOW_RECORDS", window_records)
    pages = [("random", 700 + i) for i in range(64)]
    cycling = [("copy", (i % 8) * 8 + i // 8) for i in range(64)]  # frames 0, 2, ..., 14, 0, 2, ...
    data = build_image(pages + [("random", 900)] + cycling)
    snap, _ = save_restore(tmp_path, data, frame_size=4 * 4096)
    assert api.info(str(snap))["pages"]["ref"] == 64
    with vmsnap.open(str(snap)) as s:
        for start, length in ((65, 64), (70, 20), (64, 1)):
            counted_decodes.clear()
            assert s.read(start * 4096, length * 4096, check_blocks=start == 70) == \
                data[start * 4096:(start + length) * 4096]
            assert len(counted_decodes) == len(set(counted_decodes)), counted_decodes


@pytest.mark.parametrize("check_blocks", [False, True])
def test_a_long_range_keeps_two_frames_and_lookups_keep_more(tmp_path, monkeypatch, counted_decodes, check_blocks):
    """A long range takes its frames in order (its shared pages are gathered first): the
    lookup cache would only hold memory. A lookup keeps frames for the next one."""
    from vmsnap.format import reader
    from vmsnap.format.reader import Snapshot

    monkeypatch.setattr(reader, "PASS_BYTES", 64 * 4096)
    data = _shuffled_copy(96)  # 96 data pages in 24 frames of 4, then each shared in random order
    snap, _ = save_restore(tmp_path, data, frame_size=4 * 4096)
    counted_decodes.clear()
    most = []
    frame = Snapshot._frame
    monkeypatch.setattr(Snapshot, "_frame", lambda self, k: frame(self, k) if most.append(len(self._cache)) is None
                        else None)
    with vmsnap.open(str(snap)) as s:
        assert s.read(0, len(data), check_blocks=check_blocks) == data
        assert 0 < max(most) <= 2 and s._ranges_in_pass == 0
        assert sorted(counted_decodes) == list(range(24))  # each frame decoded once still
        pieces = s.iter_range(0, len(data))
        next(pieces)
        assert s._ranges_in_pass == 1
        pieces.close()  # a range left early ends its pass
        assert s._ranges_in_pass == 0
        most.clear()
        for page in range(0, 96, 4):  # a page of each of 24 frames: lookups
            assert s.page(page) == data[page * 4096:(page + 1) * 4096]
        assert max(most) > 2


def test_reading_one_shared_page_decodes_only_its_frame(tmp_path, counted_decodes):
    data = _shuffled_copy(64)
    snap, _ = save_restore(tmp_path, data, frame_size=4 * 4096)
    with vmsnap.open(str(snap)) as s:
        for page in (64, 100, 127):
            counted_decodes.clear()
            assert s.page(page) == data[page * 4096:(page + 1) * 4096]
            assert len(counted_decodes) <= 1  # 0 when the frame is still cached


def _random_spec(rng, pages, page_size):
    """Page specs drawn by a seeded generator: every kind, a quarter of them copies."""
    spec = []
    for _ in range(pages):
        r = rng.random()
        if r < 0.25:
            spec.append(("zero",))
        elif r < 0.35:
            spec.append(("fill", rng.randrange(256)))
        elif r < 0.42:
            spec.append(("unit", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))))
        elif r < 0.5:
            spec.append(("sparse", {rng.randrange(page_size // 8): rng.randrange(1, 2**63) for _ in range(3)}))
        elif r < 0.75 or not spec:
            spec.append(("random", rng.randrange(10**6)))
        elif r < 0.9:
            spec.append(("copy", rng.randrange(len(spec))))
        else:
            spec.append(("shift", rng.randrange(len(spec)), 512 * rng.randrange(1, max(2, page_size // 512))))
    return spec


@given(st.integers(0, 2**32))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_multi_region_snapshots_read_back_whole_in_part_and_by_region(tmp_path, monkeypatch, seed):
    """Up to 300 pages a region, regions stored in random order, and random frame sizes,
    batch sizes, windows, canonical budgets, digest windows and record blocks, the index and
    the plan of shared pages in memory or mapped from files: what a fuzzer found a window
    bug with."""
    import random

    from vmsnap.format import dedup, reader, writer
    from vmsnap.format.writer import SnapshotWriter

    rng = random.Random(seed)
    ps = rng.choice([512, 1024, 4096])
    monkeypatch.setattr(dedup, "MAX_SLOTS", rng.choice([4, 16, 64, 1 << 20]))
    monkeypatch.setattr(reader, "KEEP_CANONICAL_BYTES", ps * rng.choice([1, 2, 8, 1 << 20]))
    monkeypatch.setattr(reader, "WINDOW_RECORDS", rng.choice([2, 3, 32]))
    monkeypatch.setattr(reader, "SEGMENT_BYTES", ps * rng.choice([2, 7, 64, 1024]))
    monkeypatch.setattr(reader, "SMALL_PIECE", ps * rng.choice([1, 2, 16]))
    monkeypatch.setattr(reader, "RECORD_BLOCK", rng.choice([1, 2, 5, 1 << 16]))
    index_in_file = rng.random() < 0.5
    monkeypatch.setattr(reader, "INDEX_MEMORY_BYTES", 0 if index_in_file else 1 << 30)
    monkeypatch.setattr(reader, "PLAN_MEMORY_BYTES", rng.choice([0, 1 << 30]))
    monkeypatch.setattr(reader, "PLAN_CHUNK", rng.choice([1, 3, 1 << 18]))
    monkeypatch.setattr(writer, "BATCH_BYTES", rng.choice([ps * 4, 16384, 4 << 20]))
    regions = [(f"r{r}", r * (1 << 24) + rng.choice([0, ps]),
                build_image(_random_spec(rng, rng.randrange(300), ps), ps, rng.randbytes(rng.randrange(ps))))
               for r in range(rng.choice([1, 2, 3]))]
    path = tmp_path / "s.vms"
    with open(path, "wb") as fh:
        w = SnapshotWriter(fh, page_size=ps, frame_size=ps * rng.choice([1, 3, 16, 256]))
        for name, base, data in rng.sample(regions, len(regions)):
            w.add_region(name, base, [data])
        w.close()
    with vmsnap.open(str(path)) as s:
        assert (s._index_map is not None) == index_in_file
        refs = s.records[s.records["kind"] == S.REC_REF]  # stats() goes a block at a time; this, all at once
        targets = np.concatenate([np.arange(a, a + c) for a, c in zip(refs["arg"].tolist(), refs["count"].tolist())]
                                 + [np.zeros(0, np.int64)])
        stats = s.stats()
        assert (stats["pages_shared"], stats["pages_sharing"]) == (len(np.unique(targets)), len(targets))
        assert sum(stats["pages"].values()) == sum(-(-len(data) // ps) for _, _, data in regions)
        seen = {}
        s.produce(lambda r, p: seen.setdefault(r.name, bytearray()).extend(bytes(p)), jobs=rng.choice([1, 2, 3]))
        for name, base, data in regions:
            assert bytes(seen.get(name, b"")) == data
            if data:
                a = rng.randrange(len(data))
                n = rng.randrange(len(data) - a + 1)
                assert s.read(a, n, region=name) == data[a:a + n]
    name, _, data = rng.choice(regions)
    api.restore(str(path), str(tmp_path / "one.raw"), region=name)
    assert (tmp_path / "one.raw").read_bytes() == data
    # The whole image, flat: its blocks are checked in the writer's buffers, whatever their size.
    from vmsnap import output

    monkeypatch.setattr(output, "BUFFER_BYTES", output.ALIGN * rng.choice([1, 3, 64, 1024]))
    monkeypatch.setattr(output, "MIN_HOLE", rng.choice([output.ALIGN, 256 << 10]))
    flat = bytearray(max((base + len(data) for _, base, data in regions), default=0))
    for _, base, data in regions:
        flat[base:base + len(data)] = data
    api.restore(str(path), str(tmp_path / "all.raw"), sparse=rng.random() < 0.5)
    assert (tmp_path / "all.raw").read_bytes() == flat


@given(st.lists(st.integers(1, 2**32 - 1), max_size=30), st.integers(1, 8), st.data())
def test_the_record_that_holds_a_page_is_found_a_block_at_a_time(counts, block, data):
    from vmsnap.format import reader
    from vmsnap.format import structs as S

    rec = np.zeros(len(counts), S.RECORD_DTYPE)
    rec["count"] = counts
    ends = np.cumsum(np.array(counts, dtype=np.int64))
    page = data.draw(st.integers(0, int(ends[-1]) + 5 if counts else 5))
    i = int(np.searchsorted(ends, page, side="right"))  # the whole table at once, as it was
    want = (i, int(ends[i - 1]) if i else 0)
    old = reader.RECORD_BLOCK
    reader.RECORD_BLOCK = block
    try:
        assert reader._record_at(rec, page) == want
    finally:
        reader.RECORD_BLOCK = old
