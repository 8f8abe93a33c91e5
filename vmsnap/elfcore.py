"""Write a snapshot's regions as an ELF64 core file, like QEMU's dump-guest-memory.

Layout (ELF64, little-endian, ET_CORE, e_machine EM_X86_64):

    file header | program headers | [section header 0] | padding | segment data ...

One PT_LOAD per region, in the order given: p_paddr = region base (the
guest-physical address), p_vaddr = 0 (as QEMU writes with paging=false),
p_filesz = p_memsz = region size, flags RW. Segment data starts at offsets
aligned to the page size, so zero runs stay holes in a sparse output file and
the file can be streamed front to back (stdout works). When there are 0xffff or
more regions, e_phnum is PN_XNUM and section header 0 holds the real count in
sh_info (the gABI extended numbering that the ELF reader resolves).

The header and program-header definitions are the reader's (sources/elf_structs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .sources import elf_structs as E


@dataclass(frozen=True)
class CoreLayout:
    headers: bytes  # file header, program headers and optional section header 0
    offsets: list[int]  # file offset of each region's data
    size: int  # total file size


def layout(regions, page_size: int = 4096) -> CoreLayout:
    """Headers and data offsets for regions (objects with .base and .size), in this order."""
    S = E.structs(E.ELFCLASS64, True)
    n = len(regions)
    ehsize, phentsize, shentsize = S.Ehdr.sizeof(), S.Phdr.sizeof(), S.Shdr.sizeof()
    xnum = n >= E.PN_XNUM
    phoff = ehsize
    shoff = phoff + n * phentsize if xnum else 0
    end = phoff + n * phentsize + (shentsize if xnum else 0)
    offsets = []
    pos = _align(end, page_size)
    for r in regions:
        offsets.append(pos)
        pos = _align(pos + r.size, page_size)
    size = offsets[-1] + regions[-1].size if n else end
    ident = E.ELF_MAGIC + bytes([E.ELFCLASS64, E.ELFDATA2LSB, E.EV_CURRENT, E.ELFOSABI_NONE]) + bytes(8)
    out = bytearray(S.Ehdr.build(dict(
        e_ident=ident, e_type=E.ET_CORE, e_machine=E.EM_X86_64, e_version=E.EV_CURRENT, e_entry=0,
        e_phoff=phoff, e_shoff=shoff, e_flags=0, e_ehsize=ehsize, e_phentsize=phentsize,
        e_phnum=E.PN_XNUM if xnum else n, e_shentsize=shentsize if xnum else 0, e_shnum=1 if xnum else 0,
        e_shstrndx=0)))
    for r, off in zip(regions, offsets):
        out += S.Phdr.build(dict(p_type=E.PT_LOAD, p_flags=E.PF_R | E.PF_W, p_offset=off, p_vaddr=0,
                                 p_paddr=r.base, p_filesz=r.size, p_memsz=r.size, p_align=0))
    if xnum:
        out += S.Shdr.build(dict(sh_name=0, sh_type=0, sh_flags=0, sh_addr=0, sh_offset=0, sh_size=0,
                                 sh_link=0, sh_info=n, sh_addralign=0, sh_entsize=0))
    return CoreLayout(bytes(out), offsets, size)


def _align(x: int, a: int) -> int:
    return -(-x // a) * a
