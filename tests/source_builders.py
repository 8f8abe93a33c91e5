"""Build ELF cores, LiME dumps and QEMU migration streams by construction, for tests.

Written with the struct module straight from the format descriptions, sharing
no code with the readers, so a misunderstanding in a reader cannot hide in a
builder that shares it. Every builder records `marks`: the file offsets where
each structure starts, for truncation tests at every boundary.
"""

from __future__ import annotations

import io
import struct
import zlib


class Pipe(io.RawIOBase):
    """A non-seekable byte stream, like stdin from a pipe."""

    def __init__(self, data: bytes):
        self._b = io.BytesIO(data)

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, b):
        return self._b.readinto(b)

# ---------------------------------------------------------------- ELF


def build_elf(segments, elfclass=64, little=True, e_type=4, gap=b"", notes=True,
              reverse_data=False, xnum=False):
    """segments: list of (paddr, data, memsz or None). Returns (bytes, marks, offsets).

    `gap` is put before every segment's data (so offsets are unaligned when its
    length is odd); `reverse_data` stores the data in the file in reverse order
    of the program headers; `xnum` uses e_phnum = PN_XNUM and section header 0.
    """
    e = "<" if little else ">"
    is64 = elfclass == 64
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    phdrs = []
    if notes:
        phdrs.append(("note", 0, b"CORE\0\0\0\0", None))
    for paddr, data, memsz in segments:
        phdrs.append(("load", paddr, data, memsz))
    nph = len(phdrs)
    phoff = ehsize
    shoff = phoff + nph * phentsize if xnum else 0
    data_start = phoff + nph * phentsize + (shentsize if xnum else 0)
    # lay out data
    order = list(range(nph))
    if reverse_data:
        order.reverse()
    offsets = [0] * nph
    pos = data_start
    blobs = []
    for i in order:
        pos += len(gap)
        blobs.append(gap)
        offsets[i] = pos
        blobs.append(phdrs[i][2])
        pos += len(phdrs[i][2])
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if little else 2, 1, 0, 0]) + bytes(7)
    addr = "Q" if is64 else "I"
    hdr = ident + struct.pack(
        e + "HHI" + addr * 3 + "IHHHHHH",
        e_type, 62 if is64 else 3, 1, 0, phoff, shoff, 0, ehsize, phentsize,
        0xFFFF if xnum else nph, shentsize if xnum else 0, 1 if xnum else 0, 0,
    )
    assert len(hdr) == ehsize
    marks = [0, 16, ehsize]
    out = bytearray(hdr)
    for i, (kind, paddr, data, memsz) in enumerate(phdrs):
        marks.append(len(out))
        p_type = 1 if kind == "load" else 4
        memsz = len(data) if memsz is None else memsz
        if is64:
            out += struct.pack(e + "IIQQQQQQ", p_type, 0, offsets[i], paddr, paddr,
                               len(data), memsz, 0)
        else:
            out += struct.pack(e + "IIIIIIII", p_type, offsets[i], paddr, paddr,
                               len(data), memsz, 0, 0)
    if xnum:
        marks.append(len(out))
        if is64:
            out += struct.pack(e + "IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, nph, 0, 0)
        else:
            out += struct.pack(e + "IIIIIIIIII", 0, 0, 0, 0, 0, 0, 0, nph, 0, 0)
    for blob in blobs:
        if blob:
            marks.append(len(out))
        out += blob
    load_offsets = offsets[1:] if notes else offsets
    return bytes(out), sorted(set(marks)), load_offsets


# ---------------------------------------------------------------- LiME


def build_lime(ranges, version=1, magic=0x4C694D45):
    """ranges: list of (start, data). Returns (bytes, marks)."""
    out = bytearray()
    marks = []
    for start, data in ranges:
        marks.append(len(out))
        out += struct.pack("<IIQQ8s", magic, version, start, start + len(data) - 1, bytes(8))
        marks.append(len(out))
        out += data
    return bytes(out), marks


# ---------------------------------------------------------------- QEMU migration

ZERO, MEM_SIZE, PAGE, EOS, CONTINUE, XBZRLE = 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
COMPRESS_PAGE, MULTIFD_FLUSH, HOOK, FULL_FLAG = 0x100, 0x200, 0x80, 0x01


def uleb128_small(n: int) -> bytes:
    assert 0 <= n < 1 << 14
    return bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7])


def xbzrle_encode(old: bytes, new: bytes) -> bytes:
    """An XBZRLE delta turning old into new: (zero run, literal run) pairs, trailing zero run dropped."""
    assert len(old) == len(new)
    out = bytearray()
    i, n = 0, len(new)
    while i < n:
        z = i
        while i < n and old[i] == new[i]:
            i += 1
        if i == n:
            break
        zrun = i - z
        s = i
        while i < n and old[i] != new[i]:
            i += 1
        out += uleb128_small(zrun) + uleb128_small(i - s) + new[s:i]
    return bytes(out)


