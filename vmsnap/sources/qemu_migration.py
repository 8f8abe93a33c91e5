"""QEMU migration streams (`migrate "exec:cat > FILE"`, `savevm` state): the RAM blocks.

Reads the file header, the configuration section and the "ram" live section
(record layout in qemu_migration_structs.py), and yields one region per RAM
block, in the order of the stream's block list (QEMU sorts it largest first):
`pc.ram`, `/rom@etc/acpi/tables`, `pc.bios`, `pc.rom`, ...

Region bases. The stream carries no guest-physical addresses, only offsets
inside each RAM block. vmsnap lays the blocks out in one address space of its
own: the first block at 0, each next block at the first 1 MiB boundary after
the end of the previous one. The first block is normally the main RAM
(`pc.ram`), so its region offsets equal the offsets in the guest's
memory-backend file, and on x86 machines with less RAM than the low-memory
limit (2 GiB on q35, 3 GiB on pc) they equal guest-physical addresses.

Page records arrive in any order and a page may be sent more than once (a later
copy wins; an XBZRLE record is a delta over the page's previous content), so
the RAM is first assembled into an unnamed sparse temporary file (in TMPDIR or
`tmpdir`, deleted on close) and then yielded block by block. Memory use is a
few MiB of buffers, whatever the RAM size, plus two bits of bookkeeping per
page (64 KiB per GiB of RAM); the temporary file needs as much disk as the non-zero part of the RAM
(keep TMPDIR off tmpfs for big guests). The file is never extended past the
highest page written; reads beyond its end are zeros.

Pages the stream never sends read as zero: that is what a fresh QEMU destination
has (QEMU skips pages the guest reported free through virtio-balloon free-page
hinting, and discarded virtio-mem ranges). `unsent_pages` counts them per block.
With the x-ignore-shared capability a shared (file-backed) block is not sent at
all; such a block is a FormatError, since its memory is in the shared file.

Reading stops after the RAM section's SECTION_END (and footer). The device
state that follows (SECTION_FULL records of each device, then EOF and the JSON
VM description) is not parsed: `device_state_offset` says where it starts.
Anything vmsnap cannot read exactly is a FormatError naming the offset, never
a guess: other live sections (block migration, dirty bitmaps), device sections
before the end of RAM, postcopy / COLO commands, RDMA hooks, multifd streams
(pages on other channels), the mapped-ram file layout, unknown flags.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from ..errors import FormatError, OutputError
from ..streams import MAX_FILE_OFFSET
from . import qemu_migration_structs as Q
from .base import READ_CHUNK, Region, Source, input_name, next_data, zero_chunks
from .binio import Cursor, check_magic, parse_struct, read_struct
from .raw import open_input

BLOCK_ALIGN = 1 << 20  # region base of each RAM block after the first
RUN_MAX_BYTES = 4 << 20  # coalesce consecutive page writes up to this size
RUN_MAX_PARTS = 1024  # IOV_MAX on Linux
ZERO_RUN_MIN = 16  # consecutive zero-page records worth one numpy check
ZERO_RUN_MAX = 1 << 16
MAX_BLOCK_BYTES = 1 << 44  # 16 TiB: a longer RAM block is a corrupt length, not a guest

# received[] states per page
_UNSENT, _ZERO_IN_FILE, _DATA_IN_FILE = 0, 1, 2

_BE64 = struct.Struct(">Q")


class PageStates:
    """Two bits per page (received, holds non-zero data in the temporary file).

    Allocated 256 Ki pages (1 GiB of 4 KiB pages, 64 KiB of bits) at a time as
    pages arrive, so a corrupt block length costs nothing until pages really
    come, and a 1 TiB guest needs 64 MiB of bookkeeping.
    """

    CHUNK_BITS = 18
    _MASK = (1 << CHUNK_BITS) - 1

    def __init__(self, npages: int):
        self.npages = npages
        self._chunks: dict[int, tuple[bytearray, bytearray]] = {}

    def _chunk(self, key: int) -> tuple[bytearray, bytearray]:
        c = self._chunks.get(key)
        if c is None:
            n = min(1 << self.CHUNK_BITS, self.npages - (key << self.CHUNK_BITS))
            c = self._chunks[key] = (bytearray((n + 7) >> 3), bytearray((n + 7) >> 3))
        return c

    def swap(self, i: int, state: int) -> int:
        """Set page i's state; return the previous one."""
        recv, data = self._chunk(i >> self.CHUNK_BITS)
        j = i & self._MASK
        byte, bit = j >> 3, 1 << (j & 7)
        if not recv[byte] & bit:
            old = _UNSENT
            recv[byte] |= bit
        else:
            old = _DATA_IN_FILE if data[byte] & bit else _ZERO_IN_FILE
        if state == _DATA_IN_FILE:
            data[byte] |= bit
        elif old == _DATA_IN_FILE:
            data[byte] &= ~bit & 0xFF
        return old

    set = swap

    def get(self, i: int) -> int:
        c = self._chunks.get(i >> self.CHUNK_BITS)
        if c is None:
            return _UNSENT
        j = i & self._MASK
        byte, bit = j >> 3, 1 << (j & 7)
        if not c[0][byte] & bit:
            return _UNSENT
        return _DATA_IN_FILE if c[1][byte] & bit else _ZERO_IN_FILE

    def zero_range_if_no_data(self, start: int, count: int) -> bool:
        """Mark pages [start, start + count) received as zero, unless one of them holds
        data in the temporary file: then change nothing and return False."""
        spans = list(self._spans(start, count))
        if any(_any_bits(data, lo, hi) for _, data, lo, hi in spans):
            return False
        for recv, _, lo, hi in spans:
            _set_bits(recv, lo, hi)
        return True

    def set_data_range(self, start: int, count: int) -> None:
        """Mark pages [start, start + count) received, with data in the temporary file."""
        for recv, data, lo, hi in self._spans(start, count):
            _set_bits(recv, lo, hi)
            _set_bits(data, lo, hi)

    def _spans(self, start: int, count: int):
        """(received bits, data bits, lo, hi) of each bookkeeping chunk that [start, start+count) touches."""
        i, end = start, start + count
        while i < end:
            key = i >> self.CHUNK_BITS
            stop = min(end, (key + 1) << self.CHUNK_BITS)
            recv, data = self._chunk(key)
            yield recv, data, i & self._MASK, ((stop - 1) & self._MASK) + 1
            i = stop

    def count_unsent(self) -> int:
        received = sum(int.from_bytes(recv, "little").bit_count() for recv, _ in self._chunks.values())
        return self.npages - received


