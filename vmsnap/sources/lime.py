"""LiME dumps (lime format): one region per range, named range<i>, base s_addr.

A regular file is scanned header to header at open time (seeking over the
data), so a damaged or truncated dump fails before any region is yielded and
`size_hint` is exact. From a pipe the headers are read as they come.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator

from ..errors import FormatError, InputError
from . import lime_structs as L
from .base import Region, Source, input_name
from .binio import Cursor, check_magic, file_size, parse_struct
from .raw import open_input


@dataclass(frozen=True)
class Range:
    index: int
    header_offset: int
    start: int
    size: int


class LimeSource(Source):
    format_name = "lime"

    def __init__(self, path: str, fh: BinaryIO | None = None):
        self.path = path
        self._own = fh is None
        self._fh = open_input(path) if fh is None else fh
        self._started = False
        try:
            self._cur = Cursor(self._fh, path)
            self._size = file_size(self._fh)
            self.ranges: list[Range] | None = None
            if self._size is not None and self._cur.seekable:
                self.ranges = list(self._scan())
                if not self.ranges:
                    raise FormatError(f"{path}: empty file: a LiME dump has at least one range")
                self._cur.skip_to(0, "first range header")
        except BaseException:
            self.close()
            raise
        super().__init__(f"lime:{input_name(path)}")

    def _header(self, index: int) -> Range:
        cur = self._cur
        off = cur.offset
        data = cur.read(L.HEADER_SIZE, f"range {index} header")
        check_magic(data, L.LIME_MAGIC_BYTES, f"a LiME range header (range {index})", self.path, off)
        hdr = parse_struct(L.RangeHeader, data, f"range {index} header", self.path, off)
        if hdr.version != L.LIME_VERSION:
            raise FormatError(
                f"{self.path}: range {index} header at offset {off}: version {hdr.version} "
                f"(vmsnap reads {L.LIME_VERSION})"
            )
        if hdr.e_addr < hdr.s_addr:
            raise FormatError(
                f"{self.path}: range {index} header at offset {off}: end 0x{hdr.e_addr:x} "
                f"is below start 0x{hdr.s_addr:x}"
            )
        return Range(index, off, hdr.s_addr, hdr.e_addr - hdr.s_addr + 1)

    def _scan(self) -> Iterator[Range]:
        index = 0
        while not self._cur.at_eof():
            rng = self._header(index)
            end = self._cur.offset + rng.size
            if end > self._size:
                raise InputError(
                    f"{self.path}: truncated: range {index} (header at offset "
                    f"{rng.header_offset}) needs data up to offset {end}, the file has {self._size}"
                )
            self._cur.skip_to(end, f"range {index} data")
            yield rng
            index += 1

    @property
    def size_hint(self) -> int | None:
        return None if self.ranges is None else sum(r.size for r in self.ranges)

    def regions(self) -> Iterator[tuple[Region, Iterator[bytes]]]:
        if self._started:
            raise RuntimeError("LimeSource.regions() can be iterated only once")
        self._started = True
        cur = self._cur
        index = 0
        while True:
            if self.ranges is not None:
                if index == len(self.ranges):
                    return
                cur.skip_to(self.ranges[index].header_offset, f"range {index} header")
            elif cur.at_eof():
                if index == 0:
                    raise FormatError(
                        f"{self.path}: empty input: a LiME dump has at least one range"
                    )
                return
            rng = self._header(index)
            yield (
                Region(f"range{index}", rng.start, rng.size),
                cur.chunks(rng.size, f"range {index} data (header at offset {rng.header_offset})"),
            )
            index += 1

    def close(self) -> None:
        if self._own and self._fh is not None:
            self._fh.close()
        self._fh = None
