"""Digest index of stored contents: 16-byte BLAKE3 digest -> where the content is kept.

A Python dict costs about 150 bytes per entry (a bytes key, an int, a slot), so
it grew the writer's memory with the number of distinct pages (120 MiB for an
8 GiB guest). This open-addressing table in numpy arrays costs 25 bytes per slot,
is at most 3/4 full (33-67 bytes per distinct content), and is queried a whole
batch of pages at a time.

Even so, remembering every content of a 1 TiB guest would take gigabytes, so the
index remembers a window of contents in two generations, as a cache does: new
contents and contents found in the older generation go into the current one, and
when the current one holds MAX_SLOTS * 3/4 entries it becomes the older one and
the oldest is dropped. Any content stored or referenced among the last
MAX_SLOTS * 3/4 contents (786,432: 3 GiB of distinct 4 KiB pages, three times
the window of `zstd --long=30`) is still found; a copy of a content forgotten
before is stored again. Memory stays under 2.5 tables of MAX_SLOTS slots (63 MiB).
Which contents are remembered depends only on the order of the digests, so
snapshots stay deterministic.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_KEY = np.dtype([("lo", "<u8"), ("hi", "<u8")])
MAX_SLOTS = 1 << 20  # per generation: 25 MiB


class DigestIndex:
    def __init__(self, capacity: int = 1 << 16, max_slots: int | None = None):
        """max_slots: slots per generation, MAX_SLOTS (as it is now) by default."""
        self._capacity = capacity
        slots = MAX_SLOTS if max_slots is None else max_slots
        self._limit = max(1, slots * 3 // 4)  # entries of the current generation before it retires
        self._current = _Table(capacity)
        self._older: _Table | None = None
        self._contents = 0

    def __len__(self) -> int:
        """Distinct contents placed so far (remembered or not)."""
        return self._contents

    @property
    def remembered(self) -> int:
        """Entries held now, in both generations (a content may be in both)."""
        return len(self._current) + (len(self._older) if self._older is not None else 0)

    def assign(self, digests: bytes, place: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Look up each 16-byte digest; contents not remembered get a value from `place`.

        place(rows) is called once with the positions (ascending) of the first
        occurrences of new contents and returns their values, in that order.
        Returns (values, is_first): values[i] for digest i, and whether digest i is
        the first occurrence of a content not remembered before.
        """
        keys = np.frombuffer(digests, dtype=_KEY)
        m = len(keys)
        if m == 0:
            return np.zeros(0, np.uint64), np.zeros(0, bool)
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        values, found = self._current.find(uniq)
        carried = np.zeros(0, dtype=np.intp)
        if self._older is not None and not found.all():
            missing = np.flatnonzero(~found)
            old_values, old_found = self._older.find(uniq[missing])
            carried = missing[old_found]  # still wanted: they move to the current generation
            values[carried] = old_values[old_found]
            found[carried] = True
        new = np.flatnonzero(~found)
        if new.size:
            new = new[np.argsort(first[new], kind="stable")]  # in order of first occurrence
            values[new] = place(first[new])
            self._contents += len(new)
        keep = np.concatenate([carried, new])
        if keep.size:
            if len(self._current) + keep.size > self._limit:
                self._older, self._current = self._current, _Table(self._capacity)
            self._current.insert(uniq[keep], values[keep])
        is_first = (~found)[inverse] & (first[inverse] == np.arange(m))
        return values[inverse], is_first


class _Table:
    """An open-addressing hash table of 16-byte keys to uint64 values, batch at a time.

    Each round of probing is a few numpy operations over the keys still probing; the
    last few keys, whose probe runs are the longest, finish in a plain loop
    (at 3/4 full, a batch's longest run is tens of slots where most keys take one).
    """

    _TAIL = 16  # keys left probing when the loop takes over

    def __init__(self, capacity: int):
        cap = 1 << max(4, (capacity - 1).bit_length())
        self._lo = np.zeros(cap, dtype=np.uint64)
        self._hi = np.zeros(cap, dtype=np.uint64)
        self._vals = np.zeros(cap, dtype=np.uint64)
        self._used = np.zeros(cap, dtype=bool)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def slots(self) -> int:
        return len(self._used)

    def _slots(self, lo: np.ndarray) -> np.ndarray:
        return (lo & np.uint64(len(self._used) - 1)).astype(np.int64)  # digests are uniform already

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, found) of keys; a value is 0 where its key is absent."""
        where = self._locate(keys["lo"], keys["hi"])
        found = where >= 0
        values = np.zeros(len(keys), dtype=np.uint64)
        values[found] = self._vals[where[found]]
        return values, found

    def _locate(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Each key's slot, or -1 where it is absent."""
        where = np.full(len(lo), -1, dtype=np.int64)
        active = np.arange(len(lo))
        slot = self._slots(lo)
        mask = len(self._used) - 1
        while active.size > self._TAIL:
            used = self._used[slot]
            hit = used & (self._lo[slot] == lo[active]) & (self._hi[slot] == hi[active])
            where[active[hit]] = slot[hit]
            more = used & ~hit  # occupied by another key: probe on
            active, slot = active[more], (slot[more] + 1) & mask
        for i, s in zip(active.tolist(), slot.tolist()):
            key = (int(lo[i]), int(hi[i]))
            while self._used[s]:
                if (int(self._lo[s]), int(self._hi[s])) == key:
                    where[i] = s
                    break
                s = (s + 1) & mask
        return where

    def insert(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add keys that are not in the table."""
        self._insert(keys["lo"], keys["hi"], values)

    def _insert(self, lo: np.ndarray, hi: np.ndarray, values: np.ndarray) -> None:
        if (self._n + len(lo)) * 4 > len(self._used) * 3:  # grown past 3/4 full
            self._grow(self._n + len(lo))
        mask = len(self._used) - 1
        slot = self._slots(lo)
        pending = np.arange(len(lo))
        while pending.size > self._TAIL:
            # one winner per free slot; the rest (and keys at occupied slots) probe on.
            # The winner is whoever wrote its number last into the free slot's value.
            cand = np.flatnonzero(~self._used[slot])
            at = slot[cand]
            self._vals[at] = cand
            win = cand[self._vals[at] == cand]
            self._put_at(slot[win], lo[pending[win]], hi[pending[win]], values[pending[win]])
            lose = np.ones(pending.size, dtype=bool)
            lose[win] = False
            pending, slot = pending[lose], (slot[lose] + 1) & mask
        for i, s in zip(pending.tolist(), slot.tolist()):
            while self._used[s]:
                s = (s + 1) & mask
            self._put_at(s, lo[i], hi[i], values[i])
        self._n += len(lo)

    def _put_at(self, slot, lo, hi, values) -> None:
        self._lo[slot], self._hi[slot], self._vals[slot] = lo, hi, values
        self._used[slot] = True

    def _grow(self, need: int) -> None:
        lo, hi, vals = self._lo[self._used], self._hi[self._used], self._vals[self._used]
        cap = 1 << (2 * need - 1).bit_length()
        self._lo = np.zeros(cap, dtype=np.uint64)
        self._hi = np.zeros(cap, dtype=np.uint64)
        self._vals = np.zeros(cap, dtype=np.uint64)
        self._used = np.zeros(cap, dtype=bool)
        self._n = 0
        self._insert(lo, hi, vals)
