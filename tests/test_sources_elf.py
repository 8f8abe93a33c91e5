"""ELF core reader: inputs built by construction, property tests, malformed files."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from source_builders import Pipe, build_elf
from vmsnap.errors import FormatError, InputError, VmsnapError
from vmsnap.sources import open_source
from vmsnap.sources.elf import ElfSource


def read_all(src):
    return [(r, b"".join(chunks)) for r, chunks in src.regions()]


def write(tmp_path, data, name="core.elf"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_segments_become_regions_at_paddr(tmp_path):
    segs = [(0, b"\x11" * 4096, None), (0x100000, b"ab" * 3000, None), (0xFFFC0000, b"\x90" * 10, None)]
    data, _, _ = build_elf(segs, gap=b"x")  # odd gap: unaligned file offsets
    with ElfSource(write(tmp_path, data)) as src:
        got = read_all(src)
        assert src.size_hint == sum(len(d) for _, d, _ in segs)
    assert [(r.name, r.base, r.size) for r, _ in got] == [
        ("load0", 0, 4096), ("load1", 0x100000, 6000), ("load2", 0xFFFC0000, 10)
    ]
    assert [d for _, d in got] == [d for _, d, _ in segs]


def test_memsz_tail_is_not_invented(tmp_path):
    segs = [(0x1000, b"A" * 100, 4096), (0x9000, b"", 8192), (0x20000, b"B" * 5, None)]
    data, _, _ = build_elf(segs)
    with ElfSource(write(tmp_path, data)) as src:
        got = read_all(src)
        assert src.uncaptured == [(0x1000 + 100, 4096 - 100), (0x9000, 8192)]
    # the empty PT_LOAD (index 1) yields no region; names keep PT_LOAD numbering
    assert [(r.name, r.base, r.size, d) for r, d in got] == [
        ("load0", 0x1000, 100, b"A" * 100), ("load2", 0x20000, 5, b"B" * 5)
    ]


@pytest.mark.parametrize("elfclass", [32, 64])
@pytest.mark.parametrize("little", [True, False])
def test_classes_and_byte_orders(tmp_path, elfclass, little):
    segs = [(0x2000, os.urandom(777), None), (0x7000, os.urandom(33), None)]
    data, _, _ = build_elf(segs, elfclass=elfclass, little=little, gap=b"\0\0\0")
    with ElfSource(write(tmp_path, data)) as src:
        got = read_all(src)
    assert [(r.base, d) for r, d in got] == [(p, d) for p, d, _ in segs]


def test_pn_xnum_count_from_section_header(tmp_path):
    segs = [(i * 0x1000, bytes([i]) * 17, None) for i in range(5)]
    data, _, _ = build_elf(segs, xnum=True)
    with ElfSource(write(tmp_path, data)) as src:
        got = read_all(src)
    assert [d for _, d in got] == [d for _, d, _ in segs]


@pytest.mark.parametrize("shoff", [1 << 40, 1 << 63, (1 << 64) - 1])
def test_a_section_header_offset_past_the_file_is_truncation(tmp_path, shoff):
    # Past off_t (2**63) the seek itself failed: a ValueError traceback (found by fuzzing).
    import struct

    data = bytearray(build_elf([(0, b"x" * 17, None)], xnum=True)[0])
    struct.pack_into("<Q", data, 0x28, shoff)  # e_shoff
    with pytest.raises(InputError, match=f"truncated at offset {shoff}: section header 0"):
        with ElfSource(write(tmp_path, bytes(data))) as src:
            read_all(src)


def test_a_segment_that_wraps_past_the_64_bit_address_space_is_a_format_error(tmp_path):
    # It was saved, and cat past 2**64 returned its bytes.
    data = build_elf([((1 << 64) - 4096, b"x" * 8192, None)])[0]
    with pytest.raises(FormatError, match="wraps past the 64-bit address space"):
        with ElfSource(write(tmp_path, data)) as src:
            read_all(src)
    with ElfSource(write(tmp_path, build_elf([((1 << 64) - 4096, b"x" * 4096, None)])[0])) as src:
        assert read_all(src)[0][1] == b"x" * 4096  # up to the last address: fine


def test_pipe_reads_segments_in_file_order():
    segs = [(0x1000, b"one" * 1000, None), (0x5000, b"two" * 5, None)]
    data, _, _ = build_elf(segs, gap=b"..")
    fh = Pipe(data)
    with ElfSource("-", fh=fh) as src:
        got = read_all(src)
    assert [d for _, d in got] == [d for _, d, _ in segs]


def test_pipe_with_segments_out_of_order_is_a_clear_error():
    segs = [(0x1000, b"one" * 10, None), (0x5000, b"two" * 5, None)]
    data, _, _ = build_elf(segs, reverse_data=True)
    with ElfSource("-", fh=Pipe(data)) as src:
        with pytest.raises(InputError, match="seekable"):
            read_all(src)


def test_seekable_file_with_segments_out_of_order(tmp_path):
    segs = [(0x1000, b"one" * 10, None), (0x5000, b"two" * 5, None), (0x9000, b"3", None)]
    data, _, _ = build_elf(segs, reverse_data=True)
    with ElfSource(write(tmp_path, data)) as src:
        got = read_all(src)
    assert [(r.base, d) for r, d in got] == [(p, d) for p, d, _ in segs]


def test_detected_by_magic(tmp_path):
    data, _, _ = build_elf([(0, b"z" * 8, None)])
    with open_source(write(tmp_path, data)) as src:
        assert src.format_name == "elf"


# ---------------------------------------------------------------- malformed


def test_truncated_at_every_structure_boundary(tmp_path):
    data, marks, _ = build_elf([(0, b"\x01" * 300, None), (0x3000, b"\x02" * 200, None)], gap=b"g")
    cuts = sorted(set(marks + [m + 1 for m in marks] + [len(data) - 1]))
    for cut in cuts:
        if cut >= len(data):
            continue
        path = write(tmp_path, data[:cut], f"cut{cut}.elf")
        with pytest.raises(InputError, match=r"truncated") as exc:
            with ElfSource(path) as src:
                read_all(src)
        assert "offset" in str(exc.value), str(exc.value)


def test_truncated_pipe_fails_while_reading():
    data, _, _ = build_elf([(0, b"\x01" * 300, None)])
    with ElfSource("-", fh=Pipe(data[:-10])) as src:
        with pytest.raises(InputError, match=r"truncated at offset \d+: PT_LOAD 0"):
            read_all(src)


@pytest.mark.parametrize(
    "offset,value,match",
    [
        (0, b"\x7fELG", r"not an ELF file: magic b'\\x7fELG' at offset 0, expected b'\\x7fELF'"),
        (4, b"\x03", r"bad ELF class 3 at offset 4"),
        (5, b"\x00", r"bad ELF byte order 0 at offset 5"),
        (6, b"\x02", r"bad ELF version 2 at offset 6"),
        (16, b"\x02\x00", r"ELF type 2 at offset 16 is not a core file"),
        (54, b"\x20\x00", r"e_phentsize 32"),
    ],
)
def test_bad_header_fields(tmp_path, offset, value, match):
    data, _, _ = build_elf([(0, b"x" * 64, None)])
    bad = data[:offset] + value + data[offset + len(value):]
    with pytest.raises(FormatError, match=match):
        ElfSource(write(tmp_path, bad))


def test_filesz_above_memsz(tmp_path):
    data, _, _ = build_elf([(0, b"x" * 64, 10)])
    with pytest.raises(FormatError, match=r"program header 1 at offset 120: p_filesz 64 exceeds p_memsz 10"):
        ElfSource(write(tmp_path, data))


def test_no_program_headers(tmp_path):
    data, _, _ = build_elf([], notes=False)
    with pytest.raises(FormatError, match="no program headers"):
        ElfSource(write(tmp_path, data))


def test_missing_file():
    with pytest.raises(InputError, match="no such file"):
        ElfSource("/nonexistent/core.elf")


# ---------------------------------------------------------------- properties

segment = st.tuples(
    st.integers(0, 2**40).map(lambda a: a & ~0xF),
    st.binary(min_size=0, max_size=300),
    st.integers(0, 64),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segs=st.lists(segment, min_size=1, max_size=6),
    elfclass=st.sampled_from([32, 64]),
    little=st.booleans(),
    gap=st.binary(max_size=7),
    reverse=st.booleans(),
)
def test_property_regions_are_the_segments(tmp_path, segs, elfclass, little, gap, reverse):
    if elfclass == 32:
        segs = [(p & 0xFFFFFFF0, d, x) for p, d, x in segs]
    spec = [(p, d, len(d) + x) for p, d, x in segs]
    data, _, _ = build_elf(spec, elfclass=elfclass, little=little, gap=gap, reverse_data=reverse)
    with ElfSource(write(tmp_path, data, "p.elf")) as src:
        got = read_all(src)
        assert src.uncaptured == [(p + len(d), x) for p, d, x in segs if x]
    want = [(f"load{i}", p, d) for i, (p, d, _) in enumerate(segs) if d]
    assert [(r.name, r.base, d) for r, d in got] == want
    assert all(r.size == len(d) for r, d in got)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 10_000), byte=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_property_damage_gives_data_or_a_vmsnap_error(tmp_path, pos, byte, cut):
    data, _, _ = build_elf([(0, b"\x01" * 300, None), (0x3000, b"\x02" * 200, 4096)], gap=b"g")
    bad = bytearray(data)
    bad[pos % len(bad)] = byte
    bad = bytes(bad[: max(1, len(bad) - cut % 64)])
    try:
        with ElfSource(write(tmp_path, bad, "d.elf")) as src:
            for region, d in read_all(src):
                assert len(d) == region.size
    except VmsnapError as exc:
        assert str(exc).startswith(str(tmp_path))
