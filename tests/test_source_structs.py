"""The construct definitions of the input formats, checked the way construct's own tests
do (declarativeunittest.common): parse gives the object, build gives the bytes, sizeof
is right, and the compiled struct agrees. The bytes come from struct.pack, not construct."""

from __future__ import annotations

import struct

import pytest

from vmsnap.sources import elf_structs as E
from vmsnap.sources import lime_structs as L
from vmsnap.sources import qemu_migration_structs as Q


def common(fmt, data: bytes, obj: dict, size: int):
    for f in (fmt, fmt.compile()):
        parsed = f.parse(data)
        assert {k: parsed[k] for k in obj} == obj
        assert f.build(obj) == data
        assert f.sizeof() == size


@pytest.mark.parametrize("elfclass,little", [(2, True), (2, False), (1, True), (1, False)])
def test_elf_headers(elfclass, little):
    S = E.structs(elfclass, little)
    e = "<" if little else ">"
    a = "Q" if elfclass == 2 else "I"
    ident = b"\x7fELF" + bytes([elfclass, 1 if little else 2, 1]) + bytes(9)
    ehdr = dict(e_ident=ident, e_type=4, e_machine=62, e_version=1, e_entry=0, e_phoff=64,
                e_shoff=0, e_flags=0, e_ehsize=64, e_phentsize=56, e_phnum=3, e_shentsize=0,
                e_shnum=0, e_shstrndx=0)
    data = ident + struct.pack(e + "HHI" + a * 3 + "IHHHHHH", 4, 62, 1, 0, 64, 0, 0, 64, 56, 3, 0, 0, 0)
    common(S.Ehdr, data, ehdr, 64 if elfclass == 2 else 52)
    ph = dict(p_type=1, p_flags=7, p_offset=0x498, p_vaddr=0x1000, p_paddr=0x2000,
              p_filesz=0x3000, p_memsz=0x4000, p_align=0)
    if elfclass == 2:
        data = struct.pack(e + "IIQQQQQQ", 1, 7, 0x498, 0x1000, 0x2000, 0x3000, 0x4000, 0)
    else:
        data = struct.pack(e + "IIIIIIII", 1, 0x498, 0x1000, 0x2000, 0x3000, 0x4000, 7, 0)
    common(S.Phdr, data, ph, 56 if elfclass == 2 else 32)
    sh = dict(sh_name=0, sh_type=0, sh_flags=0, sh_addr=0, sh_offset=0, sh_size=0, sh_link=0,
              sh_info=70000, sh_addralign=0, sh_entsize=0)
    x = "Q" if elfclass == 2 else "I"
    data = struct.pack(e + "II" + x * 4 + "II" + x * 2, 0, 0, 0, 0, 0, 0, 0, 70000, 0, 0)
    common(S.Shdr, data, sh, 64 if elfclass == 2 else 40)


def test_lime_header():
    data = struct.pack("<IIQQ8s", 0x4C694D45, 1, 0x1000, 0x1FFF, bytes(8))
    assert data[:4] == L.LIME_MAGIC_BYTES == b"EMiL"
    common(L.RangeHeader, data, dict(version=1, s_addr=0x1000, e_addr=0x1FFF, reserved=bytes(8)), 32)


def test_migration_headers():
    common(Q.FileHeader, b"QEVM\x00\x00\x00\x03", dict(version=3), 8)
    common(Q.SectionFooter, b"\x7e\x00\x00\x00\x02", dict(section_id=2), 5)
    tail = bytes([3]) + b"ram" + struct.pack(">II", 0, 4)
    parsed = Q.SectionStartTail.parse(tail)
    assert (parsed.idstr, parsed.instance_id, parsed.version_id) == ("ram", 0, 4)
    assert Q.SectionStartTail.build(dict(idstr="ram", instance_id=0, version_id=4)) == tail
    assert Q.flag_names(Q.RAM_SAVE_FLAG_ZERO | Q.RAM_SAVE_FLAG_CONTINUE | 0x800) == "ZERO|CONTINUE|0x800"
