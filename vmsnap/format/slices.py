"""Slice finder: pages that repeat stored data at a 512-byte offset.

A file in page cache and the same file inside a tar archive (512-byte headers)
hold the same bytes, but the archive's copy starts off a page boundary, so its
pages have digests of their own and the digest index cannot share them. This
finder remembers a fingerprint of every 512-byte grain of the data page stream
(the stored data pages in order) for the last `window` bytes, and tells for each
new page whether its bytes already occur in that stream at some grain. Such a
page becomes a SLICE record (a byte offset into the stream) instead of data.

Pages are placed a batch at a time with numpy: a page can be a slice of data
stored by an earlier batch, not of a page in its own batch (zstd's window, which
spans the frame, covers copies that close).

Fingerprints are linear in a grain's words, so whoever knows their weights can
write two different grains with equal fingerprints. Each finder draws its own
weights at random (FingerprintKey): a guest cannot plant a false match, which
would not restore wrong bytes (every restored block is checked against the
BLAKE3 block digest of the original image) but would leave a snapshot that
fails that check. True copies match under every key, so a save's output does
not depend on the key drawn, except if two different grains collide under it:
about one chance in 2^126 for a pair.
"""

from __future__ import annotations

import functools
import secrets

import numpy as np

GRAIN = 512  # bytes per fingerprinted unit: tar's block size, the usual sector
_WORDS = GRAIN // 4  # 32-bit words per grain
_LANES = 9
_INITIAL_GRAINS = 1 << 16
_FILTER_BITS = 1 << 23  # 8 MiB; the at most 524,288 keys of a 1 GiB window set at most 6% of it
_FILTER_MASK = np.uint64(_FILTER_BITS - 1)


