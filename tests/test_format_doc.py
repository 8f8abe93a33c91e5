"""An independent decoder written from man/vmsnap-format.5 alone (struct, not construct).

If the page and the writer ever disagree, this decoder fails to rebuild the image.
"""

import struct

import zstandard
from blake3 import blake3

from vmsnap import api

from conftest import build_image


def decode(blob: bytes) -> dict:
    assert blob[:8] == b"\x89VMSNAP\n"
    version, flags, page_size, n = struct.unpack_from("<HHIH", blob, 8)
    assert version == 1 and flags & ~3 == 0  # bit 0: attachments, bit 1: slice records
    header_len = 18 + n
    assert blake3(blob[:header_len]).digest() == blob[header_len:header_len + 32]
    source = blob[18:header_len].decode()

    index_offset, index_size, raw_size = struct.unpack_from("<QQQ", blob, len(blob) - 64)
    index_digest, magic = blob[-40:-8], blob[-8:]
    assert magic == b"VMSNAPIX" and index_offset + index_size == len(blob) - 64
    stored = blob[index_offset:index_offset + index_size]
    assert blake3(stored).digest() == index_digest
    body = zstandard.ZstdDecompressor().decompress(stored, max_output_size=raw_size)
    assert len(body) == raw_size

    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from(fmt, body, pos)
        pos += struct.calcsize(fmt)
        return vals

    def take_bytes(k):
        nonlocal pos
        pos += k
        return body[pos - k:pos]

    frame_pages, data_pages = take("<IQ")
    image_digest = take_bytes(32)
    regions = []
    for _ in range(take("<I")[0]):
        name = take_bytes(take("<H")[0]).decode()
        base, size, first_record, record_count, first_block = take("<QQQQQ")
        regions.append(dict(name=name, base=base, size=size, first_record=first_record,
                            record_count=record_count, first_block=first_block, digest=take_bytes(32)))
    units = [take_bytes(take("<B")[0]) for _ in range(take("<I")[0])]
    tables = [take_bytes(take("<Q")[0]) for _ in range(5)]
    attachments = {}
    stored_units = []  # (offset, size) of every zstd frame between header and index
    if flags & 1:
        for _ in range(take("<I")[0]):
            name = take_bytes(take("<H")[0]).decode()
            size, = take("<Q")
            content_digest = take_bytes(32)
            table = take_bytes(take("<Q")[0])
            content = b""
            for i in range(0, len(table), 48):
                off, fsize, raw = struct.unpack_from("<QII", table, i)
                frame = blob[off:off + fsize]
                assert blake3(frame).digest() == table[i + 16:i + 48]
                piece = zstandard.ZstdDecompressor().decompress(frame, max_output_size=raw)
                assert len(piece) == raw
                content += piece
                stored_units.append((off, fsize))
            assert len(content) == size and blake3(content).digest() == content_digest
            attachments[name] = content
    assert pos == len(body)
    frames_raw, records_raw, sparse_off_raw, sparse_words_raw, blocks_raw = tables

    data = b""
    for i in range(0, len(frames_raw), 48):
        off, size, pages = struct.unpack_from("<QII", frames_raw, i)
        frame = blob[off:off + size]
        assert blake3(frame).digest() == frames_raw[i + 16:i + 48]
        stored_units.append((off, size))
        data += zstandard.ZstdDecompressor().decompress(frame, max_output_size=pages * page_size)
    assert len(data) == data_pages * page_size
    end = header_len + 32  # frames of both kinds tile the file from the header to the index
    for off, size in sorted(stored_units):
        assert off == end
        end += size
    assert end == index_offset
    offsets = [struct.unpack_from("<Q", sparse_off_raw, i)[0] for i in range(0, len(sparse_off_raw), 8)]
    words = [struct.unpack_from("<IQ", sparse_words_raw, i) for i in range(0, len(sparse_words_raw), 12)]
    records = [struct.unpack_from("<B3xIQ", records_raw, i) for i in range(0, len(records_raw), 16)]

    def page(kind, arg):
        if kind == 0:
            return bytes(page_size)
        if kind == 1:
            return (units[arg] * page_size)[:page_size]
        if kind == 2:
            p = bytearray(page_size)
            for w, v in words[offsets[arg]:offsets[arg + 1]]:
                p[8 * w:8 * w + 8] = v.to_bytes(8, "little")
            return bytes(p)
        if kind == 5:
            assert flags & 2
            return data[arg:arg + page_size]
        return data[arg * page_size:(arg + 1) * page_size]  # data and ref alike

    image = {}
    block_size = max(1 << 20, page_size)
    img_hash = blake3()
    for r in regions:
        out = b""
        for kind, count, arg in records[r["first_record"]:r["first_record"] + r["record_count"]]:
            for i in range(count):
                out += page(kind, arg + {2: i, 3: i, 4: i, 5: i * page_size}.get(kind, 0))
        out = out[:r["size"]]
        nblocks = -(-r["size"] // block_size)
        blocks = blocks_raw[16 * r["first_block"]:16 * (r["first_block"] + nblocks)]
        for b in range(nblocks):
            assert blake3(out[b * block_size:(b + 1) * block_size]).digest(length=16) == blocks[16 * b:16 * b + 16]
        assert blake3(blocks).digest() == r["digest"]
        img_hash.update(len(r["name"]).to_bytes(2, "little") + r["name"].encode())
        img_hash.update(r["base"].to_bytes(8, "little") + r["size"].to_bytes(8, "little") + r["digest"])
        image[r["name"]] = out
    assert img_hash.digest() == image_digest
    return {"source": source, "page_size": page_size, "regions": image, "attachments": attachments,
            "flags": flags}


def test_man_page_decoder_rebuilds_the_image(tmp_path, small_batches):
    spec = [("zero",), ("fill", 1), ("unit", b"abcde"), ("sparse", {0: 1, 100: 2}), ("random", 1),
            ("random", 2), ("copy", 4), ("zero",), ("shift", 4, 512)] * 3
    data = build_image(spec, page_size=1024, tail=b"\x07" * 77)
    raw = tmp_path / "in.raw"
    raw.write_bytes(data)
    snap = tmp_path / "s.vms"
    api.save(str(raw), str(snap), page_size=1024, frame_size=3 * 1024, description="doc test \u00e9")
    decoded = decode(snap.read_bytes())
    assert decoded["source"] == "doc test \u00e9" and decoded["page_size"] == 1024
    assert decoded["regions"] == {"ram": data}
    assert decoded["flags"] == 2 and decoded["attachments"] == {}  # slices announced, no attachments
    plain = tmp_path / "plain.vms"
    api.save(str(raw), str(plain), page_size=1024, frame_size=3 * 1024, slice_window=0)
    assert decode(plain.read_bytes())["flags"] == 0  # without the slice finder: no extension at all


def test_man_page_decoder_reads_attachments(tmp_path, small_batches):
    from vmsnap.format.writer import SnapshotWriter

    data = build_image([("random", 3), ("zero",), ("copy", 0), ("fill", 9)], page_size=1024)
    state = bytes(range(256)) * 40000 + b"tail"  # 10 MB: three attachment frames
    path = tmp_path / "a.vms"
    with open(path, "wb") as out:
        w = SnapshotWriter(out, page_size=1024, frame_size=2048, source="att", attachments=True)
        w.add_attachment("first", [b"hello ", b"world"])  # before any region
        w.add_region("ram", 0x1000, [data])
        w.add_attachment("device-state", [state[:12345], state[12345:]])
        w.add_attachment("empty", [])
        w.close()
    decoded = decode(path.read_bytes())
    assert decoded["flags"] == 1 | 2
    assert decoded["regions"] == {"ram": data}
    assert decoded["attachments"] == {"first": b"hello world", "device-state": state, "empty": b""}


def test_man_page_decoder_with_regions_and_pages_above_a_mib(tmp_path, small_batches):
    # several regions (the image digest's order), and 2 MiB pages (a block is then one page)
    from vmsnap.format.writer import SnapshotWriter

    big = 2 << 20
    low = build_image([("random", 5), ("zero",), ("copy", 0)], page_size=big, tail=b"\x01" * 4097)
    high = build_image([("fill", 3), ("random", 6)], page_size=big)
    path = tmp_path / "r.vms"
    with open(path, "wb") as out:
        w = SnapshotWriter(out, page_size=big, frame_size=2 * big, source="two regions")
        w.add_region("low", 0, [low])
        w.add_region("high", 1 << 32, [high])
        w.close()
    decoded = decode(path.read_bytes())
    assert decoded["page_size"] == big and decoded["regions"] == {"low": low, "high": high}
