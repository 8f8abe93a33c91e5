"""The slice finder: every slice it reports holds the page's bytes, and it finds them."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from vmsnap.format.slices import GRAIN, FingerprintKey, SliceFinder, fingerprints

KEY = FingerprintKey(seed=1)


def run_finder(pages, page_size, window=1 << 30, batch=3, key=KEY):
    """Place pages in batches; return (positions, the stream of stored pages).
    A fixed key by default, so that hypothesis can replay a failure."""
    finder = SliceFinder(page_size, window, key)
    stream = bytearray()
    places = []
    for i in range(0, len(pages), batch):
        chunk = np.frombuffer(b"".join(pages[i:i + batch]), dtype=np.uint8).reshape(-1, page_size)
        for page, pos in zip(pages[i:i + batch], finder.place(*finder.fingerprints(chunk)).tolist()):
            places.append(pos)
            if pos * GRAIN == len(stream):  # stored at the end
                stream += page
    assert finder.stream * GRAIN == len(stream)
    return places, bytes(stream)


@st.composite
def page_sequences(draw):
    page_size = draw(st.sampled_from([1024, 4096]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # few distinct grains, so equal grains (and grain-level near misses) are common
    alphabet = [rng.integers(0, 256, GRAIN, dtype=np.uint8).tobytes() for _ in range(draw(st.integers(1, 6)))]
    text = b"".join(alphabet[i] for i in rng.integers(0, len(alphabet), 64 * page_size // GRAIN))
    pages = []
    for _ in range(draw(st.integers(1, 30))):
        start = GRAIN * draw(st.integers(0, len(text) // GRAIN - page_size // GRAIN))
        pages.append(text[start:start + page_size])
    return page_size, pages


@given(page_sequences())
@settings(max_examples=150, deadline=None)
def test_every_slice_holds_the_page(seq):
    page_size, pages = seq
    places, stream = run_finder(pages, page_size)
    gpp = page_size // GRAIN
    for page, pos in zip(pages, places):
        assert stream[pos * GRAIN:pos * GRAIN + page_size] == page
        if pos % gpp == 0:  # stored: a new page always goes at the end, never over stored data
            assert pos * GRAIN < len(stream)


def test_finds_a_copy_at_every_grain_offset():
    rng = np.random.default_rng(5)
    stored = [rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for _ in range(3)]
    stream = b"".join(stored)
    copies = [stream[k * GRAIN:k * GRAIN + 4096] for k in range(1, 16) if k % 8]
    places, _ = run_finder(stored + copies, 4096)
    assert places[:3] == [0, 8, 16]
    assert places[3:] == [k for k in range(1, 16) if k % 8]


def test_window_forgets_old_data():
    rng = np.random.default_rng(6)
    stored = [rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for _ in range(40)]
    old_copy = (stored[0] + stored[1])[512:512 + 4096]
    recent_copy = (stored[38] + stored[39])[1024:1024 + 4096]
    places, _ = run_finder(stored + [old_copy, recent_copy], 4096, window=16 * 4096, batch=8)
    assert places[40] == 40 * 8  # beyond the window: stored again
    assert places[41] == 38 * 8 + 2  # within it: a slice


@pytest.mark.parametrize("window_pages,found", [(29, False), (30, True), (31, True), (32, True)])
def test_a_window_that_is_not_a_power_of_two_is_kept_exactly(window_pages, found):
    # The ring of fingerprints is a power of two; the window was rounded up to it, so a
    # 3 MiB --slice-window found slices 4 MiB back.
    rng = np.random.default_rng(8)
    stored = [rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for _ in range(32)]
    copy = (stored[2] + stored[3])[512:512 + 4096]  # starts 32*8 - 17 = 239 grains back: 29.875 pages
    places, _ = run_finder(stored + [copy], 4096, window=window_pages * 4096, batch=32)
    assert places[32] == (2 * 8 + 1 if found else 32 * 8)


def test_fingerprints_see_every_byte():
    rng = np.random.default_rng(7)
    page = rng.integers(0, 256, (1, 4096), dtype=np.uint8)
    f0, f1 = fingerprints(KEY, page)
    for pos in (0, 7, 8, 511, 512, 4095):
        for bit in (0, 7):
            flipped = page.copy()
            flipped[0, pos] ^= 1 << bit
            g0, g1 = fingerprints(KEY, flipped)
            grain = pos // GRAIN
            assert g0[grain] != f0[grain] and g1[grain] != f1[grain]
            others = np.arange(len(f0)) != grain
            assert (g0[others] == f0[others]).all()


def test_pages_too_small_for_slices_are_refused():
    with pytest.raises(ValueError):
        SliceFinder(512)


def test_fingerprints_of_chosen_rows_match_a_copy_of_them():
    pages = np.random.default_rng(8).integers(0, 256, (6, 2048), dtype=np.uint8)
    rows = np.array([4, 0, 5])
    for got, want in zip(fingerprints(KEY, pages, rows), fingerprints(KEY, pages[rows])):
        assert (got == want).all() and len(got) == 3 * 4


def test_a_copy_within_its_own_batch_is_stored():
    # placement is per batch: a copy of a page stored in the same batch is zstd's to find
    rng = np.random.default_rng(9)
    stored = [rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for _ in range(2)]
    copy = (stored[0] + stored[1])[512:512 + 4096]
    assert run_finder(stored + [copy], 4096, batch=3)[0] == [0, 8, 16]
    assert run_finder(stored + [copy], 4096, batch=2)[0] == [0, 8, 1]


def test_of_two_stored_pages_with_the_same_first_grain_the_later_is_found():
    # A and B start with the same grain X and differ after it, stored in one batch. A copy
    # of A's last grain and B's first seven is found only through B: the span at A's place
    # (the page before A, then A) holds other bytes.
    rng = np.random.default_rng(12)
    before, a, b = (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for _ in range(3))
    b = a[:GRAIN] + b[GRAIN:]
    copy = (a + b)[7 * GRAIN:7 * GRAIN + 4096]
    for batch in (3, 4):  # A and B placed in one batch, then the copy in the next or in theirs
        places, _ = run_finder([before, a, b, copy], 4096, batch=batch)
        assert places[:3] == [0, 8, 16]
        assert places[3] == (16 - 1 if batch == 3 else 24)  # in the same batch: stored (see above)


def test_the_index_stays_within_the_window():
    rng = np.random.default_rng(10)
    finder = SliceFinder(4096, window=8 * 4096)
    batches = [rng.integers(0, 256, (3, 4096), dtype=np.uint8) for _ in range(50)]
    sizes = []
    for batch in batches:
        finder.place(*finder.fingerprints(batch))
        sizes.append(len(finder._index))
    # rebuilt from the window when it holds 5/4 of the window's 8 pages, not one entry per page ever stored
    assert max(sizes) <= 8 * 5 // 4 and min(sizes[10:]) >= 8 - 3
    last = batches[-1].reshape(-1)
    copy = last[512:512 + 4096].reshape(1, 4096)
    assert finder.place(*finder.fingerprints(copy)).tolist() == [finder.stream - 3 * 8 + 1]  # the last batch, +512 bytes


def test_fingerprints_are_exact_integer_sums_whatever_blas_does():
    # the float64 product must equal the same sums in exact integers (all below 2^53)
    pages = np.random.default_rng(11).integers(0, 256, (64, 4096), dtype=np.uint8)
    pages[:8] = 0xFF  # the largest words: the sums' upper bound
    words = pages.view(np.uint32).reshape(-1, GRAIN // 4).astype(np.int64)
    lanes = (words @ KEY.weights.astype(np.int64)).astype(np.uint64)
    want = lanes @ KEY.fold
    f0, f1 = fingerprints(KEY, pages)
    assert (f0 == want[:, 0]).all() and (f1 == want[:, 1]).all()


def test_every_finder_draws_its_own_key():
    a, b = SliceFinder(4096), SliceFinder(4096)
    assert not np.array_equal(a.key.weights, b.key.weights) and not np.array_equal(a.key.fold, b.key.fold)
    assert np.array_equal(FingerprintKey(seed=3).weights, FingerprintKey(seed=3).weights)


def test_a_planted_collision_is_a_false_slice_only_under_the_key_it_was_made_for():
    """Whoever knows the weights can write different grains with equal fingerprints:
    here a key whose first two weights are equal in every lane, and grains whose first
    two words are swapped. Such a page would be saved as a slice and fail its block
    digest at restore; a finder's own random key does not see it as one."""
    rng = np.random.default_rng(12)
    stored = [rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() for _ in range(2)]
    planted = np.frombuffer((stored[0] + stored[1])[512:512 + 4096], dtype=np.uint32).copy().reshape(-1, GRAIN // 4)
    planted[:, [0, 1]] = planted[:, [1, 0]]
    planted = planted.tobytes()
    assert planted != (stored[0] + stored[1])[512:512 + 4096]
    known = FingerprintKey(seed=4)
    known.weights[1] = known.weights[0]
    assert run_finder(stored + [planted], 4096, batch=2, key=known)[0] == [0, 8, 1]  # fooled
    assert run_finder(stored + [planted], 4096, batch=2, key=FingerprintKey())[0] == [0, 8, 16]  # stored as data
