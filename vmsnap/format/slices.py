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

import numpy as np
from numba import njit

GRAIN = 512  # bytes per fingerprinted unit: tar's block size, the usual sector
MAX_PROBES = 16  # table slots looked at per key; past that the oldest entry is replaced
_INITIAL_GRAINS = 1 << 16

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_LANE0 = np.uint64(0x9E3779B97F4A7C15)
_LANE1 = np.uint64(0xD6E8FEB86659FD93)
_S33 = np.uint64(33)
_S31 = np.uint64(31)
_S29 = np.uint64(29)
_S7 = np.uint64(7)


@njit(inline="always")
def _fmix(x):
    x ^= x >> _S33
    x *= _M1
    x ^= x >> _S33
    x *= _M2
    x ^= x >> _S33
    return x


@njit(nogil=True, cache=True)
def _fingerprints(words, f0, f1):
    """words: (grains, 64) uint64; fills f0, f1 with the two lanes of each grain."""
    for g in range(words.shape[0]):
        h0 = _LANE0
        h1 = _LANE1
        for i in range(words.shape[1]):
            y = _fmix(words[g, i] + np.uint64(i))
            h0 = ((h0 ^ y) << _S31 | (h0 ^ y) >> np.uint64(33)) * _M1
            h1 = (h1 + y) * _M2
            h1 ^= h1 >> _S29
        f0[g] = _fmix(h0 ^ (h1 >> _S7))
        f1[g] = _fmix(h1 + h0)


@njit(inline="always")
def _lookup(keys, vals, mask, key, lo, hi):
    """Grain position in [lo, hi) whose first lane is `key`, or -1."""
    slot = np.int64(key & np.uint64(mask))
    for p in range(MAX_PROBES):
        s = (slot + p) & mask
        v = vals[s]
        if v < 0:
            return -1
        if keys[s] == key:
            return v if lo <= v < hi else -1
    return -1


@njit(inline="always")
def _insert(keys, vals, mask, key, pos, lo):
    slot = np.int64(key & np.uint64(mask))
    victim = slot
    oldest = pos
    for p in range(MAX_PROBES):
        s = (slot + p) & mask
        v = vals[s]
        if v < lo or keys[s] == key:  # empty (-1), out of the window, or the same content: reuse
            keys[s] = key
            vals[s] = pos
            return
        if v < oldest:
            oldest = v
            victim = s
    keys[victim] = key
    vals[victim] = pos


@njit(nogil=True, cache=True)
def _place(f0, f1, pages, gpp, r0, r1, rmask, keys, vals, kmask, stream, window, out):
    """For each page: the grain where its bytes already occur in the stream, or append it.

    out[i] is a grain position: a slice (not a multiple of gpp) or the page's own
    new place at the end of the stream. Returns the new stream length in grains.
    """
    for i in range(pages):
        base = i * gpp
        lo = max(0, stream - window)
        found = -1
        for j in range(gpp):  # any grain of the page can lead to the span
            c = _lookup(keys, vals, kmask, f0[base + j], lo, stream)
            if c < 0:
                continue
            start = c - j
            # aligned spans are whole stored pages: the digest index already shares those
            if start < lo or start + gpp > stream or start % gpp == 0:
                continue
            same = True
            for k in range(gpp):
                g = (start + k) & rmask
                if r0[g] != f0[base + k] or r1[g] != f1[base + k]:
                    same = False
                    break
            if same:
                found = start
                break
        if found >= 0:
            out[i] = found
            continue
        out[i] = stream
        for k in range(gpp):
            g = (stream + k) & rmask
            r0[g] = f0[base + k]
            r1[g] = f1[base + k]
        # Only the page's first grain is indexed: a span starting at any grain holds
        # exactly one page-aligned grain, which one of the lookups above finds.
        _insert(keys, vals, kmask, f0[base], stream, lo)
        stream += gpp
    return stream


@njit(nogil=True, cache=True)
def _reindex(r0, rmask, keys, vals, kmask, gpp, stream):
    for s in range(0, stream, gpp):
        _insert(keys, vals, kmask, r0[s & rmask], s, 0)


def fingerprints(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two 64-bit fingerprint lanes of every 512-byte grain of `pages` (n, page_size)."""
    words = np.ascontiguousarray(pages).reshape(-1, GRAIN).view(np.uint64)
    f0 = np.empty(len(words), dtype=np.uint64)
    f1 = np.empty(len(words), dtype=np.uint64)
    _fingerprints(words, f0, f1)
    return f0, f1


class SliceFinder:
    """Places new data pages: as a slice of the stored stream, or at its end.

    Memory: 16 bytes of fingerprint per grain of the window and 32 bytes of table per
    page, allocated as the stream grows (about 40 MiB per GiB of stored 4 KiB pages).
    """

    def __init__(self, page_size: int, window: int = 1 << 30):
        if page_size % GRAIN or page_size < 2 * GRAIN:
            raise ValueError(f"slices need pages of at least {2 * GRAIN} bytes, got {page_size}")
        self.gpp = page_size // GRAIN
        self.window = max(self.gpp, 1 << (max(1, window // GRAIN) - 1).bit_length())
        self.stream = 0  # grains stored so far
        self._r0 = self._r1 = np.zeros(0, dtype=np.uint64)
        self._keys = np.zeros(0, dtype=np.uint64)
        self._vals = np.zeros(0, dtype=np.int64)
        self._grow(_INITIAL_GRAINS)

    def place(self, pages: np.ndarray) -> np.ndarray:
        """Grain positions of `pages` (n, page_size): slices or their new places."""
        n = len(pages)
        out = np.empty(n, dtype=np.int64)
        if n == 0:
            return out
        f0, f1 = fingerprints(pages)
        need = self.stream + n * self.gpp
        if need > len(self._r0) and len(self._r0) < self.window:
            self._grow(need)
        window = min(self.window, len(self._r0))
        self.stream = _place(f0, f1, n, self.gpp, self._r0, self._r1, len(self._r0) - 1,
                             self._keys, self._vals, len(self._keys) - 1, self.stream, window, out)
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
        _reindex(self._r0, size - 1, self._keys, self._vals, slots - 1, self.gpp, self.stream)
