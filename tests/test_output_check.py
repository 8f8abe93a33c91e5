"""A restore checks its block digests in the bytes it writes (OutputCheck, fed each of the
writer's buffers before it is written), not in the pieces it puts together."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import build_image, write_regions
from vmsnap import api, elfcore, output
from vmsnap.errors import IntegrityError, OutputError
from vmsnap.format.reader import OutputCheck, Snapshot

MIB = 1 << 20
REGIONS = [  # name, base, content: blocks of every kind, unaligned ends, one empty region
    ("low", 0, build_image([("random", 1)] * 300 + [("zero",)] * 200 + [("fill", 7)] * 100 + [("random", 2)] * 40)),
    ("high", 0x40000000, build_image([("zero",)] * 256 + [("random", 3)] * 10, tail=b"\x05" * 100)),
    ("empty", 0x50000000, b""),
    ("last", 0x60000000, build_image([("random", 4)] * 3 + [("zero",)] * 300)),  # ends in 1.2 MiB of zeros
]


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A snapshot of REGIONS, and its ELF core: the regions placed after headers and gaps."""
    tmp = tmp_path_factory.mktemp("check")
    snap = write_regions(tmp / "multi.vms", REGIONS)
    core = tmp / "core.elf"
    api.restore(snap, str(core), format="elf")
    with Snapshot(snap) as s:
        regions = sorted(s.regions, key=lambda r: r.base)
        offsets = elfcore.layout(regions, s.page_size).offsets
    return snap, core.read_bytes(), list(zip(regions, offsets))


def feed_in_spans(check, image, cuts, holes):
    """Feed image[...] cut at `cuts`; spans whose index is in `holes` and that are all zero
    are left out, as a sparse writer leaves them."""
    edges = [0, *sorted(set(cuts)), len(image)]
    for k, (a, b) in enumerate(zip(edges, edges[1:])):
        if a < b and not (k in holes and not any(image[a:b])):
            check.feed(a, memoryview(image)[a:b])
    check.finish(len(image))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_written_image_passes_in_any_spans_and_a_flipped_byte_in_a_region_is_named(layout, data):
    path, image, placed = layout
    cuts = data.draw(st.lists(st.integers(0, len(image)), max_size=12))
    holes = data.draw(st.sets(st.integers(0, 13)))
    with Snapshot(path) as snap:
        feed_in_spans(OutputCheck(snap, placed), image, cuts, holes)

        at = data.draw(st.integers(0, len(image) - 1))
        wrong = bytearray(image)
        wrong[at] ^= 1
        inside = [(r, off) for r, off in placed if off <= at < off + r.size]
        if not inside:  # headers and padding are not the regions' bytes
            feed_in_spans(OutputCheck(snap, placed), bytes(wrong), cuts, holes)
            return
        (region, offset), = inside
        block = (at - offset) // MIB * MIB
        with pytest.raises(IntegrityError, match=rf"region '{region.name}' block at offset {block:#x} failed"):
            feed_in_spans(OutputCheck(snap, placed), bytes(wrong), cuts, holes)


def test_zeros_never_fed_at_the_end_are_checked_as_zeros(layout):
    path, image, placed = layout
    data_end = len(image.rstrip(b"\0"))
    assert len(image) - data_end > MIB  # a hole of a whole block and more
    with Snapshot(path) as snap:
        check = OutputCheck(snap, placed)
        check.feed(0, memoryview(image)[:data_end])
        check.finish(len(image))


def test_an_output_shorter_than_its_regions_is_refused(layout):
    path, image, placed = layout
    with Snapshot(path) as snap:
        check = OutputCheck(snap, placed)
        check.feed(0, memoryview(image)[:len(image) - 5000])  # into the zeros that end "last"
        with pytest.raises(OutputError, match="region 'last' ends beyond the output"):
            check.finish(len(image) - 5000)


@pytest.mark.parametrize("target", ["file", "-"])
def test_restore_checks_the_bytes_it_writes(tmp_path, monkeypatch, capfdbinary, target):
    """A byte changed in the writer's buffer after every piece was right: the pieces'
    digests would pass, the written bytes' do not."""
    data = np.random.default_rng(5).integers(0, 256, 3 * MIB + 5000, dtype=np.uint8).tobytes()
    (tmp_path / "in.raw").write_bytes(data)
    api.save(str(tmp_path / "in.raw"), str(tmp_path / "s.vms"))
    monkeypatch.setattr(output, "BUFFER_BYTES", MIB // 2)
    submit = output.ImageWriter._submit
    flipped = []

    def submit_with_a_flip(self):
        if self._start == 2 * MIB:  # the fifth buffer: block 2 of the region
            self._view[100] ^= 0x40
            flipped.append(self._start + 100)
        submit(self)

    monkeypatch.setattr(output.ImageWriter, "_submit", submit_with_a_flip)
    out = tmp_path / "out.raw"
    with pytest.raises(IntegrityError, match="block at offset 0x200000 failed its digest"):
        api.restore(str(tmp_path / "s.vms"), str(out) if target == "file" else "-")
    assert flipped == [2 * MIB + 100]
    assert not out.exists()
    if target == "-":  # the stream stops at the wrong block: good bytes before it, and at most
        # the wrong buffer (a cancelled writer may also drop buffers queued before it)
        written = capfdbinary.readouterr().out
        good = written[:2 * MIB]
        assert len(written) <= 2 * MIB + MIB // 2 and good == data[:len(good)]


def test_bytes_fed_out_of_order_are_an_internal_error(layout):
    path, image, placed = layout
    with Snapshot(path) as snap:
        check = OutputCheck(snap, placed)
        check.feed(0, memoryview(image)[:8192])
        with pytest.raises(OutputError, match="internal error: output bytes at 0x1000 fed after 0x2000"):
            check.feed(4096, memoryview(image)[4096:8192])
