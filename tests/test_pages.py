"""Page classification: every kind is recognised, on pages built to be that kind."""

import numpy as np
from hypothesis import given, settings, strategies as st

from vmsnap import pages as P

PS = 4096


def classify_one(page: bytes, page_size=PS):
    kind, period = P.classify(np.frombuffer(page, dtype=np.uint8).reshape(1, page_size))
    return int(kind[0]), int(period[0])


def minimal_period(unit: bytes) -> int:
    for p in range(1, len(unit) + 1):
        if len(unit) % p == 0 and unit[:p] * (len(unit) // p) == unit:
            return p
    return len(unit)


def test_zero_page():
    assert classify_one(bytes(PS)) == (P.ZERO, 0)


@given(st.integers(1, 255))
def test_byte_fill_is_pattern_of_period_one(b):
    assert classify_one(bytes([b]) * PS) == (P.PATTERN, 1)


@given(st.binary(min_size=1, max_size=64).filter(any))
@settings(max_examples=300)
def test_periodic_page_has_its_minimal_period(unit):
    page = (unit * (PS // len(unit) + 1))[:PS]
    kind, period = classify_one(page)
    assert kind == P.PATTERN
    # the reported unit, repeated, must rebuild the page exactly, and be the shortest such unit
    assert P.render_pattern(page[:period], PS) == page
    assert all(P.render_pattern(page[:q], PS) != page for q in range(1, period))
    assert period <= minimal_period(unit)


@given(st.binary(min_size=65, max_size=200).filter(lambda u: minimal_period(u) > 64))
@settings(max_examples=100)
def test_long_period_is_not_a_pattern(unit):
    page = (unit * (PS // len(unit) + 1))[:PS]
    kind, _ = classify_one(page)
    assert kind != P.PATTERN


@given(st.dictionaries(st.integers(0, PS // 8 - 1), st.integers(1, 2**64 - 1), min_size=1,
                       max_size=P.MAX_SPARSE_WORDS))
@settings(max_examples=200)
def test_few_nonzero_words_are_sparse_unless_periodic(words):
    arr = np.zeros(PS // 8, dtype="<u8")
    for w, v in words.items():
        arr[w] = v
    page = arr.tobytes()
    kind, period = classify_one(page)
    if kind == P.PATTERN:  # e.g. the same word in every slot is a word pattern, which wins
        assert P.render_pattern(page[:period], PS) == page
    else:
        assert kind == P.SPARSE


def test_dense_page_is_other():
    arr = np.arange(1, PS // 8 + 1, dtype="<u8")
    assert classify_one(arr.tobytes())[0] == P.OTHER
    rnd = np.random.default_rng(3).integers(0, 256, PS, dtype=np.uint8).tobytes()
    assert classify_one(rnd)[0] == P.OTHER


def test_head_period_that_breaks_later_is_not_a_pattern():
    # first 200 bytes periodic with period 3, then it stops: must be checked over the whole page
    page = bytearray((b"abc" * 2000)[:PS])
    page[PS - 1] ^= 0xFF
    assert classify_one(bytes(page))[0] == P.OTHER
    zero_head = bytearray(PS)
    zero_head[3000] = 1
    assert classify_one(bytes(zero_head))[0] == P.SPARSE


def test_chunk_classification_matches_page_by_page():
    rng = np.random.default_rng(0)
    pages = []
    for i in range(300):
        choice = i % 5
        if choice == 0:
            pages.append(bytes(PS))
        elif choice == 1:
            unit = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
            pages.append((unit * (PS // len(unit) + 1))[:PS])
        elif choice == 2:
            a = np.zeros(PS // 8, "<u8")
            a[rng.integers(0, PS // 8, 3)] = rng.integers(1, 1000, 3)
            pages.append(a.tobytes())
        else:
            pages.append(rng.integers(0, 256, PS, dtype=np.uint8).tobytes())
    chunk = np.frombuffer(b"".join(pages), dtype=np.uint8).reshape(-1, PS)
    kinds, periods = P.classify(chunk)
    for i, page in enumerate(pages):
        assert (int(kinds[i]), int(periods[i])) == classify_one(page)


def test_small_page_size():
    ps = 512
    kind, period = classify_one(b"\xde\xad\xbe\xef" * (ps // 4), ps)
    assert (kind, period) == (P.PATTERN, 4)


@given(st.integers(1, 40), st.sampled_from([512, 4096, 8192]), st.data())
@settings(max_examples=40, deadline=None)
def test_page_digests_are_each_chosen_pages_blake3(n, page_size, data):
    """Rows in any order, repeated or not: one hasher reset between pages must give each
    page's own digest, as a new hasher per page does."""
    from blake3 import blake3

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32)))
    pages = rng.integers(0, 256, (n, page_size), dtype=np.uint8)
    pages[rng.random(n) < 0.3] = pages[0]  # some equal pages
    rows = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=2 * n)), dtype=np.int64)
    got = P.page_digests(pages, rows)
    assert got == b"".join(blake3(pages[i].tobytes()).digest(length=16) for i in rows.tolist())
