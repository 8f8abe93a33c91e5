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


def test_zero_blocks_that_arrive_in_pieces_are_not_hashed():
    # After a 4 KiB page of data, every 4 MiB zero run began 4 KiB into a 1 MiB block and
    # hashed a block of zeros by BLAKE3: 16 GiB of zeros for a 64 GiB sparse file (3.3 s).
    fed = []

    class Counting(BlockHasher):
        def _feed_zeros(self):
            fed.append(self._zeros)
            super()._feed_zeros()

    hasher = Counting(1 << 20, max_threads=1)
    hasher.update(b"x" * 4096)
    for _ in range(64):
        hasher.update_zero(4 << 20)
    hasher.update(b"y")  # data after counted zeros: they are hashed now, in order
    hasher.finish()
    image = b"x" * 4096 + bytes(64 << 22) + b"y"
    assert hasher.take() == b"".join(blake3(image[i:i + (1 << 20)]).digest(length=BLOCK_DIGEST_SIZE)
                                     for i in range(0, len(image), 1 << 20))
    assert sum(fed) == ((1 << 20) - 4096) + 4096  # the first block's zeros and the last block's, no others