def _bit_masks(lo: int, hi: int) -> tuple[int, int, int, int]:
    """Byte range and edge masks for bits [lo, hi) of a little-endian bit array."""
    b0, b1 = lo >> 3, (hi - 1) >> 3
    head = (0xFF << (lo & 7)) & 0xFF
    tail = (1 << (((hi - 1) & 7) + 1)) - 1
    return b0, b1, head, tail


def _any_bits(arr: bytearray, lo: int, hi: int) -> bool:
    if lo >= hi:
        return False
    b0, b1, head, tail = _bit_masks(lo, hi)
    if b0 == b1:
        return bool(arr[b0] & head & tail)
    if arr[b0] & head or arr[b1] & tail:
        return True
    middle = arr[b0 + 1 : b1]
    return middle.count(0) != len(middle)


def _set_bits(arr: bytearray, lo: int, hi: int) -> None:
    if lo >= hi:
        return
    b0, b1, head, tail = _bit_masks(lo, hi)
    if b0 == b1:
        arr[b0] |= head & tail
        return
    arr[b0] |= head
    arr[b1] |= tail
    arr[b0 + 1 : b1] = b"\xff" * (b1 - b0 - 1)


@dataclass
class RamBlock:
    name: str
    length: int
    base: int  # region base, also the offset of the block in the temporary file
    received: PageStates = field(repr=False)


class XbzrleError(ValueError):
    pass


