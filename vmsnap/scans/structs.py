"""Declarative layout of the vmsnap accessed-bitmap series file (``.vmscan``).

Definitions and constants only; reading and writing live in ``series.py``.
All integers are little-endian. The file is::

    Header        40 bytes
    Period        repeated, one per scan period, in time order
    Trailer       24 bytes

Header (40 bytes)
    0   8  magic          b"VMSCAN\\r\\n" (the CR LF catches text-mode mangling)
    8   2  version        1
    10  2  flags          0 (reserved; a reader rejects unknown bits)
    12  4  page_size      bytes per page, a power of two >= 512
    16  8  n_pages        pages every bitmap covers
    24  8  base           address of page 0 (informational: heatmap axis)
    32  8  header_digest  first 8 bytes of BLAKE3(bytes 0..31)

Period (24 + ceil(n_pages/8) + 16 bytes)
    0   4  tag            b"PRD\\0"
    4   4  index          0, 1, 2, ... (must equal the period's position)
    8   8  timestamp_ns   signed; end of the period in ns, -1 when unknown
    16  8  n_accessed     number of set bits in the bitmap
    24  B  bitmap         B = ceil(n_pages/8); bit i%8 (LSB first) of byte i//8
                          is 1 when page i was accessed in the period; padding bits 0
    24+B 16 digest        BLAKE3(bytes 0 .. 24+B-1 of this record), 16 bytes

Trailer (24 bytes)
    0   4  tag            b"END\\0"
    4   4  n_periods      number of Period records before it
    8   16 digest         BLAKE3(header bytes 0..39 || every period digest in order), 16 bytes

The per-period digest catches a flipped bit; the trailer catches a file cut at a
period boundary or a period removed, duplicated or reordered.
"""

from __future__ import annotations

from construct import Bytes, Const, Int16ul, Int32ul, Int64sl, Int64ul, Struct

MAGIC = b"VMSCAN\r\n"
VERSION = 1
PERIOD_TAG = b"PRD\0"
END_TAG = b"END\0"
DIGEST_SIZE = 16
UNKNOWN_TIME = -1

Header = Struct(
    "magic" / Const(MAGIC),
    "version" / Int16ul,
    "flags" / Int16ul,
    "page_size" / Int32ul,
    "n_pages" / Int64ul,
    "base" / Int64ul,
    "header_digest" / Bytes(8),
)
HEADER_SIZE = Header.sizeof()  # 40
HEADER_DIGESTED = 32  # header_digest covers bytes 0..31

PeriodHead = Struct(
    "tag" / Const(PERIOD_TAG),
    "index" / Int32ul,
    "timestamp_ns" / Int64sl,
    "n_accessed" / Int64ul,
)
PERIOD_HEAD_SIZE = PeriodHead.sizeof()  # 24

Trailer = Struct(
    "tag" / Const(END_TAG),
    "n_periods" / Int32ul,
    "digest" / Bytes(DIGEST_SIZE),
)
TRAILER_SIZE = Trailer.sizeof()  # 24


def bitmap_size(n_pages: int) -> int:
    """Bytes of one period's bitmap."""
    return (n_pages + 7) // 8


def period_size(n_pages: int) -> int:
    """Bytes of one whole Period record."""
    return PERIOD_HEAD_SIZE + bitmap_size(n_pages) + DIGEST_SIZE
