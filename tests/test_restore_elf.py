"""`vmsnap restore --format raw|elf`: the ELF core reads back as the same regions."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from conftest import build_image, write_regions
from qemu_fixture import qemu_capture  # noqa: F401  (pytest fixture)
from vmsnap import api, elfcore
from vmsnap.cli import main
from vmsnap.errors import UsageError
from vmsnap.sources import elf_structs as E
from vmsnap.sources.elf import ElfSource

REGIONS = [  # name, base, content: out of base order, unaligned sizes, a gap, one empty
    ("high", 0xFFFC0000, build_image([("random", 7), ("fill", 0xAB)], tail=b"\x01" * 100)),
    ("low", 0, build_image([("zero",), ("random", 1), ("zero",), ("zero",), ("copy", 1), ("unit", b"xyz")])),
    ("mid", 0x100000, build_image([("zero",)] * 80, tail=b"\x00" * 17)),  # zeros past output.MIN_HOLE
    ("empty", 0x200000, b""),
]


@pytest.fixture
def snap(tmp_path):
    return write_regions(tmp_path / "multi.vms", REGIONS)


def read_elf(path):
    with ElfSource(path) as src:
        return [(r.base, r.size, b"".join(bytes(c) for c in chunks)) for r, chunks in src.regions()]


def expected_nonempty():
    return sorted((base, len(data), data) for _, base, data in REGIONS if data)


def test_elf_reads_back_as_the_same_regions(snap, tmp_path):
    out = tmp_path / "core.elf"
    result = api.restore(snap, str(out), format="elf")
    assert result["format"] == "elf" and result["regions"] == ["low", "mid", "empty", "high"]
    assert read_elf(str(out)) == expected_nonempty()
    assert os.path.getsize(out) == result["bytes"]


def test_elf_program_headers(snap, tmp_path):
    out = tmp_path / "core.elf"
    api.restore(snap, str(out), format="elf")
    data = out.read_bytes()
    S = E.structs(E.ELFCLASS64, True)
    ehdr = S.Ehdr.parse(data)
    assert (ehdr.e_type, ehdr.e_machine, ehdr.e_phnum) == (E.ET_CORE, E.EM_X86_64, 4)
    phdrs = [S.Phdr.parse(data[ehdr.e_phoff + i * 56:]) for i in range(4)]
    for ph, (base, content) in zip(phdrs, [(0, REGIONS[1][2]), (0x100000, REGIONS[2][2]), (0x200000, b""),
                                           (0xFFFC0000, REGIONS[0][2])]):
        assert (ph.p_type, ph.p_paddr, ph.p_vaddr, ph.p_filesz, ph.p_memsz) == \
            (E.PT_LOAD, base, 0, len(content), len(content))
        assert ph.p_offset % 4096 == 0
        assert data[ph.p_offset:ph.p_offset + ph.p_filesz] == content


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (Debian package binutils) is not installed")
def test_readelf_accepts_the_core(snap, tmp_path):
    out = tmp_path / "core.elf"
    api.restore(snap, str(out), format="elf")
    proc = subprocess.run(["readelf", "-W", "-h", "-l", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "CORE (Core file)" in proc.stdout
    loads = [ln.split() for ln in proc.stdout.splitlines() if ln.strip().startswith("LOAD")]
    assert [int(f[3], 16) for f in loads] == [0, 0x100000, 0x200000, 0xFFFC0000]  # PhysAddr column


def test_elf_zero_runs_are_holes_and_stdout_streams_the_same_bytes(snap, tmp_path, capfd):
    out = tmp_path / "core.elf"
    api.restore(snap, str(out), format="elf")
    st = os.stat(out)
    assert st.st_blocks * 512 < st.st_size - (256 << 10)  # the long zero run was not written
    dense = tmp_path / "dense.elf"
    api.restore(snap, str(dense), format="elf", sparse=False)
    assert dense.read_bytes() == out.read_bytes()
    result = CliRunner().invoke(main, ["restore", snap, "-o", "-", "--format", "elf"])
    assert result.exit_code == 0 and result.stdout_bytes == out.read_bytes()


def test_elf_of_one_region(snap, tmp_path):
    out = tmp_path / "one.elf"
    api.restore(snap, str(out), format="elf", region="high")
    assert read_elf(str(out)) == [(0xFFFC0000, len(REGIONS[0][2]), REGIONS[0][2])]


def test_raw_format_is_the_flat_image_and_region_from_offset_0(snap, tmp_path):
    out = tmp_path / "flat.raw"
    CliRunner().invoke(main, ["restore", snap, "-o", str(out), "--format", "raw", "--region", "low", "-q"])
    assert out.read_bytes() == REGIONS[1][2]
    out2 = tmp_path / "mid.raw"
    api.restore(snap, str(out2), format="raw", region="mid")
    assert out2.read_bytes() == REGIONS[2][2]


def test_unknown_format_is_a_usage_error(snap, tmp_path):
    with pytest.raises(UsageError):
        api.restore(snap, str(tmp_path / "x"), format="vmdk")
    result = CliRunner().invoke(main, ["restore", snap, "-o", str(tmp_path / "x"), "--format", "vmdk"])
    assert result.exit_code == 2 and not (tmp_path / "x").exists()


def test_extended_numbering_for_0xffff_regions(tmp_path):
    """65535 PT_LOADs: e_phnum = PN_XNUM and section header 0 holds the count."""

    class R:
        def __init__(self, i):
            self.base, self.size = i * 4096, 1

    regions = [R(i) for i in range(E.PN_XNUM)]
    core = elfcore.layout(regions, page_size=1)
    path = tmp_path / "x.elf"
    with open(path, "wb") as fh:
        fh.write(core.headers)
        for off in core.offsets:
            fh.seek(off)
            fh.write(b"\x5a")
    with ElfSource(str(path)) as src:
        assert len(src.segments) == E.PN_XNUM
        assert src.segments[-1].paddr == (E.PN_XNUM - 1) * 4096
    assert io.BytesIO(core.headers).read(64)[56:58] == b"\xff\xff"


@pytest.mark.slow
def test_real_core_round_trips_through_vms(tmp_path, qemu_capture):
    """The .vms of QEMU's own core, restored as ELF, has every PT_LOAD's bytes at its p_paddr."""
    core = qemu_capture["paths"]["elf"]
    snap = tmp_path / "core.vms"
    api.save(core, str(snap))
    out = tmp_path / "again.elf"
    api.restore(str(snap), str(out), format="elf")
    with ElfSource(core) as a, ElfSource(str(out)) as b:
        sa = [(s.paddr, s.filesz) for s in a.segments]
        assert [(s.paddr, s.filesz) for s in b.segments] == sa
        for (ra, ca), (rb, cb) in zip(a.regions(), b.regions()):
            assert (ra.base, ra.size) == (rb.base, rb.size)
            assert _digest(ca) == _digest(cb)


def _digest(chunks):
    import hashlib

    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()



def test_a_region_past_the_largest_file_offset_is_refused_flat_and_restored_otherwise(tmp_path):
    # A core with a segment at 2**63 saved fine, and its flat restore was an OverflowError
    # traceback from the writer thread.
    from source_builders import build_elf

    data = os.urandom(4096)
    (tmp_path / "high.core").write_bytes(build_elf([(1 << 63, data, None)])[0])
    snap = str(tmp_path / "high.vms")
    api.save(str(tmp_path / "high.core"), snap)
    result = CliRunner().invoke(main, ["restore", snap, "-o", str(tmp_path / "flat.raw")])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "ends past the largest offset a file can have" in result.output
    assert not (tmp_path / "flat.raw").exists()
    api.restore(snap, str(tmp_path / "one.raw"), region="load0")
    assert (tmp_path / "one.raw").read_bytes() == data
    api.restore(snap, str(tmp_path / "all.elf"), format="elf")
    assert read_elf(str(tmp_path / "all.elf")) == [(1 << 63, 4096, data)]
    # cat of a range no file can hold: a traceback from the writer thread, or a hang.
    result = CliRunner().invoke(main, ["cat", snap, "--offset", "0", "--length", str((1 << 63) + 4096),
                                       "-o", str(tmp_path / "part")])
    assert result.exit_code == 2 and "past the largest offset a file can have" in result.output, result.output
    assert not (tmp_path / "part").exists()
    assert api.cat(snap, 1 << 63, 4096) == data
