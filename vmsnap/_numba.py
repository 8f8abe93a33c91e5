"""numba's njit, with its on-disk cache only where numba can write one.

numba caches compiled kernels in NUMBA_CACHE_DIR if set, else in __pycache__
beside the module, else in ~/.cache/numba. With none of them writable (a
read-only install run by a user without a writable home) njit(cache=True)
raises at decoration; the kernels are then compiled in each process instead,
which costs a few seconds per run but works.
"""

from __future__ import annotations

from numba import njit


def _cache_writable() -> bool:
    def probe():
        pass

    try:
        njit(cache=True)(probe)  # chooses the cache directory; compiles nothing
    except RuntimeError:
        return False
    return True


CACHE = _cache_writable()


def kernel(*args, **options):
    """njit(..., cache=CACHE): use as @kernel, @kernel(nogil=True) or @kernel(signature)."""
    if len(args) == 1 and callable(args[0]) and not options:
        return njit(cache=CACHE)(args[0])
    return njit(*args, cache=CACHE, **options)
