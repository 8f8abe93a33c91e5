"""binio.Cursor: offsets, forward/backward skips, and chunk boundaries."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from source_builders import Pipe
from vmsnap.errors import InputError
from vmsnap.sources.binio import Cursor


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=2000), head=st.integers(0, 300),
       length=st.integers(0, 2000), chunk=st.sampled_from([16, 64, 100]), pipe=st.booleans())
def test_chunks_are_the_bytes_cut_at_chunk_multiples(data, head, length, chunk, pipe):
    fh = Pipe(data) if pipe else io.BytesIO(data)
    cur = Cursor(fh, "t", chunk=chunk)
    head = min(head, len(data))
    assert bytes(cur.read(head, "head")) == data[:head]
    assert cur.offset == head
    if head + length > len(data):
        with pytest.raises(InputError, match=r"truncated at offset \d+: body needs \d+ more bytes"):
            list(cur.chunks(length, "body"))
        return
    pieces = list(cur.chunks(length, "body"))
    assert b"".join(pieces) == data[head : head + length]
    assert all(len(p) == chunk for p in pieces[:-1])
    assert cur.offset == head + length
    rest = len(data) - cur.offset
    assert bytes(cur.read(rest, "rest")) == data[head + length :]


def test_skip_backwards_needs_a_seekable_file():
    cur = Cursor(Pipe(b"abcdefgh"), "p", chunk=4)
    cur.read(6, "x")
    with pytest.raises(InputError, match="seekable"):
        cur.skip_to(2, "thing")
    cur = Cursor(io.BytesIO(b"abcdefgh"), "f", chunk=4)
    cur.read(6, "x")
    cur.skip_to(2, "thing")
    assert bytes(cur.read(3, "y")) == b"cde"
    cur.skip_to(7, "z")
    assert (cur.offset, cur.peek_u8(), cur.at_eof()) == (7, ord("h"), False)
