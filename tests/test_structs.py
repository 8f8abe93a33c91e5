"""The construct definitions and the numpy views of the same tables agree byte for byte."""

import numpy as np
import pytest
from construct import ChecksumError, ConstructError
from hypothesis import given, strategies as st

from vmsnap.format import structs as S


def common(fmt, obj_in, size=None):
    data = fmt.build(obj_in)
    obj = fmt.parse(data)
    assert fmt.build(obj) == data
    if size is not None:
        assert fmt.sizeof() == size == len(data)
    compiled = fmt.compile()
    assert compiled.build(obj_in) == data
    return data, obj


@given(st.integers(0, 4), st.integers(1, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_record_struct_matches_dtype(kind, count, arg):
    data, obj = common(S.Record, {"kind": kind, "count": count, "arg": arg}, S.RECORD_DTYPE.itemsize)
    view = np.frombuffer(data, dtype=S.RECORD_DTYPE)[0]
    assert (int(view["kind"]), int(view["count"]), int(view["arg"])) == (kind, count, arg)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32))
def test_frame_struct_matches_dtype(offset, size, pages, digest):
    data, _ = common(S.Frame, {"offset": offset, "size": size, "pages": pages, "digest": digest},
                     S.FRAME_DTYPE.itemsize)
    view = np.frombuffer(data, dtype=S.FRAME_DTYPE)[0]
    assert (int(view["offset"]), int(view["size"]), int(view["pages"]), view["digest"].tobytes()) == \
        (offset, size, pages, digest)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1))
def test_sparse_word_struct_matches_dtype(word, value):
    data, _ = common(S.SparseWord, {"word": word, "value": value}, S.SPARSE_WORD_DTYPE.itemsize)
    view = np.frombuffer(data, dtype=S.SPARSE_WORD_DTYPE)[0]
    assert (int(view["word"]), int(view["value"])) == (word, value)


def test_trailer_is_64_bytes_and_checks_magic():
    t = {"index_offset": 1, "index_size": 2, "index_raw_size": 3, "index_digest": bytes(32)}
    data, obj = common(S.Trailer, t, 64)
    assert obj.index_offset == 1
    with pytest.raises(ConstructError):
        S.Trailer.parse(data[:-1] + b"Y")


@given(st.text(max_size=100), st.sampled_from([512, 4096, 2 << 20]))
def test_header_round_trip_and_digest(source, page_size):
    body = {"version": 1, "flags": 0, "page_size": page_size, "source": source}
    data = S.Header.build({"body": {"value": body}})
    parsed = S.Header.parse(data)
    assert parsed.body.value.source == source and parsed.body.value.page_size == page_size
    assert data.startswith(S.MAGIC)
    damaged = bytearray(data)
    damaged[12] ^= 1  # inside page_size
    with pytest.raises(ChecksumError):
        S.Header.parse(bytes(damaged))


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32))
def test_attachment_frame_struct_matches_dtype(offset, size, raw_size, digest):
    data, _ = common(S.AttachmentFrame, {"offset": offset, "size": size, "raw_size": raw_size, "digest": digest},
                     S.ATTACHMENT_FRAME_DTYPE.itemsize)
    view = np.frombuffer(data, dtype=S.ATTACHMENT_FRAME_DTYPE)[0]
    assert (int(view["offset"]), int(view["size"]), int(view["raw_size"]), view["digest"].tobytes()) == \
        (offset, size, raw_size, digest)


@given(st.text(max_size=40), st.integers(0, 2**64 - 1), st.binary(min_size=32, max_size=32),
       st.binary(max_size=96).map(lambda b: b[:len(b) // 48 * 48]))
def test_attachment_entry_round_trip(name, size, digest, frames):
    data, obj = common(S.Attachment, {"name": name, "size": size, "digest": digest, "frames": frames})
    assert len(data) == 2 + len(name.encode()) + 8 + 32 + 8 + len(frames)
    assert (obj.name, obj.size, obj.digest, obj.frames) == (name, size, digest, frames)


def test_index_with_attachments_is_the_plain_index_then_the_table():
    fields = {"frame_pages": 1, "data_pages": 0, "image_digest": bytes(32), "regions": [], "patterns": [],
              "frames": b"", "records": b"", "sparse_offsets": bytes(8), "sparse_words": b"", "block_digests": b""}
    plain = S.IndexBody.build(fields)
    att = [{"name": "x", "size": 0, "digest": bytes(32), "frames": b""}]
    extended = S.IndexBodyWithAttachments.build(fields | {"attachments": att})
    assert extended == plain + S.IndexAttachments.build({"attachments": att})
    assert S.KNOWN_FLAGS == S.FLAG_ATTACHMENTS | S.FLAG_SLICES == 3


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 2**32 - 1), st.integers(0, 2**64 - 1)), max_size=20),
       st.integers(0, 5), st.lists(st.binary(min_size=1, max_size=64), max_size=4), st.booleans(), st.data())
def test_index_pieces_join_to_what_construct_builds(records, cut, units, with_attachments, data):
    # the writer streams the index from its tables' arrays (lists of them), uncopied
    rec = np.zeros(len(records), S.RECORD_DTYPE)
    for i, (kind, count, arg) in enumerate(records):
        rec[i]["kind"], rec[i]["count"], rec[i]["arg"] = kind, count, arg
    words = np.zeros(3, S.SPARSE_WORD_DTYPE)
    words["word"], words["value"] = [1, 2, 3], [7, 8, 2**63]
    region = {"name": "ram", "base": 4096, "size": 8192, "first_record": 0, "record_count": len(records),
              "first_block": 0, "digest": bytes(range(32))}
    fields = {"frame_pages": 4096, "data_pages": 9, "image_digest": bytes(32), "regions": [region],
              "patterns": units, "frames": np.zeros(2, S.FRAME_DTYPE),
              "records": [rec[:cut], rec[cut:]], "sparse_offsets": np.arange(4, dtype="<u8"),
              "sparse_words": [words[:1], words[1:]], "block_digests": data.draw(st.binary(max_size=48)),
              "attachments": [{"name": "dev", "size": 3, "digest": bytes(32), "frames": bytes(48)}]}
    joined = b"".join(bytes(p) for p in S.index_body_pieces(fields, attachments=with_attachments))
    whole = {k: (b"".join(bytes(S.byte_view(x)) for x in v) if isinstance(v, list) and k in S.TABLE_FIELDS
                 else v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in fields.items()}
    body = S.IndexBodyWithAttachments if with_attachments else S.IndexBody
    assert joined == body.build(whole)
    parsed = body.parse(joined)
    assert parsed.records == rec.tobytes() and parsed.sparse_words == words.tobytes()
    # the reader's parse gives the same fields, the tables as views of the body
    viewed = S.parse_index_body(joined, attachments=with_attachments)
    for sub in body.subcons:
        got = viewed[sub.name]
        assert (bytes(got) if sub.name in S.TABLE_FIELDS else got) == parsed[sub.name], sub.name
    assert isinstance(viewed["records"], memoryview) and viewed["records"].obj is joined
    cut_at = data.draw(st.integers(0, len(joined) - 1))
    with pytest.raises(ConstructError):
        body.parse(joined[:cut_at])
    with pytest.raises(ConstructError):
        S.parse_index_body(joined[:cut_at], attachments=with_attachments)