class StreamBuilder:
    """Writes a migration stream record by record; `marks` are record boundaries."""

    def __init__(self, page_size=4096):
        self.buf = bytearray()
        self.marks = []
        self.page_size = page_size
        self.last_block = None

    def _put(self, data: bytes) -> int:
        off = len(self.buf)
        self.marks.append(off)
        self.buf += data
        return off

    def header(self, magic=b"QEVM", version=3):
        return self._put(magic + struct.pack(">I", version))

    def configuration(self, machine="pc-q35-7.2", page_bits=None, caps=(), uuid=None, extra=None):
        off = self._put(b"\x07" + struct.pack(">I", len(machine)) + machine.encode())
        if page_bits is not None:
            self.subsection("configuration/target-page-bits", struct.pack(">I", page_bits))
        if caps:
            body = struct.pack(">I", len(caps)) + b"".join(bytes([len(c)]) + c.encode() for c in caps)
            self.subsection("configuration/capabilities", body)
        if uuid is not None:
            self.subsection("configuration/uuid", uuid)
        if extra is not None:
            self.subsection(*extra)
        return off

    def subsection(self, name, body, version=1):
        return self._put(b"\x05" + bytes([len(name)]) + name.encode() + struct.pack(">I", version) + body)

    def section_start(self, sid=2, idstr="ram", instance=0, version=4, kind=0x01):
        return self._put(bytes([kind]) + struct.pack(">I", sid) + bytes([len(idstr)])
                         + idstr.encode() + struct.pack(">II", instance, version))

    def section_part(self, sid=2, kind=0x02):
        self.last_block = None  # QEMU resets last_sent_block per iteration: be conservative
        return self._put(bytes([kind]) + struct.pack(">I", sid))

    def section_end(self, sid=2):
        return self.section_part(sid, kind=0x03)

    def footer(self, sid=2):
        return self._put(b"\x7e" + struct.pack(">I", sid))

    def command(self, cmd, data=b""):
        return self._put(b"\x08" + struct.pack(">HH", cmd, len(data)) + data)

    def eof(self):
        return self._put(b"\x00")

    def word(self, value):
        return self._put(struct.pack(">Q", value))

    def mem_size(self, blocks, addrs=None):
        """blocks: list of (name, length). addrs: per-block be64 for x-ignore-shared."""
        total = sum(length for _, length in blocks)
        off = self.word(total | MEM_SIZE)
        for i, (name, length) in enumerate(blocks):
            entry = bytes([len(name)]) + name.encode() + struct.pack(">Q", length)
            if addrs is not None:
                entry += struct.pack(">Q", addrs[i])
            self._put(entry)
        return off

    def _page_header(self, block, offset, flags, cont):
        if cont is None:
            cont = block == self.last_block
        self.last_block = block
        word = offset | flags | (CONTINUE if cont else 0)
        hdr = struct.pack(">Q", word)
        if not cont:
            hdr += bytes([len(block)]) + block.encode()
        return self._put(hdr)

    def page(self, block, offset, data, cont=None):
        assert len(data) == self.page_size
        off = self._page_header(block, offset, PAGE, cont)
        self._put(bytes(data))
        return off

    def zero(self, block, offset, fill=0, cont=None):
        off = self._page_header(block, offset, ZERO, cont)
        self._put(bytes([fill]))
        return off

    def xbzrle(self, block, offset, delta, cont=None, encoding=1):
        off = self._page_header(block, offset, XBZRLE, cont)
        self._put(bytes([encoding]) + struct.pack(">H", len(delta)))
        self._put(delta)
        return off

    def compressed(self, block, offset, data, cont=None, raw=None):
        off = self._page_header(block, offset, COMPRESS_PAGE, cont)
        comp = zlib.compress(bytes(data)) if raw is None else raw
        self._put(struct.pack(">I", len(comp)))
        self._put(comp)
        return off

    def eos(self):
        return self.word(EOS)

    def bytes(self) -> bytes:
        return bytes(self.buf)


def simple_stream(blocks, pages, caps=(), footers=True, device_tail=True):
    """A complete precopy stream: START (block list), PART (pages), END, device tail.

    pages: list of ("page"|"zero"|"xbzrle"|"compressed", block, offset, payload).
    Returns (builder, ram_end_offset).
    """
    b = StreamBuilder()
    b.header()
    b.configuration(caps=caps)
    b.section_start()
    b.mem_size(blocks, addrs=[0] * len(blocks) if "x-ignore-shared" in caps else None)
    b.eos()
    if footers:
        b.footer()
    b.section_part()
    for kind, block, offset, payload in pages:
        getattr(b, {"page": "page", "zero": "zero", "xbzrle": "xbzrle",
                    "compressed": "compressed"}[kind])(block, offset, payload)
    b.eos()
    if footers:
        b.footer()
    b.section_end()
    b.eos()
    if footers:
        b.footer()
    ram_end = len(b.buf)
    if device_tail:
        b.section_start(sid=3, idstr="timer", version=2, kind=0x04)
        b._put(b"\x00" * 24)  # device state vmsnap does not parse
        b.footer(3)
        b.eof()
    return b, ram_end
