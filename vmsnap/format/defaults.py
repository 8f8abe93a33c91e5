"""Save defaults, apart from the writer so that reading a snapshot does not import it."""

from __future__ import annotations

import os

DEFAULT_FRAME_SIZE = 16 << 20
DEFAULT_LEVEL = 3
DEFAULT_SLICE_WINDOW = 1 << 30


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
