"""ELF core file definitions (System V gABI): identification, file header, program
and section headers, for both classes and both byte orders. Definitions only;
the reader is vmsnap/sources/elf.py.

QEMU's dump-guest-memory (and `virsh dump --memory-only`, which calls it) writes
an ET_CORE file: one PT_NOTE with the CPU states, then one PT_LOAD per
contiguous range of guest-physical RAM, p_paddr = guest-physical address. When
there are 0xffff or more program headers, e_phnum is PN_XNUM and the real count
is in section header 0's sh_info.

The same definitions build the cores vmsnap writes (vmsnap/elfcore.py,
`vmsnap restore --format elf`): ELF64, little-endian, ET_CORE.
"""

from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

from construct import Bytes, Const, Int8ul, Int16ub, Int16ul, Int32ub, Int32ul, Int64ub, Int64ul
from construct import Struct

ELF_MAGIC = b"\x7fELF"
EI_NIDENT = 16
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EV_CURRENT = 1

ET_CORE = 4
EM_X86_64 = 62
PT_NULL, PT_LOAD, PT_NOTE = 0, 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
PN_XNUM = 0xFFFF
ELFOSABI_NONE = 0

Ident = Struct(
    "magic" / Const(ELF_MAGIC),
    "elfclass" / Int8ul,
    "data" / Int8ul,
    "version" / Int8ul,
    "osabi" / Int8ul,
    "abiversion" / Int8ul,
    "pad" / Bytes(7),
)


@lru_cache(maxsize=None)
def structs(elfclass: int, little: bool) -> SimpleNamespace:
    """Ehdr, Phdr and Shdr for one ELF class and byte order (like pyelftools' ELFStructs)."""
    h = Int16ul if little else Int16ub
    w = Int32ul if little else Int32ub
    x = Int64ul if little else Int64ub
    addr = off = xword = x if elfclass == ELFCLASS64 else w
    ehdr = Struct(
        "e_ident" / Bytes(EI_NIDENT),
        "e_type" / h,
        "e_machine" / h,
        "e_version" / w,
        "e_entry" / addr,
        "e_phoff" / off,
        "e_shoff" / off,
        "e_flags" / w,
        "e_ehsize" / h,
        "e_phentsize" / h,
        "e_phnum" / h,
        "e_shentsize" / h,
        "e_shnum" / h,
        "e_shstrndx" / h,
    )
    if elfclass == ELFCLASS64:
        phdr = Struct(
            "p_type" / w,
            "p_flags" / w,
            "p_offset" / off,
            "p_vaddr" / addr,
            "p_paddr" / addr,
            "p_filesz" / xword,
            "p_memsz" / xword,
            "p_align" / xword,
        )
    else:  # ELF32 moves p_flags after p_memsz
        phdr = Struct(
            "p_type" / w,
            "p_offset" / off,
            "p_vaddr" / addr,
            "p_paddr" / addr,
            "p_filesz" / w,
            "p_memsz" / w,
            "p_flags" / w,
            "p_align" / w,
        )
    shdr = Struct(
        "sh_name" / w,
        "sh_type" / w,
        "sh_flags" / xword,
        "sh_addr" / addr,
        "sh_offset" / off,
        "sh_size" / xword,
        "sh_link" / w,
        "sh_info" / w,
        "sh_addralign" / xword,
        "sh_entsize" / xword,
    )
    return SimpleNamespace(Ehdr=ehdr, Phdr=phdr, Shdr=shdr)