class FingerprintKey:
    """The weights of one finder's fingerprints, drawn at random (or from `seed`, in tests).

    Fingerprints are exact integers: each of nine lanes is sum(word * weight) over a
    grain's 128 32-bit words with weights below 2^14, so every partial sum stays below
    2^53 and the float64 matrix product (BLAS) is exact in whatever order it adds:
    deterministic. For two different grains, one lane agrees for at most one in 2^14
    weights, all nine for at most one in 2^126. The lanes are folded into two 64-bit
    words by odd multipliers, mod 2^64.
    """

    def __init__(self, seed: int | None = None):
        rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
        self.weights = rng.integers(1, 1 << 14, size=(_WORDS, _LANES)).astype(np.float64)
        self.fold = rng.integers(0, 1 << 62, size=(_LANES, 2), dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def fingerprints(key: FingerprintKey, pages: np.ndarray,
                 rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit fingerprint words of every 512-byte grain of pages[rows] (all pages by default)."""
    chosen = pages if rows is None else pages[np.asarray(rows, dtype=np.int64)]
    words = np.ascontiguousarray(chosen).view(np.uint32).reshape(-1, _WORDS)
    with _one_blas_thread():
        lanes = (words.astype(np.float64) @ key.weights).astype(np.uint64)
    folded = lanes @ key.fold
    return np.ascontiguousarray(folded[:, 0]), np.ascontiguousarray(folded[:, 1])


@functools.lru_cache(maxsize=1)
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread():
    """BLAS on the calling thread only. These products are small and one per batch;
    OpenBLAS's own threads spun between them and tripled a save's CPU time."""
    return _blas().limit(limits=1, user_api="blas")


class SliceFinder:
    """Places new data pages: as a slice of the stored stream, or at its end.

    Memory: 16 bytes of fingerprint per grain of the window (32 MiB for 1 GiB), a dict
    entry (about 100 bytes with its share of the table) for each of at most 5/4 of the
    window's pages (about 33 MiB for 1 GiB of 4 KiB pages), and an 8 MiB bitmap in front
    of the dict.
    """

    def __init__(self, page_size: int, window: int = 1 << 30, key: FingerprintKey | None = None):
        if page_size % GRAIN or page_size < 2 * GRAIN:
            raise ValueError(f"slices need pages of at least {2 * GRAIN} bytes, got {page_size}")
        self.key = key if key is not None else FingerprintKey()
        self.gpp = page_size // GRAIN
        self.reach = max(self.gpp, window // GRAIN)  # how far back, in grains, a slice may start
        self.window = 1 << (self.reach - 1).bit_length()  # the ring's size: a power of two, for masking
        self.stream = 0  # grains stored so far
        self._r0 = self._r1 = np.zeros(0, dtype=np.uint64)
        # first grain's 128-bit fingerprint of each stored page -> its grain position; a
        # dict: its lookups of absent keys stay O(1) where numpy probing loops ran long.
        # All 128 bits, so that which of two different grains the dict keeps never depends on the key.
        self._index: dict[int, int] = {}
        # A bitmap over the low bits of the keys' first words (a superset): only grains
        # whose bit is set are looked up, one in tens of grains, not all of them.
        self._maybe = np.zeros(_FILTER_BITS, dtype=bool)

    def fingerprints(self, pages: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """fingerprints() under this finder's key; safe to call from another thread."""
        return fingerprints(self.key, pages, rows)

    def place(self, f0: np.ndarray, f1: np.ndarray) -> np.ndarray:
        """Grain positions of new pages, given their grains' fingerprints() (n pages x
        grains per page, or flat), in order: slices of the stored stream, or their new
        places at its end."""
        f0, f1 = f0.reshape(-1, self.gpp), f1.reshape(-1, self.gpp)
        out = self._find(f0, f1)
        stored = np.flatnonzero(out < 0)
        out[stored] = self.stream + self.gpp * np.arange(len(stored), dtype=np.int64)
        self._append(f0[stored], f1[stored])
        return out

    def _find(self, f0: np.ndarray, f1: np.ndarray) -> np.ndarray:
        """For each page, the first grain position where the stream holds its bytes, or -1."""
        n, gpp = f0.shape
        found = np.full(n, -1, dtype=np.int64)
        if n == 0 or self.stream == 0:
            return found
        lo = max(0, self.stream - self.reach)  # the ring keeps at least the last `reach` grains
        # Any grain of a page can be the first grain of a stored page inside the span.
        keys = f0.ravel()
        ask = np.flatnonzero(self._maybe[keys & _FILTER_MASK])
        get = self._index.get
        pos = np.full(keys.size, -1, dtype=np.int64)
        pos[ask] = [get(key, -1) for key in _keys(keys[ask], f1.ravel()[ask])]
        pos = pos.reshape(n, gpp)
        start = pos - np.arange(gpp)
        # aligned spans are whole stored pages: the digest index already shares those
        ok = (pos >= 0) & (start >= lo) & (start + gpp <= self.stream) & (start % gpp != 0)
        page, anchor = np.nonzero(ok)
        if page.size == 0:
            return found
        begin = start[page, anchor]
        span = (begin[:, None] + np.arange(gpp)) & (len(self._r0) - 1)
        same = (self._r0[span] == f0[page]).all(axis=1) & (self._r1[span] == f1[page]).all(axis=1)
        page, begin = page[same], begin[same]
        first = np.unique(page, return_index=True)[1]
        found[page[first]] = begin[first]
        return found

    def _append(self, f0: np.ndarray, f1: np.ndarray) -> None:
        """Put stored pages (their grains' fingerprints, in order) at the end of the stream."""
        n = len(f0)
        if n == 0:
            return
        need = self.stream + n * self.gpp
        if need > len(self._r0) and len(self._r0) < self.window:
            self._grow(need)
        at = (self.stream + np.arange(n * self.gpp)) & (len(self._r0) - 1)
        self._r0[at] = f0.ravel()
        self._r1[at] = f1.ravel()
        first = range(self.stream, need, self.gpp)
        self._index.update(zip(_keys(f0[:, 0], f1[:, 0]), first))  # a later page with that grain wins
        self._maybe[f0[:, 0] & _FILTER_MASK] = True
        self.stream = need
        # Drop entries gone from the window at 5/4 of the window's pages (which entries are
        # dropped when never changes a result: a gone entry fails the window check anyway).
        # Python sizes a dict's table for 2/3 of its slots: a 1 GiB window's 327,680 entries
        # fit a table of 2^19, where twice its pages took 2^20 slots and 24 MiB more.
        if len(self._index) > self.window // self.gpp * 5 // 4:
            lo = self.stream - len(self._r0)
            self._index = {key: pos for key, pos in self._index.items() if pos >= lo}
            self._maybe[:] = False
            first_words = np.fromiter((key >> 64 for key in self._index), dtype=np.uint64, count=len(self._index))
            self._maybe[first_words & _FILTER_MASK] = True

    def _grow(self, need: int) -> None:
        """A larger ring; only before it first wraps, so grain s sits at index s."""
        size = min(self.window, 1 << (max(need, _INITIAL_GRAINS) - 1).bit_length())
        r0 = np.zeros(size, dtype=np.uint64)
        r1 = np.zeros(size, dtype=np.uint64)
        r0[:self.stream] = self._r0[:self.stream]
        r1[:self.stream] = self._r1[:self.stream]
        self._r0, self._r1 = r0, r1


def _keys(f0: np.ndarray, f1: np.ndarray) -> list[int]:
    """The 128-bit dict keys of grains: first word high, second word low."""
    return [a << 64 | b for a, b in zip(f0.tolist(), f1.tolist())]
