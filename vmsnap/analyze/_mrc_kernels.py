"""numba kernels for the miss-ratio curves (imported lazily by mrc.py).

All state lives in numpy arrays owned by the Python engines in mrc.py; a
kernel processes a block of page numbers until it is done or an array is
full, and returns the index where it stopped so the caller can grow that
array and call again.  Scalars shared with the caller sit in an int64 array
``sc`` (see the SC_* indices).

Data structures (Olken's stack-distance algorithm with a Fenwick tree):

* an open-addressing hash table (``hkeys``/``hvals``, linear probing,
  Fibonacci hashing) maps a page number to a dense id;
* ``last[id]`` is the logical time of the page's latest access, and a Fenwick
  tree over logical time holds a 1 at each such time;
* the LRU stack distance of an access to a page last seen at time s is
  1 + (number of 1s after s) = live - prefix(s) + 1;
* when logical time reaches the tree's capacity, the live times are renumbered
  0..live-1 in order (``compact``), so the tree stays O(distinct pages) and an
  access costs O(log M), M = distinct pages.
"""

from __future__ import annotations

import numpy as np
from .._numba import kernel as njit

GOLD = np.uint64(0x9E3779B97F4A7C15)

SC_IDS = 0  # dense ids handed out
SC_T = 1  # next logical time
SC_LIVE = 2  # pages on the LRU stack (marks in the tree)
SC_COLD = 3  # first accesses (infinite distance)
SC_SEEN = 4  # references to sampled pages
SC_UNTRACED = 5  # references to sampled pages that did not trap (untraced period)
SC_TRAPS = 6  # references that updated the stack (traced accesses)
SC_HSHIFT = 7  # 64 - log2(hash capacity)
SC_HEAP = 8  # heap size (fixed-size SHARDS)
SC_NEED_BIN = 9  # histogram bin a fixed-size kernel could not store
SC_LEN = 10


