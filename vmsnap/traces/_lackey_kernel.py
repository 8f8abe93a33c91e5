"""numba kernel for Lackey lines (imported lazily by lackey.py).

One compiled pass over the bytes of a block of whole lines.  It accepts
exactly what the numpy reference parser in lackey.py accepts; on anything
else it stops and reports the block as suspect, and lackey.py reparses that
block with the numpy parser, which either raises the precise error or (if
the kernel was merely out of output room) returns the pages.
"""

from __future__ import annotations

import numpy as np
from .._numba import kernel as njit


@njit
def parse(buf, n_bytes, shift, keep, lut, out):
    """Return (pages written, ok).  keep[0..3]: keep I, L, S, M."""
    i = 0
    n = 0
    cap = out.shape[0]
    sh = np.uint64(shift)
    one = np.uint64(1)
    while i < n_bytes:
        c0 = buf[i]
        if c0 == 10:
            i += 1
            continue
        if c0 == 13 and buf[i + 1] == 10:
            i += 2
            continue
        if c0 == 61 and buf[i + 1] == 61:  # "==": a Valgrind message
            while buf[i] != 10:
                i += 1
            i += 1
            continue
        c1 = buf[i + 1]
        if buf[i + 2] != 32:
            return n, False
        if c0 == 73 and c1 == 32:
            kind = 0
        elif c0 == 32 and c1 == 76:
            kind = 1
        elif c0 == 32 and c1 == 83:
            kind = 2
        elif c0 == 32 and c1 == 77:
            kind = 3
        else:
            return n, False
        j = i + 3
        addr = np.uint64(0)
        nd = 0
        while buf[j] != 44:
            v = lut[buf[j]]
            if v == 255 or nd == 16:
                return n, False
            addr = (addr << np.uint64(4)) | np.uint64(v)
            nd += 1
            j += 1
        if nd == 0:
            return n, False
        j += 1
        size = np.uint64(0)
        nd = 0
        while buf[j] != 10 and not (buf[j] == 13 and buf[j + 1] == 10):
            d = np.int64(buf[j]) - 48
            if d < 0 or d > 9 or nd == 6:
                return n, False
            size = size * np.uint64(10) + np.uint64(d)
            nd += 1
            j += 1
        if nd == 0:
            return n, False
        if buf[j] == 13:
            j += 1
        i = j + 1
        if keep[kind]:
            if size == 0:
                size = one
            end = addr + (size - one)
            if end < addr:
                return n, False
            first = addr >> sh
            last = end >> sh
            if n + np.int64(last - first) + 1 > cap:
                return n, False
            p = first
            while True:
                out[n] = p
                n += 1
                if p == last:
                    break
                p += one
    return n, True
