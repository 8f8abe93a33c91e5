"""Declarative layout of the hot/cold levels file (``vmsnap analyze hotcold --out``).

Definitions and constants only; reading and writing live in ``hotcold.py``.
All integers little-endian::

    Header          48 bytes
    Segment         24 bytes each, n_segments of them
    levels          n_pages bytes, one per page: 0 = never seen accessed,
                    1 = coldest active level ... `levels` = hottest
    digest          16 bytes: BLAKE3 of every byte before it

Header
    0   8  magic         b"VMSNAPHC"
    8   2  version       1
    10  1  levels        L, number of active levels (2..250); byte values are 0..L
    11  1  promote_by    levels gained per accessed scan (L = straight to hottest)
    12  4  page_size     bytes per page
    16  8  n_pages       number of level bytes
    24  4  periods       scan periods the levels were computed over
    28  4  demote_after  idle scans before a page drops one level
    32  4  n_segments    number of Segment records
    36  4  flags         0 (reserved)
    40  8  reserved      0

Segment (maps dense page numbers to guest addresses)
    0   8  base          address of the segment's first page
    8   8  first_page    index of that page in the level array
    16  8  n_pages       pages in the segment (contiguous addresses)

A page's address is base + (i - first_page) * page_size for the segment whose
[first_page, first_page + n_pages) holds i. For a single raw dump or a
physical bitmap there is one segment with base 0 (or the first PFN's address).
"""

from __future__ import annotations

from construct import Const, Int8ul, Int16ul, Int32ul, Int64ul, Struct

MAGIC = b"VMSNAPHC"
VERSION = 1
DIGEST_SIZE = 16
MAX_LEVELS = 250

LevelsHeader = Struct(
    "magic" / Const(MAGIC),
    "version" / Int16ul,
    "levels" / Int8ul,
    "promote_by" / Int8ul,
    "page_size" / Int32ul,
    "n_pages" / Int64ul,
    "periods" / Int32ul,
    "demote_after" / Int32ul,
    "n_segments" / Int32ul,
    "flags" / Int32ul,
    "reserved" / Int64ul,
)
HEADER_SIZE = LevelsHeader.sizeof()  # 48

SegmentRecord = Struct(
    "base" / Int64ul,
    "first_page" / Int64ul,
    "n_pages" / Int64ul,
)
SEGMENT_SIZE = SegmentRecord.sizeof()  # 24
