"""The numpy digest index assigns data pages exactly like a dict would."""

import numpy as np
import pytest
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
    index, counter = DigestIndex(capacity=4), Counter()
    for batch, (vals, firsts) in zip(digests, expected):
        calls = len(counter.rows_seen)
        got, is_first = index.assign(b"".join(batch), counter)
        assert got.tolist() == vals
        assert is_first.tolist() == firsts
        # place() is asked once per batch with new contents, for exactly their first positions
        assert counter.rows_seen[calls:] == ([np.flatnonzero(is_first).tolist()] if any(firsts) else [])
    assert counter.next == expected_next == len(index)


class Counter:
    """A `place` callback numbering new contents in order, remembering what it was asked."""

    def __init__(self):
        self.next = 0
        self.rows_seen = []

    def __call__(self, rows):
        self.rows_seen.append(rows.tolist())
        values = np.arange(self.next, self.next + len(rows), dtype=np.uint64)
        self.next += len(rows)
        return values


def test_grows_past_its_first_capacity():
    index = DigestIndex(capacity=16)
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 256, (5000, 16), dtype=np.uint8)
    counter = Counter()
    vals, first = index.assign(keys.tobytes(), counter)
    assert counter.next == 5000 and first.all() and vals.tolist() == list(range(5000))
    again, first = index.assign(keys[::-1].tobytes(), counter)
    assert counter.next == 5000 and not first.any() and again.tolist() == vals[::-1].tolist()


def test_values_are_whatever_place_gives():
    # the writer places some contents as slices of the stream: values need not be consecutive
    index = DigestIndex(capacity=16)
    keys = np.arange(64, dtype=np.uint8).repeat(16).reshape(-1, 16)
    vals, first = index.assign(keys.tobytes(), lambda rows: (rows * 1000 + 7).astype(np.uint64))
    assert vals.tolist() == [i * 1000 + 7 for i in range(64)]
    again, first = index.assign(keys[:3].tobytes(), lambda rows: pytest.fail("nothing is new"))
    assert again.tolist() == [7, 1007, 2007] and not first.any()