def xbzrle_decode(src: bytes, page: bytearray) -> None:
    """Apply an XBZRLE delta to `page` in place, exactly as QEMU's xbzrle_decode_buffer.

    The encoding is a sequence of (zero run, literal run) pairs, each length a
    ULEB128 of at most 2 bytes: a zero run keeps that many bytes of the old
    page, a literal run replaces that many bytes with the bytes that follow.
    """
    i, d, slen, dlen = 0, 0, len(src), len(page)
    while i < slen:
        for literal in (False, True):
            if slen - i < 2:
                raise XbzrleError(f"run length cut short at delta byte {i}")
            start = i
            b0 = src[i]
            if b0 & 0x80:
                b1 = src[i + 1]
                if b1 & 0x80:
                    raise XbzrleError(f"run length longer than 14 bits at delta byte {start}")
                count = (b0 & 0x7F) | (b1 << 7)
                i += 2
            else:
                count = b0
                i += 1
            if not literal:
                if start and not count:  # only a zero run at the very start may be empty
                    raise XbzrleError(f"empty zero run at delta byte {start}")
                d += count
                if d > dlen:
                    raise XbzrleError(
                        f"zero run goes past the end of the page at delta byte {start}"
                    )
            else:
                if not count:
                    raise XbzrleError(f"empty literal run at delta byte {start}")
                if d + count > dlen or i + count > slen:
                    raise XbzrleError(f"literal run of {count} overflows at delta byte {start}")
                page[d : d + count] = src[i : i + count]
                d += count
                i += count


