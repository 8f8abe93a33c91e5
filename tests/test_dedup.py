"""The numpy digest index assigns data pages exactly like a dict would (two dicts, once it has a window)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vmsnap.format.dedup import DigestIndex


@given(st.lists(st.lists(st.integers(0, 40), max_size=60), max_size=8), st.integers(0, 3))
@settings(max_examples=200, deadline=None)
def test_matches_a_dict(batches, low_bits_collide):
    # contents drawn from a small set so repeats within and across batches are common; optionally
    # force equal low 64 bits so probing runs long and wraps
    def digest(i):
        lo = 7 if low_bits_collide else i * 0x9E3779B97F4A7C15 % 2**64
        return lo.to_bytes(8, "little") + i.to_bytes(8, "little")

    digests = [[digest(i) for i in batch] for batch in batches]
    expected, expected_next = generations_reference(digests, limit=float("inf"))  # one dict
    index, counter = DigestIndex(capacity=4), Counter()
    for batch, (vals, firsts, _) in zip(digests, expected):
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


def generations_reference(batches, limit):
    """The window, with dicts: found in the current generation, else carried over from the
    older one, else new; a generation that would pass `limit` entries retires before the insert."""
    current, older, nxt, out = {}, {}, 0, []
    for batch in batches:
        vals, firsts, keep = [], [], {}
        for d in batch:
            if d in keep:
                vals.append(keep[d])
                firsts.append(False)
            elif d in current:
                vals.append(current[d])
                firsts.append(False)
            elif d in older:
                keep[d] = older[d]
                vals.append(older[d])
                firsts.append(False)
            else:
                keep[d] = nxt
                vals.append(nxt)
                firsts.append(True)
                nxt += 1
        if keep and len(current) + len(keep) > limit:
            older, current = current, {}
        current.update(keep)
        out.append((vals, firsts, len(current) + len(older)))
    return out, nxt


@given(st.lists(st.lists(st.integers(0, 60), max_size=12), max_size=30), st.sampled_from([4, 8, 16]))
@settings(max_examples=300, deadline=None)
def test_window_matches_two_dicts(batches, max_slots):
    digest = lambda i: (i * 0x9E3779B97F4A7C15 % 2**64).to_bytes(8, "little") + i.to_bytes(8, "little")
    digests = [[digest(i) for i in batch] for batch in batches]
    expected, expected_next = generations_reference(digests, max_slots * 3 // 4)
    index, counter = DigestIndex(capacity=4, max_slots=max_slots), Counter()
    for batch, (vals, firsts, remembered) in zip(digests, expected):
        got, is_first = index.assign(b"".join(batch), counter)
        assert got.tolist() == vals
        assert is_first.tolist() == firsts
        assert index.remembered == remembered
    assert counter.next == expected_next == len(index)


def test_window_bounds_memory_and_keeps_what_is_used():
    index, counter = DigestIndex(capacity=16, max_slots=1024), Counter()
    rng = np.random.default_rng(2)
    hot = rng.integers(0, 256, (8, 16), dtype=np.uint8)  # a content every batch refers to
    first_hot = None
    for _ in range(200):  # 200 batches of 100 new contents: 20,000, far past the window
        batch = np.concatenate([hot, rng.integers(0, 256, (100, 16), dtype=np.uint8)])
        vals, first = index.assign(batch.tobytes(), counter)
        first_hot = vals[:8] if first_hot is None else first_hot
        assert vals[:8].tolist() == first_hot.tolist()  # used every batch: never forgotten
        assert index.remembered <= 2 * 768 and index._current.slots <= 1024
    assert counter.next == 8 + 200 * 100
    # a content from the first batches is forgotten: stored anew
    _, first = index.assign(np.concatenate([hot[:1], batch[8:9]]).tobytes(), counter)
    assert first.tolist() == [False, False]
