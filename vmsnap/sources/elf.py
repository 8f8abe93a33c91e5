"""ELF cores from QEMU's dump-guest-memory and `virsh dump --memory-only`.

Each PT_LOAD with file data becomes one region, in program-header order:
name `load<i>` (i counts PT_LOAD headers, so names stay stable when one is
empty), base = p_paddr (the guest-physical address), size = p_filesz.

p_memsz > p_filesz: QEMU writes that when part of a mapping has no RAM behind
it (paging=true dumps) or lies outside a begin/length filter: the tail is *not
in the file*, it is not zero-filled memory. vmsnap yields only the p_filesz
bytes the file holds and lists the uncaptured tails in `ElfSource.uncaptured`;
it never invents the missing bytes. PT_LOADs with p_filesz == 0 yield no region.

File offsets need not be aligned to anything. A seekable file may have its
segments in any order; from a pipe they must appear in ascending file order.
ELF32 and ELF64, either byte order, are read; e_phnum == PN_XNUM is resolved
through section header 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

from ..errors import FormatError, InputError
from . import elf_structs as E
from .base import Region, Source, input_name
from .binio import Cursor, check_magic, file_size, parse_struct, read_struct
from .raw import open_input


@dataclass(frozen=True)
class Segment:
    index: int  # PT_LOAD number
    offset: int  # file offset of the data
    paddr: int
    filesz: int
    memsz: int


class ElfSource(Source):
    format_name = "elf"

    def __init__(self, path: str, fh: BinaryIO | None = None):
        self.path = path
        self._own = fh is None
        self._fh = open_input(path) if fh is None else fh
        try:
            self._cur = Cursor(self._fh, path)
            self._size = file_size(self._fh)
            self.segments, self.uncaptured = self._parse_headers()
        except BaseException:
            self.close()
            raise
        self._started = False
        super().__init__(f"elf:{input_name(path)}")

    def _parse_headers(self) -> tuple[list[Segment], list[tuple[int, int]]]:
        cur = self._cur
        name = cur.name
        ident_bytes = bytes(cur.read(E.EI_NIDENT, "ELF identification"))
        check_magic(ident_bytes, E.ELF_MAGIC, "an ELF file", name, 0)
        ident = parse_struct(E.Ident, ident_bytes, "ELF identification", name, 0)
        if ident.elfclass not in (E.ELFCLASS32, E.ELFCLASS64):
            raise FormatError(f"{name}: bad ELF class {ident.elfclass} at offset 4 (want 1 or 2)")
        if ident.data not in (E.ELFDATA2LSB, E.ELFDATA2MSB):
            raise FormatError(f"{name}: bad ELF byte order {ident.data} at offset 5 (want 1 or 2)")
        if ident.version != E.EV_CURRENT:
            raise FormatError(f"{name}: bad ELF version {ident.version} at offset 6 (want 1)")
        self.elfclass = ident.elfclass
        self.little = ident.data == E.ELFDATA2LSB
        S = E.structs(ident.elfclass, self.little)
        rest = bytes(cur.read(S.Ehdr.sizeof() - E.EI_NIDENT, "ELF file header"))
        ehdr = parse_struct(S.Ehdr, ident_bytes + rest, "ELF file header", name, 0)
        if ehdr.e_type != E.ET_CORE:
            raise FormatError(
                f"{name}: ELF type {ehdr.e_type} at offset 16 is not a core file (ET_CORE = 4)"
            )
        phentsize = S.Phdr.sizeof()
        if ehdr.e_phentsize != phentsize:
            raise FormatError(
                f"{name}: e_phentsize {ehdr.e_phentsize} in the file header does not match "
                f"the ELF class ({phentsize})"
            )
        phnum = ehdr.e_phnum
        if phnum == E.PN_XNUM:
            if ehdr.e_shoff == 0 or ehdr.e_shentsize != S.Shdr.sizeof():
                raise FormatError(
                    f"{name}: e_phnum is PN_XNUM but there is no usable section header 0"
                )
            cur.skip_to(ehdr.e_shoff, "section header 0")
            phnum = read_struct(cur, S.Shdr, "section header 0").sh_info
        if phnum == 0:
            raise FormatError(f"{name}: ELF core has no program headers")
        table_end = ehdr.e_phoff + phnum * phentsize
        if self._size is not None and table_end > self._size:
            raise InputError(
                f"{name}: truncated: {phnum} program headers at offset {ehdr.e_phoff} need "
                f"bytes up to offset {table_end}, the file has {self._size}"
            )
        cur.skip_to(ehdr.e_phoff, "program header table")
        segments: list[Segment] = []
        uncaptured: list[tuple[int, int]] = []
        loads = 0
        for i in range(phnum):
            off = cur.offset
            ph = read_struct(cur, S.Phdr, f"program header {i}")
            if ph.p_type != E.PT_LOAD:
                continue
            if ph.p_memsz < ph.p_filesz:
                raise FormatError(
                    f"{name}: program header {i} at offset {off}: p_filesz {ph.p_filesz} "
                    f"exceeds p_memsz {ph.p_memsz}"
                )
            if ph.p_paddr + ph.p_filesz > 1 << 64:  # guest-physical addresses are 64-bit
                raise FormatError(
                    f"{name}: program header {i} at offset {off}: p_paddr {ph.p_paddr:#x} + p_filesz "
                    f"{ph.p_filesz} wraps past the 64-bit address space"
                )
            if self._size is not None and ph.p_offset + ph.p_filesz > self._size:
                raise InputError(
                    f"{name}: truncated: PT_LOAD {loads} (program header {i} at offset {off}) "
                    f"needs bytes up to offset {ph.p_offset + ph.p_filesz}, "
                    f"the file has {self._size}"
                )
            if ph.p_memsz > ph.p_filesz:
                uncaptured.append((ph.p_paddr + ph.p_filesz, ph.p_memsz - ph.p_filesz))
            if ph.p_filesz:
                segments.append(Segment(loads, ph.p_offset, ph.p_paddr, ph.p_filesz, ph.p_memsz))
            loads += 1
        return segments, uncaptured

    @property
    def size_hint(self) -> int:
        return sum(s.filesz for s in self.segments)

    def regions(self) -> Iterator[tuple[Region, Iterator[bytes]]]:
        if self._started:
            raise RuntimeError("ElfSource.regions() can be iterated only once")
        self._started = True
        for seg in self.segments:
            what = f"PT_LOAD {seg.index} (data at offset {seg.offset})"
            self._cur.skip_to(seg.offset, what)
            yield (
                Region(f"load{seg.index}", seg.paddr, seg.filesz),
                self._cur.chunks(seg.filesz, what),
            )

    def close(self) -> None:
        if self._own and self._fh is not None:
            self._fh.close()
        self._fh = None
