"""The numpy digest index assigns data pages exactly like a dict would."""

import numpy as np
from hypothesis import given, settings, strategies as st

from vmsnap.format.dedup import DigestIndex


def dict_reference(batches):
    table, nxt, out = {}, 0, []
    for batch in batches:
        vals, firsts = [], []
        for d in batch:
            if d in table:
                vals.append(table[d])
                firsts.append(False)
            else:
                table[d] = nxt
                vals.append(nxt)
                firsts.append(True)
                nxt += 1
        out.append((vals, firsts))
    return out, nxt


@given(st.lists(st.lists(st.integers(0, 40), max_size=60), max_size=8), st.integers(0, 3))
@settings(max_examples=200, deadline=None)
def test_matches_a_dict(batches, low_bits_collide):
    # contents drawn from a small set so repeats within and across batches are common; optionally
    # force equal low 64 bits so probing runs long and wraps
    def digest(i):
        lo = 7 if low_bits_collide else i * 0x9E3779B97F4A7C15 % 2**64
        return lo.to_bytes(8, "little") + i.to_bytes(8, "little")

    digests = [[digest(i) for i in batch] for batch in batches]
    expected, expected_next = dict_reference(digests)
    index, nxt = DigestIndex(capacity=4), 0
    for batch, (vals, firsts) in zip(digests, expected):
        got, is_first, nxt = index.assign(b"".join(batch), nxt)
        assert got.tolist() == vals
        assert is_first.tolist() == firsts
    assert nxt == expected_next == len(index)


def test_grows_past_its_first_capacity():
    index = DigestIndex(capacity=16)
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 256, (5000, 16), dtype=np.uint8)
    vals, first, nxt = index.assign(keys.tobytes(), 0)
    assert nxt == 5000 and first.all() and sorted(vals.tolist()) == list(range(5000))
    again, first, nxt = index.assign(keys[::-1].tobytes(), nxt)
    assert nxt == 5000 and not first.any() and again.tolist() == vals[::-1].tolist()
