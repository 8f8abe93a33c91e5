"""numba kernels of the slice finder (imported lazily by slices.py: numba takes a
third of a second to import, which restore, info and verify need not pay)."""

from __future__ import annotations

import numpy as np
from .._numba import kernel as njit

MAX_PROBES = 16  # table slots looked at per key; past that the oldest entry is replaced

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


@njit(nogil=True)
def fingerprint_grains(words, rows, grain_words, f0, f1):
    """Both lanes of every grain of pages words[rows] (pages as rows of uint64 words)."""
    per_page = words.shape[1] // grain_words
    for r in range(rows.shape[0]):
        row = rows[r]
        for j in range(per_page):
            h0 = _LANE0
            h1 = _LANE1
            for i in range(grain_words):
                y = _fmix(words[row, j * grain_words + i] + np.uint64(i))
                h0 = ((h0 ^ y) << _S31 | (h0 ^ y) >> np.uint64(33)) * _M1
                h1 = (h1 + y) * _M2
                h1 ^= h1 >> _S29
            g = r * per_page + j
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


@njit(nogil=True)
def place_pages(f0, f1, pages, gpp, r0, r1, rmask, keys, vals, kmask, stream, window, search, out):
    """For each page: the grain where its bytes already occur in the stream (when
    `search`), or append it.

    out[i] is a grain position: a slice (not a multiple of gpp) or the page's own
    new place at the end of the stream. Returns the new stream length in grains.
    """
    for i in range(pages):
        base = i * gpp
        lo = max(0, stream - window)
        found = -1
        for j in range(gpp if search else 0):  # any grain of the page can lead to the span
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


@njit(nogil=True)
def reindex(r0, rmask, keys, vals, kmask, gpp, stream):
    for s in range(0, stream, gpp):
        _insert(keys, vals, kmask, r0[s & rmask], s, 0)
