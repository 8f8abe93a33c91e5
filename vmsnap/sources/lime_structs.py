"""LiME (Linux Memory Extractor) "lime" format definitions. Definitions only;
the reader is vmsnap/sources/lime.py.

A dump is a sequence of ranges, each a 32-byte little-endian header followed by
the range's bytes:

  u32 magic    0x4C694D45 (the bytes "EMiL" on disk)
  u32 version  1
  u64 s_addr   first physical address of the range
  u64 e_addr   last physical address of the range (inclusive)
  u8  reserved[8]

The range holds e_addr - s_addr + 1 bytes. LiME's "raw" and "padded" formats
have no headers: read those as raw files.
"""

from __future__ import annotations

from construct import Bytes, Const, Int32ul, Int64ul, Struct

LIME_MAGIC = 0x4C694D45
LIME_MAGIC_BYTES = LIME_MAGIC.to_bytes(4, "little")  # b"EMiL"
LIME_VERSION = 1

RangeHeader = Struct(
    "magic" / Const(LIME_MAGIC, Int32ul),
    "version" / Int32ul,
    "s_addr" / Int64ul,
    "e_addr" / Int64ul,
    "reserved" / Bytes(8),
)
HEADER_SIZE = RangeHeader.sizeof()  # 32
