"""The .vms file format, defined once, declaratively (documented in man/vmsnap-format.5).

Layout, all integers little-endian:

    Header    magic, version, flags, page size, source description, BLAKE3 of the header
    Frames    zstd frames of stored page data (and of attachments), back to back
    Index     one zstd frame holding IndexBody (+ IndexAttachments when FLAG_ATTACHMENTS)
    Trailer   64 bytes: where the index is, its size and BLAKE3 digest, and an end magic

The writer appends only (a pipe works); a reader finds the index from the trailer.
Per-page tables (records, frames, blocks) are fixed-width arrays: construct
describes one element and numpy views the whole array at once (see *_DTYPE, kept
in step with the construct definitions by tests).
"""

from __future__ import annotations

import numpy as np
from blake3 import blake3
from construct import (
    Bytes,
    Checksum,
    Const,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    PascalString,
    Prefixed,
    PrefixedArray,
    RawCopy,
    StreamError,
    Struct,
    GreedyBytes,
    Padding,
    this,
)

MAGIC = b"\x89VMSNAP\n"  # 8 bytes; the high byte and newline catch text-mode mangling
TRAILER_MAGIC = b"VMSNAPIX"
FORMAT_VERSION = 1
DIGEST_SIZE = 32  # BLAKE3 digests of stored units, regions and the image
BLOCK_DIGEST_SIZE = 16  # truncated BLAKE3 of each restored 1 MiB block
BLOCK_SIZE = 1 << 20  # image bytes covered by one block digest

# Record kinds: one record describes a run of `count` consecutive pages.
REC_ZERO = 0  # all-zero pages; arg unused (0)
REC_PATTERN = 1  # every page is pattern `arg` (index into the pattern table)
REC_SPARSE = 2  # page i is sparse page `arg + i` of the sparse table
REC_DATA = 3  # page i is stored data page `arg + i` (the data page stream, cut into frames)
REC_REF = 4  # page i has the content of stored data page `arg + i` (canonical instance)
# page i is the page_size bytes at byte offset `arg + i * page_size` of the data page
# stream (all stored data pages back to back): content stored off a page boundary
REC_SLICE = 5
RECORD_KINDS = {REC_ZERO: "zero", REC_PATTERN: "pattern", REC_SPARSE: "sparse", REC_DATA: "data", REC_REF: "ref",
                REC_SLICE: "slice"}
MAX_RUN = 0xFFFFFFFF  # a longer run is split into several records
# Limits a writer keeps and a reader enforces, so that no field of a damaged or crafted
# file makes a reader allocate more than a valid file could need.
MIN_PAGE_SIZE, MAX_PAGE_SIZE = 512, 16 << 20
# A frame's stored size is a 32-bit field, and a restore holds a few decoded frames in
# memory: 1 GiB of pages compresses to less than 4 GiB whatever they hold.
MAX_FRAME_BYTES = 1 << 30  # page bytes a data frame holds, and bytes an attachment frame does

# Header flags. A reader rejects a file with a flag it does not know (version 1
# readers know none), so a file using an extension is refused by older vmsnap
# with "unknown header flags" (exit 5), never misread; a file without it is
# byte for byte what older vmsnap writes.
FLAG_ATTACHMENTS = 0x0001  # the index body is followed by IndexAttachments
FLAG_SLICES = 0x0002  # records may be REC_SLICE
KNOWN_FLAGS = FLAG_ATTACHMENTS | FLAG_SLICES
ATTACHMENT_FRAME_BYTES = 4 << 20  # raw bytes per attachment frame (the last may hold fewer)


def digest(data) -> bytes:
    return blake3(data).digest()


HeaderBody = Struct(
    "magic" / Const(MAGIC),
    "version" / Int16ul,
    "flags" / Int16ul,  # FLAG_*; a reader rejects any bit it does not know
    "page_size" / Int32ul,
    "source" / PascalString(Int16ul, "utf8"),
)

Header = Struct(
    "body" / RawCopy(HeaderBody),
    "digest" / Checksum(Bytes(DIGEST_SIZE), lambda data: digest(data), this.body.data),
)

