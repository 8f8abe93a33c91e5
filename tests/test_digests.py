"""Block digests: however a region's bytes are fed and taken, the digests are those of its blocks."""

from __future__ import annotations

from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnap.format.digests import BlockHasher, region_digest
from vmsnap.format.structs import BLOCK_DIGEST_SIZE

BLOCK = 64  # a small block, so that pieces cross many of them


def _expected(data: bytes) -> bytes:
    return b"".join(blake3(data[i:i + BLOCK]).digest(length=BLOCK_DIGEST_SIZE) for i in range(0, len(data), BLOCK))


pieces = st.lists(st.one_of(st.binary(min_size=1, max_size=300), st.integers(1, 700)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(pieces=pieces, takes=st.lists(st.booleans(), min_size=30, max_size=30))
def test_digests_taken_at_any_points_are_the_blocks_digests(pieces, takes):
    hasher = BlockHasher(BLOCK, max_threads=1)
    image, taken = b"", b""
    for piece, take in zip(pieces, takes):
        if isinstance(piece, int):
            hasher.update_zero(piece)
            image += bytes(piece)
        else:
            hasher.update(piece)
            image += piece
        if take:
            taken += hasher.take()
            assert len(taken) == BLOCK_DIGEST_SIZE * (len(image) // BLOCK)  # every full block, none held back
    hasher.finish()
    taken += hasher.take()
    assert taken == _expected(image)
    assert len(taken) == BLOCK_DIGEST_SIZE * -(-len(image) // BLOCK)  # the last, shorter block too
    assert hasher.region_digest() == region_digest(taken) == blake3(taken).digest()
    assert hasher.take() == b""  # nothing is kept once taken
