"""LiME reader: ranges built by construction, property tests, malformed dumps."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from source_builders import Pipe, build_lime
from vmsnap.errors import FormatError, InputError, VmsnapError
from vmsnap.sources import open_source
from vmsnap.sources.lime import LimeSource


def read_all(src):
    return [(r, b"".join(chunks)) for r, chunks in src.regions()]


def write(tmp_path, data, name="dump.lime"):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


RANGES = [(0, os.urandom(4096)), (0x100000, b"\x00" * 8192), (0xC0000000, b"tail" * 3)]


def test_ranges_become_regions(tmp_path):
    data, _ = build_lime(RANGES)
    with LimeSource(write(tmp_path, data)) as src:
        assert src.size_hint == sum(len(d) for _, d in RANGES)
        got = read_all(src)
    assert [(r.name, r.base, r.size) for r, _ in got] == [
        ("range0", 0, 4096), ("range1", 0x100000, 8192), ("range2", 0xC0000000, 12)
    ]
    assert [d for _, d in got] == [d for _, d in RANGES]


def test_pipe(tmp_path):
    data, _ = build_lime(RANGES)
    with LimeSource("-", fh=Pipe(data)) as src:
        assert src.size_hint is None
        got = read_all(src)
    assert [(r.base, d) for r, d in got] == RANGES


def test_detected_by_magic(tmp_path):
    data, _ = build_lime(RANGES[:1])
    with open_source(write(tmp_path, data)) as src:
        assert src.format_name == "lime"


def test_truncated_inside_a_structure(tmp_path):
    data, marks = build_lime(RANGES)
    for mark in marks:
        for cut in (mark + 1, mark + 31):
            if cut >= len(data) or cut in marks:
                continue
            with pytest.raises(InputError, match=r"truncated.*offset") as exc:
                with LimeSource(write(tmp_path, data[:cut], f"c{cut}.lime")) as src:
                    read_all(src)
            assert "range" in str(exc.value)


def test_truncated_at_a_range_boundary_is_a_shorter_dump(tmp_path):
    # LiME has no range count: a dump cut exactly between ranges is a valid dump
    # of fewer ranges. The man page says so; here the prefix must be exact.
    data, marks = build_lime(RANGES)
    with LimeSource(write(tmp_path, data[: marks[2]])) as src:
        assert [(r.base, d) for r, d in read_all(src)] == RANGES[:1]


def test_truncated_pipe(tmp_path):
    data, _ = build_lime(RANGES)
    with LimeSource("-", fh=Pipe(data[:-5])) as src:
        with pytest.raises(InputError, match=r"truncated at offset \d+: range 2 data"):
            read_all(src)


def test_empty_file(tmp_path):
    with pytest.raises(FormatError, match="empty"):
        LimeSource(write(tmp_path, b""))
    with LimeSource("-", fh=Pipe(b"")) as src:
        with pytest.raises(FormatError, match="empty"):
            read_all(src)


def test_wrong_magic_names_the_offset(tmp_path):
    data, marks = build_lime(RANGES)
    bad = data[: marks[2]] + b"XXXX" + data[marks[2] + 4 :]
    with pytest.raises(
        FormatError,
        match=rf"not a LiME range header \(range 1\): magic b'XXXX' at offset {marks[2]}, "
        r"expected b'EMiL'",
    ):
        LimeSource(write(tmp_path, bad))


def test_wrong_version(tmp_path):
    data, _ = build_lime(RANGES, version=2)
    with pytest.raises(FormatError, match=r"range 0 header at offset 0: version 2"):
        LimeSource(write(tmp_path, data))


def test_end_below_start(tmp_path):
    import struct

    bad = struct.pack("<IIQQ8s", 0x4C694D45, 1, 0x2000, 0x1000, bytes(8))
    with pytest.raises(FormatError, match="end 0x1000 is below start 0x2000"):
        LimeSource(write(tmp_path, bad))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=st.lists(st.tuples(st.integers(0, 2**48), st.binary(min_size=1, max_size=200)),
                       min_size=1, max_size=6),
       pipe=st.booleans())
def test_property_round_trip(tmp_path, ranges, pipe):
    data, _ = build_lime(ranges)
    src = LimeSource("-", fh=Pipe(data)) if pipe else LimeSource(write(tmp_path, data, "p.lime"))
    with src:
        got = read_all(src)
    assert [(r.name, r.base, d) for r, d in got] == [
        (f"range{i}", s, d) for i, (s, d) in enumerate(ranges)
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 10_000), byte=st.integers(0, 255), cut=st.integers(0, 100))
def test_property_damage_gives_data_or_a_vmsnap_error(tmp_path, pos, byte, cut):
    data, _ = build_lime([(0, b"\x01" * 50), (0x1000, b"\x02" * 70)])
    bad = bytearray(data)
    bad[pos % len(bad)] = byte
    bad = bytes(bad[: len(bad) - cut])
    try:
        with LimeSource(write(tmp_path, bad, "d.lime")) as src:
            for region, d in read_all(src):
                assert len(d) == region.size
    except VmsnapError as exc:
        assert "d.lime" in str(exc)