# Enough to tell "not a snapshot" from "a newer version" before parsing the rest.
HeaderPrefix = Struct("magic" / Bytes(8), "version" / Int16ul, "flags" / Int16ul)
HEADER_FIXED_SIZE = 18  # the header up to the source description, its u16 length included
MAX_SOURCE_BYTES = 0xFFFF  # the description's length is a u16

Trailer = Struct(
    "index_offset" / Int64ul,
    "index_size" / Int64ul,  # bytes stored (compressed)
    "index_raw_size" / Int64ul,  # bytes after decompression
    "index_digest" / Bytes(DIGEST_SIZE),  # BLAKE3 of the stored index bytes
    "magic" / Const(TRAILER_MAGIC),
)
TRAILER_SIZE = Trailer.sizeof()

Record = Struct(
    "kind" / Int8ul,
    Padding(3),
    "count" / Int32ul,
    "arg" / Int64ul,
)
RECORD_DTYPE = np.dtype([("kind", "u1"), ("pad", "V3"), ("count", "<u4"), ("arg", "<u8")])

Frame = Struct(
    "offset" / Int64ul,  # file offset of the zstd frame
    "size" / Int32ul,  # stored bytes
    "pages" / Int32ul,  # data pages it holds when decompressed
    "digest" / Bytes(DIGEST_SIZE),  # BLAKE3 of the stored bytes
)
FRAME_DTYPE = np.dtype([("offset", "<u8"), ("size", "<u4"), ("pages", "<u4"), ("digest", "V32")])

SparseWord = Struct("word" / Int32ul, "value" / Int64ul)
SPARSE_WORD_DTYPE = np.dtype([("word", "<u4"), ("value", "<u8")])

Region = Struct(
    "name" / PascalString(Int16ul, "utf8"),
    "base" / Int64ul,  # guest-physical address of byte 0
    "size" / Int64ul,  # bytes (need not be a multiple of the page size)
    "first_record" / Int64ul,
    "record_count" / Int64ul,
    "first_block" / Int64ul,  # index of its first entry in the block digest table
    "digest" / Bytes(DIGEST_SIZE),  # BLAKE3 over the region's block digests
)


def _table(dtype_name: str):
    """A counted array of fixed-width elements, kept as raw bytes for numpy."""
    return Prefixed(Int64ul, GreedyBytes) * dtype_name


IndexBody = Struct(
    "frame_pages" / Int32ul,  # data pages per frame (the last frame may hold fewer)
    "data_pages" / Int64ul,  # data pages stored in all frames
    "image_digest" / Bytes(DIGEST_SIZE),  # BLAKE3 over every region's name, base, size and digest
    "regions" / PrefixedArray(Int32ul, Region),
    "patterns" / PrefixedArray(Int32ul, Prefixed(Int8ul, GreedyBytes)),  # repeating units
    "frames" / _table("Frame array, FRAME_DTYPE"),
    "records" / _table("Record array, RECORD_DTYPE"),
    "sparse_offsets" / _table("u64 array: sparse page i owns words [off[i], off[i+1])"),
    "sparse_words" / _table("SparseWord array, SPARSE_WORD_DTYPE"),
    "block_digests" / _table("16-byte truncated BLAKE3 of each 1 MiB block of each region"),
)


# IndexBody's fields that are fixed-width tables, however many elements: written from
# their arrays (index_body_pieces), not copied into one body first.
TABLE_FIELDS = frozenset({"frames", "records", "sparse_offsets", "sparse_words", "block_digests"})


def index_body_pieces(fields: dict, attachments: bool) -> list:
    """IndexBody (then IndexAttachments if `attachments`) as byte pieces whose join is
    exactly what build() makes, the tables as views of their arrays, uncopied.

    A table's value may be one buffer or a list of them (numpy arrays or bytes),
    joined in order, or a table read back in pieces: an object with len() in bytes
    and chunks() (tables.SpillTable), returned as it is for the caller to iterate.
    Every other field is built by its own construct.
    """
    body = IndexBodyWithAttachments if attachments else IndexBody
    pieces: list = []
    for sub in body.subcons:
        value = fields[sub.name]
        if sub.name in TABLE_FIELDS and hasattr(value, "chunks"):
            pieces.append(Int64ul.build(len(value)))
            pieces.append(value)
        elif sub.name in TABLE_FIELDS:
            parts = [byte_view(v) for v in (value if isinstance(value, list) else [value])]
            pieces.append(Int64ul.build(sum(len(v) for v in parts)))
            pieces.extend(v for v in parts if len(v))
        else:
            pieces.append(sub.build(value))
    return pieces


