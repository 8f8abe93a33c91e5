"""Fuzz the .vms reader: open, stats, cat, produce, attachments, verify, restore (raw, one region, ELF).

Oracle, vmsnap's strongest promise: a damaged snapshot fails with a vmsnap error, or
gives exactly the bytes of the image it was saved from, never other bytes. The seeds
are saved at start-up from images holding every page kind; a mutated file that opens
must carry the image digest of one of them, and every byte it yields is compared with
that image. Reads that skip the 1 MiB block digests (Snapshot.read without
check_blocks) are held to it only while the header and index are the seed's own.

Half of the mutations are libFuzzer's; the other half know the layout: a byte of the
header (its digest re-signed or not), of the trailer, of one field of the index, or one
integer of the index (a count, an offset, a record's kind or argument: the index
re-signed, compressed again, its size and digest in the trailer made to match), a byte
of a frame's stored bytes with its digest in the index re-signed, or of a frame's
decoded pages compressed again and re-signed. Only the block, region and image digests
are never recomputed: those are what must catch every re-signed lie.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass

import atheris

import harness
from harness import FAILED, attempt

with harness.instrumented():
    import numpy as np
    import zstandard

    from vmsnap import api
    from vmsnap.format import structs as S
    from vmsnap.format.reader import Snapshot
    from vmsnap.format.writer import SnapshotWriter
    from vmsnap.sources.elf import ElfSource


def page_kinds(ps: int, seed: int) -> list[bytes]:
    """One page of every kind the writer tells apart, and duplicates of data pages."""
    rng = random.Random(seed)
    data = [rng.randbytes(ps) for _ in range(3)]
    sparse = bytearray(ps)
    sparse[8:16] = (0x1234).to_bytes(8, "little")
    sparse[ps - 8:] = (0xFFFF0000DEADBEEF).to_bytes(8, "little")
    return [bytes(ps), b"\xa5" * ps, (b"\x5a\x00" * ps)[:ps], (b"\xde\xad\xbe\xef" * ps)[:ps],
            ((0x6B6B6B6B6B6B6BA5).to_bytes(8, "little") * ps)[:ps], (b"periodic-11" * ps)[:ps],
            (bytes(range(48)) * ps)[:ps], bytes(sparse), data[0], data[1], data[0], bytes(ps), data[2], data[1],
            (data[0] + data[1])[512:512 + ps]]  # the stored data at a 512-byte offset: a slice


@dataclass
class Seed:
    blob: bytes  # the .vms file
    flat: bytes  # the image as a raw restore lays it out
    regions: dict[str, bytes]
    bases: dict[str, int]
    attachments: dict[str, bytes]
    header_size: int
    index_offset: int


SEEDS: dict[bytes, Seed] = {}  # by image digest


def _saved(name: str, regions: list[tuple[str, int, bytes]], attachments: dict[str, bytes], **options) -> bytes:
    """A snapshot of `regions`: through api.save from a raw file when there is one region at
    0 and nothing else to set, else through SnapshotWriter (small batches: slices get found)."""
    path = os.path.join(harness.scratch(), f"{name}.vms")
    if len(regions) == 1 and regions[0][1] == 0 and not attachments and "batch" not in options:
        raw = harness.write(f"{name}.raw", regions[0][2])
        api.save(raw, path, **options)
        os.unlink(raw)
    else:
        with open(path, "wb") as out:
            batch = options.pop("batch", None)
            w = SnapshotWriter(out, source=name, attachments=bool(attachments), **options)
            if batch:
                w.batch_bytes = batch
            for aname, content in attachments.items():
                w.add_attachment(aname, [content])
            for rname, base, data in regions:
                w.add_region(rname, base, [data])
            w.close()
    with open(path, "rb") as fh:
        blob = fh.read()
    with Snapshot(path) as snap:
        end = max((base + len(data) for _, base, data in regions), default=0)
        flat = bytearray(end)
        for _, base, data in regions:
            flat[base:base + len(data)] = data
        named = {r.name: data for r, (_, _, data) in zip(snap.regions, regions)}  # api.save names its region
        bases = {r.name: base for r, (_, base, _) in zip(snap.regions, regions)}
        SEEDS[snap.image_digest] = Seed(blob, bytes(flat), named, bases, dict(attachments), snap.header_size,
                                        snap.index_offset)
    os.unlink(path)
    return blob


def seeds() -> dict[str, bytes]:
    small, big = page_kinds(512, 1), page_kinds(4096, 2)
    zeros = bytes(1 << 20)
    return {
        "kinds-512": _saved("kinds-512", [("raw", 0, b"".join(small) + b"odd")], {}, page_size=512,
                            frame_size=1024),
        "slices-4k": _saved("slices-4k", [("raw", 0, b"".join(big))], {}, page_size=4096, frame_size=8192,
                            batch=8192),
        "regions-attachment": _saved("regions-attachment", [("low", 0, b"".join(small[:8])),
                                                            ("high", 0x10000, b"".join(small[7:]) + b"t")],
                                     {"device-state": bytes(range(251)) * 12}, page_size=512, frame_size=2048),
        # zero runs across 1 MiB blocks (holes in a restored file), data at the block edges
        "blocks-4k": _saved("blocks-4k", [("raw", 0, zeros[:-4096] + big[8] + big[9] + zeros + big[12][:100])],
                            {}, page_size=4096, frame_size=4096),
        "empty": _saved("empty", [("raw", 0, b"")], {}),
    }


def test_one_input(data: bytes) -> None:
    path = harness.write("in.vms", data)
    snap = attempt(Snapshot, path)
    if snap is FAILED:
        return
    with snap:
        seed = SEEDS.get(snap.image_digest)
        if seed is None:
            raise AssertionError(f"opened a snapshot whose image digest {snap.image_digest.hex()} no seed has")
        # header and index as saved: every frame digest is the seed's, so even reads that
        # skip the block digests must give the seed's bytes
        pristine = (data[:seed.header_size] == seed.blob[:seed.header_size]
                    and data[seed.index_offset - len(seed.blob):] == seed.blob[seed.index_offset:])
        attempt(snap.stats)
        ps, size = snap.page_size, len(seed.flat)
        for offset, length in ((0, size), (size // 3, min(ps + 1, size - size // 3)), (max(0, size - 3), min(3, size))):
            want = seed.flat[offset:offset + length]
            expect(attempt(api.cat, path, offset, length), want, f"cat {offset}+{length}")
            if pristine:
                expect(attempt(snap.read, offset, length), want, f"read {offset}+{length}")
        produced: dict[str, bytearray] = {}

        def sink(region, piece) -> None:
            produced.setdefault(region.name, bytearray()).extend(bytes(piece) if isinstance(piece, int) else piece)

        if attempt(snap.produce, sink) is not FAILED:
            expect({k: bytes(v) for k, v in produced.items()},
                   {k: v for k, v in seed.regions.items() if v}, "produce")
        for name in snap.attachments:  # a re-signed index may rename one, but never change its bytes
            got = attempt(lambda: b"".join(snap.read_attachment(name)))
            if got is not FAILED and got != seed.attachments.get(name) and (
                    pristine or got not in seed.attachments.values()):
                raise AssertionError(f"attachment {name!r}: bytes no attachment of the seed holds, no error")
    attempt(api.verify, path)
    restore(path, seed, len(data) % 3)


def restore(path: str, seed: Seed, variant: int) -> None:
    """One of: a raw restore of the image, a raw restore of its first region, an ELF core
    read back with vmsnap's ELF reader. Each gives the seed's bytes, or an error and no file."""
    out = os.path.join(harness.scratch(), "out")
    first = next(iter(seed.regions), "")
    options = [{}, {"region": first}, {"format": "elf"}][variant]
    if attempt(lambda: api.restore(path, out, **options)) is FAILED:
        if os.path.exists(out):
            raise AssertionError("a restore that failed left its output behind")
        return
    if variant == 2:
        got = harness.drain(ElfSource, out)
        expect([r[1:] for r in got], sorted((seed.bases[k], v) for k, v in seed.regions.items() if v), "restore elf")
    else:
        with open(out, "rb") as fh:
            expect(fh.read(), seed.regions[first] if variant else seed.flat, f"restore {options}")
    os.unlink(out)


def expect(got, want, what: str) -> None:
    if got is not FAILED and got != want:
        raise AssertionError(f"{what}: different bytes from the seed image, no error")


# ---------------------------------------------------------------- the layout-aware mutator


def _byte(rng: random.Random, b: int) -> int:
    return rng.choice([b ^ (1 << rng.randrange(8)), 0, 0xFF, (b + 1) & 0xFF, (b - 1) & 0xFF, rng.randrange(256)])


class Layout:
    """A snapshot taken apart: header, frame bytes, index (construct containers)."""

    def __init__(self, blob: bytes):
        header = S.Header.parse(blob).body
        self.header_size, self.page_size = header.length + S.DIGEST_SIZE, header.value.page_size
        flags = header.value.flags
        trailer = S.Trailer.parse(blob[-S.TRAILER_SIZE:])
        self.header, self.area = blob[:self.header_size], bytearray(blob[self.header_size:trailer.index_offset])
        self.struct = S.IndexBodyWithAttachments if flags & S.FLAG_ATTACHMENTS else S.IndexBody
        stored = blob[trailer.index_offset:trailer.index_offset + trailer.index_size]
        self.body = bytearray(zstandard.ZstdDecompressor().decompress(stored, max_output_size=trailer.index_raw_size))
        self.index = self.struct.parse(self.body)

    def build(self, body: bytes | None = None) -> bytes:
        """The file again, its index (this body, or the index's fields) stored and signed anew."""
        body = self.struct.build(self.index) if body is None else bytes(body)
        stored = zstandard.ZstdCompressor().compress(body)
        offset = self.header_size + len(self.area)
        return self.header + bytes(self.area) + stored + S.Trailer.build(
            {"index_offset": offset, "index_size": len(stored), "index_raw_size": len(body),
             "index_digest": S.digest(stored)})

    def spans(self) -> list[tuple[int, int]]:
        """(start, end) in the index body of each of its non-empty fields."""
        stream, spans = io.BytesIO(self.body), []
        for sub in self.struct.subcons:
            start = stream.tell()
            sub.parse_stream(stream)
            spans.append((start, stream.tell()))
        return [s for s in spans if s[1] > s[0]]

    def frame_tables(self) -> list[tuple[object, str, np.ndarray]]:
        """(owner, key, table) for the data frames and each attachment's frames: both tables
        hold offset, size, decoded amount and digest in the same 48-byte layout."""
        owners = [(self.index, "frames")] + [(a, "frames") for a in self.index.get("attachments", [])]
        return [(o, k, np.frombuffer(o[k], dtype=S.FRAME_DTYPE).copy()) for o, k in owners if len(o[k])]


# The index's tables of fixed-width elements, and the integer fields of their elements.
TABLES = {"frames": (S.FRAME_DTYPE, ("offset", "size", "pages")), "records": (S.RECORD_DTYPE, ("kind", "count", "arg")),
          "sparse_offsets": (np.dtype([("offset", "<u8")]), ("offset",)),
          "sparse_words": (S.SPARSE_WORD_DTYPE, ("word", "value"))}


def _number(index, rng: random.Random) -> None:
    """Change one integer of the index: frame_pages, data_pages, a region's, or one field of
    a table element, to a value next to it, an extreme, or another element's."""
    where = rng.choice(["index", "region"] + [t for t in TABLES if len(index[t])])
    if where in TABLES:
        dtype, fields = TABLES[where]
        table = np.frombuffer(index[where], dtype=dtype).copy()
        column = table[rng.choice(fields)]
        k, other = rng.randrange(len(table)), rng.randrange(len(table))
        value = int(column[k])
        new = rng.choice([value + 1, value - 1, 0, 1, -1, value * 2, int(column[other])])
        column[k] = new % (1 << (column.dtype.itemsize * 8))
        index[where] = table.tobytes()
        return
    owner = index if where == "index" or not index.regions else rng.choice(index.regions)
    names = ["frame_pages", "data_pages"] if owner is index else ["base", "size", "first_record", "record_count",
                                                                  "first_block"]
    name = rng.choice(names)
    bits = 32 if name == "frame_pages" else 64
    owner[name] = rng.choice([owner[name] + 1, owner[name] - 1, 0, 1, -1, owner[name] * 2]) % (1 << bits)


def mutate_layout(blob: bytes, rng: random.Random) -> bytes | None:
    layout = Layout(blob)
    op = rng.choice(["header", "trailer", "index", "index number", "frame stored", "frame decoded"])
    if op == "header":
        head = bytearray(layout.header)
        i = rng.randrange(len(head) - S.DIGEST_SIZE)
        head[i] = _byte(rng, head[i])
        if rng.random() < 0.8:
            head[-S.DIGEST_SIZE:] = S.digest(head[:-S.DIGEST_SIZE])
        return bytes(head) + blob[layout.header_size:]
    if op == "trailer":
        out = bytearray(blob)
        i = len(blob) - S.TRAILER_SIZE + rng.randrange(24)  # index offset, size, decoded size
        out[i] = _byte(rng, out[i])
        return bytes(out)
    if op == "index":
        start, end = rng.choice(layout.spans())
        i = rng.randrange(start, end)
        layout.body[i] = _byte(rng, layout.body[i])
        return layout.build(layout.body)
    if op == "index number":
        _number(layout.index, rng)
        return layout.build()
    tables = layout.frame_tables()
    if not tables:
        return None
    owner, key, table = rng.choice(tables)
    k = rng.randrange(len(table))
    offset, size = int(table[k]["offset"]), int(table[k]["size"])
    at = offset - layout.header_size
    stored = bytes(layout.area[at:at + size])
    if op == "frame stored":
        new = bytearray(stored)
        i = rng.randrange(size)
        new[i] = _byte(rng, new[i])
    else:
        decoded = owner is layout.index
        amount = int(table[k]["pages"]) * (layout.page_size if decoded else 1)
        raw = bytearray(zstandard.ZstdDecompressor().decompress(stored, max_output_size=max(1, amount)))
        if not raw:
            return None
        i = rng.randrange(len(raw))
        raw[i] = _byte(rng, raw[i])
        new = zstandard.ZstdCompressor().compress(bytes(raw))
    layout.area[at:at + size] = new
    table[k]["size"], table[k]["digest"] = len(new), S.digest(new)
    for o, kk, t in layout.frame_tables():  # the frames after it move by the change in size
        t = table if o is owner else t
        t["offset"] = t["offset"].astype(np.int64) + np.where(t["offset"] > offset, len(new) - size, 0)
        o[kk] = t.tobytes()
    return layout.build()


def mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """libFuzzer's custom mutator: half the time mutate_layout() of the input, or of a seed
    when the input is no snapshot any more (most of a corpus is not), else libFuzzer's own."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        for blob in (data, rng.choice([s.blob for s in SEEDS.values()])):
            try:
                out = mutate_layout(blob, rng)
            except Exception:  # not a snapshot, or a frame that does not decode
                continue
            if out is not None and len(out) <= max_size:
                return out
    return atheris.Mutate(data, max_size)


if __name__ == "__main__":
    harness.main(test_one_input, seeds, custom_mutator=mutator)
