"""Slice finder: pages that repeat stored data at a 512-byte offset.

A file in page cache and the same file inside a tar archive (512-byte headers)
hold the same bytes, but the archive's copy starts off a page boundary, so its
pages have digests of their own and the digest index cannot share them. This
finder remembers a fingerprint of every 512-byte grain of the data page stream
(the stored data pages in order) for the last `window` bytes, and tells for each
new page whether its bytes already occur in that stream at some grain. Such a
page becomes a SLICE record (a byte offset into the stream) instead of data.

Fingerprints are 128 bits per grain (two 64-bit lanes over fmix64-mixed words):
a page matches a span only when all of its grains' fingerprints equal the span's,
so an accidental false match needs a 128-bit collision. BLAKE3 would cost one call
per 512 bytes; these run in compiled loops that release the GIL. A false match
could not restore wrong bytes anyway: every restored block is checked against
the BLAKE3 block digest of the original image.
"""

from __future__ import annotations

import threading

import numpy as np

GRAIN = 512  # bytes per fingerprinted unit: tar's block size, the usual sector
# Stored data before slices are looked for. numba takes about half a second to load;
# pages stored before then are fingerprinted once it has, so a save never waits for
# it in its first SEARCH_FROM bytes, and where the search starts depends on the data
# alone (the output is deterministic). Copies within the first frames are zstd's.
SEARCH_FROM = 32 << 20
_INITIAL_GRAINS = 1 << 16


def fingerprints(pages: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit fingerprint lanes of every 512-byte grain of pages[rows] (all pages by default)."""
    words = np.ascontiguousarray(pages).view(np.uint64)
    rows = np.arange(len(words)) if rows is None else np.asarray(rows, dtype=np.int64)
    grains = len(rows) * (pages.shape[1] // GRAIN)
    f0 = np.empty(grains, dtype=np.uint64)
    f1 = np.empty(grains, dtype=np.uint64)
    _kernels().fingerprint_grains(words, rows, GRAIN // 8, f0, f1)
    return f0, f1


_loaded: list = []
_loading = threading.Lock()


def _kernels():
    """The kernel module, loaded once (it imports numba and loads the compiled kernels)."""
    with _loading:
        if not _loaded:
            from . import _slice_kernels

            tiny = np.zeros((1, 2 * GRAIN // 8), dtype=np.uint64)
            f = np.zeros(2, dtype=np.uint64)
            _slice_kernels.fingerprint_grains(tiny, np.zeros(1, np.int64), GRAIN // 8, f, f.copy())
            _loaded.append(_slice_kernels)
    return _loaded[0]


def kernels_ready() -> bool:
    return bool(_loaded)


def preload() -> None:
    """Start loading the kernels on a thread: numba's import and cache load (about half
    a second) then overlap the first reads of a save instead of delaying them."""
    if not _loaded:
        threading.Thread(target=_kernels, name="vmsnap-numba-load", daemon=True).start()


class SliceFinder:
    """Places new data pages: as a slice of the stored stream, or at its end.

    Memory: 16 bytes of fingerprint per grain of the window and 32 bytes of table per
    page, allocated as the stream grows (about 40 MiB per GiB of stored 4 KiB pages).
    """

    def __init__(self, page_size: int, window: int = 1 << 30, search_from: int | None = None):
        if page_size % GRAIN or page_size < 2 * GRAIN:
            raise ValueError(f"slices need pages of at least {2 * GRAIN} bytes, got {page_size}")
        self.gpp = page_size // GRAIN
        self.window = max(self.gpp, 1 << (max(1, window // GRAIN) - 1).bit_length())
        self.stream = 0  # grains stored so far
        self._r0 = self._r1 = np.zeros(0, dtype=np.uint64)
        self._keys = np.zeros(0, dtype=np.uint64)
        self._vals = np.zeros(0, dtype=np.int64)
        self._search_from = (SEARCH_FROM if search_from is None else search_from) // GRAIN
        self._unindexed: list[np.ndarray] = []  # pages stored before the kernels were loaded
        preload()

    def place(self, pages: np.ndarray, rows: np.ndarray, grains=None) -> np.ndarray:
        """Grain positions of the new pages pages[rows], in order: slices of the stored
        stream, or their new places at its end. grains: their fingerprints() if known."""
        n = len(rows)
        searching = self.stream >= self._search_from
        if grains is None and not searching and not kernels_ready():
            out = self.stream + self.gpp * np.arange(n, dtype=np.int64)
            self._unindexed.append(pages[rows])
            self.stream += n * self.gpp
            return out
        self._index_unindexed()
        if grains is None:
            grains = fingerprints(pages, rows)
        return self._place(*grains, search=searching)

    def _index_unindexed(self) -> None:
        """Put the pages stored before the kernels were loaded into the ring and table."""
        if not self._unindexed:
            return
        end = self.stream
        self.stream -= sum(len(chunk) for chunk in self._unindexed) * self.gpp
        for chunk in self._unindexed:
            self._place(*fingerprints(chunk), search=False)
        assert self.stream == end
        self._unindexed = []

    def _place(self, f0: np.ndarray, f1: np.ndarray, search: bool) -> np.ndarray:
        n = len(f0) // self.gpp
        out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        need = self.stream + n * self.gpp
        if need > len(self._r0) and len(self._r0) < self.window:
            self._grow(need)
        window = min(self.window, len(self._r0))
        self.stream = _kernels().place_pages(f0, f1, n, self.gpp, self._r0, self._r1, len(self._r0) - 1,
                                             self._keys, self._vals, len(self._keys) - 1, self.stream, window,
                                             search, out)
        return out

    def _grow(self, need: int) -> None:
        """Larger ring and table; only before the ring first wraps, so grain s sits at s."""
        size = min(self.window, 1 << (max(need, _INITIAL_GRAINS) - 1).bit_length())
        r0 = np.zeros(size, dtype=np.uint64)
        r1 = np.zeros(size, dtype=np.uint64)
        r0[:self.stream] = self._r0[:self.stream]
        r1[:self.stream] = self._r1[:self.stream]
        self._r0, self._r1 = r0, r1
        slots = max(64, 2 * size // self.gpp)
        self._keys = np.zeros(slots, dtype=np.uint64)
        self._vals = np.full(slots, -1, dtype=np.int64)
        _kernels().reindex(self._r0, size - 1, self._keys, self._vals, slots - 1, self.gpp, self.stream)