def parse_index_body(body, attachments: bool) -> dict:
    """The inverse of index_body_pieces: every field as IndexBody.parse() gives it, except
    that the tables are memoryviews of `body`, not copies (the index of a 64 GiB guest
    holds 30 MiB of tables; parsing copied them three times). Raises ConstructError
    (StreamError) where parse() would."""
    struct = IndexBodyWithAttachments if attachments else IndexBody
    view = memoryview(body).cast("B")
    stream = _ViewStream(view)
    fields: dict = {}
    for sub in struct.subcons:
        if sub.name in TABLE_FIELDS:
            n = Int64ul.parse_stream(stream)
            fields[sub.name] = stream.take(n)
        else:
            fields[sub.name] = sub.parse_stream(stream)
    return fields


class _ViewStream:
    """A read-only stream over a memoryview, for construct: small reads copy, take() does not."""

    def __init__(self, view: memoryview):
        self._view, self._pos = view, 0

    def read(self, n: int | None = None) -> bytes:
        end = len(self._view) if n is None or n < 0 else min(len(self._view), self._pos + n)
        data = bytes(self._view[self._pos:end])
        self._pos = end
        return data

    def take(self, n: int) -> memoryview:
        if n > len(self._view) - self._pos:
            raise StreamError(f"stream read less than specified amount, expected {n}, found "
                              f"{len(self._view) - self._pos}")
        part = self._view[self._pos:self._pos + n]
        self._pos += n
        return part

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else (self._pos + offset if whence == 1 else len(self._view) + offset)
        return self._pos


def byte_view(buf) -> memoryview:
    """A flat byte view of a numpy array or any buffer, without a copy where it can."""
    if isinstance(buf, np.ndarray):
        buf = np.ascontiguousarray(buf).reshape(-1).view(np.uint8)
    return memoryview(buf).cast("B")


# Attachments: named byte streams stored beside the memory image (for example a
# QEMU guest's device state), each as its own zstd frames among the data frames.
AttachmentFrame = Struct(
    "offset" / Int64ul,  # file offset of the zstd frame
    "size" / Int32ul,  # stored bytes
    "raw_size" / Int32ul,  # bytes it decompresses to
    "digest" / Bytes(DIGEST_SIZE),  # BLAKE3 of the stored bytes
)
ATTACHMENT_FRAME_DTYPE = np.dtype([("offset", "<u8"), ("size", "<u4"), ("raw_size", "<u4"), ("digest", "V32")])

Attachment = Struct(
    "name" / PascalString(Int16ul, "utf8"),  # unique among the attachments
    "size" / Int64ul,  # bytes of content
    "digest" / Bytes(DIGEST_SIZE),  # BLAKE3 of the whole content
    "frames" / _table("AttachmentFrame array, ATTACHMENT_FRAME_DTYPE"),
)

IndexAttachments = Struct(
    "attachments" / PrefixedArray(Int32ul, Attachment),
)

# The index body of a file with FLAG_ATTACHMENTS: IndexBody, then IndexAttachments.
IndexBodyWithAttachments = Struct(*IndexBody.subcons, *IndexAttachments.subcons)


def image_digest(regions) -> bytes:
    """The whole-image digest from the region list (each with name, base, size, digest)."""
    h = blake3()
    for r in regions:
        name = r["name"].encode("utf8")
        h.update(len(name).to_bytes(2, "little") + name)
        h.update(int(r["base"]).to_bytes(8, "little") + int(r["size"]).to_bytes(8, "little"))
        h.update(r["digest"])
    return h.digest()