class QemuMigrationSource(Source):
    format_name = "qemu"
    read_chunk = READ_CHUNK  # read-ahead size of the stream (tests make it small)

    def __init__(self, path: str, fh: BinaryIO | None = None, tmpdir: str | None = None):
        self.path = path
        self._own = fh is None
        self._fh = open_input(path) if fh is None else fh
        self._tmpdir = tmpdir
        self._tmp = None
        self.machine: str | None = None
        self.capabilities: list[str] = []
        self.uuid: bytes | None = None
        self.page_size = 1 << Q.DEFAULT_TARGET_PAGE_BITS
        self.blocks: list[RamBlock] = []
        self._by_name: dict[str, RamBlock] = {}
        self._ram_id: int | None = None
        self._ram_done = False
        self._footers: bool | None = None  # does this stream send section footers?
        self._last: RamBlock | None = None
        self._run_parts: list = []
        self._run_start = 0
        self._run_len = 0
        self.records = {"page": 0, "zero": 0, "xbzrle": 0, "compressed": 0}
        self.unsent_pages: dict[str, int] = {}
        self.device_state_offset: int | None = None
        self.ram_setup_end_offset: int | None = None  # end of the 'ram' SECTION_START (and footer)
        self._started = False
        try:
            self._cur = Cursor(self._fh, path, chunk=self.read_chunk)
            self._header()
            while self._ram_id is None or not self.blocks:
                self._record()  # up to and including the RAM block list
        except BaseException:
            self.close()
            raise
        super().__init__(f"qemu:{input_name(path)}")

    # ------------------------------------------------------------ errors

    @property
    def ram_section_id(self) -> int | None:
        """The section id of the 'ram' live section."""
        return self._ram_id

    @property
    def section_footers(self) -> bool:
        """Whether this stream ends every section with a footer (QEMU 2.4+ machine types)."""
        return bool(self._footers)

    def _err(self, offset: int, msg: str) -> FormatError:
        return FormatError(f"{self.path}: {msg} at offset {offset}")

    # ------------------------------------------------------------ header

    def _header(self) -> None:
        cur = self._cur
        data = cur.read(Q.FileHeader.sizeof(), "migration stream header")
        check_magic(data, Q.QEMU_VM_FILE_MAGIC, "a QEMU migration stream", self.path, 0)
        hdr = parse_struct(Q.FileHeader, data, "migration stream header", self.path, 0)
        if hdr.version != Q.QEMU_VM_FILE_VERSION:
            raise self._err(
                4, f"unsupported migration stream version {hdr.version} (vmsnap reads 3)"
            )
        if cur.peek_u8() == Q.QEMU_VM_CONFIGURATION:
            cur.u8("configuration marker")
            self._configuration()

    def _configuration(self) -> None:
        cur = self._cur
        off = cur.offset
        n = cur.be32("machine name length")
        if n > 256:
            raise self._err(off, f"implausible machine name length {n}")
        self.machine = bytes(cur.read(n, "machine name")).decode("latin-1")
        while cur.peek_u8() == Q.QEMU_VM_SUBSECTION:
            sub_off = cur.offset
            cur.u8("subsection marker")
            idstr = self._pascal("subsection name")
            version = cur.be32("subsection version")
            if version != 1:
                raise self._err(sub_off, f"configuration subsection {idstr!r} version {version}")
            if idstr == Q.CONFIG_SUBSECTION_PAGE_BITS:
                bits_off = cur.offset
                bits = cur.be32("target page bits")
                if not 10 <= bits <= 16:
                    raise self._err(bits_off, f"unsupported target page bits {bits}")
                self.page_size = 1 << bits
            elif idstr == Q.CONFIG_SUBSECTION_CAPS:
                count = cur.be32("capability count")
                for _ in range(count):
                    cap_off = cur.offset
                    cap = self._pascal("capability name")
                    if cap == Q.CAP_MAPPED_RAM:
                        raise self._err(
                            cap_off,
                            "mapped-ram streams (a different file layout) are not supported",
                        )
                    if cap != Q.CAP_X_IGNORE_SHARED:
                        raise self._err(cap_off, f"unknown migration capability {cap!r}")
                    self.capabilities.append(cap)
            elif idstr == Q.CONFIG_SUBSECTION_UUID:
                self.uuid = bytes(cur.read(16, "VM UUID"))
            else:
                raise self._err(sub_off, f"unknown configuration subsection {idstr!r}")

    def _pascal(self, what: str) -> str:
        n = self._cur.u8(f"{what} length")
        return bytes(self._cur.read(n, what)).decode("latin-1")

    # ------------------------------------------------------------ records

    def _record(self) -> None:
        cur = self._cur
        off = cur.offset
        kind = cur.u8("section type")
        if kind in (Q.QEMU_VM_SECTION_START, Q.QEMU_VM_SECTION_FULL):
            sid = cur.be32("section id")
            n = cur.u8("section name length")
            tail = bytes([n]) + bytes(cur.read(n + 8, "section header"))
            hdr = parse_struct(Q.SectionStartTail, tail, "section header", self.path, off + 5)
            if kind == Q.QEMU_VM_SECTION_FULL:
                raise self._err(
                    off,
                    f"device section {hdr.idstr!r} (SECTION_FULL) comes before the end of the "
                    "RAM section; device state has no length in the stream, so vmsnap cannot "
                    "skip it",
                )
            if hdr.idstr != "ram":
                raise self._err(
                    off,
                    f"unsupported live section {hdr.idstr!r} (only 'ram' is read: block "
                    "migration and dirty-bitmap streams are not supported)",
                )
            if self._ram_id is not None:
                raise self._err(off, "a second SECTION_START for 'ram'")
            if hdr.version_id != Q.RAM_SECTION_VERSION:
                raise self._err(off, f"'ram' section version {hdr.version_id} (vmsnap reads 4)")
            self._ram_id = sid
            self._ram_records()
            self._footer(sid)
            self.ram_setup_end_offset = cur.offset
        elif kind in (Q.QEMU_VM_SECTION_PART, Q.QEMU_VM_SECTION_END):
            sid = cur.be32("section id")
            if self._ram_id is None or sid != self._ram_id:
                raise self._err(
                    off,
                    f"{Q.SECTION_NAMES[kind]} for section {sid}, which is not the 'ram' "
                    f"section{'' if self._ram_id is None else f' ({self._ram_id})'}",
                )
            self._ram_records()
            self._footer(sid)
            if kind == Q.QEMU_VM_SECTION_END:
                self._ram_done = True
                self.device_state_offset = cur.offset
        elif kind == Q.QEMU_VM_COMMAND:
            cmd = cur.be16("command")
            length = cur.be16("command length")
            cur.read(length, "command data")
            if cmd not in Q.HARMLESS_COMMANDS:
                name = Q.MIG_CMD_NAMES.get(cmd, f"#{cmd}")
                raise self._err(
                    off,
                    f"unsupported command {name} (postcopy, COLO and packaged streams are not read)",
                )
        elif kind == Q.QEMU_VM_EOF:
            what = "the RAM section ended" if self._ram_id is not None else "any RAM section"
            raise self._err(off, f"stream ends (QEMU_VM_EOF) before {what}")
        elif kind in Q.SECTION_NAMES:
            raise self._err(off, f"unexpected {Q.SECTION_NAMES[kind]} record")
        else:
            raise self._err(off, f"unknown section type 0x{kind:02x}")

    def _footer(self, sid: int) -> None:
        # Footers are sent by every machine type since QEMU 2.4; older ones send none.
        # The first section decides; after that every section must agree.
        cur = self._cur
        nxt = cur.peek_u8()
        present = nxt == Q.QEMU_VM_SECTION_FOOTER
        if self._footers is None:
            if nxt is None:
                raise cur.truncated("section footer or next section", 1)
            self._footers = present
        elif present != self._footers:
            if nxt is None:
                raise cur.truncated("section footer", 5)
            raise self._err(
                cur.offset,
                "missing section footer" if self._footers else "unexpected section footer",
            )
        if present:
            off = cur.offset
            foot = read_struct(cur, Q.SectionFooter, "section footer")
            if foot.section_id != sid:
                raise self._err(
                    off, f"section footer for section {foot.section_id}, expected {sid}"
                )

    def _ram_records(self) -> None:
        """Page records of one 'ram' section, up to and including EOS."""
        # The hot path (PAGE and ZERO records, one per guest page) is written out
        # inline; the rarer records go through the helpers.
        cur = self._cur
        page_size = self.page_size
        page_bits = page_size.bit_length() - 1
        mask = page_size - 1
        read, be64 = cur.read, _BE64.unpack
        records = self.records
        n_page = n_zero = 0
        next_page = -1  # the page right after the last PAGE record, to spot runs
        CONT, PAGE, ZERO = Q.RAM_SAVE_FLAG_CONTINUE, Q.RAM_SAVE_FLAG_PAGE, Q.RAM_SAVE_FLAG_ZERO
        try:
            while True:
                off = cur._base + cur._pos
                word = be64(read(8, "RAM record header"))[0]
                flags = word & mask
                addr = word & ~mask
                kind = flags & ~CONT
                if kind == PAGE or kind == ZERO:
                    block = self._last if flags & CONT else None
                    if block is None:
                        block = self._block(flags, off)
                    if addr >= block.length:
                        self._page_index(block, addr, off)  # raises
                    idx = addr >> page_bits
                    if kind == PAGE:
                        self._queue(block.base + addr, read(page_size, "page data"))
                        block.received.set(idx, _DATA_IN_FILE)
                        n_page += 1
                        if addr == next_page and flags & CONT:  # a run of data pages
                            k = self._page_run(block, addr + page_size)
                            n_page += k
                            addr += k * page_size
                        next_page = addr + page_size
                    else:
                        fill = read(1, "zero page fill byte")[0]
                        state = _DATA_IN_FILE if fill else _ZERO_IN_FILE
                        if block.received.swap(idx, state) == _DATA_IN_FILE or fill:
                            self._flush()
                            self._pwrite(block.base + addr, bytes([fill]) * page_size)
                        elif len(cur._buf) - cur._pos >= 9 * ZERO_RUN_MIN:
                            n_zero += self._zero_run(block, addr + page_size)
                        n_zero += 1
                    continue
                self._rare_record(kind, flags, addr, off)
                if kind == Q.RAM_SAVE_FLAG_EOS:
                    return
        finally:
            records["page"] += n_page
            records["zero"] += n_zero

    def _zero_run(self, block: RamBlock, addr: int) -> int:
        """Consume the ZERO|CONTINUE records (fill 0) for pages addr, addr + page, ...
        that follow in the read-ahead buffer, checked with numpy a window at a time;
        return how many. Free pages come in long runs of these 9-byte records. Pages
        that hold data in the temporary file stop the run (the record loop writes them).
        """
        import numpy as np

        cur = self._cur
        buf, pos = cur._buf, cur._pos
        ps = self.page_size
        flags = Q.RAM_SAVE_FLAG_ZERO | Q.RAM_SAVE_FLAG_CONTINUE
        left = (block.length - addr) // ps
        total, window = 0, ZERO_RUN_MIN
        while True:
            n = min(window, (len(buf) - pos) // 9, left - total)
            if n < ZERO_RUN_MIN:
                break
            recs = np.frombuffer(buf, dtype=np.uint8, count=n * 9, offset=pos).reshape(n, 9)
            words = np.ascontiguousarray(recs[:, :8]).view(">u8")[:, 0]
            first = (addr + total * ps) | flags
            want = np.arange(n, dtype=np.uint64) * np.uint64(ps) + np.uint64(first)
            ok = (words == want) & (recs[:, 8] == 0)
            k = n if ok.all() else int(ok.argmin())
            if k and not block.received.zero_range_if_no_data(addr // ps + total, k):
                break
            total += k
            pos += 9 * k
            if k < n:
                break
            window = min(window * 8, ZERO_RUN_MAX)
        cur._pos = pos
        return total

    def _page_run(self, block: RamBlock, addr: int) -> int:
        """Consume the PAGE|CONTINUE records for pages addr, addr + page, ... that
        follow in the read-ahead buffer (their headers checked with numpy, the data
        queued as views of the buffer); return how many."""
        import numpy as np

        cur = self._cur
        buf, pos = cur._buf, cur._pos
        ps = self.page_size
        stride = 8 + ps
        n = min((len(buf) - pos) // stride, (block.length - addr) // ps)
        if n < 1:
            return 0
        recs = np.frombuffer(buf, dtype=np.uint8, count=n * stride, offset=pos).reshape(n, stride)
        words = np.ascontiguousarray(recs[:, :8]).view(">u8")[:, 0]
        first = addr | Q.RAM_SAVE_FLAG_PAGE | Q.RAM_SAVE_FLAG_CONTINUE
        ok = words == np.arange(n, dtype=np.uint64) * np.uint64(ps) + np.uint64(first)
        k = n if ok.all() else int(ok.argmin())
        if k:
            view = cur._view
            starts = range(pos + 8, pos + k * stride, stride)
            self._queue_many(block.base + addr, [view[p : p + ps] for p in starts], ps)
            block.received.set_data_range(addr // ps, k)
            cur._pos = pos + k * stride
        return k

    def _rare_record(self, kind: int, flags: int, addr: int, off: int) -> None:
        """Every RAM record other than PAGE and ZERO."""
        cur = self._cur
        page_size = self.page_size
        read = cur.read
        records = self.records
        if kind == Q.RAM_SAVE_FLAG_EOS:
            return
        if kind == Q.RAM_SAVE_FLAG_XBZRLE:
            block = self._block(flags, off)
            idx = self._page_index(block, addr, off)
            enc_off = cur.offset
            enc = cur.u8("XBZRLE encoding flag")
            if enc != Q.ENCODING_FLAG_XBZRLE:
                raise self._err(enc_off, f"unknown XBZRLE encoding flag 0x{enc:02x}")
            n = cur.be16("XBZRLE length")
            if n > page_size:
                raise self._err(enc_off, f"XBZRLE delta of {n} bytes is longer than a page")
            delta = read(n, "XBZRLE delta")
            self._flush()
            page = bytearray(self._pread(block.base + addr, page_size))
            try:
                xbzrle_decode(delta, page)
            except XbzrleError as exc:
                raise self._err(enc_off + 3, f"bad XBZRLE delta: {exc}") from None
            self._pwrite(block.base + addr, page)
            block.received.set(idx, _DATA_IN_FILE)
            records["xbzrle"] += 1
        elif kind == Q.RAM_SAVE_FLAG_COMPRESS_PAGE:
            block = self._block(flags, off)
            idx = self._page_index(block, addr, off)
            len_off = cur.offset
            n = cur.be32("compressed page length")
            bound = page_size + (page_size >> 12) + (page_size >> 14) + (page_size >> 25) + 13
            if not 0 < n <= bound:
                raise self._err(len_off, f"compressed page length {n} out of range")
            data = bytes(read(n, "compressed page"))
            try:
                d = zlib.decompressobj()
                page = d.decompress(data, page_size + 1)
                ok = len(page) == page_size and d.eof
            except zlib.error:
                ok = False
            if not ok:
                raise self._err(len_off + 4, "compressed page does not inflate to one page")
            self._queue(block.base + addr, page)
            block.received.set(idx, _DATA_IN_FILE)
            records["compressed"] += 1
        elif kind == Q.RAM_SAVE_FLAG_MEM_SIZE:
            self._mem_size(addr, off)
        else:
            hint = {
                Q.RAM_SAVE_FLAG_MULTIFD_FLUSH: " (a multifd stream: its pages travel on "
                "other channels and are not in this file)",
                Q.RAM_SAVE_FLAG_HOOK: " (an RDMA stream)",
                Q.RAM_SAVE_FLAG_FULL: " (obsolete since 2009)",
            }.get(kind, "")
            raise self._err(off, f"unsupported RAM record flags {Q.flag_names(flags)}{hint}")

    def _block(self, flags: int, off: int) -> RamBlock:
        if flags & Q.RAM_SAVE_FLAG_CONTINUE:
            if self._last is None:
                raise self._err(off, "CONTINUE page record with no previous block")
            return self._last
        name = self._pascal("RAM block name")
        block = self._by_name.get(name)
        if block is None:
            if not self.blocks:
                raise self._err(off, "page record before the RAM block list (MEM_SIZE)")
            raise self._err(off, f"page record for unknown RAM block {name!r}")
        self._last = block
        return block

    def _page_index(self, block: RamBlock, addr: int, off: int) -> int:
        if addr >= block.length:
            raise self._err(
                off,
                f"page offset 0x{addr:x} beyond RAM block {block.name!r} (0x{block.length:x} bytes)",
            )
        return addr // self.page_size

    def _mem_size(self, total: int, off: int) -> None:
        if self.blocks:
            raise self._err(off, "a second RAM block list (MEM_SIZE)")
        cur = self._cur
        ignore_shared = Q.CAP_X_IGNORE_SHARED in self.capabilities
        remaining = total
        end = 0
        while remaining:
            boff = cur.offset
            name = self._pascal("RAM block name")
            length = cur.be64("RAM block length")
            if ignore_shared:
                cur.be64("RAM block address")
            if name in self._by_name:
                raise self._err(boff, f"RAM block {name!r} listed twice")
            if length % self.page_size or length > remaining or length > MAX_BLOCK_BYTES:
                raise self._err(
                    boff,
                    f"RAM block {name!r} length 0x{length:x} is not a whole number of pages "
                    f"or exceeds the 0x{remaining:x} bytes left of the MEM_SIZE total",
                )
            base = 0 if not self.blocks else -(-end // BLOCK_ALIGN) * BLOCK_ALIGN
            if base + length > MAX_FILE_OFFSET:  # the blocks are laid out in one temporary file
                raise self._err(boff, f"RAM block {name!r} ends past the largest file offset: too many blocks")
            block = RamBlock(name, length, base, PageStates(length // self.page_size))
            self.blocks.append(block)
            self._by_name[name] = block
            end = base + length
            remaining -= length
        if not self.blocks:
            raise self._err(off, "empty RAM block list")
        try:
            self._tmp = tempfile.TemporaryFile(prefix="vmsnap-qemu-", dir=self._tmpdir)
        except OSError as exc:
            raise OutputError(f"cannot create a temporary file for {self.path}: {exc}") from exc
        # No ftruncate: the file stays as short as the highest page written, and
        # reads past its end are zeros (see _chunks).

    # ------------------------------------------------------------ temp file

    def _queue(self, pos: int, data) -> None:
        if (
            self._run_parts
            and pos == self._run_start + self._run_len
            and self._run_len < RUN_MAX_BYTES
            and len(self._run_parts) < RUN_MAX_PARTS
        ):
            self._run_parts.append(data)
            self._run_len += len(data)
            return
        self._flush()
        self._run_parts = [data]
        self._run_start = pos
        self._run_len = len(data)

    def _queue_many(self, pos: int, parts: list, part_size: int) -> None:
        """_queue for consecutive parts of `part_size` bytes each, a slice at a time."""
        i = 0
        while i < len(parts):
            if not self._run_parts or pos != self._run_start + self._run_len:
                self._flush()
                self._run_start = pos
            room = min(
                RUN_MAX_PARTS - len(self._run_parts),
                (RUN_MAX_BYTES - self._run_len) // part_size,
            )
            if room <= 0:
                self._flush()
                self._run_start = pos
                continue
            take = parts[i : i + room]
            self._run_parts.extend(take)
            self._run_len += len(take) * part_size
            pos += len(take) * part_size
            i += len(take)

    def _flush(self) -> None:
        if not self._run_parts:
            return
        fd = self._tmp.fileno()
        pos = self._run_start
        parts = self._run_parts
        total = self._run_len
        self._run_parts = []
        self._run_len = 0
        while True:
            try:
                written = os.pwritev(fd, parts, pos)
            except OSError as exc:
                raise self._tmp_error(exc) from exc
            if written == total:
                return
            # a short write: drop what was written and go on with the rest
            pos += written
            total -= written
            i = 0
            while written >= len(parts[i]):
                written -= len(parts[i])
                i += 1
            parts = [memoryview(parts[i])[written:]] + parts[i + 1 :]

    def _pwrite(self, pos: int, data) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.pwrite(self._tmp.fileno(), view, pos)
            except OSError as exc:
                raise self._tmp_error(exc) from exc
            view = view[n:]
            pos += n

    def _pread(self, pos: int, n: int) -> bytes:
        """n bytes at pos; past the end of the (sparse, unextended) file they are zeros."""
        data = os.pread(self._tmp.fileno(), n, pos)
        return data if len(data) == n else data + bytes(n - len(data))

    def _tmp_error(self, exc: OSError) -> OutputError:
        return OutputError(
            f"temporary file for {self.path}: write failed: {exc.strerror or exc} "
            "(set TMPDIR to a directory with more space)"
        )

    # ------------------------------------------------------------ Source API

    @property
    def size_hint(self) -> int:
        return sum(b.length for b in self.blocks)

    def load(self) -> None:
        """Read the rest of the RAM section into the temporary file (regions() calls it)."""
        while not self._ram_done:
            self._record()
        self._flush()
        ignore_shared = Q.CAP_X_IGNORE_SHARED in self.capabilities
        for block in self.blocks:
            unsent = block.received.count_unsent()
            if unsent and ignore_shared and unsent == block.received.npages:
                raise FormatError(
                    f"{self.path}: RAM block {block.name!r} is not in the stream: it was "
                    "migrated with x-ignore-shared, its memory is in the shared memory file"
                )
            self.unsent_pages[block.name] = unsent

    def regions(self) -> Iterator[tuple[Region, Iterator[bytes]]]:
        if self._started:
            raise RuntimeError("QemuMigrationSource.regions() can be iterated only once")
        self._started = True
        self.load()
        for block in self.blocks:
            yield Region(block.name, block.base, block.length), self._chunks(block)

    def _chunks(self, block: RamBlock) -> Iterator[bytes]:
        """The block's bytes; a chunk that is all hole in the temporary file is served
        from one shared zero buffer instead of being read (most of a guest is zero)."""
        fd = self._tmp.fileno()
        pos, end = block.base, block.base + block.length
        data_at = -1  # next data offset at or after pos, as far as we know
        while pos < end:
            n = min(READ_CHUNK, end - pos)
            if data_at < pos:
                data_at = next_data(fd, pos)
            if data_at >= pos + n:
                yield from zero_chunks(n)  # consumers skip these without reading them
            else:
                yield self._pread(pos, n)
            pos += n

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.close()
            self._tmp = None
        if self._own and self._fh is not None:
            self._fh.close()
        self._fh = None