@njit(inline="always")
def mix64(x):
    """murmur3's 64-bit finaliser: a bijective, well-spread hash of a page number."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


@njit
def hash_filter(pages, thresh):
    """Pages whose mix64 hash is below *thresh*, and their indices."""
    n = pages.shape[0]
    out = np.empty(n, dtype=np.uint64)
    idx = np.empty(n, dtype=np.int64)
    k = 0
    for i in range(n):
        p = pages[i]
        if mix64(p) < thresh:
            out[k] = p
            idx[k] = i
            k += 1
    return out[:k], idx[:k]


@njit(inline="always")
def _bit_add(bit, pos, delta):
    i = pos + 1
    n = bit.shape[0]
    while i < n:
        bit[i] += delta
        i += i & (-i)


@njit(inline="always")
def _bit_prefix(bit, pos):
    """Sum of marks at logical times 0..pos inclusive."""
    s = 0
    i = pos + 1
    while i > 0:
        s += bit[i]
        i -= i & (-i)
    return s


@njit(inline="always")
def _slot(hkeys, hvals, p, hshift):
    mask = hkeys.shape[0] - 1
    h = np.int64((p * GOLD) >> np.uint64(hshift))
    while True:
        v = hvals[h]
        if v == -1 or hkeys[h] == p:
            return h
        h = (h + 1) & mask


@njit
def rehash(hkeys, hvals, new_keys, new_vals, hshift):
    for j in range(hkeys.shape[0]):
        if hvals[j] != -1:
            h = _slot(new_keys, new_vals, hkeys[j], hshift)
            new_keys[h] = hkeys[j]
            new_vals[h] = hvals[j]


@njit
def compact(last, n_ids, bit):
    """Renumber live logical times to 0..live-1 and rebuild the tree; returns live."""
    order = np.argsort(last[:n_ids])
    k = 0
    for j in range(n_ids):
        pid = order[j]
        if last[pid] < 0:
            continue
        last[pid] = k
        k += 1
    for i in range(1, bit.shape[0]):
        lo = i - (i & (-i))
        if i <= k:
            bit[i] = i - lo
        elif lo < k:
            bit[i] = k - lo
        else:
            bit[i] = 0
    return k


@njit
def lru_feed(pages, times, use_times, i0, base, thresh, use_hash, period, hkeys, hvals, last, armed, bit, hist, sc):
    """Stack distances of *pages* from index i0 on; returns where it stopped.

    use_hash: keep only pages with mix64(page) < thresh (SHARDS sampling).
    period > 0: after a traced access a page is untraced for *period*
    clock units; accesses in that window only count.  The clock is the
    reference index base+i, or times[i] when use_times (trace timestamps).
    hist[d] counts traced accesses at stack distance d (in sampled pages).
    """
    n = pages.shape[0]
    bitcap = bit.shape[0] - 1
    hcap = hkeys.shape[0]
    idcap = last.shape[0]
    hshift = sc[SC_HSHIFT]
    for i in range(i0, n):
        p = pages[i]
        if use_hash and mix64(p) >= thresh:
            continue
        if sc[SC_T] >= bitcap:
            return i
        h = _slot(hkeys, hvals, p, hshift)
        v = hvals[h]
        if v == -1:
            nid = sc[SC_IDS]
            if nid >= idcap or 2 * (nid + 1) > hcap:
                return i
            sc[SC_IDS] = nid + 1
            hkeys[h] = p
            hvals[h] = nid
            sc[SC_SEEN] += 1
            sc[SC_TRAPS] += 1
            sc[SC_COLD] += 1
            t = sc[SC_T]
            last[nid] = t
            _bit_add(bit, t, 1)
            sc[SC_T] = t + 1
            sc[SC_LIVE] += 1
            if period > 0:
                now = times[i] if use_times else base + i
                armed[nid] = now + period
            continue
        sc[SC_SEEN] += 1
        now = 0
        if period > 0:
            now = times[i] if use_times else base + i
            if now < armed[v]:
                sc[SC_UNTRACED] += 1
                continue
        sc[SC_TRAPS] += 1
        s = last[v]
        d = sc[SC_LIVE] - _bit_prefix(bit, s) + 1
        hist[d] += 1
        _bit_add(bit, s, -1)
        t = sc[SC_T]
        _bit_add(bit, t, 1)
        last[v] = t
        sc[SC_T] = t + 1
        if period > 0:
            armed[v] = now + period
    return n


@njit(inline="always")
def _heap_push(hh, hid, size, key, val):
    j = size
    hh[j] = key
    hid[j] = val
    while j > 0:
        parent = (j - 1) >> 1
        if hh[parent] >= hh[j]:
            break
        tk = hh[parent]
        tv = hid[parent]
        hh[parent] = hh[j]
        hid[parent] = hid[j]
        hh[j] = tk
        hid[j] = tv
        j = parent
    return size + 1


@njit(inline="always")
def _heap_pop(hh, hid, size):
    size -= 1
    hh[0] = hh[size]
    hid[0] = hid[size]
    j = 0
    while True:
        l = 2 * j + 1
        if l >= size:
            break
        c = l
        if l + 1 < size and hh[l + 1] > hh[l]:
            c = l + 1
        if hh[j] >= hh[c]:
            break
        tk = hh[c]
        tv = hid[c]
        hh[c] = hh[j]
        hid[c] = hid[j]
        hh[j] = tk
        hid[j] = tv
        j = c
    return size


@njit
def shards_fixed_size_feed(pages, i0, th, smax, hkeys, hvals, last, bit, whist, wcold, heap_h, heap_id, sc):
    """Fixed-size SHARDS: at most *smax* sampled pages are tracked.

    th[0] is the current threshold T (rate R = T / 2**64).  When a new sampled
    page makes the tracked set exceed smax, the pages with the largest hash
    are dropped and T becomes that hash.  Every access is recorded with weight
    1/R in bin round(d / R) of ``whist`` (first accesses in ``wcold[0]``);
    multiplying by the final R later is the paper's rescaling of earlier counts
    by R'/R at each rate change.
    """
    n = pages.shape[0]
    bitcap = bit.shape[0] - 1
    hcap = hkeys.shape[0]
    idcap = last.shape[0]
    nbins = whist.shape[0]
    hshift = sc[SC_HSHIFT]
    two64 = 18446744073709551616.0
    for i in range(i0, n):
        p = pages[i]
        hp = mix64(p)
        if hp >= th[0]:
            continue
        if sc[SC_T] >= bitcap:
            return i
        rate = th[0] / two64
        h = _slot(hkeys, hvals, p, hshift)
        v = hvals[h]
        if v == -1:
            nid = sc[SC_IDS]
            if nid >= idcap or 2 * (nid + 1) > hcap:
                return i
            sc[SC_IDS] = nid + 1
            hkeys[h] = p
            hvals[h] = nid
            sc[SC_SEEN] += 1
            sc[SC_COLD] += 1
            wcold[0] += 1.0 / rate
            t = sc[SC_T]
            last[nid] = t
            _bit_add(bit, t, 1)
            sc[SC_T] = t + 1
            sc[SC_LIVE] += 1
            sc[SC_HEAP] = _heap_push(heap_h, heap_id, sc[SC_HEAP], hp, nid)
            while sc[SC_LIVE] > smax:
                top = heap_h[0]
                while sc[SC_HEAP] > 0 and heap_h[0] >= top:
                    e = heap_id[0]
                    sc[SC_HEAP] = _heap_pop(heap_h, heap_id, sc[SC_HEAP])
                    _bit_add(bit, last[e], -1)
                    last[e] = -1
                    sc[SC_LIVE] -= 1
                th[0] = top
            continue
        s = last[v]
        d = sc[SC_LIVE] - _bit_prefix(bit, s) + 1
        b = np.int64(d / rate + 0.5)
        if b >= nbins:
            sc[SC_NEED_BIN] = b
            return i
        sc[SC_SEEN] += 1
        whist[b] += 1.0 / rate
        _bit_add(bit, s, -1)
        t = sc[SC_T]
        _bit_add(bit, t, 1)
        last[v] = t
        sc[SC_T] = t + 1
    return n
