"""Digest index of stored contents: 16-byte BLAKE3 digest -> where the content is kept.

A Python dict costs about 150 bytes per entry (a bytes key, an int, a slot), so
it grew the writer's memory with the number of distinct pages (120 MiB for an
8 GiB guest). This open-addressing table in numpy arrays costs 25 bytes per slot,
is at most 3/4 full (33-67 bytes per distinct content), and is queried a whole
batch of pages at a time.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_KEY = np.dtype([("lo", "<u8"), ("hi", "<u8")])


class DigestIndex:
    def __init__(self, capacity: int = 1 << 16):
        cap = 1 << max(4, (capacity - 1).bit_length())
        self._keys = np.zeros(cap, dtype=_KEY)
        self._vals = np.zeros(cap, dtype=np.uint64)
        self._used = np.zeros(cap, dtype=bool)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def assign(self, digests: bytes, place: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Look up each 16-byte digest; contents never seen before get a value from `place`.

        place(rows) is called once with the positions (ascending) of the first
        occurrences of new contents and returns their values, in that order.
        Returns (values, is_first): values[i] for digest i, and whether digest i is
        the first occurrence of a content never seen before.
        """
        keys = np.frombuffer(digests, dtype=_KEY)
        m = len(keys)
        if m == 0:
            return np.zeros(0, np.uint64), np.zeros(0, bool)
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        values, found = self._find(uniq)
        new = np.flatnonzero(~found)
        if new.size:
            new = new[np.argsort(first[new], kind="stable")]  # in order of first occurrence
            values[new] = place(first[new])
            self._insert(uniq[new], values[new])
        is_first = (~found)[inverse] & (first[inverse] == np.arange(m))
        return values[inverse], is_first

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        return (keys["lo"] & np.uint64(len(self._used) - 1)).astype(np.int64)  # digests are uniform already

    def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = np.zeros(len(keys), dtype=np.uint64)
        found = np.zeros(len(keys), dtype=bool)
        active = np.arange(len(keys))
        slot = self._slots(keys)
        mask = len(self._used) - 1
        while active.size:
            used = self._used[slot]
            hit = used & (self._keys[slot] == keys[active])
            values[active[hit]] = self._vals[slot[hit]]
            found[active[hit]] = True
            more = used & ~hit  # occupied by another key: probe on
            active, slot = active[more], (slot[more] + 1) & mask
        return values, found

    def _insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        if (self._n + len(keys)) * 4 > len(self._used) * 3:  # grown past 3/4 full
            self._grow(self._n + len(keys))
        mask = len(self._used) - 1
        slot = self._slots(keys)
        pending = np.arange(len(keys))
        while pending.size:
            free = ~self._used[slot]
            # one winner per free slot; the rest (and keys at occupied slots) probe on
            cand = np.flatnonzero(free)
            _, win_pos = np.unique(slot[cand], return_index=True)
            win = cand[win_pos]
            self._keys[slot[win]] = keys[pending[win]]
            self._vals[slot[win]] = values[pending[win]]
            self._used[slot[win]] = True
            lose = np.ones(pending.size, dtype=bool)
            lose[win] = False
            pending, slot = pending[lose], (slot[lose] + 1) & mask
        self._n += len(keys)

    def _grow(self, need: int) -> None:
        keys, vals = self._keys[self._used], self._vals[self._used]
        cap = 1 << (2 * need - 1).bit_length()
        self._keys = np.zeros(cap, dtype=_KEY)
        self._vals = np.zeros(cap, dtype=np.uint64)
        self._used = np.zeros(cap, dtype=bool)
        self._n = 0
        self._insert(keys, vals)
